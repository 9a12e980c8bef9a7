//! Blocks, their identifiers, and the arithmetic of heights and links.

use crate::authority::Appointment;
use chainiac_cosi::hash;
use chainiac_cosi::{Roster, Signature, VerifyError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Block ids are `SHA3-256(tagged(TAG_BLOCK) || encode(header))`.
pub const TAG_BLOCK: &str = "chainiac/v1/skipchain/block";
/// Committee hashes are `SHA3-256(tagged(TAG_COMMITTEE) || encode(committee))`.
pub const TAG_COMMITTEE: &str = "chainiac/v1/skipchain/committee";
/// Policy hashes are `SHA3-256(tagged(TAG_POLICY) || policy bytes)`.
pub const TAG_POLICY: &str = "chainiac/v1/skipchain/policy";
/// Payload hashes are `SHA3-256(tagged(TAG_PAYLOAD) || payload bytes)`.
pub const TAG_PAYLOAD: &str = "chainiac/v1/skipchain/payload";

/// The 32-byte identifier of a block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockId(pub [u8; 32]);

/// A chain is named by the id of its genesis block.
pub type ChainId = BlockId;

impl BlockId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(BlockId(out))
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The shape of a chain, fixed in its genesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainParams {
    /// Skip base `b`: the back link at level `l` of block `j` points to `j - b^l`.
    pub base: u8,
    /// Maximum height `h`: blocks have at most `h` back links; the genesis has height `h`.
    pub max_height: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("skip base {0} is outside 2..=16")]
    Base(u8),
    #[error("maximum height {max_height} is outside 1..=64 or base^(height-1) overflows 64 bits")]
    MaxHeight { max_height: u8 },
}

impl ChainParams {
    /// The shape `chainiac` gives the chains it creates (projects and timelines): base 2,
    /// and heights up to 32 so links never stop growing within 2^31 blocks. Of bases 2, 4,
    /// 8 and 16, base 2 gave the smallest catch-up proofs on PyPI-like release histories
    /// (bench scenario 1: lower blocks carry fewer links, and a hop's header is its cost).
    pub const DEFAULT: ChainParams = ChainParams { base: 2, max_height: 32 };

    pub fn new(base: u8, max_height: u8) -> Result<Self, ParamsError> {
        let params = ChainParams { base, max_height };
        params.check()?;
        Ok(params)
    }

    pub(crate) fn check(&self) -> Result<(), ParamsError> {
        if !(2..=16).contains(&self.base) {
            return Err(ParamsError::Base(self.base));
        }
        if self.max_height == 0
            || self.max_height > 64
            || (self.base as u64).checked_pow(self.max_height as u32 - 1).is_none()
        {
            return Err(ParamsError::MaxHeight { max_height: self.max_height });
        }
        Ok(())
    }

    /// `height(0) = h`; `height(i) = min(h, 1 + how many times b divides i)`.
    pub fn height(&self, index: u64) -> u8 {
        if index == 0 {
            return self.max_height;
        }
        let b = self.base as u64;
        let mut height = 1u8;
        let mut rest = index;
        while height < self.max_height && rest % b == 0 {
            rest /= b;
            height += 1;
        }
        height
    }

    /// `b^level`, the distance a link at `level` spans.
    pub fn span(&self, level: u8) -> u64 {
        (self.base as u64).pow(level as u32)
    }

    /// The level of the link from `to` back to `from`, if `to` has one.
    pub fn link_level(&self, from: u64, to: u64) -> Option<u8> {
        let distance = to.checked_sub(from)?;
        (0..self.height(to)).find(|&level| self.span(level) == distance)
    }

    /// The index `to` that the highest forward link from `from` reaches without passing
    /// `limit`. `None` if `from >= limit`.
    pub fn highest_step(&self, from: u64, limit: u64) -> Option<u64> {
        if from >= limit {
            return None;
        }
        // A block j has a back link at level l iff b^l divides j, so from `from` the links
        // at level l exist iff b^l divides `from` (the genesis links at every level).
        let mut best = from + 1;
        for level in 1..self.max_height {
            let span = self.span(level);
            if from % span != 0 || from.checked_add(span).is_none_or(|to| to > limit) {
                break;
            }
            best = from + span;
        }
        Some(best)
    }

    /// The index the highest back link from `from` reaches without going below `limit`.
    pub fn highest_back_step(&self, from: u64, limit: u64) -> Option<u64> {
        if from <= limit {
            return None;
        }
        let mut best = from - 1;
        for level in 1..self.height(from) {
            let span = self.span(level);
            if span > from - limit {
                break;
            }
            best = from - span;
        }
        Some(best)
    }
}

/// The witnesses that sign a chain's next block, and how many of them must.
///
/// Invariant: `1 <= threshold <= roster.len()` (checked by [`Committee::new`] and on decode).
///
/// `epoch` numbers the committee among its chain's committees: an appointment must raise it
/// (§7.6), so approvals of a committee that once took office cannot appoint it again after
/// the chain moved on, even with the same roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CommitteeFields", into = "CommitteeFields")]
pub struct Committee {
    roster: Roster,
    threshold: u32,
    epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct CommitteeFields {
    roster: Roster,
    threshold: u32,
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("threshold {threshold} is impossible for a roster of {members} (need 1..={members})")]
pub struct ThresholdError {
    pub threshold: u32,
    pub members: usize,
}

impl Committee {
    pub fn new(roster: Roster, threshold: u32) -> Result<Self, ThresholdError> {
        if threshold == 0 || threshold as usize > roster.len() {
            return Err(ThresholdError { threshold, members: roster.len() });
        }
        Ok(Committee { roster, threshold, epoch: 0 })
    }

    /// The same committee numbered `epoch` (new committees start at 0; a successor must be
    /// numbered above the committee it takes over from).
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// A committee that tolerates `f` faulty members out of `n = 3f + 1 + r`: threshold
    /// `n - f`, the usual Byzantine quorum.
    pub fn byzantine(roster: Roster) -> Self {
        let n = roster.len() as u32;
        let threshold = n - (n - 1) / 3;
        Committee { roster, threshold, epoch: 0 }
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn threshold(&self) -> usize {
        self.threshold as usize
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn hash(&self) -> [u8; 32] {
        hash::sha3_256(TAG_COMMITTEE, &[&postcard::to_allocvec(self).expect("committees serialize")])
    }
}

impl TryFrom<CommitteeFields> for Committee {
    type Error = ThresholdError;
    fn try_from(fields: CommitteeFields) -> Result<Self, ThresholdError> {
        Ok(Committee::new(fields.roster, fields.threshold)?.with_epoch(fields.epoch))
    }
}

impl From<Committee> for CommitteeFields {
    fn from(c: Committee) -> Self {
        CommitteeFields { roster: c.roster, threshold: c.threshold, epoch: c.epoch }
    }
}

pub fn policy_hash(policy: &[u8]) -> [u8; 32] {
    hash::sha3_256(TAG_POLICY, &[policy])
}

pub fn payload_hash(payload: &[u8]) -> [u8; 32] {
    hash::sha3_256(TAG_PAYLOAD, &[payload])
}

/// The hashed part of a block. Everything a signature covers is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The genesis id; `None` in the genesis itself.
    pub chain: Option<ChainId>,
    pub index: u64,
    /// Always `params.height(index)`.
    pub height: u8,
    /// `back_links[l]` is the id of block `index - b^l`; exactly `height` of them, none in
    /// the genesis.
    pub back_links: Vec<BlockId>,
    /// The chain's shape; `Some` in the genesis only.
    pub params: Option<ChainParams>,
    /// What the payload is, for the layer above (releases, policy changes, timeline).
    pub kind: u16,
    pub payload_hash: [u8; 32],
    /// The committee that signs the *next* block.
    pub committee_hash: [u8; 32],
    /// The policy in force from this block on.
    pub policy_hash: [u8; 32],
    /// The index of the latest checkpoint before this block (0 for the genesis and the
    /// blocks before the first change). A checkpoint is the genesis or a block whose
    /// committee or policy hash differs from its predecessor's. This field lets a proof
    /// verifier see a skipped checkpoint.
    pub previous_checkpoint: u64,
    /// Milliseconds since the Unix epoch; never before the predecessor's.
    pub timestamp_ms: u64,
}

impl Header {
    pub fn id(&self) -> BlockId {
        BlockId(hash::sha3_256(TAG_BLOCK, &[&postcard::to_allocvec(self).expect("headers serialize")]))
    }

    pub fn is_genesis(&self) -> bool {
        self.chain.is_none()
    }
}

/// A block as stored and sent: the header, its payload, the full committee and policy when
/// they change, and the collective signature by the predecessor's committee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: Header,
    pub payload: Vec<u8>,
    /// Present exactly when `header.committee_hash` differs from the predecessor's (and in
    /// the genesis): the new committee and the approvals that authorize the change (none in
    /// the genesis; see [`crate::authority`]).
    pub committee: Option<Appointment>,
    /// Present exactly when `header.policy_hash` differs from the predecessor's (and in
    /// the genesis).
    pub policy: Option<Vec<u8>>,
    /// `None` only in the genesis.
    pub signature: Option<BlockSignature>,
}

/// A block's collective signature by its predecessor's committee, and the ballot of the
/// round that produced it (SPEC §9.1).
///
/// The committee signs [`BlockSignature::message`], `id || u64be(ballot)`, not the bare
/// id: partial signatures given at different ballots then never sum into one signature, which
/// the witnesses' agreement rules rely on (a Byzantine leader could otherwise combine the
/// shares of several attempts). The ballot means nothing to a verifier beyond that: any
/// ballot with a valid signature is a valid forward link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSignature {
    pub ballot: u64,
    pub signature: Signature,
}

impl BlockSignature {
    /// What the committee signs for block `id` at `ballot`: `id || u64be(ballot)`, 40 bytes.
    pub fn message(id: &BlockId, ballot: u64) -> [u8; 40] {
        let mut message = [0u8; 40];
        message[..32].copy_from_slice(&id.0);
        message[32..].copy_from_slice(&ballot.to_be_bytes());
        message
    }

    /// Checks the signature over block `id` by `committee` (its roster and threshold).
    pub fn verify(&self, committee: &Committee, id: &BlockId) -> Result<(), VerifyError> {
        let message = Self::message(id, self.ballot);
        chainiac_cosi::verify(committee.roster(), committee.threshold(), &message, &self.signature)
    }
}

impl Block {
    pub fn id(&self) -> BlockId {
        self.header.id()
    }

    pub fn index(&self) -> u64 {
        self.header.index
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("blocks serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::DecodeError> {
        crate::decode_exact(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heights_follow_divisibility() {
        let p = ChainParams::new(2, 5).unwrap();
        let heights: Vec<u8> = (0..17).map(|i| p.height(i)).collect();
        assert_eq!(heights, [5, 1, 2, 1, 3, 1, 2, 1, 4, 1, 2, 1, 3, 1, 2, 1, 5]);
        let p = ChainParams::new(3, 3).unwrap();
        assert_eq!(p.height(9), 3);
        assert_eq!(p.height(27), 3, "capped");
        assert_eq!(p.height(6), 2);
    }

    /// SPEC §7.1's vector: the encoding and hash of a one-member committee (key with seed
    /// 01×32 at `127.0.0.1:7441`, threshold 1, epoch 300), and a decode that refuses an
    /// impossible threshold.
    #[test]
    fn committee_vector() {
        let hex = |bytes: &[u8]| bytes.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let member = chainiac_cosi::Member::new(&chainiac_cosi::SecretKey::from_seed(&[1; 32]), "127.0.0.1:7441");
        let committee = Committee::new(Roster::new(vec![member]).unwrap(), 1).unwrap().with_epoch(300);
        let bytes = postcard::to_allocvec(&committee).unwrap();
        assert_eq!(
            hex(&bytes),
            "018a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c\
             abb6a1c65b63196678184160464fec69698f561f1fdaa10af75946a83266a581\
             ce68cb9d78682912160b4148188b47e3bccec92c729a96ebb232b9b59c9d0204\
             0e3132372e302e302e313a3734343101ac02"
        );
        assert_eq!(hex(&committee.hash()), "95316228dd74fca18beedc0d41e937be0c73532a5c19225ceb165e88d9893197");
        assert_eq!(postcard::from_bytes::<Committee>(&bytes).unwrap(), committee);
        let mut zero_threshold = bytes.clone();
        let at = bytes.len() - 3;
        zero_threshold[at] = 0;
        assert!(postcard::from_bytes::<Committee>(&zero_threshold).is_err());
    }

    /// SPEC §7.2: a block signature covers `id || u64be(ballot)`; with the whole roster in
    /// the mask it is a plain Ed25519 signature under the aggregate key over those 40 bytes,
    /// and it stops verifying when the ballot or the id changes.
    #[test]
    fn a_block_signature_binds_its_ballot() {
        use rand_chacha::rand_core::SeedableRng;
        let id = BlockId([7; 32]);
        let message = BlockSignature::message(&id, 0x0102_0304_0506_0708);
        assert_eq!(&message[..32], &[7; 32]);
        assert_eq!(&message[32..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let key = chainiac_cosi::SecretKey::from_seed(&[1; 32]);
        let member = chainiac_cosi::Member::new(&key, "127.0.0.1:7441");
        let committee = Committee::new(Roster::new(vec![member]).unwrap(), 1).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mask = chainiac_cosi::Mask::full(1);
        let signed = chainiac_cosi::simulation::sign_with_all_keys(
            committee.roster(),
            &[chainiac_cosi::SecretKey::from_seed(&[1; 32])],
            &mask,
            &message,
            &mut rng,
        );
        let signature = BlockSignature { ballot: 0x0102_0304_0506_0708, signature: signed };
        signature.verify(&committee, &id).unwrap();
        assert!(key.public_key().verify_ed25519(&message, &signature.signature.to_ed25519_bytes()));
        let other_ballot = BlockSignature { ballot: 0x0102_0304_0506_0709, ..signature.clone() };
        assert_eq!(other_ballot.verify(&committee, &id), Err(VerifyError::Equation));
        assert_eq!(signature.verify(&committee, &BlockId([8; 32])), Err(VerifyError::Equation));
    }

    #[test]
    fn params_are_checked() {
        assert_eq!(ChainParams::new(1, 4).unwrap_err(), ParamsError::Base(1));
        assert_eq!(ChainParams::new(17, 4).unwrap_err(), ParamsError::Base(17));
        assert!(ChainParams::new(2, 0).is_err());
        assert!(ChainParams::new(16, 17).is_err(), "16^16 overflows u64");
        assert!(ChainParams::new(16, 16).is_ok());
        assert!(ChainParams::new(2, 64).is_ok());
        assert_eq!(ChainParams::new(2, 32), Ok(ChainParams::DEFAULT));
    }

    proptest! {
        #[test]
        fn forward_steps_follow_existing_links(base in 2u8..=8, max_height in 1u8..8, from in 0u64..5000, len in 1u64..5000) {
            let p = ChainParams::new(base, max_height).unwrap();
            let to = p.highest_step(from, from + len).unwrap();
            prop_assert!(to > from && to <= from + len);
            prop_assert!(p.link_level(from, to).is_some(), "block {} links back to {}", to, from);
            let back = p.highest_back_step(from + len, from).unwrap();
            prop_assert!(back >= from && back < from + len);
            prop_assert!(p.link_level(back, from + len).is_some());
        }
    }
}
