//! What release managers run: `chainiac project init`, `release prepare | sign | submit`.

use crate::client_cmd::parse_chain;
use crate::witness_cmd::parse_key;
use crate::UsageError;
use anyhow::{bail, Context, Result};
use chainiac_proto::{ErrorCode, Pool, Request, Response};
use chainiac_release::{
    content_hash, Artifact, DeveloperSignature, Manifest, Policy, Recipe, SourceArchive, VerifierEntry, KIND_RELEASE,
    SOURCE_DATE_EPOCH,
};
use chainiac_skipchain::timeline::KIND_TIMELINE;
use chainiac_skipchain::{genesis, ChainParams};
use chainiac_verifier::sandbox::Isolation;
use clap::Subcommand;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a chain from a roster file and a policy file: write its genesis and have the
    /// first witness of the roster start serving it (it tells the others).
    Init {
        /// `[[member]]` entries, as `chainiac witness init` prints them.
        #[arg(long)]
        roster: PathBuf,
        /// The project's policy (TOML); not needed for a timeline.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Make the cothority's timeline instead of a project.
        #[arg(long)]
        timeline: bool,
        /// Witnesses that must cosign each block (default: the Byzantine quorum; it must
        /// exceed two thirds of the roster).
        #[arg(long)]
        threshold: Option<u32>,
        /// The committee's epoch: the cothority's current one (its timeline committee's, as
        /// `chainiac chain show` prints it at the last roster change; 0 before any). Witnesses
        /// refuse a new chain below it, since approvals of a committee the cothority left
        /// would still appoint it there.
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        /// The key to present to the witness: a witness key of the roster (its operator's)
        /// to create a timeline, or an allow-listed creator's key (default: a throwaway key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Where to write the genesis block (clients anchor on it).
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A project's state as a client verified it: head, policy, newest release, and how
    /// often each build verifier agreed with the others.
    Show {
        #[arg(long, default_value = "chainiac-client.state")]
        state: PathBuf,
        #[arg(long)]
        chain: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Replace a project's policy (e.g. rotate developer keys), signed by its root keys.
    Rotate {
        /// A client state with the chain anchored (it is updated first).
        #[arg(long, default_value = "chainiac-client.state")]
        state: PathBuf,
        #[arg(long)]
        chain: String,
        /// The new policy (TOML).
        #[arg(long)]
        policy: PathBuf,
        /// A root key file (repeatable: as many as the current root threshold).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Take back the yank of this release (repeatable); other yanks carry over.
        #[arg(long = "unyank")]
        unyank: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// Hash a source archive and the artifacts of a build into a manifest. With `--build`
    /// the build runs here exactly as verifiers run it (the same sandbox, path and
    /// environment); without it, the artifacts are files you built.
    Prepare {
        #[arg(long)]
        project: String,
        #[arg(long)]
        version: String,
        /// The source archive verifiers rebuild from: tar, tar.gz, tar.xz, tar.bz2, tar.zst
        /// or zip (anything else is refused here, before it is signed).
        #[arg(long)]
        source: PathBuf,
        /// Where to run the build, relative to the unpacked source.
        #[arg(long, default_value = ".")]
        workdir: String,
        /// An expected artifact: PATH_IN_SOURCE_TREE with `--build`, else
        /// PATH_IN_SOURCE_TREE=LOCAL_FILE (repeatable).
        #[arg(long = "artifact", required = true)]
        artifacts: Vec<String>,
        /// A variable the build needs: NAME=VALUE (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Build here, in the verifiers' sandbox, and take the artifacts from that build.
        #[arg(long)]
        build: bool,
        /// The sandbox for `--build`: `bubblewrap` (what verifiers use) or `none`
        /// (unconfined, at another path: `-g` builds then differ from the verifiers').
        #[arg(long, default_value = "bubblewrap", value_parser = ["bubblewrap", "none"])]
        isolation: String,
        /// The SOURCE_DATE_EPOCH every build of this release sees (seconds since 1970;
        /// default: the newest modification time in the archive). Recorded in the recipe.
        #[arg(long)]
        source_date_epoch: Option<u64>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
        /// The build command, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Sign a manifest with one developer key (offline); appends to the signature file.
    Sign {
        #[arg(long)]
        manifest: PathBuf,
        /// The developer's key: a chainiac key file or an OpenSSH ed25519 private key
        /// (passphrase from CHAINIAC_SSH_PASSPHRASE).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        signatures: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Send a signed manifest and its source to a witness: verifiers rebuild, witnesses cosign.
    Submit {
        #[arg(long)]
        chain: String,
        #[arg(long)]
        manifest: PathBuf,
        #[arg(long)]
        signatures: PathBuf,
        #[arg(long)]
        source: PathBuf,
        /// A witness of the chain: HOST:PORT.
        #[arg(long)]
        witness: String,
        /// That witness's public key (hex).
        #[arg(long)]
        witness_key: String,
        #[arg(long)]
        json: bool,
    },
    /// Take a release out of circulation: clients refuse to install it unless told to. It
    /// takes the policy's threshold of developer keys, or of root keys; the root keys can
    /// take it back (`policy rotate --unyank`).
    Yank {
        /// A client state with the chain anchored (it is updated first).
        #[arg(long, default_value = "chainiac-client.state")]
        state: PathBuf,
        #[arg(long)]
        chain: String,
        #[arg(long)]
        version: String,
        /// Why, as clients will show it (1 to 256 bytes).
        #[arg(long)]
        reason: String,
        /// A developer or root key file (repeatable: as many as the policy's threshold).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Fetch each verifier's attestation and build log for a manifest: what to read when a
    /// release was not reproduced. The verifiers must list your key in `build_callers`.
    Logs {
        #[arg(long)]
        manifest: PathBuf,
        /// The project's policy (TOML): its `[[verifier]]` entries are asked.
        #[arg(long)]
        policy: PathBuf,
        /// The key to present (a chainiac key file or an OpenSSH ed25519 key).
        #[arg(long)]
        key: PathBuf,
        /// Where to write `<verifier key>.log` files (and fetched artifacts).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// PATH_IN_SOURCE_TREE=LOCAL_FILE (repeatable): fetch what each verifier whose
        /// build differed made of that artifact, and name the first byte where it differs
        /// from your file.
        #[arg(long = "compare")]
        compare: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

/// A policy as release managers write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    project: String,
    developers: Vec<String>,
    release_threshold: u32,
    root_keys: Vec<String>,
    root_threshold: u32,
    #[serde(default)]
    verifier: Vec<VerifierFile>,
    verifier_threshold: u32,
    /// Only reproductions in a sandbox (`isolation = namespaces` in the attestation) count
    /// towards `verifier_threshold`.
    #[serde(default)]
    require_isolation: bool,
    #[serde(default = "default_max_age_ms")]
    max_age_ms: u64,
    /// Raised by every change; `policy rotate` takes the version after the chain's when the
    /// file says none (a new project starts at 0).
    version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifierFile {
    key: String,
    address: String,
}

fn default_max_age_ms() -> u64 {
    3_600_000
}

/// The policy in `path`; its version, if the file gives none, is `default_version`.
fn read_policy(path: &Path, default_version: u64) -> Result<Policy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: PolicyFile = toml::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    let keys = |list: &[String]| list.iter().map(|k| parse_key(k)).collect::<Result<Vec<_>>>();
    let policy = Policy {
        project: file.project,
        developers: keys(&file.developers)?,
        release_threshold: file.release_threshold,
        root_keys: keys(&file.root_keys)?,
        root_threshold: file.root_threshold,
        verifiers: file
            .verifier
            .iter()
            .map(|v| Ok(VerifierEntry { key: parse_key(&v.key)?, address: v.address.clone() }))
            .collect::<Result<_>>()?,
        verifier_threshold: file.verifier_threshold,
        require_isolation: file.require_isolation,
        max_age_ms: file.max_age_ms,
        version: file.version.unwrap_or(default_version),
        // Yanks are not written in policy files: `policy rotate` carries the chain's over.
        yanked: Vec::new(),
    };
    policy.check().map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    Ok(policy)
}

fn now_ms() -> u64 {
    chainiac_client::now_ms()
}

fn decode<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    chainiac_skipchain::decode_exact(&bytes)
        .map_err(|e| UsageError(format!("{} is not a {what}: {e}", path.display())).into())
}

fn pool() -> Result<Pool> {
    pool_with(chainiac_cosi::SecretKey::generate(&mut rand_core::OsRng))
}

/// [`pool`] from outside `runtime` (its endpoint binds inside it), for calls made with
/// `runtime.block_on`.
fn pool_in(runtime: &tokio::runtime::Runtime) -> Result<Pool> {
    let _entered = runtime.enter();
    pool()
}

/// A connection pool that presents `key` to the nodes it calls.
pub(crate) fn pool_with(key: chainiac_cosi::SecretKey) -> Result<Pool> {
    let endpoint = chainiac_proto::endpoint::client("0.0.0.0:0".parse().expect("valid"))?;
    Ok(Pool::new(endpoint, Arc::new(key)))
}

/// Updates the client's view of `chain` and returns the client.
fn updated_client(
    state: &Path,
    chain: chainiac_skipchain::ChainId,
    runtime: &tokio::runtime::Runtime,
) -> Result<chainiac_client::Client> {
    let mut client = chainiac_client::Client::open(state, chainiac_client::TrustLevel::default())?;
    runtime.block_on(client.update(chain)).context("updating the project first")?;
    Ok(client)
}

pub fn policy(command: PolicyCommand) -> Result<()> {
    let PolicyCommand::Rotate { state, chain, policy, keys, unyank, json } = command;
    let chain = parse_chain(&chain)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut client = updated_client(&state, chain, &runtime)?;
    let trusted = client.state().chains[&chain].clone();
    let current = chainiac_release::Policy::from_bytes(&trusted.policy)
        .map_err(|e| UsageError(format!("chain {chain} has no release policy: {e}")))?;
    let next =
        current.version.checked_add(1).ok_or_else(|| UsageError("the policy's version is at its maximum".into()))?;
    let mut new = read_policy(&policy, next)?;
    for version in &unyank {
        if current.yank_of(version).is_none() {
            return Err(UsageError(format!("release {version:?} of {chain} is not yanked")).into());
        }
    }
    new.yanked = current.yanked.iter().filter(|y| !unyank.contains(&y.version)).cloned().collect();
    let new = new.to_bytes();
    let (old_hash, new_hash) =
        (chainiac_skipchain::block::policy_hash(&trusted.policy), chainiac_skipchain::block::policy_hash(&new));
    let root_signatures = keys
        .iter()
        .map(|k| {
            Ok(chainiac_release::RootSignature::sign(&crate::client_cmd::read_key(k)?, &chain.0, &old_hash, &new_hash))
        })
        .collect::<Result<Vec<_>>>()?;
    let proposal = chainiac_skipchain::Proposal {
        kind: chainiac_release::KIND_POLICY_CHANGE,
        payload: chainiac_release::PolicyChange { root_signatures }.to_bytes(),
        policy: Some(new),
        ..Default::default()
    };
    let index = propose(&runtime, &mut client, chain, proposal)?;
    if json {
        println!("{}", serde_json::json!({ "chain": chain.to_hex(), "index": index }));
    } else {
        println!("policy of {chain} replaced at block {index}");
    }
    Ok(())
}

/// Sends `proposal` (a policy change: a yank or a rotation) to the members of the chain's
/// committee in turn until one appends it; the index it was appended at. The block a member
/// answers is checked: the proposal's payload and policy, on this chain after the client's
/// head, collectively signed by the committee the client trusts, so one member cannot drop
/// it and report it done. A member that refuses it, cannot be reached, is busy or lags
/// passes it to the next (one faulty member's refusal stops nothing). When none appended
/// it, the chain is updated from its committee and looked at: a member may have appended it
/// and lost its answer, and the others then refuse the replay; then the head's index is
/// returned.
fn propose(
    runtime: &tokio::runtime::Runtime,
    client: &mut chainiac_client::Client,
    chain: chainiac_skipchain::ChainId,
    proposal: chainiac_skipchain::Proposal,
) -> Result<u64> {
    let trusted = client.state().chains[&chain].clone();
    let pool = pool_in(runtime)?;
    let (mut refusals, mut tried) = (Vec::new(), Vec::new());
    for member in trusted.committee.roster().members() {
        let request = Request::Propose { chain, proposal: proposal.clone() };
        let reply = runtime.block_on(pool.call(&member.address, &member.key, &request, Duration::from_secs(60)));
        match reply {
            Ok(Response::Appended { block }) => match appended_as_proposed(&trusted, &proposal, &block) {
                Ok(()) => {
                    // Whoever failed before is worth an operator's look.
                    for failed in refusals.iter().chain(&tried) {
                        eprintln!("warning: {failed}");
                    }
                    return Ok(block.header.index);
                }
                Err(why) => tried.push(format!("{}: answered a block that {why}", member.address)),
            },
            Err(chainiac_proto::CallError::Remote(e))
                if matches!(e.code, ErrorCode::Refused | ErrorCode::BadRequest) =>
            {
                refusals.push(format!("{} refused it: {:?}: {}", member.address, e.code, e.message))
            }
            Ok(other) => tried.push(format!("{}: answered {}", member.address, other.name())),
            Err(e) => tried.push(format!("{}: {e}", member.address)),
        }
    }
    let proposed_policy = proposal.policy.as_deref().map(chainiac_skipchain::block::policy_hash);
    // From the chain's own committee (forward proofs): the timeline records a new head only
    // at its next block, and a lost answer is looked for now.
    let was_every_hop = client.every_hop_chains.insert(chain);
    let updated = runtime.block_on(client.update(chain));
    if was_every_hop {
        client.every_hop_chains.remove(&chain);
    }
    if updated.is_ok() {
        let now = &client.state().chains[&chain];
        if now.index() > trusted.index() && Some(now.header.policy_hash) == proposed_policy {
            for failed in refusals.iter().chain(&tried) {
                eprintln!("warning: {failed}");
            }
            eprintln!(
                "warning: no member said it appended it, but its policy is in force at the head, block {} (the \
                 block that appended it may be earlier)",
                now.index()
            );
            return Ok(now.index());
        }
    }
    let all: Vec<String> = refusals.into_iter().chain(tried).collect();
    bail!("no member of the committee appended it: {}", all.join("; "))
}

/// Whether `block`, a member's answer to `proposal`, is it: after the client's head, with
/// its payload and policy, signed by the committee the client trusts (a committee change
/// since the client's update makes this fail: `update`, then look).
fn appended_as_proposed(
    trusted: &chainiac_client::TrustedChain,
    proposal: &chainiac_skipchain::Proposal,
    block: &chainiac_skipchain::Block,
) -> Result<(), String> {
    let header = &block.header;
    let elsewhere = header.chain != Some(trusted.chain);
    if elsewhere || header.index <= trusted.index() || header.kind != proposal.kind || block.payload != proposal.payload
    {
        return Err(format!("is not the proposal (block {}, kind {})", header.index, header.kind));
    }
    if let Some(policy) = &proposal.policy {
        if header.policy_hash != chainiac_skipchain::block::policy_hash(policy) {
            return Err("does not put the proposed policy in force".into());
        }
    }
    let signature = block.signature.as_ref().ok_or("has no collective signature")?;
    signature
        .verify(&trusted.committee, &header.id())
        .map_err(|e| format!("the committee did not sign (update the chain and look at block {}): {e}", header.index))
}

/// `chainiac release yank`: the chain's policy with the yank added, signed by each key.
fn yank(state: &Path, chain: &str, version: String, reason: String, keys: &[PathBuf], json: bool) -> Result<()> {
    let chain = parse_chain(chain)?;
    if reason.is_empty() || reason.len() > chainiac_release::MAX_YANK_REASON {
        return Err(UsageError("--reason must be 1 to 256 bytes".into()).into());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let mut client = updated_client(state, chain, &runtime)?;
    let trusted = client.state().chains[&chain].clone();
    let current = chainiac_release::Policy::from_bytes(&trusted.policy)
        .map_err(|e| UsageError(format!("chain {chain} has no release policy: {e}")))?;
    if let Some(earlier) = current.yank_of(&version) {
        return Err(UsageError(format!("release {version} is already yanked: {}", earlier.reason)).into());
    }
    if current.version == u64::MAX {
        return Err(UsageError(
            "the policy's version is at its maximum: no change, a yank included, can follow".into(),
        )
        .into());
    }
    let yank = chainiac_release::Yank { version, reason, time_ms: now_ms() };
    let old_hash = chainiac_skipchain::block::policy_hash(&trusted.policy);
    let signatures = keys
        .iter()
        .map(|k| {
            Ok(chainiac_release::YankSignature::sign(&crate::client_cmd::read_key(k)?, &chain.0, &old_hash, &yank))
        })
        .collect::<Result<Vec<_>>>()?;
    let proposal = chainiac_skipchain::Proposal {
        kind: chainiac_release::KIND_YANK,
        payload: chainiac_release::YankPayload { signatures }.to_bytes(),
        policy: Some(current.with_yank(yank.clone()).to_bytes()),
        ..Default::default()
    };
    let index = propose(&runtime, &mut client, chain, proposal)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "chain": chain.to_hex(), "index": index, "yanked": yank.version, "reason": yank.reason })
        );
    } else {
        println!("release {} of {chain} yanked at block {index}: {}", yank.version, yank.reason);
    }
    Ok(())
}

fn show(state: &Path, chain: &str, json: bool) -> Result<()> {
    let chain = parse_chain(chain)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = updated_client(state, chain, &runtime)?;
    let trusted = client.state().chains[&chain].clone();
    let policy =
        Policy::from_bytes(&trusted.policy).map_err(|e| anyhow::anyhow!("chain {chain} has no release policy: {e}"))?;
    // Who agreed and who disputed what, from the chain itself (hash-linked to the verified
    // head, so no member can hide a dispute); whom each witness throttles is its own state,
    // asked of the members in turn and named as that member's.
    let tracked = runtime.block_on(client.tracker_on_chain(chain)).context("reading the chain's history")?;
    let (records, disputed) = (tracked.records(), tracked.disputed().to_vec());
    let (throttled, throttled_by) = throttled_by_a_member(&runtime, &trusted);
    let release = trusted.release.as_ref().map(|r| r.manifest.version.clone());
    let level = client.level(chain);
    let role = |r: &chainiac_release::TrackRecord| match r.role {
        chainiac_release::Role::Verifier => "verifier",
        chainiac_release::Role::Rebuilder => "rebuilder",
    };
    let throttled_until =
        |r: &chainiac_release::TrackRecord| throttled.iter().find(|(k, _)| *k == r.key.to_bytes()).map(|(_, t)| *t);
    if json {
        let records: Vec<_> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "key": r.key.to_string(), "role": role(r), "attested": r.attested, "agreed": r.agreed,
                    "disagreed": r.disagreed, "first_seen_ms": r.first_seen_ms, "throttled_until_ms": throttled_until(r),
                })
            })
            .collect();
        let disputed: Vec<_> = disputed
            .iter()
            .map(|d| {
                let who: Vec<_> = d
                    .disagreeing
                    .iter()
                    .map(|(k, v)| serde_json::json!({ "key": k.to_string(), "verdict": v.name() }))
                    .collect();
                serde_json::json!({ "release": d.release, "version": d.version, "disagreeing": who })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "chain": chain.to_hex(), "project": policy.project, "head": trusted.index(), "release": release,
                "level": level.as_ref().map(crate::client_cmd::level_json),
                "developers": policy.developers.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                "release_threshold": policy.release_threshold, "verifier_threshold": policy.verifier_threshold,
                "require_isolation": policy.require_isolation,
                "witnesses": trusted.committee.roster().len(), "witness_threshold": trusted.committee.threshold(),
                "tracker": records, "disputed": disputed, "throttles_of": throttled_by,
                "yanked": policy.yanked.iter().map(|y| serde_json::json!({ "version": y.version, "reason": y.reason, "time_ms": y.time_ms })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("project {} (chain {chain}), head block {}", policy.project, trusted.index());
        let newest_yanked =
            release.as_deref().and_then(|v| policy.yank_of(v)).map(|y| format!(" (YANKED: {})", y.reason));
        println!("newest release: {}{}", release.as_deref().unwrap_or("none"), newest_yanked.unwrap_or_default());
        if let Some(level) = &level {
            println!("  {}", level.describe());
        }
        for y in &policy.yanked {
            println!("yanked: {} ({})", y.version, y.reason);
        }
        println!("developers: {} keys, {} must sign", policy.developers.len(), policy.release_threshold);
        println!(
            "witnesses: {} in the committee, {} must cosign",
            trusted.committee.roster().len(),
            trusted.committee.threshold()
        );
        let sandboxed = if policy.require_isolation { " in a sandbox" } else { "" };
        println!(
            "verifiers ({} must reproduce{sandboxed}) and rebuilders, from the chain (throttles as {} has them):",
            policy.verifier_threshold,
            throttled_by.as_deref().unwrap_or("no witness that answered")
        );
        for r in &records {
            let throttled = throttled_until(r).map(|t| format!("  THROTTLED until {t} ms")).unwrap_or_default();
            println!(
                "  {} {:<9} attested {}  agreed {}  disagreed {}{throttled}",
                r.key,
                role(r),
                r.attested,
                r.agreed,
                r.disagreed
            );
        }
        for d in &disputed {
            let who: Vec<String> =
                d.disagreeing.iter().map(|(k, v)| format!("{} {}", &k.to_string()[..16], v.name())).collect();
            println!("DISPUTED release {} (block {}): {}", d.version, d.release, who.join(", "));
        }
    }
    Ok(())
}

/// Whom a member of the chain's committee throttles (its own state, SPEC §11.8), asked of
/// the members in turn, and which member answered (none: nobody did).
fn throttled_by_a_member(
    runtime: &tokio::runtime::Runtime,
    trusted: &chainiac_client::TrustedChain,
) -> (Vec<([u8; 32], u64)>, Option<String>) {
    let Ok(pool) = pool_in(runtime) else {
        return (Vec::new(), None);
    };
    let request = Request::GetTracker { chain: trusted.chain };
    for member in trusted.committee.roster().members() {
        if let Ok(Response::Tracker(report)) =
            runtime.block_on(pool.call(&member.address, &member.key, &request, Duration::from_secs(30)))
        {
            return (report.throttled, Some(member.address.clone()));
        }
    }
    (Vec::new(), None)
}

pub fn project(command: ProjectCommand) -> Result<()> {
    let (roster, policy, timeline, threshold, epoch, key, out, json) = match command {
        ProjectCommand::Show { state, chain, json } => return show(&state, &chain, json),
        ProjectCommand::Init { roster, policy, timeline, threshold, epoch, key, out, json } => {
            (roster, policy, timeline, threshold, epoch, key, out, json)
        }
    };
    let committee = crate::roster_cmd::read_committee(&roster, threshold)?.with_epoch(epoch);
    chainiac_skipchain::authority::check_quorum(&committee).map_err(|e| UsageError(e.to_string()))?;
    let (kind, policy_bytes) = match (timeline, policy) {
        (true, _) => (KIND_TIMELINE, b"timeline".to_vec()),
        (false, Some(path)) => (KIND_RELEASE, read_policy(&path, 0)?.to_bytes()),
        (false, None) => bail!(UsageError("a project needs --policy (or pass --timeline)".into())),
    };
    let first = genesis(ChainParams::DEFAULT, committee.clone(), policy_bytes, kind, vec![], now_ms());
    let member = committee.roster().members()[0].clone();
    let runtime = tokio::runtime::Runtime::new()?;
    let reply = runtime.block_on(async {
        let pool = match &key {
            Some(path) => pool_with(crate::client_cmd::read_key(path)?)?,
            None => pool()?,
        };
        anyhow::Ok(
            pool.call(
                &member.address,
                &member.key,
                &Request::CreateChain { genesis: first.clone() },
                Duration::from_secs(30),
            )
            .await?,
        )
    })?;
    let Response::Created { chain } = reply else { bail!("unexpected answer: {reply:?}") };
    std::fs::write(&out, first.to_bytes()).with_context(|| format!("writing {}", out.display()))?;
    if json {
        println!("{}", serde_json::json!({ "chain": chain.to_hex(), "genesis": out.display().to_string() }));
    } else {
        println!("chain {chain} created; genesis written to {} (clients anchor on it)", out.display());
    }
    Ok(())
}

/// How `prepare` records the build.
struct RecipeArgs {
    workdir: String,
    env: Vec<String>,
    command: Vec<String>,
    source_date_epoch: Option<u64>,
}

/// The manifest for `source` and its build, checked for what would fail at the verifiers
/// before anyone signs it: an archive they do not read or that exceeds a build frame, a
/// command that is one quoted string, a bad SOURCE_DATE_EPOCH. With `build`, the recipe runs
/// here in that sandbox (its log beside `out`, as `<out>.build.log`) and the artifacts are
/// hashed from it; else `artifacts` name local files.
fn prepare(
    project: String,
    version: String,
    source: &Path,
    artifacts: &[String],
    recipe: RecipeArgs,
    build: Option<Isolation>,
    out: &Path,
) -> Result<Manifest> {
    let archive = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    let name = source.display();
    // What the verifiers will refuse, refused now rather than after signing.
    chainiac_verifier::unpack::ArchiveFormat::detect(&archive).map_err(|e| UsageError(format!("{name}: {e}")))?;
    let limit = chainiac_proto::FrameClass::Build.limit();
    // Room for the manifest, the chain id and a few hundred developer signatures.
    if archive.len() > limit - (256 << 10) {
        bail!(UsageError(format!(
            "{name} is {} bytes; a release submission carries it in one frame of at most {limit} bytes (with the manifest and signatures): ship a smaller source archive",
            archive.len()
        )));
    }
    if let [only] = recipe.command.as_slice() {
        if only.contains(char::is_whitespace) {
            bail!(UsageError(format!(
                "the build command is the one word {only:?}, which no verifier can run; write `-- sh -c {only:?}` to run it through a shell, or give each word separately"
            )));
        }
    }
    let mut env = recipe.env.iter().map(|e| split_pair(e, "env")).collect::<Result<Vec<_>>>()?;
    if env.iter().any(|(name, _)| name == SOURCE_DATE_EPOCH) {
        bail!(UsageError(format!("set {SOURCE_DATE_EPOCH} with --source-date-epoch, not --env")));
    }
    let limits = chainiac_verifier::sandbox::Limits::default();
    let epoch = match recipe.source_date_epoch {
        Some(epoch) => epoch,
        None => newest_time(&archive, &limits).map_err(|e| UsageError(format!("{name}: {e}")))?,
    };
    env.push((SOURCE_DATE_EPOCH.to_string(), epoch.to_string()));
    let mut manifest = Manifest {
        project,
        version,
        source: SourceArchive {
            name: source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            sha3: content_hash(&archive),
            size: archive.len() as u64,
        },
        recipe: Recipe { argv: recipe.command, env, workdir: recipe.workdir },
        artifacts: vec![],
        time_ms: now_ms(),
    };
    match build {
        None => {
            for spec in artifacts {
                let (path, local) = split_pair(spec, "artifact")?;
                let bytes = std::fs::read(&local).with_context(|| format!("reading {local}"))?;
                manifest.artifacts.push(Artifact { path, sha3: content_hash(&bytes), size: bytes.len() as u64 });
            }
        }
        Some(isolation) => {
            for path in artifacts {
                if path.contains('=') {
                    bail!(UsageError(format!(
                        "with --build, --artifact names a path in the source tree only, not {path:?}"
                    )));
                }
                manifest.artifacts.push(Artifact { path: path.clone(), sha3: [0; 32], size: 0 });
            }
            chainiac_release::rules::check_manifest(&manifest).map_err(|e| UsageError(e.to_string()))?;
            manifest.artifacts = build_here(&manifest, &archive, isolation, out)?;
        }
    }
    chainiac_release::rules::check_manifest(&manifest).map_err(|e| UsageError(e.to_string()))?;
    manifest.source_date_epoch().map_err(UsageError)?;
    Ok(manifest)
}

/// The newest modification time in `archive`: what it holds was made by then.
fn newest_time(archive: &[u8], limits: &chainiac_verifier::sandbox::Limits) -> Result<u64> {
    let scratch = tempfile::tempdir().context("making a scratch directory")?;
    let unpacked = chainiac_verifier::unpack::unpack(archive, scratch.path(), limits)?;
    unpacked
        .newest_mtime_s
        .ok_or_else(|| UsageError("the archive records no modification times; give --source-date-epoch".into()).into())
}

/// Runs `manifest`'s recipe here as a verifier would, and returns its artifacts.
fn build_here(manifest: &Manifest, archive: &[u8], isolation: Isolation, out: &Path) -> Result<Vec<Artifact>> {
    let scratch = tempfile::Builder::new().prefix("chainiac-prepare-").tempdir().context("making a build directory")?;
    // A root build drops to uid 65534, which must reach the job (as on a verifier).
    std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let settings = chainiac_verifier::Settings {
        data_dir: scratch.path().to_path_buf(),
        limits: chainiac_verifier::sandbox::Limits::default(),
        concurrency: 1,
        isolation,
        bwrap: PathBuf::from("bwrap"),
        isolate_network: chainiac_verifier::network_isolation_available(),
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
    };
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_message(format!("building {} {} as the verifiers will", manifest.project, manifest.version));
    progress.enable_steady_tick(Duration::from_millis(120));
    let runtime = tokio::runtime::Runtime::new()?;
    let built = runtime.block_on(chainiac_verifier::build_locally(&settings, manifest, archive));
    progress.finish_and_clear();
    let built = built.map_err(|e| UsageError(format!("{e} (or build with --isolation none)")))?;
    let log_path = PathBuf::from(format!("{}.build.log", out.display()));
    std::fs::write(&log_path, &built.log).with_context(|| format!("writing {}", log_path.display()))?;
    built.result.map_err(|reason| {
        let log = String::from_utf8_lossy(&built.log);
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        UsageError(format!(
            "the build failed: {reason}; nothing was written but its log, {}; it ends:\n{}",
            log_path.display(),
            printable(&tail.join("\n"))
        ))
        .into()
    })
}

fn split_pair(spec: &str, what: &str) -> Result<(String, String)> {
    let (a, b) = spec.split_once('=').ok_or_else(|| UsageError(format!("{what} {spec:?} is not A=B")))?;
    Ok((a.to_string(), b.to_string()))
}

pub fn release(command: ReleaseCommand) -> Result<()> {
    match command {
        ReleaseCommand::Prepare {
            project,
            version,
            source,
            workdir,
            artifacts,
            env,
            build,
            isolation,
            source_date_epoch,
            out,
            json,
            command,
        } => {
            let recipe = RecipeArgs { workdir, env, command, source_date_epoch };
            let build = build.then(|| if isolation == "none" { Isolation::None } else { Isolation::Bubblewrap });
            let manifest = prepare(project, version, &source, &artifacts, recipe, build, &out)?;
            std::fs::write(&out, manifest.to_bytes()).with_context(|| format!("writing {}", out.display()))?;
            if json {
                let id = hex::encode(manifest.id().0);
                let file = out.display().to_string();
                let artifacts: Vec<_> = manifest
                    .artifacts
                    .iter()
                    .map(|a| serde_json::json!({ "path": a.path, "sha3": hex::encode(a.sha3), "size": a.size }))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "manifest": id, "project": manifest.project, "version": manifest.version, "file": file,
                        "source_date_epoch": manifest.source_date_epoch().ok(), "artifacts": artifacts,
                    })
                );
            } else {
                for a in &manifest.artifacts {
                    println!("artifact {}: sha3 {}, {} bytes", a.path, hex::encode(a.sha3), a.size);
                }
                println!(
                    "manifest {} for {} {} written to {}",
                    manifest.id(),
                    manifest.project,
                    manifest.version,
                    out.display()
                );
            }
            Ok(())
        }
        ReleaseCommand::Sign { manifest, key, signatures, json } => {
            let manifest: Manifest = decode(&manifest, "manifest")?;
            let key = crate::client_cmd::read_key(&key)?;
            let mut all: Vec<DeveloperSignature> =
                if signatures.exists() { decode(&signatures, "signature file")? } else { Vec::new() };
            all.retain(|s| s.key != key.public_key());
            all.push(DeveloperSignature::sign(&key, &manifest.id()));
            std::fs::write(&signatures, postcard::to_allocvec(&all)?)?;
            if json {
                let signer = key.public_key().to_string();
                println!(
                    "{}",
                    serde_json::json!({ "signer": signer, "version": manifest.version, "signatures": all.len() })
                );
            } else {
                println!(
                    "{} signed {} {} ({} signatures in {})",
                    key.public_key(),
                    manifest.project,
                    manifest.version,
                    all.len(),
                    signatures.display()
                );
            }
            Ok(())
        }
        ReleaseCommand::Submit { chain, manifest, signatures, source, witness, witness_key, json } => {
            let chain = parse_chain(&chain)?;
            let manifest: Manifest = decode(&manifest, "manifest")?;
            let developer_signatures: Vec<DeveloperSignature> = decode(&signatures, "signature file")?;
            let source = std::fs::read(&source).with_context(|| format!("reading {}", source.display()))?;
            let key = parse_key(&witness_key)?;
            let progress = indicatif::ProgressBar::new_spinner();
            progress.set_message(format!(
                "{} {}: verifiers rebuilding, then witnesses cosigning",
                manifest.project, manifest.version
            ));
            progress.enable_steady_tick(Duration::from_millis(120));
            let version = manifest.version.clone();
            let runtime = tokio::runtime::Runtime::new()?;
            let reply = runtime.block_on(async {
                let request = Request::SubmitRelease { chain, manifest, developer_signatures, source };
                pool()?.call(&witness, &key, &request, Duration::from_secs(30 * 60)).await.map_err(anyhow::Error::from)
            });
            progress.finish_and_clear();
            let block = match reply? {
                Response::Appended { block } => block,
                other => bail!("unexpected answer: {other:?}"),
            };
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "version": version, "index": block.header.index, "block": block.id().to_hex() })
                );
            } else {
                println!("release {version} reproduced and cosigned: block {} ({})", block.header.index, block.id());
            }
            Ok(())
        }
        ReleaseCommand::Yank { state, chain, version, reason, keys, json } => {
            yank(&state, &chain, version, reason, &keys, json)
        }
        ReleaseCommand::Logs { manifest, policy, key, out_dir, compare, json } => {
            let compare = compare.iter().map(|c| split_pair(c, "compare")).collect::<Result<Vec<_>>>()?;
            logs(&decode(&manifest, "manifest")?, &read_policy(&policy, 0)?, &key, &out_dir, &compare, json)
        }
    }
}

/// `release logs`: per verifier of `policy`, its kept attestation of `manifest` and its
/// build log (written to `out_dir`); a verifier that refuses or does not answer is named.
fn logs(
    manifest: &Manifest,
    policy: &Policy,
    key: &Path,
    out_dir: &Path,
    compare: &[(String, String)],
    json: bool,
) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let _in_runtime = runtime.enter(); // the endpoint binds its socket on the runtime
    let pool = pool_with(crate::client_cmd::read_key(key)?)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let id = manifest.id();
    let mut rows = Vec::new();
    for verifier in &policy.verifiers {
        let (get_attestation, get_log) =
            (Request::GetAttestation { manifest: id }, Request::GetBuildLog { manifest: id });
        let ask = |request| pool.call(&verifier.address, &verifier.key, request, Duration::from_secs(30));
        let (attestation, log) = runtime.block_on(async { (ask(&get_attestation).await, ask(&get_log).await) });
        let mut differences = Vec::new();
        let outcome = match attestation {
            Ok(Response::Attestation(Some(a)))
                if a.body.verifier == verifier.key && a.body.manifest == id && a.verify() =>
            {
                if let chainiac_release::Outcome::Mismatch { artifacts } = &a.body.outcome {
                    for (path, local) in compare.iter().filter(|(p, _)| artifacts.iter().any(|a| &a.path == p)) {
                        let request = Request::GetArtifact { manifest: id, path: path.clone() };
                        let timeout = Duration::from_secs(60);
                        let theirs = runtime.block_on(pool.call(&verifier.address, &verifier.key, &request, timeout));
                        differences.push(compare_artifact(verifier, path, local, theirs, out_dir)?);
                    }
                }
                describe_outcome(&a.body.outcome)
            }
            Ok(Response::Attestation(None)) => "no kept attestation".to_string(),
            Ok(other) => format!("unexpected answer {}", other.name()),
            Err(e) => format!("no answer: {e}"),
        };
        let (log_file, log_note) = match log {
            Ok(Response::BuildLog(Some(bytes))) => {
                let file = out_dir.join(format!("{}.log", &verifier.key.to_string()[..16]));
                std::fs::write(&file, &bytes).with_context(|| format!("writing {}", file.display()))?;
                (Some(file.display().to_string()), format!("{} bytes", bytes.len()))
            }
            Ok(Response::BuildLog(None)) => (None, "it never built this manifest".to_string()),
            Ok(other) => (None, format!("unexpected answer {}", other.name())),
            Err(e) => (None, e.to_string()),
        };
        rows.push((verifier, outcome, log_file, log_note, differences));
    }
    if json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(v, outcome, file, note, differences)| {
                serde_json::json!({
                    "verifier": v.key.to_string(), "address": v.address, "outcome": outcome, "log": file,
                    "note": note, "differences": differences,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "manifest": hex::encode(id.0), "verifiers": rows }));
    } else {
        for (v, outcome, file, note, differences) in &rows {
            let log = file.as_ref().map(|f| format!("log {f} ({note})")).unwrap_or_else(|| format!("no log: {note}"));
            // What a verifier or a build wrote reaches the terminal with its control
            // characters escaped.
            println!("{} at {}: {}; {}", &v.key.to_string()[..16], v.address, printable(outcome), printable(&log));
            for difference in differences {
                println!("  {}", printable(difference));
            }
        }
    }
    Ok(())
}

/// Fetched bytes of a differing artifact against the local file: where they first differ,
/// and where the verifier's copy was written.
fn compare_artifact(
    verifier: &VerifierEntry,
    path: &str,
    local: &str,
    theirs: Result<Response, chainiac_proto::CallError>,
    out_dir: &Path,
) -> Result<String> {
    let ours = std::fs::read(local).with_context(|| format!("reading {local}"))?;
    let theirs = match theirs {
        Ok(Response::Artifact(Some(bytes))) => bytes,
        Ok(Response::Artifact(None)) => return Ok(format!("{path}: the verifier no longer keeps its copy")),
        Ok(other) => return Ok(format!("{path}: unexpected answer {}", other.name())),
        Err(e) => return Ok(format!("{path}: {e}")),
    };
    let file = out_dir.join(format!("{}-{}", &verifier.key.to_string()[..16], path.replace('/', "_")));
    std::fs::write(&file, &theirs).with_context(|| format!("writing {}", file.display()))?;
    let sizes = format!("theirs {} bytes, yours {}", theirs.len(), ours.len());
    Ok(match first_difference(&theirs, &ours) {
        None => format!("{path}: the same bytes as {local} ({sizes})"),
        Some(at) => format!("{path}: first difference at byte {at} ({sizes}); theirs is {}", file.display()),
    })
}

/// The offset of the first byte where `a` and `b` differ (the shorter one's length if one is
/// a prefix of the other); `None` if they are equal.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(at) => Some(at as u64),
        None if a.len() != b.len() => Some(a.len().min(b.len()) as u64),
        None => None,
    }
}

/// `text` with control characters (but newlines and tabs) escaped: build output and what
/// a verifier says must not drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' && c != '\t' { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn describe_outcome(outcome: &chainiac_release::Outcome) -> String {
    match outcome {
        chainiac_release::Outcome::Reproduced => "reproduced".into(),
        chainiac_release::Outcome::Failed { reason } => format!("failed: {reason}"),
        chainiac_release::Outcome::Mismatch { artifacts } => {
            let each: Vec<String> = artifacts
                .iter()
                .map(|a| match (a.got, a.got_size) {
                    (Some(hash), Some(size)) => format!("{} (sha3 {}…, {size} bytes)", a.path, hex::encode(&hash[..8])),
                    _ => format!("{} (not built)", a.path),
                })
                .collect();
            format!("mismatch: {}", each.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    /// A hostile build's log cannot move the cursor or recolour the terminal.
    #[test]
    fn the_first_difference_is_found() {
        use super::first_difference;
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abc"), Some(2));
        assert_eq!(first_difference(b"", b"x"), Some(0));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::printable("a\x1b[31mb\r\n\tc\u{7}"), "a\\u{1b}[31mb\\r\n\tc\\u{7}");
    }
}
