//! Negative tests: bad input gets a typed error that names what was wrong, a refused message
//! leaves the state machine as it was, and nothing panics.
//!
//! 1. Malformed encodings: keys, signatures, masks and thresholds, built by corrupting real
//!    signatures from [`simulation::run`], plus the small-order-`R` edge cases of the C2SP
//!    CCTV vectors that a strict verifier must refuse.
//! 2. Protocol misuse, driven by hand in one process with seeded randomness (the style of
//!    quinn-proto's tests): every refused message is followed by the honest one, and the round
//!    must still produce a signature that verifies.
//! 3. proptest: random bytes into every decoder, and random well-typed commitments and
//!    responses into the aggregator and leader, checked against an independent oracle.

use chainiac_cosi::protocol::{
    commit, Aggregator, Challenge, Commitment, Fault, FaultKind, Leader, ProtocolError, Response, RoundError, Session,
    SessionId, SignerNonces, Tree,
};
use chainiac_cosi::simulation::{self, Behaviour, Config};
use chainiac_cosi::{
    verify, Mask, MaskError, Member, PointError, PublicKey, Roster, SecretKey, Signature, VerifyError, WireMask,
};
use curve25519_dalek::constants::{ED25519_BASEPOINT_TABLE, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

const MESSAGE: &[u8] = b"block 0x7f3a: collectively signed";

/// The group order l = 2^252 + 27742317777372353535851937790883648493, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn roster_of(members: usize, seed: u64) -> (Arc<Roster>, Vec<SecretKey>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let keys: Vec<SecretKey> = (0..members).map(|_| SecretKey::generate(&mut rng)).collect();
    let roster =
        Roster::new(keys.iter().enumerate().map(|(i, k)| Member::new(k, format!("10.0.0.{i}:7770"))).collect())
            .unwrap();
    (Arc::new(roster), keys)
}

/// Little-endian 256-bit addition; the sum must fit.
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = a[i] as u16 + b[i] as u16 + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "sum overflows 256 bits");
    out
}

/// The encoding of y = p + k (k < 19): a y coordinate at or above the field prime, which only
/// a non-canonical encoding can carry.
fn y_at_least_p(k: u8) -> [u8; 32] {
    assert!(k < 19);
    let mut bytes = [0xffu8; 32];
    bytes[0] = 0xed + k;
    bytes[31] = 0x7f;
    bytes
}

/// Some canonical y below p for which no x exists (found by search, checked by decompression).
fn not_on_curve() -> [u8; 32] {
    (2u8..=255)
        .map(|y| {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            bytes
        })
        .find(|bytes| CompressedEdwardsY(*bytes).decompress().is_none())
        .expect("some small y is not on the curve")
}

/// The identity point (0, 1) with the sign bit set: x = 0 cannot be "negative".
fn identity_with_sign_bit() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[0] = 1;
    bytes[31] = 0x80;
    bytes
}

/// A canonical point of prime order: [k]B.
fn point(k: u64) -> [u8; 32] {
    (&Scalar::from(k.max(1)) * ED25519_BASEPOINT_TABLE).compress().to_bytes()
}

fn decompress(bytes: &[u8; 32]) -> EdwardsPoint {
    CompressedEdwardsY(*bytes).decompress().expect("a point")
}

fn mask_of(members: usize, set: &[usize]) -> Mask {
    let mut mask = Mask::empty(members);
    for &m in set {
        mask.insert(m);
    }
    mask
}

/// A real collective signature on [`MESSAGE`] by every member of an `n`-member roster.
fn signed(n: usize, seed: u64) -> (Arc<Roster>, Vec<SecretKey>, Signature) {
    let (roster, keys) = roster_of(n, seed);
    let config = Config { threshold: n, branching: 2, leader: 0, max_attempts: 1 };
    let behaviours = vec![Behaviour::Honest; n];
    let outcome =
        simulation::run(&roster, &keys, MESSAGE, &behaviours, &config, &mut ChaCha20Rng::seed_from_u64(seed)).unwrap();
    let signature = outcome.signature;
    // The control: the untouched signature verifies, with every member in it.
    verify(&roster, n, MESSAGE, &signature).unwrap();
    assert_eq!(signature.mask, Mask::full(n).as_bytes());
    (roster, keys, signature)
}

// ---------------------------------------------------------------------------------------------
// 1. Malformed encodings
// ---------------------------------------------------------------------------------------------

#[test]
fn public_key_of_the_wrong_length() {
    let key = SecretKey::from_seed(&[1; 32]).public_key().to_bytes();
    for len in [0usize, 1, 31, 33, 64] {
        let bytes: Vec<u8> = key.iter().copied().cycle().take(len).collect();
        assert_eq!(PublicKey::from_slice(&bytes).unwrap_err(), PointError::WrongLength { got: len });
    }
    assert_eq!(PublicKey::from_slice(&key).unwrap().to_bytes(), key);
}

#[test]
fn public_key_not_on_the_curve() {
    let mut found = 0;
    for y in 2u8..=255 {
        let mut bytes = [0u8; 32];
        bytes[0] = y;
        if CompressedEdwardsY(bytes).decompress().is_some() {
            continue;
        }
        found += 1;
        assert_eq!(PublicKey::from_bytes(&bytes).unwrap_err(), PointError::NotOnCurve, "y = {y}");
        // The sign bit does not make a point of it.
        bytes[31] |= 0x80;
        assert_eq!(PublicKey::from_bytes(&bytes).unwrap_err(), PointError::NotOnCurve, "y = {y}, sign bit set");
    }
    assert!(found >= 10, "only {found} small y values off the curve");
}

#[test]
fn public_key_non_canonical_encodings() {
    // y in [p, p + 18]: every such encoding that decompresses names the y it reduces to.
    let mut non_canonical = 0;
    for k in 0u8..19 {
        for sign in [0u8, 0x80] {
            let mut bytes = y_at_least_p(k);
            bytes[31] |= sign;
            let expected = if CompressedEdwardsY(bytes).decompress().is_some() {
                non_canonical += 1;
                PointError::NonCanonical
            } else {
                PointError::NotOnCurve
            };
            assert_eq!(PublicKey::from_bytes(&bytes).unwrap_err(), expected, "y = p + {k}, sign {sign:#x}");
        }
    }
    // y = p (i.e. 0) and y = p + 1 (i.e. 1) are on the curve, at least.
    assert!(non_canonical >= 3, "{non_canonical}");
    // x = 0 with the sign bit set: the identity (y = 1) and the point of order 2 (y = -1).
    assert_eq!(PublicKey::from_bytes(&identity_with_sign_bit()).unwrap_err(), PointError::NonCanonical);
    let mut minus_one = y_at_least_p(0);
    minus_one[0] = 0xec; // p - 1
    minus_one[31] |= 0x80;
    assert_eq!(PublicKey::from_bytes(&minus_one).unwrap_err(), PointError::NonCanonical);
}

#[test]
fn public_key_small_order_all_eight_torsion_points() {
    let encodings: BTreeSet<[u8; 32]> = EIGHT_TORSION.iter().map(|t| t.compress().to_bytes()).collect();
    assert_eq!(encodings.len(), 8, "eight distinct points");
    for bytes in &encodings {
        assert_eq!(PublicKey::from_bytes(bytes).unwrap_err(), PointError::SmallOrder, "{}", hex::encode(bytes));
        assert_eq!(PublicKey::from_slice(bytes).unwrap_err(), PointError::SmallOrder);
    }
}

#[test]
fn public_key_with_a_torsion_component() {
    let key = SecretKey::from_seed(&[7; 32]).public_key();
    let x = decompress(key.as_bytes());
    for (i, torsion) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let mixed = (x + torsion).compress().to_bytes();
        assert_eq!(PublicKey::from_bytes(&mixed).unwrap_err(), PointError::NotTorsionFree, "X + T[{i}]");
    }
    // T[0] is the identity: X + T[0] is X itself.
    assert_eq!(PublicKey::from_bytes(&(x + EIGHT_TORSION[0]).compress().to_bytes()).unwrap(), key);
}

#[test]
fn a_roster_with_a_bad_key_does_not_decode() {
    let (roster, _) = roster_of(4, 11);
    let bytes = roster.to_bytes();
    assert_eq!(postcard::from_bytes::<Roster>(&bytes).unwrap(), *roster);
    let key = roster.members()[2].key.to_bytes();
    let at = bytes.windows(32).position(|w| w == key).expect("the key is in the encoding");
    let x = decompress(&key);
    let bad_keys = [
        EIGHT_TORSION[3].compress().to_bytes(),
        (x + EIGHT_TORSION[5]).compress().to_bytes(),
        not_on_curve(),
        y_at_least_p(1),
    ];
    for bad in bad_keys {
        let mut tampered = bytes.clone();
        tampered[at..at + 32].copy_from_slice(&bad);
        assert!(postcard::from_bytes::<Roster>(&tampered).is_err(), "{}", hex::encode(bad));
    }
}

#[test]
fn signature_of_the_wrong_length() {
    for n in [1usize, 7, 8, 9, 17] {
        let expected = 64 + n.div_ceil(8);
        for got in [0, 32, 63, 64, expected - 1, expected + 1, 2 * expected] {
            if got == expected {
                continue;
            }
            assert_eq!(
                Signature::from_bytes(&vec![0u8; got], n).unwrap_err(),
                VerifyError::WrongLength { got, expected, members: n }
            );
        }
    }
    let (_, _, signature) = signed(9, 1);
    let bytes = signature.to_bytes();
    assert_eq!(Signature::from_bytes(&bytes, 9).unwrap(), signature);
    assert_eq!(
        Signature::from_bytes(&bytes, 8).unwrap_err(),
        VerifyError::WrongLength { got: 66, expected: 65, members: 8 }
    );
    assert_eq!(
        Signature::from_bytes(&bytes, 17).unwrap_err(),
        VerifyError::WrongLength { got: 66, expected: 67, members: 17 }
    );
}

#[test]
fn non_canonical_s_is_refused() {
    let (roster, _, signature) = signed(5, 2);
    let s_plus_l = add_le(&signature.s, &L);
    // s + l is the same scalar mod l: only the canonicity check stands between it and
    // a second valid encoding of the same signature (malleability).
    assert_eq!(
        Scalar::from_bytes_mod_order(s_plus_l),
        Option::<Scalar>::from(Scalar::from_canonical_bytes(signature.s)).unwrap()
    );
    let malleated = Signature { s: s_plus_l, ..signature.clone() };
    assert_eq!(verify(&roster, 5, MESSAGE, &malleated).unwrap_err(), VerifyError::NonCanonicalS);
    // The plain Ed25519 view of the same bytes is refused too.
    let aggregate = roster.aggregate_key();
    assert!(aggregate.verify_ed25519(MESSAGE, &signature.to_ed25519_bytes()));
    assert!(!aggregate.verify_ed25519(MESSAGE, &malleated.to_ed25519_bytes()));

    // s = l itself, and s with the top bit set.
    let s_is_l = Signature { s: L, ..signature.clone() };
    assert_eq!(verify(&roster, 5, MESSAGE, &s_is_l).unwrap_err(), VerifyError::NonCanonicalS);
    let mut high = signature.s;
    high[31] |= 0x80;
    let high = Signature { s: high, ..signature.clone() };
    assert_eq!(verify(&roster, 5, MESSAGE, &high).unwrap_err(), VerifyError::NonCanonicalS);
}

#[test]
fn malformed_r_is_refused() {
    let (roster, _, signature) = signed(6, 3);
    let with_r = |r: [u8; 32]| verify(&roster, 6, MESSAGE, &Signature { r, ..signature.clone() });
    for torsion in EIGHT_TORSION.iter() {
        assert_eq!(with_r(torsion.compress().to_bytes()).unwrap_err(), VerifyError::R(PointError::SmallOrder));
    }
    assert_eq!(with_r(y_at_least_p(1)).unwrap_err(), VerifyError::R(PointError::NonCanonical));
    assert_eq!(with_r(identity_with_sign_bit()).unwrap_err(), VerifyError::R(PointError::NonCanonical));
    assert_eq!(with_r(not_on_curve()).unwrap_err(), VerifyError::R(PointError::NotOnCurve));
    // R plus a torsion point decodes (R need not be torsion-free) but changes the challenge.
    let r = decompress(&signature.r);
    for torsion in EIGHT_TORSION.iter().skip(1) {
        assert_eq!(with_r((r + torsion).compress().to_bytes()).unwrap_err(), VerifyError::Equation);
    }
    // -R: a valid point, the wrong one.
    assert_eq!(with_r((-r).compress().to_bytes()).unwrap_err(), VerifyError::Equation);
}

/// The C2SP CCTV / "Taming the many EdDSAs" edge case: a small-order `R` with `s = 0`. A
/// strict verifier refuses the small-order `R` itself, whatever the equation says.
#[test]
fn small_order_r_with_zero_s_under_a_full_roster_is_refused() {
    for n in [1usize, 2, 5, 9] {
        let (roster, _) = roster_of(n, 100 + n as u64);
        let aggregate = roster.aggregate_key();
        for (i, torsion) in EIGHT_TORSION.iter().enumerate() {
            let signature =
                Signature { r: torsion.compress().to_bytes(), s: [0; 32], mask: Mask::full(n).as_bytes().to_vec() };
            for threshold in [1, n] {
                assert_eq!(
                    verify(&roster, threshold, MESSAGE, &signature).unwrap_err(),
                    VerifyError::R(PointError::SmallOrder),
                    "n = {n}, T[{i}], threshold {threshold}"
                );
            }
            assert!(!aggregate.verify_ed25519(MESSAGE, &signature.to_ed25519_bytes()), "n = {n}, T[{i}]");
        }
        // Non-canonical encodings of small-order points, also with s = 0.
        for r in [identity_with_sign_bit(), y_at_least_p(0), y_at_least_p(1)] {
            let signature = Signature { r, s: [0; 32], mask: Mask::full(n).as_bytes().to_vec() };
            assert_eq!(verify(&roster, n, MESSAGE, &signature).unwrap_err(), VerifyError::R(PointError::NonCanonical));
        }
    }
}

#[test]
fn mask_with_bits_beyond_the_roster_or_the_wrong_length() {
    for n in [5usize, 10, 16] {
        let (roster, _, signature) = signed(n, 4 + n as u64);
        let bytes = n.div_ceil(8);
        for bit in n..bytes * 8 {
            let mut mask = signature.mask.clone();
            mask[bit / 8] |= 1 << (bit % 8);
            let tampered = Signature { mask, ..signature.clone() };
            assert_eq!(
                verify(&roster, 1, MESSAGE, &tampered).unwrap_err(),
                VerifyError::Mask(MaskError::BitBeyondRoster { bit, members: n })
            );
        }
        for got in [0, bytes - 1, bytes + 1, bytes + 8] {
            let tampered = Signature { mask: vec![0xff; got], ..signature.clone() };
            assert_eq!(
                verify(&roster, 1, MESSAGE, &tampered).unwrap_err(),
                VerifyError::Mask(MaskError::WrongLength { got, expected: bytes, members: n })
            );
        }
    }
}

#[test]
fn impossible_thresholds_are_refused() {
    let (roster, _, signature) = signed(4, 5);
    for threshold in [0, 5, 1000, usize::MAX] {
        assert_eq!(
            verify(&roster, threshold, MESSAGE, &signature).unwrap_err(),
            VerifyError::InvalidThreshold { threshold, members: 4 }
        );
    }
    for threshold in 1..=4 {
        verify(&roster, threshold, MESSAGE, &signature).unwrap();
    }
}

/// `verify` documents the order of its checks; the error names the first one that fails.
#[test]
fn verify_reports_the_first_failed_check() {
    let (roster, _, signature) = signed(5, 6);
    let mut everything_wrong = Signature { r: EIGHT_TORSION[1].compress().to_bytes(), s: L, mask: vec![0b0010_0001] };
    assert!(matches!(verify(&roster, 0, MESSAGE, &everything_wrong), Err(VerifyError::InvalidThreshold { .. })));
    assert!(matches!(verify(&roster, 2, MESSAGE, &everything_wrong), Err(VerifyError::Mask(_))));
    everything_wrong.mask = vec![0b0000_0001];
    assert_eq!(
        verify(&roster, 2, MESSAGE, &everything_wrong).unwrap_err(),
        VerifyError::BelowThreshold { present: 1, threshold: 2 }
    );
    assert_eq!(verify(&roster, 1, MESSAGE, &everything_wrong).unwrap_err(), VerifyError::R(PointError::SmallOrder));
    everything_wrong.r = signature.r;
    assert_eq!(verify(&roster, 1, MESSAGE, &everything_wrong).unwrap_err(), VerifyError::NonCanonicalS);
    everything_wrong.s = signature.s;
    assert_eq!(verify(&roster, 1, MESSAGE, &everything_wrong).unwrap_err(), VerifyError::Equation);
    everything_wrong.mask = signature.mask.clone();
    verify(&roster, 1, MESSAGE, &everything_wrong).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. State-machine misuse
// ---------------------------------------------------------------------------------------------

/// Roster size of the hand-driven rounds.
const N: usize = 7;
const LEADER: usize = 0;

/// One signing round over seven members, driven by hand. The tree (leader 0, branching 2):
///
/// ```text
///          0
///        1   2
///       3 4 5 6
/// ```
///
/// Every step of the honest round is a method; a test sends bad messages between steps and
/// then lets the honest round finish, which shows the bad message changed nothing.
struct Round {
    roster: Arc<Roster>,
    keys: Vec<SecretKey>,
    session: Session,
    tree: Tree,
    threshold: usize,
    leader: Leader,
    /// The aggregators of inner nodes other than the leader, by member.
    inner: Vec<Option<Aggregator>>,
    nonces: Vec<Option<SignerNonces>>,
    /// Each member's own commitment, as `commit` made it.
    own: Vec<Commitment>,
    /// Members whose commitment step is done (sent, or skipped as offline).
    committed: [bool; N],
    challenge: Option<Challenge>,
    responded: [bool; N],
    rng: ChaCha20Rng,
}

impl Round {
    fn new(threshold: usize, seed: u64) -> Self {
        let (roster, keys) = roster_of(N, 77);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        let session = Session::new(roster.clone(), SessionId(id), MESSAGE);
        let tree = Tree::new(N, LEADER, 2, &Mask::empty(N));
        assert_eq!(tree.children(0), [1, 2]);
        assert_eq!(tree.children(1), [3, 4]);
        assert_eq!(tree.children(2), [5, 6]);
        let leader = Leader::new(session.clone(), &tree, threshold).unwrap();
        let inner = (0..N)
            .map(|m| (m != LEADER && !tree.children(m).is_empty()).then(|| Aggregator::new(session.clone(), &tree, m)))
            .collect();
        let mut nonces = Vec::new();
        let mut own = Vec::new();
        for (m, key) in keys.iter().enumerate() {
            let (n, c) = commit(&session, m, key, &mut rng).unwrap();
            nonces.push(Some(n));
            own.push(c);
        }
        Round {
            roster,
            keys,
            session,
            tree,
            threshold,
            leader,
            inner,
            nonces,
            own,
            committed: [false; N],
            challenge: None,
            responded: [false; N],
            rng,
        }
    }

    fn agg(&mut self, m: usize) -> &mut Aggregator {
        if m == LEADER {
            self.leader.aggregator()
        } else {
            self.inner[m].as_mut().expect("an inner node")
        }
    }

    fn aggregates(&self, m: usize) -> bool {
        m == LEADER || self.inner[m].is_some()
    }

    fn parent(&self, m: usize) -> usize {
        self.tree.parent(m).expect("not the leader")
    }

    /// A well-formed commitment for member `m` with nonces nobody will use.
    fn fresh_commitment(&mut self, m: usize) -> Commitment {
        commit(&self.session, m, &self.keys[m], &mut self.rng).unwrap().1
    }

    /// Fresh nonces for `m` in this session, outside the round.
    fn fresh_nonces(&mut self, m: usize) -> SignerNonces {
        commit(&self.session, m, &self.keys[m], &mut self.rng).unwrap().0
    }

    /// The honest commitment step of `m`: into its own aggregator, then (closed) up to its parent.
    fn commit_step(&mut self, m: usize) {
        let own = self.own[m].clone();
        if self.aggregates(m) {
            self.agg(m).receive_commitment(m, &own).unwrap();
        }
        if m != LEADER {
            let up = if self.aggregates(m) { self.agg(m).commitment().expect("the node committed") } else { own };
            let parent = self.parent(m);
            self.agg(parent).receive_commitment(m, &up).unwrap();
        }
        self.committed[m] = true;
    }

    /// `m` is offline for the whole round.
    fn offline(&mut self, m: usize) {
        self.committed[m] = true;
    }

    /// Every commitment step not yet done, leaves first.
    fn commitment_phase(&mut self) {
        for m in (0..N).rev() {
            if !self.committed[m] {
                self.commit_step(m);
            }
        }
    }

    /// The leader's challenge, delivered to every inner node in it.
    fn challenge_phase(&mut self) -> Challenge {
        if self.challenge.is_none() {
            let challenge = self.leader.challenge().unwrap();
            let mask = Mask::from_bytes(&challenge.mask.0, N).unwrap();
            for m in 1..N {
                if self.inner[m].is_some() && mask.contains(m) {
                    self.agg(m).receive_challenge(&challenge).unwrap();
                }
            }
            self.challenge = Some(challenge);
        }
        self.challenge.clone().unwrap()
    }

    fn in_challenge(&self, m: usize) -> bool {
        Mask::from_bytes(&self.challenge.as_ref().expect("challenged").mask.0, N).unwrap().contains(m)
    }

    /// `m`'s own partial signature.
    fn own_response(&mut self, m: usize) -> Response {
        let challenge = self.challenge.clone().expect("challenged");
        self.nonces[m].take().expect("nonces unused").respond(&self.session, &self.keys[m], &challenge).unwrap()
    }

    /// The honest response step of `m`, except that what goes up to the parent is `replace`
    /// when given.
    fn respond_step_sending(&mut self, m: usize, replace: Option<Response>) {
        let own = self.own_response(m);
        if self.aggregates(m) {
            self.agg(m).receive_response(m, &own).unwrap();
        }
        if m != LEADER {
            let up = if self.aggregates(m) { self.agg(m).response() } else { own };
            let parent = self.parent(m);
            self.agg(parent).receive_response(m, &replace.unwrap_or(up)).unwrap();
        }
        self.responded[m] = true;
    }

    fn respond_step(&mut self, m: usize) {
        self.respond_step_sending(m, None);
    }

    fn response_phase(&mut self) {
        for m in (0..N).rev() {
            if self.in_challenge(m) && !self.responded[m] {
                self.respond_step(m);
            }
        }
    }

    /// Runs whatever is left of the round honestly; the signature must verify.
    fn complete(&mut self) -> Signature {
        self.commitment_phase();
        self.challenge_phase();
        self.response_phase();
        let signature = self.leader.finish().unwrap();
        verify(&self.roster, self.threshold, MESSAGE, &signature).unwrap();
        signature
    }

    /// [`Round::complete`] and every member signed.
    fn complete_full(&mut self) {
        let signature = self.complete();
        assert_eq!(signature.mask, Mask::full(N).as_bytes());
    }
}

/// A commitment by hand: `set` is the mask, the points are valid unless replaced.
fn forged_commitment(set: &[usize], unreachable: Vec<u32>) -> Commitment {
    Commitment { mask: WireMask::from(&mask_of(N, set)), r1: point(11), r2: point(12), unreachable }
}

#[test]
fn commitment_from_a_member_that_is_not_a_child() {
    let mut round = Round::new(N, 1);
    let own3 = round.own[3].clone();
    let own5 = round.own[5].clone();
    // 3 is the leader's grandchild, 5 a child of 2, and 7 and beyond are not members at all.
    assert_eq!(round.agg(0).receive_commitment(3, &own3), Err(ProtocolError::NotAChild { from: 3, me: 0 }));
    assert_eq!(round.agg(1).receive_commitment(5, &own5), Err(ProtocolError::NotAChild { from: 5, me: 1 }));
    assert_eq!(round.agg(1).receive_commitment(2, &own5), Err(ProtocolError::NotAChild { from: 2, me: 1 }));
    assert_eq!(round.agg(1).receive_commitment(0, &own3), Err(ProtocolError::NotAChild { from: 0, me: 1 }));
    for from in [7, 1000, usize::MAX] {
        assert_eq!(round.agg(1).receive_commitment(from, &own3), Err(ProtocolError::NotAChild { from, me: 1 }));
    }
    assert_eq!(round.agg(1).awaiting_commitments(), [1, 3, 4]);
    assert_eq!(round.agg(0).awaiting_commitments(), [0, 1, 2]);
    round.complete_full();
}

#[test]
fn duplicate_commitment_is_refused_and_the_first_one_stands() {
    let mut round = Round::new(N, 2);
    round.commit_step(3);
    let again = round.own[3].clone();
    let other = round.fresh_commitment(3);
    assert_ne!(other, again);
    for duplicate in [&again, &other] {
        assert_eq!(
            round.agg(1).receive_commitment(3, duplicate),
            Err(ProtocolError::Duplicate { from: 3, what: "commitment" })
        );
    }
    // The aggregator's own commitment, twice.
    let own1 = round.own[1].clone();
    round.agg(1).receive_commitment(1, &own1).unwrap();
    assert_eq!(
        round.agg(1).receive_commitment(1, &own1),
        Err(ProtocolError::Duplicate { from: 1, what: "commitment" })
    );
    assert_eq!(round.agg(1).awaiting_commitments(), [4]);
    // Finish the subtree of 1 by hand (its own commitment is in), then the rest.
    let own4 = round.own[4].clone();
    round.agg(1).receive_commitment(4, &own4).unwrap();
    let up = round.agg(1).commitment().unwrap();
    round.agg(0).receive_commitment(1, &up).unwrap();
    assert_eq!(round.agg(0).receive_commitment(1, &up), Err(ProtocolError::Duplicate { from: 1, what: "commitment" }));
    round.committed[1] = true;
    round.committed[4] = true;
    // Had `other` replaced 3's commitment, 3's response would not match and 3 would be blamed.
    round.complete_full();
}

#[test]
fn commitment_claiming_members_outside_the_subtree() {
    let mut round = Round::new(N, 3);
    // Leaf 3's subtree is {3}; 1's is {1, 3, 4}.
    let cases: Vec<(usize, usize, Commitment)> = vec![
        (1, 3, forged_commitment(&[3, 4], vec![])),
        (1, 3, forged_commitment(&[1, 3], vec![])),
        (0, 1, forged_commitment(&[1, 3, 4, 5], vec![])),
        (0, 1, forged_commitment(&[0, 1], vec![])),
        (0, 2, forged_commitment(&[2, 5, 6, 3], vec![])),
        // Unreachable members must be in the subtree and not in the mask.
        (1, 3, forged_commitment(&[3], vec![5])),
        (1, 3, forged_commitment(&[3], vec![3])),
        (1, 3, forged_commitment(&[3], vec![u32::MAX])),
        (0, 1, forged_commitment(&[1, 3], vec![4, 6])),
        (0, 1, forged_commitment(&[1, 3, 4], vec![4])),
    ];
    for (to, from, commitment) in &cases {
        assert_eq!(
            round.agg(*to).receive_commitment(*from, commitment),
            Err(ProtocolError::MaskOutsideSubtree { from: *from }),
            "{from} -> {to}: {commitment:?}"
        );
    }
    assert!(round.agg(0).unreachable().is_empty() && round.agg(1).unreachable().is_empty());
    round.complete_full();
    assert!(round.leader.unreachable().is_empty(), "refused unreachable lists left no trace");
}

#[test]
fn commitment_that_omits_its_sender() {
    let mut round = Round::new(N, 4);
    let cases = [
        (1, 3, forged_commitment(&[], vec![])),
        (0, 1, forged_commitment(&[3, 4], vec![])),
        (0, 1, forged_commitment(&[], vec![])),
        (0, 2, forged_commitment(&[5], vec![2, 6])),
        (1, 1, forged_commitment(&[], vec![])),
    ];
    for (to, from, commitment) in &cases {
        assert_eq!(
            round.agg(*to).receive_commitment(*from, commitment),
            Err(ProtocolError::CommitterMissing { from: *from }),
            "{from} -> {to}"
        );
    }
    round.complete_full();
}

#[test]
fn commitment_with_a_malformed_mask() {
    let mut round = Round::new(N, 5);
    let mut commitment = round.own[3].clone();
    for (bytes, error) in [
        (vec![], MaskError::WrongLength { got: 0, expected: 1, members: N }),
        (vec![0b1000, 0], MaskError::WrongLength { got: 2, expected: 1, members: N }),
        (vec![0b1000_1000], MaskError::BitBeyondRoster { bit: 7, members: N }),
    ] {
        commitment.mask = WireMask(bytes);
        assert_eq!(round.agg(1).receive_commitment(3, &commitment), Err(ProtocolError::Mask { from: 3, error }));
    }
    round.complete_full();
}

#[test]
fn commitment_with_a_bad_point() {
    let mut round = Round::new(N, 6);
    let good = round.own[3].clone();
    let small = EIGHT_TORSION[2].compress().to_bytes();
    let cases = [
        (small, good.r2, PointError::SmallOrder),
        (good.r1, small, PointError::SmallOrder),
        ([0; 32], good.r2, PointError::SmallOrder), // y = 0: x = sqrt(-1), a point of order 4
        (not_on_curve(), good.r2, PointError::NotOnCurve),
        (good.r1, not_on_curve(), PointError::NotOnCurve),
        (y_at_least_p(1), good.r2, PointError::NonCanonical),
        (good.r1, identity_with_sign_bit(), PointError::NonCanonical),
    ];
    for (r1, r2, error) in cases {
        let bad = Commitment { r1, r2, ..good.clone() };
        assert_eq!(round.agg(1).receive_commitment(3, &bad), Err(ProtocolError::Point { from: 3, error }));
    }
    // A point with a torsion component is accepted from a peer (only keys must be
    // torsion-free): that is the documented rule, and the aggregator's exact check of the
    // response then names the sender. Here the honest commitment from 3 is still taken:
    // nothing above was recorded as 3's commitment.
    assert_eq!(round.agg(1).awaiting_commitments(), [1, 3, 4]);
    round.complete_full();
}

#[test]
fn messages_in_the_wrong_phase() {
    let mut round = Round::new(N, 7);
    let own0 = round.own[0].clone();
    let early =
        Challenge { session: round.session.id(), mask: WireMask::from(&Mask::full(N)), r1: own0.r1, r2: own0.r2 };
    let wrong_phase_challenge = Err(ProtocolError::WrongPhase { what: "a challenge" });
    assert_eq!(round.agg(1).receive_challenge(&early), wrong_phase_challenge);
    assert_eq!(round.agg(0).receive_challenge(&early), wrong_phase_challenge);
    let early_response = Response::Signed { s: [0; 32] };
    for (to, from) in [(1, 3), (1, 1), (0, 1)] {
        assert_eq!(
            round.agg(to).receive_response(from, &early_response),
            Err(ProtocolError::WrongPhase { what: "a response" })
        );
    }
    assert_eq!(
        round.leader.finish().unwrap_err(),
        RoundError::Protocol(ProtocolError::WrongPhase { what: "finish before the challenge" })
    );

    // Close 1's subtree; a late commitment is then out of phase.
    for m in [4, 3, 1] {
        round.commit_step(m);
    }
    let own3 = round.own[3].clone();
    assert_eq!(round.agg(1).receive_commitment(3, &own3), Err(ProtocolError::WrongPhase { what: "a commitment" }));
    assert_eq!(round.agg(1).commitment(), None, "a closed phase does not close twice");
    // Closing the commitment phase does not open the response phase: that takes a challenge.
    assert_eq!(
        round.agg(1).receive_response(3, &early_response),
        Err(ProtocolError::WrongPhase { what: "a response" })
    );
    round.complete_full();
}

#[test]
fn challenge_for_another_session() {
    let mut round = Round::new(N, 8);
    round.commitment_phase();
    let challenge = round.leader.challenge().unwrap();
    let real = challenge.session.0;
    for byte in [0usize, 3, 4, 31] {
        let mut other = real;
        other[byte] ^= 0x01;
        let bad = Challenge { session: SessionId(other), ..challenge.clone() };
        assert_eq!(
            round.agg(1).receive_challenge(&bad),
            Err(ProtocolError::WrongSession {
                got: other[..4].try_into().unwrap(),
                expected: real[..4].try_into().unwrap()
            }),
            "session id differing in byte {byte}"
        );
        // A signer refuses it too (with nonces made for this session, outside the round).
        let nonces = round.fresh_nonces(3);
        let key = &round.keys[3];
        assert!(matches!(nonces.respond(&round.session, key, &bad), Err(ProtocolError::WrongSession { .. })));
    }
    round.complete_full();
}

#[test]
fn challenge_that_disagrees_with_the_subtree_and_a_signer_not_in_it() {
    // Member 4 is offline: 1 commits for {1, 3} and reports 4 unreachable.
    let mut round = Round::new(N - 1, 9);
    round.offline(4);
    round.commitment_phase();
    let challenge = round.leader.challenge().unwrap();
    assert_eq!(round.leader.unreachable(), [4]);
    let in_round = mask_of(N, &[0, 1, 2, 3, 5, 6]);
    assert_eq!(challenge.mask, WireMask::from(&in_round));
    round.challenge = Some(challenge.clone());

    let with_mask = |set: &[usize]| Challenge { mask: WireMask::from(&mask_of(N, set)), ..challenge.clone() };
    let sets: [&[usize]; 4] = [
        &[0, 1, 2, 3, 4, 5, 6], // 4, who did not commit
        &[0, 1, 2, 5, 6],       // without 3, who did
        &[0, 2, 3, 5, 6],       // without 1 itself
        &[],
    ];
    for set in sets {
        assert_eq!(round.agg(1).receive_challenge(&with_mask(set)), Err(ProtocolError::ChallengeMismatch), "{set:?}");
    }
    // 2 committed for {2, 5, 6}; a challenge without 6 disagrees with it.
    assert_eq!(round.agg(2).receive_challenge(&with_mask(&[0, 1, 3, 2, 5])), Err(ProtocolError::ChallengeMismatch));
    let bad_mask = Challenge { mask: WireMask(vec![0xff]), ..challenge.clone() };
    assert_eq!(
        round.agg(1).receive_challenge(&bad_mask),
        Err(ProtocolError::Mask { from: 1, error: MaskError::BitBeyondRoster { bit: 7, members: N } })
    );
    let bad_point = Challenge { r2: EIGHT_TORSION[4].compress().to_bytes(), ..challenge.clone() };
    assert_eq!(
        round.agg(1).receive_challenge(&bad_point),
        Err(ProtocolError::Point { from: 1, error: PointError::SmallOrder })
    );

    // 4 made nonces but is not in the challenge: it refuses to sign.
    let nonces4 = round.nonces[4].take().unwrap();
    assert_eq!(nonces4.respond(&round.session, &round.keys[4], &challenge).unwrap_err(), ProtocolError::NotInMask);
    // Its parent will not take a response from it either, once challenged.
    for m in [1, 2] {
        round.agg(m).receive_challenge(&challenge).unwrap();
    }
    assert_eq!(
        round.agg(1).receive_response(4, &Response::Signed { s: [1; 32] }),
        Err(ProtocolError::WrongPhase { what: "a response from a member that did not commit" })
    );
    assert_eq!(
        round.agg(1).receive_challenge(&challenge),
        Err(ProtocolError::WrongPhase { what: "a challenge" }),
        "a second challenge"
    );
    round.response_phase();
    let signature = round.leader.finish().unwrap();
    verify(&round.roster, N - 1, MESSAGE, &signature).unwrap();
    assert_eq!(signature.mask, in_round.as_bytes());
}

#[test]
fn nonces_for_another_session_are_refused() {
    let mut round = Round::new(N, 10);
    round.commitment_phase();
    let challenge = round.challenge_phase();
    let (other_roster, _) = roster_of(N, 78);
    let same_keys_other_addresses = Arc::new(
        Roster::new(
            round.roster.members().iter().map(|m| Member { address: format!("{}0", m.address), ..m.clone() }).collect(),
        )
        .unwrap(),
    );
    let mut other_id = round.session.id();
    other_id.0[17] ^= 0x40;
    let others = [
        Session::new(round.roster.clone(), other_id, MESSAGE),
        Session::new(round.roster.clone(), round.session.id(), &b"another block"[..]),
        Session::new(same_keys_other_addresses, round.session.id(), MESSAGE),
        Session::new(other_roster, round.session.id(), MESSAGE),
    ];
    for other in &others {
        let nonces = round.fresh_nonces(3);
        let other_challenge = Challenge { session: other.id(), ..challenge.clone() };
        assert_eq!(
            nonces.respond(other, &round.keys[3], &other_challenge).unwrap_err(),
            ProtocolError::NoncesForAnotherSession
        );
    }
    // The control: fresh nonces of this session answer this challenge.
    let nonces = round.fresh_nonces(3);
    assert!(matches!(nonces.respond(&round.session, &round.keys[3], &challenge), Ok(Response::Signed { .. })));
    round.complete_full();
}

#[test]
fn commit_and_respond_with_a_key_that_is_not_the_members() {
    let mut round = Round::new(N, 11);
    let stranger = SecretKey::from_seed(&[0xab; 32]);
    for (member, key) in [(1, &round.keys[2]), (0, &round.keys[6]), (4, &stranger)] {
        assert_eq!(commit(&round.session, member, key, &mut round.rng).err(), Some(ProtocolError::WrongKey { member }));
    }
    for member in [N, N + 1, usize::MAX] {
        assert_eq!(
            commit(&round.session, member, &round.keys[0], &mut round.rng).err(),
            Some(ProtocolError::UnknownMember { member })
        );
    }
    round.commitment_phase();
    let challenge = round.challenge_phase();
    for key in [&round.keys[4], &stranger] {
        let nonces = commit(&round.session, 3, &round.keys[3], &mut round.rng).unwrap().0;
        assert_eq!(nonces.respond(&round.session, key, &challenge).unwrap_err(), ProtocolError::WrongKey { member: 3 });
    }
    round.complete_full();
}

#[test]
fn duplicate_or_stray_responses_are_refused_and_the_first_one_stands() {
    let mut round = Round::new(N, 12);
    round.commitment_phase();
    round.challenge_phase();
    let own3 = round.own_response(3);
    round.agg(1).receive_response(3, &own3).unwrap();
    round.responded[3] = true;
    for duplicate in [own3.clone(), Response::Signed { s: [1; 32] }, Response::Failed { faults: vec![] }] {
        assert_eq!(
            round.agg(1).receive_response(3, &duplicate),
            Err(ProtocolError::Duplicate { from: 3, what: "response" })
        );
    }
    for (to, from) in [(1, 5), (1, 0), (0, 3), (0, 7), (1, usize::MAX)] {
        assert_eq!(round.agg(to).receive_response(from, &own3), Err(ProtocolError::NotAChild { from, me: to }));
    }
    // Had the wrong `s` replaced 3's, the subtree sum would fail and 3 be blamed.
    round.complete_full();
}

/// Runs an honest round in which child 1 sends `substitute` to the leader instead of its
/// subtree's real response; returns what the leader makes of it.
fn leader_verdict_when_1_sends(substitute: Response, seed: u64) -> Result<Signature, RoundError> {
    let mut round = Round::new(N, seed);
    round.commitment_phase();
    round.challenge_phase();
    for m in [6, 5, 4, 3, 2] {
        round.respond_step(m);
    }
    round.respond_step_sending(1, Some(substitute));
    round.respond_step(0);
    round.leader.finish()
}

#[test]
fn failed_response_blaming_outside_the_childs_subtree_blames_the_child() {
    let fault = |member: u32, kind: FaultKind| Fault { member, kind };
    let blames_1 = Err(RoundError::Faults { faults: vec![fault(1, FaultKind::Malformed)] });
    let incredible = [
        vec![fault(5, FaultKind::NoResponse)],    // in 2's subtree
        vec![fault(0, FaultKind::WrongResponse)], // the leader
        vec![fault(2, FaultKind::Malformed)],     // 1's sibling
        vec![fault(3, FaultKind::NoResponse), fault(6, FaultKind::NoResponse)], // one of two outside
        vec![fault(7, FaultKind::Malformed)],     // not a member
        vec![fault(u32::MAX, FaultKind::Malformed)],
        vec![], // blames nobody
    ];
    for (i, faults) in incredible.into_iter().enumerate() {
        assert_eq!(
            leader_verdict_when_1_sends(Response::Failed { faults: faults.clone() }, 100 + i as u64),
            blames_1,
            "{faults:?}"
        );
    }
    // The control: blaming members 1's subtree committed for is passed on as it is.
    let credible = vec![fault(3, FaultKind::WrongResponse), fault(4, FaultKind::NoResponse)];
    assert_eq!(
        leader_verdict_when_1_sends(Response::Failed { faults: credible.clone() }, 99),
        Err(RoundError::Faults { faults: credible })
    );

    // One level down: leaf 3 blames its sibling 4. Aggregator 1 blames 3, and passes that up.
    let mut round = Round::new(N, 13);
    round.commitment_phase();
    round.challenge_phase();
    round.respond_step(4);
    round.respond_step_sending(3, Some(Response::Failed { faults: vec![fault(4, FaultKind::NoResponse)] }));
    let own1 = round.own_response(1);
    round.agg(1).receive_response(1, &own1).unwrap();
    assert_eq!(round.agg(1).response(), Response::Failed { faults: vec![fault(3, FaultKind::Malformed)] });
}

#[test]
fn failed_response_blaming_a_member_that_did_not_commit_blames_the_sender() {
    // 4 is offline, so 1's subtree committed for {1, 3} only; 1 blaming 4 is not credible.
    let mut round = Round::new(N - 1, 14);
    round.offline(4);
    round.commitment_phase();
    round.challenge_phase();
    for m in [6, 5, 3, 2] {
        round.respond_step(m);
    }
    let faults = vec![Fault { member: 4, kind: FaultKind::NoResponse }];
    round.respond_step_sending(1, Some(Response::Failed { faults }));
    round.respond_step(0);
    assert_eq!(
        round.leader.finish().unwrap_err(),
        RoundError::Faults { faults: vec![Fault { member: 1, kind: FaultKind::Malformed }] }
    );
}

#[test]
fn signed_response_with_a_non_canonical_scalar_blames_the_sender() {
    // Leaf 3 sends its honest s plus l: the same scalar mod l, in a non-canonical encoding.
    let mut round = Round::new(N, 15);
    round.commitment_phase();
    round.challenge_phase();
    round.respond_step(4);
    let Response::Signed { s } = round.own_response(3) else { panic!("an honest signer signs") };
    round.agg(1).receive_response(3, &Response::Signed { s: add_le(&s, &L) }).unwrap();
    let own1 = round.own_response(1);
    round.agg(1).receive_response(1, &own1).unwrap();
    assert_eq!(
        round.agg(1).response(),
        Response::Failed { faults: vec![Fault { member: 3, kind: FaultKind::Malformed }] }
    );

    // At the leader, from child 1.
    for (i, s) in [[0xff; 32], L].into_iter().enumerate() {
        assert_eq!(
            leader_verdict_when_1_sends(Response::Signed { s }, 200 + i as u64),
            Err(RoundError::Faults { faults: vec![Fault { member: 1, kind: FaultKind::Malformed }] })
        );
    }
    // The control: a canonical but wrong scalar is a wrong response, not a malformed one.
    assert_eq!(
        leader_verdict_when_1_sends(Response::Signed { s: Scalar::from(5u64).to_bytes() }, 210),
        Err(RoundError::Faults { faults: vec![Fault { member: 1, kind: FaultKind::WrongResponse }] })
    );
}

#[test]
fn leader_refuses_impossible_thresholds_and_too_few_commitments() {
    let round = Round::new(N, 16);
    for threshold in [0, N + 1, usize::MAX] {
        assert_eq!(
            Leader::new(round.session.clone(), &round.tree, threshold).err(),
            Some(RoundError::InvalidThreshold { threshold, members: N })
        );
    }
    let mut round = Round::new(N, 17);
    round.offline(4);
    round.commitment_phase();
    assert_eq!(
        round.leader.challenge().unwrap_err(),
        RoundError::BelowThreshold { present: N - 1, threshold: N, unreachable: vec![4] }
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Random input
// ---------------------------------------------------------------------------------------------

/// The seed of the round whose messages the fixture holds.
const FIXTURE_ROUND: u64 = 1000;

struct Fixture {
    roster: Arc<Roster>,
    keys: Vec<SecretKey>,
    signature: Signature,
    /// A valid postcard encoding of each message type.
    commitment: Vec<u8>,
    challenge: Vec<u8>,
    signed: Vec<u8>,
    failed: Vec<u8>,
    roster_bytes: Vec<u8>,
    signature_bytes: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (roster, keys, signature) = signed(N, 77);
        let mut round = Round::new(N, FIXTURE_ROUND);
        round.commitment_phase();
        let challenge = round.challenge_phase();
        let response = round.own_response(3);
        let failed = Response::Failed {
            faults: vec![
                Fault { member: 3, kind: FaultKind::NoResponse },
                Fault { member: 70_000, kind: FaultKind::Malformed },
            ],
        };
        Fixture {
            commitment: postcard::to_allocvec(&round.own[3]).unwrap(),
            challenge: postcard::to_allocvec(&challenge).unwrap(),
            signed: postcard::to_allocvec(&response).unwrap(),
            failed: postcard::to_allocvec(&failed).unwrap(),
            roster_bytes: roster.to_bytes(),
            signature_bytes: postcard::to_allocvec(&signature).unwrap(),
            roster,
            keys,
            signature,
        }
    })
}

/// Decodes `bytes` as a `T`; whatever decodes must encode and decode to itself.
fn decode<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    let again = postcard::to_allocvec(&value).expect("a decoded value encodes");
    assert_eq!(postcard::from_bytes::<T>(&again).expect("a re-encoded value decodes"), value);
    Some(value)
}

/// Feeds `bytes` to every decoder, and what decodes to the state machine that would take it,
/// in the phase where it would arrive (a round of [`Round`] with the fixture's seed, whose
/// honest messages are the fixture's encodings).
fn decode_everything(bytes: &[u8]) {
    let f = fixture();
    if let Some(commitment) = decode::<Commitment>(bytes) {
        let mut round = Round::new(N, FIXTURE_ROUND);
        let result = round.agg(1).receive_commitment(3, &commitment);
        assert_eq!(result.is_ok(), well_formed(&mask_of(N, &[3]), 3, &commitment), "{commitment:?}: {result:?}");
    }
    if let Some(challenge) = decode::<Challenge>(bytes) {
        let mut round = Round::new(N, FIXTURE_ROUND);
        round.commitment_phase();
        let real = round.leader.challenge().unwrap();
        let result = round.agg(1).receive_challenge(&challenge);
        if challenge == real {
            result.unwrap();
        } else if result.is_ok() {
            // Only the parts 1 cannot check may differ: the session and its subtree must not.
            assert_eq!(challenge.session, real.session);
            let mask = Mask::from_bytes(&challenge.mask.0, N).unwrap();
            assert!([1, 3, 4].iter().all(|&m| mask.contains(m)), "{mask:?}");
        }
        let nonces = round.nonces[3].take().unwrap();
        let _ = nonces.respond(&round.session, &round.keys[3], &challenge);
    }
    if let Some(response) = decode::<Response>(bytes) {
        let mut round = Round::new(N, FIXTURE_ROUND);
        round.commitment_phase();
        round.challenge_phase();
        round.respond_step(4);
        let honest = round.own_response(3);
        round.agg(1).receive_response(3, &response).unwrap();
        let own1 = round.own_response(1);
        round.agg(1).receive_response(1, &own1).unwrap();
        // The subtree signs exactly when 3's response is the honest one.
        let up = round.agg(1).response();
        assert_eq!(matches!(up, Response::Signed { .. }), response == honest, "{response:?} -> {up:?}");
        if response != honest {
            let Response::Failed { faults } = up else { unreachable!() };
            assert!(faults.iter().all(|f| f.member == 3), "only 3 is blamed: {faults:?}");
        }
    }
    let _ = decode::<Member>(bytes);
    let _ = decode::<PublicKey>(bytes);
    if let Some(roster) = decode::<Roster>(bytes) {
        // A decoded roster was validated like a new one.
        assert_eq!(Roster::new(roster.members().to_vec()).unwrap(), roster);
    }
    if let Some(signature) = decode::<Signature>(bytes) {
        if verify(&f.roster, 1, MESSAGE, &signature).is_ok() {
            assert_eq!(signature, f.signature, "a different signature verified");
        }
    }
    if let Ok(signature) = Signature::from_bytes(bytes, N) {
        if verify(&f.roster, 1, MESSAGE, &signature).is_ok() {
            assert_eq!(signature, f.signature, "a different signature verified");
        }
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<usize>(), 1u8..).prop_map(|(at, x)| Edit::Flip(at, x)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    match *edit {
        Edit::Flip(at, x) if !bytes.is_empty() => {
            let len = bytes.len();
            bytes[at % len] ^= x;
        }
        Edit::Flip(..) => {}
        Edit::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Edit::Insert(at, b) => bytes.insert(at % (bytes.len() + 1), b),
    }
}

/// A 32-byte point encoding: mostly valid, sometimes small order, with a torsion component,
/// or anything at all.
fn point_bytes() -> impl Strategy<Value = [u8; 32]> {
    prop_oneof![
        4 => any::<u64>().prop_map(point),
        1 => (0usize..8).prop_map(|i| EIGHT_TORSION[i].compress().to_bytes()),
        1 => (any::<u64>(), 1usize..8).prop_map(|(k, i)| (decompress(&point(k)) + EIGHT_TORSION[i]).compress().to_bytes()),
        1 => any::<[u8; 32]>(),
        1 => (0u8..19).prop_map(y_at_least_p),
    ]
}

/// The ingredients of a commitment; how they combine depends on the tree and the receiver.
#[derive(Debug, Clone)]
struct CommitmentInput {
    /// Whether the sender is one of the receiver's parts (`from` indexes them) or any member
    /// number at all (`from` is it).
    to_part: bool,
    from: usize,
    mask_mode: u8,
    bits: u8,
    raw_mask: Vec<u8>,
    r1: [u8; 32],
    r2: [u8; 32],
    unreachable_mode: u8,
    raw_unreachable: Vec<u32>,
}

fn commitment_input() -> impl Strategy<Value = CommitmentInput> {
    (
        proptest::bool::weighted(0.8),
        0usize..9,
        prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..3),
        point_bytes(),
        point_bytes(),
        prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        proptest::collection::vec(prop_oneof![0u32..9, any::<u32>()], 0..3),
    )
        .prop_map(|(to_part, from, mask_mode, bits, raw_mask, r1, r2, unreachable_mode, raw_unreachable)| {
            CommitmentInput { to_part, from, mask_mode, bits, raw_mask, r1, r2, unreachable_mode, raw_unreachable }
        })
}

impl CommitmentInput {
    /// The sender, for aggregator `me`.
    fn sender(&self, tree: &Tree, me: usize) -> usize {
        if self.to_part {
            let mut parts = vec![me];
            parts.extend(tree.children(me));
            parts[self.from % parts.len()]
        } else {
            self.from
        }
    }

    fn build(&self, tree: &Tree, from: usize) -> Commitment {
        let subtree = tree.subtree(from);
        let mut picked = Mask::empty(N);
        for m in subtree.iter().filter(|&m| self.bits >> m & 1 == 1) {
            picked.insert(m);
        }
        let mask = match self.mask_mode {
            // Mostly well-formed: some of the subtree, and the sender.
            0 => {
                if from < N {
                    picked.insert(from);
                }
                picked.as_bytes().to_vec()
            }
            // Some of the subtree, without the sender.
            1 => {
                picked.remove(from);
                picked.as_bytes().to_vec()
            }
            2 => vec![self.bits],
            _ => self.raw_mask.clone(),
        };
        let unreachable = match self.unreachable_mode {
            0 => vec![],
            // The rest of the subtree, as a well-formed commitment would list it.
            1 => match Mask::from_bytes(&mask, N) {
                Ok(claimed) => subtree.iter().filter(|&m| !claimed.contains(m)).map(|m| m as u32).collect(),
                Err(_) => vec![],
            },
            _ => self.raw_unreachable.clone(),
        };
        Commitment { mask: WireMask(mask), r1: self.r1, r2: self.r2, unreachable }
    }
}

/// The rule for a peer's nonce point, stated independently of the crate: canonical, on the
/// curve, not of small order.
fn acceptable_point(bytes: &[u8; 32]) -> bool {
    CompressedEdwardsY(*bytes).decompress().is_some_and(|p| p.compress().to_bytes() == *bytes && !p.is_small_order())
}

/// Whether aggregator `me` must take `commitment` from the part `from` whose subtree is `part`.
fn well_formed(part: &Mask, from: usize, commitment: &Commitment) -> bool {
    let Ok(mask) = Mask::from_bytes(&commitment.mask.0, N) else { return false };
    mask.is_subset(part)
        && mask.contains(from)
        && commitment.unreachable.iter().all(|&u| part.contains(u as usize) && !mask.contains(u as usize))
        && acceptable_point(&commitment.r1)
        && acceptable_point(&commitment.r2)
}

#[derive(Debug, Clone)]
enum ResponseInput {
    Honest,
    Bytes([u8; 32]),
    Scalar(u64),
    Failed(Vec<(u32, u8)>),
}

fn response_input() -> impl Strategy<Value = ResponseInput> {
    prop_oneof![
        4 => Just(ResponseInput::Honest),
        1 => any::<[u8; 32]>().prop_map(ResponseInput::Bytes),
        1 => any::<u64>().prop_map(ResponseInput::Scalar),
        1 => proptest::collection::vec((prop_oneof![0u32..9, any::<u32>()], 0u8..3), 0..4).prop_map(ResponseInput::Failed),
    ]
}

/// Anything but an honest answer.
fn bad_response() -> impl Strategy<Value = ResponseInput> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(ResponseInput::Bytes),
        any::<u64>().prop_map(ResponseInput::Scalar),
        proptest::collection::vec((prop_oneof![0u32..9, any::<u32>()], 0u8..3), 0..4).prop_map(ResponseInput::Failed),
    ]
}

/// What a member does in a random star round. Mostly honest, so that whole rounds succeed
/// often enough for the oracle's "signs exactly when" to bite both ways.
#[derive(Debug, Clone)]
enum Role {
    Honest,
    Absent,
    /// Commits honestly, then answers with this (or not at all).
    Commits(Option<ResponseInput>),
    /// Commits to random nonces it cannot answer for, then answers with this (or not at all).
    Impostor(u64, u64, Option<ResponseInput>),
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        12 => Just(Role::Honest),
        1 => Just(Role::Absent),
        2 => proptest::option::of(bad_response()).prop_map(Role::Commits),
        1 => (any::<u64>(), any::<u64>(), proptest::option::of(bad_response()))
            .prop_map(|(r1, r2, response)| Role::Impostor(r1, r2, response)),
    ]
}

fn fault_kind(k: u8) -> FaultKind {
    [FaultKind::NoResponse, FaultKind::WrongResponse, FaultKind::Malformed][k as usize % 3]
}

/// How a member's (first accepted) response is to be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Honest,
    /// Blamed whatever else happens: no response, a `Failed`, a non-canonical scalar.
    Hard,
    /// A canonical but wrong scalar: named only when nothing else went wrong.
    Wrong,
}

proptest! {
    // Mutations of valid encodings reach deep into the decoders; they are cheap, so many.
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn mutated_encodings_never_panic_a_decoder(which in 0usize..6, edits in proptest::collection::vec(edit(), 1..4)) {
        let f = fixture();
        let original = [&f.commitment, &f.challenge, &f.signed, &f.failed, &f.roster_bytes, &f.signature_bytes][which];
        let mut bytes = original.clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        decode_everything(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_everything(&bytes);
    }

    #[test]
    fn random_signatures_never_verify(
        r in point_bytes(),
        s in any::<[u8; 32]>(),
        mask in proptest::collection::vec(any::<u8>(), 0..3),
        threshold in 0usize..10,
    ) {
        let f = fixture();
        let signature = Signature { r, s, mask };
        let result = verify(&f.roster, threshold, MESSAGE, &signature);
        prop_assert!(result.is_err(), "{:?} verified", signature);
    }

    /// Random commitments to aggregator 0, 1 or 2: each is taken exactly when the
    /// independent rule says so, a refused one changes nothing, and the closed commitment
    /// is the sum of exactly what was taken.
    #[test]
    fn random_commitments_are_taken_exactly_when_well_formed(
        me in 0usize..3,
        inputs in proptest::collection::vec(commitment_input(), 0..14),
    ) {
        let f = fixture();
        let session = Session::new(f.roster.clone(), SessionId([3; 32]), MESSAGE);
        let tree = Tree::new(N, LEADER, 2, &Mask::empty(N));
        let mut aggregator = Aggregator::new(session, &tree, me);
        let mut parts: BTreeMap<usize, Mask> = tree.children(me).into_iter().map(|c| (c, tree.subtree(c))).collect();
        parts.insert(me, mask_of(N, &[me]));
        let mut taken: BTreeMap<usize, Commitment> = BTreeMap::new();
        for input in &inputs {
            let from = input.sender(&tree, me);
            let commitment = input.build(&tree, from);
            let result = aggregator.receive_commitment(from, &commitment);
            match parts.get(&from) {
                None => prop_assert_eq!(result, Err(ProtocolError::NotAChild { from, me })),
                Some(_) if taken.contains_key(&from) => {
                    prop_assert_eq!(result, Err(ProtocolError::Duplicate { from, what: "commitment" }))
                }
                Some(part) => {
                    prop_assert_eq!(result.is_ok(), well_formed(part, from, &commitment), "{:?}: {:?}", commitment, result);
                    if result.is_ok() {
                        taken.insert(from, commitment);
                    }
                }
            }
            let awaiting: Vec<usize> = parts.keys().copied().filter(|p| !taken.contains_key(p)).collect();
            let mut reported = aggregator.awaiting_commitments();
            reported.sort_unstable();
            prop_assert_eq!(reported, awaiting);
        }
        let closed = aggregator.commitment();
        if taken.is_empty() {
            prop_assert_eq!(closed, None);
            return Ok(());
        }
        let closed = closed.expect("something was taken");
        let mut mask = Mask::empty(N);
        let (mut r1, mut r2) = (EdwardsPoint::default(), EdwardsPoint::default());
        let mut unreachable: Vec<u32> = parts.keys().filter(|p| !taken.contains_key(p)).map(|&p| p as u32).collect();
        for c in taken.values() {
            mask.union_with(&Mask::from_bytes(&c.mask.0, N).unwrap());
            r1 += decompress(&c.r1);
            r2 += decompress(&c.r2);
            unreachable.extend_from_slice(&c.unreachable);
        }
        unreachable.sort_unstable();
        unreachable.dedup();
        prop_assert_eq!(closed.mask, WireMask::from(&mask));
        prop_assert_eq!(closed.r1, r1.compress().to_bytes());
        prop_assert_eq!(closed.r2, r2.compress().to_bytes());
        prop_assert_eq!(closed.unreachable, unreachable);
    }

    /// A star round in which members commit honestly, to random nonces, or not at all, and
    /// answer honestly, wrongly or not at all, with random extra messages from anyone mixed
    /// in. Each message gets exactly the documented error or is taken; the leader signs
    /// exactly when every committed member's first answer was honest, and otherwise blames
    /// exactly the members that broke the round, never an honest one.
    #[test]
    fn random_responses_blame_exactly_the_guilty(
        seed in any::<u64>(),
        roles in proptest::collection::vec(role(), N),
        early in (0usize..9, response_input()),
        extra in proptest::collection::vec((0usize..9, response_input()), 0..5),
    ) {
        let f = fixture();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let session = Session::new(f.roster.clone(), SessionId(seed.to_le_bytes().repeat(4).try_into().unwrap()), MESSAGE);
        let tree = Tree::star(N, LEADER, &Mask::empty(N));
        let mut leader = Leader::new(session.clone(), &tree, 1).unwrap();
        let mut nonces: Vec<Option<SignerNonces>> = (0..N).map(|_| None).collect();
        let mut committed = Mask::empty(N);
        let mut messages: Vec<(usize, ResponseInput)> = Vec::new();
        for (m, role) in roles.iter().enumerate() {
            let (commitment, answer) = match role {
                Role::Absent => continue,
                Role::Honest | Role::Commits(_) => {
                    let (n, c) = commit(&session, m, &f.keys[m], &mut rng).unwrap();
                    nonces[m] = Some(n);
                    let answer = match role {
                        Role::Commits(answer) => answer.clone(),
                        _ => Some(ResponseInput::Honest),
                    };
                    (c, answer)
                }
                Role::Impostor(r1, r2, answer) => {
                    let c = Commitment { mask: WireMask::from(&mask_of(N, &[m])), r1: point(*r1), r2: point(*r2), unreachable: vec![] };
                    (c, answer.clone())
                }
            };
            leader.aggregator().receive_commitment(m, &commitment).unwrap();
            committed.insert(m);
            messages.extend(answer.map(|a| (m, a)));
        }
        messages.extend(extra);
        for i in (1..messages.len()).rev() {
            messages.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        // A response before the challenge is out of phase, whoever sends it.
        let early_response = match &early.1 {
            ResponseInput::Failed(v) => Response::Failed { faults: v.iter().map(|&(m, k)| Fault { member: m, kind: fault_kind(k) }).collect() },
            _ => Response::Signed { s: [7; 32] },
        };
        prop_assert_eq!(
            leader.aggregator().receive_response(early.0, &early_response),
            Err(ProtocolError::WrongPhase { what: "a response" })
        );
        let challenge = match leader.challenge() {
            Ok(challenge) => challenge,
            Err(error) => {
                prop_assert_eq!(committed.count(), 0);
                prop_assert_eq!(error, RoundError::BelowThreshold { present: 0, threshold: 1, unreachable: (0..N as u32).collect() });
                return Ok(());
            }
        };
        prop_assert_eq!(&challenge.mask, &WireMask::from(&committed));

        let mut verdicts: BTreeMap<usize, Verdict> = BTreeMap::new();
        for (from, input) in &messages {
            let from = *from;
            let response = match input {
                ResponseInput::Honest => match nonces.get_mut(from).and_then(Option::take) {
                    Some(n) => n.respond(&session, &f.keys[from], &challenge).unwrap(),
                    None => continue,
                },
                ResponseInput::Bytes(s) => Response::Signed { s: *s },
                ResponseInput::Scalar(k) => Response::Signed { s: Scalar::from(*k).to_bytes() },
                ResponseInput::Failed(v) => Response::Failed {
                    faults: v.iter().map(|&(m, k)| Fault { member: m, kind: fault_kind(k) }).collect(),
                },
            };
            let result = leader.aggregator().receive_response(from, &response);
            if from >= N {
                prop_assert_eq!(result, Err(ProtocolError::NotAChild { from, me: LEADER }));
            } else if !committed.contains(from) {
                prop_assert_eq!(result, Err(ProtocolError::WrongPhase { what: "a response from a member that did not commit" }));
            } else if let std::collections::btree_map::Entry::Vacant(slot) = verdicts.entry(from) {
                prop_assert_eq!(result, Ok(()));
                let verdict = match (input, &response) {
                    (ResponseInput::Honest, _) => Verdict::Honest,
                    (_, Response::Signed { s }) if Option::<Scalar>::from(Scalar::from_canonical_bytes(*s)).is_some() => Verdict::Wrong,
                    _ => Verdict::Hard,
                };
                slot.insert(verdict);
            } else {
                prop_assert_eq!(result, Err(ProtocolError::Duplicate { from, what: "response" }));
            }
        }
        for m in committed.iter() {
            verdicts.entry(m).or_insert(Verdict::Hard); // no response
        }
        let with = |verdict: Verdict| -> BTreeSet<usize> {
            verdicts.iter().filter(|(_, v)| **v == verdict).map(|(m, _)| *m).collect()
        };
        let (hard, wrong) = (with(Verdict::Hard), with(Verdict::Wrong));
        match leader.finish() {
            Ok(signature) => {
                prop_assert!(hard.is_empty() && wrong.is_empty(), "signed despite {:?} {:?}", hard, wrong);
                verify(&f.roster, committed.count(), MESSAGE, &signature).unwrap();
                prop_assert_eq!(signature.mask, committed.as_bytes());
            }
            Err(RoundError::Faults { faults }) => {
                let blamed: BTreeSet<usize> = faults.iter().map(|f| f.member as usize).collect();
                prop_assert_eq!(blamed.len(), faults.len(), "one fault per member: {:?}", faults);
                let expected = if hard.is_empty() { wrong } else { hard };
                prop_assert!(!expected.is_empty(), "blamed {:?} in an honest round", faults);
                prop_assert_eq!(blamed, expected, "{:?}", faults);
            }
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
