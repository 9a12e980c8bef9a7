//! Building real chains fast: every block goes through `propose`, a collective signature by
//! the committee in force, the full `extend` check and `commit_verified`, exactly as a
//! witness appends it. The collective signature is made with the locally summed secrets of
//! the committee (`sign_with_all_keys`): the same bytes a cosigning round produces, without
//! the round (scenario `cosigning` measures rounds).

use chainiac_cosi::simulation::sign_with_all_keys;
use chainiac_cosi::{Mask, Member, Roster, SecretKey, Signature};
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{genesis, Appointment, Approval, ChainId, ChainParams, ChainState, Committee, Proposal};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A cothority whose roster changes over time: epoch `e` is members `e .. e + size` of one
/// key pool, so each change replaces one witness.
pub struct Cothority {
    keys: Vec<SecretKey>,
    committees: Vec<Committee>,
    size: usize,
    rng: ChaCha20Rng,
}

impl Cothority {
    pub fn new(size: usize, threshold: u32, epochs: usize, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let keys: Vec<SecretKey> = (0..size + epochs).map(|_| SecretKey::generate(&mut rng)).collect();
        let committees = (0..epochs.max(1))
            .map(|e| {
                let members =
                    (e..e + size).map(|i| Member::new(&keys[i], format!("witness-{i}.example.org:7441"))).collect();
                Committee::new(Roster::new(members).expect("distinct generated keys"), threshold)
                    .expect("threshold fits")
                    .with_epoch(e as u64)
            })
            .collect();
        Cothority { keys, committees, size, rng }
    }

    pub fn epochs(&self) -> usize {
        self.committees.len()
    }

    pub fn committee(&self, epoch: usize) -> &Committee {
        &self.committees[epoch]
    }

    /// Epoch `epoch`'s committee, appointed by the threshold of the epoch before's members
    /// (what a change must carry), their approvals valid until `expires_ms`.
    pub fn appoint(&self, epoch: usize, expires_ms: u64) -> Appointment {
        let before = &self.committees[epoch - 1];
        let next = &self.committees[epoch];
        let approvers = &self.keys[epoch - 1..epoch - 1 + before.threshold()];
        Appointment {
            committee: next.clone(),
            approvals: approvers.iter().map(|k| Approval::sign(k, next, expires_ms, None)).collect(),
        }
    }

    /// The committee of `epoch` signs `message`, one member (at random) missing as real
    /// rounds often miss someone.
    pub fn sign(&mut self, epoch: usize, message: &[u8]) -> Signature {
        let mut mask = Mask::full(self.size);
        mask.remove(self.rng.next_u32() as usize % self.size);
        let keys = &self.keys[epoch..epoch + self.size];
        sign_with_all_keys(self.committees[epoch].roster(), keys, &mask, message, &mut self.rng)
    }
}

/// One chain being built in a shared store.
pub struct ChainBuilder {
    pub chain: ChainId,
    pub head: ChainState,
    /// The cothority epoch whose committee signs the next block.
    pub epoch: usize,
    /// `times[i]`: block `i`'s timestamp.
    pub times: Vec<u64>,
    /// Moments a client last updated at, and the chain's state at each (its newest block
    /// at or before it): what such a client trusts.
    marks: Vec<u64>,
    pub states_at_marks: Vec<ChainState>,
}

impl ChainBuilder {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        store: &MemoryStore,
        cothority: &Cothority,
        epoch: usize,
        params: ChainParams,
        policy: Vec<u8>,
        kind: u16,
        payload: Vec<u8>,
        time_ms: u64,
        marks: &[u64],
    ) -> Self {
        let first = genesis(params, cothority.committee(epoch).clone(), policy, kind, payload, time_ms);
        let head = store::append(store, &first).expect("a fresh genesis appends").into_inner();
        let states_at_marks = vec![head.clone(); marks.len()];
        ChainBuilder { chain: head.chain, head, epoch, times: vec![time_ms], marks: marks.to_vec(), states_at_marks }
    }

    /// Appends `proposal`, signed by the committee in force; a proposal carrying the next
    /// epoch's committee moves the chain to that epoch.
    pub fn append(&mut self, store: &MemoryStore, cothority: &mut Cothority, proposal: Proposal) {
        let chain = self.chain;
        let next_epoch = match &proposal.committee {
            Some(a) => {
                (0..cothority.epochs()).find(|&e| *cothority.committee(e) == a.committee).expect("a cothority epoch")
            }
            None => self.epoch,
        };
        let mut block = self.head.propose(proposal, |j| store.block_id(&chain, j).unwrap()).expect("proposable");
        block.signature = Some(BlockSignature {
            ballot: 0,
            signature: cothority.sign(self.epoch, &BlockSignature::message(&block.id(), 0)),
        });
        let state = self.head.extend(&block, |j| store.block_id(&chain, j).unwrap()).expect("a valid block");
        store::commit_verified(store, &state, &block, Some(self.head.index())).expect("appends");
        self.head = state.into_inner();
        self.epoch = next_epoch;
        self.times.push(block.header.timestamp_ms);
        for (mark, state) in self.marks.iter().zip(self.states_at_marks.iter_mut()) {
            if block.header.timestamp_ms <= *mark {
                *state = self.head.clone();
            }
        }
    }
}
