//! # chainiac-cosi
//!
//! Collective signing for chainiac: Ed25519 keys with proofs of possession, rosters, and a
//! two-nonce (MuSig2 / SpeedyMuSig style) collective Schnorr signature whose result, with
//! every member present, is a plain RFC 8032 Ed25519 signature under the roster's summed key.
//!
//! This crate does no I/O and knows no async runtime: [`protocol`] holds the signer,
//! aggregator and leader as state machines that take messages and return messages, and
//! [`simulation`] drives a whole cothority of them in one process.
//!
//! ```
//! use chainiac_cosi::{simulation, Member, Roster, SecretKey, verify};
//! use std::sync::Arc;
//! let mut rng = rand_core::OsRng;
//! let keys: Vec<SecretKey> = (0..5).map(|_| SecretKey::generate(&mut rng)).collect();
//! let roster = Arc::new(Roster::new(keys.iter().map(|k| Member::new(k, "")).collect()).unwrap());
//! let config = simulation::Config { threshold: 4, branching: 2, leader: 0, max_attempts: 3 };
//! let behaviours = [simulation::Behaviour::Honest; 5];
//! let outcome = simulation::run(&roster, &keys, b"block id", &behaviours, &config, &mut rng).unwrap();
//! verify(&roster, 4, b"block id", &outcome.signature).unwrap();
//! ```

pub mod bytes;
pub mod hash;
mod keys;
mod mask;
pub mod protocol;
mod roster;
mod signature;
pub mod simulation;

pub use keys::{pop_message, PointError, ProofOfPossession, PublicKey, SecretKey};
pub use mask::{Mask, MaskError, WireMask};
pub use roster::{Member, Roster, RosterError, MAX_ADDRESS_LEN, MAX_MEMBERS};
pub use signature::{verify, Signature, VerifyError};
