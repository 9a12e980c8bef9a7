//! Which block kinds go on which kind of chain, and what a new chain must look like. The
//! payload rules themselves live with their data: releases in `chainiac-release`, timeline
//! entries in the node (they need the node's heads).

use chainiac_release::{Policy, KIND_POLICY_CHANGE, KIND_RELEASE};
use chainiac_skipchain::timeline::KIND_TIMELINE;
use chainiac_skipchain::Block;

/// Blocks of a test chain: any payload.
pub const KIND_RAW: u16 = 0;

/// Whether a block of `kind` may extend a chain whose genesis has `chain_kind`.
pub fn kind_allowed(chain_kind: u16, kind: u16) -> bool {
    match chain_kind {
        KIND_RAW => kind == KIND_RAW,
        KIND_TIMELINE => kind == KIND_TIMELINE,
        KIND_RELEASE => kind == KIND_RELEASE || kind == KIND_POLICY_CHANGE,
        _ => false,
    }
}

/// The kind-specific checks of a genesis: a release chain's policy must be a valid policy.
pub fn check_genesis(genesis: &Block) -> Result<(), String> {
    match genesis.header.kind {
        KIND_RAW | KIND_TIMELINE => Ok(()),
        KIND_RELEASE => {
            let policy = genesis.policy.as_deref().unwrap_or_default();
            Policy::from_bytes(policy).map(|_| ()).map_err(|e| format!("release chain genesis: {e}"))
        }
        other => Err(format!("chain kind {other} is not known to this witness")),
    }
}
