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
//! An approval names one chain or, usually, none: every chain a cothority serves moves to
//! the new roster on the same approvals (886k chains, one signature per operator). The
//! expiry bounds how long an approval can be used at all.

use crate::block::{ChainId, Committee};
use crate::chain::Verified;
use chainiac_cosi::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The kind of a block whose only purpose is to appoint a new committee (empty payload).
/// Timeline blocks appoint theirs in an ordinary timeline block (their entry is needed).
pub const KIND_COMMITTEE: u16 = 4;

/// Approvals are Ed25519 signatures over `tagged(TAG_APPROVAL) || committee hash ||
/// u64be(expires_ms) || scope` (scope: `00` for every chain, `01 || chain id` for one).
pub const TAG_APPROVAL: &str = "chainiac/v1/skipchain/approval";
/// An appointment's digest, by which verifiers name the appointments they hold:
/// `SHA3-256(tagged(TAG_APPOINTMENT) || encode(appointment))`.
pub const TAG_APPOINTMENT: &str = "chainiac/v1/skipchain/appointment";

/// One operator's approval of a committee as the successor of the committees its witness
/// serves in — on every chain, or on the one `chain` names — until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The witness key (a member of the outgoing committee) that signed.
    pub key: PublicKey,
    /// The approval holds for committee changes in blocks with `timestamp_ms ≤ expires_ms`.
    pub expires_ms: u64,
    /// The one chain the approval is for; `None`: every chain the operator's witness is in.
    pub chain: Option<ChainId>,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

impl Approval {
    /// The bytes an approval signs (74 for every chain, 106 for one).
    pub fn message(committee_hash: &[u8; 32], expires_ms: u64, chain: Option<&ChainId>) -> Vec<u8> {
        let mut message = Vec::with_capacity(1 + TAG_APPROVAL.len() + 73);
        message.push(TAG_APPROVAL.len() as u8);
        message.extend_from_slice(TAG_APPROVAL.as_bytes());
        message.extend_from_slice(committee_hash);
        message.extend_from_slice(&expires_ms.to_be_bytes());
        match chain {
            None => message.push(0),
            Some(chain) => {
                message.push(1);
                message.extend_from_slice(&chain.0);
            }
        }
        message
    }

    /// `key`'s approval of `committee` until `expires_ms`, on `chain` or every chain (what an
    /// operator runs offline).
    pub fn sign(key: &SecretKey, committee: &Committee, expires_ms: u64, chain: Option<ChainId>) -> Self {
        Self::sign_hash(key, &committee.hash(), expires_ms, chain)
    }

    /// [`Approval::sign`] of the committee whose hash is `committee_hash`.
    pub fn sign_hash(key: &SecretKey, committee_hash: &[u8; 32], expires_ms: u64, chain: Option<ChainId>) -> Self {
        let signature = key.sign_ed25519(&Self::message(committee_hash, expires_ms, chain.as_ref()));
        Approval { key: key.public_key(), expires_ms, chain, signature }
    }

    /// Strict RFC 8032 verification over the committee hash.
    pub fn verify(&self, committee_hash: &[u8; 32]) -> bool {
        self.key.verify_ed25519(&Self::message(committee_hash, self.expires_ms, self.chain.as_ref()), &self.signature)
    }

    /// Whether this approval counts for a change on `chain` at `at_ms`.
    fn holds(&self, chain: &ChainId, at_ms: u64) -> bool {
        self.expires_ms >= at_ms && self.chain.is_none_or(|c| c == *chain)
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
    #[error("{valid} of the outgoing committee's members approved the new committee for this chain, unexpired at {at_ms} ms ({expired} more expired or for another chain); its threshold is {threshold}")]
    TooFewApprovals { valid: usize, expired: usize, threshold: usize, at_ms: u64 },
    #[error("the new committee's epoch {epoch} does not exceed the outgoing committee's {outgoing}: appointments must raise it, so approvals cannot be replayed to bring back a committee the chain moved away from")]
    StaleEpoch { epoch: u64, outgoing: u64 },
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

/// Whether `incoming` is numbered above `outgoing` (§7.6): a committee the chain left cannot
/// be appointed again on its old approvals.
fn check_epoch(incoming: &Committee, outgoing: &Committee) -> Result<(), AuthorityError> {
    if incoming.epoch() <= outgoing.epoch() {
        return Err(AuthorityError::StaleEpoch { epoch: incoming.epoch(), outgoing: outgoing.epoch() });
    }
    Ok(())
}

impl Appointment {
    /// A genesis appointment: the committee alone.
    pub fn anchor(committee: Committee) -> Self {
        Appointment { committee, approvals: Vec::new() }
    }

    /// The digest a verifier names this appointment by when it holds it (§7.6): a prover
    /// leaves out only an appointment the verifier holds byte for byte.
    pub fn digest(&self) -> [u8; 32] {
        chainiac_cosi::hash::sha3_256(TAG_APPOINTMENT, &[&postcard::to_allocvec(self).expect("appointments serialize")])
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

    /// Checks the change from `outgoing` to this appointment's committee in a block of
    /// `chain` at `at_ms`: every approval is by a member of `outgoing` (checked before any
    /// signature, so a hostile block costs at most `n` signature checks), then
    /// [`Appointment::verify`] and [`Verified::authorizes`].
    pub fn check_change(
        &self,
        outgoing: &Committee,
        chain: &ChainId,
        at_ms: u64,
    ) -> Result<Verified<Appointment>, AuthorityError> {
        if let Some(stranger) = self.approvals.iter().find(|a| outgoing.roster().index_of(&a.key).is_none()) {
            return Err(AuthorityError::NotAMember { key: stranger.key.to_string() });
        }
        check_epoch(&self.committee, outgoing)?;
        let verified = self.verify()?;
        verified.authorizes(outgoing, chain, at_ms)?;
        Ok(verified)
    }
}

impl Verified<Appointment> {
    /// Whether at least `outgoing`'s threshold of its distinct members approved this
    /// committee for `chain` (or every chain), unexpired at `at_ms`. Approvals by other keys
    /// are not counted (a held appointment may have come with a change from another
    /// committee).
    pub fn authorizes(&self, outgoing: &Committee, chain: &ChainId, at_ms: u64) -> Result<(), AuthorityError> {
        check_epoch(&self.committee, outgoing)?;
        let members: Vec<&Approval> =
            self.approvals.iter().filter(|a| outgoing.roster().index_of(&a.key).is_some()).collect();
        let valid: HashSet<&PublicKey> = members.iter().filter(|a| a.holds(chain, at_ms)).map(|a| &a.key).collect();
        let approving: HashSet<&PublicKey> = members.iter().map(|a| &a.key).collect();
        let (valid, expired) = (valid.len(), approving.len() - valid.len());
        if valid < outgoing.threshold() {
            return Err(AuthorityError::TooFewApprovals { valid, expired, threshold: outgoing.threshold(), at_ms });
        }
        Ok(())
    }

    pub fn committee(&self) -> &Committee {
        &self.committee
    }
}

/// Appointments a verifier holds: what lets a proof leave out a committee change the
/// verifier has already checked (the same roster change recurs in every chain of a
/// cothority). Only verified appointments go in. A verifier names them by digest
/// ([`Appointment::digest`]), so a prover leaves out only what it holds byte for byte; it
/// looks them up by committee hash, where appointments of one committee (approved by
/// different outgoing committees, or for different chains) merge their approvals, each
/// already checked.
#[derive(Debug, Clone, Default)]
pub struct Appointments {
    digests: Vec<[u8; 32]>,
    named: HashSet<[u8; 32]>,
    by_hash: std::collections::HashMap<[u8; 32], Verified<Appointment>>,
}

impl Appointments {
    /// The appointment of the committee whose hash is `hash`, its approvals merged.
    pub fn get(&self, hash: &[u8; 32]) -> Option<&Verified<Appointment>> {
        self.by_hash.get(hash)
    }

    /// Whether the appointment with this digest is held, byte for byte.
    pub fn holds(&self, digest: &[u8; 32]) -> bool {
        self.named.contains(digest)
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Holds `appointment`: its digest for naming, its approvals merged into those held for
    /// its committee (for one key and scope, the later expiry is kept).
    pub fn hold(&mut self, appointment: Verified<Appointment>) {
        let digest = appointment.digest();
        if self.named.insert(digest) {
            self.digests.push(digest);
        }
        let hash = appointment.committee.hash();
        match self.by_hash.get_mut(&hash) {
            Some(held) => {
                let mut merged = held.clone().into_inner();
                for approval in &appointment.approvals {
                    match merged.approvals.iter_mut().find(|a| a.key == approval.key && a.chain == approval.chain) {
                        Some(same) if same.expires_ms < approval.expires_ms => *same = approval.clone(),
                        Some(_) => {}
                        None => merged.approvals.push(approval.clone()),
                    }
                }
                *held = Verified::new(merged);
            }
            None => {
                self.by_hash.insert(hash, appointment);
            }
        }
    }

    /// The digests to name in a request, newest first, at most `limit`.
    pub fn newest(&self, limit: usize) -> Vec<[u8; 32]> {
        self.digests.iter().rev().take(limit).copied().collect()
    }

    /// Whether the committee `to` descends from `from` through held appointments and `extra`
    /// ones, each authorized by the one before for `chain`, unexpired at `at_ms` (the earliest
    /// time the first change could have happened). Returns the hashes of every committee so
    /// reached (`to` among them; empty when `to` is `from`'s): the appointments whose
    /// authority derives from `from`, the only ones a verifier may hold from it. A linked
    /// proof does not show the blocks where its chain's committee changed, only the
    /// committee in force at its top: the verifier checks that the new committee's
    /// authority derives from the one it trusted, by approvals alone.
    pub fn lineage(
        &self,
        extra: &[Verified<Appointment>],
        from: &Committee,
        to: &[u8; 32],
        chain: &ChainId,
        at_ms: u64,
    ) -> Result<Vec<[u8; 32]>, AuthorityError> {
        let from_hash = from.hash();
        if from_hash == *to {
            return Ok(Vec::new());
        }
        let known: Vec<([u8; 32], &Verified<Appointment>)> = self
            .by_hash
            .iter()
            .map(|(hash, a)| (*hash, a))
            .chain(extra.iter().map(|a| (a.committee.hash(), a)))
            .collect();
        // Every committee reachable from `from` (a handful of rosters), breadth first.
        let mut reached: Vec<[u8; 32]> = Vec::new();
        let mut frontier = std::collections::VecDeque::from([from.clone()]);
        while let Some(current) = frontier.pop_front() {
            for (hash, next) in &known {
                if *hash == from_hash || reached.contains(hash) || next.authorizes(&current, chain, at_ms).is_err() {
                    continue;
                }
                reached.push(*hash);
                frontier.push_back(next.committee.clone());
            }
        }
        if reached.contains(to) {
            Ok(reached)
        } else {
            Err(AuthorityError::NoLineage)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockId;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// SPEC §7.6's vectors: the bytes an approval signs, for every chain and for chain
    /// 09×32, and the RFC 8032 signatures of the key with seed 01×32 over them (Ed25519 is
    /// deterministic), which verify and stop verifying when any signed field changes.
    #[test]
    fn approval_vectors() {
        const TAG: &str = "1e636861696e6961632f76312f736b6970636861696e2f617070726f76616c";
        const HASH: &str = "0707070707070707070707070707070707070707070707070707070707070707";
        let key = SecretKey::from_seed(&[1; 32]);
        assert_eq!(
            hex(key.public_key().as_bytes()),
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        );
        let cases = [
            (
                None,
                format!("{TAG}{HASH}010203040506070800"),
                "21505649bcc2732ce27b776f1a07a2f8b58a60467fc6365454ed9ba9c0df65f4\
                 22bd6f09b76b0db6baea67c111e389e88ddc4313239c644e2413b8b2fd24730d",
            ),
            (
                Some(BlockId([9; 32])),
                format!("{TAG}{HASH}010203040506070801{}", "09".repeat(32)),
                "ea04941480304bf0fe666d057d154181b524aedb42a9f675873508007b7a7468\
                 c516973f17712a23943f3ba0532c5d174c216fb203a17c5c882f9ece896dea05",
            ),
        ];
        for (chain, message, signature) in cases {
            assert_eq!(hex(&Approval::message(&[7; 32], 0x0102_0304_0506_0708, chain.as_ref())), message);
            let approval = Approval::sign_hash(&key, &[7; 32], 0x0102_0304_0506_0708, chain);
            assert_eq!(hex(&approval.signature), signature);
            assert!(approval.verify(&[7; 32]));
            assert!(!approval.verify(&[8; 32]));
            assert!(!Approval { expires_ms: 0x0102_0304_0506_0709, ..approval.clone() }.verify(&[7; 32]));
            let other_scope = if chain.is_some() { None } else { Some(BlockId([9; 32])) };
            assert!(!Approval { chain: other_scope, ..approval }.verify(&[7; 32]));
        }
    }
}
