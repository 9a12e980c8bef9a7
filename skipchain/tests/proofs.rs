//! Property tests of catch-up proofs over random chains.

mod common;

use chainiac_skipchain::proof::{backward_path, forward_path};
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::{Appointments, BlockId, ChainParams, ChainState, Proof};
use common::TestChain;
use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::collections::HashSet;

/// `⌈log_b(n)⌉` for n >= 1.
fn ceil_log(base: u64, n: u64) -> u64 {
    let (mut k, mut p) = (0, 1u64);
    while p < n {
        p = p.saturating_mul(base);
        k += 1;
    }
    k
}

/// The hop bound: `2·(b−1)·⌈log_b(len+1)⌉ + 1` for each stretch between the checkpoints a
/// proof must land on. (With no checkpoint in between this is the bound; each
/// checkpoint adds the cost of one more climb, see the skipchain section of SPEC.md.)
fn hop_bound(params: &ChainParams, from: u64, to: u64, checkpoints: &[u64]) -> u64 {
    let b = params.base as u64;
    let mut stops: Vec<u64> = checkpoints.iter().copied().filter(|&c| c > from && c < to).collect();
    stops.push(to);
    let mut at = from;
    let mut bound = 0;
    for stop in stops {
        bound += 2 * (b - 1) * ceil_log(b, stop - at + 1) + 1;
        at = stop;
    }
    bound
}

fn build_chain(base: u8, len: u64, change_per_mille: u32, seed: u64) -> (TestChain<MemoryStore>, Vec<u64>) {
    // Heights never cap within the chain, so hops are logarithmic.
    let mut max_height = 1u8;
    while (base as u64).pow(max_height as u32 - 1) < len.max(1) {
        max_height += 1;
    }
    let params = ChainParams::new(base, max_height + 1).unwrap();
    let mut chain = TestChain::new(MemoryStore::new(), params, 4, seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    let mut checkpoints = Vec::new();
    for _ in 0..len {
        let roll = rng.next_u32() % 1000;
        let new_members = (roll < change_per_mille / 2).then(|| 3 + rng.next_u32() as usize % 5);
        let new_policy = (change_per_mille / 2..change_per_mille).contains(&roll);
        let absent = rng.next_u32() as usize % 3;
        let index = chain.push(new_members, new_policy, absent);
        if new_members.is_some() || new_policy {
            checkpoints.push(index);
        }
    }
    (chain, checkpoints)
}

fn state_at(chain: &TestChain<MemoryStore>, index: u64) -> ChainState {
    let proof = store::prove(&chain.store, &chain.chain, 0, index, false).unwrap();
    proof.verify(&chain.genesis_state(), &common::policy_rule).unwrap().into_inner().state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn proofs_between_blocks_verify_within_the_hop_bound(
        base in 2u8..=8,
        len in 1u64..2500,
        change_per_mille in 0u32..40,
        seed in any::<u64>(),
    ) {
        let (chain, checkpoints) = build_chain(base, len, change_per_mille, seed);
        let head = chain.head();
        prop_assert_eq!(head.index(), len);
        let params = head.params;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut pairs = vec![(0, len), (len, len), (0, 0)];
        for &c in &checkpoints {
            pairs.push((c.saturating_sub(1), (c + 1).min(len)));
        }
        for _ in 0..24 {
            let a = rng.next_u64() % (len + 1);
            let b = rng.next_u64() % (len + 1);
            pairs.push((a.min(b), a.max(b)));
        }
        for (i, j) in pairs {
            let trusted = state_at(&chain, i);
            let proof = store::prove(&chain.store, &chain.chain, i, j, true).unwrap();
            let caught = proof.verify(&trusted, &common::policy_rule).unwrap();
            prop_assert_eq!(caught.state.index(), j);
            prop_assert_eq!(Some(caught.state.id), chain.store.block_id(&chain.chain, j).unwrap());
            prop_assert_eq!(caught.payload.clone(), Some(chain.store.block(&chain.chain, j).unwrap().unwrap().payload));
            let crossed: Vec<u64> = checkpoints.iter().copied().filter(|&c| c > i && c <= j).collect();
            prop_assert_eq!(&caught.checkpoints, &crossed, "lands on every checkpoint");
            let hops = proof.steps.len() as u64;
            prop_assert!(hops <= hop_bound(&params, i, j, &checkpoints), "{} hops from {} to {} (b = {})", hops, i, j, base);
            prop_assert_eq!(hops as usize, forward_path(&params, i, j, &checkpoints).len());
            let committees: Vec<[u8; 32]> = proof.steps.iter().filter_map(|s| s.committee.as_ref()).map(|a| a.committee.hash()).collect();
            let distinct: HashSet<_> = committees.iter().collect();
            prop_assert_eq!(distinct.len(), committees.len(), "each committee at most once");
            prop_assert!(!committees.contains(&trusted.committee.hash()), "the trusted committee is not repeated");
            // The state a proof reaches is the state the store holds at the head.
            if j == len {
                prop_assert_eq!(&caught.state, &*head);
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A proof whose committees the verifier holds may leave them out: it verifies to the
    /// same state with them looked up, fails without them, and fails with a wrong one.
    #[test]
    fn committees_left_out_verify_only_when_held(
        base in 2u8..=4,
        len in 2u64..300,
        seed in any::<u64>(),
    ) {
        let (chain, _) = build_chain(base, len, 60, seed);
        let full = store::prove(&chain.store, &chain.chain, 0, len, true).unwrap();
        let expected = full.verify(&chain.genesis_state(), &common::policy_rule).unwrap().into_inner();
        let lean = full.clone().without_appointments(|_| true);
        prop_assert!(lean.steps.iter().all(|s| s.committee.is_none()));
        prop_assert!(lean.to_bytes().len() <= full.to_bytes().len());
        let mut held = Appointments::default();
        expected.appointments.iter().cloned().for_each(|a| held.hold(a));
        let reached = lean.verify_with(&chain.genesis_state(), &held, &common::policy_rule).unwrap().into_inner();
        prop_assert_eq!(&reached.state, &expected.state);
        prop_assert!(reached.appointments.is_empty(), "nothing carried");
        if !expected.appointments.is_empty() {
            let missing = lean.verify(&chain.genesis_state(), &common::policy_rule);
            prop_assert!(
                matches!(missing, Err(chainiac_skipchain::ProofError::Hop { error: chainiac_skipchain::BlockError::MissingCommittee { .. }, .. })),
                "{:?}", missing
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A step's compact header rebuilds, after the state before it, exactly the stored
    /// header (so its hash is the block id), is at least 64 bytes shorter (its back link
    /// to that state's block left out), and names the
    /// committee and policy hashes only at checkpoints; a wrong hash there is refused.
    #[test]
    fn step_headers_rebuild_the_stored_headers(base in 2u8..=4, len in 1u64..300, seed in any::<u64>()) {
        let (chain, checkpoints) = build_chain(base, len, 80, seed);
        let mut proof = store::prove(&chain.store, &chain.chain, 0, len, false).unwrap();
        // Every step signed, so that each prefix is a proof of its own.
        for step in &mut proof.steps {
            step.signature = chain.store.block(&chain.chain, step.header.index).unwrap().unwrap().signature;
        }
        let mut state: ChainState = chain.genesis_state().into_inner();
        for (k, step) in proof.steps.iter().enumerate() {
            let stored = chain.store.block(&chain.chain, step.header.index).unwrap().unwrap().header;
            prop_assert_eq!(&step.header.header(&state).unwrap(), &stored);
            let (compact, full) = (postcard::to_allocvec(&step.header).unwrap(), postcard::to_allocvec(&stored).unwrap());
            prop_assert!(compact.len() + 64 <= full.len(), "{} vs {} bytes", compact.len(), full.len());
            // The back link to the state's block is the one left out.
            prop_assert_eq!(step.header.back_links.len() + 1, stored.back_links.len());
            prop_assert!(!step.header.back_links.contains(&state.id));
            let names_hashes = step.header.committee_hash.is_some() || step.header.policy_hash.is_some();
            prop_assert_eq!(names_hashes, checkpoints.contains(&step.header.index));
            let mut wrong = Proof { steps: proof.steps[..=k].to_vec(), payload: None };
            wrong.steps[k].header.committee_hash = Some([7; 32]);
            prop_assert!(wrong.verify(&chain.genesis_state(), &common::policy_rule).is_err());
            state = Proof { steps: proof.steps[..=k].to_vec(), payload: None }
                .verify(&chain.genesis_state(), &common::policy_rule)
                .unwrap()
                .into_inner()
                .state;
        }
    }
}

proptest! {
    // Every byte of every proof: fewer, shorter chains.
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn changing_any_byte_of_a_proof_breaks_it(base in 2u8..=4, len in 2u64..200, seed in any::<u64>()) {
        let (chain, _) = build_chain(base, len, 30, seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let i = rng.next_u64() % len;
        let trusted = state_at(&chain, i);
        let proof = store::prove(&chain.store, &chain.chain, i, len, true).unwrap();
        let bytes = proof.to_bytes();
        prop_assert!(Proof::from_bytes(&bytes).unwrap().verify(&trusted, &common::policy_rule).is_ok());
        for position in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[position] ^= 1 << (rng.next_u32() % 8);
            let accepted = Proof::from_bytes(&tampered).ok().and_then(|p| p.verify(&trusted, &common::policy_rule).ok());
            prop_assert!(accepted.is_none(), "byte {} of {} changed and the proof still verified", position, bytes.len());
        }
    }

    #[test]
    fn backward_proofs_reach_any_earlier_block(base in 2u8..=8, len in 1u64..2000, seed in any::<u64>()) {
        let (chain, _) = build_chain(base, len, 10, seed);
        let head = chain.head();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for _ in 0..16 {
            let to = rng.next_u64() % (len + 1);
            let proof = store::prove_backward(&chain.store, &chain.chain, len, to, true).unwrap();
            let chainiac_skipchain::proof::EarlierBlock { header, payload } = proof.verify(&head).unwrap().into_inner();
            prop_assert_eq!(header.index, to);
            prop_assert_eq!(Some(header.id()), chain.store.block_id(&chain.chain, to).unwrap());
            prop_assert_eq!(payload, Some(chain.store.block(&chain.chain, to).unwrap().unwrap().payload));
            let bound = 2 * (base as u64 - 1) * ceil_log(base as u64, len - to + 1) + 1;
            prop_assert!(proof.headers.len() as u64 <= bound);
            let bytes = proof.to_bytes();
            for _ in 0..8 {
                let mut tampered = bytes.clone();
                let position = rng.next_u32() as usize % bytes.len();
                tampered[position] ^= 1 << (rng.next_u32() % 8);
                let accepted = chainiac_skipchain::BackwardProof::from_bytes(&tampered).ok().and_then(|p| p.verify(&head).ok());
                prop_assert!(accepted.is_none(), "backward proof byte {} changed and still verified", position);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// A linked proof reaches, from any trusted block, through the block a timeline records
    /// (before or after it), the same state a forward proof reaches; its links need no more
    /// than one climb whatever checkpoints lie between; a wrong recorded index or id, a cut
    /// or reordered link, a missing committee and any changed byte are refused.
    #[test]
    fn linked_proofs_reach_the_state_forward_proofs_reach(
        base in 2u8..=4,
        len in 1u64..600,
        change_per_mille in 0u32..120,
        seed in any::<u64>(),
    ) {
        use chainiac_skipchain::{LinkedProof, ProofError};
        let (chain, _) = build_chain(base, len, change_per_mille, seed);
        let id_at = |index: u64| chain.store.block_id(&chain.chain, index).unwrap().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut triples = vec![(0, len, len), (0, 0, len), (len, len, len)];
        for _ in 0..12 {
            let (i, r) = (rng.next_u64() % (len + 1), rng.next_u64() % (len + 1));
            let j = i.max(r) + rng.next_u64() % (len - i.max(r) + 1);
            triples.push((i, r, j));
        }
        for (i, r, j) in triples {
            let trusted = state_at(&chain, i);
            let expected = state_at(&chain, j);
            let proof = store::prove_linked(&chain.store, &chain.chain, i, r, j, true, |_| false).unwrap();
            let none = Appointments::default();
            let caught = proof.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule).unwrap().into_inner();
            prop_assert_eq!(caught.state.id, expected.id);
            prop_assert_eq!(&caught.state.header, &expected.header);
            prop_assert_eq!(&caught.state.committee, &expected.committee);
            prop_assert_eq!(&caught.state.policy, &expected.policy);
            prop_assert!(!caught.state.is_checkpoint || expected.is_checkpoint, "no checkpoint made up");
            // Whenever the newest checkpoint before the recorded block is not after the trusted
            // one, or a link shows its hashes, the flag is exact.
            if j == r && r > i {
                let p = chain.store.block(&chain.chain, r).unwrap().unwrap().header.previous_checkpoint;
                if p <= i || proof.links[1..].iter().any(|l| l.index >= p) {
                    prop_assert_eq!(caught.state.is_checkpoint, expected.is_checkpoint);
                }
                // Every checkpoint shown is a real one after the trusted block.
                for &c in &caught.checkpoints {
                    let block = chain.store.block(&chain.chain, c).unwrap().unwrap();
                    prop_assert!(c > i && c <= r && (block.committee.is_some() || block.policy.is_some()), "checkpoint {}", c);
                }
            }
            let payload = chain.store.block(&chain.chain, j).unwrap().unwrap().payload;
            prop_assert_eq!(caught.payload.clone(), Some(payload));
            if r > i {
                let bound = 2 * (base as u64 - 1) * ceil_log(base as u64, r - i + 1) + 1;
                prop_assert!(proof.links.len() as u64 <= bound, "{} links from {} to {}", proof.links.len(), i, r);
            } else {
                prop_assert!(proof.appointments.is_empty() && proof.policies.is_empty());
                // Below the trusted block: the links between the two show the recorded block is
                // its ancestor (none when the trusted block links to it directly).
                let between = if r == i || r == 0 { 0 } else { backward_path(&trusted.params, i, r).len() - 1 };
                prop_assert_eq!(proof.links.len(), between);
                if r < i {
                    let bound = 2 * (base as u64 - 1) * ceil_log(base as u64, i - r + 1) + 1;
                    prop_assert!(proof.links.len() as u64 <= bound);
                    // Below the trusted block the verifier cannot tell bad links from a
                    // fork (links are the prover's): fork evidence only where the trusted
                    // header links to the recorded index itself, or it is the genesis.
                    let forked = proof.verify_with(&trusted, (r, BlockId([9; 32])), &none, &common::policy_rule);
                    if r == 0 || proof.links.is_empty() {
                        prop_assert!(matches!(forked, Err(ProofError::Fork { .. })), "{:?}", forked);
                    } else {
                        prop_assert!(matches!(forked, Err(ProofError::LinksBelow { .. })), "{:?}", forked);
                    }
                    if r > 0 && !proof.links.is_empty() {
                        let bare = LinkedProof { links: vec![], ..proof.clone() };
                        let refused = bare.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule);
                        prop_assert!(matches!(refused, Err(ProofError::LinksBelow { .. })), "{:?}", refused);
                        let mut bent = proof.clone();
                        bent.links.last_mut().unwrap().timestamp_ms ^= 1;
                        prop_assert!(bent.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule).is_err());
                        let mut cut = proof.clone();
                        cut.links.pop();
                        prop_assert!(cut.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule).is_err());
                    }
                }
            }
            // The timeline names another block: refused.
            if r > i {
                if r > i + 1 {
                    let wrong_index = proof.verify_with(&trusted, (r - 1, id_at(r)), &none, &common::policy_rule);
                    prop_assert!(matches!(wrong_index, Err(ProofError::LinkTop { .. })), "{:?}", wrong_index);
                }
                let wrong_id = proof.verify_with(&trusted, (r, BlockId([9; 32])), &none, &common::policy_rule);
                prop_assert!(matches!(wrong_id, Err(ProofError::LinkId { .. })), "{:?}", wrong_id);
                let mut cut = proof.clone();
                cut.links.pop();
                prop_assert!(cut.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule).is_err(), "a cut link is refused");
                if proof.links.len() > 2 {
                    let mut swapped = proof.clone();
                    swapped.links.swap(1, 2);
                    prop_assert!(swapped.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule).is_err());
                }
                // Its appointments left out verify only when held.
                if !proof.appointments.is_empty() {
                    let lean = LinkedProof { appointments: vec![], ..proof.clone() };
                    let missing = lean.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule);
                    prop_assert!(matches!(missing, Err(ProofError::LinkState { .. })), "{:?}", missing);
                    let mut held = Appointments::default();
                    caught.appointments.iter().cloned().for_each(|a| held.hold(a));
                    let relinked = lean.verify_with(&trusted, (r, id_at(r)), &held, &common::policy_rule).unwrap();
                    prop_assert_eq!(relinked.state.id, expected.id);
                    let lean_built = store::prove_linked(&chain.store, &chain.chain, i, r, j, true, |h| held.holds(h)).unwrap();
                    prop_assert_eq!(lean_built, lean);
                }
            } else if r == i {
                let fork = proof.verify_with(&trusted, (r, BlockId([9; 32])), &none, &common::policy_rule);
                prop_assert!(matches!(fork, Err(ProofError::Fork { .. })), "{:?}", fork);
            }
            if r > i && r > 0 {
                let not_needed = store::prove_linked(&chain.store, &chain.chain, i, r, j, true, |_| false).unwrap();
                let later = state_at(&chain, r);
                let refused = not_needed.verify_with(&later, (r, id_at(r)), &none, &common::policy_rule);
                prop_assert!(matches!(refused, Err(ProofError::LinksNotNeeded { .. })), "{:?}", refused);
            }
        }
        // Every byte of one proof with links, its appointments held (each costs signature
        // checks per try; the first one carried gets every byte tried on its own below).
        let i = rng.next_u64() % len;
        let trusted = state_at(&chain, i);
        let full = store::prove_linked(&chain.store, &chain.chain, i, len, len, true, |_| false).unwrap();
        let reached = full.verify_with(&trusted, (len, id_at(len)), &Appointments::default(), &common::policy_rule).unwrap().into_inner();
        let mut held = Appointments::default();
        reached.appointments.iter().cloned().for_each(|a| held.hold(a));
        let proof = store::prove_linked(&chain.store, &chain.chain, i, len, len, true, |h| held.holds(h)).unwrap();
        let bytes = postcard::to_allocvec(&proof).unwrap();
        for position in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[position] ^= 1 << (rng.next_u32() % 8);
            let accepted = chainiac_skipchain::decode_exact::<LinkedProof>(&tampered)
                .ok()
                .and_then(|p| p.verify_with(&trusted, (len, id_at(len)), &held, &common::policy_rule).ok());
            prop_assert!(accepted.is_none(), "byte {} of {} changed and the linked proof still verified", position, bytes.len());
        }
        if let Some(first) = full.appointments.first() {
            let only = LinkedProof { appointments: vec![first.clone()], ..proof.clone() };
            let mut rest = Appointments::default();
            reached.appointments.iter().skip(1).cloned().for_each(|a| rest.hold(a));
            prop_assert!(only.verify_with(&trusted, (len, id_at(len)), &rest, &common::policy_rule).is_ok());
            let bytes = postcard::to_allocvec(first).unwrap();
            for position in 0..bytes.len() {
                let mut tampered = bytes.clone();
                tampered[position] ^= 1 << (rng.next_u32() % 8);
                let Ok(appointment) = chainiac_skipchain::decode_exact::<chainiac_skipchain::Appointment>(&tampered) else { continue };
                let forged = LinkedProof { appointments: vec![appointment], ..proof.clone() };
                let accepted = forged.verify_with(&trusted, (len, id_at(len)), &rest, &common::policy_rule).is_ok();
                prop_assert!(!accepted, "byte {} of the appointment changed and the linked proof still verified", position);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A forward proof carries one signature per committee — on each committee change and on
    /// the last step — and verifies as well with every signature; a proof cut after an
    /// unsigned step, or missing a required signature, is refused.
    #[test]
    fn forward_proofs_carry_one_signature_per_committee(
        base in 2u8..=4,
        len in 2u64..500,
        change_per_mille in 0u32..60,
        seed in any::<u64>(),
    ) {
        use chainiac_skipchain::{BlockError, ProofError};
        let (chain, _) = build_chain(base, len, change_per_mille, seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let i = rng.next_u64() % len;
        let trusted = state_at(&chain, i);
        let proof = store::prove(&chain.store, &chain.chain, i, len, false).unwrap();
        let expected = proof.verify(&trusted, &common::policy_rule).unwrap().into_inner();
        let (last, rest) = proof.steps.split_last().unwrap();
        prop_assert!(last.signature.is_some());
        for step in rest {
            prop_assert_eq!(step.signature.is_some(), step.committee.is_some() || step.header.committee_hash.is_some());
        }
        // Every signature present: the same state.
        let mut full = proof.clone();
        for step in &mut full.steps {
            step.signature = chain.store.block(&chain.chain, step.header.index).unwrap().unwrap().signature;
        }
        prop_assert_eq!(full.verify(&trusted, &common::policy_rule).unwrap().into_inner(), expected);
        // Cut after an unsigned step: its block is vouched for by nobody.
        if let Some(k) = rest.iter().position(|s| s.signature.is_none()) {
            let cut = Proof { steps: proof.steps[..=k].to_vec(), payload: None };
            let refused = cut.verify(&trusted, &common::policy_rule);
            prop_assert!(matches!(refused, Err(ProofError::Hop { error: BlockError::MissingSignature { .. }, .. })), "{:?}", refused);
        }
        // A committee change without its signature.
        if let Some(k) = proof.steps.iter().position(|s| s.committee.is_some()) {
            let mut unsigned = proof.clone();
            unsigned.steps[k].signature = None;
            prop_assert!(unsigned.verify(&trusted, &common::policy_rule).is_err());
        }
        let mut unsigned_last = proof.clone();
        unsigned_last.steps.last_mut().unwrap().signature = None;
        prop_assert!(unsigned_last.verify(&trusted, &common::policy_rule).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Links routed through a block strictly between the trusted and the recorded ones reach
    /// the same state, and hand over that block's header (its id hash-linked to the recorded
    /// one) and payload; a changed payload, one named for a block that is not a link, or one
    /// carried where no links lead up to the recorded block is refused. Elsewhere the
    /// prover leaves it out.
    #[test]
    fn links_through_a_block_carry_its_payload(
        base in 2u8..=4,
        len in 2u64..400,
        change_per_mille in 0u32..120,
        seed in any::<u64>(),
    ) {
        use chainiac_skipchain::{LinkPayload, ProofError};
        let (chain, _) = build_chain(base, len, change_per_mille, seed);
        let id_at = |index: u64| chain.store.block_id(&chain.chain, index).unwrap().unwrap();
        let block_at = |index: u64| chain.store.block(&chain.chain, index).unwrap().unwrap();
        let none = Appointments::default();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for _ in 0..8 {
            let i = rng.next_u64() % len;
            let r = i + 1 + rng.next_u64() % (len - i);
            let t = rng.next_u64() % (len + 1);
            let trusted = state_at(&chain, i);
            let proof = store::prove_linked_through(&chain.store, &chain.chain, i, r, len, true, Some(t), |_| false).unwrap();
            let verify = |p: &chainiac_skipchain::LinkedProof| p.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule);
            let caught = verify(&proof).unwrap().into_inner();
            prop_assert_eq!(caught.state.id, id_at(len));
            if i < t && t < r {
                let carried = caught.link_block.clone().expect("the block the links go through");
                prop_assert_eq!(&carried.header, &block_at(t).header);
                prop_assert_eq!(carried.payload, Some(block_at(t).payload));
                let mut changed = proof.clone();
                changed.link_payload.as_mut().unwrap().payload.push(0);
                let refused = verify(&changed);
                prop_assert!(matches!(refused, Err(ProofError::LinkPayloadHash { index }) if index == t), "{:?}", refused);
                let not_linked: Vec<u64> = (i + 1..r).filter(|x| !proof.links.iter().any(|l| l.index == *x)).collect();
                if let Some(&other) = not_linked.first() {
                    let mut moved = proof.clone();
                    moved.link_payload = Some(LinkPayload { index: other, payload: block_at(other).payload });
                    let refused = verify(&moved);
                    prop_assert!(matches!(refused, Err(ProofError::LinkPayloadNotLinked { index }) if index == other), "{:?}", refused);
                }
            } else {
                prop_assert!(proof.link_payload.is_none() && caught.link_block.is_none());
            }
            // From the recorded block itself there are no links to carry a payload.
            let at_recorded = state_at(&chain, r);
            let mut plain = store::prove_linked(&chain.store, &chain.chain, r, r, len, true, |_| false).unwrap();
            plain.link_payload = Some(LinkPayload { index: r, payload: block_at(r).payload });
            let refused = plain.verify_with(&at_recorded, (r, id_at(r)), &none, &common::policy_rule);
            prop_assert!(matches!(refused, Err(ProofError::LinksNotNeeded { .. })), "{:?}", refused);
        }
    }

    /// A recorded block given in full, whose payload names an earlier block (the
    /// application's rule, here a stand-in that names block `t`), with links down from that
    /// block: the verifier reaches the state the plain links reach, holds the named block
    /// and the recorded payload, and refuses a wrong name, a changed payload or back link,
    /// a name outside [trusted, recorded), and the form across a committee or policy change
    /// (where the prover falls back to plain links).
    #[test]
    fn a_recorded_block_that_names_an_earlier_one_skips_the_blocks_between(
        base in 2u8..=4,
        len in 3u64..400,
        change_per_mille in 0u32..120,
        seed in any::<u64>(),
    ) {
        use chainiac_skipchain::{BlockId, ProofError};
        let (chain, _) = build_chain(base, len, change_per_mille, seed);
        let id_at = |index: u64| chain.store.block_id(&chain.chain, index).unwrap().unwrap();
        let block_at = |index: u64| chain.store.block(&chain.chain, index).unwrap().unwrap();
        let none = Appointments::default();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for _ in 0..8 {
            let i = rng.next_u64() % (len - 1);
            let r = i + 2 + rng.next_u64() % (len - i - 1);
            // Now and then the trusted block itself.
            let t = i + rng.next_u64() % (r - i);
            let trusted = state_at(&chain, i);
            let t_id = id_at(t);
            let names_t = move |_: u16, _: &[u8]| Some((t, t_id));
            let verify = |p: &chainiac_skipchain::LinkedProof, names: &chainiac_skipchain::NamesBlock| {
                p.verify_named(&trusted, (r, id_at(r)), &none, &common::policy_rule, names)
            };
            let proof = store::prove_linked_named(&chain.store, &chain.chain, i, r, r, true, (t, t_id), |_| false).unwrap();
            // A name that is not the stored block there: plain links.
            let misnamed = (t, BlockId([7; 32]));
            let plain_again = store::prove_linked_named(&chain.store, &chain.chain, i, r, r, true, misnamed, |_| false);
            prop_assert!(plain_again.unwrap().named.is_none());
            let plain = store::prove_linked(&chain.store, &chain.chain, i, r, r, true, |_| false).unwrap();
            let expected = plain.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule).unwrap().into_inner();
            let (top, below) = (block_at(r).header, block_at(t).header);
            let applies = top.committee_hash == below.committee_hash
                && top.policy_hash == below.policy_hash
                && top.previous_checkpoint <= t;
            prop_assert_eq!(proof.named.is_some(), applies);
            let caught = verify(&proof, &names_t).unwrap().into_inner();
            // (Whether the recorded block is a checkpoint shows only where a link lands after
            // the checkpoint before it, which depends on the route.)
            let reached = |s: &ChainState| (s.id, s.header.clone(), s.committee.clone(), s.policy.clone());
            prop_assert_eq!(reached(&caught.state), reached(&expected.state));
            prop_assert_eq!(caught.payload, Some(block_at(r).payload));
            if t > i {
                let carried = caught.link_block.expect("the named block");
                prop_assert_eq!((carried.header, carried.payload), (below.clone(), Some(block_at(t).payload)));
            } else {
                prop_assert!(caught.link_block.is_none() && (!applies || proof.links.is_empty()));
            }
            if !applies {
                // The form forced across a committee or policy change is refused.
                let mut forced =
                    store::prove_linked_through(&chain.store, &chain.chain, i, t, t, false, None, |_| false).unwrap();
                forced.beyond = store::prove(&chain.store, &chain.chain, r, r, false).unwrap();
                forced.named = Some(chainiac_skipchain::NamedHead::new(&block_at(r), &trusted.params, t));
                let refused = verify(&forced, &names_t);
                prop_assert!(matches!(refused, Err(ProofError::LinkId { .. } | ProofError::NamedOrder { .. })), "{:?}", refused);
                continue;
            }
            prop_assert!(proof.links.iter().all(|l| l.index <= t), "no block between the two is sent");
            // A name the witnesses would not have signed: another id, or none.
            let wrong = move |_: u16, _: &[u8]| Some((t, BlockId([7; 32])));
            prop_assert!(verify(&proof, &wrong).is_err());
            let refused = verify(&proof, &|_, _| None);
            prop_assert!(matches!(refused, Err(ProofError::NamedNothing { .. })), "{:?}", refused);
            // Without the names rule (verify_with), the form is refused too.
            prop_assert!(proof.verify_with(&trusted, (r, id_at(r)), &none, &common::policy_rule).is_err());
            // A name of the trusted index with another id: a fork.
            if t == i {
                let forked = move |_: u16, _: &[u8]| Some((t, BlockId([7; 32])));
                let refused = verify(&proof, &forked);
                prop_assert!(matches!(refused, Err(ProofError::Fork { .. })), "{:?}", refused);
            }
            // Names outside [trusted, recorded).
            let outside = [i.checked_sub(1), Some(r)];
            for outside in outside.into_iter().flatten() {
                let outside_id = id_at(outside);
                let named = move |_: u16, _: &[u8]| Some((outside, outside_id));
                let refused = verify(&proof, &named);
                prop_assert!(matches!(refused, Err(ProofError::NamedNothing { .. })), "{:?}", refused);
            }
            // The head's bytes are bound by the recorded id.
            let mut changed = proof.clone();
            changed.named.as_mut().unwrap().payload.push(0);
            let refused = verify(&changed, &names_t);
            prop_assert!(matches!(refused, Err(ProofError::LinkId { index }) if index == r), "{:?}", refused);
            // The back link to the named block is implied when the head has one.
            let implied = trusted.params.link_level(t, r).is_some();
            let carried = proof.named.as_ref().unwrap().back_links.len();
            prop_assert_eq!(carried + usize::from(implied), trusted.params.height(r) as usize);
            let mut bent = proof.clone();
            match bent.named.as_mut().unwrap().back_links.first_mut() {
                Some(link) => *link = BlockId([9; 32]),
                None => bent.named.as_mut().unwrap().kind ^= 1,
            }
            let refused = verify(&bent, &names_t);
            prop_assert!(matches!(refused, Err(ProofError::LinkId { .. })), "{:?}", refused);
            let mut short = proof.clone();
            let links = &mut short.named.as_mut().unwrap().back_links;
            if links.pop().is_none() {
                links.push(BlockId([9; 32]));
            }
            let refused = verify(&short, &names_t);
            prop_assert!(matches!(refused, Err(ProofError::NamedBackLinks { .. })), "{:?}", refused);
            let mut later = proof.clone();
            later.named.as_mut().unwrap().previous_checkpoint = t + 1;
            let refused = verify(&later, &names_t);
            prop_assert!(matches!(refused, Err(ProofError::NamedOrder { .. })), "{:?}", refused);
            // From the recorded block on, nothing is linked.
            let at_recorded = state_at(&chain, r);
            let refused = proof.verify_named(&at_recorded, (r, id_at(r)), &none, &common::policy_rule, &names_t);
            prop_assert!(matches!(refused, Err(ProofError::LinksNotNeeded { .. })), "{:?}", refused);
        }
    }
}
