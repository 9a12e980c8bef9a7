//! The timeline: a chain whose blocks commit, with a Merkle tree, to the head of every
//! project chain a cothority serves, with the time. A client checks that the timeline head
//! is young enough (freeze attacks) and that its projects' heads are in it.
//!
//! The Merkle tree is RFC 6962's shape (the largest power of two left, the rest right)
//! with chainiac's own domain tags. Leaves are sorted by chain id, so every witness that
//! holds the same heads computes the same root.

use crate::block::{payload_hash, BlockId, ChainId};
use crate::chain::{ChainState, Verified};
use crate::proof::{CatchUp, Proof, ProofError};
use chainiac_cosi::hash;
use serde::{Deserialize, Serialize};
use sha3::Digest;
use std::collections::BTreeMap;

/// Block kind of timeline chains.
pub const KIND_TIMELINE: u16 = 1;
/// Leaf hash: `SHA3-256(tagged(TAG_LEAF) || chain || u64be(index) || head id)`.
pub const TAG_LEAF: &str = "chainiac/v1/timeline/leaf";
/// Inner node hash: `SHA3-256(tagged(TAG_NODE) || left || right)`.
pub const TAG_NODE: &str = "chainiac/v1/timeline/node";
/// Root of an empty tree: `SHA3-256(tagged(TAG_EMPTY))`.
pub const TAG_EMPTY: &str = "chainiac/v1/timeline/empty";
/// Change list hash: `SHA3-256(tagged(TAG_CHANGES) || u64be(m) || the m leaves' chain
/// prefixes || the root of the list's own tree)`; see [`changes_hash`].
pub const TAG_CHANGES: &str = "chainiac/v1/timeline/changes";
/// How many leading bytes of a chain id a change list shows for each leaf: enough that a
/// client following 15,000 chains meets a stranger's prefix about once in 290,000 leaves,
/// few enough that the lists of a busy registry stay small.
pub const PREFIX_LEN: usize = 4;
/// The leading bytes of a chain id a change list shows.
pub type ChainPrefix = [u8; PREFIX_LEN];
/// The most leaves an entry's change list may hold; with more, the entry records none.
pub const MAX_CHANGES: usize = 16_384;

/// One project chain's head, as the timeline records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HeadLeaf {
    pub chain: ChainId,
    pub index: u64,
    pub id: BlockId,
}

impl HeadLeaf {
    pub fn hash(&self) -> [u8; 32] {
        hash::sha3_256(TAG_LEAF, &[&self.chain.0, &self.index.to_be_bytes(), &self.id.0])
    }
}

/// The payload of a timeline block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When the leader made the entry (ms since the Unix epoch); witnesses check the skew.
    pub time_ms: u64,
    /// How many chains the tree covers.
    pub chains: u64,
    /// Merkle root over the chains' [`HeadLeaf`]s, sorted by chain id.
    pub root: [u8; 32],
    /// [`changes_hash`] of the leaves this entry's tree holds and the previous block's did
    /// not (chains new since, heads moved), sorted by chain id: a client that knows the
    /// heads as of the previous block learns every move from the lists alone. `None`: not
    /// recorded (the proposer did not hold the previous block's heads, or more than
    /// [`MAX_CHANGES`] leaves changed).
    pub changes: Option<[u8; 32]>,
}

/// The first [`PREFIX_LEN`] bytes of `chain`.
pub fn chain_prefix(chain: &ChainId) -> ChainPrefix {
    let mut prefix = [0; PREFIX_LEN];
    prefix.copy_from_slice(&chain.0[..PREFIX_LEN]);
    prefix
}

/// The hash an entry records for its change list (sorted by chain): it commits to every
/// leaf's chain prefix in the clear and to the leaves through a Merkle tree over them (the
/// timeline tree's shape and hashes, in list order), so a client downloads the prefixes
/// and opens only the leaves whose prefix it follows.
pub fn changes_hash(changes: &[HeadLeaf]) -> [u8; 32] {
    ChangeList::new(changes.to_vec()).hash()
}

fn commit_changes(prefixes: &[ChainPrefix], list_root: &[u8; 32]) -> [u8; 32] {
    let mut h = hash::sha3_256_tagged(TAG_CHANGES);
    h.update((prefixes.len() as u64).to_be_bytes());
    for prefix in prefixes {
        h.update(prefix);
    }
    h.update(list_root);
    h.finalize().into()
}

impl TimelineEntry {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("entries serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::decode_exact(bytes)
    }
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = hash::sha3_256_tagged(TAG_NODE);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

use crate::merkle::split;

/// The leaves of a timeline tree: sorted by chain, one per chain.
///
/// Invariants: sorted by chain id with no chain twice; `levels[h][i]` is the root of the
/// perfect subtree over leaves `i·2^h .. (i+1)·2^h` (every aligned power-of-two range that
/// fits), so roots and audit paths take O(log² n) hashes instead of O(n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadSet {
    leaves: Vec<HeadLeaf>,
    levels: Vec<Vec<[u8; 32]>>,
}

impl HeadSet {
    /// Sorts `leaves` by chain; a chain listed twice keeps its highest index.
    pub fn new(mut leaves: Vec<HeadLeaf>) -> Self {
        leaves.sort_unstable_by(|a, b| a.chain.cmp(&b.chain).then(b.index.cmp(&a.index)));
        leaves.dedup_by_key(|l| l.chain);
        Self::in_order(leaves)
    }

    /// The tree over `leaves` as given: for change lists, which are sorted already (and
    /// hashed as sent, even if not). [`HeadSet::leaf`] needs sorted leaves.
    fn in_order(leaves: Vec<HeadLeaf>) -> Self {
        let levels = crate::merkle::levels(leaves.iter().map(HeadLeaf::hash).collect(), node);
        HeadSet { leaves, levels }
    }

    pub fn len(&self) -> usize {
        self.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }

    /// Whether two chains or more of the set have this prefix (they sit side by side).
    pub fn shares_prefix(&self, prefix: &ChainPrefix) -> bool {
        let first = self.leaves.partition_point(|leaf| chain_prefix(&leaf.chain) < *prefix);
        self.leaves[first..].iter().take(2).filter(|leaf| chain_prefix(&leaf.chain) == *prefix).count() == 2
    }

    /// The set with `changes` applied: moved heads replace their chain's leaf and rehash
    /// only its path (O(log n) each, what a witness does on every append); chains new to
    /// the set are merged in and the levels rebuilt once. Equal to [`HeadSet::new`] over
    /// the merged leaves (a chain listed twice in `changes` keeps the later entry).
    pub fn apply(&mut self, changes: &[HeadLeaf]) {
        let mut new = Vec::new();
        for change in changes {
            match self.leaves.binary_search_by(|l| l.chain.cmp(&change.chain)) {
                Ok(i) => {
                    self.leaves[i] = *change;
                    self.levels[0][i] = change.hash();
                    let mut at = i;
                    for h in 1..self.levels.len() {
                        at /= 2;
                        if at >= self.levels[h].len() {
                            break;
                        }
                        let below = &self.levels[h - 1];
                        let parent = node(&below[2 * at], &below[2 * at + 1]);
                        self.levels[h][at] = parent;
                    }
                }
                Err(_) => new.push(*change),
            }
        }
        if !new.is_empty() {
            new.reverse(); // the later entry of a chain listed twice comes first, and is kept
            new.sort_by_key(|l| l.chain);
            new.dedup_by_key(|l| l.chain);
            let mut merged = std::mem::take(&mut self.leaves);
            merged.extend(new);
            merged.sort_by_key(|l| l.chain);
            *self = Self::in_order(merged);
        }
    }

    pub fn root(&self) -> [u8; 32] {
        if self.leaves.is_empty() {
            return hash::sha3_256(TAG_EMPTY, &[]);
        }
        self.subtree(0, self.leaves.len())
    }

    /// The root over leaves `lo..hi` (non-empty).
    fn subtree(&self, lo: usize, hi: usize) -> [u8; 32] {
        crate::merkle::subtree(&self.levels, lo, hi, node)
    }

    /// The leaves of this set that `previous` does not hold — chains new since, heads
    /// moved — sorted by chain: the change list an entry over this set records.
    pub fn changes_since(&self, previous: &HeadSet) -> Vec<HeadLeaf> {
        self.leaves.iter().filter(|leaf| previous.leaf(&leaf.chain) != Some(*leaf)).copied().collect()
    }

    /// The entry over this set at `time_ms`, recording its changes since `previous` (the
    /// set of the block before) when known and not more than [`MAX_CHANGES`].
    pub fn entry(&self, time_ms: u64, previous: Option<&HeadSet>) -> (TimelineEntry, Option<Vec<HeadLeaf>>) {
        let changes = previous.map(|p| self.changes_since(p)).filter(|c| c.len() <= MAX_CHANGES);
        let entry = TimelineEntry {
            time_ms,
            chains: self.leaves.len() as u64,
            root: self.root(),
            changes: changes.as_deref().map(changes_hash),
        };
        (entry, changes)
    }

    pub fn leaf(&self, chain: &ChainId) -> Option<&HeadLeaf> {
        self.leaves.binary_search_by(|l| l.chain.cmp(chain)).ok().map(|i| &self.leaves[i])
    }

    /// The inclusion proof of `chain`'s leaf, if the set has it.
    pub fn prove(&self, chain: &ChainId) -> Option<InclusionProof> {
        let position = self.leaves.binary_search_by(|l| l.chain.cmp(chain)).ok()?;
        let path = crate::merkle::path(&self.levels, self.leaves.len(), position, node);
        Some(InclusionProof {
            leaf: self.leaves[position],
            position: position as u64,
            size: self.leaves.len() as u64,
            path,
        })
    }
    /// One proof for the leaves of every chain in `chains` the set has (the others are
    /// marked absent): upper levels shared by several leaves are sent once, and the leaves
    /// leave out their chain ids, which the verifier asked for.
    pub fn prove_many(&self, chains: &[ChainId]) -> MultiInclusionProof {
        let asked = sorted_unique(chains);
        let mut present = vec![0u8; asked.len().div_ceil(8)];
        let mut positions = Vec::new();
        for (i, chain) in asked.iter().enumerate() {
            if let Ok(p) = self.leaves.binary_search_by(|l| l.chain.cmp(chain)) {
                present[i / 8] |= 1 << (i % 8);
                positions.push(p);
            }
        }
        let mut hashes = Vec::new();
        if !positions.is_empty() {
            self.siblings(0, self.leaves.len(), &positions, &mut hashes);
        }
        MultiInclusionProof {
            size: self.leaves.len() as u64,
            present,
            leaves: positions.iter().map(|&p| (p as u64, self.leaves[p].index, self.leaves[p].id)).collect(),
            hashes,
        }
    }

    /// The hashes a verifier of `positions` (sorted, inside `lo..hi`, non-empty) lacks, in
    /// the order [`MultiInclusionProof::verify`] consumes them: depth first, left first.
    fn siblings(&self, lo: usize, hi: usize, positions: &[usize], out: &mut Vec<[u8; 32]>) {
        if hi - lo == 1 {
            return;
        }
        let k = split((hi - lo) as u64) as usize;
        let (left, right) = positions.split_at(positions.partition_point(|&p| p < lo + k));
        if left.is_empty() {
            out.push(self.subtree(lo, lo + k));
        } else {
            self.siblings(lo, lo + k, left, out);
        }
        if right.is_empty() {
            out.push(self.subtree(lo + k, hi));
        } else {
            self.siblings(lo + k, hi, right, out);
        }
    }
}

/// A Merkle audit path from one [`HeadLeaf`] to a timeline root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub leaf: HeadLeaf,
    pub position: u64,
    pub size: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InclusionError {
    #[error("leaf position {position} is outside a tree of {size}")]
    Position { position: u64, size: u64 },
    #[error("the audit path has {got} hashes, a tree of this size needs {expected}")]
    PathLength { expected: usize, got: usize },
    #[error("the audit path does not lead to the timeline's root")]
    Root,
    #[error("the tree size {got} differs from the timeline entry's {expected}")]
    Size { expected: u64, got: u64 },
    #[error("the proof does not carry exactly the subtree hashes its leaves need")]
    HashCount,
    #[error("the proof has no leaf")]
    NoLeaf,
    #[error("the leaf at position {position} is not after the one before it")]
    Order { position: u64 },
    #[error("the presence bits ({bytes} bytes) do not fit the {asked} chains asked for")]
    Present { asked: usize, bytes: usize },
    #[error("the proof marks {marked} chains present but carries {got} leaves")]
    LeafCount { marked: usize, got: usize },
}

impl InclusionProof {
    /// Checks that the leaf is in the tree whose root and size `entry` records.
    pub fn verify(&self, entry: &TimelineEntry) -> Result<(), InclusionError> {
        if self.size != entry.chains {
            return Err(InclusionError::Size { expected: entry.chains, got: self.size });
        }
        if self.position >= self.size {
            return Err(InclusionError::Position { position: self.position, size: self.size });
        }
        let hash = crate::merkle::root_from_path(self.leaf.hash(), self.position, self.size, &self.path, node)
            .map_err(|expected| InclusionError::PathLength { expected, got: self.path.len() })?;
        if hash == entry.root {
            Ok(())
        } else {
            Err(InclusionError::Root)
        }
    }
}

/// One proof that several [`HeadLeaf`]s are in a timeline tree: which of the chains asked
/// for it holds, their leaves without the chain ids (the verifier knows what it asked:
/// 32 bytes less per leaf) and with their positions, and the roots of the subtrees that
/// hold none of them, depth first and left first. For P leaves out of n it carries about
/// P·log2(n/P) hashes instead of P·log2(n).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiInclusionProof {
    pub size: u64,
    /// Bit `i` (of byte `i / 8`, least significant first): whether the `i`-th of the asked
    /// chains, in ascending id order without repeats, is in the tree.
    pub present: Vec<u8>,
    /// (position, head index, head id) of each present chain, in the same order; positions
    /// strictly increasing.
    pub leaves: Vec<(u64, u64, BlockId)>,
    pub hashes: Vec<[u8; 32]>,
}

impl MultiInclusionProof {
    /// Checks that the leaves are in the tree whose root and size `entry` records, at their
    /// positions, for the chains `asked` (in any order, repeats ignored) that the proof
    /// marks present; returns those leaves, by ascending chain id. A proof with no leaf
    /// proves nothing and is refused.
    pub fn verify(&self, entry: &TimelineEntry, asked: &[ChainId]) -> Result<Vec<HeadLeaf>, InclusionError> {
        if self.size != entry.chains {
            return Err(InclusionError::Size { expected: entry.chains, got: self.size });
        }
        let asked = sorted_unique(asked);
        if self.present.len() != asked.len().div_ceil(8) {
            return Err(InclusionError::Present { asked: asked.len(), bytes: self.present.len() });
        }
        let bit = |i: usize| self.present[i / 8] >> (i % 8) & 1 == 1;
        if (asked.len()..self.present.len() * 8).any(bit) {
            return Err(InclusionError::Present { asked: asked.len(), bytes: self.present.len() });
        }
        let chains: Vec<&ChainId> = asked.iter().enumerate().filter(|&(i, _)| bit(i)).map(|(_, c)| c).collect();
        if chains.len() != self.leaves.len() {
            return Err(InclusionError::LeafCount { marked: chains.len(), got: self.leaves.len() });
        }
        let Some(&(last, _, _)) = self.leaves.last() else {
            return Err(InclusionError::NoLeaf);
        };
        if last >= self.size {
            return Err(InclusionError::Position { position: last, size: self.size });
        }
        if let Some(w) = self.leaves.windows(2).find(|w| w[0].0 >= w[1].0) {
            return Err(InclusionError::Order { position: w[1].0 });
        }
        let leaves: Vec<(u64, HeadLeaf)> = self
            .leaves
            .iter()
            .zip(chains)
            .map(|(&(position, index, id), chain)| (position, HeadLeaf { chain: *chain, index, id }))
            .collect();
        let mut hashes = self.hashes.iter();
        let root = fold(0, self.size, &leaves, &mut hashes)?;
        if hashes.len() != 0 {
            return Err(InclusionError::HashCount);
        }
        if root == entry.root {
            Ok(leaves.into_iter().map(|(_, leaf)| leaf).collect())
        } else {
            Err(InclusionError::Root)
        }
    }
}

fn sorted_unique(chains: &[ChainId]) -> Vec<ChainId> {
    let mut chains = chains.to_vec();
    chains.sort_unstable();
    chains.dedup();
    chains
}

/// The root over `lo..hi` given the proof's leaves inside it (sorted, in range): recursion
/// depth is at most 64, the tree's height.
fn fold(
    lo: u64,
    hi: u64,
    leaves: &[(u64, HeadLeaf)],
    hashes: &mut std::slice::Iter<'_, [u8; 32]>,
) -> Result<[u8; 32], InclusionError> {
    if leaves.is_empty() {
        return hashes.next().copied().ok_or(InclusionError::HashCount);
    }
    if hi - lo == 1 {
        return Ok(leaves[0].1.hash());
    }
    let k = split(hi - lo);
    let (left, right) = leaves.split_at(leaves.partition_point(|(p, _)| *p < lo + k));
    let l = fold(lo, lo + k, left, hashes)?;
    let r = fold(lo + k, hi, right, hashes)?;
    Ok(node(&l, &r))
}

/// About what inclusion proofs of `p` chains in a tree of `n` take, in `GetTimelineBatch`
/// answers of up to `per_answer` chains: per chain a leaf (≈ 40 bytes) and the hashes of a
/// multi-leaf proof (`log2(n / p)`, at least one), per answer the entry and framing. What a
/// client offers to pay for change lists instead (SPEC §10.3).
pub fn inclusion_cost(p: u64, n: u64, per_answer: u64) -> u64 {
    let hashes = (n.max(1) as f64 / p.max(1) as f64).log2().max(1.0);
    p * (40 + (32.0 * hashes) as u64) + 120 * p.div_ceil(per_answer.max(1))
}

/// About what a block of change lists takes in an answer: 250 bytes for its step and
/// entry, 4 per leaf (its chain prefix), and per leaf opened (its prefix is watched) the
/// leaf and a share of the list tree's hashes. What a witness compares with the client's
/// offer and pages by (SPEC §10.3); `(listed, opened)` leaves.
pub fn changes_cost(listed: usize, opened: usize) -> u64 {
    let depth = (usize::BITS - listed.leading_zeros()) as u64;
    250 + PREFIX_LEN as u64 * listed as u64 + opened as u64 * (72 + 32 * depth)
}

/// The page of change lists after block `from` (none past `head`), as the cost of each of
/// its blocks in order (block `from + 1` first; empty for an empty page): it stops before
/// the first block whose list `cost` does not have (else it gives the block's
/// [`changes_cost`]), after `max_blocks` blocks, or once the page's cost reached `budget`.
pub fn changes_page(from: u64, head: u64, cost: impl Fn(u64) -> Option<u64>, max_blocks: u64, budget: u64) -> Vec<u64> {
    let mut page = Vec::new();
    let mut total = 0;
    let mut end = from;
    while end < head && end - from < max_blocks && total < budget {
        let Some(block) = cost(end + 1) else { break };
        page.push(block);
        total += block;
        end += 1;
    }
    page
}

/// Whether a page of change lists whose blocks cost `costs` stopped for its size (the
/// count or the budget of [`changes_page`]), so that more may follow: the client asks
/// again.
pub fn changes_page_full(costs: &[u64], max_blocks: u64, budget: u64) -> bool {
    costs.len() as u64 >= max_blocks || costs.iter().sum::<u64>() >= budget
}

/// Every timeline block after the verifier's, with each entry's change list: a client whose
/// followed chains are reconciled with its timeline block learns which moved — and, by
/// their absence, that the others did not — without an inclusion proof per chain. Pays off
/// when few chains moved since, compared with the followed ones (frequent updates over many
/// chains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineChanges {
    /// A forward proof through every block after the verifier's (only the last step and
    /// committee changes signed, as ever), without payload.
    pub proof: Proof,
    /// Per step of `proof`, in order: its block's entry and the change list it records.
    pub blocks: Vec<ChangedBlock>,
}

/// One timeline block's entry and its change list as a client watching some chains needs
/// it: every leaf's chain prefix, and the leaves whose prefix it watches with the hashes
/// that tie them to the list's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedBlock {
    pub entry: TimelineEntry,
    /// [`chain_prefix`] of every leaf of the list, in list order.
    pub prefixes: Vec<ChainPrefix>,
    /// The leaves at every position whose prefix is watched, in list order; or none (the
    /// block is *closed*) when each of those leaves' chains is listed again in a later block
    /// of the same answer, whose leaf is newer.
    pub opened: Vec<HeadLeaf>,
    /// The roots of the list tree's maximal subtrees that hold no opened leaf, depth first
    /// and left first (as in [`MultiInclusionProof`]); none for an empty list.
    pub hashes: Vec<[u8; 32]>,
}

impl ChangedBlock {
    /// What a client watching `watched` prefixes gets of `entry`'s change list `list`: the
    /// watched leaves opened, or, if `closed`, none (the list's root alone).
    pub fn new(
        entry: TimelineEntry,
        list: &ChangeList,
        watched: &std::collections::HashSet<ChainPrefix>,
        closed: bool,
    ) -> Self {
        let prefixes: Vec<ChainPrefix> = list.0.leaves.iter().map(|leaf| chain_prefix(&leaf.chain)).collect();
        let positions: Vec<usize> =
            if closed { Vec::new() } else { (0..prefixes.len()).filter(|&j| watched.contains(&prefixes[j])).collect() };
        let mut hashes = Vec::new();
        if positions.is_empty() {
            if !prefixes.is_empty() {
                hashes.push(list.0.root());
            }
        } else {
            list.0.siblings(0, prefixes.len(), &positions, &mut hashes);
        }
        let opened = positions.iter().map(|&j| list.0.leaves[j]).collect();
        ChangedBlock { entry, prefixes, opened, hashes }
    }
}

/// A change list with its tree, as a witness keeps it to answer many clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeList(HeadSet);

impl ChangeList {
    /// The list of leaves (sorted by chain, as [`HeadSet::changes_since`] gives them).
    pub fn new(leaves: Vec<HeadLeaf>) -> Self {
        ChangeList(HeadSet::in_order(leaves))
    }

    pub fn len(&self) -> usize {
        self.0.leaves.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.leaves.is_empty()
    }

    /// What [`changes_hash`] gives for this list.
    pub fn hash(&self) -> [u8; 32] {
        let prefixes: Vec<ChainPrefix> = self.0.leaves.iter().map(|leaf| chain_prefix(&leaf.chain)).collect();
        commit_changes(&prefixes, &self.0.root())
    }

    /// How many of its leaves a client watching `watched` opens.
    pub fn opened(&self, watched: &std::collections::HashSet<ChainPrefix>) -> usize {
        self.0.leaves.iter().filter(|leaf| watched.contains(&chain_prefix(&leaf.chain))).count()
    }
}

/// What a verified [`TimelineChanges`] shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenChanges {
    /// The timeline's state at the last block.
    pub caught: CatchUp,
    /// The last block's entry (None if no block followed the verifier's).
    pub entry: Option<TimelineEntry>,
    /// The newest head recorded for every watched chain that any of the blocks lists.
    pub moved: BTreeMap<ChainId, HeadLeaf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangesError {
    #[error("timeline proof: {0}")]
    Proof(#[from] ProofError),
    #[error("step {step} is block {index}, not {expected}: change lists need every block")]
    NotEveryBlock { step: usize, index: u64, expected: u64 },
    #[error("{steps} blocks proven but {blocks} entries sent")]
    Count { steps: usize, blocks: usize },
    #[error("block {index}: the entry is not the one the block's payload hash names")]
    EntryHash { index: u64 },
    #[error("block {index}: the entry's time differs from the block's")]
    EntryTime { index: u64 },
    #[error("block {index} records no change list")]
    NotRecorded { index: u64 },
    #[error("block {index}: the change list is not the one its entry records")]
    ChangesHash { index: u64 },
    #[error("block {index}: the change list is not sorted by chain, or lists a chain twice")]
    ChangesOrder { index: u64 },
    #[error("block {index}: {watched} leaves have a watched prefix but {opened} are opened")]
    Opened { index: u64, watched: usize, opened: usize },
    #[error("block {index}: an opened leaf's chain does not have the prefix at its position")]
    Prefix { index: u64 },
    #[error("block {index} is closed, but no later block of the answer opens a leaf of chain {chain}, whose prefix it lists")]
    Closed { index: u64, chain: ChainId },
}

impl TimelineChanges {
    /// What a witness answers a client watching `watched`: `proof` through every block of
    /// a page (`store::prove_each`), and each of those blocks' entry and change list. A
    /// block is closed when every leaf with a watched prefix it lists has its chain listed
    /// again later in the page and a prefix no other chain of `everyone` (every chain the
    /// timeline records, at the page's end or later) has: the client needs only a chain's
    /// newest head, and a chain that moves with every release, its rebuilds and its roster
    /// changes would otherwise cost an opened leaf and its path (≈ 250 bytes) per move. The
    /// client, which cannot tell which of the chains with a prefix sits at a position,
    /// requires every chain it follows with that prefix opened later; with the prefix
    /// unshared that is the listed chain (a followed chain is one the timeline recorded).
    pub fn answer<'a>(
        proof: Proof,
        blocks: impl IntoIterator<Item = (TimelineEntry, &'a ChangeList)>,
        watched: &std::collections::HashSet<ChainPrefix>,
        everyone: &HeadSet,
    ) -> Self {
        let blocks: Vec<(TimelineEntry, &ChangeList)> = blocks.into_iter().collect();
        // Walking back from the page's last block: the watched chains listed after each.
        let mut later: std::collections::HashSet<ChainId> = std::collections::HashSet::new();
        let mut closed = vec![false; blocks.len()];
        for (k, (_, list)) in blocks.iter().enumerate().rev() {
            let mine: Vec<ChainId> = list
                .0
                .leaves
                .iter()
                .map(|leaf| leaf.chain)
                .filter(|chain| watched.contains(&chain_prefix(chain)))
                .collect();
            closed[k] = !mine.is_empty()
                && mine.iter().all(|chain| later.contains(chain) && !everyone.shares_prefix(&chain_prefix(chain)));
            later.extend(mine);
        }
        let blocks = blocks
            .into_iter()
            .zip(closed)
            .map(|((entry, list), closed)| ChangedBlock::new(entry, list, watched, closed))
            .collect();
        TimelineChanges { proof, blocks }
    }

    /// The cost ([`changes_cost`]) of each block of the answer as the witness weighed it
    /// when it cut the page, for a client following `watched`: every leaf with a watched
    /// prefix counted as opened, closed blocks too (so the client can tell whether the page
    /// stopped for its size).
    pub fn page_costs(&self, watched: &[ChainId]) -> Vec<u64> {
        let prefixes: std::collections::HashSet<ChainPrefix> = watched.iter().map(chain_prefix).collect();
        self.blocks
            .iter()
            .map(|b| changes_cost(b.prefixes.len(), b.prefixes.iter().filter(|p| prefixes.contains(*p)).count()))
            .collect()
    }

    /// Checks the proof from `trusted` (appointments left out taken from `held`), that it
    /// covers every block after it, and each entry and change list against its block, for
    /// a client following the chains `watched`: every leaf with a watched prefix must be
    /// opened, so none of theirs can be left out — except in a closed block, where every
    /// followed chain with a prefix it lists must have a leaf opened in a later block
    /// (newer, so nothing the client needs is left out there either).
    pub fn verify_with(
        &self,
        trusted: &ChainState,
        held: &crate::authority::Appointments,
        watched: &[ChainId],
        rule: &crate::proof::PolicyRule,
    ) -> Result<Verified<SeenChanges>, ChangesError> {
        let prefixes: std::collections::HashSet<ChainPrefix> = watched.iter().map(chain_prefix).collect();
        let watched: std::collections::HashSet<&ChainId> = watched.iter().collect();
        let steps = &self.proof.steps;
        if steps.len() != self.blocks.len() {
            return Err(ChangesError::Count { steps: steps.len(), blocks: self.blocks.len() });
        }
        for (step, s) in steps.iter().enumerate() {
            let expected = trusted.header.index + 1 + step as u64;
            if s.header.index != expected {
                return Err(ChangesError::NotEveryBlock { step, index: s.header.index, expected });
            }
        }
        let caught = self.proof.verify_with(trusted, held, rule)?.into_inner();
        // The steps' headers are now proven: each entry must be its block's payload.
        let mut moved = BTreeMap::new();
        // The position of the last block opening each followed chain, and what closed blocks
        // need opened after them.
        let mut last_opened: std::collections::HashMap<ChainId, usize> = std::collections::HashMap::new();
        let mut needed: Vec<(usize, u64, ChainPrefix)> = Vec::new();
        for (k, (s, block)) in steps.iter().zip(&self.blocks).enumerate() {
            let index = s.header.index;
            if payload_hash(&block.entry.to_bytes()) != s.header.payload_hash {
                return Err(ChangesError::EntryHash { index });
            }
            if block.entry.time_ms != s.header.timestamp_ms {
                return Err(ChangesError::EntryTime { index });
            }
            let Some(recorded) = block.entry.changes else {
                return Err(ChangesError::NotRecorded { index });
            };
            if block.prefixes.windows(2).any(|pair| pair[0] > pair[1]) {
                return Err(ChangesError::ChangesOrder { index });
            }
            let positions: Vec<u64> = (0..block.prefixes.len())
                .filter(|&j| prefixes.contains(&block.prefixes[j]))
                .map(|j| j as u64)
                .collect();
            if block.opened.is_empty() {
                needed.extend(positions.iter().map(|&j| (k, index, block.prefixes[j as usize])));
            } else if positions.len() != block.opened.len() {
                return Err(ChangesError::Opened { index, watched: positions.len(), opened: block.opened.len() });
            }
            let positions = if block.opened.is_empty() { Vec::new() } else { positions };
            if block.opened.windows(2).any(|pair| pair[0].chain >= pair[1].chain) {
                return Err(ChangesError::ChangesOrder { index });
            }
            let leaves: Vec<(u64, HeadLeaf)> = positions.into_iter().zip(block.opened.iter().copied()).collect();
            if leaves.iter().any(|(j, leaf)| chain_prefix(&leaf.chain) != block.prefixes[*j as usize]) {
                return Err(ChangesError::Prefix { index });
            }
            let root = if block.prefixes.is_empty() {
                block.hashes.is_empty().then(|| hash::sha3_256(TAG_EMPTY, &[]))
            } else {
                let mut hashes = block.hashes.iter();
                fold(0, block.prefixes.len() as u64, &leaves, &mut hashes).ok().filter(|_| hashes.len() == 0)
            };
            if root.map(|root| commit_changes(&block.prefixes, &root)) != Some(recorded) {
                return Err(ChangesError::ChangesHash { index });
            }
            for leaf in block.opened.iter().filter(|leaf| watched.contains(&leaf.chain)) {
                moved.insert(leaf.chain, *leaf);
                last_opened.insert(leaf.chain, k);
            }
        }
        let mut by_prefix: std::collections::HashMap<ChainPrefix, Vec<&ChainId>> = std::collections::HashMap::new();
        for &chain in &watched {
            by_prefix.entry(chain_prefix(chain)).or_default().push(chain);
        }
        for (k, index, prefix) in needed {
            for &&chain in by_prefix.get(&prefix).into_iter().flatten() {
                if last_opened.get(&chain).is_none_or(|&last| last <= k) {
                    return Err(ChangesError::Closed { index, chain });
                }
            }
        }
        let entry = self.blocks.last().map(|b| b.entry.clone());
        Ok(Verified::new(SeenChanges { caught, entry, moved }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The tree hashed from scratch, as RFC 6962 §2.1 defines it.
    fn root_of(hashes: &[[u8; 32]]) -> [u8; 32] {
        match hashes.len() {
            0 => hash::sha3_256(TAG_EMPTY, &[]),
            1 => hashes[0],
            n => {
                let k = split(n as u64) as usize;
                node(&root_of(&hashes[..k]), &root_of(&hashes[k..]))
            }
        }
    }

    fn leaves(n: usize, seed: u8) -> Vec<HeadLeaf> {
        (0..n)
            .map(|i| {
                let chain = BlockId(hash::sha3_256("test", &[&[seed], &(i as u64).to_le_bytes()]));
                HeadLeaf { chain, index: i as u64 * 3, id: BlockId(hash::sha3_256("id", &[&chain.0])) }
            })
            .collect()
    }

    proptest! {
        /// A page of change lists that is not full ends at the head or before a missing
        /// list: a client that stops at such a page has missed nothing the witness holds.
        #[test]
        fn change_list_pages_are_full_exactly_when_they_stop_for_size(
            lens in proptest::collection::vec(proptest::option::weighted(0.95, 0usize..3000), 0..300),
            from in 0u64..20,
            max_blocks in 1u64..50,
            budget in 1u64..400_000,
        ) {
            let head = from + lens.len() as u64;
            let list = |k: u64| lens[(k - from - 1) as usize].map(|len| changes_cost(len, len / 50));
            let page = changes_page(from, head, list, max_blocks, budget);
            let end = from + page.len() as u64;
            prop_assert!(end <= head && end - from <= max_blocks);
            let held: Vec<u64> = ((from + 1)..=end).map(|k| list(k).expect("only held lists")).collect();
            prop_assert_eq!(&page, &held);
            let full = changes_page_full(&page, max_blocks, budget);
            if !full {
                prop_assert!(end == head || list(end + 1).is_none());
            }
            if end < head && list(end + 1).is_some() {
                prop_assert!(full, "stopped with more held and room left");
            }
        }
    }

    proptest! {
        #[test]
        fn every_leaf_proves_and_nothing_else_does(n in 1usize..300, seed in any::<u8>(), flip in any::<usize>()) {
            let set = HeadSet::new(leaves(n, seed));
            let entry = TimelineEntry { time_ms: 1, chains: set.len() as u64, root: set.root(), changes: None };
            for leaf in leaves(n, seed) {
                let proof = set.prove(&leaf.chain).unwrap();
                prop_assert_eq!(proof.leaf, leaf);
                prop_assert!(proof.verify(&entry).is_ok());
                let mut moved = proof.clone();
                moved.leaf.index += 1;
                prop_assert_eq!(moved.verify(&entry), Err(InclusionError::Root));
                if !proof.path.is_empty() {
                    let mut bent = proof.clone();
                    let i = flip % bent.path.len();
                    bent.path[i][flip % 32] ^= 1;
                    prop_assert!(bent.verify(&entry).is_err());
                }
            }
            let stranger = BlockId([0xee; 32]);
            prop_assert!(set.prove(&stranger).is_none());
        }
    }

    proptest! {
        /// A multi-leaf proof verifies exactly the chosen leaves, costs no more hashes than
        /// their separate paths, carries one leaf's audit path when it holds one leaf, and
        /// any change to it is refused.
        #[test]
        fn multi_proofs_prove_the_chosen_leaves_and_nothing_else(
            n in 1usize..400,
            seed in any::<u8>(),
            picks in proptest::collection::vec(any::<usize>(), 1..40),
            flip in any::<usize>(),
        ) {
            let all = leaves(n, seed);
            let set = HeadSet::new(all.clone());
            let entry = TimelineEntry { time_ms: 1, chains: set.len() as u64, root: set.root(), changes: None };
            let mut chosen: Vec<ChainId> = picks.iter().map(|p| all[p % n].chain).collect();
            chosen.push(BlockId([0xee; 32])); // not in the set: left out
            let proof = set.prove_many(&chosen);
            let mut wanted: Vec<HeadLeaf> = picks.iter().map(|p| *set.leaf(&all[p % n].chain).unwrap()).collect();
            wanted.sort();
            wanted.dedup();
            prop_assert_eq!(proof.verify(&entry, &chosen), Ok(wanted.clone()));
            // The order asked in does not matter; asking for other chains does.
            let mut reversed = chosen.clone();
            reversed.reverse();
            prop_assert_eq!(proof.verify(&entry, &reversed), Ok(wanted.clone()));
            let mut other = chosen.clone();
            other[0] = all[(picks[0] + 1) % n].chain;
            // Asked for other chains, the proof either fails or proves only true leaves (a
            // chain it marks absent is merely not proven).
            if let Ok(proven) = proof.verify(&entry, &other) {
                for leaf in proven {
                    prop_assert_eq!(Some(&leaf), set.leaf(&leaf.chain), "a leaf paired with the wrong chain");
                }
            }
            // The stranger is marked absent: its bit is clear.
            let stranger_at = { let mut s = chosen.clone(); s.sort(); s.dedup(); s.iter().position(|c| *c == BlockId([0xee; 32])).unwrap() };
            prop_assert_eq!(proof.present[stranger_at / 8] >> (stranger_at % 8) & 1, 0);
            let separate: usize = wanted.iter().map(|l| set.prove(&l.chain).unwrap().path.len()).sum();
            prop_assert!(proof.hashes.len() <= separate);
            if wanted.len() == 1 {
                let mut path = set.prove(&wanted[0].chain).unwrap().path;
                let mut hashes = proof.hashes.clone();
                path.sort();
                hashes.sort();
                prop_assert_eq!(hashes, path);
            }
            let mut moved = proof.clone();
            let i = flip % moved.leaves.len();
            moved.leaves[i].1 += 1;
            prop_assert_eq!(moved.verify(&entry, &chosen), Err(InclusionError::Root));
            if !proof.hashes.is_empty() {
                let mut bent = proof.clone();
                let j = flip % bent.hashes.len();
                bent.hashes[j][flip % 32] ^= 1;
                prop_assert_eq!(bent.verify(&entry, &chosen), Err(InclusionError::Root));
                let mut short = proof.clone();
                short.hashes.pop();
                prop_assert_eq!(short.verify(&entry, &chosen), Err(InclusionError::HashCount));
            }
            let mut long = proof.clone();
            long.hashes.push([7; 32]);
            prop_assert_eq!(long.verify(&entry, &chosen), Err(InclusionError::HashCount));
            if proof.leaves.len() >= 2 {
                let mut swapped = proof.clone();
                swapped.leaves.swap(0, 1);
                let order = matches!(swapped.verify(&entry, &chosen), Err(InclusionError::Order { .. }));
                prop_assert!(order);
                let mut twice = proof.clone();
                twice.leaves[1] = twice.leaves[0];
                let order = matches!(twice.verify(&entry, &chosen), Err(InclusionError::Order { .. }));
                prop_assert!(order);
            }
            // Presence bits that disagree with the leaves, or stray bits past the chains asked.
            let mut unmarked = proof.clone();
            let first = (0..chosen.len()).find(|&i| unmarked.present[i / 8] >> (i % 8) & 1 == 1).unwrap();
            unmarked.present[first / 8] ^= 1 << (first % 8);
            let refused = unmarked.verify(&entry, &chosen);
            prop_assert!(matches!(refused, Err(InclusionError::LeafCount { .. })), "{:?}", refused);
            let asked = { let mut s = chosen.clone(); s.sort(); s.dedup(); s.len() };
            if asked % 8 != 0 {
                let mut stray = proof.clone();
                *stray.present.last_mut().unwrap() |= 0x80;
                let refused = stray.verify(&entry, &chosen);
                prop_assert!(matches!(refused, Err(InclusionError::Present { .. })), "{:?}", refused);
            }
            let mut outside = proof.clone();
            outside.leaves.last_mut().unwrap().0 = n as u64;
            prop_assert!(outside.verify(&entry, &chosen).is_err());
            let empty = MultiInclusionProof { size: n as u64, present: vec![0; asked.div_ceil(8)], leaves: vec![], hashes: vec![] };
            prop_assert_eq!(empty.verify(&entry, &chosen), Err(InclusionError::NoLeaf));
        }
    }

    /// SPEC §8: the change list hash, byte for byte.
    #[test]
    fn change_list_hash_vector() {
        let list = [HeadLeaf { chain: BlockId([7; 32]), index: 2, id: BlockId([8; 32]) }];
        let mut input = hash::sha3_256_tagged(TAG_CHANGES);
        input.update(1u64.to_be_bytes());
        input.update([7; 4]);
        input.update(list[0].hash());
        let expected: [u8; 32] = input.finalize().into();
        assert_eq!(changes_hash(&list), expected);
        assert_eq!(ChangeList::new(list.to_vec()).hash(), expected);
        assert_eq!(hex(&expected), "69cc7d76472e52192f3d8cc9ac1dae5483a1afdf5645a0827535a4226f9120bf");
        let empty = [hash::sha3_256(TAG_EMPTY, &[])].concat();
        let mut input = hash::sha3_256_tagged(TAG_CHANGES);
        input.update(0u64.to_be_bytes());
        input.update(&empty);
        assert_eq!(changes_hash(&[]), <[u8; 32]>::from(input.finalize()));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn root_depends_on_every_head_and_not_on_order() {
        let a = leaves(10, 1);
        let mut b = a.clone();
        b.reverse();
        assert_eq!(HeadSet::new(a.clone()).root(), HeadSet::new(b).root());
        let mut c = a.clone();
        c[4].index += 1;
        assert_ne!(HeadSet::new(a).root(), HeadSet::new(c).root());
        assert_eq!(HeadSet::new(vec![]).root(), hash::sha3_256(TAG_EMPTY, &[]));
    }

    proptest! {
        /// The cached levels give the same root as hashing the RFC 6962 tree from scratch.
        #[test]
        fn cached_root_is_the_plain_recursive_root(n in 0usize..600, seed in any::<u8>()) {
            let set = HeadSet::new(leaves(n, seed));
            let hashes: Vec<[u8; 32]> = set.leaves.iter().map(HeadLeaf::hash).collect();
            prop_assert_eq!(set.root(), root_of(&hashes));
        }

        /// Applying moves and new chains to a set gives the set built from scratch over
        /// the merged leaves: same leaves, same levels, same root.
        #[test]
        fn applied_changes_equal_the_set_built_from_scratch(
            n in 0usize..300,
            seed in any::<u8>(),
            moves in proptest::collection::vec((any::<usize>(), 1u64..5), 0..20),
            fresh in 0usize..20,
        ) {
            let start = leaves(n, seed);
            let mut changes: Vec<HeadLeaf> = Vec::new();
            if n > 0 {
                for (at, step) in moves {
                    let mut leaf = start[at % n];
                    leaf.index += step;
                    leaf.id = BlockId(hash::sha3_256("moved", &[&leaf.id.0, &leaf.index.to_be_bytes()]));
                    changes.push(leaf);
                }
            }
            changes.extend(leaves(fresh, seed.wrapping_add(1)));
            let mut applied = HeadSet::new(start.clone());
            applied.apply(&changes);
            let mut merged: std::collections::BTreeMap<ChainId, HeadLeaf> =
                start.into_iter().map(|l| (l.chain, l)).collect();
            for change in &changes {
                merged.insert(change.chain, *change);
            }
            let scratch = HeadSet::new(merged.into_values().collect());
            prop_assert_eq!(&applied, &scratch);
            prop_assert_eq!(applied.root(), scratch.root());
        }
    }
}
