//! What it takes for a block to extend a chain, and the verified state a chain is in.

use crate::authority::{Appointment, AuthorityError};
use crate::block::{payload_hash, policy_hash, Block, BlockId, ChainId, ChainParams, Committee, Header, ParamsError};
use chainiac_cosi::VerifyError;
use std::ops::Deref;
use std::sync::Arc;

/// A value that passed verification. Only this crate constructs one, so a `Verified<T>`
/// in hand is proof that the checks ran (the rustls typestate habit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub(crate) fn new(value: T) -> Self {
        Verified(value)
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Why a block cannot extend a chain (or be its genesis). Each variant names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block is for chain {got:?}, expected {expected:?}")]
    WrongChain { expected: Option<ChainId>, got: Option<ChainId> },
    #[error("block index is {got}, the next index is {expected}")]
    WrongIndex { expected: u64, got: u64 },
    #[error("block {index} has height {got}, its index gives height {expected}")]
    WrongHeight { index: u64, expected: u8, got: u8 },
    #[error("block {index} has {got} back links, its height requires {expected}")]
    BackLinkCount { index: u64, expected: usize, got: usize },
    #[error("block {index}: back link at level {level} is not the id of block {target}")]
    BackLink { index: u64, level: u8, target: u64 },
    #[error("block {index}: only the genesis carries chain parameters")]
    UnexpectedParams { index: u64 },
    #[error("genesis: {0}")]
    Params(#[from] ParamsError),
    #[error("genesis must have index 0, no chain id, no back links, no signature and carry its committee, policy and parameters")]
    MalformedGenesis,
    #[error("block {index}: timestamp {got} ms is before its predecessor's {previous} ms")]
    TimestampBackwards { index: u64, previous: u64, got: u64 },
    #[error("block {index}: payload does not match the header's payload hash")]
    PayloadHash { index: u64 },
    #[error("block {index} changes the committee but does not carry it")]
    MissingCommittee { index: u64 },
    #[error("block {index} carries a committee although it does not change it")]
    UnexpectedCommittee { index: u64 },
    #[error("block {index}: the committee it carries does not match its committee hash")]
    CommitteeHash { index: u64 },
    #[error("block {index} changes the policy but does not carry it")]
    MissingPolicy { index: u64 },
    #[error("block {index} carries a policy although it does not change it")]
    UnexpectedPolicy { index: u64 },
    #[error("block {index}: the policy it carries does not match its policy hash")]
    PolicyHash { index: u64 },
    #[error("block {index}: previous checkpoint is {got}, should be {expected}")]
    PreviousCheckpoint { index: u64, expected: u64, got: u64 },
    #[error("block {index} does not link back to block {from}, the block the proof stands on")]
    NotLinked { index: u64, from: u64 },
    #[error("block {index} skips checkpoint {checkpoint} after block {from}; a proof must land on every checkpoint")]
    SkippedCheckpoint { index: u64, from: u64, checkpoint: u64 },
    #[error("block {index} has no collective signature")]
    MissingSignature { index: u64 },
    #[error("block {index}: collective signature by the predecessor's committee: {error}")]
    Signature { index: u64, error: VerifyError },
    #[error("block {index} changes the committee without authority: {error}")]
    Authority { index: u64, error: AuthorityError },
    #[error("block {index} changes the policy without authority: {reason}")]
    PolicyAuthority { index: u64, reason: String },
}

/// A chain's verified state at one block: enough to check the next block, or a proof
/// that starts here. What a client stores as its trust anchor, and what a witness holds
/// for the head of each chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub chain: ChainId,
    pub params: ChainParams,
    pub header: Header,
    pub id: BlockId,
    /// The committee that signs the next block.
    pub committee: Arc<Committee>,
    /// The policy in force at this block.
    pub policy: Arc<Vec<u8>>,
    /// Whether this block is a checkpoint (genesis, or changed committee or policy).
    pub is_checkpoint: bool,
}

impl ChainState {
    /// Checks a genesis block and returns the chain's state at it.
    pub fn genesis(block: &Block) -> Result<Verified<ChainState>, BlockError> {
        let h = &block.header;
        let (Some(params), Some(appointment), Some(policy)) = (h.params, &block.committee, &block.policy) else {
            return Err(BlockError::MalformedGenesis);
        };
        if !appointment.approvals.is_empty() {
            return Err(BlockError::Authority { index: 0, error: AuthorityError::GenesisApprovals });
        }
        let committee = &appointment.committee;
        if h.chain.is_some()
            || h.index != 0
            || !h.back_links.is_empty()
            || block.signature.is_some()
            || h.previous_checkpoint != 0
        {
            return Err(BlockError::MalformedGenesis);
        }
        params.check()?;
        if h.height != params.max_height {
            return Err(BlockError::WrongHeight { index: 0, expected: params.max_height, got: h.height });
        }
        if committee.hash() != h.committee_hash {
            return Err(BlockError::CommitteeHash { index: 0 });
        }
        if policy_hash(policy) != h.policy_hash {
            return Err(BlockError::PolicyHash { index: 0 });
        }
        if payload_hash(&block.payload) != h.payload_hash {
            return Err(BlockError::PayloadHash { index: 0 });
        }
        let id = h.id();
        Ok(Verified::new(ChainState {
            chain: id,
            params,
            header: h.clone(),
            id,
            committee: Arc::new(committee.clone()),
            policy: Arc::new(policy.clone()),
            is_checkpoint: true,
        }))
    }

    pub fn index(&self) -> u64 {
        self.header.index
    }

    /// The `previous_checkpoint` the next block must carry.
    pub fn next_previous_checkpoint(&self) -> u64 {
        if self.is_checkpoint {
            self.header.index
        } else {
            self.header.previous_checkpoint
        }
    }

    /// Checks everything about `block` as the successor of this state except its signature:
    /// what a witness checks before it cosigns. `back_link` gives the id of an earlier block
    /// of this chain by index (from the store); it is asked only for indices below the next.
    pub fn check_successor(&self, block: &Block, back_link: impl Fn(u64) -> Option<BlockId>) -> Result<(), BlockError> {
        let h = &block.header;
        let next = self.header.index + 1;
        if h.chain != Some(self.chain) {
            return Err(BlockError::WrongChain { expected: Some(self.chain), got: h.chain });
        }
        if h.index != next {
            return Err(BlockError::WrongIndex { expected: next, got: h.index });
        }
        if h.params.is_some() {
            return Err(BlockError::UnexpectedParams { index: next });
        }
        let height = self.params.height(next);
        if h.height != height {
            return Err(BlockError::WrongHeight { index: next, expected: height, got: h.height });
        }
        if h.back_links.len() != height as usize {
            return Err(BlockError::BackLinkCount { index: next, expected: height as usize, got: h.back_links.len() });
        }
        for (level, link) in h.back_links.iter().enumerate() {
            let target = next - self.params.span(level as u8);
            let expected = if target == self.header.index { Some(self.id) } else { back_link(target) };
            if expected != Some(*link) {
                return Err(BlockError::BackLink { index: next, level: level as u8, target });
            }
        }
        if h.timestamp_ms < self.header.timestamp_ms {
            return Err(BlockError::TimestampBackwards {
                index: next,
                previous: self.header.timestamp_ms,
                got: h.timestamp_ms,
            });
        }
        if payload_hash(&block.payload) != h.payload_hash {
            return Err(BlockError::PayloadHash { index: next });
        }
        check_carried(h, block.committee.as_ref().map(|a| &a.committee), block.policy.as_ref(), &self.header)?;
        let expected = self.next_previous_checkpoint();
        if h.previous_checkpoint != expected {
            return Err(BlockError::PreviousCheckpoint { index: next, expected, got: h.previous_checkpoint });
        }
        if let Some(appointment) = &block.committee {
            appointment
                .check_change(&self.committee, &self.chain, h.timestamp_ms)
                .map_err(|error| BlockError::Authority { index: next, error })?;
        }
        Ok(())
    }

    /// Checks `block` completely as the successor of this state, its collective signature
    /// by this state's committee included, and returns the state at `block`.
    pub fn extend(
        &self,
        block: &Block,
        back_link: impl Fn(u64) -> Option<BlockId>,
    ) -> Result<Verified<ChainState>, BlockError> {
        self.check_successor(block, back_link)?;
        let index = block.header.index;
        let id = block.header.id();
        let signature = block.signature.as_ref().ok_or(BlockError::MissingSignature { index })?;
        signature.verify(&self.committee, &id).map_err(|error| BlockError::Signature { index, error })?;
        Ok(Verified::new(self.successor(block, id)))
    }

    /// The state at `block`, which has been checked to follow this one.
    pub(crate) fn successor(&self, block: &Block, id: BlockId) -> ChainState {
        self.successor_of(&block.header, id, block.committee.as_ref().map(|a| &a.committee), block.policy.as_ref())
    }

    pub(crate) fn successor_of(
        &self,
        header: &Header,
        id: BlockId,
        committee: Option<&Committee>,
        policy: Option<&Vec<u8>>,
    ) -> ChainState {
        ChainState {
            chain: self.chain,
            params: self.params,
            header: header.clone(),
            id,
            committee: committee.map_or_else(|| self.committee.clone(), |c| Arc::new(c.clone())),
            policy: policy.map_or_else(|| self.policy.clone(), |p| Arc::new(p.clone())),
            is_checkpoint: committee.is_some() || policy.is_some(),
        }
    }

    /// The unsigned block that would follow this state with `proposal`. A committee or
    /// policy equal to the one in force is not a change and is left out.
    pub fn propose(&self, proposal: Proposal, back_link: impl Fn(u64) -> Option<BlockId>) -> Result<Block, BlockError> {
        let index = self.header.index + 1;
        let height = self.params.height(index);
        let mut back_links = Vec::with_capacity(height as usize);
        for level in 0..height {
            let target = index - self.params.span(level);
            let id = if target == self.header.index { Some(self.id) } else { back_link(target) };
            back_links.push(id.ok_or(BlockError::BackLink { index, level, target })?);
        }
        let committee = proposal.committee.filter(|a| a.committee.hash() != self.header.committee_hash);
        let policy = proposal.policy.filter(|p| policy_hash(p) != self.header.policy_hash);
        let header = Header {
            chain: Some(self.chain),
            index,
            height,
            back_links,
            params: None,
            kind: proposal.kind,
            payload_hash: payload_hash(&proposal.payload),
            committee_hash: committee.as_ref().map_or(self.header.committee_hash, |a| a.committee.hash()),
            policy_hash: policy.as_deref().map_or(self.header.policy_hash, policy_hash),
            previous_checkpoint: self.next_previous_checkpoint(),
            timestamp_ms: proposal.timestamp_ms.max(self.header.timestamp_ms),
        };
        Ok(Block { header, payload: proposal.payload, committee, policy, signature: None })
    }
}

/// What the layer above wants in the next block.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    pub kind: u16,
    pub payload: Vec<u8>,
    /// Raised to the predecessor's timestamp if earlier.
    pub timestamp_ms: u64,
    /// A new committee to sign the blocks after this one, with the approvals of the
    /// outgoing committee's members that authorize it.
    pub committee: Option<Appointment>,
    /// A new policy in force from this block on.
    pub policy: Option<Vec<u8>>,
}

/// The genesis block of a new chain.
pub fn genesis(
    params: ChainParams,
    committee: Committee,
    policy: Vec<u8>,
    kind: u16,
    payload: Vec<u8>,
    timestamp_ms: u64,
) -> Block {
    let header = Header {
        chain: None,
        index: 0,
        height: params.max_height,
        back_links: Vec::new(),
        params: Some(params),
        kind,
        payload_hash: payload_hash(&payload),
        committee_hash: committee.hash(),
        policy_hash: policy_hash(&policy),
        previous_checkpoint: 0,
        timestamp_ms,
    };
    Block { header, payload, committee: Some(Appointment::anchor(committee)), policy: Some(policy), signature: None }
}

/// A committee or policy is carried exactly when its hash changes, and then matches it.
/// `previous` is the header whose committee and policy are in force before `block`.
pub(crate) fn check_carried(
    header: &Header,
    committee: Option<&Committee>,
    policy: Option<&Vec<u8>>,
    previous: &Header,
) -> Result<(), BlockError> {
    let (h, index) = (header, header.index);
    match (committee, h.committee_hash != previous.committee_hash) {
        (None, true) => return Err(BlockError::MissingCommittee { index }),
        (Some(_), false) => return Err(BlockError::UnexpectedCommittee { index }),
        (Some(c), true) if c.hash() != h.committee_hash => return Err(BlockError::CommitteeHash { index }),
        _ => {}
    }
    match (policy, h.policy_hash != previous.policy_hash) {
        (None, true) => return Err(BlockError::MissingPolicy { index }),
        (Some(_), false) => return Err(BlockError::UnexpectedPolicy { index }),
        (Some(p), true) if policy_hash(p) != h.policy_hash => return Err(BlockError::PolicyHash { index }),
        _ => {}
    }
    Ok(())
}
