//! Collective signatures and their verification.
//!
//! A signature is `(R, s, mask)`. With `X` the sum of the keys of the members in `mask`,
//! it is valid when `[8]sB = [8]R + [8]cX` for `c = SHA-512(R || X || M) mod l`: exactly an
//! Ed25519 signature by `X`. With every member present, `X` is the roster's aggregate key
//! and any RFC 8032 library accepts `R || s` under it.

use crate::keys::{decode_point, PointError};
use crate::mask::{Mask, MaskError};
use crate::roster::Roster;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

/// A collective signature.
///
/// The fields are kept as bytes and checked by [`verify`]; decoding a signature from the
/// wire only checks its shape, and nothing about it can be trusted until `verify` says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    #[serde(with = "crate::bytes")]
    pub r: [u8; 32],
    #[serde(with = "crate::bytes")]
    pub s: [u8; 32],
    /// Participation bitmap; its length is fixed by the roster (see [`Mask`]).
    pub mask: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("threshold {threshold} is impossible for a roster of {members} (need 1..={members})")]
    InvalidThreshold { threshold: usize, members: usize },
    #[error("signature mask: {0}")]
    Mask(#[from] MaskError),
    #[error("only {present} members signed, the threshold is {threshold}")]
    BelowThreshold { present: usize, threshold: usize },
    #[error("signature R: {0}")]
    R(PointError),
    #[error("signature s is not a canonical scalar (s >= l)")]
    NonCanonicalS,
    #[error("the signature equation does not hold for this roster, mask and message")]
    Equation,
    #[error("signature is {got} bytes, expected {expected} for a roster of {members}")]
    WrongLength { got: usize, expected: usize, members: usize },
}

impl Signature {
    /// The canonical byte encoding `R || s || mask`, whose length `64 + ceil(n/8)` is fixed by
    /// the roster size `n`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.mask.len());
        out.extend_from_slice(&self.r);
        out.extend_from_slice(&self.s);
        out.extend_from_slice(&self.mask);
        out
    }

    /// Splits the canonical encoding for a roster of `members`; checks only the length.
    pub fn from_bytes(bytes: &[u8], members: usize) -> Result<Self, VerifyError> {
        let expected = 64 + members.div_ceil(8);
        if bytes.len() != expected {
            return Err(VerifyError::WrongLength { got: bytes.len(), expected, members });
        }
        Ok(Signature {
            r: bytes[..32].try_into().expect("length checked"),
            s: bytes[32..64].try_into().expect("length checked"),
            mask: bytes[64..].to_vec(),
        })
    }

    /// The first 64 bytes: a plain Ed25519 signature under the aggregate key of the signers.
    pub fn to_ed25519_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

/// The Ed25519 challenge `c = SHA-512(R || X || M) mod l`.
pub(crate) fn challenge(r: &[u8; 32], aggregate: &[u8; 32], message: &[u8]) -> Scalar {
    let mut hasher = Sha512::new();
    hasher.update(r);
    hasher.update(aggregate);
    hasher.update(message);
    Scalar::from_hash(hasher)
}

/// Checks a collective signature by `roster` on `message`, requiring at least `threshold`
/// members in its mask. Checks, in order: the threshold is possible, the mask is well-formed
/// for the roster, enough members signed, `R` is a canonical point not of small order, `s`
/// is canonical, and the cofactored equation holds.
pub fn verify(roster: &Roster, threshold: usize, message: &[u8], signature: &Signature) -> Result<(), VerifyError> {
    let members = roster.len();
    if threshold == 0 || threshold > members {
        return Err(VerifyError::InvalidThreshold { threshold, members });
    }
    let mask = Mask::from_bytes(&signature.mask, members)?;
    let present = mask.count();
    if present < threshold {
        return Err(VerifyError::BelowThreshold { present, threshold });
    }
    let r = decode_point(&signature.r, false).map_err(VerifyError::R)?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(signature.s)).ok_or(VerifyError::NonCanonicalS)?;
    let aggregate = roster.aggregate_of(&mask);
    let aggregate_bytes = aggregate.compress().to_bytes();
    let c = challenge(&signature.r, &aggregate_bytes, message);
    if equation_holds_cofactored(&r, &s, &c, &aggregate) {
        Ok(())
    } else {
        Err(VerifyError::Equation)
    }
}

/// `[8](sB - cX - R) == 0`.
fn equation_holds_cofactored(r: &EdwardsPoint, s: &Scalar, c: &Scalar, aggregate: &EdwardsPoint) -> bool {
    let sb_minus_cx = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-c, aggregate, s);
    (sb_minus_cx - r).mul_by_cofactor().is_identity()
}
