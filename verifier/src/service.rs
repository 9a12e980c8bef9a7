//! The verifier as a network service: build jobs and queries over QUIC, and its TOML
//! configuration.

use crate::sandbox::{Isolation, Limits};
use crate::{network_isolation_available, Settings, Verifier};
use chainiac_cosi::PublicKey;
use chainiac_proto::frame::FrameClass;
use chainiac_proto::message::VerifierStatus;
use chainiac_proto::message::{ErrorCode, ErrorReply};
use chainiac_proto::server::Handler;
use chainiac_proto::{Request, Response};
use chainiac_skipchain::ChainId;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The largest differing artifact sent in one answer (the response frame is 64 MiB).
const ARTIFACT_ANSWER_LIMIT: usize = 60 << 20;

/// Verifiers take queries and build jobs.
pub const ALLOWED: &[FrameClass] = &[FrameClass::Query, FrameClass::Build];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierConfig {
    pub listen: SocketAddr,
    /// The `host:port` witnesses reach this verifier at (what goes into policies).
    pub address: String,
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    #[serde(default = "defaults::time_limit_s")]
    pub time_limit_s: u64,
    #[serde(default = "defaults::max_output_bytes")]
    pub max_output_bytes: u64,
    /// Memory of a whole build where per-build cgroups are available, and address space of
    /// each of its processes always.
    #[serde(default = "defaults::max_memory_bytes")]
    pub max_memory_bytes: u64,
    /// Processes of a whole build where per-build cgroups are available; otherwise of the
    /// build user, shared by the builds running at once.
    #[serde(default = "defaults::max_processes")]
    pub max_processes: u64,
    /// Size of each of the tmpfs that hold a sandboxed build's `HOME` and `TMPDIR`.
    #[serde(default = "defaults::tmpfs_bytes")]
    pub tmpfs_bytes: u64,
    /// How builds are confined: `"bubblewrap"` (the default; the verifier refuses to start
    /// if it does not work here) or `"none"` (unconfined, chosen explicitly).
    #[serde(default)]
    pub isolation: Isolation,
    /// With `isolation = "none"`: `true` requires a new network namespace for builds,
    /// `false` never, absent when the machine allows it.
    #[serde(default)]
    pub isolate_network: Option<bool>,
    /// Keys (hex) that may send build jobs and read build logs: the witnesses of the chains
    /// whose policies name this verifier (`chainiac verifier allow --roster`), and release
    /// managers it serves. The verifier's own key (its operator's) always may. Attestations
    /// and the status are open to anyone.
    #[serde(default)]
    pub build_callers: Vec<String>,
    /// Release chains (hex genesis ids) this verifier rebuilds for when a witness asks:
    /// those whose policies name it and whose projects its operator agreed to serve. A
    /// witness asks for any chain whose policy names this verifier, and anyone can create a
    /// chain with such a policy, so a chain not listed is refused.
    #[serde(default)]
    pub build_chains: Vec<String>,
    /// Days the artifacts of a build that did not match are kept under
    /// `data_dir/differing/<manifest id>/`, for the operator to compare (diffoscope).
    #[serde(default = "defaults::keep_differing_days")]
    pub keep_differing_days: u64,
}

mod defaults {
    pub fn concurrency() -> usize {
        2
    }
    pub fn time_limit_s() -> u64 {
        600
    }
    pub fn max_output_bytes() -> u64 {
        2 << 30
    }
    pub fn max_memory_bytes() -> u64 {
        8 << 30
    }
    pub fn max_processes() -> u64 {
        4096
    }
    pub fn tmpfs_bytes() -> u64 {
        1 << 30
    }
    pub fn keep_differing_days() -> u64 {
        7
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

impl VerifierConfig {
    pub fn new(listen: SocketAddr, address: String) -> Self {
        VerifierConfig {
            listen,
            address,
            data_dir: PathBuf::from("data"),
            key_file: PathBuf::from("node.key"),
            concurrency: defaults::concurrency(),
            time_limit_s: defaults::time_limit_s(),
            max_output_bytes: defaults::max_output_bytes(),
            max_memory_bytes: defaults::max_memory_bytes(),
            max_processes: defaults::max_processes(),
            tmpfs_bytes: defaults::tmpfs_bytes(),
            isolation: Isolation::default(),
            isolate_network: None,
            build_callers: Vec::new(),
            build_chains: Vec::new(),
            keep_differing_days: defaults::keep_differing_days(),
        }
    }

    /// The chains `build_chains` names (checked on load).
    pub fn chains(&self) -> Vec<ChainId> {
        self.build_chains.iter().filter_map(|c| ChainId::from_hex(c)).collect()
    }

    /// Adds `chain` to `build_chains` unless it is there; whether it was added.
    pub fn allow_chain(&mut self, chain: &ChainId) -> bool {
        if self.chains().contains(chain) {
            return false;
        }
        self.build_chains.push(chain.to_hex());
        true
    }

    /// The keys `build_callers` names (checked on load).
    pub fn callers(&self) -> Vec<PublicKey> {
        self.build_callers.iter().filter_map(|k| PublicKey::from_hex(k).ok()).collect()
    }

    /// Adds `key` to `build_callers` unless it is there; whether it was added.
    pub fn allow(&mut self, key: &PublicKey) -> bool {
        if self.callers().contains(key) {
            return false;
        }
        self.build_callers.push(key.to_string());
        true
    }

    /// Reads a config file; relative paths are relative to its folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name.clone(), source })?;
        let mut config: VerifierConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid { path: name.clone(), message: e.to_string() })?;
        // Absolute, so that builds (which run elsewhere) and logs name real places.
        let base = std::path::absolute(path.parent().unwrap_or(Path::new(".")))
            .map_err(|source| ConfigError::Read { path: name.clone(), source })?;
        config.data_dir = base.join(&config.data_dir);
        config.key_file = base.join(&config.key_file);
        for key in &config.build_callers {
            if let Err(reason) = PublicKey::from_hex(key) {
                return Err(ConfigError::Invalid { path: name, message: format!("build_callers: {reason}") });
            }
        }
        for chain in &config.build_chains {
            if ChainId::from_hex(chain).is_none() {
                let message = format!("build_chains: {chain:?} is not a 64-digit hex chain id");
                return Err(ConfigError::Invalid { path: name, message });
            }
        }
        if config.isolate_network == Some(true) && !network_isolation_available() {
            return Err(ConfigError::Invalid {
                path: name,
                message: "isolate_network = true, but `unshare --net` does not work here".into(),
            });
        }
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configs serialize")
    }

    pub fn settings(&self) -> Settings {
        Settings {
            data_dir: self.data_dir.clone(),
            limits: Limits {
                time_limit: Duration::from_secs(self.time_limit_s),
                max_output_bytes: self.max_output_bytes,
                max_memory_bytes: self.max_memory_bytes,
                max_processes: self.max_processes,
                tmpfs_bytes: self.tmpfs_bytes,
                ..Limits::default()
            },
            concurrency: self.concurrency,
            isolation: self.isolation,
            bwrap: PathBuf::from("bwrap"),
            isolate_network: self.isolate_network.unwrap_or_else(network_isolation_available),
            keep_differing: Duration::from_secs(self.keep_differing_days.saturating_mul(86_400)),
        }
    }
}

/// Who may use a verifier's builds: `build_callers` and `build_chains`, as last read.
#[derive(Debug, Clone)]
struct Access {
    /// Who may build and read logs besides the verifier's own key.
    callers: Vec<PublicKey>,
    /// The chains it builds for when a witness asks.
    chains: Vec<ChainId>,
    /// The config file's modification time when they were read.
    read_at: Option<std::time::SystemTime>,
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// A verifier behind its QUIC endpoint.
pub struct Service {
    pub verifier: Arc<Verifier>,
    address: String,
    access: std::sync::RwLock<Access>,
    /// The config file `build_callers` and `build_chains` are read again from when it
    /// changes (`chainiac verifier allow` applies without a restart); none: fixed.
    config: Option<PathBuf>,
    refused_frames: AtomicU64,
    refused_requests: AtomicU64,
}

impl Service {
    /// `address`: where witnesses reach it (for the status); `callers`: the keys that may
    /// send build jobs and read build logs besides its own; `chains`: the release chains
    /// it builds for.
    pub fn new(verifier: Arc<Verifier>, address: String, callers: Vec<PublicKey>, chains: Vec<ChainId>) -> Arc<Self> {
        Arc::new(Self::build(verifier, address, callers, chains))
    }

    /// A service whose callers and chains are `config`'s, read again whenever the file
    /// changes (checked at each build, log or artifact request); a config that no longer
    /// loads keeps the last good lists, with a warning.
    pub fn with_config(verifier: Arc<Verifier>, config: &VerifierConfig, path: &Path) -> Arc<Self> {
        let mut service = Self::build(verifier, config.address.clone(), config.callers(), config.chains());
        service.access.get_mut().expect("lock").read_at = modified(path);
        service.config = Some(path.to_path_buf());
        Arc::new(service)
    }

    fn build(verifier: Arc<Verifier>, address: String, callers: Vec<PublicKey>, chains: Vec<ChainId>) -> Self {
        Service {
            verifier,
            address,
            access: std::sync::RwLock::new(Access { callers, chains, read_at: None }),
            config: None,
            refused_frames: AtomicU64::new(0),
            refused_requests: AtomicU64::new(0),
        }
    }

    pub fn refused_frames(&self) -> u64 {
        self.refused_frames.load(Ordering::Relaxed)
    }

    /// The callers and chains, read again first if the config file changed.
    fn access(&self) -> Access {
        if let Some(path) = &self.config {
            let now = modified(path);
            let stale = self.access.read().expect("lock").read_at != now;
            if stale {
                let mut access = self.access.write().expect("lock");
                if access.read_at != now {
                    access.read_at = now;
                    match VerifierConfig::load(path) {
                        Ok(config) => {
                            access.callers = config.callers();
                            access.chains = config.chains();
                            tracing::info!(
                                callers = access.callers.len(),
                                chains = access.chains.len(),
                                "build_callers and build_chains read again from {}",
                                path.display()
                            );
                        }
                        Err(e) => tracing::warn!("{e}; keeping the build_callers and build_chains read before"),
                    }
                }
            }
        }
        self.access.read().expect("lock").clone()
    }

    /// Whether `caller` may send build jobs and read build logs here.
    pub fn may_build(&self, caller: &PublicKey) -> bool {
        *caller == self.verifier.public_key() || self.access().callers.contains(caller)
    }

    fn refuse(&self, code: ErrorCode, message: String) -> Response {
        self.refused_requests.fetch_add(1, Ordering::Relaxed);
        Response::Error(ErrorReply::new(code, message))
    }

    fn status(&self) -> Response {
        Response::VerifierStatus(VerifierStatus {
            address: self.address.clone(),
            refused_requests: self.refused_requests.load(Ordering::Relaxed),
            refused_frames: self.refused_frames(),
            ..self.verifier.status()
        })
    }
}

impl Handler for Service {
    async fn handle(self: Arc<Self>, caller: PublicKey, _from: SocketAddr, request: Request) -> Response {
        let internal = |e: crate::VerifierError| Response::Error(ErrorReply::new(ErrorCode::Internal, e.to_string()));
        // Builds cost minutes of CPU and logs show what a build printed: only the witnesses
        // and release managers the operator named, and the operator.
        let restricted =
            matches!(request, Request::Build { .. } | Request::GetBuildLog { .. } | Request::GetArtifact { .. });
        if restricted && !self.may_build(&caller) {
            return self.refuse(
                ErrorCode::Forbidden,
                format!(
                    "key {caller} may not send {} to this verifier; its operator lists the keys that may in build_callers",
                    request.name()
                ),
            );
        }
        match request {
            Request::Status => self.status(),
            Request::Build { chain: Some(chain), .. } if !self.access().chains.contains(&chain) => self.refuse(
                ErrorCode::Forbidden,
                format!("this verifier does not build for chain {chain}; its operator lists the chains it serves in build_chains"),
            ),
            // Only the operator builds for no chain: anyone else names one it serves.
            Request::Build { chain: None, .. } if caller != self.verifier.public_key() => self.refuse(
                ErrorCode::Forbidden,
                "a build job names the release chain it is for; only this verifier's operator may send one without"
                    .to_string(),
            ),
            Request::Build { manifest, source, .. } => match self.verifier.build(&manifest, &source).await {
                Ok(attestation) => Response::Attestation(Some(attestation)),
                Err(e @ crate::VerifierError::SourceMismatch) => self.refuse(ErrorCode::BadRequest, e.to_string()),
                Err(e) => internal(e),
            },
            Request::GetAttestation { manifest } => {
                self.verifier.attestation(&manifest).map(Response::Attestation).unwrap_or_else(internal)
            }
            Request::GetArtifact { manifest, path } => match self.verifier.differing_artifact(&manifest, &path) {
                Some(bytes) if bytes.len() > ARTIFACT_ANSWER_LIMIT => self.refuse(
                    ErrorCode::Refused,
                    format!("artifact {path:?} is {} bytes, more than one answer carries; its operator can copy it", bytes.len()),
                ),
                kept => Response::Artifact(kept),
            },
            Request::GetBuildLog { manifest } => {
                self.verifier.log(&manifest).map(Response::BuildLog).unwrap_or_else(internal)
            }
            other => Response::Error(ErrorReply::new(
                ErrorCode::BadRequest,
                format!("this is a build verifier; it does not answer {}", other.name()),
            )),
        }
    }

    fn refused(&self, _reason: &str) {
        self.refused_frames.fetch_add(1, Ordering::Relaxed);
    }
}
