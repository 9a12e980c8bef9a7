//! # chainiac-verifier
//!
//! A build verifier: given a release manifest and its source archive, it unpacks the source
//! safely into a fresh directory, runs the recipe in a clean, normalized environment with
//! limits, compares what came out with the manifest's artifacts bit for bit, and signs an
//! attestation — reproduced, mismatch (which artifacts, which hashes) or failed (why).
//! Deterministic outcomes are kept, with the build log: the same manifest asked twice gets
//! the stored attestation. An outcome that may depend on the moment — a time limit, a kill
//! by signal, the verifier's own trouble — is signed but not kept, and neither is a failure
//! from another build environment (after the operator fixed or upgraded the verifier).

pub mod cgroup;
pub mod sandbox;
pub mod service;
pub mod unpack;

use chainiac_cosi::hash;
use chainiac_cosi::SecretKey;
use chainiac_proto::message::VerifierStatus;
use chainiac_release::{content_hash, Artifact, Attestation, AttestationBody, Manifest, ManifestId, Outcome};
use rand_core::RngCore;
use sandbox::Limits;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::info;

/// How long an outcome that is not kept (it may depend on the moment) is answered again
/// before a request builds the manifest again: requests waiting behind a build get its
/// outcome, and replaying a signed manifest to every witness costs each verifier at most
/// one build per this while (found by review).
pub const BUILD_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// manifest id → encoded [`Attestation`].
pub const CF_ATTESTATIONS: &str = "attestations";
/// manifest id → build log bytes.
pub const CF_LOGS: &str = "build_logs";
/// Digest of the build environment: `SHA3-256(tagged(TAG_ENVIRONMENT) || description)`.
pub const TAG_ENVIRONMENT: &str = "chainiac/v1/verifier/environment";

#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("verifier store: {0}")]
    Store(#[from] rocksdb::Error),
    #[error("stored attestation does not decode: {0}")]
    Corrupt(String),
    #[error("preparing the build directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("builds cannot be confined: {reason}")]
    Isolation { reason: String },
    /// The bytes sent are not the manifest's source: nothing is built, signed or kept (an
    /// attestation would speak for the manifest, and anyone can send wrong bytes).
    #[error("the source archive does not match the manifest's hash and size; nothing was built")]
    SourceMismatch,
}

/// A verifier's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub limits: Limits,
    /// Builds running at once; more wait their turn.
    pub concurrency: usize,
    /// How builds are confined.
    pub isolation: sandbox::Isolation,
    /// The bubblewrap program (`bwrap` on the `PATH` by default).
    pub bwrap: PathBuf,
    /// Without bubblewrap: run builds in a new network namespace (needs `unshare --net`).
    pub isolate_network: bool,
    /// How long the artifacts of a mismatched build are kept for the operator to compare
    /// (`data_dir/differing/<manifest id>/<artifact path>`).
    pub keep_differing: std::time::Duration,
}

/// A week: how long differing artifacts are kept unless the config says otherwise.
pub const DEFAULT_KEEP_DIFFERING: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Where a mismatched build's artifacts are kept, under the data directory.
pub const DIFFERING_DIR: &str = "differing";

pub struct Verifier {
    key: SecretKey,
    settings: Settings,
    db: rocksdb::DB,
    slots: Semaphore,
    environment: [u8; 32],
    environment_description: String,
    /// Where builds' own cgroups go; none: rlimits only (SPEC §11.6).
    cgroups: Option<cgroup::Cgroups>,
    counters: Counters,
    started: std::time::Instant,
    /// Outcomes not kept, answered again for a while (in memory only).
    recent: std::sync::Mutex<std::collections::HashMap<ManifestId, (Attestation, std::time::Instant)>>,
    /// Manifests being built (one build of a manifest at a time).
    building: std::sync::Mutex<std::collections::HashMap<ManifestId, Arc<tokio::sync::Mutex<()>>>>,
}

/// What the verifier did since it started (`chainiac verifier status`).
#[derive(Debug, Default)]
struct Counters {
    builds: std::sync::atomic::AtomicU64,
    reproduced: std::sync::atomic::AtomicU64,
    mismatched: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    not_kept: std::sync::atomic::AtomicU64,
    answered_from_store: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicU64,
    waiting: std::sync::atomic::AtomicU64,
}

/// Whether `unshare --net` works on this machine (root, or unprivileged user namespaces).
pub fn network_isolation_available() -> bool {
    std::process::Command::new("unshare")
        .args(["--net", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Where this process can give each build its own cgroup (`None`, with a warning, when it
/// cannot: builds are then limited per process and per user only).
/// Found once per process: a second discovery would find the process in the leaf the first
/// may have moved it to (cgroup v2) and nest another.
fn discover_cgroups() -> Option<cgroup::Cgroups> {
    static FOUND: std::sync::OnceLock<Option<cgroup::Cgroups>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| match cgroup::Cgroups::discover() {
            Ok(cgroups) => Some(cgroups),
            Err(reason) => {
                tracing::warn!(
                    "no per-build cgroups ({reason}): each build's memory is limited per process and its processes per user, shared by the builds running at once; run the verifier as root or in a delegated cgroup v2 subtree for whole-build limits"
                );
                None
            }
        })
        .clone()
}

fn describe_environment(settings: &Settings, cgroups: Option<&cgroup::Cgroups>) -> String {
    let run = |argv: &[&str]| {
        std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "absent".into())
    };
    let limits = &settings.limits;
    format!(
        "os={} arch={} kernel={} cc={} make={} isolation={} network={} cgroups={} limits=time:{}s,memory:{},processes:{},output:{},tmpfs:{},files:{},unpacked:{}",
        std::env::consts::OS,
        std::env::consts::ARCH,
        run(&["uname", "-r"]),
        run(&["cc", "--version"]),
        run(&["make", "--version"]),
        settings.isolation.name(),
        match settings.isolation {
            sandbox::Isolation::Bubblewrap => "loopback only",
            sandbox::Isolation::None if settings.isolate_network => "isolated",
            sandbox::Isolation::None => "shared",
        },
        cgroups.map_or("none", |c| c.name()),
        // A kept failure (too much output, say) is another environment's once the
        // operator changes a limit, and is built again.
        limits.time_limit.as_secs(),
        limits.max_memory_bytes,
        limits.max_processes,
        limits.max_output_bytes,
        limits.tmpfs_bytes,
        limits.max_files,
        limits.max_unpacked_bytes,
    )
}

impl Verifier {
    /// Opens (creating if needed) the verifier's store under `settings.data_dir`.
    pub fn open(key: SecretKey, settings: Settings) -> Result<Arc<Self>, VerifierError> {
        check_confinement(&settings)?;
        std::fs::create_dir_all(&settings.data_dir)?;
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&options, settings.data_dir.join("db"), [CF_ATTESTATIONS, CF_LOGS])?;
        let cgroups = discover_cgroups();
        let environment_description = describe_environment(&settings, cgroups.as_ref());
        let environment = hash::sha3_256(TAG_ENVIRONMENT, &[environment_description.as_bytes()]);
        info!(environment = %environment_description, "verifier environment");
        Ok(Arc::new(Verifier {
            key,
            slots: Semaphore::new(settings.concurrency.max(1)),
            settings,
            db,
            environment,
            environment_description,
            cgroups,
            counters: Counters::default(),
            started: std::time::Instant::now(),
            building: Default::default(),
            recent: Default::default(),
        }))
    }

    /// Its identity, confinement and build counters (the service adds its address and
    /// what it refused).
    pub fn status(&self) -> VerifierStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counters;
        VerifierStatus {
            key: self.key.public_key().to_bytes(),
            address: String::new(),
            isolation: self.settings.isolation.name().into(),
            environment: self.environment_description.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            builds: c.builds.load(Relaxed),
            reproduced: c.reproduced.load(Relaxed),
            mismatched: c.mismatched.load(Relaxed),
            failed: c.failed.load(Relaxed),
            not_kept: c.not_kept.load(Relaxed),
            answered_from_store: c.answered_from_store.load(Relaxed),
            running: c.running.load(Relaxed),
            waiting: c.waiting.load(Relaxed),
            refused_requests: 0,
            refused_frames: 0,
        }
    }

    /// The kept attestation for `manifest` that still holds here: any but a failure
    /// signed in another build environment (the operator may have fixed what failed), and
    /// none if what is kept no longer decodes (kept by an older version: built again).
    fn kept(&self, manifest: &ManifestId) -> Result<Option<Attestation>, VerifierError> {
        let kept = match self.attestation(manifest) {
            Err(VerifierError::Corrupt(reason)) => {
                tracing::warn!(%manifest, "a kept attestation does not decode ({reason}); building again");
                None
            }
            other => other?,
        };
        Ok(kept.filter(|a| a.body.environment == self.environment || !matches!(a.body.outcome, Outcome::Failed { .. })))
    }

    pub fn public_key(&self) -> chainiac_cosi::PublicKey {
        self.key.public_key()
    }

    pub fn environment_description(&self) -> &str {
        &self.environment_description
    }

    /// Where builds get their own cgroups, if they do here.
    pub fn cgroups(&self) -> Option<&cgroup::Cgroups> {
        self.cgroups.as_ref()
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    /// The attestation stored for `manifest`, if it was built before.
    pub fn attestation(&self, manifest: &ManifestId) -> Result<Option<Attestation>, VerifierError> {
        match self.db.get_pinned_cf(self.cf(CF_ATTESTATIONS), manifest.0)? {
            None => Ok(None),
            Some(bytes) => Attestation::from_bytes(&bytes).map(Some).map_err(VerifierError::Corrupt),
        }
    }

    /// What the last mismatched build of `manifest` made of artifact `path`, while it is
    /// kept (`Settings::keep_differing`); `None` for a path that is not a plain relative one.
    pub fn differing_artifact(&self, manifest: &ManifestId, path: &str) -> Option<Vec<u8>> {
        if path.is_empty() || path == "." || !chainiac_release::rules::is_safe_relative(path) {
            return None;
        }
        let kept = self.settings.data_dir.join(DIFFERING_DIR).join(hex::encode(manifest.0)).canonicalize().ok()?;
        sandbox::read_inside(&kept, path)
    }

    /// The build log kept for `manifest`.
    pub fn log(&self, manifest: &ManifestId) -> Result<Option<Vec<u8>>, VerifierError> {
        Ok(self.db.get_cf(self.cf(CF_LOGS), manifest.0)?)
    }

    /// Builds `manifest` from `source` (or returns the kept attestation) and signs the
    /// outcome. Every failure to build is an attestation too (`Failed`, with the reason);
    /// only the verifier's own storage failing, and a source that is not the manifest's,
    /// are errors. The kept attestation is keyed by the manifest id, which covers the
    /// source's hash and size.
    pub async fn build(&self, manifest: &Manifest, source: &[u8]) -> Result<Attestation, VerifierError> {
        use std::sync::atomic::Ordering::Relaxed;
        let id = manifest.id();
        if let Some(stored) = self.kept(&id)?.or_else(|| self.recent(&id)) {
            self.counters.answered_from_store.fetch_add(1, Relaxed);
            return Ok(stored);
        }
        if source.len() as u64 != manifest.source.size || content_hash(source) != manifest.source.sha3 {
            return Err(VerifierError::SourceMismatch);
        }
        // One build of a manifest at a time: two at once could sign different outcomes
        // for one manifest and environment (found by review), the later overwriting.
        let waiting = Gauge::up(&self.counters.waiting);
        let manifest_lock = self.manifest_lock(&id);
        let _one_build_per_manifest = manifest_lock.lock().await;
        let _slot = self.slots.acquire().await.expect("the semaphore is never closed");
        drop(waiting);
        if let Some(stored) = self.kept(&id)?.or_else(|| self.recent(&id)) {
            self.counters.answered_from_store.fetch_add(1, Relaxed);
            return Ok(stored); // built while we waited, or a moment ago
        }
        self.counters.builds.fetch_add(1, Relaxed);
        let running = Gauge::up(&self.counters.running);
        let rebuilt = self.rebuild(manifest, source).await;
        drop(running);
        let (outcome, log, deterministic) = rebuilt?;
        let counter = match outcome {
            Outcome::Reproduced => &self.counters.reproduced,
            Outcome::Mismatch { .. } => &self.counters.mismatched,
            Outcome::Failed { .. } => &self.counters.failed,
        };
        counter.fetch_add(1, Relaxed);
        info!(manifest = %id, outcome = ?outcome_name(&outcome), kept = deterministic, "built");
        let body = AttestationBody {
            verifier: self.key.public_key(),
            manifest: id,
            outcome,
            environment: self.environment,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            isolation: self.settings.isolation.level(),
        };
        let attestation = Attestation::sign(&self.key, body);
        let mut batch = rocksdb::WriteBatch::default();
        // Under the manifest's lock nothing of this environment is kept (else it would have
        // been answered): a kept outcome is written once, never replaced by a later one.
        // The latest log is kept either way: it is how the operator sees why.
        if deterministic {
            batch.put_cf(self.cf(CF_ATTESTATIONS), id.0, attestation.to_bytes());
        } else {
            self.counters.not_kept.fetch_add(1, Relaxed);
            let mut recent = self.recent.lock().expect("lock");
            recent.retain(|_, (_, at)| at.elapsed() < BUILD_AGAIN_AFTER);
            recent.insert(id, (attestation.clone(), std::time::Instant::now()));
        }
        batch.put_cf(self.cf(CF_LOGS), id.0, &log);
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(attestation)
    }

    /// An outcome not kept, signed less than [`BUILD_AGAIN_AFTER`] ago.
    fn recent(&self, manifest: &ManifestId) -> Option<Attestation> {
        let recent = self.recent.lock().expect("lock");
        recent.get(manifest).filter(|(_, at)| at.elapsed() < BUILD_AGAIN_AFTER).map(|(a, _)| a.clone())
    }

    /// The lock that keeps builds of `manifest` one at a time (dropped from the map once
    /// nobody holds or waits for it).
    fn manifest_lock(&self, manifest: &ManifestId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.building.lock().expect("lock");
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(*manifest).or_default().clone()
    }

    /// The outcome, the log, and whether the outcome is deterministic (to be kept).
    async fn rebuild(&self, manifest: &Manifest, source: &[u8]) -> Result<(Outcome, Vec<u8>, bool), VerifierError> {
        let job = new_job(&self.settings, manifest)?;
        let root = job.0.join("src");
        let (result, mut log) = run_job(&self.settings, self.cgroups.as_ref(), manifest, source, &job.0, &root).await;
        let outcome = match result {
            Err(failure) => {
                let reason = failure.reason;
                log.extend_from_slice(format!("\n[chainiac-verifier] {reason}\n").as_bytes());
                (Outcome::Failed { reason }, log, failure.deterministic)
            }
            Ok(()) => (sandbox::compare(&root, &manifest.artifacts), log, true),
        };
        if let Outcome::Mismatch { artifacts } = &outcome.0 {
            self.keep_differing(manifest, &root, artifacts);
        }
        Ok(outcome)
    }

    /// Copies what a mismatched build made of each differing artifact to
    /// `data_dir/differing/<manifest id>/<path>` for the operator to compare with the
    /// release manager's (diffoscope), and drops copies older than `keep_differing`.
    fn keep_differing(&self, manifest: &Manifest, root: &Path, artifacts: &[chainiac_release::ArtifactMismatch]) {
        let differing = self.settings.data_dir.join(DIFFERING_DIR);
        if let Ok(entries) = std::fs::read_dir(&differing) {
            for entry in entries.flatten() {
                let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if old.is_some_and(|age| age > self.settings.keep_differing) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let Ok(root) = root.canonicalize() else { return };
        let kept = differing.join(hex::encode(manifest.id().0));
        for artifact in artifacts.iter().filter(|a| a.got.is_some()) {
            // The path passed the manifest's rules (plain, relative) and the bytes are read
            // from inside the job only.
            let Some(bytes) = sandbox::read_inside(&root, &artifact.path) else { continue };
            let target = kept.join(&artifact.path);
            let written =
                target.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&target, bytes));
            match written {
                Ok(()) => info!(artifact = %artifact.path, kept = %target.display(), "differing artifact kept"),
                Err(e) => tracing::warn!(artifact = %artifact.path, "could not keep the differing artifact: {e}"),
            }
        }
    }
}

/// A counter raised for as long as this lives: a request the server abandons (its
/// deadline) drops it wherever it was, and the counter comes back down.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A job directory, removed when dropped (also when the request is abandoned mid-build).
struct JobDir(PathBuf);

impl Drop for JobDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh job directory under `settings.data_dir/jobs`, with the source directory `src`
/// in it.
fn new_job(settings: &Settings, manifest: &Manifest) -> Result<JobDir, VerifierError> {
    let mut nonce = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let name = format!("{}-{}", hex::encode(&manifest.id().0[..8]), hex::encode(nonce));
    let job = JobDir(settings.data_dir.join("jobs").join(name));
    std::fs::create_dir_all(job.0.join("src"))?;
    Ok(job)
}

/// Checks the manifest, unpacks `source` into `root` and runs the recipe as `settings`
/// say: everything a verifier does before comparing. The failure says whether it is the
/// build's own (deterministic) or the moment's.
async fn run_job(
    settings: &Settings,
    cgroups: Option<&cgroup::Cgroups>,
    manifest: &Manifest,
    source: &[u8],
    job: &Path,
    root: &Path,
) -> (Result<(), sandbox::BuildFailure>, Vec<u8>) {
    let failed = |reason: String, deterministic: bool| {
        let log = reason.clone().into_bytes();
        (Err(sandbox::BuildFailure { reason, deterministic }), log)
    };
    if let Err(e) = chainiac_release::rules::check_manifest(manifest) {
        return failed(e.to_string(), true);
    }
    let limits = &settings.limits;
    if let Err(e) = unpack::unpack(source, root, limits) {
        // The archive's own fault, or the verifier's disk: only the first is kept.
        return failed(format!("unpacking the source: {e}"), !matches!(e, unpack::UnpackError::Io { .. }));
    }
    let epoch = match manifest.source_date_epoch() {
        Ok(epoch) => epoch,
        Err(reason) => return failed(reason, true),
    };
    let build_path = match sandbox::build_path(&manifest.project, &manifest.version) {
        Ok(path) => path,
        Err(reason) => return failed(reason, true),
    };
    let confinement = sandbox::Confinement {
        isolation: settings.isolation,
        bwrap: settings.bwrap.clone(),
        isolate_network: settings.isolate_network,
        build_path,
        cgroups: cgroups.cloned(),
    };
    let report = sandbox::run(&manifest.recipe, job, root, epoch, limits, &confinement).await;
    (report.result, report.log)
}

/// What a local build made: each named artifact's hash and size, or why the build failed.
#[derive(Debug)]
pub struct LocalBuild {
    pub result: Result<Vec<Artifact>, String>,
    pub log: Vec<u8>,
}

/// Builds `manifest` from `source` exactly as a verifier with `settings` would — the same
/// manifest checks, unpacking, sandbox, path inside it, environment and
/// `SOURCE_DATE_EPOCH` — in a fresh job under `settings.data_dir`, and hashes the files at
/// `manifest.artifacts`' paths (their hashes and sizes are ignored): what `chainiac
/// release prepare --build` records. Refuses, like [`Verifier::open`], a sandbox that does
/// not work here.
pub async fn build_locally(
    settings: &Settings,
    manifest: &Manifest,
    source: &[u8],
) -> Result<LocalBuild, VerifierError> {
    check_confinement(settings)?;
    let job = new_job(settings, manifest)?;
    let root = job.0.join("src");
    let (result, log) = run_job(settings, discover_cgroups().as_ref(), manifest, source, &job.0, &root).await;
    let result = match (result, root.canonicalize()) {
        (Err(failure), _) => Err(failure.reason),
        (Ok(()), Err(e)) => Err(format!("the build directory vanished: {e}")),
        (Ok(()), Ok(root)) => manifest
            .artifacts
            .iter()
            .map(|artifact| {
                let (sha3, size) = sandbox::hash_inside(&root, &artifact.path)
                    .ok_or_else(|| format!("the build made no file {:?}", artifact.path))?;
                Ok(Artifact { path: artifact.path.clone(), sha3, size })
            })
            .collect(),
    };
    Ok(LocalBuild { result, log })
}

/// That the sandbox `settings` choose works here (and, as root, that its builds can reach
/// the job directories).
fn check_confinement(settings: &Settings) -> Result<(), VerifierError> {
    if settings.isolation == sandbox::Isolation::Bubblewrap {
        sandbox::bubblewrap_works(&settings.bwrap).map_err(|reason| VerifierError::Isolation {
            reason: format!("{reason}; install bubblewrap, or set isolation = \"none\" to build unconfined"),
        })?;
        sandbox::jobs_reachable(&settings.data_dir.join("jobs"))
            .map_err(|reason| VerifierError::Isolation { reason })?;
    }
    Ok(())
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Reproduced => "reproduced",
        Outcome::Mismatch { .. } => "mismatch",
        Outcome::Failed { .. } => "failed",
    }
}
