//! The collective-signing protocol as sans-IO state machines.
//!
//! A round has two phases over a [`Tree`] rooted at the leader:
//!
//! 1. **Commitment.** Every signer draws two fresh secret nonces `r1, r2` and sends
//!    `R1 = r1·B, R2 = r2·B` ([`signer::commit`]). Each [`Aggregator`] sums what its subtree
//!    sent and passes up one [`Commitment`] with the mask of who committed.
//! 2. **Response.** The [`Leader`] fixes the mask and the aggregate nonces and sends a
//!    [`Challenge`] down. Every signer computes, itself, `X` (keys in the mask),
//!    `b = H(X, R1, R2, mask, M)`, `R = R1 + b·R2`, `c = SHA-512(R || X || M)` and answers
//!    `s_i = r1 + b·r2 + c·x_i`. Aggregators check their subtree's sum and, when it is wrong,
//!    each child, so a bad child is named ([`Fault`]) and the leader restarts without it.
//!
//! Nothing here reads a clock, a socket or a disk: the caller moves messages and decides
//! timeouts (an aggregator whose children are late is asked for its commitment anyway, and
//! marks them unreachable). [`crate::simulation`] drives a whole cothority in one process.

pub mod aggregator;
pub mod leader;
pub mod signer;
pub mod tree;

pub use aggregator::Aggregator;
pub use leader::{Leader, RoundError};
pub use signer::{commit, SignerNonces};
pub use tree::Tree;

use crate::hash::{self, TAG_NONCE_BINDING, TAG_SESSION};
use crate::keys::{decode_point, PointError};
use crate::mask::{Mask, MaskError, WireMask};
use crate::roster::Roster;
use crate::signature;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::sync::Arc;

/// Identifies one signing attempt. The leader draws a fresh one for every attempt, and a
/// signer's nonces are bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 32]);

/// What a round signs and who signs it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Session {
    roster: Arc<Roster>,
    id: SessionId,
    message: Arc<[u8]>,
    binding: [u8; 32],
}

impl Session {
    pub fn new(roster: Arc<Roster>, id: SessionId, message: impl Into<Arc<[u8]>>) -> Self {
        let message: Arc<[u8]> = message.into();
        let binding =
            hash::sha3_256(TAG_SESSION, &[&roster.hash(), &id.0, &(message.len() as u64).to_le_bytes(), &message]);
        Session { roster, id, message, binding }
    }

    pub fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// SHA3-256 over the roster hash, session id and message: what nonces are bound to.
    pub fn binding(&self) -> [u8; 32] {
        self.binding
    }
}

/// A subtree's nonce commitment, sent from child to parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    /// The members of the subtree that committed.
    pub mask: WireMask,
    /// Sum of their first nonce points.
    #[serde(with = "crate::bytes")]
    pub r1: [u8; 32],
    /// Sum of their second nonce points.
    #[serde(with = "crate::bytes")]
    pub r2: [u8; 32],
    /// Members of the subtree that did not answer in time (an absent inner node takes its
    /// whole subtree with it; the leader may restart without it).
    pub unreachable: Vec<u32>,
}

/// The leader's challenge, sent down the tree to everyone who committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub session: SessionId,
    /// Every member whose nonces are in `r1` and `r2`.
    pub mask: WireMask,
    #[serde(with = "crate::bytes")]
    pub r1: [u8; 32],
    #[serde(with = "crate::bytes")]
    pub r2: [u8; 32],
}

/// A subtree's answer to the challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The sum of the subtree's partial signatures.
    Signed {
        #[serde(with = "crate::bytes")]
        s: [u8; 32],
    },
    /// The subtree cannot sign; these members are to blame.
    Failed { faults: Vec<Fault> },
}

/// A member that broke a round, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fault {
    pub member: u32,
    pub kind: FaultKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// Committed, then sent no response in time.
    NoResponse,
    /// Sent a partial signature that does not match its commitment.
    WrongResponse,
    /// Sent a message that does not decode or breaks the protocol.
    Malformed,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            FaultKind::NoResponse => "sent no response",
            FaultKind::WrongResponse => "sent a wrong partial signature",
            FaultKind::Malformed => "sent a malformed message",
        };
        write!(f, "member {} {what}", self.member)
    }
}

/// Why a state machine refused an input. The input is dropped; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message is for session {got:02x?}, this round is {expected:02x?}")]
    WrongSession { got: [u8; 4], expected: [u8; 4] },
    #[error("member {member} is not a member of the roster")]
    UnknownMember { member: usize },
    #[error("the secret key is not the key of roster member {member}")]
    WrongKey { member: usize },
    #[error("member {from} is not a child of member {me} in this tree")]
    NotAChild { from: usize, me: usize },
    #[error("member {from} already sent its {what}")]
    Duplicate { from: usize, what: &'static str },
    #[error("{what} arrived in the wrong phase of the round")]
    WrongPhase { what: &'static str },
    #[error("mask from member {from}: {error}")]
    Mask { from: usize, error: MaskError },
    #[error("commitment from member {from} claims members outside its subtree")]
    MaskOutsideSubtree { from: usize },
    #[error("commitment from member {from} does not include that member itself")]
    CommitterMissing { from: usize },
    #[error("nonce point from member {from}: {error}")]
    Point { from: usize, error: PointError },
    #[error("the challenge's mask does not match what this subtree committed")]
    ChallengeMismatch,
    #[error("this signer is not in the challenge's mask")]
    NotInMask,
    #[error("nonces were made for another session; they are destroyed unused")]
    NoncesForAnotherSession,
}

/// The values every participant derives from a challenge, each for itself.
pub(crate) struct Derived {
    pub mask: Mask,
    /// Nonce-binding coefficient `b`.
    pub b: Scalar,
    /// `R = R1 + b·R2`, compressed.
    pub r: CompressedEdwardsY,
    /// Ed25519 challenge `c`.
    pub c: Scalar,
}

impl Derived {
    /// Decodes a challenge for `session` and derives `b`, `R` and `c`. `from` names the
    /// sender in errors.
    pub(crate) fn new(session: &Session, challenge: &Challenge, from: usize) -> Result<Self, ProtocolError> {
        if challenge.session != session.id {
            return Err(ProtocolError::WrongSession {
                got: challenge.session.0[..4].try_into().expect("4 bytes"),
                expected: session.id.0[..4].try_into().expect("4 bytes"),
            });
        }
        let roster = &session.roster;
        let mask =
            Mask::from_bytes(&challenge.mask.0, roster.len()).map_err(|error| ProtocolError::Mask { from, error })?;
        let r1 = decode_point(&challenge.r1, false).map_err(|error| ProtocolError::Point { from, error })?;
        let r2 = decode_point(&challenge.r2, false).map_err(|error| ProtocolError::Point { from, error })?;
        let aggregate = roster.aggregate_of(&mask).compress().to_bytes();
        let b = binding_coefficient(&aggregate, &challenge.r1, &challenge.r2, mask.as_bytes(), &session.message);
        let r = (r1 + b * r2).compress();
        let c = signature::challenge(r.as_bytes(), &aggregate, &session.message);
        Ok(Derived { mask, b, r, c })
    }
}

/// `b = SHA-512(tagged("chainiac/v1/cosi/binding") || X || R1 || R2 || u32le(len(mask)) ||
/// mask || M) mod l`. Binding both aggregate nonces, the key, the signers and the message
/// into `b` is what makes `R` unpredictable until every nonce is fixed (see SPEC.md).
pub(crate) fn binding_coefficient(
    aggregate: &[u8; 32],
    r1: &[u8; 32],
    r2: &[u8; 32],
    mask: &[u8],
    message: &[u8],
) -> Scalar {
    let mut hasher = hash::sha512_tagged(TAG_NONCE_BINDING);
    hasher.update(aggregate);
    hasher.update(r1);
    hasher.update(r2);
    hasher.update((mask.len() as u32).to_le_bytes());
    hasher.update(mask);
    hasher.update(message);
    Scalar::from_hash(hasher)
}
