//! Every message between witnesses, and between clients and witnesses.
//!
//! One request and one response per QUIC stream. Each request variant belongs to one
//! [`FrameClass`]: queries and submissions are open to anyone; peer requests are served
//! only to a connection authenticated with a key of the witness's roster.

use crate::frame::FrameClass;
use chainiac_cosi::protocol::{Challenge, Commitment, Response as CosiResponse, SessionId};
use chainiac_release::{Attestation, DeveloperSignature, Manifest, ManifestId};
use chainiac_skipchain::timeline::{InclusionProof, TimelineEntry};
use chainiac_skipchain::{BackwardProof, Block, BlockId, ChainId, Header, Proof, Proposal};
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
    /// Phase 2: answer with the subtree's (checked) response.
    Challenge { session: SessionId, challenge: Challenge },
    /// The round failed or was abandoned: forget the session and its nonces.
    Abort { session: SessionId },
    /// A block signed by the round: append it.
    Commit { block: Block },
    /// A new chain the leader accepted: serve it too.
    Genesis { genesis: Block },

    // --- build verification ---
    /// To a verifier: rebuild `manifest` from `source` and answer with a signed attestation.
    Build { manifest: Manifest, source: Vec<u8> },
    /// To a verifier: the attestation it stored for a manifest, if any.
    GetAttestation { manifest: ManifestId },
    /// To a verifier: the build log it kept for a manifest.
    GetBuildLog { manifest: ManifestId },
    /// To a witness: have the chain policy's verifiers rebuild `source`, then cosign the
    /// release if the rules hold. The answer is the appended block or the rule that failed.
    SubmitRelease { chain: ChainId, manifest: Manifest, developer_signatures: Vec<DeveloperSignature>, source: Vec<u8> },
    /// To a witness: how often each verifier agreed with the majority on a release chain.
    GetAgreement { chain: ChainId },
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
            | Request::GetTimeline { .. } => FrameClass::Query,
            Request::CreateChain { .. } | Request::Propose { .. } => FrameClass::Submit,
            Request::Announce(_)
            | Request::Challenge { .. }
            | Request::Abort { .. }
            | Request::Commit { .. }
            | Request::Genesis { .. } => FrameClass::Peer,
            Request::GetAttestation { .. } | Request::GetBuildLog { .. } | Request::GetAgreement { .. } => {
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
            Request::GetAgreement { .. } => "get_agreement",
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
    Commitment(Commitment),
    Signed(CosiResponse),
    Ack,
    Error(ErrorReply),
    Attestation(Option<Attestation>),
    BuildLog(Option<Vec<u8>>),
    Agreement(Vec<VerifierAgreement>),
}

/// How often one verifier's attestations agreed with the majority's on a chain's releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierAgreement {
    pub verifier: [u8; 32],
    pub agreed: u64,
    pub disagreed: u64,
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
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into() }
    }
}
