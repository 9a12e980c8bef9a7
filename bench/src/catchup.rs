//! Scenario 1: a client catches up on PyPI-like data. Every byte counted is a serialized
//! block or proof a witness would send; every millisecond is the client decoding and
//! checking them. See `bench/README.md` for the model and the reasons behind it.

use crate::chains::{ChainBuilder, Cothority};
use crate::report::{bytes, Plot, Report, Series};
use anyhow::{bail, Context};
use chainiac_cosi::{hash, SecretKey};
use chainiac_proto::{
    ErrorCode, ErrorReply, LinkedQuery, ProofQuery, Response, TimelineBatch, MAX_HELD_APPOINTMENTS, MAX_PROOF_QUERIES,
    MAX_TIMELINE_CHAINS,
};
use chainiac_release::{
    content_hash, Artifact, Attestation, AttestationBody, DeveloperSignature, Manifest, Outcome, Policy, PolicyChange,
    RebuildSummary, Rebuilds, Recipe, ReleasePayload, RootSignature, SourceArchive, VerifierEntry, KIND_POLICY_CHANGE,
    KIND_REBUILDS, KIND_REBUILD_SUMMARY, KIND_RELEASE,
};
use chainiac_skipchain::authority::KIND_COMMITTEE;
use chainiac_skipchain::block::payload_hash;
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::timeline::{
    chain_prefix, changes_cost, inclusion_cost, ChainPrefix, ChangeList, HeadLeaf, HeadSet, TimelineEntry,
    KIND_TIMELINE,
};
use chainiac_skipchain::CatchUp;
use chainiac_skipchain::{
    Appointment, Appointments, Block, BlockId, ChainParams, ChainState, LinkedProof, PolicyChanged, Proof, ProofStep,
    Proposal, StepHeader, Verified,
};
use chainiac_verifier::unpack::days_from_civil;
use chainiac_witness::answers;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const DAY_MS: u64 = 86_400_000;
const MONTH_MS: f64 = 30.436_875 * DAY_MS as f64;
const YEAR_MS: u64 = 365 * DAY_MS + DAY_MS / 4;
const WITNESSES: usize = 16;
const THRESHOLD: u32 = 11;
/// How long the operators' approvals of a new roster stay valid (the chains move within it).
const APPROVAL_VALIDITY_MS: u64 = 30 * DAY_MS;

#[derive(Clone)]
pub struct Options {
    pub pypi: PathBuf,
    pub events: Option<PathBuf>,
    pub days: Vec<u64>,
    pub follows: Vec<usize>,
    pub timeline_interval_minutes: u64,
    pub roster_change_days: u64,
    /// Days since the newest roster change at "now".
    pub roster_phase_days: u64,
    pub key_rotation_days: u64,
    pub params: ChainParams,
    /// When clients update.
    pub now: Now,
    /// Appended to the plots' file names (a second run in one folder keeps the first's).
    pub plot_suffix: String,
    pub seed: u64,
    /// Rebuilders that each attest every release of the top `rebuilt_projects` projects,
    /// an hour apart after it (SPEC §11.8).
    pub rebuilders: usize,
    /// How many of the most popular projects the rebuilders attest ([`REBUILT_PROJECTS`]
    /// in the runs the tables report; fewer to tell what a client pays for the projects it
    /// follows from what it pays for the others).
    pub rebuilt_projects: usize,
    /// The witnesses' `rebuild_batch_seconds`: the attestations that arrive within it of
    /// the first one pending go into one rebuilds block and one summary block (0: each its
    /// own pair).
    pub rebuild_batch_ms: u64,
}

/// The projects rebuilders attest: the most popular ones.
pub const REBUILT_PROJECTS: usize = 1000;

/// One project as the model sees it: name, how popular, and its release times.
struct Project {
    name: String,
    version: String,
    releases: Vec<u64>,
}

/// What the data gives: every project's name (all of them go into the timeline's tree) and
/// the candidates a client may follow, in the order a client picks them.
struct Workload {
    now_ms: u64,
    /// Where `now_ms` comes from, for the report.
    now_source: String,
    all_names: Vec<String>,
    followed: Vec<Project>,
    /// Releases of the projects no client is offered (time, position in `all_names`), in
    /// the window: they move the timeline's leaves and fill its change lists.
    churn: Vec<(u64, u32)>,
    source: String,
}

// ---------------------------------------------------------------- data

fn month_start_ms(month: &str) -> Option<u64> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i64, u32) = (y.parse().ok()?, m.parse().ok()?);
    if !(1..=12).contains(&m) || y < 1970 {
        return None;
    }
    Some(days_from_civil(y, m, 1) as u64 * DAY_MS)
}

/// `YYYY-MM-DD` as ms since the epoch (midnight UTC): `--now`.
pub fn parse_date(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a date YYYY-MM-DD");
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let (y, m, d): (i64, u32, u32) =
        (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if y < 1970 || !(1..=12).contains(&m) || d < 1 {
        return Err(bad());
    }
    // The day must exist: the next month's first day comes after it.
    let (next_y, next_m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    if days_from_civil(y, m, 1) + d as i64 > days_from_civil(next_y, next_m, 1) {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) as u64 * DAY_MS)
}

/// When clients update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Now {
    /// At the data's edge: the snapshot's newest month + 7 days, or the newest event + 1 s.
    Edge,
    /// At this moment (ms since the epoch), not after the edge.
    At(u64),
    /// This many days before the edge.
    BeforeEdge(u64),
}

/// How far inside the snapshot a steady-state run puts "now": five months, so that every
/// project active then has its latest release dated after it and releases at its modelled
/// rate, not at the rate of the snapshot's sparsely dated newest month.
pub const STEADY_DAYS_BEFORE_EDGE: u64 = 160;

/// The moment clients update, and what it is for the report.
fn now_within(now: Now, edge: u64, edge_is: &str) -> anyhow::Result<(u64, String)> {
    let at = match now {
        Now::Edge => return Ok((edge, edge_is.to_string())),
        Now::At(at) if at <= edge => at,
        Now::At(at) => bail!("--now ({at} ms) is after the data's edge ({edge_is}, {edge} ms): nothing is known there"),
        Now::BeforeEdge(days) => days
            .checked_mul(DAY_MS)
            .and_then(|back| edge.checked_sub(back))
            .context("--now-before-edge reaches before 1970")?,
    };
    Ok((at, format!("{} days before the data's edge, {edge_is}", (edge - at) / DAY_MS)))
}

fn uniform(rng: &mut ChaCha20Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Releases per month the model gives a project of this download rank (the data has only
/// the latest release; see bench/README.md).
fn releases_per_month(rank: Option<u32>) -> f64 {
    match rank {
        Some(1..=100) => 4.3,
        Some(101..=1000) => 2.0,
        Some(_) => 1.0,
        None => 0.25,
    }
}

/// The PyPI snapshot: `name version month rank` (tab-separated, header line, gzip).
fn load_pypi(path: &Path, window_start: u64, now: Now, seed: u64) -> anyhow::Result<Workload> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the PyPI snapshot {} (pass --pypi PATH)", path.display()))?;
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
    let mut rows = Vec::new();
    let mut newest_month = 0;
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {} is unreadable", path.display(), n + 1))?;
        if n == 0 && line.starts_with("name\t") {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 4 {
            bail!(
                "{}: line {} has {} fields, expected name, version, month, rank",
                path.display(),
                n + 1,
                fields.len()
            );
        }
        let rank: Option<u32> = if fields[3].is_empty() {
            None
        } else {
            Some(
                fields[3]
                    .parse()
                    .with_context(|| format!("{}: line {}: rank {:?}", path.display(), n + 1, fields[3]))?,
            )
        };
        let month = month_start_ms(fields[2]);
        if let Some(m) = month {
            newest_month = newest_month.max(m);
        }
        rows.push((fields[0].to_string(), fields[1].to_string(), month, rank));
    }
    if rows.is_empty() {
        bail!("{} holds no projects", path.display());
    }
    // The snapshot was taken early in its newest month (few releases are dated in it).
    let edge = newest_month + 7 * DAY_MS;
    let (now_ms, now_source) = now_within(now, edge, "the snapshot's newest month + 7 days")?;
    let window_start = now_ms.saturating_sub(window_start);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    // Clients follow ranked projects, picked with weight 1/rank (Efraimidis–Spirakis keys):
    // prefixes of this order are weighted samples without replacement.
    let mut candidates: Vec<(f64, usize)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let rank = r.3?;
            r.2?;
            Some((uniform(&mut rng).powf(rank as f64), i))
        })
        .collect();
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
    let followed = candidates
        .into_iter()
        .map(|(_, i)| {
            let (name, version, month, rank) = &rows[i];
            let month = month.expect("filtered above");
            let releases = release_times(month, edge, now_ms, window_start, releases_per_month(*rank), &mut rng);
            Project { name: name.clone(), version: version.clone(), releases }
        })
        .collect();
    // The unranked projects release by the same model (their own generator, so that the
    // followed projects' histories do not depend on them).
    let mut churn_rng = ChaCha20Rng::seed_from_u64(seed ^ 0xc4u64);
    let mut churn = Vec::new();
    for (i, (_, _, month, rank)) in rows.iter().enumerate() {
        if let (Some(month), None) = (month, rank) {
            let times = release_times(*month, edge, now_ms, window_start, releases_per_month(None), &mut churn_rng);
            churn.extend(times.into_iter().map(|t| (t, i as u32)));
        }
    }
    let all_names = rows.into_iter().map(|r| r.0).collect();
    Ok(Workload { now_ms, now_source, all_names, followed, churn, source: format!("PyPI snapshot {}", path.display()) })
}

/// A project's release times in the window up to `now_ms`, ascending: the latest uniform in
/// `month` (before the data's `edge`), the others before it at `per_month` on average
/// (exponential gaps) back to its birth, drawn uniform in the ten years before the latest
/// (not before 2005).
fn release_times(
    month: u64,
    edge: u64,
    now_ms: u64,
    window_start: u64,
    per_month: f64,
    rng: &mut ChaCha20Rng,
) -> Vec<u64> {
    let birth_floor = month_start_ms("2005-01").expect("valid month");
    let month_end = (month + (MONTH_MS as u64)).min(edge);
    let last = month + ((month_end.saturating_sub(month)) as f64 * uniform(rng)) as u64;
    let born = last.saturating_sub((uniform(rng) * 10.0 * YEAR_MS as f64) as u64).max(birth_floor);
    let mean_gap = MONTH_MS / per_month;
    let mut releases = vec![last];
    let mut t = last as f64;
    loop {
        t -= -mean_gap * (1.0 - uniform(rng)).ln();
        if t < born.max(window_start) as f64 {
            break;
        }
        releases.push(t as u64);
    }
    releases.retain(|&r| r >= window_start && r <= now_ms);
    releases.reverse();
    releases
}

/// Any TSV of release events: `unix_time package version` (seconds; a header line and
/// `#` comments are skipped). Clients follow packages drawn uniformly.
fn load_events(path: &Path, window_start: u64, now: Now, seed: u64) -> anyhow::Result<Workload> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open the events file {}", path.display()))?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut by_package: std::collections::BTreeMap<String, (String, Vec<u64>)> = Default::default();
    let mut newest = 0u64;
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {} is unreadable", path.display(), n + 1))?;
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 3 {
            bail!("{}: line {}: expected unix_time, package, version separated by tabs", path.display(), n + 1);
        }
        let Ok(seconds) = fields[0].trim().parse::<f64>() else {
            if n == 0 {
                continue; // a header
            }
            bail!("{}: line {}: unix_time {:?} is not a number of seconds", path.display(), n + 1, fields[0]);
        };
        if !(0.0..4e9).contains(&seconds) {
            bail!("{}: line {}: unix_time {seconds} is out of range", path.display(), n + 1);
        }
        let t = (seconds * 1000.0) as u64;
        newest = newest.max(t);
        let entry = by_package.entry(fields[1].to_string()).or_default();
        entry.1.push(t);
        if entry.1.iter().all(|&x| x <= t) {
            entry.0 = fields[2].to_string();
        }
    }
    if by_package.is_empty() {
        bail!("{} holds no release events", path.display());
    }
    let (now_ms, now_source) = now_within(now, newest + 1000, "the newest event + 1 s")?;
    let window_start = now_ms.saturating_sub(window_start);
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let all_names: Vec<String> = by_package.keys().cloned().collect();
    let mut followed: Vec<(u64, Project)> = by_package
        .into_iter()
        .map(|(name, (version, mut releases))| {
            releases.sort_unstable();
            releases.retain(|&r| r >= window_start && r <= now_ms);
            (rng.next_u64(), Project { name, version, releases })
        })
        .collect();
    followed.sort_by_key(|p| p.0);
    Ok(Workload {
        now_ms,
        now_source,
        all_names,
        followed: followed.into_iter().map(|p| p.1).collect(),
        churn: Vec::new(),
        source: format!("release events {}", path.display()),
    })
}

// ---------------------------------------------------------------- chains

enum Event {
    Release(usize),
    RosterChange(usize),
    KeyRotation(u64),
    /// These rebuilders' attestations of the newest release are appended as one batch.
    Rebuild(Vec<usize>),
}

struct Keys {
    verifiers: Vec<SecretKey>,
    roots: Vec<SecretKey>,
    rebuilders: Vec<SecretKey>,
}

/// When the rebuilders' attestations of a release at `t` (the next at `next`) are appended,
/// and whose: they arrive an hour apart, and the witness appends those that arrived within
/// `batch_ms` of the first one pending as one batch, then, if the release is still the
/// newest (witnesses take rebuilds of the newest release only), before `now`.
fn rebuild_batches(t: u64, next: u64, now: u64, rebuilders: usize, batch_ms: u64) -> Vec<(u64, Vec<usize>)> {
    let arrivals: Vec<(u64, usize)> = (0..rebuilders).map(|i| (t + (i as u64 + 1) * 3_600_000, i)).collect();
    let mut batches = Vec::new();
    let mut k = 0;
    while k < arrivals.len() {
        let due = arrivals[k].0 + batch_ms;
        let batch: Vec<usize> = arrivals[k..].iter().take_while(|(at, _)| *at <= due).map(|(_, i)| *i).collect();
        k += batch.len();
        if due < next && due < now {
            batches.push((due, batch));
        }
    }
    batches
}

fn developer_key(project: &str, generation: u64) -> SecretKey {
    SecretKey::from_seed(&hash::sha3_256("chainiac-bench/developer", &[project.as_bytes(), &generation.to_be_bytes()]))
}

fn policy(project: &str, generation: u64, keys: &Keys) -> Policy {
    Policy {
        project: project.to_string(),
        developers: vec![developer_key(project, generation).public_key()],
        release_threshold: 1,
        root_keys: keys.roots.iter().map(SecretKey::public_key).collect(),
        root_threshold: 2,
        verifiers: keys
            .verifiers
            .iter()
            .enumerate()
            .map(|(i, k)| VerifierEntry { key: k.public_key(), address: format!("verifier-{i}.example.org:7443") })
            .collect(),
        verifier_threshold: 2,
        require_isolation: false,
        max_age_ms: 2 * 3_600_000,
        version: generation,
        yanked: Vec::new(),
    }
}

fn release_payload(project: &Project, k: usize, generation: u64, time_ms: u64, keys: &Keys) -> Vec<u8> {
    let last = k + 1 == project.releases.len();
    let version = if last { project.version.clone() } else { format!("{}.dev{k}", project.version) };
    let stem = format!("{}-{version}", project.name);
    let manifest = Manifest {
        project: project.name.clone(),
        version: version.clone(),
        source: SourceArchive {
            name: format!("{stem}.tar.gz"),
            sha3: content_hash(stem.as_bytes()),
            size: 40_000 + k as u64,
        },
        recipe: Recipe {
            argv: ["python3", "-m", "build", "--wheel", "--no-isolation"].map(String::from).to_vec(),
            env: vec![],
            workdir: stem.clone(),
        },
        artifacts: vec![Artifact {
            path: format!("dist/{}-py3-none-any.whl", stem.replace('-', "_")),
            sha3: content_hash(version.as_bytes()),
            size: 120_000 + k as u64,
        }],
        time_ms,
    };
    let id = manifest.id();
    let attestations = keys
        .verifiers
        .iter()
        .map(|v| {
            Attestation::sign(
                v,
                AttestationBody {
                    verifier: v.public_key(),
                    manifest: id,
                    outcome: Outcome::Reproduced,
                    environment: [7; 32],
                    time_ms: time_ms + 60_000,
                    isolation: chainiac_release::BuildIsolation::Namespaces,
                },
            )
        })
        .collect();
    let payload = ReleasePayload {
        manifest,
        developer_signatures: vec![DeveloperSignature::sign(&developer_key(&project.name, generation), &id)],
        attestations,
    };
    postcard::to_allocvec(&payload).expect("payloads serialize")
}

/// The client's check of a release it installs: developer signatures and attestations.
fn check_release(payload: &[u8]) -> bool {
    let Ok(release) = postcard::from_bytes::<ReleasePayload>(payload) else { return false };
    let id = release.manifest.id();
    release.developer_signatures.iter().all(|s| s.verify(&id))
        && release.attestations.iter().all(|a| a.body.manifest == id && a.verify())
}

/// One project's chain from `start` to now: its releases in the window, a committee change
/// at each roster change, and a policy change at each developer key rotation.
#[allow(clippy::too_many_arguments)]
fn build_project(
    store: &MemoryStore,
    cothority: &mut Cothority,
    project: &Project,
    roster_changes: &[u64],
    options: &Options,
    start: u64,
    now: u64,
    marks: &[u64],
    keys: &Keys,
    rebuilt: bool,
    rng: &mut ChaCha20Rng,
) -> ChainBuilder {
    let mut events: Vec<(u64, Event)> =
        project.releases.iter().enumerate().map(|(k, &t)| (t, Event::Release(k))).collect();
    if rebuilt {
        for (k, &t) in project.releases.iter().enumerate() {
            let next = project.releases.get(k + 1).copied().unwrap_or(u64::MAX);
            let batches = rebuild_batches(t, next, now, keys.rebuilders.len(), options.rebuild_batch_ms);
            events.extend(batches.into_iter().map(|(at, batch)| (at, Event::Rebuild(batch))));
        }
    }
    for (e, &t) in roster_changes.iter().enumerate() {
        events.push((t, Event::RosterChange(e + 1)));
    }
    let period = options.key_rotation_days * DAY_MS;
    if period > 0 {
        let mut t = start + rng.next_u64() % period;
        let mut generation = 1;
        while t < now {
            events.push((t, Event::KeyRotation(generation)));
            t += period;
            generation += 1;
        }
    }
    events.sort_by_key(|e| e.0);
    let mut generation = 0;
    // The newest release (block index, manifest) and the attestations of it so far.
    let mut newest: Option<(u64, chainiac_release::ManifestId, Vec<Attestation>)> = None;
    let genesis_policy = policy(&project.name, 0, keys).to_bytes();
    let mut chain =
        ChainBuilder::start(store, cothority, 0, options.params, genesis_policy, KIND_RELEASE, vec![], start, marks);
    for (t, event) in events {
        let proposal = match event {
            Event::Release(k) => {
                let payload = release_payload(project, k, generation, t, keys);
                let id = ReleasePayload::from_bytes(&payload).expect("decodes").manifest.id();
                newest = Some((chain.head.index() + 1, id, Vec::new()));
                Proposal { kind: KIND_RELEASE, payload, timestamp_ms: t, ..Proposal::default() }
            }
            Event::Rebuild(batch) => {
                let Some((release, manifest, evidence)) = newest.as_mut() else { continue };
                let attestations: Vec<Attestation> = batch
                    .iter()
                    .map(|&i| {
                        let rebuilder = &keys.rebuilders[i];
                        let body = AttestationBody {
                            verifier: rebuilder.public_key(),
                            manifest: *manifest,
                            outcome: Outcome::Reproduced,
                            environment: [8; 32],
                            time_ms: t,
                            isolation: chainiac_release::BuildIsolation::Namespaces,
                        };
                        Attestation::sign(rebuilder, body)
                    })
                    .collect();
                evidence.extend(attestations.iter().cloned());
                let rebuilds = Rebuilds { release: *release, attestations };
                let block = Proposal {
                    kind: KIND_REBUILDS,
                    payload: rebuilds.to_bytes(),
                    timestamp_ms: t,
                    ..Proposal::default()
                };
                chain.append(store, cothority, block);
                let summary = RebuildSummary::of(*release, *manifest, evidence.iter());
                let release_block = store.block_id(&chain.chain, *release).expect("reads").expect("the release");
                Proposal {
                    kind: KIND_REBUILD_SUMMARY,
                    payload: summary.to_block_bytes(release_block),
                    timestamp_ms: t,
                    ..Proposal::default()
                }
            }
            Event::RosterChange(epoch) => Proposal {
                kind: KIND_COMMITTEE,
                payload: vec![],
                committee: Some(cothority.appoint(epoch, t + APPROVAL_VALIDITY_MS)),
                timestamp_ms: t,
                ..Proposal::default()
            },
            Event::KeyRotation(next) => {
                let old = policy(&project.name, generation, keys).to_bytes();
                let new = policy(&project.name, next, keys).to_bytes();
                let (old_hash, new_hash) =
                    (chainiac_skipchain::block::policy_hash(&old), chainiac_skipchain::block::policy_hash(&new));
                let change = PolicyChange {
                    root_signatures: keys
                        .roots
                        .iter()
                        .map(|r| RootSignature::sign(r, &chain.chain.0, &old_hash, &new_hash))
                        .collect(),
                };
                generation = next;
                Proposal {
                    kind: KIND_POLICY_CHANGE,
                    payload: postcard::to_allocvec(&change).expect("serializes"),
                    policy: Some(new),
                    timestamp_ms: t,
                    ..Proposal::default()
                }
            }
        };
        chain.append(store, cothority, proposal);
    }
    chain
}

// ---------------------------------------------------------------- the four clients

#[derive(Debug, Default, Clone, Copy)]
pub struct Cost {
    pub bytes: u64,
    pub cpu: Duration,
    /// Of `bytes`, those of full committees (rosters and the approvals appointing them)
    /// carried by checkpoint blocks.
    pub committee_bytes: u64,
}

/// One client's update: every `days` days, following `follow` projects.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub days: u64,
    pub follow: usize,
    #[allow(dead_code)] // in the table; read by tests
    pub new_blocks: u64,
    pub linear: Cost,
    #[allow(dead_code)] // in the table; read by tests
    pub tuf_style: Cost,
    /// (c): `GetProofs` answers, no timeline.
    pub skipchain: Cost,
    /// (d): what `chainiac update` downloads: timeline batches, the timeline's proof, and
    /// `GetLinkedProofs` answers naming the committees held.
    pub timeline_skipchain: Cost,
    /// (d1): what `chainiac update --every-hop` downloads: (d) with `GetProofs` answers
    /// (forward proofs, vouched for by each chain's own committees) in place of the linked ones.
    #[allow(dead_code)] // in the table; read by tests
    pub every_hop: Cost,
    /// The new release records alone (each project's newest new release payload): what any
    /// client that learns the new releases downloads at least, whatever its proofs.
    pub floor: u64,
    /// Rebuilders' attestations appended to the followed chains since the client's update.
    pub attestations: u64,
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        self.bytes += other.bytes;
        self.cpu += other.cpu;
        self.committee_bytes += other.committee_bytes;
    }
}

/// The bytes of a carried committee: its roster and threshold, and the approvals that
/// appoint it.
fn committee_bytes(committee: Option<&Appointment>) -> u64 {
    committee.map_or(0, |a| postcard::to_allocvec(a).expect("serializes").len() as u64)
}

fn blocks(store: &MemoryStore, chain: &BlockId, from: u64, to: u64) -> Vec<Vec<u8>> {
    ((from + 1)..=to).map(|i| store.block(chain, i).unwrap().expect("stored").to_bytes()).collect()
}

/// (a) Every block since the trusted one, each checked in turn (its link to the previous,
/// its collective signature, its payload hash); the newest one's release checked.
fn linear(store: &MemoryStore, trusted: &ChainState, to: u64, release: bool) -> Cost {
    let wire = blocks(store, &trusted.chain, trusted.index(), to);
    let started = Instant::now();
    let decoded: Vec<Block> = wire.iter().map(|b| Block::from_bytes(b).expect("decodes")).collect();
    let ok = decoded.iter().all(|b| payload_hash(&b.payload) == b.header.payload_hash);
    // Each block checked against the one before it, as a proof step of one link.
    let previous = std::iter::once(&trusted.header).chain(decoded.iter().map(|b| &b.header));
    let steps = decoded
        .iter()
        .zip(previous)
        .map(|(b, previous)| ProofStep {
            header: StepHeader::new(&b.header, previous, 0),
            signature: Some(b.signature.clone().expect("signed")),
            committee: b.committee.clone(),
            policy: b.policy.clone().map(|policy| PolicyChanged { policy, payload: b.payload.clone() }),
        })
        .collect();
    let reached =
        Proof { steps, payload: None }.verify(trusted, &chainiac_release::policy_rule).expect("a valid chain");
    assert!(ok && reached.state.index() == to);
    if release {
        if let Some(last) = decoded.last().filter(|b| b.header.kind == KIND_RELEASE && !b.payload.is_empty()) {
            assert!(check_release(&last.payload));
        }
    }
    let cpu = started.elapsed();
    let committee_bytes = decoded.iter().map(|b| committee_bytes(b.committee.as_ref())).sum();
    Cost { bytes: wire.iter().map(|b| b.len() as u64).sum(), cpu, committee_bytes }
}

/// (b) TUF-style: every committee or policy version in turn, each signed by the one before
/// (like root.json versions), then the newest block; no links between them are checked.
fn tuf_style(store: &MemoryStore, trusted: &ChainState, to: u64, release: bool) -> Cost {
    let chain = trusted.chain;
    let from = trusted.index();
    if to == from {
        return Cost::default();
    }
    let mut indices = store.checkpoints(&chain, from, to).unwrap();
    indices.push(to);
    let wire: Vec<Vec<u8>> =
        indices.iter().map(|&i| store.block(&chain, i).unwrap().expect("stored").to_bytes()).collect();
    let started = Instant::now();
    let mut committee = trusted.committee.clone();
    let mut last = None;
    let mut carried = 0;
    for bytes in &wire {
        let block = Block::from_bytes(bytes).expect("decodes");
        let id = block.id();
        assert_eq!(block.header.chain, Some(chain));
        block.signature.as_ref().expect("signed").verify(&committee, &id).expect("signed by the committee in force");
        carried += committee_bytes(block.committee.as_ref());
        if let Some(next) = &block.committee {
            assert_eq!(next.committee.hash(), block.header.committee_hash);
            next.check_change(&committee, &chain, block.header.timestamp_ms).expect("an authorized change");
            committee = std::sync::Arc::new(next.committee.clone());
        }
        last = Some(block);
    }
    let last = last.expect("at least the head");
    assert_eq!(payload_hash(&last.payload), last.header.payload_hash);
    if release && last.header.kind == KIND_RELEASE && !last.payload.is_empty() {
        assert!(check_release(&last.payload));
    }
    Cost { bytes: wire.iter().map(|b| b.len() as u64).sum(), cpu: started.elapsed(), committee_bytes: carried }
}

/// (c) The skipchain proof from the trusted block to the head, carrying the head's payload.
/// Appointments the client already holds (`held`, by committee hash) are left out of it and
/// looked up (`Proof::without_appointments` / `verify_with`). Returns the appointments the
/// proof carried, checked.
fn skipchain(
    store: &MemoryStore,
    trusted: &ChainState,
    to: u64,
    release: bool,
    held: &Appointments,
) -> (Cost, Option<Vec<u8>>, Vec<Verified<Appointment>>) {
    let proof = store::prove(store, &trusted.chain, trusted.index(), to, to > trusted.index())
        .unwrap()
        .without_appointments(|hash| held.holds(hash));
    let wire = proof.to_bytes();
    let started = Instant::now();
    let reached = Proof::from_bytes(&wire)
        .expect("decodes")
        .verify_with(trusted, held, &chainiac_release::policy_rule)
        .expect("a valid proof")
        .into_inner();
    assert_eq!(reached.state.index(), to);
    if release && reached.state.header.kind == KIND_RELEASE {
        if let Some(payload) = reached.payload.as_ref().filter(|p| !p.is_empty()) {
            assert!(check_release(payload));
        }
    }
    let cpu = started.elapsed();
    let committee_bytes = proof.steps.iter().map(|s| committee_bytes(s.committee.as_ref())).sum();
    (Cost { bytes: wire.len() as u64, cpu, committee_bytes }, reached.payload, reached.appointments)
}

/// Decoded and verified by the client: one entry of a `GetProofs` or `GetLinkedProofs`
/// answer.
struct Answered<P> {
    entry: Result<P, ErrorReply>,
    cpu: Duration,
    /// A `GetBackwardProof` (or `GetProof`) answer the client also takes: the release a
    /// rebuild summary at the head names, when the client skipped it.
    extra_bytes: u64,
}

/// One kind of batched proof: the witness's own answer to a request for some chains (the
/// functions of `chainiac_witness::answers` over the bench's store), and the client's check.
trait Batched: Serialize + serde::de::DeserializeOwned + Clone + Sized {
    /// Whether the witness routes the links through the release a rebuild summary at the
    /// recorded head names and carries it (linked proofs).
    const CARRIES_NAMED_RELEASE: bool;
    /// The witness's answer for `chains`, each from its state at mark `d`, for a client that
    /// names `held` as held.
    fn answer(
        store: &MemoryStore,
        chains: &[&ChainBuilder],
        d: usize,
        held: Vec<[u8; 32]>,
    ) -> Vec<Result<Self, ErrorReply>>;
    /// The client's check with the appointments it holds.
    fn check(&self, trusted: &ChainState, chain: &ChainBuilder, known: &Appointments) -> chainiac_skipchain::CatchUp;
}

impl Batched for Proof {
    const CARRIES_NAMED_RELEASE: bool = false;
    fn answer(
        store: &MemoryStore,
        chains: &[&ChainBuilder],
        d: usize,
        held: Vec<[u8; 32]>,
    ) -> Vec<Result<Self, ErrorReply>> {
        let queries: Vec<ProofQuery> = chains
            .iter()
            .map(|c| ProofQuery { chain: c.chain, from: c.states_at_marks[d].index(), to: None })
            .collect();
        answers::proofs(store, &queries, true, held).expect("a well-formed request")
    }
    fn check(&self, trusted: &ChainState, _: &ChainBuilder, known: &Appointments) -> CatchUp {
        self.verify_with(trusted, known, &chainiac_release::policy_rule).expect("a valid proof").into_inner()
    }
}

/// Through the head the timeline's newest block records: here the chain's head (the
/// bench's last root is over the real heads).
impl Batched for LinkedProof {
    const CARRIES_NAMED_RELEASE: bool = true;
    fn answer(
        store: &MemoryStore,
        chains: &[&ChainBuilder],
        d: usize,
        held: Vec<[u8; 32]>,
    ) -> Vec<Result<Self, ErrorReply>> {
        let queries: Vec<LinkedQuery> = chains
            .iter()
            .map(|c| LinkedQuery { chain: c.chain, from: c.states_at_marks[d].index(), recorded: c.head.index() })
            .collect();
        answers::linked_proofs(store, &queries, true, held).expect("a well-formed request")
    }
    fn check(&self, trusted: &ChainState, chain: &ChainBuilder, known: &Appointments) -> CatchUp {
        let recorded = (chain.head.index(), chain.head.id);
        self.verify_named(trusted, recorded, known, &chainiac_release::policy_rule, &chainiac_release::names_block)
            .expect("a valid proof")
            .into_inner()
    }
}

/// The proofs of `chains` as a client receives them in `GetProofs` or `GetLinkedProofs`
/// answers: requests of [`MAX_PROOF_QUERIES`] chains naming the newest
/// [`MAX_HELD_APPOINTMENTS`] committees the client holds, as `chainiac update` sends them;
/// entries the witness answers `Busy` (its answer was full) are asked for again in the next
/// request. Each entry is decoded and verified as the client does, with the appointments
/// it holds.
fn batched<P: Batched>(
    store: &MemoryStore,
    chains: &[&ChainBuilder],
    d: usize,
    held: &Appointments,
) -> Vec<Answered<P>> {
    let mut known = held.clone();
    let mut answered = Vec::with_capacity(chains.len());
    let mut pending: std::collections::VecDeque<&ChainBuilder> = chains.iter().copied().collect();
    while !pending.is_empty() {
        let ask: Vec<&ChainBuilder> = pending.drain(..pending.len().min(MAX_PROOF_QUERIES)).collect();
        let entries = P::answer(store, &ask, d, known.newest(MAX_HELD_APPOINTMENTS));
        let mut again = Vec::new();
        for (chain, entry) in ask.into_iter().zip(entries) {
            let proof = match entry {
                Ok(proof) => proof,
                Err(e) if e.code == ErrorCode::Busy => {
                    again.push(chain);
                    continue;
                }
                Err(e) => panic!("the witness refused a proof: {e}"),
            };
            let trusted = &chain.states_at_marks[d];
            let to = chain.head.index();
            let wire = postcard::to_allocvec(&proof).expect("serializes");
            let started = Instant::now();
            let decoded: P = chainiac_skipchain::decode_exact(&wire).expect("decodes");
            let reached = decoded.check(trusted, chain, &known);
            assert_eq!(reached.state.id, chain.head.id);
            if reached.state.header.kind == KIND_RELEASE {
                if let Some(payload) = reached.payload.as_ref().filter(|p| !p.is_empty() && to > trusted.index()) {
                    assert!(check_release(payload));
                }
            }
            let mut extra_bytes = 0;
            if reached.state.header.kind == KIND_REBUILD_SUMMARY && to > trusted.index() {
                let summary =
                    RebuildSummary::of_block(KIND_REBUILD_SUMMARY, reached.payload.as_deref().unwrap_or_default())
                        .expect("decodes");
                let linked = reached.link_block.as_ref().filter(|b| {
                    b.header.index == summary.release && b.header.policy_hash == reached.state.header.policy_hash
                });
                if let Some(block) = linked {
                    // The witness routed the links through the release and carried it.
                    assert!(check_release(block.payload.as_deref().unwrap_or_default()));
                } else if summary.release > trusted.index() {
                    // Down from the head when the policy is the same there (the usual case),
                    // else forward from the client's block (`release_skipped`).
                    let release = store.block(&chain.chain, summary.release).unwrap().expect("stored");
                    let same_policy = release.header.policy_hash == reached.state.header.policy_hash;
                    assert!(!(P::CARRIES_NAMED_RELEASE && same_policy), "the witness carries the release");
                    let answer = if release.header.policy_hash == reached.state.header.policy_hash {
                        Response::BackwardProof(
                            store::prove_backward(store, &chain.chain, to, summary.release, true).expect("stored"),
                        )
                    } else {
                        Response::Proof(
                            store::prove(store, &chain.chain, trusted.index(), summary.release, true).expect("stored"),
                        )
                    };
                    extra_bytes = postcard::to_allocvec(&answer).expect("serializes").len() as u64;
                }
            }
            for appointment in reached.appointments {
                known.hold(appointment);
            }
            answered.push(Answered { entry: Ok(proof), cpu: started.elapsed(), extra_bytes });
        }
        for chain in again.into_iter().rev() {
            pending.push_front(chain);
        }
    }
    answered
}

/// What the change lists of the blocks after `from` (the client's timeline block) take,
/// as the witness weighs them against the client's offer (their prefixes).
fn lists_cost(lists: &[ChangeList], from: u64, to: u64) -> u64 {
    lists[from as usize..to as usize].iter().map(|list| changes_cost(list.len(), 0)).sum()
}

/// The `GetTimelineChanges` answers (1,024 blocks each, or the budget) from the client's
/// timeline block `trusted` to `to` for a client following `followed`, decoded and verified
/// as the client does (committees it holds left out), and the chains they show moved.
#[allow(clippy::too_many_arguments)]
fn change_answers(
    store: &MemoryStore,
    timeline: &BlockId,
    lists: &BTreeMap<u64, Arc<ChangeList>>,
    everyone: &HeadSet,
    trusted: &ChainState,
    to: u64,
    held: &Appointments,
    followed: &[BlockId],
) -> (Cost, HashSet<BlockId>) {
    let watched: HashSet<ChainPrefix> = followed.iter().map(chain_prefix).collect();
    let mut known = held.clone();
    let (mut cost, mut moved, mut state) = (Cost::default(), HashSet::new(), trusted.clone());
    while state.index() < to {
        let answer = answers::timeline_changes(
            store,
            timeline,
            state.index(),
            to,
            lists,
            &watched,
            everyone,
            known.newest(MAX_HELD_APPOINTMENTS),
            0,
        )
        .expect("the witness serves the lists");
        let wire = postcard::to_allocvec(&Response::TimelineChanges(answer)).expect("encodes");
        let started = Instant::now();
        let Ok(Response::TimelineChanges(answer)) = postcard::from_bytes::<Response>(&wire) else { panic!("decodes") };
        let seen = answer
            .verify_with(&state, &known, followed, &chainiac_release::policy_rule)
            .expect("valid change lists")
            .into_inner();
        cost.cpu += started.elapsed();
        cost.bytes += wire.len() as u64;
        for committee in answer.proof.steps.iter().filter_map(|s| s.committee.as_ref()) {
            cost.committee_bytes += committee_bytes(Some(committee));
        }
        for appointment in seen.caught.appointments.iter().cloned() {
            known.hold(appointment);
        }
        moved.extend(seen.moved.into_keys());
        state = seen.caught.state;
    }
    (cost, moved)
}

/// The witness's refusal of change lists dearer than the client's inclusion proofs.
fn refusal_bytes(from: u64, lists_cost: u64, max_bytes: u64) -> u64 {
    let refusal = Response::Error(chainiac_proto::changes_too_large(from, lists_cost, max_bytes));
    postcard::to_allocvec(&refusal).expect("encodes").len() as u64
}

/// The serialized answers (`wrap` makes the response) for the first `follow` entries, and
/// the CPU spent on them. Full answers are the same for every `follow`, so their sizes are
/// kept.
fn answers_cost<P: Clone>(
    answered: &[Answered<P>],
    follow: usize,
    full: &mut HashMap<usize, u64>,
    wrap: impl Fn(Vec<Result<P, ErrorReply>>) -> Response,
) -> Cost {
    let mut cost = Cost::default();
    for (k, chunk) in answered[..follow].chunks(MAX_PROOF_QUERIES).enumerate() {
        let size = |chunk: &[Answered<P>]| {
            let response = wrap(chunk.iter().map(|a| a.entry.clone()).collect());
            postcard::to_allocvec(&response).expect("serializes").len() as u64
        };
        cost.bytes +=
            if chunk.len() == MAX_PROOF_QUERIES { *full.entry(k).or_insert_with(|| size(chunk)) } else { size(chunk) };
        cost.bytes += chunk.iter().map(|a| a.extra_bytes).sum::<u64>();
        cost.cpu += chunk.iter().map(|a| a.cpu).sum::<Duration>();
    }
    cost
}

/// The `GetTimelineBatch` answers for the first `follow` chains (one per
/// [`MAX_TIMELINE_CHAINS`]), decoded and checked as the client does.
fn timeline_batches(set: &HeadSet, entry: &TimelineEntry, index: u64, chains: &[ChainBuilder], follow: usize) -> Cost {
    let mut cost = Cost::default();
    let ids: Vec<BlockId> = chains[..follow].iter().map(|c| c.chain).collect();
    for chunk in ids.chunks(MAX_TIMELINE_CHAINS) {
        let batch =
            TimelineBatch { timeline: BlockId([0; 32]), index, entry: entry.clone(), inclusion: set.prove_many(chunk) };
        let wire = postcard::to_allocvec(&Response::TimelineBatch(batch)).expect("serializes");
        // Measured once per P and reused for every D: the median of 5 keeps a cold first
        // run out of every row.
        let mut times: Vec<Duration> = (0..5)
            .map(|_| {
                let started = Instant::now();
                let Ok(Response::TimelineBatch(batch)) = postcard::from_bytes::<Response>(&wire) else {
                    panic!("decodes")
                };
                let leaves = batch.inclusion.verify(&batch.entry, chunk).expect("the heads are in the timeline");
                assert_eq!(leaves.len(), chunk.len());
                started.elapsed()
            })
            .collect();
        times.sort_unstable();
        cost.cpu += times[2];
        cost.bytes += wire.len() as u64;
    }
    cost
}

// ---------------------------------------------------------------- the scenario

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(length: u64, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(length);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

pub fn run(options: &Options, report: &mut Report) -> anyhow::Result<Vec<Measured>> {
    let longest = options.days.iter().copied().max().context("--days is empty")?;
    let window = (longest + 1) * DAY_MS;
    let workload = match &options.events {
        Some(path) => load_events(path, window, options.now, options.seed)?,
        None => load_pypi(&options.pypi, window, options.now, options.seed)?,
    };
    let most = options.follows.iter().copied().max().context("--follow is empty")?.min(workload.followed.len());
    let now = workload.now_ms;
    let start = now - window;
    let mut days = options.days.clone();
    days.sort_unstable();
    let marks: Vec<u64> = days.iter().map(|d| now - d * DAY_MS).collect();
    let roster_period = options.roster_change_days.max(1) * DAY_MS;
    let newest_change =
        now.saturating_sub(options.roster_phase_days.min(options.roster_change_days.max(1) - 1) * DAY_MS);
    let mut roster_changes: Vec<u64> =
        (0..).map(|k| newest_change.saturating_sub(k * roster_period)).take_while(|&t| t > start).collect();
    roster_changes.reverse();
    let mut cothority = Cothority::new(WITNESSES, THRESHOLD, roster_changes.len() + 1, options.seed);
    let mut rng = ChaCha20Rng::seed_from_u64(options.seed ^ 0x5eed);
    let keys = Keys {
        verifiers: (0..2).map(|_| SecretKey::generate(&mut rng)).collect(),
        roots: (0..2).map(|_| SecretKey::generate(&mut rng)).collect(),
        rebuilders: (0..options.rebuilders).map(|_| SecretKey::generate(&mut rng)).collect(),
    };

    // Project chains for the followed projects.
    let store = MemoryStore::new();
    let built = Instant::now();
    let projects = &workload.followed[..most];
    let mut chains = Vec::with_capacity(most);
    let progress = progress_bar(most as u64, "building project chains");
    for (n, project) in projects.iter().enumerate() {
        progress.inc(1);
        chains.push(build_project(
            &store,
            &mut cothority,
            project,
            &roster_changes,
            options,
            start,
            now,
            &marks,
            &keys,
            n < options.rebuilt_projects,
            &mut rng,
        ));
    }
    progress.finish_and_clear();
    let project_blocks: u64 = chains.iter().map(|c| c.head.index()).sum();
    let build_projects = built.elapsed();

    // Releases of the projects no client here follows (the unranked ones, and candidates
    // past the most any client follows): leaves that move, synthetic heads.
    let position: HashMap<&str, u32> =
        workload.all_names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
    let mut churn = workload.churn.clone();
    for (n, project) in workload.followed.iter().enumerate().skip(most) {
        let i = position[project.name.as_str()];
        churn.extend(project.releases.iter().map(|&t| (t, i)));
        // Their rebuilds move their heads too (what every client's change lists carry).
        if n < options.rebuilt_projects {
            for (k, &t) in project.releases.iter().enumerate() {
                let next = project.releases.get(k + 1).copied().unwrap_or(u64::MAX);
                let batches = rebuild_batches(t, next, now, options.rebuilders, options.rebuild_batch_ms);
                churn.extend(batches.into_iter().map(|(at, _)| (at, i)));
            }
        }
    }
    churn.sort_unstable();
    let bench_chain =
        |i: u32| BlockId(hash::sha3_256("chainiac-bench/chain", &[workload.all_names[i as usize].as_bytes()]));
    let churn_leaf = |i: u32, k: u64| {
        let chain = bench_chain(i);
        HeadLeaf { chain, index: k, id: BlockId(hash::sha3_256("chainiac-bench/head", &[&chain.0, &k.to_be_bytes()])) }
    };

    // The timeline's blocks: one per interval, and one at each roster change.
    let interval = options.timeline_interval_minutes.max(1) * 60_000;
    let timeline_blocks = (now - start) / interval;
    let mut times: Vec<(u64, Option<usize>)> = Vec::new();
    let mut changes = roster_changes.iter().enumerate().peekable();
    for k in 1..=timeline_blocks {
        let t = start + k * interval;
        while let Some((e, &c)) = changes.peek() {
            if c > t {
                break;
            }
            times.push((c, Some(e + 1)));
            changes.next();
        }
        times.push((t, None));
    }
    // Each block's change list: the heads appended since the block before, up to its time.
    let tree_started = Instant::now();
    let block_at = |t: u64| times.partition_point(|(time, _)| *time < t);
    let mut lists: Vec<Vec<HeadLeaf>> = vec![Vec::new(); times.len()];
    for c in &chains {
        for j in 1..=c.head.index() {
            let block = store.block(&c.chain, j).unwrap().expect("stored");
            if let Some(list) = lists.get_mut(block_at(block.header.timestamp_ms)) {
                list.push(HeadLeaf { chain: c.chain, index: j, id: block.id() });
            }
        }
    }
    let mut churn_heads: HashMap<u32, u64> = HashMap::new();
    for &(t, i) in &churn {
        let k = churn_heads.entry(i).or_insert(0);
        *k += 1;
        if let Some(list) = lists.get_mut(block_at(t)) {
            list.push(churn_leaf(i, *k));
        }
    }
    for list in &mut lists {
        list.sort_unstable_by(|a, b| a.chain.cmp(&b.chain).then(b.index.cmp(&a.index)));
        list.dedup_by_key(|l| l.chain);
    }
    let lists: Vec<ChangeList> = lists.into_iter().map(ChangeList::new).collect();
    let churn_events = churn.len();
    // The tree over every project: the followed ones at their real heads, the others at
    // their last release in the window (or their genesis).
    let mut leaves: Vec<HeadLeaf> =
        chains.iter().map(|c| HeadLeaf { chain: c.chain, index: c.head.index(), id: c.head.id }).collect();
    let followed_names: HashSet<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    for (i, _) in workload.all_names.iter().enumerate().filter(|(_, n)| !followed_names.contains(n.as_str())) {
        leaves.push(match churn_heads.get(&(i as u32)) {
            Some(&k) => churn_leaf(i as u32, k),
            None => {
                let chain = bench_chain(i as u32);
                HeadLeaf { chain, index: 0, id: chain }
            }
        });
    }
    let set = HeadSet::new(leaves);
    let tree_time = tree_started.elapsed();

    // The timeline itself: every block carries an entry with its change list; the last
    // block's entry is the real root.
    let mut timeline =
        ChainBuilder::start(&store, &cothority, 0, options.params, vec![], KIND_TIMELINE, vec![], start, &marks);
    for (k, &(t, epoch)) in times.iter().enumerate() {
        let root = if k + 1 == times.len() {
            set.root()
        } else {
            hash::sha3_256("chainiac-bench/root", &[&(k as u64).to_be_bytes()])
        };
        let entry = TimelineEntry { time_ms: t, chains: set.len() as u64, root, changes: Some(lists[k].hash()) };
        let committee = epoch.map(|e| cothority.appoint(e, t + APPROVAL_VALIDITY_MS));
        timeline.append(
            &store,
            &mut cothority,
            Proposal {
                kind: KIND_TIMELINE,
                payload: entry.to_bytes(),
                committee,
                timestamp_ms: t,
                ..Proposal::default()
            },
        );
    }
    let head_entry =
        TimelineEntry::from_bytes(&store.block(&timeline.chain, timeline.head.index()).unwrap().unwrap().payload)?;

    report.text(&format!(
        "Source: {}. Now = {} ms since the epoch ({}). {} projects in the timeline's tree; \
         clients follow the first P of {} candidates. Built {} project blocks over {} chains in {:.1} s, the tree in {:.2} s, \
         {} timeline blocks (one per {} min); {} roster changes (one per {} days, the newest {} days before now), developer keys rotated every {} days; \
         {WITNESSES} witnesses, threshold {THRESHOLD}; skipchains of base {} (maximum height {}). \
         {} releases of projects no client here follows move their leaves in the window (they fill the timeline's change lists).\n",
        workload.source,
        now,
        workload.now_source,
        set.len(),
        workload.followed.len(),
        project_blocks,
        chains.len(),
        build_projects.as_secs_f64(),
        tree_time.as_secs_f64(),
        timeline.head.index(),
        options.timeline_interval_minutes,
        roster_changes.len(),
        options.roster_change_days,
        (now - roster_changes.last().copied().unwrap_or(start)) / DAY_MS,
        options.key_rotation_days,
        options.params.base,
        options.params.max_height,
        churn_events,
    ));

    // Timeline batches depend only on the final tree: once per P.
    let head_index = timeline.head.index();
    let batches: Vec<Cost> = options
        .follows
        .iter()
        .map(|&f| timeline_batches(&set, &head_entry, head_index, &chains, f.min(chains.len())))
        .collect();
    let mut rows = Vec::new();
    let mut measured = Vec::new();
    let mut plot_points: Vec<[Vec<(f64, f64)>; 5]> = vec![Default::default(); options.follows.len()];
    for (d, &days_behind) in days.iter().enumerate() {
        // The timeline first: its proof brings the committees (d) then names as held.
        let trusted = &timeline.states_at_marks[d];
        let tl_a = linear(&store, trusted, head_index, false);
        let tl_b = tuf_style(&store, trusted, head_index, false);
        let (tl_single, payload, carried) = skipchain(&store, trusted, head_index, false, &Appointments::default());
        assert_eq!(payload.map(|p| TimelineEntry::from_bytes(&p).unwrap()), Some(head_entry.clone()));
        // The batches bring the entry; the client checks it against the proven header.
        let tl_answer =
            Response::Proofs(vec![Ok(store::prove(&store, &timeline.chain, trusted.index(), head_index, false)?)]);
        let tl_d = Cost { bytes: postcard::to_allocvec(&tl_answer)?.len() as u64, ..tl_single };
        let mut held = Appointments::default();
        carried.into_iter().for_each(|a| held.hold(a));
        // Per-project costs, once; clients following P projects sum a prefix.
        let mut per_project = Vec::with_capacity(chains.len());
        let progress = progress_bar(chains.len() as u64, &format!("measuring updates every {days_behind} days"));
        for chain in &chains {
            progress.inc(1);
            let trusted = &chain.states_at_marks[d];
            let to = chain.head.index();
            let a = linear(&store, trusted, to, true);
            let b = tuf_style(&store, trusted, to, true);
            // The newest release among the new blocks (the head may be a roster change).
            let floor = ((trusted.index() + 1)..=to)
                .rev()
                .map(|i| store.block(&chain.chain, i).unwrap().expect("stored"))
                .find(|b| b.header.kind == KIND_RELEASE && !b.payload.is_empty())
                .map_or(0, |b| b.payload.len());
            let attestations = ((trusted.index() + 1)..=to)
                .map(|i| store.block(&chain.chain, i).unwrap().expect("stored"))
                .filter(|b| b.header.kind == KIND_REBUILDS)
                .map(|b| Rebuilds::from_bytes(&b.payload).expect("decodes").attestations.len() as u64)
                .sum();
            per_project.push((a, b, to - trusted.index(), floor as u64, attestations));
        }
        progress.finish_and_clear();
        // (c): the client holds no appointment yet (its trusted committee came without any);
        // (d): those the timeline's proof brought.
        let all: Vec<&ChainBuilder> = chains.iter().collect();
        let c_answers = batched::<Proof>(&store, &all, d, &Appointments::default());
        let d_answers = batched::<LinkedProof>(&store, &all, d, &held);
        let d1_answers = batched::<Proof>(&store, &all, d, &held);
        let n = set.len() as u64;
        // What the witness weighs every client's offer against: the same for all of them.
        let wanted = lists_cost(&lists, trusted.index(), head_index);
        // The lists as the witness keeps them: by block index.
        let served_lists: BTreeMap<u64, Arc<ChangeList>> =
            lists.iter().enumerate().map(|(k, list)| (k as u64 + 1, Arc::new(list.clone()))).collect();
        let (mut c_full, mut d_full, mut d1_full) = (Default::default(), Default::default(), Default::default());
        for (f, &follow) in options.follows.iter().enumerate() {
            let follow = follow.min(per_project.len());
            let (mut a, mut b) = (tl_a, tl_b);
            let (mut new_blocks, mut changed, mut floor, mut attestations) = (0, 0, 0, 0);
            for (pa, pb, blocks, payload, attested) in &per_project[..follow] {
                floor += payload;
                attestations += attested;
                a += *pa;
                b += *pb;
                new_blocks += blocks;
                changed += (*blocks > 0) as u64;
            }
            let c = answers_cost(&c_answers, follow, &mut c_full, Response::Proofs);
            let mut dd = tl_d;
            dd += batches[f];
            let mut every_hop = dd;
            dd += answers_cost(&d_answers, follow, &mut d_full, Response::LinkedProofs);
            every_hop += answers_cost(&d1_answers, follow, &mut d1_full, Response::Proofs);
            // `chainiac update` asks for the change lists first (its chains were reconciled
            // with its timeline block at the last update) and takes them when the witness
            // does not refuse them as dearer than the inclusion proofs.
            let followed: Vec<BlockId> = chains[..follow].iter().map(|c| c.chain).collect();
            let offer = inclusion_cost(follow as u64, n, MAX_TIMELINE_CHAINS as u64);
            let used_lists = wanted <= offer;
            if used_lists {
                let (pages, moved) =
                    change_answers(&store, &timeline.chain, &served_lists, &set, trusted, head_index, &held, &followed);
                let moved: Vec<&ChainBuilder> = chains[..follow].iter().filter(|c| moved.contains(&c.chain)).collect();
                let linked = batched::<LinkedProof>(&store, &moved, d, &held);
                dd = pages;
                dd += answers_cost(&linked, moved.len(), &mut HashMap::new(), Response::LinkedProofs);
                let forward = batched::<Proof>(&store, &moved, d, &held);
                every_hop = pages;
                every_hop += answers_cost(&forward, moved.len(), &mut HashMap::new(), Response::Proofs);
            } else {
                let refusal = refusal_bytes(trusted.index(), wanted, offer);
                dd.bytes += refusal;
                every_hop.bytes += refusal;
            }
            let lists_mark = if used_lists { " (lists)" } else { "" };
            measured.push(Measured {
                days: days_behind,
                follow,
                new_blocks,
                linear: a,
                tuf_style: b,
                skipchain: c,
                timeline_skipchain: dd,
                every_hop,
                floor,
                attestations,
            });
            let ms = |c: Cost| format!("{:.2}", c.cpu.as_secs_f64() * 1e3);
            rows.push(vec![
                days_behind.to_string(),
                follow.to_string(),
                format!("{changed} / {new_blocks}"),
                bytes(a.bytes),
                bytes(b.bytes),
                bytes(c.bytes),
                format!("{}{lists_mark}", bytes(dd.bytes)),
                format!("1/{:.1}", a.bytes as f64 / c.bytes.max(1) as f64),
                format!("1/{:.1}", a.bytes as f64 / dd.bytes.max(1) as f64),
                format!("{}{lists_mark}", bytes(every_hop.bytes)),
                format!("1/{:.1}", a.bytes as f64 / every_hop.bytes.max(1) as f64),
                bytes(floor),
                format!("1/{:.1}", a.bytes as f64 / floor.max(1) as f64),
                ms(a),
                ms(b),
                ms(c),
                ms(dd),
                ms(every_hop),
            ]);
            for (s, cost) in [a, b, c, dd, every_hop].into_iter().enumerate() {
                plot_points[f][s].push((days_behind as f64, cost.bytes as f64));
            }
        }
    }
    report.text("Bytes a client downloads and CPU it spends verifying, per update. (a) linear: every block since the last update, the timeline's too (for freshness). (b) TUF-style: every committee or policy version in turn, then the newest block; the timeline likewise. (c) skipchain per project, no timeline: the `GetProofs` answers (256 chains each) a client gets naming the committee it holds; a roster change shared by many chains travels once per answer at most. (d) what `chainiac update` downloads. Its chains were reconciled with its timeline block at the last update, so it first asks for the timeline's change lists since then (`GetTimelineChanges`, capped at what its inclusion proofs would cost): where the witness serves them (marked \"(lists)\"), (d) is those answers — every timeline block since, each entry with the 4-byte chain prefix of every head that moved in it (every project's, followed or not) and the heads whose prefix the client follows opened — and the `GetLinkedProofs` answers for the followed chains that moved; elsewhere the witness's refusal and then the `GetTimelineBatch` answers (one multi-leaf inclusion proof per 1,024 chains), the timeline's own forward proof (every roster change, once), and the `GetLinkedProofs` answers: per chain, the headers linking the head the timeline records down to the client's block (hashes only, no signature, no landing on checkpoints), with the committee and policy in force there unless the client names the committee as held. (d1) what `chainiac update --every-hop` downloads: the same timeline part (change lists where (d) takes them, then only for the chains that moved), then `GetProofs` answers (forward proofs, one signature per committee of each chain, landing on every roster and key change) naming every committee the client holds. \"floor\": the new release records alone (each project's newest new release payload: manifest, developer signatures, attestations), which any client that learns the new releases must download whatever its proofs; where the floor exceeds 1/20 of (a), no protocol meets the goal. Bytes are serialized message bodies (postcard), CPU is decoding and verifying them.\n");
    report.table(
        &[
            "every D days",
            "P projects",
            "changed / new blocks",
            "(a) linear",
            "(b) TUF-style",
            "(c) skipchain",
            "(d) timeline+linked",
            "(c)/(a)",
            "(d)/(a)",
            "(d1) timeline+every hop",
            "(d1)/(a)",
            "floor: new releases",
            "floor/(a)",
            "(a) ms",
            "(b) ms",
            "(c) ms",
            "(d) ms",
            "(d1) ms",
        ],
        &rows,
    );
    // The goal: (c) and (d) at most 1/20 of (a) for monthly or rarer updates.
    let mut goal = Vec::new();
    for &days_behind in days.iter().filter(|&&d| d >= 30) {
        let met: Vec<String> = measured
            .iter()
            .filter(|m| m.days == days_behind)
            .map(|m| {
                let c = m.skipchain.bytes * 20 <= m.linear.bytes;
                let d = m.timeline_skipchain.bytes * 20 <= m.linear.bytes;
                let verdict = match (c, d) {
                    (true, true) => "met",
                    (true, false) => "met by (c) only",
                    (false, true) => "met by (d) only",
                    (false, false) if m.floor * 20 > m.linear.bytes => "missed (unreachable: floor > 1/20)",
                    (false, false) => "missed",
                };
                format!("P={} {verdict}", m.follow)
            })
            .collect();
        goal.push(format!("every {days_behind} days: {}", met.join(", ")));
    }
    report.text(&format!("Goal (c) and (d) ≤ 1/20 of (a), in bytes: {}.\n", goal.join("; ")));
    let names = ["(a) linear", "(b) TUF-style", "(c) skipchain", "(d) timeline + linked", "(d1) timeline + every hop"];
    for (f, &follow) in options.follows.iter().enumerate() {
        let file = format!("catchup-bytes-P{follow}{}.svg", options.plot_suffix);
        let title = format!("Bytes per update, client following {follow} projects");
        let series = names
            .iter()
            .zip(plot_points[f].iter())
            .map(|(n, p)| Series { name: n.to_string(), points: p.clone() })
            .collect();
        report.plot(&Plot {
            file: &file,
            title: &title,
            x_label: "days between updates",
            y_label: "bytes",
            log_x: true,
            log_y: true,
            series,
        })?;
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_count_days_from_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 1), 20_758);
        assert_eq!(month_start_ms("2026-11"), Some(20_758 * DAY_MS));
        assert_eq!(month_start_ms("2026-13"), None);
        assert_eq!(month_start_ms("soon"), None);
    }

    fn events_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.tsv");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn events_files_take_a_header_and_comments_and_name_bad_lines() {
        let (_dir, path) =
            events_file("unix_time\tpackage\tversion\n# a comment\n100\ta\t1.0\n300.5\ta\t1.1\n200\tb\t0.1\n");
        let workload = load_events(&path, 10_000 * DAY_MS, Now::Edge, 1).unwrap();
        assert_eq!(workload.all_names, ["a", "b"]);
        assert_eq!(workload.now_ms, 301_500);
        let a = workload.followed.iter().find(|p| p.name == "a").unwrap();
        assert_eq!((a.version.as_str(), a.releases.clone()), ("1.1", vec![100_000, 300_500]));

        let (_dir, path) = events_file("100\ta\t1.0\nyesterday\tb\t2.0\n");
        let error = load_events(&path, DAY_MS, Now::Edge, 1).err().unwrap().to_string();
        assert!(error.contains("line 2") && error.contains("yesterday"), "{error}");
        let (_dir, path) = events_file("100 a 1.0\n");
        let error = load_events(&path, DAY_MS, Now::Edge, 1).err().unwrap().to_string();
        assert!(error.contains("line 1") && error.contains("tabs"), "{error}");
    }

    #[test]
    fn now_inside_the_data_drops_later_releases_and_never_passes_the_edge() {
        let (_dir, path) = events_file("86400\ta\t1.0\n172800\ta\t1.1\n259200\tb\t0.1\n");
        let now = parse_date("1970-01-03").unwrap();
        assert_eq!(now, 2 * DAY_MS);
        let workload = load_events(&path, 10 * DAY_MS, Now::At(now), 1).unwrap();
        assert_eq!(workload.now_ms, now);
        assert!(workload.now_source.starts_with("1 days before"), "{}", workload.now_source);
        let before = load_events(&path, 10 * DAY_MS, Now::BeforeEdge(1), 1).unwrap();
        assert_eq!(before.now_ms, 2 * DAY_MS + 1000);
        let releases = |name: &str| workload.followed.iter().find(|p| p.name == name).unwrap().releases.clone();
        assert_eq!(releases("a"), vec![DAY_MS, 2 * DAY_MS]);
        assert_eq!(releases("b"), Vec::<u64>::new());
        let error =
            load_events(&path, DAY_MS, Now::At(parse_date("1970-01-05").unwrap()), 1).err().unwrap().to_string();
        assert!(error.contains("--now") && error.contains("edge"), "{error}");
        assert_eq!(parse_date("2024-02-29").unwrap(), days_from_civil(2024, 2, 29) as u64 * DAY_MS);
        for bad in ["2026-13-01", "2026-1", "yesterday", "1969-12-31", "2026-02-29", "2026-04-31", "2026-01-00"] {
            assert!(parse_date(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    /// A year of weekly releases: the skipchain proofs are real, verify, and are far
    /// smaller than the blocks one by one.
    #[test]
    fn skipchain_updates_beat_linear_ones_on_long_intervals() {
        let mut text = String::new();
        for p in 0..3 {
            for week in 0..52u64 {
                text.push_str(&format!("{}\tpkg-{p}\t1.{week}\n", 1_700_000_000 + week * 7 * 86_400 + p * 3_600));
            }
        }
        let (dir, path) = events_file(&text);
        let options = Options {
            pypi: PathBuf::new(),
            events: Some(path),
            days: vec![365, 1],
            follows: vec![1, 3],
            timeline_interval_minutes: 240,
            roster_change_days: 120,
            roster_phase_days: 10,
            key_rotation_days: 200,
            params: ChainParams::DEFAULT,
            now: Now::Edge,
            plot_suffix: String::new(),
            seed: 3,
            rebuilders: 0,
            rebuild_batch_ms: 0,
            rebuilt_projects: REBUILT_PROJECTS,
        };
        let mut report = Report::new(&dir.path().join("plots")).unwrap();
        let measured = run(&options, &mut report).unwrap();
        assert_eq!(measured.len(), 4);
        let year = measured.iter().find(|m| m.days == 365 && m.follow == 3).unwrap();
        assert!(year.new_blocks >= 3 * 52, "{year:?}");
        assert!(year.skipchain.bytes * 5 < year.linear.bytes, "{year:?}");
        assert!(year.timeline_skipchain.bytes * 5 < year.linear.bytes, "{year:?}");
        // Three roster changes in the year: forward proofs land on each in every chain,
        // linked ones skip them (the timeline's proof walked them once).
        assert!(year.timeline_skipchain.bytes < year.every_hop.bytes, "{year:?}");
        // A day behind: at most one new release each, and the timeline costs a few hops.
        let day = measured.iter().find(|m| m.days == 1 && m.follow == 3).unwrap();
        assert!(day.new_blocks <= 3 && day.skipchain.bytes <= day.linear.bytes + 64, "{day:?}");
        assert!(day.timeline_skipchain.bytes - day.skipchain.bytes < 4_000, "{day:?}");
        assert!(report.markdown().contains("| 365 | 3 |"));
        assert!(dir.path().join("plots/catchup-bytes-P3.svg").exists());

        // Two rebuilders attest each weekly release an hour apart: every chain gets two
        // rebuilds blocks per release in the year, and the updates stay within reach.
        let with = Options { rebuilders: 2, plot_suffix: "-rebuilders".into(), ..options };
        let rebuilt = run(&with, &mut report).unwrap();
        let year_rebuilt = rebuilt.iter().find(|m| m.days == 365 && m.follow == 3).unwrap();
        assert!(year_rebuilt.attestations >= 2 * 3 * 51, "{year_rebuilt:?}");
        assert!(year_rebuilt.new_blocks >= year.new_blocks + 2 * year_rebuilt.attestations, "{year_rebuilt:?}");
        assert!(year_rebuilt.timeline_skipchain.bytes >= year.timeline_skipchain.bytes, "{year_rebuilt:?}");
        assert_eq!(measured.iter().map(|m| m.attestations).sum::<u64>(), 0);

        // Batched by the witnesses for 3 hours, both attestations of a release go into one
        // rebuilds block and one summary: the same attestations (but for batches due after
        // now or outside the window), and one block per attestation fewer.
        let batched = Options { rebuild_batch_ms: 3 * 3_600_000, plot_suffix: "-batched".into(), ..with.clone() };
        let batched = run(&batched, &mut report).unwrap();
        let year_batched = batched.iter().find(|m| m.days == 365 && m.follow == 3).unwrap();
        let (a, b) = (year_batched, year_rebuilt);
        assert!(a.attestations + 6 >= b.attestations && a.attestations <= b.attestations, "{a:?} {b:?}");
        assert!(a.new_blocks + b.attestations <= b.new_blocks + 6, "{a:?} {b:?}");
        assert!(a.new_blocks + b.attestations + 6 >= b.new_blocks, "{a:?} {b:?}");

        // Only the project a one-project client follows rebuilt: the same attestations to
        // it, and the others' moves no longer in its update; a quiet report keeps nothing.
        let alone = Options { follows: vec![1], rebuilt_projects: 1, ..with };
        let mut quiet = Report::quiet();
        let own = run(&alone, &mut quiet).unwrap();
        assert!(quiet.markdown().is_empty());
        for m in &own {
            let all = rebuilt.iter().find(|r| (r.days, r.follow) == (m.days, 1)).unwrap();
            assert_eq!(m.attestations, all.attestations, "{m:?} {all:?}");
            assert!(m.timeline_skipchain.bytes <= all.timeline_skipchain.bytes, "{m:?} {all:?}");
        }
    }
}
