//! Timeline change lists: what an entry records against the previous block's heads, and
//! what a client learns from every block after its own.

mod common;

use chainiac_cosi::hash;
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::timeline::{
    chain_prefix, ChangeList, ChangesError, HeadLeaf, HeadSet, TimelineChanges, TimelineEntry,
};
use chainiac_skipchain::{Appointments, BlockId, ChainParams, ChainState};
use common::TestChain;
use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, HashSet};

fn state_at(chain: &TestChain<MemoryStore>, index: u64) -> ChainState {
    let proof = store::prove(&chain.store, &chain.chain, 0, index, false).unwrap();
    proof.verify(&chain.genesis_state(), &common::policy_rule).unwrap().into_inner().state
}

/// Chain `k`; every third one (k ≡ 2 mod 3) shares the prefix of the one before, so
/// that a client watching that one meets a stranger with its prefix.
fn chain_id(k: u64) -> BlockId {
    if k % 3 == 2 {
        let mut id = chain_id(k - 1);
        id.0[31] ^= 0x55;
        return id;
    }
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

/// The answer a witness gives a client at block `from` that watches `watched`: every
/// block after it with its entry and what the client needs of its change list.
fn changes_from(
    chain: &TestChain<MemoryStore>,
    lists: &[Vec<HeadLeaf>],
    from: u64,
    watched: &[BlockId],
) -> TimelineChanges {
    let head = chain.head().index();
    let proof = store::prove_each(&chain.store, &chain.chain, from, head).unwrap();
    let lists: Vec<ChangeList> = lists.iter().map(|l| ChangeList::new(l.clone())).collect();
    let entries = ((from + 1)..=head).map(|k| {
        let block = chain.store.block(&chain.chain, k).unwrap().unwrap();
        (TimelineEntry::from_bytes(&block.payload).unwrap(), &lists[k as usize])
    });
    let prefixes: HashSet<_> = watched.iter().map(chain_prefix).collect();
    TimelineChanges::answer(proof, entries, &prefixes)
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

    /// From any block, the verified change lists name every watched chain whose head
    /// differs at the newest block, with that head, and no other; every leaf with a watched
    /// prefix is opened (strangers sharing a prefix too); the proof covers every block; and
    /// a leaf, prefix, entry or block changed, dropped or left unrecorded is refused.
    #[test]
    fn change_lists_show_every_move_since_any_block(
        seed in any::<u64>(),
        blocks in 1u64..40,
        pick in any::<u64>(),
        watch in any::<u64>(),
    ) {
        let (chain, sets, lists) = timeline(seed, blocks, &[]);
        let from = pick % (blocks + 1);
        let trusted = state_at(&chain, from);
        let watched: Vec<BlockId> = (0..64).filter(|c| watch >> c & 1 == 1).map(chain_id).collect();
        let answer = changes_from(&chain, &lists, from, &watched);
        let seen = answer.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule).unwrap().into_inner();
        prop_assert_eq!(seen.caught.state.index(), blocks);
        prop_assert_eq!(seen.entry.as_ref().map(|e| e.root), (from < blocks).then(|| sets[blocks as usize].root()));
        let newest = &sets[blocks as usize];
        let expected: BTreeMap<BlockId, HeadLeaf> = newest
            .changes_since(&sets[from as usize])
            .into_iter()
            .filter(|l| watched.contains(&l.chain))
            .map(|l| (l.chain, l))
            .collect();
        prop_assert_eq!(&seen.moved, &expected);
        // Exactly the leaves with a watched prefix are opened; the others cost 4 bytes.
        let prefixes: HashSet<_> = watched.iter().map(chain_prefix).collect();
        for (block, list) in answer.blocks.iter().zip(&lists[from as usize + 1..]) {
            let wanted: Vec<HeadLeaf> = list.iter().filter(|l| prefixes.contains(&chain_prefix(&l.chain))).copied().collect();
            prop_assert_eq!(&block.opened, &wanted);
            prop_assert_eq!(block.prefixes.len(), list.len());
        }
        // Whole lists: watching every chain shows every move.
        let everyone: Vec<BlockId> = (0..256).map(chain_id).collect();
        let whole = changes_from(&chain, &lists, from, &everyone).verify_with(&trusted, &Appointments::default(), &everyone, &common::policy_rule).unwrap().into_inner();
        let all_moves: BTreeMap<BlockId, HeadLeaf> =
            newest.changes_since(&sets[from as usize]).into_iter().map(|l| (l.chain, l)).collect();
        prop_assert_eq!(whole.moved, all_moves);

        if from < blocks {
            let k = (pick / 7) as usize % answer.blocks.len();
            if !answer.blocks[k].opened.is_empty() {
                let mut dropped = answer.clone();
                dropped.blocks[k].opened.pop();
                let refused = dropped.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule);
                prop_assert!(matches!(refused, Err(ChangesError::Opened { .. })), "{:?}", refused);
                // A watched leaf hidden by bending its prefix: the entry no longer matches.
                let mut hidden = answer.clone();
                let j = hidden.blocks[k].prefixes.iter().position(|p| prefixes.contains(p)).unwrap();
                hidden.blocks[k].prefixes[j][3] ^= 0x80;
                hidden.blocks[k].opened.remove(0);
                prop_assert!(hidden.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule).is_err());
                let mut moved = answer.clone();
                moved.blocks[k].opened[0].index += 1;
                let refused = moved.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule);
                prop_assert!(matches!(refused, Err(ChangesError::ChangesHash { .. })), "{:?}", refused);
            }
            // A client watching one more chain that moved in a block refuses an answer made
            // for fewer: that chain's leaf is not opened.
            if let Some(extra) = lists[from as usize + 1 + k].iter().find(|l| !prefixes.contains(&chain_prefix(&l.chain))) {
                let mut more = watched.clone();
                more.push(extra.chain);
                let refused = answer.verify_with(&trusted, &Appointments::default(), &more, &common::policy_rule);
                prop_assert!(matches!(refused, Err(ChangesError::Opened { .. })), "{:?}", refused);
            }
            let mut forged = answer.clone();
            forged.blocks[k].entry.chains += 1;
            let refused = forged.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule);
            prop_assert!(matches!(refused, Err(ChangesError::EntryHash { .. })), "{:?}", refused);
            let mut short = answer.clone();
            short.blocks.pop();
            let refused = short.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule);
            prop_assert!(matches!(refused, Err(ChangesError::Count { .. })), "{:?}", refused);
            // A forward proof that skips blocks proves the head but not every entry.
            let skipping = TimelineChanges {
                proof: store::prove(&chain.store, &chain.chain, from, blocks, false).unwrap(),
                blocks: answer.blocks.clone(),
            };
            if skipping.proof.steps.len() as u64 != blocks - from {
                let refused = skipping.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule);
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
                .and_then(|a| a.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule).ok());
            prop_assert!(accepted.is_none(), "byte {} of {} changed and the answer still verified", position, bytes.len());
        }
    }
}

/// A block whose entry records no change list stops a client from using lists across it.
#[test]
fn a_block_without_a_change_list_is_refused() {
    let (chain, _, lists) = timeline(5, 6, &[4]);
    let watched: Vec<BlockId> = (0..8).map(chain_id).collect();
    let answer = changes_from(&chain, &lists, 2, &watched);
    let refused = answer.verify_with(&state_at(&chain, 2), &Appointments::default(), &watched, &common::policy_rule);
    assert!(matches!(refused, Err(ChangesError::NotRecorded { index: 4 })), "{refused:?}");
    let after = changes_from(&chain, &lists, 4, &watched);
    assert!(
        after.verify_with(&state_at(&chain, 4), &Appointments::default(), &watched, &common::policy_rule).is_ok(),
        "lists from block 4 on are whole"
    );
}
