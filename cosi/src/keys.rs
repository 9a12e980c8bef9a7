//! Keys on Edwards25519 and proofs of possession.
//!
//! A secret key is a 32-byte RFC 8032 seed, so any Ed25519 key (an OpenSSH `ssh-ed25519`
//! key included) is a cosi key. Public keys are decoded strictly: the encoding must be
//! canonical, the point must not have small order and must lie in the prime-order subgroup.

use crate::hash::TAG_PROOF_OF_POSSESSION;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why 32 bytes are not an acceptable public key or nonce point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PointError {
    #[error("point encoding is {got} bytes, expected 32")]
    WrongLength { got: usize },
    #[error("bytes do not encode a point on Edwards25519")]
    NotOnCurve,
    #[error("point encoding is not canonical (y >= p, or the sign bit set for x = 0)")]
    NonCanonical,
    #[error("point has small order (it is in the 8-torsion subgroup)")]
    SmallOrder,
    #[error("point is not in the prime-order subgroup (it has a torsion component)")]
    NotTorsionFree,
}

/// Decodes a point and makes the checks every peer-supplied point must pass:
/// on the curve, canonical, not of small order. Torsion-freeness is checked only where
/// `require_torsion_free` asks for it, since it costs a scalar multiplication.
pub(crate) fn decode_point(bytes: &[u8; 32], require_torsion_free: bool) -> Result<EdwardsPoint, PointError> {
    let compressed = CompressedEdwardsY(*bytes);
    let point = compressed.decompress().ok_or(PointError::NotOnCurve)?;
    if point.compress().as_bytes() != bytes {
        return Err(PointError::NonCanonical);
    }
    if point.is_small_order() {
        return Err(PointError::SmallOrder);
    }
    if require_torsion_free && !point.is_torsion_free() {
        return Err(PointError::NotTorsionFree);
    }
    Ok(point)
}

/// A public key: a point of prime order `l` on Edwards25519.
///
/// Invariant: `point` has order exactly `l` and `bytes` is its canonical encoding. Only
/// [`PublicKey::from_bytes`] and [`SecretKey::public_key`] construct one.
#[derive(Clone, Copy)]
pub struct PublicKey {
    bytes: [u8; 32],
    point: EdwardsPoint,
}

impl PublicKey {
    /// Decodes a public key. Checks, in order: length, on the curve, canonical encoding,
    /// not of small order, torsion-free. The error names the first check that failed.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PointError> {
        let array: &[u8; 32] = bytes.try_into().map_err(|_| PointError::WrongLength { got: bytes.len() })?;
        Self::from_bytes(array)
    }

    /// Decodes a public key with the checks of [`PublicKey::from_slice`].
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, PointError> {
        let point = decode_point(bytes, true)?;
        Ok(PublicKey { bytes: *bytes, point })
    }

    /// Decodes a key written as 64 hex digits (what `Display` prints), with the checks of
    /// [`PublicKey::from_slice`]; the error names the text and what was wrong.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| format!("key {text:?} is not 64 hex digits"))?;
        Self::from_bytes(&bytes).map_err(|e| format!("key {text}: {e}"))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub(crate) fn point(&self) -> &EdwardsPoint {
        &self.point
    }

    /// The same key as an `ed25519-dalek` verifying key, for plain RFC 8032 signatures.
    pub fn to_ed25519(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.bytes).expect("a checked public key is a valid Ed25519 key")
    }

    /// Checks a plain RFC 8032 Ed25519 signature by this key, strictly (ed25519-dalek's
    /// `verify_strict`: canonical `s`, no small-order `R`, cofactorless equation).
    pub fn verify_ed25519(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.to_ed25519().verify_strict(message, &signature).is_ok()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PublicKey {}
impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}
impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex_prefix(&self.bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.bytes {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::bytes::serialize(&self.bytes, s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: [u8; 32] = crate::bytes::deserialize(d)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A secret key: an RFC 8032 seed and the scalar it expands to.
///
/// Zeroized on drop. Not `Clone`, so that a copy cannot outlive the original by mistake.
pub struct SecretKey {
    signing: SigningKey,
    scalar: Scalar,
    public: PublicKey,
}

impl SecretKey {
    /// The key whose RFC 8032 seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let scalar = signing.to_scalar();
        let verifying = signing.verifying_key();
        // The public key is [a]B for a clamped a: torsion-free and never small order.
        let public = PublicKey { bytes: verifying.to_bytes(), point: verifying.to_edwards() };
        SecretKey { signing, scalar, public }
    }

    /// A new key from a cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let key = Self::from_seed(&seed);
        seed.zeroize();
        key
    }

    /// The 32-byte RFC 8032 seed. Handle with care: this is the secret.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn scalar(&self) -> &Scalar {
        &self.scalar
    }

    /// A 32-byte secret derived from the seed's expansion, mixed into nonce derivation
    /// (the RFC 8032 "prefix").
    pub(crate) fn nonce_prefix(&self) -> [u8; 32] {
        let expanded = ed25519_dalek::hazmat::ExpandedSecretKey::from(&self.signing.to_bytes());
        expanded.hash_prefix
    }

    /// A plain RFC 8032 Ed25519 signature (deterministic nonce), as any Ed25519 library makes.
    pub fn sign_ed25519(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// This key's proof of possession: its Ed25519 signature over
    /// `tagged("chainiac/v1/cosi/pop") || public key`.
    pub fn proof_of_possession(&self) -> ProofOfPossession {
        ProofOfPossession(self.sign_ed25519(&pop_message(&self.public)))
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // `SigningKey` zeroizes itself; the expanded scalar is ours to clear.
        self.scalar.zeroize();
    }
}
impl ZeroizeOnDrop for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public: {:?})", self.public)
    }
}

/// The message a proof of possession signs: `[len(tag)] || tag || key`.
pub fn pop_message(key: &PublicKey) -> Vec<u8> {
    let tag = TAG_PROOF_OF_POSSESSION.as_bytes();
    let mut message = Vec::with_capacity(1 + tag.len() + 32);
    message.push(tag.len() as u8);
    message.extend_from_slice(tag);
    message.extend_from_slice(key.as_bytes());
    message
}

/// A proof of possession: an RFC 8032 Ed25519 signature by a key over [`pop_message`].
///
/// It defeats rogue-key attacks on the summed aggregate key: whoever adds a key to a roster
/// must be able to sign with it, so nobody can add `X' = Y - X_honest` for a `Y` they own.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProofOfPossession(pub [u8; 64]);

impl ProofOfPossession {
    /// Checks this proof for `key` (strict Ed25519 verification).
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify_ed25519(&pop_message(key), &self.0)
    }
}

impl fmt::Debug for ProofOfPossession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProofOfPossession({})", hex_prefix(&self.0))
    }
}

impl Serialize for ProofOfPossession {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for ProofOfPossession {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::bytes::deserialize(d).map(ProofOfPossession)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;

    #[test]
    fn strict_decoding_names_the_failed_check() {
        assert_eq!(PublicKey::from_slice(&[0u8; 31]).unwrap_err(), PointError::WrongLength { got: 31 });
        // The identity (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity).unwrap_err(), PointError::SmallOrder);
        // y = p + 1 is a non-canonical encoding of the identity's y.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert_eq!(PublicKey::from_bytes(&non_canonical).unwrap_err(), PointError::NonCanonical);
        // A valid key plus a point of order 8 is on the curve but not torsion-free.
        let key = SecretKey::from_seed(&[7u8; 32]).public_key();
        let mixed = (key.point() + EIGHT_TORSION[1]).compress().to_bytes();
        assert_eq!(PublicKey::from_bytes(&mixed).unwrap_err(), PointError::NotTorsionFree);
        // Every point of the 8-torsion subgroup is small order.
        for point in EIGHT_TORSION.iter() {
            let bytes = point.compress().to_bytes();
            let err = PublicKey::from_bytes(&bytes).unwrap_err();
            assert!(matches!(err, PointError::SmallOrder | PointError::NonCanonical), "{err:?}");
        }
    }

    /// Hex text round-trips through `Display`; bad text and bad points are named.
    #[test]
    fn keys_decode_from_the_hex_they_print() {
        let key = SecretKey::from_seed(&[7u8; 32]).public_key();
        assert_eq!(PublicKey::from_hex(&key.to_string()), Ok(key));
        assert!(PublicKey::from_hex("abc").unwrap_err().contains("not 64 hex digits"));
        let mut identity = "01".to_string() + &"00".repeat(31);
        assert!(PublicKey::from_hex(&identity).unwrap_err().contains(&PointError::SmallOrder.to_string()));
        identity.replace_range(0..1, "g");
        assert!(PublicKey::from_hex(&identity).unwrap_err().contains("not 64 hex digits"));
    }

    #[test]
    fn y_not_on_curve_is_rejected() {
        // y = 2 has no x on Edwards25519 (found by search; checked by the assertion itself).
        let mut found = false;
        for y in 2u8..50 {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            if CompressedEdwardsY(bytes).decompress().is_none() {
                assert_eq!(PublicKey::from_bytes(&bytes).unwrap_err(), PointError::NotOnCurve);
                found = true;
                break;
            }
        }
        assert!(found);
    }

    #[test]
    fn proof_of_possession_binds_the_key() {
        let a = SecretKey::from_seed(&[1u8; 32]);
        let b = SecretKey::from_seed(&[2u8; 32]);
        assert!(a.proof_of_possession().verify(&a.public_key()));
        assert!(!a.proof_of_possession().verify(&b.public_key()));
        let mut bad = a.proof_of_possession();
        bad.0[10] ^= 1;
        assert!(!bad.verify(&a.public_key()));
    }
}
