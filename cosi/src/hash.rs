//! Domain-separated hashing. Every hash in chainiac starts with a tag, so that no input
//! of one kind can be read as an input of another.
//!
//! `tagged(tag)` is the byte string `[len(tag) as u8] || tag`. SPEC.md lists every tag.

use sha2::Sha512;
use sha3::{Digest, Sha3_256};

/// The hash of a roster (SHA3-256).
pub const TAG_ROSTER: &str = "chainiac/v1/cosi/roster";
/// The message a key signs to prove possession of its secret (Ed25519 over this prefix and the key).
pub const TAG_PROOF_OF_POSSESSION: &str = "chainiac/v1/cosi/pop";
/// The nonce-binding coefficient `b` of a signing session (SHA-512, reduced mod l).
pub const TAG_NONCE_BINDING: &str = "chainiac/v1/cosi/binding";
/// Derivation of a signer's secret nonces from fresh randomness (SHA-512, reduced mod l).
pub const TAG_NONCE: &str = "chainiac/v1/cosi/nonce";
/// The binding of nonces to one session: roster, session id and message (SHA3-256).
pub const TAG_SESSION: &str = "chainiac/v1/cosi/session";

/// A SHA3-256 hasher that has already absorbed `tagged(tag)`.
pub fn sha3_256_tagged(tag: &str) -> Sha3_256 {
    let mut hasher = Sha3_256::new();
    absorb_tag(&mut hasher, tag);
    hasher
}

/// SHA3-256 over `tagged(tag)` and bytes fed in pieces (a file streamed from disk or the
/// network): the same hash as [`sha3_256`] over their concatenation.
pub struct TaggedSha3(Sha3_256);

impl TaggedSha3 {
    pub fn new(tag: &str) -> Self {
        TaggedSha3(sha3_256_tagged(tag))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finalize(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// SHA3-256 over `tagged(tag) || parts[0] || parts[1] || ...`.
pub fn sha3_256(tag: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = sha3_256_tagged(tag);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// A SHA-512 hasher that has already absorbed `tagged(tag)`.
pub(crate) fn sha512_tagged(tag: &str) -> Sha512 {
    let mut hasher = Sha512::new();
    absorb_tag(&mut hasher, tag);
    hasher
}

fn absorb_tag<D: Digest>(hasher: &mut D, tag: &str) {
    // Tags are short ASCII constants; the length byte makes the tag prefix-free.
    let len = u8::try_from(tag.len()).expect("domain tags are shorter than 256 bytes");
    hasher.update([len]);
    hasher.update(tag.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_length_prefixed() {
        // "ab" || "c" must differ from "a" || "bc": the length byte separates tag from data.
        assert_ne!(sha3_256("ab", &[b"c"]), sha3_256("a", &[b"bc"]));
        let mut manual = Sha3_256::new();
        manual.update([2u8]);
        manual.update(b"ab");
        manual.update(b"c");
        assert_eq!(sha3_256("ab", &[b"c"]), <[u8; 32]>::from(manual.finalize()));
    }
}
