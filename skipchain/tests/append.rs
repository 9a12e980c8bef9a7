//! Blocks that must not extend a chain are refused with the rule named, and nothing is
//! written.

mod common;

use chainiac_cosi::Mask;
use chainiac_skipchain::store::{self, MemoryStore, Store, StoreError};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{BlockError, ChainParams, Proof, ProofError, ProofStep, StepHeader};
use common::{TestChain, TestCommittee};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn chain_of(len: u64) -> TestChain<MemoryStore> {
    let mut chain = TestChain::new(MemoryStore::new(), ChainParams::new(2, 8).unwrap(), 5, 11);
    for _ in 0..len {
        chain.push(None, false, 0);
    }
    chain
}

/// Appending `block` fails with `expected` and leaves the head where it was.
fn refused(chain: &TestChain<MemoryStore>, block: &chainiac_skipchain::Block, expected: impl Fn(&BlockError) -> bool) {
    let before = chain.head();
    match store::append(&chain.store, block) {
        Err(StoreError::Block(error)) => assert!(expected(&error), "unexpected refusal: {error}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(chain.head(), before, "nothing written");
}

fn resign(chain: &mut TestChain<MemoryStore>, block: &mut chainiac_skipchain::Block) {
    block.signature = Some(BlockSignature {
        ballot: 0,
        signature: chain.signer.sign(&BlockSignature::message(&block.id(), 0), 0, &mut chain.rng),
    });
}

#[test]
fn a_second_block_at_an_index_is_refused() {
    let mut chain = chain_of(5);
    let (first, _) = chain.next_block(None, false, 0);
    let (mut second, _) = chain.next_block(None, false, 0);
    second.payload = b"a different release".to_vec();
    second.header.payload_hash = chainiac_skipchain::block::payload_hash(&second.payload);
    resign(&mut chain, &mut second);
    assert_ne!(first.id(), second.id());
    store::append(&chain.store, &first).unwrap();
    refused(&chain, &second, |e| matches!(e, BlockError::WrongIndex { expected: 7, got: 6 }));
    refused(&chain, &first, |e| matches!(e, BlockError::WrongIndex { expected: 7, got: 6 }));
}

#[test]
fn wrong_back_links_are_refused() {
    let mut chain = chain_of(7);
    let (mut block, _) = chain.next_block(None, false, 0);
    assert_eq!(block.header.index, 8);
    block.header.back_links[2] = block.header.back_links[1];
    resign(&mut chain, &mut block);
    refused(&chain, &block, |e| matches!(e, BlockError::BackLink { index: 8, level: 2, target: 4 }));
    let (mut block, _) = chain.next_block(None, false, 0);
    block.header.back_links.pop();
    resign(&mut chain, &mut block);
    refused(&chain, &block, |e| matches!(e, BlockError::BackLinkCount { .. }));
    let (mut block, _) = chain.next_block(None, false, 0);
    block.header.height += 1;
    resign(&mut chain, &mut block);
    refused(&chain, &block, |e| matches!(e, BlockError::WrongHeight { .. }));
}

#[test]
fn signatures_by_the_wrong_roster_or_below_threshold_are_refused() {
    let mut chain = chain_of(3);
    let (mut block, _) = chain.next_block(None, false, 0);
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let outsiders = TestCommittee::new(5, 4, &mut rng);
    block.signature = Some(BlockSignature {
        ballot: 0,
        signature: outsiders.sign(&BlockSignature::message(&block.id(), 0), 0, &mut rng),
    });
    refused(&chain, &block, |e| matches!(e, BlockError::Signature { index: 4, .. }));

    let signer = chain.signer.clone();
    let threshold = signer.committee.threshold();
    let mut mask = Mask::full(5);
    for i in threshold - 1..5 {
        mask.remove(i);
    }
    let signature = chainiac_cosi::simulation::sign_with_all_keys(
        signer.committee.roster(),
        &signer.keys,
        &mask,
        &BlockSignature::message(&block.id(), 0),
        &mut rng,
    );
    block.signature = Some(BlockSignature { ballot: 0, signature });
    refused(&chain, &block, |e| {
        matches!(e, BlockError::Signature { error: chainiac_cosi::VerifyError::BelowThreshold { .. }, .. })
    });
    block.signature = None;
    refused(&chain, &block, |e| matches!(e, BlockError::MissingSignature { index: 4 }));
}

#[test]
fn header_rules_are_enforced() {
    let mut chain = chain_of(3);
    let (mut block, _) = chain.next_block(None, false, 0);
    block.header.timestamp_ms = 0;
    resign(&mut chain, &mut block);
    refused(&chain, &block, |e| matches!(e, BlockError::TimestampBackwards { .. }));

    let (mut block, _) = chain.next_block(None, false, 0);
    block.payload.push(0);
    refused(&chain, &block, |e| matches!(e, BlockError::PayloadHash { .. }));

    let (mut block, _) = chain.next_block(None, false, 0);
    block.committee = Some(chainiac_skipchain::Appointment::anchor(chain.signer.committee.clone()));
    refused(&chain, &block, |e| matches!(e, BlockError::UnexpectedCommittee { .. }));

    let (mut block, _) = chain.next_block(Some(4), false, 0);
    block.committee = None;
    refused(&chain, &block, |e| matches!(e, BlockError::MissingCommittee { .. }));

    let (mut block, _) = chain.next_block(None, true, 0);
    block.policy = Some(b"not the policy the header names".to_vec());
    refused(&chain, &block, |e| matches!(e, BlockError::PolicyHash { .. }));

    let (mut block, _) = chain.next_block(None, false, 0);
    block.header.previous_checkpoint = 2;
    resign(&mut chain, &mut block);
    refused(&chain, &block, |e| matches!(e, BlockError::PreviousCheckpoint { expected: 0, got: 2, .. }));

    let (mut block, _) = chain.next_block(None, false, 0);
    block.header.chain = Some(chainiac_skipchain::BlockId([7; 32]));
    assert!(matches!(store::append(&chain.store, &block), Err(StoreError::UnknownChain(_))));
    let head = chain.head();
    let err = head.extend(&block, |i| chain.store.block_id(&chain.chain, i).unwrap()).unwrap_err();
    assert!(matches!(err, BlockError::WrongChain { .. }), "{err}");
}

#[test]
fn a_genesis_cannot_be_appended_twice() {
    let chain = chain_of(1);
    assert!(matches!(store::append(&chain.store, &chain.genesis), Err(StoreError::ChainExists(_))));
}

#[test]
fn a_proof_that_skips_a_checkpoint_is_refused() {
    // Blocks 1..=4 with a policy change at 3: block 4 links to 0 at level 2, but a proof
    // 0 -> 4 would skip the checkpoint.
    let mut chain = TestChain::new(MemoryStore::new(), ChainParams::new(2, 8).unwrap(), 4, 3);
    chain.push(None, false, 0);
    chain.push(None, false, 0);
    chain.push(None, true, 0);
    chain.push(None, false, 0);
    let block = chain.store.block(&chain.chain, 4).unwrap().unwrap();
    let skipping = Proof {
        steps: vec![ProofStep {
            header: StepHeader::new(&block.header, &chain.genesis_state().header, 2),
            signature: Some(block.signature.unwrap()),
            committee: None,
            policy: None,
        }],
        payload: None,
    };
    let err = skipping.verify(&chain.genesis_state(), &common::policy_rule).unwrap_err();
    assert!(
        matches!(err, ProofError::Hop { hop: 0, index: 4, error: BlockError::SkippedCheckpoint { checkpoint: 3, .. } }),
        "{err}"
    );
    let honest = store::prove(&chain.store, &chain.chain, 0, 4, false).unwrap();
    let indices: Vec<u64> = honest.steps.iter().map(|s| s.header.index).collect();
    assert_eq!(indices, [2, 3, 4]);
    let reached = honest.verify(&chain.genesis_state(), &common::policy_rule).unwrap();
    assert_eq!(reached.checkpoints, [3]);
    assert_eq!(*reached.state.policy, common::policy(1));
}

#[test]
fn a_roster_change_is_signed_by_the_old_roster_and_the_next_block_by_the_new() {
    let mut chain = chain_of(2);
    let old = chain.signer.clone();
    let (change, new) = chain.next_block(Some(6), false, 0);
    let new = new.unwrap();
    assert!(change.signature.as_ref().unwrap().verify(&old.committee, &change.id()).is_ok());
    store::append(&chain.store, &change).unwrap();
    chain.signer = new.clone();
    // The old committee can no longer sign.
    let (mut next, _) = chain.next_block(None, false, 0);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    next.signature =
        Some(BlockSignature { ballot: 0, signature: old.sign(&BlockSignature::message(&next.id(), 0), 0, &mut rng) });
    refused(&chain, &next, |e| matches!(e, BlockError::Signature { .. }));
    next.signature =
        Some(BlockSignature { ballot: 0, signature: new.sign(&BlockSignature::message(&next.id(), 0), 0, &mut rng) });
    store::append(&chain.store, &next).unwrap();
    let head = chain.head();
    assert_eq!(head.committee.hash(), new.committee.hash());
    assert_eq!(head.header.previous_checkpoint, 3);
}
