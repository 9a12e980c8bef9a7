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
    /// The block this witness promised at `(chain, index)`, if any, signed: what a member
    /// that leads at an unfilled index gathers first, to re-lead what was promised (§9.1).
    GetPromise { chain: ChainId, index: u64 },

    // --- queries (appended) ---
    /// The heads of the chains this node serves, in id order after `after`, at most
    /// [`CHAINS_PER_PAGE`]: `Status` names only the first page.
    ListChains { after: Option<ChainId> },
}

/// Chains per [`Request::ListChains`] answer, and in a [`NodeStatus`].
pub const CHAINS_PER_PAGE: usize = 256;

/// The tag of the statement a witness signs when it reports a promise (SPEC §9.1).
pub const TAG_PROMISE: &str = "chainiac/v1/witness/promise";

/// A witness's signed report that it durably promised `block` (unsigned) at its index: it
/// will sign no other block there. Carried in an [`Announce`] that re-leads a promised
/// block, so that members that did not promise it see who did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPromise {
    pub member: PublicKey,
    pub block: Block,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

impl SignedPromise {
    /// `tagged(TAG_PROMISE) || block id`: the id covers the chain and the index.
    pub fn message(id: &BlockId) -> Vec<u8> {
        let mut message = Vec::with_capacity(1 + TAG_PROMISE.len() + 32);
        message.push(TAG_PROMISE.len() as u8);
        message.extend_from_slice(TAG_PROMISE.as_bytes());
        message.extend_from_slice(&id.0);
        message
    }

    pub fn sign(key: &chainiac_cosi::SecretKey, block: Block) -> Self {
        let signature = key.sign_ed25519(&Self::message(&block.id()));
        SignedPromise { member: key.public_key(), block, signature }
    }

    /// Strict RFC 8032 verification by `member`.
    pub fn verify(&self) -> bool {
        self.member.verify_ed25519(&Self::message(&self.block.id()), &self.signature)
    }

    /// The report without its block, as an [`Announce`] of that block carries it.
    pub fn signature(&self) -> PromiseSignature {
        PromiseSignature { member: self.member, signature: self.signature }
    }
}

/// A [`SignedPromise`]'s signature, carried in the [`Announce`] of the promised block
/// (whose id it signs) rather than with a copy of the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseSignature {
    pub member: PublicKey,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

impl PromiseSignature {
    /// Whether `member` reported promising the block with this id.
    pub fn verify(&self, id: &BlockId) -> bool {
        self.member.verify_ed25519(&SignedPromise::message(id), &self.signature)
    }
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
    /// The attempt's ballot (§9.1): members sign `BlockSignature::message(id, ballot)`.
    pub ballot: u64,
    /// When the leader re-leads a block that members promised (§9.1): their signed
    /// promises of it, at most one per committee member. Empty for a new block.
    pub promises: Vec<PromiseSignature>,
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
            | Request::ListChains { .. } => FrameClass::Query,
            Request::CreateChain { .. } | Request::Propose { .. } => FrameClass::Submit,
            Request::Announce(_)
            | Request::Challenge { .. }
            | Request::Abort { .. }
            | Request::Commit { .. }
            | Request::Genesis { .. }
            | Request::GetPromise { .. } => FrameClass::Peer,
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
            Request::GetProofs { .. } => "get_proofs",
            Request::GetTimelineBatch { .. } => "get_timeline_batch",
            Request::GetLinkedProofs { .. } => "get_linked_proofs",
            Request::GetTimelineChanges { .. } => "get_timeline_changes",
            Request::GetPromise { .. } => "get_promise",
            Request::ListChains { .. } => "list_chains",
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
    /// The answer to [`Request::GetProofs`]: one entry per query, in order.
    Proofs(Vec<Result<Proof, ErrorReply>>),
    TimelineBatch(TimelineBatch),
    /// The answer to [`Request::GetLinkedProofs`]: one entry per query, in order.
    LinkedProofs(Vec<Result<LinkedProof, ErrorReply>>),
    /// The answer to [`Request::GetTimelineChanges`].
    TimelineChanges(TimelineChanges),
    /// The answer to [`Request::GetPromise`].
    Promise(Option<Box<SignedPromise>>),
    /// The answer to [`Request::ListChains`]: a page of heads; `more` when chains follow.
    Chains {
        heads: Vec<HeadInfo>,
        more: bool,
    },
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
            Response::Commitment(_) => "commitment",
            Response::Signed(_) => "signed",
            Response::Ack => "ack",
            Response::Error(_) => "error",
            Response::Attestation(_) => "attestation",
            Response::BuildLog(_) => "build_log",
            Response::Agreement(_) => "agreement",
            Response::Proofs(_) => "proofs",
            Response::TimelineBatch(_) => "timeline_batch",
            Response::LinkedProofs(_) => "linked_proofs",
            Response::TimelineChanges(_) => "timeline_changes",
            Response::Promise(_) => "promise",
            Response::Chains { .. } => "chains",
        }
    }
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
    /// Blocks this node re-led because members had promised them (a leader died or
    /// withheld the signature after the promises, §9.1).
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
    /// This witness durably promised another block at this index and signs no other: the
    /// leader should gather the promises there and re-lead what was promised (§9.1).
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

    /// SPEC §9.1: a promise report signs `tagged(TAG_PROMISE) || block id` (60 bytes,
    /// starting 0x1b), deterministically (RFC 8032), and stops verifying when the block or
    /// the member changes.
    #[test]
    fn promise_report_vector() {
        let key = chainiac_cosi::SecretKey::from_seed(&[1; 32]);
        let message = SignedPromise::message(&BlockId([7; 32]));
        assert_eq!(message.len(), 60);
        assert_eq!(message[0], 0x1b);
        assert_eq!(&message[1..28], b"chainiac/v1/witness/promise");
        assert_eq!(&message[28..], &[7; 32]);
        let block = Block {
            header: Header {
                chain: Some(BlockId([1; 32])),
                index: 2,
                height: 1,
                back_links: vec![BlockId([3; 32])],
                params: None,
                kind: 0,
                payload_hash: [4; 32],
                committee_hash: [5; 32],
                policy_hash: [6; 32],
                previous_checkpoint: 0,
                timestamp_ms: 1_000,
            },
            payload: vec![],
            committee: None,
            policy: None,
            signature: None,
        };
        let promise = SignedPromise::sign(&key, block.clone());
        let hex: String = promise.signature.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(block.id().to_hex(), "af83e5d60b7407a811d19794253468f4a1a76411f8332419c22a2e729a0352c7");
        assert_eq!(
            hex,
            "0b166264103875248962f328bcf7789d61f143ccca071bc0c6815ba673b2fc64\
             4e29a74d119d906c172614f346ef0be230f4e9aa39121ff613ced5b1efbee70b"
        );
        assert!(promise.verify());
        let mut other = promise.clone();
        other.block.header.index = 3;
        assert!(!other.verify(), "another block");
        let stranger = chainiac_cosi::SecretKey::from_seed(&[2; 32]).public_key();
        assert!(!SignedPromise { member: stranger, ..promise }.verify(), "another member");
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
        })]);
        let expected = vec![18, 1, 0, 0, 0, 0, 0, 1, 1, b'p'];
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
}
