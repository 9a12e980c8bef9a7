//! Who may change a committee: a block or proof step that appoints a new committee needs
//! the approvals of at least the outgoing committee's threshold of its own members,
//! unexpired, over exactly that committee, and the new committee must be a Byzantine
//! quorum. Every other appointment is refused with the rule named, and nothing is written.

mod common;

use chainiac_cosi::{Member, Roster, SecretKey};
use chainiac_skipchain::store::{self, MemoryStore, Store, StoreError};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{
    Appointment, Appointments, Approval, AuthorityError, Block, BlockError, BlockId, ChainParams, Committee,
    LinkedProof, ProofError,
};
use common::{quorum_threshold, TestChain, TestCommittee};
use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn chain_of(members: usize, len: u64, seed: u64) -> TestChain<MemoryStore> {
    let mut chain = TestChain::new(MemoryStore::new(), ChainParams::new(2, 8).unwrap(), members, seed);
    for _ in 0..len {
        chain.push(None, false, 0);
    }
    chain
}

/// The next block of `chain`, changing to a new committee of `members`, with `appointment`
/// made from that committee and the current signers, signed by them.
fn change_block(
    chain: &mut TestChain<MemoryStore>,
    members: usize,
    appointment: impl FnOnce(&TestCommittee, &Committee, u64) -> Appointment,
) -> (Block, TestCommittee) {
    let mut rng = ChaCha20Rng::seed_from_u64(chain.rng.next_u64());
    let epoch = chain.signer.committee.epoch() + 1;
    let next = TestCommittee::new(members, quorum_threshold(members, &mut rng), &mut rng).at_epoch(epoch);
    change_block_to(chain, next, appointment)
}

/// The next block of `chain`, changing to `next` with `appointment`, signed by the current
/// signers.
fn change_block_to(
    chain: &mut TestChain<MemoryStore>,
    next: TestCommittee,
    appointment: impl FnOnce(&TestCommittee, &Committee, u64) -> Appointment,
) -> (Block, TestCommittee) {
    let (mut block, _) = chain.next_block(None, false, 0);
    let head = chain.head();
    let time = block.header.timestamp_ms;
    let appointed = appointment(&chain.signer, &next.committee, time);
    let proposal = chainiac_skipchain::Proposal {
        kind: block.header.kind,
        payload: block.payload.clone(),
        timestamp_ms: time,
        committee: Some(appointed),
        policy: None,
    };
    let store = &chain.store;
    let id = chain.chain;
    block = head.propose(proposal, |i| store.block_id(&id, i).unwrap()).unwrap();
    block.signature = Some(BlockSignature {
        ballot: 0,
        signature: chain.signer.sign(&BlockSignature::message(&block.id(), 0), 0, &mut chain.rng),
    });
    (block, next)
}

fn refused(chain: &TestChain<MemoryStore>, block: &Block, expected: impl Fn(&AuthorityError) -> bool) {
    let before = chain.head();
    match store::append(&chain.store, block) {
        Err(StoreError::Block(BlockError::Authority { error, .. })) => {
            assert!(expected(&error), "unexpected refusal: {error}")
        }
        other => panic!("expected an authority refusal, got {other:?}"),
    }
    assert_eq!(chain.head(), before, "nothing written");
}

#[test]
fn an_unapproved_committee_change_is_refused_even_when_the_old_committee_signed_it() {
    let mut chain = chain_of(4, 3, 1);
    let (block, _) = change_block(&mut chain, 4, |_, next, _| Appointment::anchor(next.clone()));
    refused(&chain, &block, |e| matches!(e, AuthorityError::TooFewApprovals { valid: 0, threshold: 3, .. }));
}

#[test]
fn too_few_expired_foreign_or_misdirected_approvals_are_refused() {
    let mut chain = chain_of(4, 3, 2);
    let threshold = chain.signer.committee.threshold();
    // One short of the threshold.
    let (block, _) = change_block(&mut chain, 5, |old, next, t| old.appoint(next, threshold - 1, t + 1));
    refused(&chain, &block, |e| matches!(e, AuthorityError::TooFewApprovals { valid, .. } if *valid == threshold - 1));
    // Enough, but expired before the block's time.
    let (block, _) = change_block(&mut chain, 5, |old, next, t| old.appoint(next, 4, t - 1));
    refused(&chain, &block, |e| matches!(e, AuthorityError::TooFewApprovals { valid: 0, expired: 4, .. }));
    // Approvals over another roster.
    let (block, _) = change_block(&mut chain, 5, |old, next, t| {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let other = TestCommittee::new(5, 4, &mut rng).committee;
        let approvals = old.appoint(&other, 4, t + 1).approvals;
        Appointment { committee: next.clone(), approvals }
    });
    refused(&chain, &block, |e| matches!(e, AuthorityError::BadSignature { .. }));
    // Approved by strangers (the incoming members themselves).
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let strangers: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate(&mut rng)).collect();
    let (block, _) = change_block(&mut chain, 5, |_, next, t| Appointment {
        committee: next.clone(),
        approvals: strangers.iter().map(|k| Approval::sign(k, next, t + 1, None)).collect(),
    });
    refused(&chain, &block, |e| matches!(e, AuthorityError::NotAMember { .. }));
    // One member approving twice does not count twice.
    let (block, _) = change_block(&mut chain, 5, |old, next, t| {
        let mut appointment = old.appoint(next, threshold - 1, t + 1);
        appointment.approvals.push(appointment.approvals[0].clone());
        appointment
    });
    refused(&chain, &block, |e| matches!(e, AuthorityError::Duplicate { .. }));
    // A committee that is no Byzantine quorum, however approved.
    let (block, _) = change_block(&mut chain, 4, |old, next, t| {
        let weak = Committee::new(next.roster().clone(), 2).unwrap().with_epoch(next.epoch());
        old.appoint(&weak, 4, t + 1)
    });
    refused(&chain, &block, |e| matches!(e, AuthorityError::WeakThreshold { threshold: 2, members: 4 }));
    // A committee numbered no higher than the one in force, however approved.
    let (block, _) =
        change_block(&mut chain, 5, |old, next, t| old.appoint(&next.clone().with_epoch(0), threshold, t + 1));
    refused(&chain, &block, |e| matches!(e, AuthorityError::StaleEpoch { epoch: 0, outgoing: 0 }));
    // The rightful change goes through, and the new committee signs from then on.
    let (block, next) = change_block(&mut chain, 5, |old, next, t| old.appoint(next, threshold, t + 1));
    store::append(&chain.store, &block).unwrap();
    assert_eq!(chain.head().committee.hash(), next.committee.hash());
}

/// C0 → C1 → C0 again (same roster, next epoch) inside the approvals' window: the first
/// appointment, by C0's members and unexpired, would hand the chain back to C1 if it could
/// be replayed; the epoch it names is behind, so it is refused.
#[test]
fn approvals_cannot_bring_back_a_committee_the_chain_moved_away_from() {
    let mut chain = chain_of(4, 3, 11);
    let first = chain.signer.clone();
    let (block, c1) = change_block(&mut chain, 4, |old, next, t| old.appoint(next, 4, t + 86_400_000));
    let replayed = block.committee.clone().expect("a change block carries its appointment");
    store::append(&chain.store, &block).unwrap();
    chain.signer = std::sync::Arc::new(c1);
    let keys = first.keys.iter().map(|k| SecretKey::from_seed(&k.seed())).collect();
    let back = TestCommittee { committee: first.committee.clone().with_epoch(2), keys };
    let (block, back) = change_block_to(&mut chain, back, |old, next, t| old.appoint(next, 4, t + 86_400_000));
    store::append(&chain.store, &block).unwrap();
    chain.signer = std::sync::Arc::new(back);
    assert_eq!(chain.head().committee.roster(), first.committee.roster(), "the first roster is back");
    let (block, _) = change_block(&mut chain, 4, |_, _, _| replayed.clone());
    refused(&chain, &block, |e| matches!(e, AuthorityError::StaleEpoch { epoch: 1, outgoing: 2 }));
}

#[test]
fn a_genesis_with_approvals_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let signer = TestCommittee::new(4, 3, &mut rng);
    let mut genesis =
        chainiac_skipchain::genesis(ChainParams::DEFAULT, signer.committee.clone(), vec![], 0, vec![], 1_000);
    genesis.committee = Some(signer.appoint(&signer.committee, 3, 2_000));
    let err = chainiac_skipchain::ChainState::genesis(&genesis).unwrap_err();
    assert!(matches!(err, BlockError::Authority { index: 0, error: AuthorityError::GenesisApprovals }), "{err}");
}

/// A forward proof whose committee change carries a forged appointment is refused, even
/// though the whole old committee signed the block (a colluding cothority cannot skip its
/// operators); a held appointment stands in for a carried one only where it authorizes.
#[test]
fn proofs_check_every_appointment_carried_or_held() {
    let mut chain = chain_of(4, 2, 4);
    chain.push(Some(5), false, 0);
    chain.push(None, false, 0);
    let head = chain.head().index();
    let genesis = chain.genesis_state();
    let honest = store::prove(&chain.store, &chain.chain, 0, head, true).unwrap();
    let caught = honest.verify(&genesis, &common::policy_rule).unwrap().into_inner();
    assert_eq!(caught.appointments.len(), 1);
    let k = honest.steps.iter().position(|s| s.committee.is_some()).unwrap();
    let mut forged = honest.clone();
    forged.steps[k].committee.as_mut().unwrap().approvals.truncate(1);
    let err = forged.verify(&genesis, &common::policy_rule).unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::Hop {
                error: BlockError::Authority { error: AuthorityError::TooFewApprovals { valid: 1, .. }, .. },
                ..
            }
        ),
        "{err}"
    );
    // Left out and held: fine. Held, but appointed by another committee only: refused.
    let lean = honest.clone().without_appointments(|_| true);
    let mut held = Appointments::default();
    held.hold(caught.appointments[0].clone());
    assert_eq!(lean.verify_with(&genesis, &held, &common::policy_rule).unwrap().state.id, caught.state.id);
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let other = TestCommittee::new(4, 3, &mut rng);
    let elsewhere = other.appoint(caught.appointments[0].committee(), 4, u64::MAX).verify().unwrap();
    let mut foreign = Appointments::default();
    foreign.hold(elsewhere);
    let err = lean.verify_with(&genesis, &foreign, &common::policy_rule).unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::Hop {
                error: BlockError::Authority { error: AuthorityError::TooFewApprovals { valid: 0, .. }, .. },
                ..
            }
        ),
        "{err}"
    );
}

/// A linked proof shows only the committee in force at the recorded block: it must descend
/// from the trusted one by appointments the proof carries or the verifier holds.
#[test]
fn linked_proofs_check_the_lineage_of_the_recorded_committee() {
    let mut chain = chain_of(4, 3, 5);
    chain.push(Some(5), false, 0);
    chain.push(None, false, 0);
    chain.push(Some(4), false, 0);
    chain.push(None, false, 0);
    let head = chain.head().index();
    let id = chain.store.block_id(&chain.chain, head).unwrap().unwrap();
    let genesis = chain.genesis_state();
    let proof = store::prove_linked(&chain.store, &chain.chain, 0, head, head, true, |_| false).unwrap();
    assert_eq!(proof.appointments.len(), 2, "both changes");
    let caught =
        proof.verify_with(&genesis, (head, id), &Appointments::default(), &common::policy_rule).unwrap().into_inner();
    assert_eq!(caught.state.committee.hash(), chain.head().committee.hash());
    // Without the first appointment, nothing shows the second committee's authority.
    let cut = LinkedProof { appointments: proof.appointments[1..].to_vec(), ..proof.clone() };
    let err = cut.verify_with(&genesis, (head, id), &Appointments::default(), &common::policy_rule).unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::LinkState { error: BlockError::Authority { error: AuthorityError::NoLineage, .. }, .. }
        ),
        "{err}"
    );
    // Held, the first may be left out; the prover leaves out exactly what is named.
    let mut held = Appointments::default();
    held.hold(caught.appointments[0].clone());
    cut.verify_with(&genesis, (head, id), &held, &common::policy_rule).unwrap();
    let lean = store::prove_linked(&chain.store, &chain.chain, 0, head, head, true, |h| held.holds(h)).unwrap();
    assert_eq!(lean, cut);
    // A forged approval anywhere in the lineage is refused.
    let mut forged = proof.clone();
    forged.appointments[0].approvals[0].signature[0] ^= 1;
    let err = forged.verify_with(&genesis, (head, id), &Appointments::default(), &common::policy_rule).unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::LinkState {
                error: BlockError::Authority { error: AuthorityError::BadSignature { .. }, .. },
                ..
            }
        ),
        "{err}"
    );
}

/// A verifier holds only appointments whose authority derives from the committee it
/// trusted: an extra one a prover slips into a linked proof is ignored, not held (else a
/// liar could make the verifier name, as held, an appointment honest provers would then
/// leave out). Held ones are named by digest, so a prover leaves out only what the
/// verifier holds byte for byte; held approvals of one committee merge, keeping the later
/// expiry.
#[test]
fn only_appointments_with_authority_are_held_and_they_are_named_by_digest() {
    let mut chain = chain_of(4, 2, 6);
    chain.push(Some(4), false, 0);
    chain.push(None, false, 0);
    let head = chain.head().index();
    let id = chain.store.block_id(&chain.chain, head).unwrap().unwrap();
    let genesis = chain.genesis_state();
    let mut proof = store::prove_linked(&chain.store, &chain.chain, 0, head, head, true, |_| false).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let stranger = TestCommittee::new(4, 3, &mut rng);
    proof.appointments.push(Appointment::anchor(stranger.committee.clone()));
    let caught =
        proof.verify_with(&genesis, (head, id), &Appointments::default(), &common::policy_rule).unwrap().into_inner();
    let held: Vec<[u8; 32]> = caught.appointments.iter().map(|a| a.committee().hash()).collect();
    assert_eq!(held, vec![chain.head().committee.hash()], "the extra appointment is not held");

    let appointment = proof.appointments[0].clone();
    let mut holding = Appointments::default();
    holding.hold(caught.appointments[0].clone());
    assert!(holding.holds(&appointment.digest()));
    assert!(!holding.holds(&appointment.committee.hash()), "named by digest, not committee hash");
    let lean = store::prove_linked(&chain.store, &chain.chain, 0, head, head, true, |d| holding.holds(d)).unwrap();
    assert!(lean.appointments.is_empty());
    // The same committee, the same approvers, other approval bytes: not left out.
    let mut other = appointment.clone();
    other.approvals.pop();
    let mut holding_other = Appointments::default();
    holding_other.hold(other.verify().unwrap());
    let full =
        store::prove_linked(&chain.store, &chain.chain, 0, head, head, true, |d| holding_other.holds(d)).unwrap();
    assert_eq!(full.appointments.len(), 1);

    // Merging: one key's approval with the later expiry stands, whichever came first.
    let next = &appointment.committee;
    let signer = TestCommittee::new(4, 3, &mut rng);
    let early = signer.appoint(next, 4, 100).verify().unwrap();
    let late = signer.appoint(next, 4, 200).verify().unwrap();
    for order in [[early.clone(), late.clone()], [late, early]] {
        let mut merged = Appointments::default();
        order.into_iter().for_each(|a| merged.hold(a));
        let held = merged.get(&next.hash()).unwrap();
        assert_eq!(held.approvals.len(), 4);
        held.authorizes(&signer.committee, &chain.chain, 150).unwrap();
    }
}

/// A policy change is taken only with the payload that authorizes it, checked by the
/// verifier's rule (the release layer's root signatures), in forward and linked proofs
/// alike: a committee that signs a policy change its root keys did not is refused by
/// every client, whoever serves the proof.
#[test]
fn proofs_check_every_policy_change_with_the_verifiers_rule() {
    let mut chain = chain_of(4, 2, 7);
    chain.push(None, true, 0);
    chain.push(None, false, 0);
    chain.push(None, true, 0);
    chain.push(None, false, 0);
    // Block 7: a policy change the committee signs without its authorization.
    let head = chain.head();
    let proposal = chainiac_skipchain::Proposal {
        kind: 1,
        payload: b"no authority at all".to_vec(),
        timestamp_ms: head.header.timestamp_ms + 1,
        committee: None,
        policy: Some(common::policy(9)),
    };
    let store = &chain.store;
    let id = chain.chain;
    let mut forged = head.propose(proposal, |i| store.block_id(&id, i).unwrap()).unwrap();
    forged.signature = Some(BlockSignature {
        ballot: 0,
        signature: chain.signer.sign(&BlockSignature::message(&forged.id(), 0), 0, &mut chain.rng),
    });
    store::append(&chain.store, &forged).unwrap();
    let genesis = chain.genesis_state();
    let rule = &common::policy_rule;
    // Up to block 6 both changes verify; block 7's is refused.
    let honest = store::prove(&chain.store, &chain.chain, 0, 6, true).unwrap();
    assert_eq!(*honest.verify(&genesis, rule).unwrap().state.policy, common::policy(2));
    let proof = store::prove(&chain.store, &chain.chain, 0, 7, true).unwrap();
    let err = proof.verify(&genesis, rule).unwrap_err();
    assert!(matches!(err, ProofError::Hop { index: 7, error: BlockError::PolicyAuthority { .. }, .. }), "{err}");
    // A carried payload other than the block's is refused by its hash.
    let mut swapped = honest.clone();
    let k = swapped.steps.iter().position(|s| s.policy.is_some()).unwrap();
    swapped.steps[k].policy.as_mut().unwrap().payload = b"authorizes anything".to_vec();
    let err = swapped.verify(&genesis, rule).unwrap_err();
    assert!(matches!(err, ProofError::Hop { error: BlockError::PayloadHash { .. }, .. }), "{err}");
    // Linked: every change since the trusted block comes with its payload, in order.
    let id_at = |i: u64| chain.store.block_id(&chain.chain, i).unwrap().unwrap();
    let linked = store::prove_linked(&chain.store, &chain.chain, 0, 6, 6, true, |_| false).unwrap();
    assert_eq!(linked.policies.len(), 2);
    let none = Appointments::default();
    assert_eq!(*linked.verify_with(&genesis, (6, id_at(6)), &none, rule).unwrap().state.policy, common::policy(2));
    let cut = LinkedProof { policies: linked.policies[1..].to_vec(), ..linked.clone() };
    let err = cut.verify_with(&genesis, (6, id_at(6)), &none, rule).unwrap_err();
    assert!(matches!(err, ProofError::LinkState { error: BlockError::PolicyAuthority { .. }, .. }), "{err}");
    let forged_linked = store::prove_linked(&chain.store, &chain.chain, 0, 7, 7, true, |_| false).unwrap();
    let err = forged_linked.verify_with(&genesis, (7, id_at(7)), &none, rule).unwrap_err();
    assert!(matches!(err, ProofError::LinkState { error: BlockError::PolicyAuthority { .. }, .. }), "{err}");
}

fn roster(keys: &[SecretKey]) -> Roster {
    Roster::new(keys.iter().enumerate().map(|(i, k)| Member::new(k, format!("127.0.0.1:{}", 9000 + i))).collect())
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// `check_change` accepts exactly when at least the outgoing threshold of distinct
    /// outgoing members approved the new committee for this chain (or every chain),
    /// unexpired at the block's time, and the new committee is a quorum.
    #[test]
    fn a_change_is_authorized_exactly_by_a_threshold_of_unexpired_member_approvals(
        n in 1usize..8,
        m in 1usize..8,
        threshold_seed in any::<u32>(),
        new_threshold in 1u32..8,
        approvers in proptest::collection::vec(any::<bool>(), 8),
        expiries in proptest::collection::vec(0u64..4, 8),
        scopes in proptest::collection::vec(0u8..3, 8),
        at in 0u64..4,
        (old_epoch, new_epoch) in (0u64..3, 0u64..3),
        seed in any::<u64>(),
    ) {
        let (here, elsewhere) = (BlockId([1; 32]), BlockId([2; 32]));
        let scope = |i: usize| [None, Some(here), Some(elsewhere)][scopes[i] as usize];
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let old_keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate(&mut rng)).collect();
        let threshold = 1 + threshold_seed % n as u32;
        let outgoing = Committee::new(roster(&old_keys), threshold).unwrap().with_epoch(old_epoch);
        let new_keys: Vec<SecretKey> = (0..m).map(|_| SecretKey::generate(&mut rng)).collect();
        let new_threshold = new_threshold.min(m as u32);
        let next = Committee::new(roster(&new_keys), new_threshold).unwrap().with_epoch(new_epoch);
        let approvals: Vec<Approval> = (0..n)
            .filter(|&i| approvers[i])
            .map(|i| Approval::sign(&old_keys[i], &next, expiries[i], scope(i)))
            .collect();
        let valid = (0..n).filter(|&i| approvers[i] && expiries[i] >= at && scope(i) != Some(elsewhere)).count();
        let appointment = Appointment { committee: next.clone(), approvals };
        let result = appointment.check_change(&outgoing, &here, at);
        let quorum = 3 * new_threshold as usize > 2 * m;
        let later = new_epoch > old_epoch;
        prop_assert_eq!(result.is_ok(), later && quorum && valid >= threshold as usize, "{:?}", result);
        if !later {
            prop_assert!(matches!(result, Err(AuthorityError::StaleEpoch { .. })), "{:?}", result);
        } else if !quorum {
            prop_assert!(matches!(result, Err(AuthorityError::WeakThreshold { .. })), "{:?}", result);
        }
    }
}
