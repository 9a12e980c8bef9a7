//! Who may change a chain's committee: the rule, in one place.
//!
//! A block that hands a chain to a new committee carries an [`Appointment`]: the new
//! committee and the [`Approval`]s of its members' operators. Each approval is an Ed25519
//! signature by a witness key over the new committee's hash and an expiry time. The change
//! is valid when at least the outgoing committee's threshold of its own members approved
//! the new committee, unexpired at the block's time, and the new committee is itself a
//! Byzantine quorum (`3·threshold > 2·members`). The outgoing committee's collective
//! signature on the block is needed as well (the chain rules check it), but that alone is
//! not enough: witnesses cosign what passes the rules, so the rule must name a decision
//! that only the operators make — the approval, signed offline with the witness key.
//!
//! Approvals do not name a chain: every chain a cothority serves moves to the new roster
//! on the same approvals (886k chains, one signature per operator). The expiry keeps an
//! old approval from being replayed after the roster moved on and back.

use crate::block::Committee;
use crate::chain::Verified;
use chainiac_cosi::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The kind of a block whose only purpose is to appoint a new committee (empty payload).
/// Timeline blocks appoint theirs in an ordinary timeline block (their entry is needed).
pub const KIND_COMMITTEE: u16 = 4;

/// Approvals are Ed25519 signatures over `tagged(TAG_APPROVAL) || committee hash ||
/// u64be(expires_ms)`.
pub const TAG_APPROVAL: &str = "chainiac/v1/skipchain/approval";

/// One operator's approval of a committee as the successor of the committees its witness
/// serves in, until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The witness key (a member of the outgoing committee) that signed.
    pub key: PublicKey,
    /// The approval holds for committee changes in blocks with `timestamp_ms ≤ expires_ms`.
    pub expires_ms: u64,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

impl Approval {
    /// The 73 bytes an approval signs.
    pub fn message(committee_hash: &[u8; 32], expires_ms: u64) -> Vec<u8> {
        let mut message = Vec::with_capacity(1 + TAG_APPROVAL.len() + 40);
        message.push(TAG_APPROVAL.len() as u8);
        message.extend_from_slice(TAG_APPROVAL.as_bytes());
        message.extend_from_slice(committee_hash);
        message.extend_from_slice(&expires_ms.to_be_bytes());
        message
    }

    /// `key`'s approval of `committee` until `expires_ms` (what an operator runs offline).
    pub fn sign(key: &SecretKey, committee: &Committee, expires_ms: u64) -> Self {
        let signature = key.sign_ed25519(&Self::message(&committee.hash(), expires_ms));
        Approval { key: key.public_key(), expires_ms, signature }
    }

    /// Strict RFC 8032 verification over the committee hash.
    pub fn verify(&self, committee_hash: &[u8; 32]) -> bool {
        self.key.verify_ed25519(&Self::message(committee_hash, self.expires_ms), &self.signature)
    }
}

/// A committee as a block or proof introduces it: the committee, and the approvals that
/// appoint it (none in a genesis, whose committee the trust anchor names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appointment {
    pub committee: Committee,
    pub approvals: Vec<Approval>,
}

/// Why a committee change is not authorized. Each variant names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the new committee's threshold {threshold} of {members} is not a Byzantine quorum (3·threshold must exceed 2·members)")]
    WeakThreshold { threshold: usize, members: usize },
    #[error("approval by {key}, which is not a member of the outgoing committee")]
    NotAMember { key: String },
    #[error("approval by {key} is listed twice")]
    Duplicate { key: String },
    #[error("approval by {key} is not a valid signature over the new committee")]
    BadSignature { key: String },
    #[error("{valid} of the outgoing committee's members approved the new committee (unexpired at {at_ms} ms; {expired} expired), its threshold is {threshold}")]
    TooFewApprovals { valid: usize, expired: usize, threshold: usize, at_ms: u64 },
    #[error("a genesis carries no approvals: its committee is the trust anchor's")]
    GenesisApprovals,
    #[error("the committee changes to {hash} but no appointment for it is carried or held")]
    Missing { hash: String },
    #[error("no chain of approved appointments leads from the trusted committee to the committee in force")]
    NoLineage,
}

/// Whether `committee` may be appointed at all: a Byzantine quorum, so that two blocks at
/// one index cannot both gather it with fewer than `n/3` faulty members.
pub fn check_quorum(committee: &Committee) -> Result<(), AuthorityError> {
    let (threshold, members) = (committee.threshold(), committee.roster().len());
    if 3 * threshold <= 2 * members {
        return Err(AuthorityError::WeakThreshold { threshold, members });
    }
    Ok(())
}

impl Appointment {
    /// A genesis appointment: the committee alone.
    pub fn anchor(committee: Committee) -> Self {
        Appointment { committee, approvals: Vec::new() }
    }

    /// Checks the approvals' own validity — a quorum committee, no key twice, every
    /// signature valid — whatever committee hands over. What a verifier holds for reuse:
    /// [`Verified::authorizes`] then only counts, per outgoing committee.
    pub fn verify(&self) -> Result<Verified<Appointment>, AuthorityError> {
        check_quorum(&self.committee)?;
        let hash = self.committee.hash();
        let mut seen = HashSet::with_capacity(self.approvals.len());
        for approval in &self.approvals {
            if !seen.insert(approval.key) {
                return Err(AuthorityError::Duplicate { key: approval.key.to_string() });
            }
        }
        for approval in &self.approvals {
            if !approval.verify(&hash) {
                return Err(AuthorityError::BadSignature { key: approval.key.to_string() });
            }
        }
        Ok(Verified::new(self.clone()))
    }

    /// Checks the change from `outgoing` to this appointment's committee in a block at
    /// `at_ms`: every approval is by a member of `outgoing` (checked before any signature,
    /// so a hostile block costs at most `n` signature checks), then [`Appointment::verify`]
    /// and [`Verified::authorizes`].
    pub fn check_change(&self, outgoing: &Committee, at_ms: u64) -> Result<Verified<Appointment>, AuthorityError> {
        if let Some(stranger) = self.approvals.iter().find(|a| outgoing.roster().index_of(&a.key).is_none()) {
            return Err(AuthorityError::NotAMember { key: stranger.key.to_string() });
        }
        let verified = self.verify()?;
        verified.authorizes(outgoing, at_ms)?;
        Ok(verified)
    }
}

impl Verified<Appointment> {
    /// Whether at least `outgoing`'s threshold of its members approved this committee,
    /// unexpired at `at_ms`. Approvals by other keys are not counted (a held appointment
    /// may have come with a change from another committee).
    pub fn authorizes(&self, outgoing: &Committee, at_ms: u64) -> Result<(), AuthorityError> {
        let members = self.approvals.iter().filter(|a| outgoing.roster().index_of(&a.key).is_some());
        let (mut valid, mut expired) = (0, 0);
        for approval in members {
            if approval.expires_ms >= at_ms {
                valid += 1;
            } else {
                expired += 1;
            }
        }
        if valid < outgoing.threshold() {
            return Err(AuthorityError::TooFewApprovals { valid, expired, threshold: outgoing.threshold(), at_ms });
        }
        Ok(())
    }

    pub fn committee(&self) -> &Committee {
        &self.committee
    }
}

/// Appointments a verifier holds, by committee hash, in the order it learned them: what
/// lets a proof leave out a committee change the verifier has already checked (the same
/// roster change recurs in every chain of a cothority). Only verified appointments go in;
/// two appointments of one committee (approved by different outgoing committees) merge
/// their approvals, each already checked.
#[derive(Debug, Clone, Default)]
pub struct Appointments {
    order: Vec<[u8; 32]>,
    by_hash: std::collections::HashMap<[u8; 32], Verified<Appointment>>,
}

impl Appointments {
    pub fn get(&self, hash: &[u8; 32]) -> Option<&Verified<Appointment>> {
        self.by_hash.get(hash)
    }

    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.by_hash.contains_key(hash)
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Holds `appointment` (merging its approvals into a held one of the same committee).
    pub fn hold(&mut self, appointment: Verified<Appointment>) {
        let hash = appointment.committee.hash();
        match self.by_hash.get_mut(&hash) {
            Some(held) => {
                let mut merged = held.clone().into_inner();
                for approval in &appointment.approvals {
                    if !merged.approvals.iter().any(|a| a.key == approval.key) {
                        merged.approvals.push(approval.clone());
                    }
                }
                *held = Verified::new(merged);
            }
            None => {
                self.order.push(hash);
                self.by_hash.insert(hash, appointment);
            }
        }
    }

    /// The hashes to name in a request, newest first, at most `limit`.
    pub fn newest(&self, limit: usize) -> Vec<[u8; 32]> {
        self.order.iter().rev().take(limit).copied().collect()
    }

    /// Whether the committee `to` descends from `from` through held appointments and
    /// `extra` ones, each authorized by the one before, unexpired at `at_ms` (the earliest
    /// time the first change could have happened). A linked proof does not show the blocks
    /// where its chain's committee changed, only the committee in force at its top: the
    /// verifier checks that the new committee's authority derives from the one it trusted,
    /// by approvals alone.
    pub fn lineage(
        &self,
        extra: &[Verified<Appointment>],
        from: &Committee,
        to: &[u8; 32],
        at_ms: u64,
    ) -> Result<(), AuthorityError> {
        let from_hash = from.hash();
        if from_hash == *to {
            return Ok(());
        }
        let known: Vec<([u8; 32], &Verified<Appointment>)> = self
            .by_hash
            .iter()
            .map(|(hash, a)| (*hash, a))
            .chain(extra.iter().map(|a| (a.committee.hash(), a)))
            .collect();
        // Breadth first over the known committees: a handful of rosters.
        let mut frontier = vec![from.clone()];
        let mut visited: HashSet<[u8; 32]> = HashSet::from([from_hash]);
        while let Some(current) = frontier.pop() {
            for (hash, next) in &known {
                if visited.contains(hash) || next.authorizes(&current, at_ms).is_err() {
                    continue;
                }
                if hash == to {
                    return Ok(());
                }
                visited.insert(*hash);
                frontier.push(next.committee.clone());
            }
        }
        Err(AuthorityError::NoLineage)
    }
}
