//! The payload rules of each kind of chain, checked before a witness commits to a block.

use chainiac_skipchain::{Block, ChainState};

/// Blocks of a test chain: any payload. Release chains (their own kinds) get their rules
/// from the release crate.
pub const KIND_RAW: u16 = 0;

/// Checks `block`'s payload against the rules of its chain's kind. The error names the rule.
pub fn check_payload(head: &ChainState, block: &Block) -> Result<(), String> {
    let _ = head;
    match block.header.kind {
        KIND_RAW => Ok(()),
        other => Err(format!("block kind {other} is not known to this witness")),
    }
}
