//! # chainiac-skipchain
//!
//! Collectively signed skipchains. A block's id is the hash of its header, which holds its
//! back links; the block's one collective signature, by its predecessor's committee, over
//! that id (and the ballot it was given at) is therefore its forward link at every level. No forward link is added later, so
//! none can go missing.
//!
//! - [`authority`]: who may change a chain's committee — the approvals an appointment
//!   carries, and the rule that checks them (one home for witnesses and clients alike).
//! - [`block`]: blocks, headers, committees, heights and link arithmetic.
//! - [`chain`]: the rules a block must meet to extend a chain, and [`ChainState`], the
//!   verified state at a block.
//! - [`proof`]: forward catch-up proofs (one signature per hop, landing on every
//!   checkpoint), linked proofs (hashes only, down from a head a verified timeline
//!   records) and backward proofs (hashes only).
//! - [`timeline`]: the timeline's entries, Merkle tree over chain heads and inclusion
//!   proofs.
//! - [`store`]: the [`Store`] trait, an in-memory store, and append / head / prove over any
//!   store; `rocks` (feature `rocksdb`) is the RocksDB store.
//!
//! The core does no I/O: only the RocksDB store touches a disk.

pub mod authority;
pub mod block;
pub mod chain;
pub mod merkle;
pub mod proof;
#[cfg(feature = "rocksdb")]
pub mod rocks;
pub mod store;
pub mod timeline;

pub use authority::{Appointment, Appointments, Approval, AuthorityError};
pub use block::{Block, BlockId, BlockSignature, ChainId, ChainParams, Committee, Header};
pub use chain::{genesis, BlockError, ChainState, Proposal, Verified};
pub use proof::{
    any_policy, BackwardProof, CatchUp, EarlierBlock, LinkPayload, LinkedProof, NamedHead, NamesBlock, PolicyChanged,
    PolicyRule, Proof, ProofError, ProofStep, StepHeader,
};
pub use store::{MemoryStore, Store, StoreError};

/// Bytes that are not exactly one encoded value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed encoding: {0}")]
    Malformed(postcard::Error),
    #[error("{0} bytes left over after the value")]
    TrailingBytes(usize),
}

/// Decodes exactly one postcard value, refusing trailing bytes.
pub fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(value)
}
