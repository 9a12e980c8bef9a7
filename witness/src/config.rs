//! The witness's TOML configuration.

use chainiac_cosi::PublicKey;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Where to listen (UDP, QUIC).
    pub listen: SocketAddr,
    /// The `host:port` others reach this node at (goes into its roster entry).
    pub address: String,
    /// RocksDB directory; relative paths are relative to the config file.
    pub data_dir: PathBuf,
    /// The node key (mode 0600); relative paths are relative to the config file.
    pub key_file: PathBuf,
    /// Children per node in cosigning trees.
    #[serde(default = "defaults::branching")]
    pub branching: u32,
    /// How long to wait for one peer in a round.
    #[serde(default = "defaults::peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    /// How far a proposed block's timestamp may be from this node's clock.
    #[serde(default = "defaults::max_clock_skew_ms")]
    pub max_clock_skew_ms: u64,
    /// How long an announced block holds its index against other proposals before any
    /// response is given for it.
    #[serde(default = "defaults::reservation_ms")]
    pub reservation_ms: u64,
    /// How often the timeline gets a new block when nothing moved (a block follows sooner
    /// when a project head moves).
    #[serde(default = "defaults::timeline_interval_ms")]
    pub timeline_interval_ms: u64,
    /// How long to wait for a verifier to rebuild a submitted release.
    #[serde(default = "defaults::build_timeout_ms")]
    pub build_timeout_ms: u64,
    /// Witnesses allowed to send peer messages for chains this node does not serve yet
    /// (besides the members of the timelines it serves): what a new member of a cothority
    /// configures to learn its chains.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// How many chains one caller (a client key, and separately an IP address) may create
    /// here in 24 hours, when `chain_creators` is empty.
    #[serde(default = "defaults::chain_quota_per_day")]
    pub chain_quota_per_day: u32,
    /// Allow-list mode: when not empty, only these keys (hex) may create chains here, with no
    /// quota.
    #[serde(default)]
    pub chain_creators: Vec<String>,
    /// How many attestations one rebuilder key may submit here per hour (SPEC §11.8).
    #[serde(default = "defaults::rebuilds_per_hour")]
    pub rebuilds_per_hour: u32,
    /// A rebuilder with this many disagreements (attestations that did not reproduce a
    /// release) within `rebuild_disagreement_window_days` is throttled: its attestations
    /// are refused until the oldest of them leaves the window. 0: never.
    #[serde(default = "defaults::rebuild_disagreement_limit")]
    pub rebuild_disagreement_limit: u32,
    #[serde(default = "defaults::rebuild_disagreement_window_days")]
    pub rebuild_disagreement_window_days: u64,
    /// How long a rebuilder's attestation waits here for others about the same release
    /// before they are appended together: one rebuilds block and one summary block per
    /// batch, so a client following the project downloads one head move for all of them
    /// (SPEC §11.8). 0: each is appended at once, and `SubmitRebuild` answers `Appended`.
    #[serde(default = "defaults::rebuild_batch_seconds")]
    pub rebuild_batch_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Hex public key.
    pub key: String,
    pub address: String,
}

impl Peer {
    pub fn public_key(&self) -> Option<PublicKey> {
        PublicKey::from_hex(&self.key).ok()
    }
}

mod defaults {
    pub fn branching() -> u32 {
        8
    }
    pub fn peer_timeout_ms() -> u64 {
        2_000
    }
    pub fn max_clock_skew_ms() -> u64 {
        30_000
    }
    pub fn reservation_ms() -> u64 {
        10_000
    }
    pub fn timeline_interval_ms() -> u64 {
        10_000
    }
    pub fn build_timeout_ms() -> u64 {
        15 * 60_000
    }
    pub fn chain_quota_per_day() -> u32 {
        64
    }
    pub fn rebuilds_per_hour() -> u32 {
        60
    }
    pub fn rebuild_disagreement_limit() -> u32 {
        3
    }
    pub fn rebuild_disagreement_window_days() -> u64 {
        7
    }
    pub fn rebuild_batch_seconds() -> u64 {
        3600
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

impl WitnessConfig {
    /// A config for a node listening on `listen`, with files under `dir`.
    pub fn new(listen: SocketAddr, address: String) -> Self {
        WitnessConfig {
            listen,
            address,
            data_dir: PathBuf::from("data"),
            key_file: PathBuf::from("node.key"),
            branching: defaults::branching(),
            peer_timeout_ms: defaults::peer_timeout_ms(),
            max_clock_skew_ms: defaults::max_clock_skew_ms(),
            reservation_ms: defaults::reservation_ms(),
            timeline_interval_ms: defaults::timeline_interval_ms(),
            build_timeout_ms: defaults::build_timeout_ms(),
            peers: Vec::new(),
            chain_quota_per_day: defaults::chain_quota_per_day(),
            chain_creators: Vec::new(),
            rebuilds_per_hour: defaults::rebuilds_per_hour(),
            rebuild_disagreement_limit: defaults::rebuild_disagreement_limit(),
            rebuild_disagreement_window_days: defaults::rebuild_disagreement_window_days(),
            rebuild_batch_seconds: defaults::rebuild_batch_seconds(),
        }
    }

    /// Reads a config file and makes its relative paths relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name.clone(), source })?;
        let mut config: WitnessConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid { path: name.clone(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.key_file = base.join(&config.key_file);
        for peer in &config.peers {
            if peer.public_key().is_none() {
                return Err(ConfigError::Invalid {
                    path: name,
                    message: format!("peer key {} is not a valid key", peer.key),
                });
            }
        }
        for key in &config.chain_creators {
            if PublicKey::from_hex(key).is_err() {
                return Err(ConfigError::Invalid {
                    path: name,
                    message: format!("chain creator key {key} is not a valid key"),
                });
            }
        }
        if config.branching == 0 {
            return Err(ConfigError::Invalid { path: name, message: "branching must be at least 1".into() });
        }
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialize")
    }

    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }

    /// The allow-listed chain creators (valid keys: checked on load).
    pub fn creators(&self) -> Vec<PublicKey> {
        self.chain_creators.iter().filter_map(|k| PublicKey::from_hex(k).ok()).collect()
    }
}

/// A roster entry as operators exchange it: what `chainiac witness init` prints and a
/// roster file lists (`[[member]]` tables).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    /// Hex public key.
    pub key: String,
    /// Hex proof of possession (64 bytes).
    pub proof_of_possession: String,
    pub address: String,
}

/// A roster file: `[[member]]` entries, in roster order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterFile {
    pub member: Vec<MemberEntry>,
}

impl MemberEntry {
    pub fn from_member(member: &chainiac_cosi::Member) -> Self {
        MemberEntry {
            key: member.key.to_string(),
            proof_of_possession: hex::encode(member.proof_of_possession.0),
            address: member.address.clone(),
        }
    }

    /// The member this entry describes; the key is decoded strictly (the proof is checked
    /// when the roster is built).
    pub fn to_member(&self) -> Result<chainiac_cosi::Member, String> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(&self.key, &mut key).map_err(|_| format!("key {} is not 64 hex digits", self.key))?;
        let key = PublicKey::from_bytes(&key).map_err(|e| format!("key {}: {e}", self.key))?;
        let mut pop = [0u8; 64];
        hex::decode_to_slice(&self.proof_of_possession, &mut pop)
            .map_err(|_| format!("proof of possession of {} is not 128 hex digits", self.key))?;
        Ok(chainiac_cosi::Member {
            key,
            proof_of_possession: chainiac_cosi::ProofOfPossession(pop),
            address: self.address.clone(),
        })
    }
}

impl RosterFile {
    /// The roster, validated (proofs of possession included).
    pub fn to_roster(&self) -> Result<chainiac_cosi::Roster, String> {
        let members = self.member.iter().map(MemberEntry::to_member).collect::<Result<Vec<_>, _>>()?;
        chainiac_cosi::Roster::new(members).map_err(|e| e.to_string())
    }
}
