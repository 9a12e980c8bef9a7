//! Timeline change lists: what an entry records against the previous block's heads, and
//! what a client learns from every block after its own.

mod common;

use chainiac_cosi::hash;
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::timeline::{ChangedBlock, ChangesError, HeadLeaf, HeadSet, TimelineChanges, TimelineEntry};
use chainiac_skipchain::{BlockId, ChainParams, ChainState};
use common::TestChain;
use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;

fn state_at(chain: &TestChain<MemoryStore>, index: u64) -> ChainState {
    let proof = store::prove(&chain.store, &chain.chain, 0, index, false).unwrap();
    proof.verify(&chain.genesis_state()).unwrap().into_inner().state
}

fn chain_id(k: u64) -> BlockId {
    BlockId(hash::sha3_256("test/chain", &[&k.to_be_bytes()]))
}

fn head_id(k: u64, index: u64) -> BlockId {
    BlockId(hash::sha3_256("test/head", &[&k.to_be_bytes(), &index.to_be_bytes()]))
}

/// A timeline over chains whose heads move at random: block `k`'s entry records the
/// changes since block `k − 1` (except in the blocks listed in `unrecorded`), and every
/// few blocks the committee changes. Returns the chain, each block's head set (index 0:
/// the genesis, an empty set) and each block's change list.
fn timeline(seed: u64, blocks: u64, unrecorded: &[u64]) -> (TestChain<MemoryStore>, Vec<HeadSet>, Vec<Vec<HeadLeaf>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut chain = TestChain::new(MemoryStore::new(), ChainParams::new(2, 8).unwrap(), 4, seed);
    let mut heads: BTreeMap<u64, u64> = BTreeMap::new();
    let mut sets = vec![HeadSet::default()];
    let mut lists = vec![Vec::new()];
    for k in 1..=blocks {
        // A few heads move, now and then a new chain appears.
        for _ in 0..rng.next_u32() % 4 {
            let c = rng.next_u64() % (heads.len() as u64 + 2);
            *heads.entry(c).or_insert(0) += 1 + rng.next_u64() % 3;
        }
        let set = HeadSet::new(
            heads.iter().map(|(&c, &i)| HeadLeaf { chain: chain_id(c), index: i, id: head_id(c, i) }).collect(),
        );
        let previous = (!unrecorded.contains(&k)).then(|| sets.last().unwrap());
        let mut list = Vec::new();
        let committee = (rng.next_u32() % 5 == 0).then_some(3);
        chain.push_payload(
            |time_ms| {
                let (entry, changes) = set.entry(time_ms, previous);
                list = changes.unwrap_or_default();
                entry.to_bytes()
            },
            committee,
        );
        sets.push(set);
        lists.push(list);
    }
    (chain, sets, lists)
}

/// The answer a witness gives a client at block `from`: every block after it with its
/// entry and change list.
fn changes_from(chain: &TestChain<MemoryStore>, lists: &[Vec<HeadLeaf>], from: u64) -> TimelineChanges {
    let head = chain.head().index();
    let proof = store::prove_each(&chain.store, &chain.chain, from, head).unwrap();
    let blocks = ((from + 1)..=head)
        .map(|k| {
            let block = chain.store.block(&chain.chain, k).unwrap().unwrap();
            ChangedBlock {
                entry: TimelineEntry::from_bytes(&block.payload).unwrap(),
                changes: lists[k as usize].clone(),
            }
        })
        .collect();
    TimelineChanges { proof, blocks }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A change list holds exactly the leaves that differ from the previous set, so the
    /// previous set with the list applied is the new one.
    #[test]
    fn change_lists_turn_the_previous_heads_into_the_new(seed in any::<u64>(), blocks in 1u64..20) {
        let (_, sets, lists) = timeline(seed, blocks, &[]);
        for k in 1..sets.len() {
            let mut applied: BTreeMap<BlockId, HeadLeaf> =
                sets[k - 1].changes_since(&HeadSet::default()).into_iter().map(|l| (l.chain, l)).collect();
            for leaf in &lists[k] {
                prop_assert!(sets[k - 1].leaf(&leaf.chain) != Some(leaf), "an unchanged leaf is listed");
                applied.insert(leaf.chain, *leaf);
            }
            prop_assert_eq!(HeadSet::new(applied.into_values().collect()).root(), sets[k].root());
        }
    }

    /// From any block, the verified change lists name every chain whose head differs at
    /// the newest block, with that head, and no other; the proof covers every block, and a
    /// list, entry or block changed, dropped or left unrecorded is refused.
    #[test]
    fn change_lists_show_every_move_since_any_block(seed in any::<u64>(), blocks in 1u64..40, pick in any::<u64>()) {
        let (chain, sets, lists) = timeline(seed, blocks, &[]);
        let from = pick % (blocks + 1);
        let trusted = state_at(&chain, from);
        let answer = changes_from(&chain, &lists, from);
        let seen = answer.verify_with(&trusted, |_| None).unwrap().into_inner();
        prop_assert_eq!(seen.caught.state.index(), blocks);
        prop_assert_eq!(seen.entry.as_ref().map(|e| e.root), (from < blocks).then(|| sets[blocks as usize].root()));
        let newest = &sets[blocks as usize];
        let expected: BTreeMap<BlockId, HeadLeaf> =
            newest.changes_since(&sets[from as usize]).into_iter().map(|l| (l.chain, l)).collect();
        prop_assert_eq!(&seen.moved, &expected);

        if from < blocks {
            let k = (pick / 7) as usize % answer.blocks.len();
            if !answer.blocks[k].changes.is_empty() {
                let mut dropped = answer.clone();
                dropped.blocks[k].changes.pop();
                let refused = dropped.verify_with(&trusted, |_| None);
                prop_assert!(matches!(refused, Err(ChangesError::ChangesHash { .. })), "{:?}", refused);
            }
            let mut forged = answer.clone();
            forged.blocks[k].entry.chains += 1;
            let refused = forged.verify_with(&trusted, |_| None);
            prop_assert!(matches!(refused, Err(ChangesError::EntryHash { .. })), "{:?}", refused);
            let mut short = answer.clone();
            short.blocks.pop();
            let refused = short.verify_with(&trusted, |_| None);
            prop_assert!(matches!(refused, Err(ChangesError::Count { .. })), "{:?}", refused);
            // A forward proof that skips blocks proves the head but not every entry.
            let skipping = TimelineChanges {
                proof: store::prove(&chain.store, &chain.chain, from, blocks, false).unwrap(),
                blocks: answer.blocks.clone(),
            };
            if skipping.proof.steps.len() as u64 != blocks - from {
                let refused = skipping.verify_with(&trusted, |_| None);
                prop_assert!(matches!(refused, Err(ChangesError::Count { .. } | ChangesError::NotEveryBlock { .. })), "{:?}", refused);
            }
        }
        // Every byte of the answer matters.
        let bytes = postcard::to_allocvec(&answer).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 1);
        for _ in 0..bytes.len().min(64) {
            let position = rng.next_u64() as usize % bytes.len();
            let mut tampered = bytes.clone();
            tampered[position] ^= 1 << (rng.next_u32() % 8);
            let accepted = chainiac_skipchain::decode_exact::<TimelineChanges>(&tampered)
                .ok()
                .and_then(|a| a.verify_with(&trusted, |_| None).ok());
            prop_assert!(accepted.is_none(), "byte {} of {} changed and the answer still verified", position, bytes.len());
        }
    }
}

/// A block whose entry records no change list stops a client from using lists across it.
#[test]
fn a_block_without_a_change_list_is_refused() {
    let (chain, _, lists) = timeline(5, 6, &[4]);
    let answer = changes_from(&chain, &lists, 2);
    let refused = answer.verify_with(&state_at(&chain, 2), |_| None);
    assert!(matches!(refused, Err(ChangesError::NotRecorded { index: 4 })), "{refused:?}");
    let after = changes_from(&chain, &lists, 4);
    assert!(after.verify_with(&state_at(&chain, 4), |_| None).is_ok(), "lists from block 4 on are whole");
}
