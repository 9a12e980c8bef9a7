//! What clients run: `chainiac keygen`, `anchor`, `update`, `verify`, `bundle export|verify`.

use crate::UsageError;
use anyhow::{Context, Result};
use chainiac_client::{Bundle, Client, TrustLevel};
use chainiac_cosi::SecretKey;
use chainiac_skipchain::{Block, ChainId};
use chainiac_witness::keyfile;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// Where a client keeps what it trusts.
#[derive(Args)]
pub struct StateArg {
    /// The client's state file (created by `anchor`).
    #[arg(long, default_value = "chainiac-client.state")]
    pub(crate) state: PathBuf,
}

/// What the client demands beyond the project's policy.
#[derive(Args)]
pub struct TrustArgs {
    /// Refuse releases that fewer verifiers reproduced.
    #[arg(long, default_value_t = 0)]
    min_reproductions: usize,
    /// Refuse releases this verifier (hex key) did not reproduce; repeatable.
    #[arg(long = "require-verifier")]
    required_verifiers: Vec<String>,
    /// Count only builds that ran in a sandbox (new namespaces, the host read-only; an
    /// attestation records it), for `--min-reproductions` and `--require-verifier`.
    #[arg(long)]
    require_isolation: bool,
    /// Accept a release its project yanked (by default it is refused, naming the reason).
    #[arg(long)]
    allow_yanked: bool,
    /// The rebuilders this client trusts: a file of hex keys, one per line (`#` comments).
    /// Their reproductions lift a release to level `trusted`.
    #[arg(long)]
    trust_rebuilders: Option<PathBuf>,
    /// The lowest level installed: `policy` (the project's verifiers reproduced it; every
    /// release), `rebuilt` (and a rebuilder outside the policy did), `trusted` (and a
    /// rebuilder of `--trust-rebuilders` did); `rebuilt:N` and `trusted:N` want N such
    /// rebuilders.
    #[arg(long, default_value = "policy")]
    min_level: String,
}

impl TrustArgs {
    pub(crate) fn level(&self) -> Result<TrustLevel> {
        let required_verifiers =
            self.required_verifiers.iter().map(|k| crate::witness_cmd::parse_key(k)).collect::<Result<_>>()?;
        let trusted_rebuilders = match &self.trust_rebuilders {
            None => Vec::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                parse_trusted_rebuilders(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?
            }
        };
        let (min_level, min_level_count) = parse_min_level(&self.min_level)?;
        if min_level == chainiac_client::Level::Trusted && trusted_rebuilders.len() < min_level_count.max(1) {
            return Err(UsageError(format!(
                "--min-level {} needs --trust-rebuilders naming at least {} key(s)",
                self.min_level,
                min_level_count.max(1)
            ))
            .into());
        }
        Ok(TrustLevel {
            min_reproductions: self.min_reproductions,
            required_verifiers,
            require_isolation: self.require_isolation,
            allow_yanked: self.allow_yanked,
            trusted_rebuilders,
            min_level,
            min_level_count,
        })
    }
}

/// `--min-level`: a level's name, and for `rebuilt` and `trusted` optionally `:N`, how many
/// rebuilders (at least 1).
fn parse_min_level(text: &str) -> Result<(chainiac_client::Level, usize)> {
    let bad = || UsageError(format!("--min-level {text}: policy, rebuilt, trusted, rebuilt:N or trusted:N (N ≥ 1)"));
    let (name, count) = match text.split_once(':') {
        None => (text, 1),
        Some((name, count)) => (name, count.parse::<usize>().ok().filter(|n| *n >= 1).ok_or_else(bad)?),
    };
    let level = chainiac_client::Level::parse(name).ok_or_else(bad)?;
    if level == chainiac_client::Level::Policy && count != 1 {
        return Err(bad().into());
    }
    Ok((level, count))
}

/// A release's level as JSON: who reproduced it, who disagreed.
pub(crate) fn level_json(level: &chainiac_client::ReleaseLevel) -> serde_json::Value {
    let hex = |keys: &[chainiac_cosi::PublicKey]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let disagreements: Vec<_> = level
        .disagreements
        .iter()
        .map(|(who, verdict)| match who {
            chainiac_client::Attester::Verifier(key) => {
                serde_json::json!({ "role": "verifier", "key": key.to_string(), "verdict": verdict.name() })
            }
            chainiac_client::Attester::Rebuilder(id) => {
                serde_json::json!({ "role": "rebuilder", "rebuilder_id": id.to_string(), "verdict": verdict.name() })
            }
        })
        .collect();
    serde_json::json!({
        "version": level.version, "level": level.level.name(), "verifiers": hex(&level.verifiers),
        "trusted_rebuilders": hex(&level.trusted_rebuilders), "other_rebuilders": level.other_rebuilders,
        "disagreements": disagreements, "other_disagreements": level.other_disagreements,
    })
}

/// A trust file: one rebuilder key (hex) per line; blank lines and `#` comments skipped.
/// The error names the line.
pub fn parse_trusted_rebuilders(text: &str) -> Result<Vec<chainiac_cosi::PublicKey>, String> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let key = crate::witness_cmd::parse_key(line).map_err(|e| format!("line {}: {e:#}", number + 1))?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Ok(keys)
}

#[derive(Subcommand)]
pub enum BundleCommand {
    /// Write everything needed to check the newest verified release of a chain offline.
    Export {
        #[command(flatten)]
        state: StateArg,
        /// The project's genesis block file.
        #[arg(long)]
        genesis: PathBuf,
        /// The timeline's genesis block file, to include freshness evidence.
        #[arg(long)]
        timeline_genesis: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Export the newest release even if its project yanked it.
        #[arg(long)]
        allow_yanked: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle with no network.
    Verify {
        bundle: PathBuf,
        /// The chain (genesis id, hex) the bundle must be for.
        #[arg(long)]
        chain: String,
        /// The timeline (genesis id, hex) this client trusts.
        #[arg(long)]
        timeline: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[arg(long)]
        json: bool,
    },
}

pub fn parse_chain(hex: &str) -> Result<ChainId> {
    ChainId::from_hex(hex).ok_or_else(|| UsageError(format!("{hex} is not a 64-digit hex chain id")).into())
}

fn read_genesis(path: &Path) -> Result<Block> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Block::from_bytes(&bytes).map_err(|e| UsageError(format!("{} is not a block: {e}", path.display())).into())
}

fn print(json: bool, value: serde_json::Value, human: String) {
    if json {
        println!("{value}");
    } else {
        println!("{human}");
    }
}

/// Passphrase for OpenSSH keys that have one: read from the environment so scripts can sign.
pub const SSH_PASSPHRASE_VAR: &str = "CHAINIAC_SSH_PASSPHRASE";

/// Reads a signing key: a chainiac key file or an OpenSSH ed25519 private key.
pub fn read_key(path: &Path) -> Result<SecretKey> {
    let passphrase = std::env::var_os(SSH_PASSPHRASE_VAR).map(|p| zeroize::Zeroizing::new(p.into_encoded_bytes()));
    Ok(keyfile::read_with_passphrase(path, passphrase.as_deref().map(|p| p.as_slice()))?)
}

/// Says so when `client`'s view of `chain` is older than its policy takes at an update:
/// `verify` and `fetch` read the state and ask nobody, so a yank since is unknown to them.
pub(crate) fn warn_if_stale(client: &Client, chain: ChainId) {
    if let Some((age_ms, max_age_ms)) = client.stale_view(chain) {
        eprintln!(
            "WARNING: this state's view of {chain} is {} s old, more than its policy's {} s: a yank since then is \
             not known here (run `chainiac update`)",
            age_ms / 1000,
            max_age_ms / 1000
        );
    }
}

/// `chainiac keygen`: a new Ed25519 key (mode 0600), usable as a developer, root, witness or
/// verifier key; or, with `from_openssh`, an existing OpenSSH ed25519 key converted.
pub fn keygen(out: &Path, from_openssh: Option<&Path>, json: bool) -> Result<()> {
    let key = match from_openssh {
        Some(path) => read_key(path)?,
        None => SecretKey::generate(&mut rand_core::OsRng),
    };
    keyfile::write(out, &key)?;
    let origin = from_openssh.map(|p| p.display().to_string());
    print(
        json,
        serde_json::json!({ "key_file": out.display().to_string(), "public_key": key.public_key().to_string(), "from_openssh": origin }),
        format!("wrote {} (mode 0600); public key {}", out.display(), key.public_key()),
    );
    Ok(())
}

/// `chainiac anchor`: trust a genesis block file (a project's, or the timeline's).
/// `chainiac anchor`: one genesis file prints one object; several are anchored with one
/// write of the state file (all or nothing) and print `{"anchored": [...]}`.
pub fn anchor(state: &StateArg, geneses: &[PathBuf], json: bool) -> Result<()> {
    let blocks: Vec<Block> = geneses.iter().map(|g| read_genesis(g)).collect::<Result<_>>()?;
    let mut client = Client::open(&state.state, TrustLevel::default())?;
    let chains = client.anchor_many(&blocks)?;
    let values: Vec<_> = chains
        .iter()
        .zip(&blocks)
        .map(|(chain, block)| serde_json::json!({ "chain": chain.to_hex(), "kind": block.header.kind }))
        .collect();
    let human: Vec<String> =
        chains.iter().map(|chain| format!("anchored chain {chain} in {}", state.state.display())).collect();
    let value = match &values[..] {
        [one] => one.clone(),
        _ => serde_json::json!({ "anchored": values }),
    };
    print(json, value, human.join("\n"));
    Ok(())
}

/// `chainiac update`: one chain prints one result; several (or `--all`) print one line (or
/// JSON object) per chain and fail if any chain failed.
pub fn update(
    state: &StateArg,
    chains: &[String],
    all: bool,
    every_hop: bool,
    every_hop_for: &[String],
    trust: &TrustArgs,
    json: bool,
) -> Result<()> {
    let mut client = Client::open(&state.state, trust.level()?)?;
    client.every_hop = every_hop;
    client.every_hop_chains = every_hop_for.iter().map(|c| parse_chain(c)).collect::<Result<_>>()?;
    let chains: Vec<ChainId> = if all {
        client.state().chains.keys().copied().collect()
    } else {
        chains.iter().map(|c| parse_chain(c)).collect::<Result<_>>()?
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = runtime.block_on(client.update_many(&chains)).context("updating; the state file is unchanged")?;
    if results.len() == 1 && !all {
        let (_, result) = results.pop().expect("one");
        let update = result.context("updating; the state file is unchanged")?;
        let (value, human) = describe_update(&update);
        print(json, value, human);
        return Ok(());
    }
    let mut values = Vec::new();
    let (mut failed, mut forked) = (0, 0);
    for (chain, result) in &results {
        match result {
            Ok(update) => {
                let (value, human) = describe_update(update);
                values.push(value);
                if !json {
                    println!("{human}");
                }
            }
            Err(e) => {
                failed += 1;
                let mut value = serde_json::json!({ "chain": chain.to_hex(), "error": e.to_string() });
                if let chainiac_client::ClientError::Fork { index, .. } = e {
                    forked += 1;
                    value["fork_at"] = serde_json::json!(index);
                }
                values.push(value);
                if !json {
                    println!("chain {chain}: FAILED, its state is unchanged: {e}");
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::json!({ "updates": values, "failed": failed }));
    }
    if forked > 0 {
        return Err(ForkSeen(forked).into());
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} chains failed to update", results.len());
    }
    Ok(())
}

/// Chains whose update found fork evidence (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0} chain(s) forked: the cothority signed two blocks at one index (evidence above); alert its operators")]
pub struct ForkSeen(pub usize);

fn describe_update(update: &chainiac_client::Update) -> (serde_json::Value, String) {
    let chain = update.chain;
    let release = update.release.as_ref().map(|(version, bar)| {
        serde_json::json!({ "version": version, "meets_client_bar": bar.is_ok(), "why_not": bar.as_ref().err() })
    });
    let skipped: Vec<_> =
        update.skipped.iter().map(|(w, why)| serde_json::json!({ "witness": w, "why": why })).collect();
    let mut human = format!("chain {chain}: {} -> {} in {} hops", update.from, update.to, update.hops);
    if !update.checkpoints.is_empty() {
        human += &format!(", checkpoints {:?}", update.checkpoints);
    }
    if let Some(age) = update.timeline_age_ms {
        human += &format!(", timeline {age} ms old");
    }
    if update.change_lists {
        human += " (timeline change lists)";
    }
    if let Some((version, bar)) = &update.release {
        human += &format!(
            "\nrelease {version}: {}",
            bar.as_ref().map_or_else(|e| format!("NOT for this client: {e}"), |_| "ok".into())
        );
    }
    if let Some(level) = &update.level {
        let changed = update.level_was.map(|was| format!(" (was {was})")).unwrap_or_default();
        human += &format!("\nrelease {} {}{changed}", level.version, level.describe());
    }
    for yank in &update.yanked {
        human += &format!("\nYANKED release {}: {}", yank.version, yank.reason);
    }
    for version in &update.unyanked {
        human += &format!("\nrelease {version} is no longer yanked (the root keys took the yank back)");
    }
    for (w, why) in &update.skipped {
        human += &format!("\nskipped witness {w}: {why}");
    }
    let yanked: Vec<_> = update
        .yanked
        .iter()
        .map(|y| serde_json::json!({ "version": y.version, "reason": y.reason, "time_ms": y.time_ms }))
        .collect();
    let value = serde_json::json!({
        "chain": chain.to_hex(), "from": update.from, "to": update.to, "hops": update.hops,
        "checkpoints": update.checkpoints, "timeline_age_ms": update.timeline_age_ms,
        "change_lists": update.change_lists, "release": release, "skipped": skipped, "yanked": yanked,
        "unyanked": update.unyanked,
        "level": update.level.as_ref().map(level_json), "level_was": update.level_was.map(|l| l.name()),
    });
    (value, human)
}

pub fn verify(
    state: &StateArg,
    chain: &str,
    version: Option<&str>,
    path_in_release: &str,
    file: &Path,
    trust: &TrustArgs,
    json: bool,
) -> Result<()> {
    let chain = parse_chain(chain)?;
    let client = Client::open(&state.state, trust.level()?)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let version = match version {
        None => client.verify_artifact(chain, path_in_release, &bytes)?,
        Some(version) => tokio::runtime::Runtime::new()?.block_on(client.verify_artifact_of(
            chain,
            version,
            path_in_release,
            &bytes,
        ))?,
    };
    let yank = client.yank_of(chain, &version)?;
    if let Some(yank) = &yank {
        eprintln!("WARNING: release {version} is YANKED: {} (accepted: --allow-yanked)", yank.reason);
    }
    warn_if_stale(&client, chain);
    print(
        json,
        serde_json::json!({
            "chain": chain.to_hex(), "artifact": path_in_release, "version": version, "verified": true,
            "yanked": yank.map(|y| y.reason),
        }),
        format!("{} is {path_in_release} of release {version}: verified", file.display()),
    );
    Ok(())
}

pub fn bundle(command: BundleCommand) -> Result<()> {
    match command {
        BundleCommand::Export { state, genesis, timeline_genesis, out, allow_yanked, json } => {
            let genesis = read_genesis(&genesis)?;
            let timeline = timeline_genesis.as_deref().map(read_genesis).transpose()?;
            let client = Client::open(&state.state, TrustLevel { allow_yanked, ..TrustLevel::default() })?;
            let runtime = tokio::runtime::Runtime::new()?;
            let bundle = runtime.block_on(client.export_bundle(&genesis, timeline.as_ref()))?;
            let bytes = bundle.to_bytes();
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            print(
                json,
                serde_json::json!({ "bundle": out.display().to_string(), "bytes": bytes.len() }),
                format!("wrote {} ({} bytes)", out.display(), bytes.len()),
            );
            Ok(())
        }
        BundleCommand::Verify { bundle, chain, timeline, trust, json } => {
            let chain = parse_chain(&chain)?;
            let timeline = timeline.as_deref().map(parse_chain).transpose()?;
            let bytes = std::fs::read(&bundle).with_context(|| format!("reading {}", bundle.display()))?;
            let checked = Bundle::from_bytes(&bytes)?.verify(&chain, timeline.as_ref(), &trust.level()?)?;
            let version = &checked.release.manifest.version;
            print(
                json,
                serde_json::json!({
                    "chain": chain.to_hex(), "index": checked.index, "version": version,
                    "artifacts": checked.release.manifest.artifacts.iter().map(|a| a.path.clone()).collect::<Vec<_>>(),
                    "timeline_age_ms": checked.timeline_age_ms,
                }),
                format!("bundle verified offline: release {version} at block {} of {chain}", checked.index),
            );
            Ok(())
        }
    }
}

/// `chainiac chain show`: a chain's blocks as a witness serves them — index, height, kind,
/// back-link targets — with checkpoints (roster or policy changes) marked.
pub fn chain_show(chain: &str, witness: &str, witness_key: &str, from: u64, count: u32, json: bool) -> Result<()> {
    let chain = parse_chain(chain)?;
    let key = crate::witness_cmd::parse_key(witness_key)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let blocks = runtime.block_on(async {
        let endpoint = chainiac_proto::endpoint::client("0.0.0.0:0".parse().expect("valid"))?;
        let pool = chainiac_proto::Pool::new(endpoint, std::sync::Arc::new(SecretKey::generate(&mut rand_core::OsRng)));
        let request = chainiac_proto::Request::GetBlocks { chain, from, count };
        match pool.call(witness, &key, &request, std::time::Duration::from_secs(30)).await? {
            chainiac_proto::Response::Blocks(blocks) => anyhow::Ok(blocks),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    })?;
    let params = blocks.first().and_then(|b| b.header.params);
    let rows: Vec<serde_json::Value> = blocks
        .iter()
        .map(|b| {
            let h = &b.header;
            let base = params.map_or(0, |p| p.base as u64);
            let links: Vec<u64> = (0..h.back_links.len()).map(|l| h.index - base.pow(l as u32)).collect();
            serde_json::json!({
                "index": h.index, "id": b.id().to_hex(), "height": h.height, "kind": h.kind,
                "links_to": links, "checkpoint": b.committee.is_some() || b.policy.is_some(),
                "roster_change": h.index > 0 && b.committee.is_some(), "policy_change": h.index > 0 && b.policy.is_some(),
                "committee_epoch": b.committee.as_ref().map(|a| a.committee.epoch()),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for (b, row) in blocks.iter().zip(&rows) {
        let mark = match (row["roster_change"] == true, row["policy_change"] == true, b.header.index == 0) {
            (_, _, true) => "  [genesis]",
            (true, true, _) => "  [checkpoint: roster and policy]",
            (true, false, _) => "  [checkpoint: roster]",
            (false, true, _) => "  [checkpoint: policy]",
            _ => "",
        };
        let epoch =
            b.committee.as_ref().map(|a| format!(" (committee epoch {})", a.committee.epoch())).unwrap_or_default();
        println!(
            "{:>8}  h{:<2} kind {}  {}  links to {}{mark}{epoch}",
            b.header.index,
            b.header.height,
            b.header.kind,
            &b.id().to_hex()[..16],
            row["links_to"]
        );
    }
    Ok(())
}
