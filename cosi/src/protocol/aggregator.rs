//! An inner node of the tree: sums its subtree's commitments and responses, and checks
//! the responses before passing them up.

use super::{Challenge, Commitment, Derived, Fault, FaultKind, ProtocolError, Response, Session, Tree};
use crate::keys::decode_point;
use crate::mask::{Mask, WireMask};
use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};

/// One contributor to this node: the node itself (part 0) or a direct child's subtree.
struct Part {
    member: usize,
    subtree: Mask,
    commitment: Option<PartCommitment>,
    response: Option<Scalar>,
}

struct PartCommitment {
    mask: Mask,
    r1: EdwardsPoint,
    r2: EdwardsPoint,
}

enum Phase {
    Commitment,
    AwaitChallenge { mask: Mask, r1: EdwardsPoint, r2: EdwardsPoint },
    Response { derived: Derived, mask: Mask, r1: EdwardsPoint, r2: EdwardsPoint },
    Done,
}

/// The aggregation state of one inner node (or the leader) for one session.
///
/// Inputs from children are checked before they change anything: a refused input returns
/// an error and leaves the state as it was. A child that answers wrongly is recorded as a
/// [`Fault`] and reported up instead of a signature.
pub struct Aggregator {
    session: Session,
    member: usize,
    subtree: Mask,
    parts: Vec<Part>,
    unreachable: Vec<u32>,
    faults: Vec<Fault>,
    phase: Phase,
}

impl Aggregator {
    /// The aggregator of `member` in `tree` for `session`. Its own commitment and response
    /// come in through [`Aggregator::receive_commitment`] and
    /// [`Aggregator::receive_response`] like a child's, with `from = member`.
    pub fn new(session: Session, tree: &Tree, member: usize) -> Self {
        let mut own = Mask::empty(tree.roster_len());
        if member < tree.roster_len() {
            own.insert(member);
        }
        let mut parts = vec![Part { member, subtree: own, commitment: None, response: None }];
        for child in tree.children(member) {
            parts.push(Part { member: child, subtree: tree.subtree(child), commitment: None, response: None });
        }
        Aggregator {
            session,
            member,
            subtree: tree.subtree(member),
            parts,
            unreachable: Vec::new(),
            faults: Vec::new(),
            phase: Phase::Commitment,
        }
    }

    pub fn member(&self) -> usize {
        self.member
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    fn part_mut(&mut self, from: usize) -> Result<&mut Part, ProtocolError> {
        let me = self.member;
        self.parts.iter_mut().find(|p| p.member == from).ok_or(ProtocolError::NotAChild { from, me })
    }

    /// Takes the commitment of `from` (this node itself or a direct child).
    pub fn receive_commitment(&mut self, from: usize, commitment: &Commitment) -> Result<(), ProtocolError> {
        if !matches!(self.phase, Phase::Commitment) {
            return Err(ProtocolError::WrongPhase { what: "a commitment" });
        }
        let members = self.session.roster().len();
        let part = self.part_mut(from)?;
        if part.commitment.is_some() {
            return Err(ProtocolError::Duplicate { from, what: "commitment" });
        }
        let mask = commitment.mask.clone().into_mask(members).map_err(|error| ProtocolError::Mask { from, error })?;
        if !mask.is_subset(&part.subtree) {
            return Err(ProtocolError::MaskOutsideSubtree { from });
        }
        if !mask.contains(from) {
            return Err(ProtocolError::CommitterMissing { from });
        }
        for &u in &commitment.unreachable {
            let u = u as usize;
            if !part.subtree.contains(u) || mask.contains(u) {
                return Err(ProtocolError::MaskOutsideSubtree { from });
            }
        }
        let r1 = decode_point(&commitment.r1, false).map_err(|error| ProtocolError::Point { from, error })?;
        let r2 = decode_point(&commitment.r2, false).map_err(|error| ProtocolError::Point { from, error })?;
        part.commitment = Some(PartCommitment { mask, r1, r2 });
        self.unreachable.extend_from_slice(&commitment.unreachable);
        Ok(())
    }

    /// The direct children (and possibly this node) whose commitment has not arrived.
    pub fn awaiting_commitments(&self) -> Vec<usize> {
        self.parts.iter().filter(|p| p.commitment.is_none()).map(|p| p.member).collect()
    }

    /// Closes the commitment phase, now or at the caller's timeout: sums what arrived and
    /// marks every part that did not as unreachable. `None` when nothing arrived at all.
    pub fn commitment(&mut self) -> Option<Commitment> {
        if !matches!(self.phase, Phase::Commitment) {
            return None;
        }
        let members = self.session.roster().len();
        let mut mask = Mask::empty(members);
        let mut r1 = EdwardsPoint::default();
        let mut r2 = EdwardsPoint::default();
        for part in &self.parts {
            match &part.commitment {
                Some(c) => {
                    mask.union_with(&c.mask);
                    r1 += c.r1;
                    r2 += c.r2;
                }
                None => self.unreachable.push(part.member as u32),
            }
        }
        self.unreachable.sort_unstable();
        self.unreachable.dedup();
        if mask.count() == 0 {
            self.phase = Phase::Done;
            return None;
        }
        let commitment = Commitment {
            mask: WireMask::from(&mask),
            r1: r1.compress().to_bytes(),
            r2: r2.compress().to_bytes(),
            unreachable: self.unreachable.clone(),
        };
        self.phase = Phase::AwaitChallenge { mask, r1, r2 };
        Some(commitment)
    }

    /// Members reported unreachable in this subtree so far.
    pub fn unreachable(&self) -> &[u32] {
        &self.unreachable
    }

    /// Takes the challenge from the parent (or, at the leader, from itself), to be passed
    /// on to every child that committed. Refuses one whose mask does not agree with what
    /// this subtree committed.
    pub fn receive_challenge(&mut self, challenge: &Challenge) -> Result<(), ProtocolError> {
        let Phase::AwaitChallenge { mask, r1, r2 } = &self.phase else {
            return Err(ProtocolError::WrongPhase { what: "a challenge" });
        };
        let derived = Derived::new(&self.session, challenge, self.member)?;
        if derived.mask.intersection(&self.subtree) != *mask {
            return Err(ProtocolError::ChallengeMismatch);
        }
        let (mask, r1, r2) = (mask.clone(), *r1, *r2);
        self.phase = Phase::Response { derived, mask, r1, r2 };
        Ok(())
    }

    /// The members (this node and direct children) that committed, so must respond.
    pub fn expected_responders(&self) -> Vec<usize> {
        self.parts.iter().filter(|p| p.commitment.is_some()).map(|p| p.member).collect()
    }

    /// Takes the response of `from`. A malformed one or one that blames members outside
    /// `from`'s subtree is recorded as `from`'s fault.
    pub fn receive_response(&mut self, from: usize, response: &Response) -> Result<(), ProtocolError> {
        if !matches!(self.phase, Phase::Response { .. }) {
            return Err(ProtocolError::WrongPhase { what: "a response" });
        }
        let part = self.part_mut(from)?;
        let Some(commitment) = &part.commitment else {
            return Err(ProtocolError::WrongPhase { what: "a response from a member that did not commit" });
        };
        if part.response.is_some() {
            return Err(ProtocolError::Duplicate { from, what: "response" });
        }
        let blame_sender = Fault { member: from as u32, kind: FaultKind::Malformed };
        match response {
            Response::Signed { s } => match Option::<Scalar>::from(Scalar::from_canonical_bytes(*s)) {
                Some(s) => part.response = Some(s),
                None => {
                    part.response = Some(Scalar::ZERO);
                    self.faults.push(blame_sender);
                }
            },
            Response::Failed { faults } => {
                part.response = Some(Scalar::ZERO);
                let credible = !faults.is_empty() && faults.iter().all(|f| commitment.mask.contains(f.member as usize));
                if credible {
                    self.faults.extend_from_slice(faults);
                } else {
                    self.faults.push(blame_sender);
                }
            }
        }
        Ok(())
    }

    /// Closes the response phase, now or at the caller's timeout. Parts that committed and
    /// did not respond are blamed. The subtree's sum is checked against its commitment; if it
    /// is wrong, each part is checked to name the culprit.
    pub fn response(&mut self) -> Response {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let Phase::Response { derived, mask, r1, r2 } = phase else {
            self.phase = phase;
            return Response::Failed {
                faults: vec![Fault { member: self.member as u32, kind: FaultKind::NoResponse }],
            };
        };
        let mut faults = std::mem::take(&mut self.faults);
        for part in &self.parts {
            if part.commitment.is_some() && part.response.is_none() {
                faults.push(Fault { member: part.member as u32, kind: FaultKind::NoResponse });
            }
        }
        if faults.is_empty() {
            let s: Scalar = self.parts.iter().filter_map(|p| p.response).sum();
            if self.check(&derived, s, &mask, &r1, &r2) {
                return Response::Signed { s: s.to_bytes() };
            }
            for part in &self.parts {
                let (Some(c), Some(s)) = (&part.commitment, part.response) else { continue };
                if !self.check(&derived, s, &c.mask, &c.r1, &c.r2) {
                    faults.push(Fault { member: part.member as u32, kind: FaultKind::WrongResponse });
                }
            }
        }
        faults.sort_unstable_by_key(|f| f.member);
        faults.dedup_by_key(|f| f.member);
        Response::Failed { faults }
    }

    /// `s·B == R1 + b·R2 + c·X` exactly, with `X` the keys in `mask`.
    fn check(&self, derived: &Derived, s: Scalar, mask: &Mask, r1: &EdwardsPoint, r2: &EdwardsPoint) -> bool {
        let x = self.session.roster().aggregate_of(mask);
        let lhs_minus =
            EdwardsPoint::vartime_multiscalar_mul([s, -derived.c, -derived.b], [ED25519_BASEPOINT_POINT, x, *r2]);
        (lhs_minus - r1).is_identity()
    }
}
