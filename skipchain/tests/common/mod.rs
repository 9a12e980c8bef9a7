//! Builds test chains quickly: committees of test keys, blocks signed with the summed
//! secret of the signing committee (what a round would produce, see
//! `chainiac_cosi::simulation::sign_with_all_keys`), random absences within the threshold.
#![allow(dead_code)]

use chainiac_cosi::simulation::sign_with_all_keys;
use chainiac_cosi::{Mask, Member, Roster, SecretKey};
use chainiac_skipchain::store::{self, Store};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{
    genesis, Appointment, Approval, Block, ChainId, ChainParams, ChainState, Committee, Proposal, Verified,
};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;

pub struct TestCommittee {
    pub committee: Committee,
    pub keys: Vec<SecretKey>,
}

impl TestCommittee {
    pub fn new(members: usize, threshold: u32, rng: &mut ChaCha20Rng) -> Self {
        let keys: Vec<SecretKey> = (0..members).map(|_| SecretKey::generate(rng)).collect();
        let roster = Roster::new(
            keys.iter().enumerate().map(|(i, k)| Member::new(k, format!("127.0.0.1:{}", 7000 + i))).collect(),
        )
        .unwrap();
        TestCommittee { committee: Committee::new(roster, threshold).unwrap(), keys }
    }

    /// The same committee numbered `epoch` (a successor must be numbered above its outgoing).
    pub fn at_epoch(mut self, epoch: u64) -> Self {
        self.committee = self.committee.with_epoch(epoch);
        self
    }

    /// A signature by this committee on `message` with up to `absent` members missing
    /// (never below the threshold).
    pub fn sign(&self, message: &[u8], absent: usize, rng: &mut ChaCha20Rng) -> chainiac_cosi::Signature {
        let n = self.keys.len();
        let mut mask = Mask::full(n);
        let spare = n - self.committee.threshold();
        for _ in 0..absent.min(spare) {
            mask.remove(rng.next_u32() as usize % n);
        }
        sign_with_all_keys(self.committee.roster(), &self.keys, &mask, message, rng)
    }

    /// `next` appointed by `approvers` of this committee's members (the first ones), their
    /// approvals valid until `expires_ms`.
    pub fn appoint(&self, next: &Committee, approvers: usize, expires_ms: u64) -> Appointment {
        let approvals = self.keys.iter().take(approvers).map(|k| Approval::sign(k, next, expires_ms, None)).collect();
        Appointment { committee: next.clone(), approvals }
    }
}

/// A Byzantine-quorum threshold for `members`, drawn at random (`3t > 2n`).
pub fn quorum_threshold(members: usize, rng: &mut ChaCha20Rng) -> u32 {
    let lowest = (2 * members) / 3 + 1;
    (lowest + rng.next_u32() as usize % (members - lowest + 1)) as u32
}

pub struct TestChain<S: Store> {
    pub store: S,
    pub chain: ChainId,
    pub genesis: Block,
    /// The committee that signs the next block.
    pub signer: Arc<TestCommittee>,
    pub rng: ChaCha20Rng,
    pub time_ms: u64,
    pub policy_version: u32,
}

pub fn policy(version: u32) -> Vec<u8> {
    format!("policy v{version}").into_bytes()
}

/// The payload that authorizes a policy change in these test chains (root signatures do
/// for a release chain): what [`policy_rule`] checks.
pub fn authorization(old: &[u8], new: &[u8]) -> Vec<u8> {
    [b"authorizes ".as_slice(), old, b" -> ", new].concat()
}

/// The test chains' rule for a policy change (a [`chainiac_skipchain::PolicyRule`]).
pub fn policy_rule(_: &ChainId, old: &[u8], new: &[u8], payload: &[u8]) -> Result<(), String> {
    if payload == authorization(old, new) {
        Ok(())
    } else {
        Err("the payload does not authorize this policy change".into())
    }
}

impl<S: Store> TestChain<S> {
    pub fn new(store: S, params: ChainParams, members: usize, seed: u64) -> Self {
        let chain = Self::open_or_create(store, params, members, seed);
        assert_eq!(chain.head().index(), 0, "a new chain");
        chain
    }

    /// The chain for `seed` (same keys, same genesis every time): continued where the
    /// store has it, created if it has none. Roster changes are not replayed, so a chain
    /// reopened this way must not have changed its committee.
    pub fn open_or_create(store: S, params: ChainParams, members: usize, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let threshold = (members as u32 * 2).div_ceil(3);
        let signer = Arc::new(TestCommittee::new(members, threshold, &mut rng));
        let genesis = genesis(params, signer.committee.clone(), policy(0), 0, b"genesis".to_vec(), 1_000);
        let chain = genesis.id();
        if store.head(&chain).unwrap().is_none() {
            store::append(&store, &genesis).unwrap();
        }
        TestChain { store, chain, genesis, signer, rng, time_ms: 1_000, policy_version: 0 }
    }

    pub fn head(&self) -> Verified<ChainState> {
        store::head_state(&self.store, &self.chain).unwrap()
    }

    pub fn genesis_state(&self) -> Verified<ChainState> {
        ChainState::genesis(&self.genesis).unwrap()
    }

    /// `next` appointed by the current signers: as many approvals as their threshold, the
    /// rest at random, valid for a day past the chain's clock.
    pub fn appoint(&mut self, next: &Committee) -> Appointment {
        let spare = self.signer.keys.len() - self.signer.committee.threshold();
        let approvers = self.signer.committee.threshold() + self.rng.next_u32() as usize % (spare + 1);
        self.signer.appoint(next, approvers, self.time_ms + 86_400_000)
    }

    /// The next block, signed, with an optional new committee (of `members`) or new policy.
    pub fn next_block(
        &mut self,
        new_members: Option<usize>,
        new_policy: bool,
        absent: usize,
    ) -> (Block, Option<Arc<TestCommittee>>) {
        let head = self.head();
        self.time_ms += 1 + self.rng.next_u32() as u64 % 1000;
        let next_committee = new_members.map(|m| {
            let threshold = quorum_threshold(m, &mut self.rng);
            Arc::new(TestCommittee::new(m, threshold, &mut self.rng).at_epoch(self.signer.committee.epoch() + 1))
        });
        if new_policy {
            self.policy_version += 1;
        }
        let new_policy = new_policy.then(|| policy(self.policy_version));
        let payload = match &new_policy {
            Some(new) => authorization(&head.policy, new),
            None => format!("release {}", head.index() + 1).into_bytes(),
        };
        let proposal = Proposal {
            kind: 1,
            payload,
            timestamp_ms: self.time_ms,
            committee: next_committee.as_ref().map(|c| self.appoint(&c.committee)),
            policy: new_policy,
        };
        let store = &self.store;
        let chain = self.chain;
        let mut block = head.propose(proposal, |i| store.block_id(&chain, i).unwrap()).unwrap();
        block.signature = Some(BlockSignature {
            ballot: 0,
            signature: self.signer.sign(&BlockSignature::message(&block.id(), 0), absent, &mut self.rng),
        });
        (block, next_committee)
    }

    /// Appends a block whose payload `payload_at` makes from its timestamp, with an optional
    /// new committee (of `members`); returns its index.
    pub fn push_payload(&mut self, payload_at: impl FnOnce(u64) -> Vec<u8>, new_members: Option<usize>) -> u64 {
        let head = self.head();
        self.time_ms += 1 + self.rng.next_u32() as u64 % 1000;
        let epoch = self.signer.committee.epoch() + 1;
        let next = new_members.map(|m| Arc::new(TestCommittee::new(m, m as u32, &mut self.rng).at_epoch(epoch)));
        let proposal = Proposal {
            kind: 1,
            payload: payload_at(self.time_ms),
            timestamp_ms: self.time_ms,
            committee: next.as_ref().map(|c| self.appoint(&c.committee)),
            policy: None,
        };
        let store = &self.store;
        let chain = self.chain;
        let mut block = head.propose(proposal, |i| store.block_id(&chain, i).unwrap()).unwrap();
        block.signature = Some(BlockSignature {
            ballot: 0,
            signature: self.signer.sign(&BlockSignature::message(&block.id(), 0), 0, &mut self.rng),
        });
        let state = store::append(&self.store, &block).unwrap();
        if let Some(next) = next {
            self.signer = next;
        }
        state.index()
    }

    /// Appends the next block (see [`TestChain::next_block`]) and returns its index.
    pub fn push(&mut self, new_members: Option<usize>, new_policy: bool, absent: usize) -> u64 {
        let (block, next) = self.next_block(new_members, new_policy, absent);
        let state = store::append(&self.store, &block).unwrap();
        if let Some(next) = next {
            self.signer = next;
        }
        state.index()
    }
}
