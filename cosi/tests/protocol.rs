//! Property tests of the whole protocol, driven in one process by the simulation.

use chainiac_cosi::protocol::{FaultKind, RoundError};
use chainiac_cosi::simulation::{self, Behaviour, Config};
use chainiac_cosi::{verify, Member, Roster, RosterError, SecretKey, VerifyError};
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;

fn roster_of(members: usize, seed: u64) -> (Arc<Roster>, Vec<SecretKey>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<SecretKey> = (0..members).map(|_| SecretKey::generate(&mut rng)).collect();
    let roster =
        Roster::new(keys.iter().enumerate().map(|(i, k)| Member::new(k, format!("127.0.0.1:{}", 9000 + i))).collect())
            .unwrap();
    (Arc::new(roster), keys)
}

/// A roster, a leader, some members offline, a threshold the rest can meet, a tree shape.
#[derive(Debug, Clone)]
struct Scenario {
    members: usize,
    seed: u64,
    leader: usize,
    offline: Vec<usize>,
    threshold: usize,
    branching: usize,
    message: Vec<u8>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1usize..=64,
        any::<u64>(),
        any::<usize>(),
        proptest::collection::vec(any::<usize>(), 0..12),
        any::<usize>(),
        1usize..9,
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(members, seed, leader, offline, threshold, branching, message)| {
            let leader = leader % members;
            // Offline members are leaves of the first attempt's tree or inner nodes; either
            // way the leader never is.
            let mut offline: Vec<usize> = offline.into_iter().map(|o| o % members).filter(|&o| o != leader).collect();
            offline.sort_unstable();
            offline.dedup();
            let present = members - offline.len();
            let threshold = 1 + threshold % present;
            Scenario { members, seed, leader, offline, threshold, branching, message }
        })
}

fn behaviours(s: &Scenario) -> Vec<Behaviour> {
    let mut b = vec![Behaviour::Honest; s.members];
    for &o in &s.offline {
        b[o] = Behaviour::Offline;
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn signatures_verify_and_any_flipped_bit_fails(s in scenario(), flip in any::<usize>()) {
        let (roster, keys) = roster_of(s.members, s.seed);
        let mut rng = ChaCha20Rng::seed_from_u64(s.seed ^ 1);
        // Each restart uncovers the offline members one level further down the tree.
        let config = Config { threshold: s.threshold, branching: s.branching, leader: s.leader, max_attempts: 2 + s.offline.len() };
        let outcome = simulation::run(&roster, &keys, &s.message, &behaviours(&s), &config, &mut rng).unwrap();
        let signature = &outcome.signature;
        verify(&roster, s.threshold, &s.message, signature).unwrap();
        // Exactly the members that are up signed (restarts recover members hidden behind an
        // offline inner node).
        let signers: Vec<usize> = chainiac_cosi::Mask::from_bytes(&signature.mask, s.members).unwrap().iter().collect();
        let expected: Vec<usize> = (0..s.members).filter(|m| !s.offline.contains(m)).collect();
        prop_assert_eq!(signers, expected);

        // Every bit of R and s, every bit of the mask, and one bit of the message.
        let bytes = signature.to_bytes();
        for bit in 0..bytes.len() * 8 {
            if bit >= 512 && bit - 512 >= s.members {
                continue; // padding bits of the mask: checked to be refused in malformed.rs
            }
            let mut tampered = bytes.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            let tampered = chainiac_cosi::Signature::from_bytes(&tampered, s.members).unwrap();
            // With the threshold at 1, dropping a signer still leaves a well-formed mask, so
            // only the equation can catch it.
            prop_assert!(verify(&roster, 1, &s.message, &tampered).is_err(), "bit {} accepted", bit);
        }
        let mut message = s.message.clone();
        if message.is_empty() {
            message.push(0);
        } else {
            let bit = flip % (message.len() * 8);
            message[bit / 8] ^= 1 << (bit % 8);
        }
        prop_assert!(verify(&roster, s.threshold, &message, signature).is_err());

        // The same signature under a higher threshold than its signers: below threshold.
        let present = s.members - s.offline.len();
        if present < s.members {
            prop_assert_eq!(
                verify(&roster, present + 1, &s.message, signature).unwrap_err(),
                VerifyError::BelowThreshold { present, threshold: present + 1 }
            );
        }
    }

    #[test]
    fn a_member_failing_after_commit_is_named_and_the_restart_succeeds(s in scenario(), culprit in any::<usize>(), wrong in any::<bool>()) {
        prop_assume!(s.members >= 2);
        let (roster, keys) = roster_of(s.members, s.seed);
        let mut b = behaviours(&s);
        let candidates: Vec<usize> = (0..s.members).filter(|&m| m != s.leader && b[m] == Behaviour::Honest).collect();
        prop_assume!(!candidates.is_empty());
        let culprit = candidates[culprit % candidates.len()];
        b[culprit] = if wrong { Behaviour::WrongResponse } else { Behaviour::SilentAfterCommit };
        let present = s.members - s.offline.len() - 1;
        let threshold = s.threshold.min(present).max(1);
        prop_assume!(present >= 1);
        let mut rng = ChaCha20Rng::seed_from_u64(s.seed ^ 2);
        let config = Config { threshold, branching: s.branching, leader: s.leader, max_attempts: 3 + s.offline.len() };
        let outcome = simulation::run(&roster, &keys, &s.message, &b, &config, &mut rng).unwrap();
        verify(&roster, threshold, &s.message, &outcome.signature).unwrap();
        let kind = if wrong { FaultKind::WrongResponse } else { FaultKind::NoResponse };
        prop_assert!(outcome.faults.iter().any(|f| f.member as usize == culprit && f.kind == kind), "{:?}", outcome.faults);
        prop_assert!(outcome.faults.iter().all(|f| f.member as usize == culprit), "only the culprit is blamed: {:?}", outcome.faults);
        prop_assert!(outcome.excluded.contains(&culprit));
        let mask = chainiac_cosi::Mask::from_bytes(&outcome.signature.mask, s.members).unwrap();
        prop_assert!(!mask.contains(culprit));
    }

    #[test]
    fn keys_without_a_valid_proof_of_possession_are_refused(members in 1usize..16, seed in any::<u64>(), victim in any::<usize>()) {
        let (roster, _) = roster_of(members, seed);
        let mut entries = roster.members().to_vec();
        let victim = victim % members;
        entries[victim].proof_of_possession.0[victim % 64] ^= 0x40;
        prop_assert!(
            matches!(Roster::new(entries).unwrap_err(), RosterError::InvalidProofOfPossession { index, .. } if index == victim),
            "index named"
        );
    }
}

#[test]
fn fewer_than_threshold_is_a_typed_error() {
    let (roster, keys) = roster_of(6, 3);
    let mut b = vec![Behaviour::Honest; 6];
    b[1] = Behaviour::Offline;
    b[4] = Behaviour::Offline;
    let config = Config { threshold: 5, branching: usize::MAX, leader: 0, max_attempts: 3 };
    let err = simulation::run(&roster, &keys, b"m", &b, &config, &mut ChaCha20Rng::seed_from_u64(0)).unwrap_err();
    assert_eq!(err, RoundError::BelowThreshold { present: 4, threshold: 5, unreachable: vec![1, 4] });
}

#[test]
fn a_rogue_key_cannot_join_a_roster() {
    // The rogue-key attack: publish X' = Y - X_honest so that the "aggregate" X_honest + X'
    // is Y, whose secret the attacker knows. Without the secret of X' there is no proof of
    // possession; reusing the attacker's own proof fails.
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let honest = SecretKey::from_seed(&[1; 32]);
    let attacker = SecretKey::from_seed(&[2; 32]);
    let y = CompressedEdwardsY(attacker.public_key().to_bytes()).decompress().unwrap();
    let x = CompressedEdwardsY(honest.public_key().to_bytes()).decompress().unwrap();
    let rogue = chainiac_cosi::PublicKey::from_bytes(&(y - x).compress().to_bytes()).unwrap();
    let entries = vec![
        Member::new(&honest, ""),
        Member { key: rogue, proof_of_possession: attacker.proof_of_possession(), address: String::new() },
    ];
    assert!(matches!(Roster::new(entries).unwrap_err(), RosterError::InvalidProofOfPossession { index: 1, .. }));
}
