//! Every message between witnesses, and between clients and witnesses.
//!
//! One request and one response per QUIC stream. Each request variant belongs to one
//! [`FrameClass`]: queries and submissions are open to anyone; peer requests are served
//! only to a connection authenticated with a key of the witness's roster.

use crate::frame::FrameClass;
use chainiac_cosi::protocol::{Challenge, Commitment, Response as CosiResponse, SessionId};
use chainiac_cosi::PublicKey;
use chainiac_release::{Attestation, DeveloperSignature, Manifest, ManifestId};
use chainiac_skipchain::timeline::{ChainPrefix, InclusionProof, MultiInclusionProof, TimelineChanges, TimelineEntry};
use chainiac_skipchain::{BackwardProof, Block, BlockId, ChainId, Header, LinkedProof, Proof, Proposal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    // --- queries ---
    /// The node's identity, chains and health.
    Status,
    /// The head of a chain.
    GetHead { chain: ChainId },
    /// One block by index.
    GetBlock { chain: ChainId, index: u64 },
    /// One block by id, from any chain.
    GetBlockById { id: BlockId },
    /// Up to `count` consecutive blocks from `from` (catching up; capped by the server).
    GetBlocks { chain: ChainId, from: u64, count: u32 },
    /// A forward proof from block `from` to block `to` (the head if `None`).
    GetProof { chain: ChainId, from: u64, to: Option<u64>, with_payload: bool },
    /// A backward proof from block `from` down to block `to`.
    GetBackwardProof { chain: ChainId, from: u64, to: u64, with_payload: bool },
    /// The newest timeline block this node can prove chains in, with the inclusion proof of
    /// `chain` if given. `timeline` picks a timeline chain when the node serves several.
    GetTimeline { timeline: Option<ChainId>, chain: Option<ChainId> },

    // --- submissions ---
    /// Start serving a new chain (its genesis names the committee; this node must be in it).
    CreateChain { genesis: Block },
    /// Append a block built from `proposal` to `chain`; the contacted witness leads the round.
    Propose { chain: ChainId, proposal: Proposal },

    // --- between witnesses ---
    /// Phase 1 of a round: check `block` (unsigned) and answer with the subtree's commitment.
    Announce(Announce),
    /// Phase 2: lock on the block the certificate's votes name, then answer with the
    /// subtree's (checked) response.
    Challenge { session: SessionId, challenge: Challenge, certificate: Certificate },
    /// The round failed or was abandoned: forget the session and its nonces.
    Abort { session: SessionId },
    /// A block signed by the round: append it.
    Commit { block: Block },
    /// A new chain the leader accepted: serve it too.
    Genesis { genesis: Block },

    // --- build verification ---
    /// To a verifier: rebuild `manifest` from `source` and answer with a signed attestation.
    /// `chain`: the release chain a witness builds for (the verifier builds only for the
    /// chains its operator lists); `None` from a release manager or the operator.
    Build { manifest: Manifest, source: Vec<u8>, chain: Option<ChainId> },
    /// To a verifier: the attestation it stored for a manifest, if any.
    GetAttestation { manifest: ManifestId },
    /// To a verifier: the build log it kept for a manifest.
    GetBuildLog { manifest: ManifestId },
    /// To a witness: have the chain policy's verifiers rebuild `source`, then cosign the
    /// release if the rules hold. The answer is the appended block or the rule that failed.
    SubmitRelease { chain: ChainId, manifest: Manifest, developer_signatures: Vec<DeveloperSignature>, source: Vec<u8> },
    /// To a witness: the bad-hash tracker of a release chain (SPEC §11.8): per verifier and
    /// rebuilder, what it attested and how often it agreed; the disputed releases; the
    /// rebuilders this witness throttles.
    GetTracker { chain: ChainId },

    // --- batched queries (appended: older variants keep their tags) ---
    /// Forward proofs for up to [`MAX_PROOF_QUERIES`] chains, answered in order. A proof
    /// leaves out every committee appointment whose digest `held_appointments` names (at
    /// most [`MAX_HELD_APPOINTMENTS`]) or that an earlier proof of the same answer carried;
    /// the client looks those up by the committee hash the header names.
    GetProofs { queries: Vec<ProofQuery>, with_payload: bool, held_appointments: Vec<[u8; 32]> },
    /// The newest timeline block and one inclusion proof for up to [`MAX_TIMELINE_CHAINS`]
    /// chains (those the block records; the client sees which are missing).
    GetTimelineBatch { timeline: Option<ChainId>, chains: Vec<ChainId> },
    /// Linked proofs for up to [`MAX_PROOF_QUERIES`] chains, answered in order: down from
    /// the head a timeline block records to the client's block, hashes only, then forward
    /// to the head. Appointments as in [`Request::GetProofs`].
    GetLinkedProofs { queries: Vec<LinkedQuery>, with_payload: bool, held_appointments: Vec<[u8; 32]> },
    /// Every block of `timeline` after the client's block `from`, with each entry's change
    /// list as a client following chains with the `watched` prefixes (at most
    /// [`MAX_WATCHED_PREFIXES`]) needs it (`timeline::ChangedBlock`), up to
    /// [`MAX_CHANGE_BLOCKS`] blocks or [`PROOFS_RESPONSE_BUDGET`] of lists
    /// (`timeline::changes_page`; the client asks again from where a full answer
    /// stopped). Appointments as in [`Request::GetProofs`]. Refused if all the lists
    /// since `from` would take more than about `max_bytes` (0: no limit): the client then
    /// takes inclusion proofs, the cheaper path.
    GetTimelineChanges {
        timeline: ChainId,
        from: u64,
        watched: Vec<ChainPrefix>,
        held_appointments: Vec<[u8; 32]>,
        max_bytes: u64,
    },

    // --- between witnesses (appended) ---
    /// This witness's agreement state at `(chain, index)`: what a member that leads there
    /// gathers before it re-leads a locked block (§9.1).
    GetIndexState { chain: ChainId, index: u64 },

    // --- queries (appended) ---
    /// The heads of the chains this node serves, in id order after `after`, at most
    /// [`CHAINS_PER_PAGE`]: `Status` names only the first page.
    ListChains { after: Option<ChainId> },

    // --- build verification (appended) ---
    /// To a verifier: what it built of artifact `path` of `manifest` when that build did
    /// not match (kept for a while for the operator and the release manager to compare).
    GetArtifact { manifest: ManifestId, path: String },

    // --- rebuilders (appended) ---
    /// To a witness, from anyone: a rebuilder's attestation about a release of `chain` (the
    /// one with the attested manifest). The answer is the summary block appended after it
    /// (SPEC §11.8).
    SubmitRebuild { chain: ChainId, attestation: Attestation },
    /// To a witness: the signed attestations its rebuilds blocks hold about a release.
    GetRebuilds { chain: ChainId, release: u64 },
    /// To a witness, from anyone: over the records of the first `count` attestations of
    /// release `release` of `chain` (in chain order: what a summary of `count` records
    /// commits to, SPEC §11.8), a proof for each of `rebuilders` (at most
    /// [`MAX_RECORD_QUERIES`]) — its record, or that it has none.
    GetRebuildRecords { chain: ChainId, release: u64, count: u64, rebuilders: Vec<chainiac_release::RebuilderId> },
}

/// Most rebuilder ids one [`Request::GetRebuildRecords`] asks about.
pub const MAX_RECORD_QUERIES: usize = 64;

/// Chains per [`Request::ListChains`] answer, and in a [`NodeStatus`].
pub const CHAINS_PER_PAGE: usize = 256;

/// The tag of a member's vote (SPEC §9.1).
pub const TAG_VOTE: &str = "chainiac/v1/witness/vote";

/// A member's vote for the announced block at a ballot: an Ed25519 signature by the member
/// at roster position `member` over [`Vote::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub member: u32,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

impl Vote {
    /// `tagged(TAG_VOTE) || block id || u64be(ballot)` (65 bytes): the id covers the chain
    /// and the index.
    pub fn message(id: &BlockId, ballot: u64) -> Vec<u8> {
        let mut message = Vec::with_capacity(1 + TAG_VOTE.len() + 40);
        message.push(TAG_VOTE.len() as u8);
        message.extend_from_slice(TAG_VOTE.as_bytes());
        message.extend_from_slice(&id.0);
        message.extend_from_slice(&ballot.to_be_bytes());
        message
    }

    pub fn sign(key: &chainiac_cosi::SecretKey, member: u32, id: &BlockId, ballot: u64) -> Self {
        Vote { member, signature: key.sign_ed25519(&Self::message(id, ballot)) }
    }

    /// Strict RFC 8032 verification by `key` (the roster's key at `member`).
    pub fn verify(&self, key: &PublicKey, id: &BlockId, ballot: u64) -> bool {
        key.verify_ed25519(&Self::message(id, ballot), &self.signature)
    }
}

/// Votes for one block (named by the message that carries the certificate) at one ballot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub ballot: u64,
    pub votes: Vec<Vote>,
}

/// A member's agreement state at an unfilled index (SPEC §9.1): the highest ballot it voted
/// at, and its lock — the block it signs there, with the certificate that locked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IndexState {
    pub voted: u64,
    pub lock: Option<(Block, Certificate)>,
}

/// Most chains one [`Request::GetProofs`] may name.
pub const MAX_PROOF_QUERIES: usize = 256;
/// Most appointment digests one [`Request::GetProofs`] may name.
pub const MAX_HELD_APPOINTMENTS: usize = 64;
/// The refusal of change lists dearer than the client offered (`max_bytes`).
pub fn changes_too_large(from: u64, size: u64, max_bytes: u64) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Refused,
        format!("the change lists since block {from} take about {size} bytes, more than the {max_bytes} asked"),
    )
}

/// Most chain prefixes one [`Request::GetTimelineChanges`] may watch: with the most held
/// committees the request still fits a query frame (64 KiB).
pub const MAX_WATCHED_PREFIXES: usize = 15_360;
/// Most blocks one [`Response::TimelineChanges`] holds.
pub const MAX_CHANGE_BLOCKS: u64 = 1024;
/// Most chains one [`Request::GetTimelineBatch`] may name.
pub const MAX_TIMELINE_CHAINS: usize = 1024;
/// Once a [`Response::Proofs`] holds this many encoded bytes, the proofs after it are
/// answered with [`ErrorCode::Busy`] ("ask again"), so an answer stays far below the
/// response frame limit whatever the chains hold.
pub const PROOFS_RESPONSE_BUDGET: usize = 16 << 20;

/// One chain of a [`Request::GetProofs`]: a forward proof from `from` to `to` (the head if
/// `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofQuery {
    pub chain: ChainId,
    pub from: u64,
    pub to: Option<u64>,
}

/// One chain of a [`Request::GetLinkedProofs`]: from the client's block `from`, through
/// the block `recorded` (the head the timeline block the client verified records), to the
/// witness's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedQuery {
    pub chain: ChainId,
    pub from: u64,
    pub recorded: u64,
}

/// Everything a witness needs to take part in a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The proposed block, without its signature.
    pub block: Block,
    pub session: SessionId,
    /// Roster index of the leader (the tree's root).
    pub leader: u32,
    /// Children per node of the tree.
    pub branching: u32,
    /// Members left out of this attempt's tree (mask bytes over the committee's roster).
    pub excluded: Vec<u8>,
    /// The attempt's ballot (§9.1): above every ballot a member voted at at this index;
    /// members vote for the block at it and sign `BlockSignature::message(id, ballot)`.
    pub ballot: u64,
    /// When the leader re-leads a locked block: the certificate that locked it, from an
    /// earlier ballot (§9.1). None for a new block.
    pub justification: Option<Certificate>,
    /// The leader's signature over the announce ([`Announce::signed_message`]): members vote
    /// only at a ballot its owner announced (§9.1, rule 0), and neither a relay nor anyone
    /// else can re-shape the announce's tree or session in the leader's name.
    #[serde(with = "chainiac_cosi::bytes")]
    pub leader_signature: [u8; 64],
}

/// The domain of an announce's leader signature (§10.4).
pub const TAG_ANNOUNCE: &str = "chainiac/v1/witness/announce";

impl Announce {
    /// `tagged(TAG_ANNOUNCE) || session || block id || u64be(ballot) || u32be(leader) ||
    /// u32be(branching) || u32be(len excluded) || excluded`: everything that decides who
    /// votes where, in which session, for what. The justification is checked on its own.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(1 + TAG_ANNOUNCE.len() + 84 + self.excluded.len());
        message.push(TAG_ANNOUNCE.len() as u8);
        message.extend_from_slice(TAG_ANNOUNCE.as_bytes());
        message.extend_from_slice(&self.session.0);
        message.extend_from_slice(&self.block.id().0);
        message.extend_from_slice(&self.ballot.to_be_bytes());
        message.extend_from_slice(&self.leader.to_be_bytes());
        message.extend_from_slice(&self.branching.to_be_bytes());
        message.extend_from_slice(&(self.excluded.len() as u32).to_be_bytes());
        message.extend_from_slice(&self.excluded);
        message
    }

    /// Signs the announce as its leader.
    pub fn sign(&mut self, key: &chainiac_cosi::SecretKey) {
        self.leader_signature = key.sign_ed25519(&self.signed_message());
    }

    /// Strict RFC 8032 verification by `key` (the roster's key at `leader`).
    pub fn verify(&self, key: &PublicKey) -> bool {
        key.verify_ed25519(&self.signed_message(), &self.leader_signature)
    }
}

impl Request {
    pub fn class(&self) -> FrameClass {
        match self {
            Request::Status
            | Request::GetHead { .. }
            | Request::GetBlock { .. }
            | Request::GetBlockById { .. }
            | Request::GetBlocks { .. }
            | Request::GetProof { .. }
            | Request::GetBackwardProof { .. }
            | Request::GetTimeline { .. }
            | Request::GetProofs { .. }
            | Request::GetTimelineBatch { .. }
            | Request::GetLinkedProofs { .. }
            | Request::GetTimelineChanges { .. }
            | Request::ListChains { .. }
            | Request::GetArtifact { .. }
            | Request::GetRebuilds { .. }
            | Request::GetRebuildRecords { .. } => FrameClass::Query,
            Request::CreateChain { .. } | Request::Propose { .. } | Request::SubmitRebuild { .. } => FrameClass::Submit,
            Request::Announce(_)
            | Request::Challenge { .. }
            | Request::Abort { .. }
            | Request::Commit { .. }
            | Request::Genesis { .. }
            | Request::GetIndexState { .. } => FrameClass::Peer,
            Request::GetAttestation { .. } | Request::GetBuildLog { .. } | Request::GetTracker { .. } => {
                FrameClass::Query
            }
            Request::Build { .. } | Request::SubmitRelease { .. } => FrameClass::Build,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::GetHead { .. } => "get_head",
            Request::GetBlock { .. } => "get_block",
            Request::GetBlockById { .. } => "get_block_by_id",
            Request::GetBlocks { .. } => "get_blocks",
            Request::GetProof { .. } => "get_proof",
            Request::GetBackwardProof { .. } => "get_backward_proof",
            Request::GetTimeline { .. } => "get_timeline",
            Request::CreateChain { .. } => "create_chain",
            Request::Propose { .. } => "propose",
            Request::Announce(_) => "announce",
            Request::Challenge { .. } => "challenge",
            Request::Abort { .. } => "abort",
            Request::Commit { .. } => "commit",
            Request::Genesis { .. } => "genesis",
            Request::Build { .. } => "build",
            Request::GetAttestation { .. } => "get_attestation",
            Request::GetBuildLog { .. } => "get_build_log",
            Request::SubmitRelease { .. } => "submit_release",
            Request::GetTracker { .. } => "get_tracker",
            Request::GetProofs { .. } => "get_proofs",
            Request::GetTimelineBatch { .. } => "get_timeline_batch",
            Request::GetLinkedProofs { .. } => "get_linked_proofs",
            Request::GetTimelineChanges { .. } => "get_timeline_changes",
            Request::GetIndexState { .. } => "get_index_state",
            Request::ListChains { .. } => "list_chains",
            Request::GetArtifact { .. } => "get_artifact",
            Request::SubmitRebuild { .. } => "submit_rebuild",
            Request::GetRebuilds { .. } => "get_rebuilds",
            Request::GetRebuildRecords { .. } => "get_rebuild_records",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Status(NodeStatus),
    Head(HeadInfo),
    Block(Option<Block>),
    Blocks(Vec<Block>),
    Proof(Proof),
    BackwardProof(BackwardProof),
    Timeline(TimelineInfo),
    /// A chain was created.
    Created {
        chain: ChainId,
    },
    /// A block was appended (it is returned signed).
    Appended {
        block: Block,
    },
    /// The answer to an [`Announce`]: the subtree's aggregate commitment and the votes of
    /// its members that voted for the block at the ballot (§9.1).
    Voted {
        commitment: Commitment,
        votes: Vec<Vote>,
    },
    Signed(CosiResponse),
    Ack,
    Error(ErrorReply),
    Attestation(Option<Attestation>),
    BuildLog(Option<Vec<u8>>),
    Tracker(TrackerReport),
    /// The answer to [`Request::GetProofs`]: one entry per query, in order.
    Proofs(Vec<Result<Proof, ErrorReply>>),
    TimelineBatch(TimelineBatch),
    /// The answer to [`Request::GetLinkedProofs`]: one entry per query, in order.
    LinkedProofs(Vec<Result<LinkedProof, ErrorReply>>),
    /// The answer to [`Request::GetTimelineChanges`].
    TimelineChanges(TimelineChanges),
    /// The answer to [`Request::GetIndexState`] at an unfilled index (a filled one is
    /// answered `Conflict`).
    IndexState(Box<IndexState>),
    /// The answer to [`Request::ListChains`]: a page of heads; `more` when chains follow.
    Chains {
        heads: Vec<HeadInfo>,
        more: bool,
    },
    /// A verifier's answer to [`Request::Status`].
    VerifierStatus(VerifierStatus),
    /// The answer to [`Request::GetArtifact`]: the bytes, if the verifier keeps them.
    Artifact(Option<Vec<u8>>),
    /// The answer to [`Request::GetRebuilds`], in chain order.
    Rebuilds(Vec<Attestation>),
    /// The answer to [`Request::SubmitRebuild`] when the witness batches attestations: it
    /// holds this one (in memory) and appends its batch at `due_ms` (ms since the epoch).
    RebuildQueued {
        due_ms: u64,
    },
    /// The answer to [`Request::GetRebuildRecords`]: a proof per id asked, in its order.
    RebuildRecords(Vec<chainiac_release::RecordProof>),
}

impl Response {
    /// The variant's name, for errors and logs (never the contents: an answer can be large).
    pub fn name(&self) -> &'static str {
        match self {
            Response::Status(_) => "status",
            Response::Head(_) => "head",
            Response::Block(_) => "block",
            Response::Blocks(_) => "blocks",
            Response::Proof(_) => "proof",
            Response::BackwardProof(_) => "backward_proof",
            Response::Timeline(_) => "timeline",
            Response::Created { .. } => "created",
            Response::Appended { .. } => "appended",
            Response::Voted { .. } => "voted",
            Response::Signed(_) => "signed",
            Response::Ack => "ack",
            Response::Error(_) => "error",
            Response::Attestation(_) => "attestation",
            Response::BuildLog(_) => "build_log",
            Response::Tracker(_) => "tracker",
            Response::Proofs(_) => "proofs",
            Response::TimelineBatch(_) => "timeline_batch",
            Response::LinkedProofs(_) => "linked_proofs",
            Response::TimelineChanges(_) => "timeline_changes",
            Response::IndexState(_) => "index_state",
            Response::Chains { .. } => "chains",
            Response::VerifierStatus(_) => "verifier_status",
            Response::Artifact(_) => "artifact",
            Response::Rebuilds(_) => "rebuilds",
            Response::RebuildQueued { .. } => "rebuild_queued",
            Response::RebuildRecords(_) => "rebuild_records",
        }
    }
}

/// A build verifier's identity, confinement and counters since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierStatus {
    pub key: [u8; 32],
    pub address: String,
    /// How builds are confined: `bubblewrap` or `none`.
    pub isolation: String,
    /// The build environment; attestations carry its digest.
    pub environment: String,
    pub uptime_s: u64,
    /// Builds run; each outcome counted below.
    pub builds: u64,
    pub reproduced: u64,
    pub mismatched: u64,
    pub failed: u64,
    /// Outcomes signed but not kept, since they may depend on the moment (a time limit, a
    /// kill by signal, the verifier's own trouble): the next request builds again.
    pub not_kept: u64,
    /// Build requests answered with a kept attestation.
    pub answered_from_store: u64,
    pub running: u64,
    /// Build requests waiting for a slot.
    pub waiting: u64,
    /// Build and log requests refused: from a key the verifier does not serve, or with a
    /// source that is not the manifest's.
    pub refused_requests: u64,
    /// Frames refused as malformed, oversized, of an unknown version or of a class the
    /// verifier does not take.
    pub refused_frames: u64,
}

/// The answer to [`Request::GetTracker`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerReport {
    /// Per key that attested a release of the chain, by key.
    pub records: Vec<chainiac_release::TrackRecord>,
    /// Releases a verifier or rebuilder disagreed with, in chain order.
    pub disputed: Vec<chainiac_release::Disputed>,
    /// Rebuilders (among `records`) whose attestations this witness refuses for now, and
    /// until when (ms since the epoch): too many disagreements in its window.
    pub throttled: Vec<([u8; 32], u64)>,
}

/// A timeline block and, if asked, where a chain's head is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub timeline: ChainId,
    /// The timeline block's index; prove it with `GetProof` on the timeline chain.
    pub index: u64,
    pub entry: TimelineEntry,
    pub inclusion: Option<InclusionProof>,
}

/// A timeline block and where the asked chains' heads are in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineBatch {
    pub timeline: ChainId,
    pub index: u64,
    pub entry: TimelineEntry,
    pub inclusion: MultiInclusionProof,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub chain: ChainId,
    pub index: u64,
    pub id: BlockId,
    pub header: Header,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's public key.
    pub key: [u8; 32],
    pub address: String,
    /// The first [`CHAINS_PER_PAGE`] chains by id (`ListChains` pages through the rest).
    pub chains: Vec<HeadInfo>,
    /// Seconds since the node started.
    pub uptime_s: u64,
    pub rounds_led: u64,
    pub rounds_failed: u64,
    pub blocks_signed: u64,
    /// Members named for a missing or wrong partial signature in rounds this node saw.
    pub faults_named: u64,
    /// Mean and worst duration of the rounds this node led.
    pub round_ms_mean: u64,
    pub round_ms_max: u64,
    /// Open connections to other witnesses.
    pub peers_up: u64,
    /// Frames refused as malformed, oversized, of an unknown version or unauthorized.
    pub refused_frames: u64,
    /// Blocks this node re-led because members were locked on them (a leader died or
    /// withheld the signature after the locks, §9.1).
    pub blocks_adopted: u64,
    /// How many chains this node serves.
    pub chains_total: u64,
    /// Members left out of rounds' trees because they missed a recent round this node led.
    pub peers_left_out: u64,
    /// Milliseconds since the newest timeline block this node holds was made (none: it
    /// serves no timeline). A stall shows here.
    pub timeline_age_ms: Option<u64>,
}

/// A refusal, with a code scripts can branch on and a message people can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or makes no sense.
    BadRequest,
    /// No such chain or block.
    NotFound,
    /// A rule refused it (the message names the rule).
    Refused,
    /// Another round holds this index; retry shortly.
    Busy,
    /// The chain moved on; retry on the new head.
    Conflict,
    /// Too few witnesses answered.
    Unavailable,
    /// This connection may not make that request.
    Forbidden,
    /// Something broke on the node.
    Internal,
    /// This witness is locked on another block at this index and the announce carries no
    /// newer certificate for this one: the leader should gather the members' states and
    /// re-lead the locked block (§9.1).
    Promised,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainiac_skipchain::timeline::{ChangedBlock, HeadLeaf};

    fn bytes(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// SPEC §10.4: the leader signs the announce's session, block id, ballot, leader,
    /// branching and excluded mask; any change to one of them breaks the signature.
    #[test]
    fn announce_signature_vector() {
        let key = chainiac_cosi::SecretKey::from_seed(&[1; 32]);
        let roster = chainiac_cosi::Roster::new(vec![chainiac_cosi::Member::new(&key, "127.0.0.1:1")]).unwrap();
        let committee = chainiac_skipchain::Committee::byzantine(roster);
        let params = chainiac_skipchain::ChainParams::new(2, 20).unwrap();
        let block = chainiac_skipchain::genesis(params, committee, Vec::new(), 0, Vec::new(), 1_800_000_000_000);
        let mut announce = Announce {
            block,
            session: chainiac_cosi::protocol::SessionId([2; 32]),
            leader: 3,
            branching: 8,
            excluded: vec![0x05],
            ballot: 0x0102_0304_0506_0708,
            justification: None,
            leader_signature: [0; 64],
        };
        let message = announce.signed_message();
        assert_eq!(message.len(), 1 + 28 + 32 + 32 + 8 + 4 + 4 + 4 + 1);
        assert_eq!(&message[..29], b"\x1cchainiac/v1/witness/announce");
        assert_eq!(&message[29..61], &[2; 32]);
        assert_eq!(&message[61..93], &announce.block.id().0);
        assert_eq!(&message[93..], &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 5]);
        announce.sign(&key);
        assert!(announce.verify(&key.public_key()));
        let hex: String = announce.leader_signature.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "a3376a44b142c6f8a0d28148d962dd18824095c81bc8b46b9807b7f75eab4637\
             da73f12fe388e85c0c0ce4ada85814b5cf9f97ce0d341892b6a4689b8e98ab0c"
        );
        let id: String = announce.block.id().0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id, "7371d35559c8a129a28831978724632e40d24d38f014eb78458679822c16449c");
        for change in 0..4 {
            let mut changed = announce.clone();
            match change {
                0 => changed.branching = 1,
                1 => changed.excluded = vec![0x04],
                2 => changed.session.0[0] ^= 1,
                _ => changed.ballot += 1,
            }
            assert!(!changed.verify(&key.public_key()), "change {change}");
        }
    }

    /// SPEC §9.1: a vote signs `tagged(TAG_VOTE) || block id || u64be(ballot)` (65 bytes,
    /// starting 0x18), deterministically (RFC 8032), and stops verifying when the block, the
    /// ballot or the key changes.
    #[test]
    fn vote_vector() {
        let key = chainiac_cosi::SecretKey::from_seed(&[1; 32]);
        let id = BlockId([7; 32]);
        let message = Vote::message(&id, 0x0102_0304_0506_0708);
        assert_eq!(message.len(), 65);
        assert_eq!(message[0], 0x18);
        assert_eq!(&message[1..25], b"chainiac/v1/witness/vote");
        assert_eq!(&message[25..57], &[7; 32]);
        assert_eq!(&message[57..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let vote = Vote::sign(&key, 3, &id, 0x0102_0304_0506_0708);
        let hex: String = vote.signature.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "fe440dc905f534763b8ee72f4ec2b684b4cc4c538188f9e2a0ce48d025bf3c73\
             c3a384a27582b8657b96b0e166e2fcba1cfd72412266a02df4362087ef63be0c"
        );
        assert!(vote.verify(&key.public_key(), &id, 0x0102_0304_0506_0708));
        assert!(!vote.verify(&key.public_key(), &BlockId([8; 32]), 0x0102_0304_0506_0708), "another block");
        assert!(!vote.verify(&key.public_key(), &id, 0x0102_0304_0506_0709), "another ballot");
        let stranger = chainiac_cosi::SecretKey::from_seed(&[2; 32]).public_key();
        assert!(!vote.verify(&stranger, &id, 0x0102_0304_0506_0708), "another member");
    }

    /// The largest change-list request a client may send fits a query frame.
    #[test]
    fn the_largest_change_list_request_fits_a_query_frame() {
        let request = Request::GetTimelineChanges {
            timeline: BlockId([0xff; 32]),
            from: u64::MAX,
            watched: vec![[0xff; 4]; MAX_WATCHED_PREFIXES],
            held_appointments: vec![[0xff; 32]; MAX_HELD_APPOINTMENTS],
            max_bytes: u64::MAX,
        };
        assert!(crate::frame::encode(request.class(), &request).is_ok());
    }

    /// SPEC §10.3: the batched messages, byte for byte (postcard: varint tags and lengths,
    /// arrays raw, `Option` and `Result` as a 0/1 tag).
    #[test]
    fn batched_messages_encode_as_the_spec_says() {
        let request = Request::GetProofs {
            queries: vec![ProofQuery { chain: BlockId([1; 32]), from: 300, to: None }],
            with_payload: true,
            held_appointments: vec![[2; 32]],
        };
        let expected = bytes(&[&[20, 1], &[1; 32], &[0xac, 0x02, 0, 1, 1], &[2; 32]]);
        assert_eq!(postcard::to_allocvec(&request).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Request>(&expected).unwrap(), request);

        let request = Request::GetTimelineBatch { timeline: Some(BlockId([3; 32])), chains: vec![BlockId([4; 32])] };
        let expected = bytes(&[&[21, 1], &[3; 32], &[1], &[4; 32]]);
        assert_eq!(postcard::to_allocvec(&request).unwrap(), expected);

        let response = Response::Proofs(vec![
            Ok(Proof { steps: vec![], payload: None }),
            Err(ErrorReply::new(ErrorCode::Busy, "x")),
        ]);
        let expected = vec![16, 2, 0, 0, 0, 1, 3, 1, b'x'];
        assert_eq!(postcard::to_allocvec(&response).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Response>(&expected).unwrap(), response);
        assert_eq!(request.class(), FrameClass::Query);

        let request = Request::GetLinkedProofs {
            queries: vec![LinkedQuery { chain: BlockId([5; 32]), from: 7, recorded: 300 }],
            with_payload: true,
            held_appointments: vec![],
        };
        let expected = bytes(&[&[22, 1], &[5; 32], &[7, 0xac, 0x02, 1, 0]]);
        assert_eq!(postcard::to_allocvec(&request).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Request>(&expected).unwrap(), request);
        assert_eq!(request.class(), FrameClass::Query);

        let response = Response::LinkedProofs(vec![Ok(LinkedProof {
            links: vec![],
            appointments: vec![],
            policies: vec![],
            beyond: Proof { steps: vec![], payload: Some(b"p".to_vec()) },
            link_payload: Some(chainiac_skipchain::LinkPayload { index: 3, payload: b"r".to_vec() }),
            named: Some(chainiac_skipchain::NamedHead {
                back_links: vec![BlockId([9; 32])],
                kind: 8,
                previous_checkpoint: 2,
                timestamp_ms: 300,
                payload: b"s".to_vec(),
            }),
        })]);
        // named: Some, one back link, kind 8, previous checkpoint 2, time 300, payload "s".
        let expected =
            bytes(&[&[18, 1, 0, 0, 0, 0, 0, 1, 1, b'p', 1, 3, 1, b'r', 1, 1], &[9; 32], &[8, 2, 0xac, 0x02, 1, b's']]);
        assert_eq!(postcard::to_allocvec(&response).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Response>(&expected).unwrap(), response);

        let request = Request::GetTimelineChanges {
            timeline: BlockId([6; 32]),
            from: 300,
            watched: vec![[1, 2, 3, 4]],
            held_appointments: vec![],
            max_bytes: 1000,
        };
        let expected = bytes(&[&[23], &[6; 32], &[0xac, 0x02, 1, 1, 2, 3, 4, 0, 0xe8, 0x07]]);
        assert_eq!(postcard::to_allocvec(&request).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Request>(&expected).unwrap(), request);
        assert_eq!(request.class(), FrameClass::Query);

        let leaf = HeadLeaf { chain: BlockId([7; 32]), index: 2, id: BlockId([8; 32]) };
        let response = Response::TimelineChanges(TimelineChanges {
            proof: Proof { steps: vec![], payload: None },
            blocks: vec![ChangedBlock {
                entry: TimelineEntry { time_ms: 1, chains: 1, root: [9; 32], changes: Some([10; 32]) },
                prefixes: vec![[7; 4]],
                opened: vec![leaf],
                hashes: vec![],
            }],
        });
        let expected = bytes(&[
            &[19, 0, 0, 1, 1, 1],
            &[9; 32],
            &[1],
            &[10; 32],
            &[1, 7, 7, 7, 7],
            &[1],
            &[7; 32],
            &[2],
            &[8; 32],
            &[0],
        ]);
        assert_eq!(postcard::to_allocvec(&response).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Response>(&expected).unwrap(), response);
    }

    /// SPEC §10.3's vector for a verifier's status.
    #[test]
    fn verifier_status_encodes_as_the_spec_says() {
        let response = Response::VerifierStatus(VerifierStatus {
            key: [1; 32],
            address: "v:1".into(),
            isolation: "none".into(),
            environment: "e".into(),
            uptime_s: 300,
            builds: 2,
            reproduced: 1,
            mismatched: 0,
            failed: 1,
            not_kept: 1,
            answered_from_store: 3,
            running: 0,
            waiting: 0,
            refused_requests: 4,
            refused_frames: 5,
        });
        let expected = bytes(&[
            &[22],
            &[1; 32],
            &[3, b'v', b':', b'1', 4, b'n', b'o', b'n', b'e', 1, b'e'],
            &[0xac, 0x02, 2, 1, 0, 1, 1, 3, 0, 0, 4, 5],
        ]);
        assert_eq!(postcard::to_allocvec(&response).unwrap(), expected);
        assert_eq!(postcard::from_bytes::<Response>(&expected).unwrap(), response);
    }
}
