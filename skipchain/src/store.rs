//! Block stores: the `Store` trait, an in-memory store, and the chain operations on any
//! store (append with full validation, head state, proof building).
//!
//! Proofs are built from a handful of block reads, never by loading a chain.

use crate::block::{Block, BlockId, ChainId, ChainParams, Header};
use crate::chain::{BlockError, ChainState, Verified};
use crate::proof::{
    backward_path, forward_path, BackwardProof, LinkPayload, LinkedProof, NamedHead, PolicyChanged, Proof, ProofStep,
    StepHeader,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// What a store keeps per chain next to its blocks, updated atomically with each append:
/// the head's index and where the committee and policy in force there were carried, so
/// that loading the head state reads three blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    pub index: u64,
    /// The head block's id.
    pub id: BlockId,
    /// The genesis's kind, so that a chain's kind is known without reading its genesis.
    pub kind: u16,
    pub committee_at: u64,
    pub policy_at: u64,
    pub params: ChainParams,
}

/// A block store holding many chains, keyed by chain id.
///
/// Implementations write each commit atomically (block, indices and head together) and,
/// once `commit` returns, durably. They do not validate: [`append`] does, then commits.
pub trait Store: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    fn chains(&self) -> Result<Vec<ChainId>, Self::Error>;
    /// Up to `limit` chains in id order, after `after` (from the first if `None`): a page
    /// of [`Store::chains`] that costs the page, where the store can.
    fn chains_after(&self, after: Option<&ChainId>, limit: usize) -> Result<Vec<ChainId>, Self::Error> {
        let mut chains = self.chains()?;
        chains.sort_unstable();
        Ok(chains.into_iter().filter(|c| after.is_none_or(|a| c > a)).take(limit).collect())
    }
    fn head(&self, chain: &ChainId) -> Result<Option<HeadRecord>, Self::Error>;
    /// Every chain's head record, in one pass where the store can.
    fn heads(&self) -> Result<Vec<(ChainId, HeadRecord)>, Self::Error> {
        let mut heads = Vec::new();
        for chain in self.chains()? {
            if let Some(head) = self.head(&chain)? {
                heads.push((chain, head));
            }
        }
        Ok(heads)
    }
    fn block(&self, chain: &ChainId, index: u64) -> Result<Option<Block>, Self::Error>;
    /// The id of a block, without reading the whole block where the store can.
    fn block_id(&self, chain: &ChainId, index: u64) -> Result<Option<BlockId>, Self::Error> {
        Ok(self.block(chain, index)?.map(|b| b.id()))
    }
    /// Which chain and index a block id is.
    fn locate(&self, id: &BlockId) -> Result<Option<(ChainId, u64)>, Self::Error>;
    /// The checkpoints (genesis excluded) with `after < index < before`, ascending.
    fn checkpoints(&self, chain: &ChainId, after: u64, before: u64) -> Result<Vec<u64>, Self::Error>;
    /// Writes `block` as the new head if the chain's head is still `expected_head` (`None`:
    /// the chain must not exist). Returns `Ok(false)`, writing nothing, if it is not.
    fn commit(&self, expected_head: Option<u64>, write: &Commit<'_>) -> Result<bool, Self::Error>;
}

/// Everything one append writes.
#[derive(Debug)]
pub struct Commit<'a> {
    pub chain: ChainId,
    pub block: &'a Block,
    pub id: BlockId,
    pub head: HeadRecord,
    pub is_checkpoint: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError<E: std::error::Error + 'static> {
    #[error("storage: {0}")]
    Backend(#[source] E),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("block refused: {0}")]
    Block(#[from] BlockError),
    #[error("chain {0} is not in this store")]
    UnknownChain(ChainId),
    #[error("chain {0} already exists")]
    ChainExists(ChainId),
    #[error("the head of chain {chain} moved while the block was checked (now {head:?}); retry on the new head")]
    Conflict { chain: ChainId, head: Option<u64> },
    #[error("no block {index} in chain {chain} (head is {head})")]
    NoSuchBlock { chain: ChainId, index: u64, head: u64 },
    #[error("a proof from block {from} to block {to} must go {direction}")]
    WrongDirection { from: u64, to: u64, direction: &'static str },
}

type StoreResult<T, E> = Result<T, StoreError<E>>;

fn need<T, E: std::error::Error>(value: Option<T>, what: impl FnOnce() -> String) -> StoreResult<T, E> {
    value.ok_or_else(|| StoreError::Corrupt(what()))
}

/// The verified state of a chain at its head, read from the store (which holds only
/// blocks that were verified before they were written).
pub fn head_state<S: Store>(store: &S, chain: &ChainId) -> StoreResult<Verified<ChainState>, S::Error> {
    let head = store.head(chain).map_err(StoreError::Backend)?.ok_or(StoreError::UnknownChain(*chain))?;
    let block =
        need(store.block(chain, head.index).map_err(StoreError::Backend)?, || format!("head {} missing", head.index))?;
    let committee = match block.committee.clone() {
        Some(a) => a.committee,
        None => {
            need(store.block(chain, head.committee_at).map_err(StoreError::Backend)?.and_then(|b| b.committee), || {
                format!("committee at {} missing", head.committee_at)
            })?
            .committee
        }
    };
    let policy = match block.policy.clone() {
        Some(p) => p,
        None => need(store.block(chain, head.policy_at).map_err(StoreError::Backend)?.and_then(|b| b.policy), || {
            format!("policy at {} missing", head.policy_at)
        })?,
    };
    Ok(Verified::new(ChainState {
        chain: *chain,
        params: head.params,
        id: block.id(),
        is_checkpoint: block.committee.is_some() || block.policy.is_some(),
        header: block.header,
        committee: Arc::new(committee),
        policy: Arc::new(policy),
    }))
}

/// Validates `block` completely (a genesis, or the successor of its chain's head with its
/// collective signature) and appends it. Nothing is written if any check fails.
pub fn append<S: Store>(store: &S, block: &Block) -> StoreResult<Verified<ChainState>, S::Error> {
    let (state, expected_head) = match block.header.chain {
        None => {
            let state = ChainState::genesis(block)?;
            if store.head(&state.chain).map_err(StoreError::Backend)?.is_some() {
                return Err(StoreError::ChainExists(state.chain));
            }
            (state, None)
        }
        Some(chain) => {
            let head = head_state(store, &chain)?;
            let link = |index: u64| store.block_id(&chain, index).ok().flatten();
            (head.extend(block, link)?, Some(head.header.index))
        }
    };
    commit_verified(store, &state, block, expected_head)?;
    Ok(state)
}

/// Appends a block already checked into `state` (by [`ChainState::extend`] or
/// [`ChainState::genesis`]) on top of `expected_head`.
pub fn commit_verified<S: Store>(
    store: &S,
    state: &Verified<ChainState>,
    block: &Block,
    expected_head: Option<u64>,
) -> StoreResult<(), S::Error> {
    let index = state.header.index;
    let previous = match expected_head {
        Some(_) => store.head(&state.chain).map_err(StoreError::Backend)?,
        None => None,
    };
    let head = HeadRecord {
        index,
        id: state.id,
        kind: if index == 0 { block.header.kind } else { previous.map_or(block.header.kind, |p| p.kind) },
        committee_at: if block.committee.is_some() { index } else { previous.map_or(0, |p| p.committee_at) },
        policy_at: if block.policy.is_some() { index } else { previous.map_or(0, |p| p.policy_at) },
        params: state.params,
    };
    let write = Commit { chain: state.chain, block, id: state.id, head, is_checkpoint: state.is_checkpoint };
    if store.commit(expected_head, &write).map_err(StoreError::Backend)? {
        Ok(())
    } else {
        let head = store.head(&state.chain).map_err(StoreError::Backend)?.map(|h| h.index);
        Err(StoreError::Conflict { chain: state.chain, head })
    }
}

fn head_index<S: Store>(store: &S, chain: &ChainId) -> StoreResult<u64, S::Error> {
    Ok(store.head(chain).map_err(StoreError::Backend)?.ok_or(StoreError::UnknownChain(*chain))?.index)
}

fn read_block<S: Store>(store: &S, chain: &ChainId, index: u64, head: u64) -> StoreResult<Block, S::Error> {
    store.block(chain, index).map_err(StoreError::Backend)?.ok_or(StoreError::NoSuchBlock {
        chain: *chain,
        index,
        head,
    })
}

/// The forward proof from block `from` to block `to` (both stored, `from <= to`).
pub fn prove<S: Store>(
    store: &S,
    chain: &ChainId,
    from: u64,
    to: u64,
    with_payload: bool,
) -> StoreResult<Proof, S::Error> {
    let (head, params) = forward_range(store, chain, from, to)?;
    let checkpoints = store.checkpoints(chain, from, to).map_err(StoreError::Backend)?;
    let path = forward_path(&params, from, to, &checkpoints);
    prove_along(store, chain, head, &params, from, to, path, with_payload)
}

/// The forward proof from block `from` through every block up to `to` (what timeline
/// change lists come with: each block's entry is needed), without payload.
pub fn prove_each<S: Store>(store: &S, chain: &ChainId, from: u64, to: u64) -> StoreResult<Proof, S::Error> {
    let (head, params) = forward_range(store, chain, from, to)?;
    prove_along(store, chain, head, &params, from, to, ((from + 1)..=to).collect(), false)
}

/// The head index and params of `chain`, once `from ..= to` is checked to be a stored
/// forward range.
fn forward_range<S: Store>(
    store: &S,
    chain: &ChainId,
    from: u64,
    to: u64,
) -> StoreResult<(u64, ChainParams), S::Error> {
    let head = head_index(store, chain)?;
    if to > head {
        return Err(StoreError::NoSuchBlock { chain: *chain, index: to, head });
    }
    if from > to {
        return Err(StoreError::WrongDirection { from, to, direction: "forward" });
    }
    let params = store.head(chain).map_err(StoreError::Backend)?.expect("head read above").params;
    Ok((head, params))
}

/// The steps along `path` (ascending, ending at `to`, every hop a back link) from `from`.
#[allow(clippy::too_many_arguments)]
fn prove_along<S: Store>(
    store: &S,
    chain: &ChainId,
    head: u64,
    params: &ChainParams,
    from: u64,
    to: u64,
    path: Vec<u64>,
    with_payload: bool,
) -> StoreResult<Proof, S::Error> {
    let mut steps = Vec::new();
    let mut payload = None;
    // Steps leave out what equals the previous block's header and their link to it
    // (`StepHeader`).
    let mut previous = if path.is_empty() { None } else { Some(read_block(store, chain, from, head)?.header) };
    for index in path {
        let block = read_block(store, chain, index, head)?;
        let signature = need(block.signature, || format!("block {index} has no signature"))?;
        // Only committee changes and the target keep their signature (`ProofStep`).
        let signature = (index == to || block.committee.is_some()).then_some(signature);
        // A policy change travels with the payload that authorizes it.
        let policy = block.policy.map(|policy| PolicyChanged { policy, payload: block.payload.clone() });
        if index == to && with_payload {
            payload = Some(block.payload);
        }
        let previous_header = previous.as_ref().expect("read when the path is not empty");
        let header =
            StepHeader::new(&block.header, previous_header, implied_level(params, previous_header.index, index));
        steps.push(ProofStep { header, signature, committee: block.committee, policy });
        previous = Some(block.header);
    }
    if with_payload && from == to {
        payload = Some(read_block(store, chain, to, head)?.payload);
    }
    Ok(Proof { steps, payload })
}

/// The level of the back link from block `index` to block `below` (on a proof's path).
fn implied_level(params: &ChainParams, below: u64, index: u64) -> u8 {
    params.link_level(below, index).expect("a proof's path follows back links")
}

/// The headers of the blocks on `path` (descending) as a linked proof's links: hashes
/// defaulting to the link listed before (the first: `trusted`'s), each without its back
/// link to the next (the last: to `bottom`).
fn link_headers<S: Store>(
    store: &S,
    chain: &ChainId,
    head: u64,
    params: &ChainParams,
    trusted: &Header,
    path: &[u64],
    bottom: u64,
) -> StoreResult<Vec<StepHeader>, S::Error> {
    let mut links = Vec::with_capacity(path.len());
    let mut above = trusted.clone();
    for (k, &index) in path.iter().enumerate() {
        let header = read_block(store, chain, index, head)?.header;
        let below = path.get(k + 1).copied().unwrap_or(bottom);
        links.push(StepHeader::new(&header, &above, implied_level(params, below, index)));
        above = header;
    }
    Ok(links)
}

/// The linked proof from block `from` (the verifier's) through block `recorded` (the head a
/// timeline block records) to block `to`: the links down from `recorded`; when the
/// committee in force there differs from the one at `from`, the appointments of every
/// committee change in between (those whose digest `held` does not name); the policy in force there
/// when it differs; then the forward proof from the later of `from` and `recorded`. If
/// `recorded` is below `from` (and not the genesis), the links lead down from `from` to it.
pub fn prove_linked<S: Store>(
    store: &S,
    chain: &ChainId,
    from: u64,
    recorded: u64,
    to: u64,
    with_payload: bool,
    held: impl Fn(&[u8; 32]) -> bool,
) -> StoreResult<LinkedProof, S::Error> {
    prove_linked_through(store, chain, from, recorded, to, with_payload, None, held)
}

/// [`prove_linked`], with the links routed through block `through` and its payload carried
/// when it lies strictly between `from` and `recorded` (otherwise as [`prove_linked`]).
#[allow(clippy::too_many_arguments)]
pub fn prove_linked_through<S: Store>(
    store: &S,
    chain: &ChainId,
    from: u64,
    recorded: u64,
    to: u64,
    with_payload: bool,
    through: Option<u64>,
    held: impl Fn(&[u8; 32]) -> bool,
) -> StoreResult<LinkedProof, S::Error> {
    let head = head_index(store, chain)?;
    let start = from.max(recorded);
    if start > to || to > head {
        let index = if to > head { to } else { start };
        return Err(StoreError::NoSuchBlock { chain: *chain, index, head });
    }
    let beyond = prove(store, chain, start, to, with_payload)?;
    if recorded == from || recorded == 0 {
        return Ok(LinkedProof {
            links: Vec::new(),
            appointments: Vec::new(),
            policies: Vec::new(),
            beyond,
            link_payload: None,
            named: None,
        });
    }
    let params = store.head(chain).map_err(StoreError::Backend)?.expect("head read above").params;
    let trusted = read_block(store, chain, from, head)?.header;
    if recorded < from {
        // Down from the verifier's block to the recorded one, both left out: it shows no
        // fork below.
        let mut path = backward_path(&params, from, recorded);
        path.pop();
        let links = link_headers(store, chain, head, &params, &trusted, &path, recorded)?;
        return Ok(LinkedProof {
            links,
            appointments: Vec::new(),
            policies: Vec::new(),
            beyond,
            link_payload: None,
            named: None,
        });
    }
    let through = through.filter(|&t| from < t && t < recorded);
    let mut path = vec![recorded];
    let mut link_payload = None;
    if let Some(t) = through {
        // Down to `through` (the path ends on it), then on from there.
        path.extend(backward_path(&params, recorded, t));
        path.extend(backward_path(&params, t, from));
        link_payload = Some(LinkPayload { index: t, payload: read_block(store, chain, t, head)?.payload });
    } else {
        path.extend(backward_path(&params, recorded, from));
    }
    path.pop(); // `from` itself: the verifier has it
    let links = link_headers(store, chain, head, &params, &trusted, &path, from)?;
    let top = read_block(store, chain, recorded, head)?.header;
    // Hashes change only at checkpoints: every committee change in (from, recorded] goes
    // in (the verifier checks the lineage), and every policy change with the payload that
    // authorized it (the verifier checks each transition).
    let mut appointments = Vec::new();
    let mut policies = Vec::new();
    let need_committee = top.committee_hash != trusted.committee_hash;
    let need_policy = top.policy_hash != trusted.policy_hash;
    if need_committee || need_policy {
        let mut checkpoints = store.checkpoints(chain, from, recorded).map_err(StoreError::Backend)?;
        checkpoints.push(recorded);
        for index in checkpoints {
            let block = read_block(store, chain, index, head)?;
            if need_committee {
                appointments.extend(block.committee.filter(|a| !held(&a.digest())));
            }
            if need_policy {
                policies.extend(block.policy.map(|policy| PolicyChanged { policy, payload: block.payload }));
            }
        }
    }
    Ok(LinkedProof { links, appointments, policies, beyond, link_payload, named: None })
}

/// [`prove_linked`] for a recorded block whose payload names block `named` (SPEC §7.5,
/// [`LinkedProof::named`]): the recorded block in full, then the links down from the named
/// block, whose payload they carry (none when it is `from` itself), so the blocks between
/// the two are left out. Falls back to [`prove_linked_through`] `named` when that form does
/// not apply: the named block before `from` or not before `recorded`, not the block this
/// store holds there, or a committee or policy change after it.
#[allow(clippy::too_many_arguments)]
pub fn prove_linked_named<S: Store>(
    store: &S,
    chain: &ChainId,
    from: u64,
    recorded: u64,
    to: u64,
    with_payload: bool,
    named: (u64, BlockId),
    held: impl Fn(&[u8; 32]) -> bool,
) -> StoreResult<LinkedProof, S::Error> {
    let head = head_index(store, chain)?;
    let (named, named_id) = named;
    if from <= named && named < recorded && recorded <= to && to <= head {
        let top = read_block(store, chain, recorded, head)?;
        let below = read_block(store, chain, named, head)?;
        let hashes = |h: &Header| (h.committee_hash, h.policy_hash);
        // A name that is not this store's block there would fail every verifier: plain links.
        let same_block = below.id() == named_id;
        if same_block && hashes(&top.header) == hashes(&below.header) && top.header.previous_checkpoint <= named {
            let mut proof = prove_linked_through(store, chain, from, named, named, false, None, &held)?;
            proof.beyond = prove(store, chain, recorded, to, with_payload && to > recorded)?;
            // The verifier holds the named block when it is its own.
            proof.link_payload = (named > from).then_some(LinkPayload { index: named, payload: below.payload });
            let params = store.head(chain).map_err(StoreError::Backend)?.expect("head read above").params;
            proof.named = Some(NamedHead::new(&top, &params, named));
            return Ok(proof);
        }
    }
    prove_linked_through(store, chain, from, recorded, to, with_payload, Some(named), held)
}

/// The backward proof from block `from` down to block `to` (`to <= from`).
pub fn prove_backward<S: Store>(
    store: &S,
    chain: &ChainId,
    from: u64,
    to: u64,
    with_payload: bool,
) -> StoreResult<BackwardProof, S::Error> {
    let head = head_index(store, chain)?;
    if from > head {
        return Err(StoreError::NoSuchBlock { chain: *chain, index: from, head });
    }
    if to > from {
        return Err(StoreError::WrongDirection { from, to, direction: "backward" });
    }
    let params = store.head(chain).map_err(StoreError::Backend)?.expect("head read above").params;
    let mut headers = Vec::new();
    let mut payload = None;
    for index in backward_path(&params, from, to) {
        let block = read_block(store, chain, index, head)?;
        if index == to && with_payload {
            payload = Some(block.payload);
        }
        headers.push(block.header);
    }
    if with_payload && from == to {
        payload = Some(read_block(store, chain, to, head)?.payload);
    }
    Ok(BackwardProof { headers, payload })
}

/// A store in memory, for tests, simulations and benchmarks. Same semantics as the
/// RocksDB store, without durability.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    chains: HashMap<ChainId, MemoryChain>,
    by_id: HashMap<BlockId, (ChainId, u64)>,
}

struct MemoryChain {
    blocks: Vec<Block>,
    ids: Vec<BlockId>,
    head: HeadRecord,
    checkpoints: BTreeSet<u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    type Error = std::convert::Infallible;

    fn chains(&self) -> Result<Vec<ChainId>, Self::Error> {
        Ok(self.inner.read().expect("lock").chains.keys().copied().collect())
    }

    fn head(&self, chain: &ChainId) -> Result<Option<HeadRecord>, Self::Error> {
        Ok(self.inner.read().expect("lock").chains.get(chain).map(|c| c.head))
    }

    fn block(&self, chain: &ChainId, index: u64) -> Result<Option<Block>, Self::Error> {
        let inner = self.inner.read().expect("lock");
        Ok(inner.chains.get(chain).and_then(|c| c.blocks.get(index as usize)).cloned())
    }

    fn block_id(&self, chain: &ChainId, index: u64) -> Result<Option<BlockId>, Self::Error> {
        let inner = self.inner.read().expect("lock");
        Ok(inner.chains.get(chain).and_then(|c| c.ids.get(index as usize)).copied())
    }

    fn locate(&self, id: &BlockId) -> Result<Option<(ChainId, u64)>, Self::Error> {
        Ok(self.inner.read().expect("lock").by_id.get(id).copied())
    }

    fn checkpoints(&self, chain: &ChainId, after: u64, before: u64) -> Result<Vec<u64>, Self::Error> {
        let inner = self.inner.read().expect("lock");
        if after.saturating_add(1) >= before {
            return Ok(Vec::new());
        }
        Ok(inner.chains.get(chain).map_or_else(Vec::new, |c| c.checkpoints.range(after + 1..before).copied().collect()))
    }

    fn commit(&self, expected_head: Option<u64>, write: &Commit<'_>) -> Result<bool, Self::Error> {
        let mut inner = self.inner.write().expect("lock");
        let current = inner.chains.get(&write.chain).map(|c| c.head.index);
        if current != expected_head {
            return Ok(false);
        }
        let index = write.head.index;
        inner.by_id.insert(write.id, (write.chain, index));
        match inner.chains.get_mut(&write.chain) {
            Some(chain) => {
                chain.blocks.push(write.block.clone());
                chain.ids.push(write.id);
                chain.head = write.head;
                if write.is_checkpoint {
                    chain.checkpoints.insert(index);
                }
            }
            None => {
                inner.chains.insert(
                    write.chain,
                    MemoryChain {
                        blocks: vec![write.block.clone()],
                        ids: vec![write.id],
                        head: write.head,
                        checkpoints: BTreeSet::new(),
                    },
                );
            }
        }
        Ok(true)
    }
}
