//! `chainiac rebuilder init | run`: a daemon anyone can run that follows release chains,
//! rebuilds each new release from its source in the verifiers' sandbox, and submits its
//! signed attestation to the chain's witnesses (SPEC §11.8).

use crate::client_cmd::{parse_chain, read_key};
use crate::{Alarm, UsageError};
use anyhow::{Context, Result};
use chainiac_client::{Client, TrustLevel};
use chainiac_proto::{ErrorCode, Request, Response};
use chainiac_release::{Artifact, Attestation, Policy, ReleasePayload};
use chainiac_skipchain::ChainId;
use chainiac_verifier::sandbox::{Isolation, Limits};
use chainiac_verifier::{Settings, Verifier};
use chainiac_witness::keyfile;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum RebuilderCommand {
    /// Create a rebuilder key (mode 0600) and a config in DIR, and print the key (what
    /// clients list in `--trust-rebuilders`).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Where source archives are fetched: a URL prefix (http(s)://, file:///, host:port/)
        /// to which the manifest's archive name is appended (repeatable; tried in turn, each
        /// download checked against the manifest's hash).
        #[arg(long = "source", required = true)]
        sources: Vec<String>,
        /// A release chain to follow (genesis id, hex; repeatable). Default: every release
        /// chain anchored in the rebuilder's client state.
        #[arg(long = "chain")]
        chains: Vec<String>,
        /// How builds are confined: `bubblewrap` (what verifiers use) or `none`.
        #[arg(long, default_value = "bubblewrap", value_parser = ["bubblewrap", "none"])]
        isolation: String,
        /// Seconds a build may run.
        #[arg(long, default_value_t = 600)]
        time_limit_s: u64,
        #[arg(long)]
        json: bool,
    },
    /// Check the newest rebuild summary of a chain's newest release against the signed
    /// attestations of the chain's rebuilds blocks before it, read from the verified head
    /// down to the release (every block hash-linked to it): every record must have exactly
    /// one attestation by its key, validly signed, about that release, with its verdict and
    /// isolation, and every such attestation a record. Exit 4 names a record without one
    /// (the committee vouched for what nobody signed) or an attestation left out; exit 1
    /// attestations not summarized yet, or a failure to check.
    Audit {
        /// A client state with the chain anchored (it is updated first).
        #[arg(long, default_value = "chainiac-client.state")]
        state: PathBuf,
        #[arg(long)]
        chain: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow the chains, rebuild each newest release not attested yet, and submit.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// One pass, then exit (the exit code says whether every submission went through).
        #[arg(long)]
        once: bool,
        #[arg(long)]
        json: bool,
    },
}

/// A rebuilder's configuration (`rebuilder.toml`). Paths are as `init` wrote them
/// (absolute).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuilderConfig {
    key_file: PathBuf,
    /// The sandbox's store (kept outcomes, build logs) and the list of submitted manifests.
    data_dir: PathBuf,
    /// A chainiac client state: the geneses anchored there (`chainiac anchor`) are what it
    /// may follow.
    state: PathBuf,
    /// Release chains to follow (hex); empty: every release chain anchored in `state`.
    #[serde(default)]
    chains: Vec<String>,
    sources: Vec<String>,
    #[serde(default)]
    isolation: Isolation,
    #[serde(default = "default_interval_s")]
    interval_s: u64,
    #[serde(default = "default_time_limit_s")]
    time_limit_s: u64,
    /// How long after a witness said it appended an attestation, or after its batch was
    /// due, the attestation may take to show in a verified summary (the timeline must
    /// record the new head) before it is submitted again, starting one member further.
    #[serde(default = "default_resubmit_after_s")]
    resubmit_after_s: u64,
}

fn default_interval_s() -> u64 {
    300
}

fn default_resubmit_after_s() -> u64 {
    120
}

fn default_time_limit_s() -> u64 {
    600
}

/// Releases this rebuilder found recorded in a summary it verified, `<chain hex> <manifest
/// hex>` per line (a bare manifest: written before chains were named): not built again.
const SUBMITTED: &str = "submitted";
/// Per followed chain, its newest release's submission: `<chain hex> <manifest hex> <retry
/// after, ms since the epoch> <attempt>` lines.
const QUEUED: &str = "queued";
/// The longest a rebuilder waits for a batch, whatever time a witness names (three times
/// the witnesses' default interval).
const MAX_BATCH_WAIT_MS: u64 = 3 * 3_600_000;

/// Per chain (hex): the manifest (hex) last submitted, when to submit it again, and the
/// attempt (which member it starts at, counted from the chain's first).
type Queued = std::collections::BTreeMap<String, (String, u64, u64)>;

fn read_queued(path: &std::path::Path) -> Queued {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (chain, manifest) = (parts.next()?, parts.next()?);
            let (retry_after, attempt) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
            Some((chain.to_string(), (manifest.to_string(), retry_after, attempt)))
        })
        .collect()
}

/// Written beside and renamed into place: a crash leaves the old file or the new one.
fn write_queued(path: &std::path::Path, queued: &Queued) -> Result<()> {
    let text: String = queued
        .iter()
        .map(|(chain, (manifest, retry_after, attempt))| format!("{chain} {manifest} {retry_after} {attempt}\n"))
        .collect();
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| format!("renaming {} into place", staged.display()))
}

pub fn run(command: RebuilderCommand) -> Result<()> {
    match command {
        RebuilderCommand::Init { dir, sources, chains, isolation, time_limit_s, json } => {
            for chain in &chains {
                parse_chain(chain)?;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let dir = dir.canonicalize()?;
            let key = chainiac_cosi::SecretKey::generate(&mut rand_core::OsRng);
            keyfile::write(&dir.join("rebuilder.key"), &key)?;
            let config = RebuilderConfig {
                key_file: dir.join("rebuilder.key"),
                data_dir: dir.join("data"),
                state: dir.join("client.state"),
                chains,
                sources,
                isolation: if isolation == "none" { Isolation::None } else { Isolation::Bubblewrap },
                interval_s: default_interval_s(),
                resubmit_after_s: default_resubmit_after_s(),
                time_limit_s,
            };
            let path = dir.join("rebuilder.toml");
            let text = toml::to_string_pretty(&config).expect("configs serialize");
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            let state = config.state.display();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "config": path.display().to_string(), "key": key.public_key().to_string() })
                );
            } else {
                println!("wrote {} and its key; rebuilder key {}", path.display(), key.public_key());
                println!("anchor the chains to follow: chainiac anchor --state {state} <genesis files>");
            }
            Ok(())
        }
        RebuilderCommand::Audit { state, chain, json } => audit(&state, &chain, json),
        RebuilderCommand::Run { config, once, json } => {
            let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            let config: RebuilderConfig =
                toml::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", config.display())))?;
            rebuild_loop(&config, once, json)
        }
    }
}

fn rebuild_loop(config: &RebuilderConfig, once: bool, json: bool) -> Result<()> {
    let key = read_key(&config.key_file)?;
    let settings = Settings {
        data_dir: config.data_dir.clone(),
        limits: Limits { time_limit: Duration::from_secs(config.time_limit_s), ..Limits::default() },
        concurrency: 1,
        isolation: config.isolation,
        bwrap: PathBuf::from("bwrap"),
        isolate_network: chainiac_verifier::network_isolation_available(),
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
    };
    let verifier = Verifier::open(key, settings).context("opening the rebuilder's sandbox")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _inside = runtime.enter();
    // Submissions go out under the rebuilder's own key too (witnesses may count per caller).
    let pool = crate::release_cmd::pool_with(read_key(&config.key_file)?)?;
    loop {
        let failed = runtime.block_on(one_pass(config, &verifier, &pool, json))?;
        if once {
            if failed > 0 {
                anyhow::bail!("{failed} release(s) could not be rebuilt or submitted (above)");
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(config.interval_s.max(1)));
    }
}

/// One pass over the followed chains; the number of releases that failed.
async fn one_pass(
    config: &RebuilderConfig,
    verifier: &Verifier,
    pool: &chainiac_proto::Pool,
    json: bool,
) -> Result<usize> {
    // Its own key trusted: a summary that commits to its records then has this rebuilder's
    // proven for the check below.
    let trust =
        TrustLevel { allow_yanked: true, trusted_rebuilders: vec![verifier.public_key()], ..TrustLevel::default() };
    let mut client = Client::open(&config.state, trust)?;
    let chains: Vec<ChainId> = if config.chains.is_empty() {
        let state = client.state();
        state.chains.iter().filter(|(_, t)| Policy::from_bytes(&t.policy).is_ok()).map(|(c, _)| *c).collect()
    } else {
        config.chains.iter().map(|c| parse_chain(c)).collect::<Result<_>>()?
    };
    let mut failed = 0;
    for (chain, result) in client.update_many(&chains).await.context("updating the followed chains")? {
        if let Err(e) = result {
            report(json, chain, None, Err(format!("update failed: {e}")));
            failed += 1;
        }
    }
    let submitted_path = config.data_dir.join(SUBMITTED);
    let mut submitted = std::fs::read_to_string(&submitted_path).unwrap_or_default();
    let queued_path = config.data_dir.join(QUEUED);
    let mut queued = read_queued(&queued_path);
    let before = queued.clone();
    let mut current = std::collections::BTreeSet::new();
    let me = verifier.public_key();
    for chain in chains {
        let Some(trusted) = client.state().chains.get(&chain).cloned() else { continue };
        let Some(release) = trusted.release.clone() else { continue };
        let (key, id) = (chain.to_hex(), hex::encode(release.manifest.id().0));
        current.insert(key.clone());
        let done = format!("{key} {id}");
        if submitted.lines().any(|l| l == done || l == id) {
            continue;
        }
        // Done only once the summary this client verified records this key: a witness's
        // word that it appended the attestation is not enough.
        let recorded = trusted.rebuilds_of_release().is_some_and(|s| s.record_of(&me).is_some());
        if recorded {
            submitted.push_str(&done);
            submitted.push('\n');
            std::fs::write(&submitted_path, &submitted)
                .with_context(|| format!("writing {}", submitted_path.display()))?;
            continue;
        }
        // Submitted before and still not recorded: wait until the time noted, then (the
        // witness crashed, dropped it, or lied) submit it again, starting one member
        // further, whatever that member had answered. A new release starts at the member
        // that took the chain's last one: a liar passed over stays passed over.
        let grace_ms = config.resubmit_after_s.saturating_mul(1000);
        let attempt = match queued.get(&key) {
            Some((m, retry_after, _)) if *m == id && chainiac_client::now_ms() < *retry_after => continue,
            Some((m, _, attempt)) if *m == id => attempt.saturating_add(1),
            Some((_, _, attempt)) => *attempt,
            None => 0,
        };
        let outcome = rebuild(config, verifier, pool, &trusted, &release, attempt).await;
        let now = chainiac_client::now_ms();
        let outcome = match outcome {
            Ok(Submitted::Appended(what)) => {
                queued.insert(key, (id, now.saturating_add(grace_ms), attempt));
                Ok(what)
            }
            Ok(Submitted::Queued { due_ms, at, verdict }) => {
                let wait_until = due_ms.min(now.saturating_add(MAX_BATCH_WAIT_MS));
                queued.insert(key, (id, wait_until.saturating_add(grace_ms), attempt));
                Ok(format!("{verdict}; queued at {at}, appended with its batch at {due_ms} ms since the epoch"))
            }
            Err(e) => {
                failed += 1;
                Err(e)
            }
        };
        report(json, chain, Some(&release), outcome);
    }
    // Chains no longer followed: forgotten.
    queued.retain(|chain, _| current.contains(chain));
    if queued != before {
        write_queued(&queued_path, &queued)?;
    }
    Ok(failed)
}

/// What a witness did with an attestation.
enum Submitted {
    /// Appended (or already recorded): what the witness said.
    Appended(String),
    /// Held for its batch, by the witness at `at`, appended at `due_ms`.
    Queued { due_ms: u64, at: String, verdict: &'static str },
}

/// Fetches the release's source, builds it, and submits the signed outcome to the chain's
/// witnesses in turn; what the witness said.
async fn rebuild(
    config: &RebuilderConfig,
    verifier: &Verifier,
    pool: &chainiac_proto::Pool,
    trusted: &chainiac_client::TrustedChain,
    release: &ReleasePayload,
    attempt: u64,
) -> Result<Submitted, String> {
    // Built before (the sandbox keeps an outcome the inputs decide): submitted again as
    // it is, without fetching or building.
    let id = release.manifest.id();
    if let Some(kept) = verifier.attestation(&id).map_err(|e| e.to_string())? {
        return submit(pool, trusted, kept, attempt).await;
    }
    let source = &release.manifest.source;
    if source.name.is_empty() || source.name.contains('/') || source.name.starts_with('.') {
        return Err(format!("the source archive's name {:?} is not a plain file name", source.name));
    }
    let expected = Artifact { path: source.name.clone(), sha3: source.sha3, size: source.size };
    let urls: Vec<String> = config
        .sources
        .iter()
        .map(|prefix| {
            if prefix.ends_with('/') {
                format!("{prefix}{}", source.name)
            } else {
                format!("{prefix}/{}", source.name)
            }
        })
        .collect();
    let bytes = tokio::task::spawn_blocking(move || crate::fetch_cmd::fetch_bytes(&urls, &expected))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))?;
    let attestation = verifier.build(&release.manifest, &bytes).await.map_err(|e| format!("building: {e}"))?;
    // Only an outcome the inputs decide goes on the record for good (one per rebuilder and
    // release): the sandbox keeps exactly those (SPEC §11.6); one that load or the machine
    // may have caused is built again at the next pass.
    if verifier.attestation(&id).map_err(|e| e.to_string())?.as_ref() != Some(&attestation) {
        return Err(format!(
            "{} here, which this machine may have caused: not submitted, built again at the next pass",
            describe(&attestation.body.outcome)
        ));
    }
    submit(pool, trusted, attestation, attempt).await
}

fn describe(outcome: &chainiac_release::Outcome) -> String {
    match outcome {
        chainiac_release::Outcome::Reproduced => "reproduced".into(),
        chainiac_release::Outcome::Mismatch { artifacts } => format!("{} artifact(s) differ", artifacts.len()),
        chainiac_release::Outcome::Failed { reason } => format!("failed ({reason})"),
    }
}

async fn submit(
    pool: &chainiac_proto::Pool,
    trusted: &chainiac_client::TrustedChain,
    attestation: Attestation,
    attempt: u64,
) -> Result<Submitted, String> {
    let verdict = chainiac_release::Verdict::of(&attestation.body.outcome).name();
    let request = Request::SubmitRebuild { chain: trusted.chain, attestation };
    let mut tried = Vec::new();
    // Every rebuilder of a chain starts at the same member, so that witnesses that batch
    // hold all of a release's attestations in one batch (one head move for clients); a
    // later attempt (the last one was not recorded) starts at the next member, so one that
    // lies about taking it is not asked first again.
    let members = trusted.committee.roster().members();
    let n = members.len().max(1) as u64;
    let first = u64::from_be_bytes(trusted.chain.0[..8].try_into().expect("8 bytes"));
    let start = ((first % n + attempt % n) % n) as usize;
    for member in members.iter().cycle().skip(start).take(members.len()) {
        match pool.call(&member.address, &member.key, &request, Duration::from_secs(60)).await {
            Ok(Response::Appended { block }) => {
                let recorded = chainiac_release::RebuildSummary::of_block(block.header.kind, &block.payload)
                    .map_or(0, |s| s.count());
                return Ok(Submitted::Appended(format!(
                    "{verdict}; summary at block {} records {recorded} rebuilders",
                    block.header.index
                )));
            }
            Ok(Response::RebuildQueued { due_ms }) => {
                return Ok(Submitted::Queued { due_ms, at: member.address.clone(), verdict });
            }
            Ok(Response::Error(e)) if e.code == ErrorCode::Refused && e.message.contains("already attested") => {
                return Ok(Submitted::Appended(format!("{verdict}; already recorded")));
            }
            Ok(Response::Error(e)) => tried.push(format!("{}: {:?}: {}", member.address, e.code, e.message)),
            Ok(other) => tried.push(format!("{}: answered {}", member.address, other.name())),
            Err(e) => tried.push(format!("{}: {e}", member.address)),
        }
    }
    Err(format!("no witness took it: {}", tried.join("; ")))
}

/// Rebuilders' daemons send an attestation no summary records again, which makes any
/// member append the summary: one that stays missing is withheld.
const LATER: &str =
    "a crash or a slow member leaves this for a while: audit again later; if it stays, the summary is withheld";

/// `chainiac rebuilder audit`.
fn audit(state: &std::path::Path, chain: &str, json: bool) -> Result<()> {
    let chain = parse_chain(chain)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut client = Client::open(state, TrustLevel { allow_yanked: true, ..TrustLevel::default() })?;
    runtime.block_on(client.update(chain)).context("updating the chain first")?;
    let trusted = client.state().chains[&chain].clone();
    let release = trusted.release.clone().context("the chain has no verified release")?;
    let id = release.manifest.id();
    let on_chain = runtime.block_on(client.rebuilds_on_chain(chain, id)).context("reading the chain's blocks")?;
    for why in &on_chain.undecodable {
        eprintln!("  COSIGNED YET UNDECODABLE: {why}");
    }
    let undecodable = match on_chain.undecodable.len() {
        0 => None,
        n => Some(format!("{n} rebuilds or summary block(s) the committee cosigned do not decode")),
    };
    let Some((at, summary)) = on_chain.summary else {
        if let Some(alarm) = undecodable {
            return Err(Alarm(alarm).into());
        }
        if on_chain.attestations.is_empty() {
            println!("release {} has no rebuild summary yet: nothing to audit", release.manifest.version);
            return Ok(());
        }
        anyhow::bail!("{} attestation(s) on the chain and no summary of them ({LATER})", on_chain.attestations.len());
    };
    // What the summary at `at` covers: the attestations of the rebuilds blocks before it.
    let (covered, pending): (Vec<_>, Vec<_>) = on_chain.attestations.iter().partition(|(block, _)| *block < at);
    if let Some(committed) = summary.committed {
        let covered: Vec<&Attestation> = covered.iter().map(|(_, a)| a).collect();
        return audit_committed(
            json,
            &chain,
            &release,
            (at, &summary, committed),
            &covered,
            pending.len(),
            undecodable,
        );
    }
    let by_id = |record: &chainiac_release::RebuildRecord| -> Vec<&Attestation> {
        covered.iter().map(|(_, a)| a).filter(|a| record.rebuilder.names(&a.body.verifier)).collect()
    };
    let backed = |record: &chainiac_release::RebuildRecord| {
        let by_key = by_id(record);
        let recorded_once = summary.records.iter().filter(|r| r.rebuilder == record.rebuilder).count() == 1;
        recorded_once
            && matches!(by_key[..], [a] if a.body.manifest == id && a.verify()
                && chainiac_release::RebuildRecord::of(a) == *record)
    };
    // Named by the whole key of the attestation behind it, or by the id when none is.
    let name = |record: &chainiac_release::RebuildRecord| match by_id(record)[..] {
        [a] => a.body.verifier.to_string(),
        _ => record.rebuilder.to_string(),
    };
    let rows: Vec<(String, &str, bool)> =
        summary.records.iter().map(|r| (name(r), r.verdict.name(), backed(r))).collect();
    let unbacked = rows.iter().filter(|(_, _, ok)| !ok).count();
    // On the chain before the summary, yet not in it: the committee left it out.
    let omitted: Vec<(u64, String, &str)> = covered
        .iter()
        .filter(|(_, a)| summary.record_of(&a.body.verifier).is_none())
        .map(|(block, a)| (*block, a.body.verifier.to_string(), chainiac_release::Verdict::of(&a.body.outcome).name()))
        .collect();
    if json {
        let records: Vec<_> = rows
            .iter()
            .map(|(key, verdict, ok)| serde_json::json!({ "rebuilder": key, "verdict": verdict, "backed": ok }))
            .collect();
        let left_out: Vec<_> = omitted
            .iter()
            .map(|(block, key, verdict)| serde_json::json!({ "rebuilder": key, "verdict": verdict, "block": block }))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "chain": chain.to_hex(), "version": release.manifest.version, "release": summary.release,
                "summary_block": at, "records": records, "unbacked": unbacked, "omitted": left_out,
                "not_yet_summarized": pending.len(), "undecodable": on_chain.undecodable,
            })
        );
    } else {
        println!("release {} (block {}), summary at block {at}:", release.manifest.version, summary.release);
        for (key, verdict, ok) in &rows {
            println!(
                "  {key} {verdict:<10} {}",
                if *ok {
                    "signed attestation on the chain matches"
                } else {
                    "NO MATCHING SIGNED ATTESTATION ON THE CHAIN"
                }
            );
        }
        for (block, key, verdict) in &omitted {
            println!("  {key} {verdict:<10} LEFT OUT: its attestation is in block {block}, before the summary");
        }
        if !pending.is_empty() {
            println!("  {} attestation(s) after the summary, not summarized yet", pending.len());
        }
    }
    // What the committee cosigned wrongly (exit 4), and what may yet be repaired (exit 1).
    let mut alarms: Vec<String> = undecodable.into_iter().collect();
    if unbacked > 0 {
        alarms.push(format!("{unbacked} record(s) of the summary have no signed attestation behind them"));
    }
    if !omitted.is_empty() {
        alarms.push(format!("{} attestation(s) on the chain are left out of the summary", omitted.len()));
    }
    audit_verdict(alarms, &summary, &release, pending.len())
}

/// The audit's end: what the committee cosigned wrongly (exit 4: `alarms`, and a summary
/// of another manifest), else what may yet be repaired (exit 1: `pending` attestations
/// after the summary).
fn audit_verdict(
    mut alarms: Vec<String>,
    summary: &chainiac_release::RebuildSummary,
    release: &ReleasePayload,
    pending: usize,
) -> Result<()> {
    if summary.manifest != release.manifest.id() {
        let (named, version) = (summary.manifest, &release.manifest.version);
        alarms.push(format!("the summary names manifest {named}, not release {version}'s"));
    }
    let pending =
        (pending > 0).then(|| format!("{pending} attestation(s) after the summary are not summarized ({LATER})"));
    match (alarms.is_empty(), pending) {
        (false, pending) => Err(Alarm(alarms.into_iter().chain(pending).collect::<Vec<_>>().join("; ")).into()),
        (true, Some(pending)) => anyhow::bail!("{pending}"),
        (true, None) => Ok(()),
    }
}

/// The audit of a summary that commits to its records (SPEC §11.8): the attestations before
/// it, each signed and about the release, one per rebuilder id and none by a key that
/// attested in the release block, must give its counts and Merkle root.
fn audit_committed(
    json: bool,
    chain: &ChainId,
    release: &ReleasePayload,
    (at, summary, committed): (u64, &chainiac_release::RebuildSummary, chainiac_release::CommittedRecords),
    covered: &[&Attestation],
    pending: usize,
    undecodable: Option<String>,
) -> Result<()> {
    let id = release.manifest.id();
    let invalid = covered.iter().filter(|a| !(a.body.manifest == id && a.verify())).count();
    // Witnesses refuse these before voting; blocks caught up on are checked one at a time,
    // so only colluders put them on a chain, and the counts would take them as rebuilders.
    let mut seen: std::collections::HashSet<chainiac_release::RebuilderId> =
        release.attestations.iter().map(|a| chainiac_release::RebuilderId::of(&a.body.verifier)).collect();
    let twice = covered.iter().filter(|a| !seen.insert(chainiac_release::RebuilderId::of(&a.body.verifier))).count();
    let records: Vec<_> = covered.iter().map(|a| chainiac_release::RebuildRecord::of(a)).collect();
    let recomputed = chainiac_release::CommittedRecords::of(&records);
    let matches = recomputed == committed;
    let tally = committed.tally;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "chain": chain.to_hex(), "version": release.manifest.version, "release": summary.release,
                "summary_block": at, "committed": {
                    "records": tally.records(), "reproduced_sandboxed": tally.reproduced_sandboxed,
                    "reproduced_unconfined": tally.reproduced_unconfined, "mismatch": tally.mismatch,
                    "failed": tally.failed, "root": hex::encode(committed.root),
                    "matches_the_attestations": matches,
                },
                "attestations_before": covered.len(), "invalid": invalid, "twice": twice,
                "not_yet_summarized": pending,
            })
        );
    } else {
        println!(
            "release {} (block {}), summary at block {at}: counts and root of {} records ({} reproduced, {} \
             disagreed), {}",
            release.manifest.version,
            summary.release,
            tally.records(),
            tally.reproduced(false),
            tally.disagreements(),
            if matches {
                "those of the signed attestations before it"
            } else {
                "NOT THOSE OF THE ATTESTATIONS BEFORE IT"
            }
        );
        if pending > 0 {
            println!("  {pending} attestation(s) after the summary, not summarized yet");
        }
    }
    let mut alarms: Vec<String> = undecodable.into_iter().collect();
    if invalid > 0 {
        alarms.push(format!("{invalid} attestation(s) before the summary are not validly signed about the release"));
    }
    if twice > 0 {
        alarms.push(format!(
            "{twice} attestation(s) before the summary are by a rebuilder that attested the release already"
        ));
    }
    if !matches {
        alarms.push(format!(
            "the summary's counts and root are not those of the {} attestation(s) before it",
            covered.len()
        ));
    }
    audit_verdict(alarms, summary, release, pending)
}

fn report(json: bool, chain: ChainId, release: Option<&ReleasePayload>, outcome: Result<String, String>) {
    let version = release.map(|r| r.manifest.version.clone());
    if json {
        let (ok, what) = match &outcome {
            Ok(what) => (true, what),
            Err(what) => (false, what),
        };
        println!("{}", serde_json::json!({ "chain": chain.to_hex(), "version": version, "ok": ok, "outcome": what }));
    } else {
        let name = version.map(|v| format!("release {v} of ")).unwrap_or_default();
        match outcome {
            Ok(what) => println!("{name}{chain}: {what}"),
            Err(what) => eprintln!("{name}{chain}: FAILED: {what}"),
        }
    }
}
