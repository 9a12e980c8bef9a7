//! The root of the tree: closes the commitment phase, issues the challenge, and turns the
//! final response into a signature.

use super::{Aggregator, Challenge, Derived, Fault, ProtocolError, Response, Session, Tree};
use crate::mask::{Mask, WireMask};
use crate::signature::Signature;

/// Why a round produced no signature. The leader may restart with the members named here
/// excluded (with fresh nonces and a fresh session id: nonces are never reused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoundError {
    #[error("threshold {threshold} is impossible for a roster of {members}")]
    InvalidThreshold { threshold: usize, members: usize },
    #[error("only {present} members committed, the threshold is {threshold} ({} unreachable)", unreachable.len())]
    BelowThreshold { present: usize, threshold: usize, unreachable: Vec<u32> },
    #[error("members failed after committing: {}", faults.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", "))]
    Faults { faults: Vec<Fault> },
    #[error("round out of order: {0}")]
    Protocol(#[from] ProtocolError),
}

/// The leader's state for one attempt.
pub struct Leader {
    aggregator: Aggregator,
    threshold: usize,
    challenge: Option<Challenge>,
}

impl Leader {
    /// A round for `session` over `tree` (whose root is the leader), succeeding only with at
    /// least `threshold` signers.
    pub fn new(session: Session, tree: &Tree, threshold: usize) -> Result<Self, RoundError> {
        let members = session.roster().len();
        if threshold == 0 || threshold > members {
            return Err(RoundError::InvalidThreshold { threshold, members });
        }
        Ok(Leader { aggregator: Aggregator::new(session, tree, tree.leader()), threshold, challenge: None })
    }

    /// The leader's own aggregation state: commitments and responses of its children (and
    /// its own) go in here.
    pub fn aggregator(&mut self) -> &mut Aggregator {
        &mut self.aggregator
    }

    /// Ends the commitment phase and returns the challenge to send to every child that
    /// committed. Fails if fewer than the threshold committed.
    pub fn challenge(&mut self) -> Result<Challenge, RoundError> {
        if let Some(challenge) = &self.challenge {
            return Ok(challenge.clone());
        }
        let members = self.aggregator.session().roster().len();
        let Some(commitment) = self.aggregator.commitment() else {
            return Err(RoundError::BelowThreshold {
                present: 0,
                threshold: self.threshold,
                unreachable: self.aggregator.unreachable().to_vec(),
            });
        };
        let present = Mask::from_bytes(&commitment.mask.0, members)
            .map_err(|error| ProtocolError::Mask { from: self.aggregator.member(), error })?
            .count();
        if present < self.threshold {
            return Err(RoundError::BelowThreshold {
                present,
                threshold: self.threshold,
                unreachable: commitment.unreachable,
            });
        }
        let challenge = Challenge {
            session: self.aggregator.session().id(),
            mask: WireMask(commitment.mask.0),
            r1: commitment.r1,
            r2: commitment.r2,
        };
        self.aggregator.receive_challenge(&challenge)?;
        self.challenge = Some(challenge.clone());
        Ok(challenge)
    }

    /// Members that did not commit in time, in this attempt.
    pub fn unreachable(&self) -> &[u32] {
        self.aggregator.unreachable()
    }

    /// Ends the response phase. On success the signature verifies under the roster with the
    /// mask it carries (the leader's aggregator has checked the full sum exactly).
    pub fn finish(&mut self) -> Result<Signature, RoundError> {
        let challenge =
            self.challenge.clone().ok_or(ProtocolError::WrongPhase { what: "finish before the challenge" })?;
        match self.aggregator.response() {
            Response::Failed { faults } => Err(RoundError::Faults { faults }),
            Response::Signed { s } => {
                let session = self.aggregator.session();
                let derived = Derived::new(session, &challenge, self.aggregator.member())?;
                Ok(Signature { r: derived.r.to_bytes(), s, mask: challenge.mask.0 })
            }
        }
    }
}
