//! Catch-up proofs: from a trusted block forward to a later one (one collective signature
//! per hop), and from a trusted block back to an earlier one (hashes only).

use crate::authority::{Appointment, Appointments, AuthorityError};
use crate::block::{payload_hash, BlockId, BlockSignature, ChainId, ChainParams, Header};
use crate::chain::{check_carried, BlockError, ChainState, Verified};
use serde::{Deserialize, Serialize};

/// One hop of a forward proof: a block header, its collective signature, and the committee
/// or policy it introduces, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofStep {
    pub header: StepHeader,
    /// Present on the last step and on every step that changes the committee; the others
    /// may leave it out: a later signed step of the same committee covers them by hash
    /// (its id covers its back link to this step's id, and so on down).
    pub signature: Option<BlockSignature>,
    /// The committee the step's block appoints, with its approvals; left out (None) when
    /// the verifier holds that appointment.
    pub committee: Option<Appointment>,
    /// The policy the step's block puts in force, with the block's payload (what authorizes
    /// the change: the verifier's [`PolicyRule`] checks it).
    pub policy: Option<PolicyChanged>,
}

/// A new policy as a proof carries it: the policy and the payload of the block that made
/// the change (for a release chain, the root keys' signatures over the transition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChanged {
    pub policy: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The layer above's rule for a policy change on `chain` from `old` to `new`, given the
/// payload of the block that made it (the release layer checks the old policy's root
/// signatures over the transition). A verifier passes it to every proof it checks, so a
/// policy never changes on a committee's word alone. [`any_policy`] is the rule for chains
/// whose policy means nothing to the verifier.
pub type PolicyRule = dyn Fn(&ChainId, &[u8], &[u8], &[u8]) -> Result<(), String>;

/// The rule that accepts every policy change: for chains whose policy is opaque to the
/// verifier (tests, raw chains).
pub fn any_policy(_: &ChainId, _: &[u8], _: &[u8], _: &[u8]) -> Result<(), String> {
    Ok(())
}

/// A block header as a proof step carries it: without what the verifier already knows —
/// the chain (its own), the height (its index gives it), the params (a genesis is never a
/// step), the committee and policy hashes when they equal the previous block's, and the
/// back link to the block the step stands on (whose id the verifier holds or has just
/// computed). This cuts a step's header from ≈190 bytes to ≈95 − 32; [`StepHeader::header`]
/// rebuilds the full header, whose hash is the block id, so nothing left out goes
/// unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepHeader {
    pub index: u64,
    /// The block's back links without the implied one (`height − 1` of them).
    pub back_links: Vec<BlockId>,
    pub kind: u16,
    pub payload_hash: [u8; 32],
    /// `None`: the previous block's.
    pub committee_hash: Option<[u8; 32]>,
    /// `None`: the previous block's.
    pub policy_hash: Option<[u8; 32]>,
    pub previous_checkpoint: u64,
    pub timestamp_ms: u64,
}

impl StepHeader {
    /// `header` as a step whose hashes default to those of `defaults`, leaving out the back
    /// link at `implied` — the one to the block the verifier places it on.
    pub fn new(header: &Header, defaults: &Header, implied: u8) -> Self {
        let changed = |now: [u8; 32], before: [u8; 32]| (now != before).then_some(now);
        let mut back_links = header.back_links.clone();
        if (implied as usize) < back_links.len() {
            back_links.remove(implied as usize);
        }
        StepHeader {
            index: header.index,
            back_links,
            kind: header.kind,
            payload_hash: header.payload_hash,
            committee_hash: changed(header.committee_hash, defaults.committee_hash),
            policy_hash: changed(header.policy_hash, defaults.policy_hash),
            previous_checkpoint: header.previous_checkpoint,
            timestamp_ms: header.timestamp_ms,
        }
    }

    /// The full header of this step after `state`'s block.
    pub fn header(&self, state: &ChainState) -> Result<Header, BlockError> {
        self.rebuild(state.chain, &state.params, (state.header.committee_hash, state.header.policy_hash), below(state))
    }

    /// The full header, with `hashes` (committee, policy) standing in for those the step
    /// leaves out and the id of block `below` put back as its back link there. Refuses a
    /// step that cannot link to `below` or carries the wrong number of links for its height.
    fn rebuild(
        &self,
        chain: ChainId,
        params: &ChainParams,
        hashes: ([u8; 32], [u8; 32]),
        below: (u64, BlockId),
    ) -> Result<Header, BlockError> {
        let index = self.index;
        let height = params.height(index);
        let Some(level) = params.link_level(below.0, index) else {
            return Err(BlockError::NotLinked { index, from: below.0 });
        };
        if self.back_links.len() + 1 != height as usize {
            return Err(BlockError::BackLinkCount { index, expected: height as usize, got: self.back_links.len() + 1 });
        }
        let mut back_links = Vec::with_capacity(height as usize);
        back_links.extend_from_slice(&self.back_links[..level as usize]);
        back_links.push(below.1);
        back_links.extend_from_slice(&self.back_links[level as usize..]);
        Ok(Header {
            chain: Some(chain),
            index,
            height,
            back_links,
            params: None,
            kind: self.kind,
            payload_hash: self.payload_hash,
            committee_hash: self.committee_hash.unwrap_or(hashes.0),
            policy_hash: self.policy_hash.unwrap_or(hashes.1),
            previous_checkpoint: self.previous_checkpoint,
            timestamp_ms: self.timestamp_ms,
        })
    }

    /// The committee and policy hashes of this step's block, given its defaults.
    fn hashes(&self, defaults: ([u8; 32], [u8; 32])) -> ([u8; 32], [u8; 32]) {
        (self.committee_hash.unwrap_or(defaults.0), self.policy_hash.unwrap_or(defaults.1))
    }
}

/// A state's block as the block a step links back to: index and id.
fn below(state: &ChainState) -> (u64, BlockId) {
    (state.header.index, state.id)
}

/// A forward proof from a block the verifier trusts to a later block of the same chain.
///
/// The steps follow the highest link that does not pass the target or the next checkpoint,
/// and land on every checkpoint in between (a checkpoint's new committee signs the blocks
/// after it). Each committee and policy appears once, in the step that introduces it. Only
/// the steps that change the committee and the last one need their signature: one
/// signature per committee, not per hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub steps: Vec<ProofStep>,
    /// The target block's payload, when the proof was asked to carry it.
    pub payload: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("hop {hop} (to block {index}): {error}")]
    Hop { hop: usize, index: u64, error: BlockError },
    #[error("the payload does not match the target block's payload hash")]
    PayloadHash,
    #[error("backward proof step {step}: block {index} is not the one block {from} links to")]
    BackwardLink { step: usize, from: u64, index: u64 },
    #[error("backward proof step {step}: block {index} does not go back from block {from}")]
    NotBackward { step: usize, from: u64, index: u64 },
    #[error("backward proof step {step}: block {index} has the wrong height or chain")]
    BackwardHeader { step: usize, index: u64 },
    #[error("linked proof: the timeline records block {recorded}, at or before the trusted {trusted}, and the proof's links or committee or policy do not fit that (links only down to an earlier recorded block)")]
    LinksNotNeeded { recorded: u64, trusted: u64 },
    #[error("linked proof: the timeline records another block {index} than the trusted one: a fork")]
    Fork { index: u64 },
    /// Links the prover chose: wrong links and a fork below the trusted block look alike.
    #[error("linked proof: the links down to the recorded block {index} do not lead into the trusted block's history (bad links, or a fork below it)")]
    LinksBelow { index: u64 },
    #[error(
        "linked proof: the timeline records block {recorded} after the trusted {trusted}, but no link leads there"
    )]
    NoLinks { recorded: u64, trusted: u64 },
    #[error("linked proof: the first link is block {index}, not the block {recorded} the timeline records")]
    LinkTop { index: u64, recorded: u64 },
    #[error("linked proof: block {index} does not hash to the id the timeline records")]
    LinkId { index: u64 },
    #[error("linked proof link {step}: block {index}: {error}")]
    LinkHeader { step: usize, index: u64, error: BlockError },
    #[error("linked proof link {step}: block {index} is not the one block {above} links back to")]
    LinkBroken { step: usize, index: u64, above: u64 },
    #[error("linked proof link {step}: block {index} is later than block {above} or its timestamp is")]
    LinkOrder { step: usize, index: u64, above: u64 },
    #[error("linked proof: the last link, block {index}, does not link back to the trusted block {trusted}")]
    LinkNotToTrusted { index: u64, trusted: u64 },
    #[error("linked proof: the recorded block {index}'s committee or policy: {error}")]
    LinkState { index: u64, error: BlockError },
    #[error("linked proof: it carries the payload of block {index}, which is not one of its links")]
    LinkPayloadNotLinked { index: u64 },
    #[error("linked proof: the payload it carries for block {index} does not match that block's payload hash")]
    LinkPayloadHash { index: u64 },
    #[error("linked proof: the recorded block {index} is given in full, but its payload names no earlier block of the chain from the trusted {trusted} on")]
    NamedNothing { index: u64, trusted: u64 },
    #[error("linked proof: the recorded block {index} is given in full with {got} back links, not {expected}")]
    NamedBackLinks { index: u64, expected: usize, got: usize },
    #[error("linked proof: the recorded block {index} comes before the block {named} its payload names, or a committee or policy change lies between them")]
    NamedOrder { index: u64, named: u64 },
}

/// A verified forward proof's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The chain's state at the target: its header, committee and policy.
    pub state: ChainState,
    /// The target's payload, checked against its header, if the proof carried it.
    pub payload: Option<Vec<u8>>,
    /// Indices of the checkpoints the proof landed on (committee or policy changes).
    pub checkpoints: Vec<u64>,
    /// The appointments the proof carried, checked: what the verifier may hold from now on.
    pub appointments: Vec<Verified<Appointment>>,
    /// A linked proof's [`LinkedProof::link_payload`]: that link's full header (its id
    /// hash-linked to the recorded block) and its payload, checked against it.
    pub link_block: Option<EarlierBlock>,
}

impl Proof {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("proofs serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::decode_exact(bytes)
    }

    /// Checks the proof hop by hop from `trusted` and returns the state at its last block.
    /// An empty proof proves `trusted` itself. `rule` checks every policy change.
    pub fn verify(&self, trusted: &ChainState, rule: &PolicyRule) -> Result<Verified<CatchUp>, ProofError> {
        self.verify_with(trusted, &Appointments::default(), rule)
    }

    /// The proof without the appointments `held` says the verifier already has, by
    /// [`Appointment::digest`]: the same cothority's roster change recurs in every chain it
    /// serves, and costs ≈2 KB of roster and a threshold of approvals each time.
    pub fn without_appointments(mut self, held: impl Fn(&[u8; 32]) -> bool) -> Proof {
        for step in &mut self.steps {
            if step.committee.as_ref().is_some_and(|a| held(&a.digest())) {
                step.committee = None;
            }
        }
        self
    }

    /// [`Proof::verify`], taking an appointment a step left out (see
    /// [`Proof::without_appointments`]) from `held`, by the committee hash the header names.
    /// A held appointment authorizes a change like a carried one: at least the outgoing
    /// committee's threshold of its members approved it, unexpired at the step's time.
    pub fn verify_with(
        &self,
        trusted: &ChainState,
        held: &Appointments,
        rule: &PolicyRule,
    ) -> Result<Verified<CatchUp>, ProofError> {
        let mut state = trusted.clone();
        let mut checkpoints = Vec::new();
        let mut appointments = Vec::new();
        for (hop, step) in self.steps.iter().enumerate() {
            let index = step.header.index;
            let last = hop + 1 == self.steps.len();
            let (next, appointed) =
                hop_from(&state, step, last, held, rule).map_err(|error| ProofError::Hop { hop, index, error })?;
            state = next;
            appointments.extend(appointed);
            if state.is_checkpoint {
                checkpoints.push(index);
            }
        }
        if let Some(payload) = &self.payload {
            if payload_hash(payload) != state.header.payload_hash {
                return Err(ProofError::PayloadHash);
            }
        }
        Ok(Verified::new(CatchUp { state, payload: self.payload.clone(), checkpoints, appointments, link_block: None }))
    }
}

/// One hop: `step` must link back to `state`'s block, skip no checkpoint, carry exactly the
/// committee and policy it changes (a committee with the approvals that authorize the
/// change, or held), and be signed by `state`'s committee — or, if it is not the `last`
/// step and keeps the committee, leave the signature to a later step. Returns the state at
/// the step and the appointment it carried, checked.
fn hop_from(
    state: &ChainState,
    step: &ProofStep,
    last: bool,
    held: &Appointments,
    rule: &PolicyRule,
) -> Result<(ChainState, Option<Verified<Appointment>>), BlockError> {
    // The rebuilt header links back to `state` by construction (or is refused).
    let h = &step.header.header(state)?;
    let index = h.index;
    // Every block strictly between the two is no checkpoint, so the committee in force at
    // `state` is the one that signed `step`.
    if h.previous_checkpoint > state.header.index {
        return Err(BlockError::SkippedCheckpoint {
            index,
            from: state.header.index,
            checkpoint: h.previous_checkpoint,
        });
    }
    if h.timestamp_ms < state.header.timestamp_ms {
        return Err(BlockError::TimestampBackwards { index, previous: state.header.timestamp_ms, got: h.timestamp_ms });
    }
    let looked_up = match &step.committee {
        None if h.committee_hash != state.header.committee_hash => held.get(&h.committee_hash),
        _ => None,
    };
    let committee = step.committee.as_ref().map(|a| &a.committee).or(looked_up.map(|a| a.committee()));
    let policy = step.policy.as_ref().map(|p| &p.policy);
    check_carried(h, committee, policy, &state.header)?;
    // A change of policy needs what the layer above requires (root signatures), carried in
    // the block's own payload.
    if let Some(changed) = &step.policy {
        if payload_hash(&changed.payload) != h.payload_hash {
            return Err(BlockError::PayloadHash { index });
        }
        rule(&state.chain, &state.policy, &changed.policy, &changed.payload)
            .map_err(|reason| BlockError::PolicyAuthority { index, reason })?;
    }
    // A change of committee needs the outgoing committee's authority (crate::authority).
    let authority = |error| BlockError::Authority { index, error };
    let appointed = match (&step.committee, looked_up) {
        (Some(carried), _) => {
            Some(carried.check_change(&state.committee, &state.chain, h.timestamp_ms).map_err(authority)?)
        }
        (None, Some(held)) => {
            held.authorizes(&state.committee, &state.chain, h.timestamp_ms).map_err(authority)?;
            None
        }
        (None, None) => None,
    };
    let id = h.id();
    match &step.signature {
        Some(signature) => {
            signature.verify(&state.committee, &id).map_err(|error| BlockError::Signature { index, error })?
        }
        // Covered by the next signed step, which the same committee signs (a committee
        // change is always signed, and the last step too).
        None if !last && h.committee_hash == state.header.committee_hash => {}
        None => return Err(BlockError::MissingSignature { index }),
    }
    Ok((state.successor_of(h, id, committee, policy), appointed))
}

/// A catch-up proof for a block the verifier learned by id from a timeline block it has
/// verified — the head that block records — followed by a forward proof past it.
///
/// The timeline's collective signature vouches for the recorded block's id: a witness
/// cosigns a timeline block only if its root is the root of the heads it stores itself,
/// and it stores only blocks it checked completely (rules, collective signature). So the
/// links below need no signatures: hashes tie the recorded block to the trusted one,
/// whatever checkpoints lie between, and the committee and policy in force there come
/// once, checked against the recorded header's hashes. The verifier trusts the timeline's
/// committee for this, as it already does for freshness; a client that wants each chain's
/// own committees to vouch for its blocks asks for a forward [`Proof`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedProof {
    /// From the recorded block down to the first block after the trusted one, each the
    /// block its predecessor in the list links back to; the last links back to the trusted
    /// block. A link leaves out the committee and policy hashes of the header listed before
    /// it (the first: of the trusted header). Empty when the recorded block is not after
    /// the trusted one.
    pub links: Vec<StepHeader>,
    /// When the recorded block's committee is not the trusted one's: the appointments of
    /// the committees the chain went through from the trusted block to the recorded one, in
    /// order, that the verifier did not name as held. The verifier checks that the
    /// recorded committee descends from the trusted one by approvals
    /// ([`Appointments::lineage`]); empty otherwise.
    pub appointments: Vec<Appointment>,
    /// When the recorded block's policy is not the trusted one's: every policy the chain
    /// put in force from the trusted block to the recorded one, in order, each with the
    /// payload that authorized it (the verifier's [`PolicyRule`] checks each transition;
    /// the last is the recorded block's). Empty otherwise.
    pub policies: Vec<PolicyChanged>,
    /// Forward from the recorded block (or the trusted one, if that is later) to the head,
    /// with the last block's payload when asked for.
    pub beyond: Proof,
    /// The payload of one of the links, which the prover routed the links through: a block
    /// the verifier needs besides the head (for a release chain, the release a rebuild
    /// summary at the head names, SPEC §11.8), with no second request and no header sent
    /// twice. `None` otherwise, and always when there are no links up to a recorded block.
    pub link_payload: Option<LinkPayload>,
    /// The recorded block in full when its payload names, by index and id, an earlier block
    /// of the chain (for a release chain, a rebuild summary names its release, SPEC §11.8):
    /// `links` then lead down from that named block, not from the recorded one, so the
    /// blocks between the two cost nothing; when the named block is the trusted one, there
    /// are no links. `None` otherwise.
    pub named: Option<NamedHead>,
}

/// The recorded block of a linked proof, given in full with its payload, whose payload
/// names the block the links start from. Its index is the recorded one, its height follows
/// from it, its payload hash from the payload, and its committee and policy hashes are the
/// named block's: a committee or policy change between the two rules this form out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedHead {
    /// Its back links, but the one to the named block if it has one (implied).
    pub back_links: Vec<BlockId>,
    pub kind: u16,
    pub previous_checkpoint: u64,
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

/// Which earlier block of its chain a payload names (index and id), by the block's kind:
/// the application's rule, which its witnesses check on every block they store (SPEC §11.8
/// for release chains). The verifier of a linked proof trusts a name as it trusts the links:
/// the timeline records only blocks that honest witnesses checked completely.
pub type NamesBlock = dyn Fn(u16, &[u8]) -> Option<(u64, BlockId)>;

impl NamedHead {
    /// The head as [`LinkedProof::named`] gives it, naming block `named` (the caller checks
    /// that the committee and policy hashes are that block's): its back links without the
    /// one to the named block, if it has one (the payload names it).
    pub fn new(block: &crate::Block, params: &crate::ChainParams, named: u64) -> Self {
        let mut back_links = block.header.back_links.clone();
        if let Some(level) = params.link_level(named, block.header.index) {
            back_links.remove(level as usize);
        }
        NamedHead {
            back_links,
            kind: block.header.kind,
            previous_checkpoint: block.header.previous_checkpoint,
            timestamp_ms: block.header.timestamp_ms,
            payload: block.payload.clone(),
        }
    }

    /// The state at this head, block `index` with id `id`, above `named`'s block: no
    /// committee or policy change after that block (the head's `previous_checkpoint` is not
    /// after it), not earlier in time, and the full header hashing to `id`. A back link to
    /// the named block is implied.
    fn state_above(&self, named: &ChainState, index: u64, id: BlockId) -> Result<ChainState, ProofError> {
        let height = named.params.height(index) as usize;
        let below = named.header.index;
        let implied = named.params.link_level(below, index);
        let expected = height - usize::from(implied.is_some());
        if self.back_links.len() != expected {
            return Err(ProofError::NamedBackLinks { index, expected, got: self.back_links.len() });
        }
        let mut back_links = self.back_links.clone();
        if let Some(level) = implied {
            back_links.insert(level as usize, named.id);
        }
        if self.previous_checkpoint > below || self.timestamp_ms < named.header.timestamp_ms {
            return Err(ProofError::NamedOrder { index, named: below });
        }
        let header = Header {
            chain: Some(named.chain),
            index,
            height: height as u8,
            back_links,
            params: None,
            kind: self.kind,
            payload_hash: payload_hash(&self.payload),
            committee_hash: named.header.committee_hash,
            policy_hash: named.header.policy_hash,
            previous_checkpoint: self.previous_checkpoint,
            timestamp_ms: self.timestamp_ms,
        };
        if header.id() != id {
            return Err(ProofError::LinkId { index });
        }
        Ok(ChainState { header, id, is_checkpoint: false, ..named.clone() })
    }
}

/// A block's payload carried by a linked proof: the block is the link at `index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPayload {
    pub index: u64,
    pub payload: Vec<u8>,
}

impl LinkedProof {
    /// Checks the links from the block the timeline records (`recorded`: index and id) down
    /// to `trusted`, then the forward proof from there. `held` supplies appointments left
    /// out, by committee hash.
    pub fn verify_with(
        &self,
        trusted: &ChainState,
        recorded: (u64, BlockId),
        held: &Appointments,
        rule: &PolicyRule,
    ) -> Result<Verified<CatchUp>, ProofError> {
        self.verify_named(trusted, recorded, held, rule, &|_, _| None)
    }

    /// [`Self::verify_with`], taking a recorded block given in full ([`Self::named`]) when
    /// `names` says which earlier block its payload names.
    pub fn verify_named(
        &self,
        trusted: &ChainState,
        recorded: (u64, BlockId),
        held: &Appointments,
        rule: &PolicyRule,
        names: &NamesBlock,
    ) -> Result<Verified<CatchUp>, ProofError> {
        let (index, id) = recorded;
        let from = trusted.header.index;
        let mut linked_checkpoints = Vec::new();
        let mut appointed = Vec::new();
        let mut link_block = None;
        let start = if index <= from {
            // Links lead down to an earlier recorded block, unless it is the genesis (whose id
            // is the chain's) or the trusted block itself.
            let links_wrong = match index {
                0 => !self.links.is_empty() && from > 0,
                i if i == from => !self.links.is_empty(),
                _ => false,
            };
            if links_wrong
                || !self.appointments.is_empty()
                || !self.policies.is_empty()
                || self.link_payload.is_some()
                || self.named.is_some()
            {
                return Err(ProofError::LinksNotNeeded { recorded: index, trusted: from });
            }
            if index == from && id != trusted.id {
                return Err(ProofError::Fork { index });
            }
            if index == 0 && from > 0 && id != trusted.chain {
                return Err(ProofError::Fork { index });
            }
            if index > 0 && index < from {
                self.link_below(trusted, index, id)?;
            }
            trusted.clone()
        } else if let Some(named) = &self.named {
            let Some((below, below_id)) =
                names(named.kind, &named.payload).filter(|&(below, _)| below >= from && below < index)
            else {
                return Err(ProofError::NamedNothing { index, trusted: from });
            };
            if below == from {
                // The named block is the trusted one: nothing to link, or carry.
                let extra = !self.links.is_empty()
                    || !self.appointments.is_empty()
                    || !self.policies.is_empty()
                    || self.link_payload.is_some();
                if extra {
                    return Err(ProofError::LinksNotNeeded { recorded: below, trusted: from });
                }
                if below_id != trusted.id {
                    return Err(ProofError::Fork { index: from });
                }
                named.state_above(trusted, index, id)?
            } else {
                let (state, carried, carried_block) = self.link_down(trusted, below, below_id, held, rule)?;
                linked_checkpoints = self.shown_checkpoints(trusted, &state);
                appointed = carried;
                link_block = carried_block;
                named.state_above(&state, index, id)?
            }
        } else {
            let (state, carried, carried_block) = self.link_down(trusted, index, id, held, rule)?;
            linked_checkpoints = self.shown_checkpoints(trusted, &state);
            appointed = carried;
            link_block = carried_block;
            state
        };
        let mut caught = self.beyond.verify_with(&start, held, rule)?.into_inner();
        if let (Some(named), true) = (&self.named, self.beyond.steps.is_empty()) {
            // The recorded block is the target: its payload came with it.
            caught.payload.get_or_insert_with(|| named.payload.clone());
        }
        linked_checkpoints.append(&mut caught.checkpoints);
        caught.checkpoints = linked_checkpoints;
        appointed.append(&mut caught.appointments);
        caught.appointments = appointed;
        caught.link_block = link_block;
        Ok(Verified::new(caught))
    }

    /// The state at the recorded block, its id and its links down to `trusted` checked, the
    /// appointments the proof carried (checked), and the link whose payload it carried.
    #[allow(clippy::type_complexity)]
    fn link_down(
        &self,
        trusted: &ChainState,
        index: u64,
        id: BlockId,
        held: &Appointments,
        rule: &PolicyRule,
    ) -> Result<(ChainState, Vec<Verified<Appointment>>, Option<EarlierBlock>), ProofError> {
        let from = trusted.header.index;
        let Some(first) = self.links.first() else {
            return Err(ProofError::NoLinks { recorded: index, trusted: from });
        };
        if first.index != index {
            return Err(ProofError::LinkTop { index: first.index, recorded: index });
        }
        // Hashes default top-down, ids come bottom-up: each link's implied back link is the
        // id of the link below it, and the last one's the trusted block's.
        let defaults = self.link_defaults(trusted);
        let last = self.links.len() - 1;
        let mut below = below(trusted);
        let mut below_time = trusted.header.timestamp_ms;
        let mut top = None;
        let mut link_block = None;
        for (step, link) in self.links.iter().enumerate().rev() {
            let h =
                link.rebuild(trusted.chain, &trusted.params, defaults[step], below).map_err(|error| match error {
                    BlockError::NotLinked { .. } if step == last => {
                        ProofError::LinkNotToTrusted { index: link.index, trusted: from }
                    }
                    BlockError::NotLinked { .. } => {
                        ProofError::LinkBroken { step: step + 1, index: below.0, above: link.index }
                    }
                    error => ProofError::LinkHeader { step, index: link.index, error },
                })?;
            if h.timestamp_ms < below_time {
                return Err(if step == last {
                    ProofError::LinkNotToTrusted { index: link.index, trusted: from }
                } else {
                    ProofError::LinkOrder { step: step + 1, index: below.0, above: h.index }
                });
            }
            below = (h.index, h.id());
            below_time = h.timestamp_ms;
            if let Some(carried) = self.link_payload.as_ref().filter(|p| p.index == h.index) {
                if payload_hash(&carried.payload) != h.payload_hash {
                    return Err(ProofError::LinkPayloadHash { index: h.index });
                }
                link_block = Some(EarlierBlock { header: h.clone(), payload: Some(carried.payload.clone()) });
            }
            top = Some(h);
        }
        if below.1 != id {
            return Err(ProofError::LinkId { index });
        }
        if let (Some(carried), None) = (&self.link_payload, &link_block) {
            return Err(ProofError::LinkPayloadNotLinked { index: carried.index });
        }
        let top = top.expect("links are not empty");
        // The committee and policy in force at the recorded block, carried exactly when
        // they differ from the trusted ones (a committee may instead be held); a new
        // committee must descend from the trusted one by approved appointments.
        let state_error = |error| ProofError::LinkState { index, error };
        let authority = |error| state_error(BlockError::Authority { index, error });
        let changed = top.committee_hash != trusted.header.committee_hash;
        if !changed && !self.appointments.is_empty() {
            return Err(ProofError::LinksNotNeeded { recorded: index, trusted: from });
        }
        let mut carried =
            self.appointments.iter().map(Appointment::verify).collect::<Result<Vec<_>, _>>().map_err(authority)?;
        let committee = match changed {
            false => None,
            true => {
                let found = carried
                    .iter()
                    .find(|a| a.committee.hash() == top.committee_hash)
                    .or(held.get(&top.committee_hash))
                    .map(|a| a.committee().clone());
                let Some(found) = found else {
                    return Err(authority(AuthorityError::Missing { hash: BlockId(top.committee_hash).to_hex() }));
                };
                let at = trusted.header.timestamp_ms;
                let reached = held
                    .lineage(&carried, &trusted.committee, &top.committee_hash, &trusted.chain, at)
                    .map_err(authority)?;
                // Only appointments whose authority derives from the trusted committee are the
                // verifier's to hold (a prover's extra ones are dropped).
                carried.retain(|a| reached.contains(&a.committee.hash()));
                Some(found)
            }
        };
        // The policies in force since the trusted block, each change checked by the rule
        // (root signatures bind the chain and both policies' hashes, so the sequence needs
        // no headers); the last must be the recorded block's.
        let policy_changed = top.policy_hash != trusted.header.policy_hash;
        if !policy_changed && !self.policies.is_empty() {
            return Err(ProofError::LinksNotNeeded { recorded: index, trusted: from });
        }
        let mut policy: &[u8] = &trusted.policy;
        for changed in &self.policies {
            rule(&trusted.chain, policy, &changed.policy, &changed.payload)
                .map_err(|reason| state_error(BlockError::PolicyAuthority { index, reason }))?;
            policy = &changed.policy;
        }
        let carried_policy = self.policies.last().map(|p| &p.policy);
        check_carried(&top, committee.as_ref(), carried_policy, &trusted.header).map_err(state_error)?;
        // The recorded block is a checkpoint when its hashes differ from its predecessor's,
        // which are those of the newest checkpoint before it (`previous_checkpoint`): the
        // trusted block's if that is not after it, else any link at or after it (no
        // checkpoint lies between). If no link is, the proof does not show it: false.
        let p = top.previous_checkpoint;
        let predecessor = if p <= from {
            Some((trusted.header.committee_hash, trusted.header.policy_hash))
        } else {
            let mut hashes = (top.committee_hash, top.policy_hash);
            let mut found = None;
            for link in &self.links[1..] {
                hashes = (link.committee_hash.unwrap_or(hashes.0), link.policy_hash.unwrap_or(hashes.1));
                if link.index >= p {
                    found = Some(hashes);
                }
            }
            found
        };
        let is_checkpoint = predecessor.is_some_and(|hashes| hashes != (top.committee_hash, top.policy_hash));
        let state = ChainState {
            chain: trusted.chain,
            params: trusted.params,
            id,
            committee: committee.map_or_else(|| trusted.committee.clone(), std::sync::Arc::new),
            policy: carried_policy.map_or_else(|| trusted.policy.clone(), |p| std::sync::Arc::new(p.clone())),
            header: top,
            is_checkpoint,
        };
        Ok((state, carried, link_block))
    }

    /// For a recorded block below the trusted one: the links lead from the trusted block
    /// down to it, exclusive of both (each the block the one before it links back to, the
    /// last linking to the recorded block), so the recorded block is an ancestor of the
    /// trusted one — else the timeline and the client's chain fork.
    fn link_below(&self, trusted: &ChainState, index: u64, id: BlockId) -> Result<(), ProofError> {
        let from = trusted.header.index;
        let defaults = self.link_defaults(trusted);
        let mut below = (index, id);
        for (step, link) in self.links.iter().enumerate().rev() {
            let h =
                link.rebuild(trusted.chain, &trusted.params, defaults[step], below).map_err(|error| match error {
                    BlockError::NotLinked { .. } => {
                        ProofError::LinkBroken { step: step + 1, index: below.0, above: link.index }
                    }
                    error => ProofError::LinkHeader { step, index: link.index, error },
                })?;
            below = (h.index, h.id());
        }
        if below.0 >= from {
            return Err(ProofError::LinkOrder { step: 0, index: below.0, above: from });
        }
        let level = trusted.params.link_level(below.0, from);
        match level.and_then(|l| trusted.header.back_links.get(l as usize)) {
            Some(id) if *id == below.1 => Ok(()),
            // The trusted header itself links to the recorded index: the record names
            // another block there.
            Some(_) if self.links.is_empty() => Err(ProofError::Fork { index }),
            _ => Err(ProofError::LinksBelow { index }),
        }
    }

    /// The committee and policy hashes each link's left-out ones default to: the link's
    /// listed before it, the first's the trusted header's.
    fn link_defaults(&self, trusted: &ChainState) -> Vec<([u8; 32], [u8; 32])> {
        let mut hashes = (trusted.header.committee_hash, trusted.header.policy_hash);
        self.links
            .iter()
            .map(|link| {
                let defaults = hashes;
                hashes = link.hashes(defaults);
                defaults
            })
            .collect()
    }

    /// The checkpoints after `trusted` the links show: each link names the newest
    /// checkpoint before it, and the recorded block may be one. Ascending, without repeats;
    /// a checkpoint no link names is not listed (a forward proof lands on every one).
    fn shown_checkpoints(&self, trusted: &ChainState, recorded: &ChainState) -> Vec<u64> {
        let mut shown: Vec<u64> =
            self.links.iter().map(|l| l.previous_checkpoint).filter(|&c| c > trusted.header.index).collect();
        if recorded.is_checkpoint {
            shown.push(recorded.header.index);
        }
        shown.sort_unstable();
        shown.dedup();
        shown
    }
}

fn check_links(params: &ChainParams, h: &Header) -> Result<(), BlockError> {
    let expected = params.height(h.index);
    if h.height != expected {
        return Err(BlockError::WrongHeight { index: h.index, expected, got: h.height });
    }
    if h.back_links.len() != expected as usize {
        return Err(BlockError::BackLinkCount { index: h.index, expected: expected as usize, got: h.back_links.len() });
    }
    Ok(())
}

/// The indices a forward proof from `from` to `to` lands on (excluding `from`, including
/// `to`): the highest link that passes neither `to` nor the next of `checkpoints` (the
/// checkpoints strictly between, ascending).
pub fn forward_path(params: &ChainParams, from: u64, to: u64, checkpoints: &[u64]) -> Vec<u64> {
    let mut path = Vec::new();
    let mut at = from;
    for &stop in checkpoints.iter().filter(|&&c| c > from && c < to).chain(std::iter::once(&to)) {
        while let Some(next) = params.highest_step(at, stop) {
            path.push(next);
            at = next;
        }
    }
    path
}

/// The indices a backward proof from `from` down to `to` visits (excluding `from`,
/// including `to`).
pub fn backward_path(params: &ChainParams, from: u64, to: u64) -> Vec<u64> {
    let mut path = Vec::new();
    let mut at = from;
    while let Some(next) = params.highest_back_step(at, to) {
        path.push(next);
        at = next;
    }
    path
}

/// A verified backward proof's result: the earlier block's header and, if the proof
/// carried it, its payload (checked against the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierBlock {
    pub header: Header,
    pub payload: Option<Vec<u8>>,
}

/// A proof that an earlier block belongs to a chain, from a later block the verifier
/// trusts: headers linked by back links; no signatures needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackwardProof {
    /// Headers from the one after the trusted block down to the target.
    pub headers: Vec<Header>,
    /// The target's payload, when asked for.
    pub payload: Option<Vec<u8>>,
}

impl BackwardProof {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("proofs serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::decode_exact(bytes)
    }

    /// Checks that each header is the one its predecessor links back to, starting from the
    /// trusted `state`, and returns the last (earliest) header.
    pub fn verify(&self, trusted: &ChainState) -> Result<Verified<EarlierBlock>, ProofError> {
        let params = &trusted.params;
        let mut current = &trusted.header;
        for (step, h) in self.headers.iter().enumerate() {
            let (from, index) = (current.index, h.index);
            let expected_chain = if index == 0 { None } else { Some(trusted.chain) };
            let genesis_ok = index != 0 || h.params == Some(*params);
            if h.chain != expected_chain || !genesis_ok || (index != 0 && check_links(params, h).is_err()) {
                return Err(ProofError::BackwardHeader { step, index });
            }
            let Some(level) = params.link_level(index, from) else {
                return Err(ProofError::NotBackward { step, from, index });
            };
            if current.back_links.get(level as usize) != Some(&h.id()) {
                return Err(ProofError::BackwardLink { step, from, index });
            }
            current = h;
        }
        if let Some(payload) = &self.payload {
            if payload_hash(payload) != current.payload_hash {
                return Err(ProofError::PayloadHash);
            }
        }
        Ok(Verified::new(EarlierBlock { header: current.clone(), payload: self.payload.clone() }))
    }
}
