//! One member's part in a round: draw nonces, then answer one challenge with them.

use super::{Challenge, Commitment, Derived, ProtocolError, Response, Session};
use crate::hash::{self, TAG_NONCE};
use crate::keys::SecretKey;
use crate::mask::{Mask, WireMask};
use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRngCore;
use sha2::Digest;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A signer's secret nonces for one session.
///
/// Invariant: used at most once. Not `Clone`; [`SignerNonces::respond`] takes `self`, and the
/// scalars are zeroized on drop, whether they were used or not. A witness keeps them in
/// memory only: after a restart they are gone, and the round starts over with new ones.
pub struct SignerNonces {
    binding: [u8; 32],
    member: usize,
    r1: Scalar,
    r2: Scalar,
}

impl Drop for SignerNonces {
    fn drop(&mut self) {
        self.r1.zeroize();
        self.r2.zeroize();
    }
}
impl ZeroizeOnDrop for SignerNonces {}

/// Draws fresh nonces for roster member `member` in `session` and returns them with the
/// commitment to send to the parent.
///
/// The nonces are `SHA-512(tagged(nonce) || j || prefix || 32 random bytes || session binding)`
/// for `j = 1, 2`: randomness makes them fresh, and the secret prefix and the binding
/// keep a weak RNG from repeating a nonce across keys or sessions.
pub fn commit(
    session: &Session,
    member: usize,
    key: &SecretKey,
    rng: &mut impl CryptoRngCore,
) -> Result<(SignerNonces, Commitment), ProtocolError> {
    let roster = session.roster();
    let entry = roster.member(member).ok_or(ProtocolError::UnknownMember { member })?;
    if entry.key != key.public_key() {
        return Err(ProtocolError::WrongKey { member });
    }
    let mut randomness = [0u8; 32];
    rng.fill_bytes(&mut randomness);
    let mut prefix = key.nonce_prefix();
    let derive = |j: u8| {
        let mut hasher = hash::sha512_tagged(TAG_NONCE);
        hasher.update([j]);
        hasher.update(prefix);
        hasher.update(randomness);
        hasher.update(session.binding());
        Scalar::from_hash(hasher)
    };
    let nonces = SignerNonces { binding: session.binding(), member, r1: derive(1), r2: derive(2) };
    randomness.zeroize();
    prefix.zeroize();
    let mut mask = Mask::empty(roster.len());
    mask.insert(member);
    let commitment = Commitment {
        mask: WireMask::from(&mask),
        r1: (&nonces.r1 * ED25519_BASEPOINT_TABLE).compress().to_bytes(),
        r2: (&nonces.r2 * ED25519_BASEPOINT_TABLE).compress().to_bytes(),
        unreachable: Vec::new(),
    };
    Ok((nonces, commitment))
}

impl SignerNonces {
    /// The member these nonces belong to.
    pub fn member(&self) -> usize {
        self.member
    }

    /// Answers `challenge` with `s = r1 + b·r2 + c·x`, deriving `b` and `c` from the
    /// challenge itself. Consumes the nonces: whatever happens, they are never used again.
    pub fn respond(self, session: &Session, key: &SecretKey, challenge: &Challenge) -> Result<Response, ProtocolError> {
        if session.binding() != self.binding {
            return Err(ProtocolError::NoncesForAnotherSession);
        }
        if session.roster().member(self.member).map(|m| m.key) != Some(key.public_key()) {
            return Err(ProtocolError::WrongKey { member: self.member });
        }
        let derived = Derived::new(session, challenge, self.member)?;
        if !derived.mask.contains(self.member) {
            return Err(ProtocolError::NotInMask);
        }
        let s = self.r1 + derived.b * self.r2 + derived.c * key.scalar();
        Ok(Response::Signed { s: s.to_bytes() })
    }
}
