//! The records of a release's rebuild summary when they are too many to send every follower
//! (SPEC §11.8): the summary then holds their counts and the root of a Merkle tree over
//! them, and a client asks a witness for the records of the rebuilders it trusts, each with
//! its path to the root — or for proof that a rebuilder has none.
//!
//! The tree is RFC 6962's shape (the largest power of two left, the rest right) over the
//! records sorted by rebuilder id, which ids are distinct within a release (`check_rebuilds`):
//! so two neighbouring leaves prove that no record lies between their ids.

use crate::model::{BuildIsolation, RebuildRecord, RebuilderId, Verdict};
use chainiac_cosi::hash;
use chainiac_skipchain::merkle;
use serde::{Deserialize, Serialize};

/// Leaf hash: `SHA3-256(tagged(TAG_RECORD_LEAF) || encode(RebuildRecord))`.
pub const TAG_RECORD_LEAF: &str = "chainiac/v1/release/rebuild-record";
/// Inner node hash: `SHA3-256(tagged(TAG_RECORD_NODE) || left || right)`.
pub const TAG_RECORD_NODE: &str = "chainiac/v1/release/rebuild-node";

/// How many of a release's records, by verdict (and, for reproductions, confinement): what
/// a client needs of the rebuilders it does not trust.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub reproduced_sandboxed: u32,
    pub reproduced_unconfined: u32,
    pub mismatch: u32,
    pub failed: u32,
}

impl Tally {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a RebuildRecord>) -> Self {
        let mut tally = Tally::default();
        for record in records {
            let count = match (record.verdict, record.isolation) {
                (Verdict::Reproduced, BuildIsolation::Namespaces) => &mut tally.reproduced_sandboxed,
                (Verdict::Reproduced, BuildIsolation::None) => &mut tally.reproduced_unconfined,
                (Verdict::Mismatch, _) => &mut tally.mismatch,
                (Verdict::Failed, _) => &mut tally.failed,
            };
            *count = count.saturating_add(1);
        }
        tally
    }

    /// How many records in all: the tree's size.
    pub fn records(&self) -> u64 {
        [self.reproduced_sandboxed, self.reproduced_unconfined, self.mismatch, self.failed]
            .iter()
            .map(|&n| u64::from(n))
            .sum()
    }

    /// Reproductions that count for a client (only sandboxed ones with `require_isolation`).
    pub fn reproduced(&self, require_isolation: bool) -> u64 {
        u64::from(self.reproduced_sandboxed) + if require_isolation { 0 } else { u64::from(self.reproduced_unconfined) }
    }

    pub fn disagreements(&self) -> u64 {
        u64::from(self.mismatch) + u64::from(self.failed)
    }
}

/// What a summary of many records holds instead of them: their counts and the root of
/// the tree over them sorted by rebuilder id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedRecords {
    pub tally: Tally,
    pub root: [u8; 32],
}

/// One leaf of the tree with the sibling hashes from it up to the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOpening {
    pub position: u32,
    pub record: RebuildRecord,
    pub path: Vec<[u8; 32]>,
}

/// A witness's answer for one rebuilder id asked of a committed summary: its record, or
/// the leaves on either side of where it would be (none on a side at the tree's edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordProof {
    Present(RecordOpening),
    Absent { below: Option<RecordOpening>, above: Option<RecordOpening> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordProofError {
    #[error("leaf {position} is outside a tree of {size} records")]
    Position { position: u32, size: u64 },
    #[error("the path of leaf {position} does not lead to the summary's root")]
    Root { position: u32 },
    #[error("the record at leaf {position} is of rebuilder {found}, not {asked}")]
    OtherRebuilder { position: u32, found: RebuilderId, asked: RebuilderId },
    #[error("the leaves shown for rebuilder {asked}'s absence do not enclose its id")]
    NotEnclosing { asked: RebuilderId },
}

/// The tree over a release's records, as a witness builds it to answer for them.
///
/// Invariant: `levels[h][i]` is the root of leaves `i·2^h .. (i+1)·2^h`, for every such
/// block the tree holds whole, so any subtree's root takes O(log n) hashes and a path
/// O(log² n): building costs n leaf hashes and n node hashes, once.
pub struct RecordsTree {
    sorted: Vec<RebuildRecord>,
    levels: Vec<Vec<[u8; 32]>>,
}

impl RecordsTree {
    /// The tree over `records` (any order: sorted by id here).
    pub fn new(records: &[RebuildRecord]) -> Self {
        let mut sorted = records.to_vec();
        sorted.sort_by_key(|a| a.rebuilder);
        let levels = merkle::levels(sorted.iter().map(leaf_hash).collect(), node);
        RecordsTree { sorted, levels }
    }

    pub fn commitment(&self) -> CommittedRecords {
        let root = if self.sorted.is_empty() { [0; 32] } else { self.subtree(0, self.sorted.len()) };
        CommittedRecords { tally: Tally::of(&self.sorted), root }
    }

    fn subtree(&self, lo: usize, hi: usize) -> [u8; 32] {
        merkle::subtree(&self.levels, lo, hi, node)
    }

    /// The proof for `rebuilder`: its record, or the leaves either side of its id.
    pub fn prove(&self, rebuilder: &RebuilderId) -> RecordProof {
        let open = |position: usize| RecordOpening {
            position: position as u32,
            record: self.sorted[position],
            path: merkle::path(&self.levels, self.sorted.len(), position, node),
        };
        match self.sorted.binary_search_by(|r| r.rebuilder.cmp(rebuilder)) {
            Ok(position) => RecordProof::Present(open(position)),
            Err(at) => RecordProof::Absent {
                below: at.checked_sub(1).map(open),
                above: (at < self.sorted.len()).then(|| open(at)),
            },
        }
    }
}

impl CommittedRecords {
    /// The commitment to `records` (any order).
    pub fn of(records: &[RebuildRecord]) -> Self {
        RecordsTree::new(records).commitment()
    }

    /// Checks `proof` for `rebuilder` against this commitment: its record, or `None` when
    /// the proof shows it has none.
    pub fn check(
        &self,
        rebuilder: &RebuilderId,
        proof: &RecordProof,
    ) -> Result<Option<RebuildRecord>, RecordProofError> {
        let size = self.tally.records();
        let verify = |opening: &RecordOpening| {
            let position = opening.position;
            if u64::from(position) >= size {
                return Err(RecordProofError::Position { position, size });
            }
            let computed =
                merkle::root_from_path(leaf_hash(&opening.record), u64::from(position), size, &opening.path, node);
            if computed != Ok(self.root) {
                return Err(RecordProofError::Root { position });
            }
            Ok(())
        };
        match proof {
            RecordProof::Present(opening) => {
                verify(opening)?;
                if opening.record.rebuilder != *rebuilder {
                    return Err(RecordProofError::OtherRebuilder {
                        position: opening.position,
                        found: opening.record.rebuilder,
                        asked: *rebuilder,
                    });
                }
                Ok(Some(opening.record))
            }
            RecordProof::Absent { below, above } => {
                let not_enclosing = RecordProofError::NotEnclosing { asked: *rebuilder };
                for opening in below.iter().chain(above) {
                    verify(opening)?;
                }
                // Ids strictly increase along the leaves (distinct, sorted): leaves p and p + 1
                // with ids either side of the one asked leave no room for it.
                let encloses = match (below, above) {
                    (Some(b), Some(a)) => {
                        u64::from(a.position) == u64::from(b.position) + 1
                            && b.record.rebuilder < *rebuilder
                            && *rebuilder < a.record.rebuilder
                    }
                    (None, Some(a)) => a.position == 0 && *rebuilder < a.record.rebuilder,
                    (Some(b), None) => u64::from(b.position) + 1 == size && b.record.rebuilder < *rebuilder,
                    (None, None) => size == 0,
                };
                if encloses {
                    Ok(None)
                } else {
                    Err(not_enclosing)
                }
            }
        }
    }
}

pub fn leaf_hash(record: &RebuildRecord) -> [u8; 32] {
    hash::sha3_256(TAG_RECORD_LEAF, &[&postcard::to_allocvec(record).expect("records serialize")])
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    hash::sha3_256(TAG_RECORD_NODE, &[left, right])
}

/// The root over `hashes` by the definition (what [`RecordsTree`]'s levels must agree with).
#[cfg(test)]
fn root(hashes: &[[u8; 32]]) -> [u8; 32] {
    match hashes.len() {
        0 => [0; 32],
        1 => hashes[0],
        n => {
            let k = merkle::split(n as u64) as usize;
            node(&root(&hashes[..k]), &root(&hashes[k..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(id: u8, verdict: u8, sandboxed: bool) -> RebuildRecord {
        let mut bytes = [0u8; 16];
        bytes[0] = id;
        bytes[15] = id.wrapping_mul(31);
        RebuildRecord {
            rebuilder: RebuilderId(bytes),
            verdict: [Verdict::Reproduced, Verdict::Mismatch, Verdict::Failed][verdict as usize % 3],
            isolation: if sandboxed { BuildIsolation::Namespaces } else { BuildIsolation::None },
        }
    }

    proptest! {
        /// Every record of the tree is proven present with its verdict, every other id
        /// proven absent; the counts are the records'. A proof checked against another
        /// tree, for another id, or with a leaf, position or path changed, is refused.
        #[test]
        fn the_tree_proves_each_record_and_each_absence(
            ids in proptest::collection::btree_set(any::<u8>(), 1..80),
            verdicts in proptest::collection::vec((0u8..3, any::<bool>()), 80),
            asked in any::<u8>(),
            tamper in 0usize..4,
        ) {
            let records: Vec<RebuildRecord> =
                ids.iter().zip(&verdicts).map(|(&id, &(v, s))| record(id, v, s)).collect();
            let committed = CommittedRecords::of(&records);
            let mut leaves: Vec<RebuildRecord> = records.clone();
            leaves.sort_by_key(|r| r.rebuilder);
            let by_definition = root(&leaves.iter().map(leaf_hash).collect::<Vec<_>>());
            prop_assert_eq!(committed.root, by_definition);
            prop_assert_eq!(committed.tally.records(), records.len() as u64);
            prop_assert_eq!(committed.tally, Tally::of(&records));
            let tree = RecordsTree::new(&records);
            let sorted = tree.sorted.clone();
            let target = record(asked, 0, false).rebuilder;
            let proof = tree.prove(&target);
            let expected = records.iter().find(|r| r.rebuilder == target).copied();
            prop_assert_eq!(committed.check(&target, &proof), Ok(expected));
            for r in &records {
                let proof = tree.prove(&r.rebuilder);
                prop_assert_eq!(committed.check(&r.rebuilder, &proof), Ok(Some(*r)));
            }

            // Against another tree (one record more) or for another id, refused or another answer.
            let mut more = records.clone();
            more.push(record(asked.wrapping_add(1), 1, true));
            if !ids.contains(&asked.wrapping_add(1)) {
                prop_assert!(CommittedRecords::of(&more).check(&target, &proof).is_err());
            }
            // Changed: the leaf's verdict, its position, a path hash, or a present record
            // offered as another id's.
            let mut bad = proof.clone();
            let first = match &mut bad {
                RecordProof::Present(o) => Some(o),
                RecordProof::Absent { below, above } => below.as_mut().or(above.as_mut()),
            };
            if let Some(opening) = first {
                match tamper {
                    0 => opening.record.verdict = if opening.record.verdict == Verdict::Mismatch { Verdict::Failed } else { Verdict::Mismatch },
                    1 => opening.position ^= 1,
                    2 if !opening.path.is_empty() => opening.path[0][0] ^= 1,
                    _ => opening.record.rebuilder.0[15] ^= 1,
                }
                prop_assert!(committed.check(&target, &bad).is_err(), "{:?}", bad);
            }
            // A present record's neighbour cannot stand in for it as an absence.
            if let (Some(present), true) = (expected, records.len() > 1) {
                let position = sorted.iter().position(|r| *r == present).unwrap();
                let other = if position == 0 { 1 } else { position - 1 };
                let neighbour = tree.prove(&sorted[other].rebuilder);
                let RecordProof::Present(opening) = neighbour else { unreachable!() };
                let fake = if other < position {
                    RecordProof::Absent { below: Some(opening), above: None }
                } else {
                    RecordProof::Absent { below: None, above: Some(opening) }
                };
                prop_assert!(committed.check(&target, &fake).is_err());
            }
        }
    }

    /// Pinned: the leaf and node hashes' inputs (SPEC §11.8).
    #[test]
    fn the_tree_of_two_records_is_pinned() {
        let (a, b) = (record(1, 0, true), record(2, 1, false));
        let leaf = |r: &RebuildRecord| {
            let mut bytes = r.rebuilder.0.to_vec();
            bytes.extend_from_slice(&[r.verdict as u8, r.isolation as u8]);
            hash::sha3_256(TAG_RECORD_LEAF, &[&bytes])
        };
        let expected = hash::sha3_256(TAG_RECORD_NODE, &[&leaf(&a), &leaf(&b)]);
        assert_eq!(CommittedRecords::of(&[b, a]).root, expected, "sorted by id, whatever the order given");
        assert_eq!(CommittedRecords::of(&[a]).root, leaf(&a));
    }
}
