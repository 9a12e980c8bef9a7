//! Timeline change lists: what an entry records against the previous block's heads, and
//! what a client learns from every block after its own.

mod common;

use chainiac_cosi::hash;
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::timeline::{
    chain_prefix, ChangeList, ChangedBlock, ChangesError, HeadLeaf, HeadSet, TimelineChanges, TimelineEntry,
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
    // Every chain the timeline records (the head set at its head, by chain).
    let everyone = HeadSet::new(lists.iter().flatten().copied().collect());
    let lists: Vec<ChangeList> = lists.iter().map(|l| ChangeList::new(l.clone())).collect();
    let entries = ((from + 1)..=head).map(|k| {
        let block = chain.store.block(&chain.chain, k).unwrap().unwrap();
        (TimelineEntry::from_bytes(&block.payload).unwrap(), &lists[k as usize])
    });
    let prefixes: HashSet<_> = watched.iter().map(chain_prefix).collect();
    TimelineChanges::answer(proof, entries, &prefixes, &everyone)
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
    /// prefix is opened (strangers sharing a prefix too) unless its block is closed; the
    /// proof covers every block; and a leaf, prefix, entry or block changed, dropped,
    /// closed wrongly or left unrecorded is refused. The watched chains are ones the
    /// timeline records (a client follows by change lists only chains it reconciled).
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
        let recorded = |chain: &BlockId| sets[blocks as usize].leaf(chain).is_some();
        let watched: Vec<BlockId> = (0..64).filter(|c| watch >> c & 1 == 1).map(chain_id).filter(recorded).collect();
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
        // Exactly the leaves with a watched prefix are opened, unless all their chains are
        // listed again later in the answer and share their prefix with no other chain (the
        // block is closed); the others cost 4 bytes.
        let prefixes: HashSet<_> = watched.iter().map(chain_prefix).collect();
        let listed = &lists[from as usize + 1..];
        let everyone: Vec<BlockId> = lists.iter().flatten().map(|l| l.chain).collect();
        let unshared = |chain: &BlockId| !everyone.iter().any(|c| c != chain && chain_prefix(c) == chain_prefix(chain));
        for (k, (block, list)) in answer.blocks.iter().zip(listed).enumerate() {
            let wanted: Vec<HeadLeaf> = list.iter().filter(|l| prefixes.contains(&chain_prefix(&l.chain))).copied().collect();
            let again = |leaf: &HeadLeaf| {
                unshared(&leaf.chain) && listed[k + 1..].iter().any(|later| later.iter().any(|l| l.chain == leaf.chain))
            };
            let closed = !wanted.is_empty() && wanted.iter().all(again);
            prop_assert_eq!(&block.opened, &if closed { Vec::new() } else { wanted });
            prop_assert_eq!(block.prefixes.len(), list.len());
        }
        // A closed block whose chain the answer opens nowhere later is refused: the block
        // where a watched chain last moved is never closed.
        if let Some(last) = answer.blocks.iter().rposition(|b| !b.opened.is_empty()) {
            let mut closed = answer.clone();
            let list = ChangeList::new(listed[last].clone());
            closed.blocks[last] = ChangedBlock::new(closed.blocks[last].entry.clone(), &list, &prefixes, true);
            let refused = closed.verify_with(&trusted, &Appointments::default(), &watched, &common::policy_rule);
            prop_assert!(matches!(refused, Err(ChangesError::Closed { .. })), "{:?}", refused);
        }
        // Whole lists: watching every chain shows every move.
        let everyone: Vec<BlockId> = (0..256).map(chain_id).filter(recorded).collect();
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
                prop_assert!(
                    matches!(refused, Err(ChangesError::Opened { .. } | ChangesError::ChangesHash { .. })),
                    "{:?}",
                    refused
                );
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
                prop_assert!(matches!(refused, Err(ChangesError::Opened { .. } | ChangesError::Closed { .. })), "{:?}", refused);
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

/// A timeline whose block `k` (from 1) records the heads moved to the given indices.
fn scripted_timeline(moves: &[&[(BlockId, u64)]]) -> (TestChain<MemoryStore>, Vec<Vec<HeadLeaf>>) {
    let mut chain = TestChain::new(MemoryStore::new(), ChainParams::new(2, 8).unwrap(), 4, 9);
    let (mut heads, mut sets, mut lists) = (BTreeMap::new(), vec![HeadSet::default()], vec![Vec::new()]);
    for &moved in moves {
        heads.extend(moved.iter().copied());
        let set = HeadSet::new(
            heads
                .iter()
                .map(|(&c, &i)| HeadLeaf { chain: c, index: i, id: BlockId(hash::sha3_256("id", &[&c.0])) })
                .collect(),
        );
        let mut list = Vec::new();
        chain.push_payload(
            |time_ms| {
                let (entry, changes) = set.entry(time_ms, sets.last());
                list = changes.unwrap_or_default();
                entry.to_bytes()
            },
            None,
        );
        sets.push(set);
        lists.push(list);
    }
    (chain, lists)
}

/// A followed chain that moves twice between two updates costs one opened leaf: the block
/// of its first move is closed. A witness that closes the block where a followed chain
/// moved, behind a later move of a stranger sharing its prefix, is refused: the client
/// cannot tell which of the two the closed position held, so it needs its own chain opened
/// later — and an honest witness never closes a block over a shared prefix.
#[test]
fn a_closed_block_hides_no_followed_move() {
    let (followed, stranger, other) = (chain_id(1), chain_id(2), chain_id(3));
    assert_eq!(chain_prefix(&followed), chain_prefix(&stranger));
    let (chain, lists) = scripted_timeline(&[
        &[(followed, 1), (stranger, 1), (other, 1)],
        &[(followed, 2), (other, 2)],
        &[(stranger, 2), (other, 3)],
    ]);
    let none = Appointments::default();
    let rule = &common::policy_rule;

    // `other` moved in blocks 2 and 3: block 2 is closed, block 3 opens its newest head.
    let watched = vec![other];
    let answer = changes_from(&chain, &lists, 1, &watched);
    assert!(answer.blocks[0].opened.is_empty() && answer.blocks[0].hashes.len() == 1, "{:?}", answer.blocks[0]);
    assert_eq!(answer.blocks[1].opened.len(), 1);
    let seen = answer.verify_with(&state_at(&chain, 1), &none, &watched, rule).unwrap().into_inner();
    assert_eq!(seen.moved[&other].index, 3);
    // Opening block 2 the old way costs a leaf (and its path) more, and shows the same head.
    let prefixes: HashSet<_> = watched.iter().map(chain_prefix).collect();
    let mut open = answer.clone();
    open.blocks[0] =
        ChangedBlock::new(open.blocks[0].entry.clone(), &ChangeList::new(lists[2].clone()), &prefixes, false);
    assert!(postcard::to_allocvec(&open).unwrap().len() >= postcard::to_allocvec(&answer).unwrap().len() + 64);
    assert_eq!(open.verify_with(&state_at(&chain, 1), &none, &watched, rule).unwrap().into_inner().moved, seen.moved);
    // Closing block 3 as well leaves no head of it opened: refused.
    let mut closed = answer.clone();
    closed.blocks[1] =
        ChangedBlock::new(closed.blocks[1].entry.clone(), &ChangeList::new(lists[3].clone()), &prefixes, true);
    let refused = closed.verify_with(&state_at(&chain, 1), &none, &watched, rule);
    assert!(matches!(refused, Err(ChangesError::Closed { chain, .. }) if chain == other), "{refused:?}");

    // `followed` moved in block 2, `stranger` (same prefix) in block 3: nothing is closed.
    let watched = vec![followed];
    let prefixes: HashSet<_> = watched.iter().map(chain_prefix).collect();
    let honest = changes_from(&chain, &lists, 1, &watched);
    assert!(honest.blocks.iter().all(|b| b.opened.len() == 1), "{honest:?}");
    let seen = honest.verify_with(&state_at(&chain, 1), &none, &watched, rule).unwrap().into_inner();
    assert_eq!(seen.moved[&followed].index, 2);
    // A witness that closes block 2 (the stranger's leaf is opened in block 3) hides the move.
    let mut hiding = honest.clone();
    hiding.blocks[0] =
        ChangedBlock::new(hiding.blocks[0].entry.clone(), &ChangeList::new(lists[2].clone()), &prefixes, true);
    let refused = hiding.verify_with(&state_at(&chain, 1), &none, &watched, rule);
    assert!(matches!(refused, Err(ChangesError::Closed { index: 2, chain }) if chain == followed), "{refused:?}");
}
