//! # chainiac-proto
//!
//! What goes over the network: the messages ([`message`]), how they are framed
//! ([`frame`]: version, class, length, postcard body, hard size limits), and QUIC endpoints
//! whose TLS identity is the node's roster key ([`tls`], [`endpoint`]).

pub mod endpoint;
pub mod frame;
pub mod message;
pub mod server;
pub mod tls;

pub use endpoint::{call, CallError, Pool};
pub use frame::{FrameClass, FrameError, VERSION};
pub use message::{
    changes_too_large, Announce, ErrorCode, ErrorReply, HeadInfo, LinkedQuery, NodeStatus, ProofQuery, Request,
    Response, TimelineBatch, TimelineInfo, MAX_CHANGE_BLOCKS, MAX_HELD_APPOINTMENTS, MAX_PROOF_QUERIES,
    MAX_RECORD_QUERIES, MAX_TIMELINE_CHAINS, MAX_WATCHED_PREFIXES, PROOFS_RESPONSE_BUDGET,
};
