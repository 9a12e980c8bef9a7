//! `chainiac verifier init | allow | run | status`.

use crate::client_cmd::parse_chain;
use crate::witness_cmd::{parse_key, wait_for_signal, RunningNode};
use crate::UsageError;
use anyhow::{Context, Result};
use chainiac_cosi::{PublicKey, SecretKey};
use chainiac_proto::Response;
use chainiac_verifier::sandbox::Isolation;
use chainiac_verifier::service::{Service, VerifierConfig, ALLOWED};
use chainiac_verifier::Verifier;
use chainiac_witness::keyfile;
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum VerifierCommand {
    /// Create a verifier key (mode 0600) and a config in DIR, and print the policy entry
    /// (key and address) to hand to the projects this verifier will check.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (UDP).
        #[arg(long, default_value = "127.0.0.1:7541")]
        listen: SocketAddr,
        /// Address witnesses reach this verifier at, if not the listen address.
        #[arg(long)]
        address: Option<String>,
        /// Builds at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Seconds a build may run.
        #[arg(long, default_value_t = 600)]
        time_limit_s: u64,
        /// How builds are confined: `bubblewrap` (namespaces; the verifier refuses to start
        /// where it does not work) or `none` (unconfined: builds see the verifier's files).
        #[arg(long, default_value = "bubblewrap", value_parser = ["bubblewrap", "none"])]
        isolation: String,
        /// Let the members of this roster file (`[[member]]` entries, as `chainiac witness
        /// init` prints them) send build jobs: the witnesses of the chains this verifier
        /// checks.
        #[arg(long)]
        roster: Option<PathBuf>,
        /// Let this key (hex) send build jobs and read build logs too (repeatable).
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Build for this release chain (genesis id, hex) when its witnesses ask
        /// (repeatable).
        #[arg(long = "chain")]
        chains: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Let more keys send build jobs and read build logs (`build_callers` in the config):
    /// the members of a roster file and keys given; and build for more release chains
    /// (`build_chains`). Restart the verifier to apply.
    Allow {
        /// The config file `init` wrote.
        #[arg(long)]
        config: PathBuf,
        /// `[[member]]` entries, as `chainiac witness init` prints them.
        #[arg(long)]
        roster: Option<PathBuf>,
        /// A key (hex), repeatable.
        #[arg(long = "key")]
        keys: Vec<String>,
        /// A release chain (genesis id, hex) to build for, repeatable.
        #[arg(long = "chain")]
        chains: Vec<String>,
    },
    /// Serve build jobs until SIGINT or SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask a running verifier for its confinement, environment and counters.
    Status {
        #[command(flatten)]
        node: RunningNode,
        #[arg(long)]
        json: bool,
    },
}

/// The keys a roster file and `--key`/`--allow` arguments name.
fn keys_to_allow(roster: Option<&std::path::Path>, keys: &[String]) -> Result<Vec<PublicKey>> {
    let mut allowed = Vec::new();
    if let Some(roster) = roster {
        let committee = crate::roster_cmd::read_committee(roster, None)?;
        allowed.extend(committee.roster().members().iter().map(|m| m.key));
    }
    for key in keys {
        allowed.push(parse_key(key)?);
    }
    Ok(allowed)
}

pub fn run(command: VerifierCommand) -> Result<()> {
    match command {
        VerifierCommand::Init {
            dir,
            listen,
            address,
            concurrency,
            time_limit_s,
            isolation,
            roster,
            allow,
            chains,
            json,
        } => {
            let callers = keys_to_allow(roster.as_deref(), &allow)?;
            let chains = chains.iter().map(|c| parse_chain(c)).collect::<Result<Vec<_>>>()?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = SecretKey::generate(&mut rand_core::OsRng);
            keyfile::write(&dir.join("node.key"), &key)?;
            let mut config = VerifierConfig::new(listen, address.unwrap_or_else(|| listen.to_string()));
            config.concurrency = concurrency;
            config.time_limit_s = time_limit_s;
            config.isolation = if isolation == "none" { Isolation::None } else { Isolation::Bubblewrap };
            for key in &callers {
                config.allow(key);
            }
            for chain in &chains {
                config.allow_chain(chain);
            }
            let path = dir.join("verifier.toml");
            std::fs::write(&path, config.to_toml()).with_context(|| format!("writing {}", path.display()))?;
            let entry = serde_json::json!({ "key": key.public_key().to_string(), "address": config.address });
            if json {
                println!("{entry}");
            } else {
                eprintln!("wrote {} (key, mode 0600) and {}", dir.join("node.key").display(), path.display());
                if config.build_callers.is_empty() {
                    eprintln!(
                        "no witness may send build jobs yet: add the witnesses' roster with `chainiac verifier allow --config {} --roster FILE`",
                        path.display()
                    );
                }
                eprintln!("policy entry for this verifier:");
                println!("[[verifier]]\nkey = \"{}\"\naddress = \"{}\"", key.public_key(), config.address);
            }
            Ok(())
        }
        VerifierCommand::Run { config } => {
            let config_path = config;
            let config = VerifierConfig::load(&config_path).map_err(|e| UsageError(e.to_string()))?;
            let key = keyfile::read(&config.key_file)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let endpoint = chainiac_proto::endpoint::server(&key, config.listen)?;
                let verifier = Verifier::open(key, config.settings())?;
                tracing::info!(listen = %config.listen, key = %verifier.public_key(), environment = verifier.environment_description(), "verifier serving");
                if config.build_chains.is_empty() {
                    tracing::warn!("build_chains is empty: every witness's build job is refused; add the release chains this verifier serves with `chainiac verifier allow --chain ID`");
                }
                let service = Service::with_config(verifier, &config, &config_path);
                tokio::spawn(chainiac_proto::server::serve(service, endpoint.clone(), ALLOWED));
                wait_for_signal().await;
                tracing::info!("shutting down");
                endpoint.close(0u32.into(), b"shutting down");
                Ok(())
            })
        }
        VerifierCommand::Allow { config, roster, keys, chains } => allow(&config, roster.as_deref(), &keys, &chains),
        VerifierCommand::Status { node, json } => status(&node, json),
    }
}

fn allow(path: &std::path::Path, roster: Option<&std::path::Path>, keys: &[String], chains: &[String]) -> Result<()> {
    if roster.is_none() && keys.is_empty() && chains.is_empty() {
        return Err(UsageError("name a --roster file, a --key or a --chain to allow".into()).into());
    }
    let allowed = keys_to_allow(roster, keys)?;
    let chains = chains.iter().map(|c| parse_chain(c)).collect::<Result<Vec<_>>>()?;
    // Checked as `run` will load it, then edited in place: comments, order and the rest of
    // the file stay as the operator wrote them.
    let config = VerifierConfig::load(path).map_err(|e| UsageError(e.to_string()))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut document: toml_edit::DocumentMut =
        text.parse().map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    let (known_keys, known_chains) = (config.callers(), config.chains());
    let new_keys: Vec<String> = dedup(allowed.iter().filter(|k| !known_keys.contains(k)).map(|k| k.to_string()));
    let new_chains: Vec<String> = dedup(chains.iter().filter(|c| !known_chains.contains(c)).map(|c| c.to_hex()));
    let total_keys = append_strings(&mut document, "build_callers", &new_keys)?;
    let total_chains = append_strings(&mut document, "build_chains", &new_chains)?;
    // Written beside and renamed over: a crash leaves the old config or the new, whole; a
    // running verifier reads the new lists at its next build request.
    let staged = path.with_extension("toml.new");
    std::fs::write(&staged, document.to_string()).with_context(|| format!("writing {}", staged.display()))?;
    VerifierConfig::load(&staged).map_err(|e| anyhow::anyhow!("the edited config would not load: {e}"))?;
    std::fs::rename(&staged, path).with_context(|| format!("replacing {}", path.display()))?;
    println!(
        "{} key(s) added to build_callers ({total_keys} in all) and {} chain(s) to build_chains ({total_chains} in all) in {}; a running verifier applies them at its next build request",
        new_keys.len(),
        new_chains.len(),
        path.display(),
    );
    Ok(())
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Appends `items` to the top-level array of strings `name` (made if absent); its length.
fn append_strings(document: &mut toml_edit::DocumentMut, name: &str, items: &[String]) -> Result<usize> {
    let entry = document.entry(name).or_insert(toml_edit::value(toml_edit::Array::new()));
    let array =
        entry.as_array_mut().ok_or_else(|| UsageError(format!("{name} in the config is not an array of strings")))?;
    for item in items {
        array.push(item.as_str());
    }
    Ok(array.len())
}

fn status(node: &RunningNode, json: bool) -> Result<()> {
    let response = node.status()?;
    let Response::VerifierStatus(s) = response else {
        anyhow::bail!("{} answered {}, not a verifier's status", node.address, response.name())
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "key": hex::encode(s.key),
                "address": s.address,
                "isolation": s.isolation,
                "environment": s.environment,
                "uptime_s": s.uptime_s,
                "builds": s.builds,
                "reproduced": s.reproduced,
                "mismatched": s.mismatched,
                "failed": s.failed,
                "not_kept": s.not_kept,
                "answered_from_store": s.answered_from_store,
                "running": s.running,
                "waiting": s.waiting,
                "refused_requests": s.refused_requests,
                "refused_frames": s.refused_frames,
            })
        );
    } else {
        println!("verifier {} at {} (up {} s)", hex::encode(s.key), s.address, s.uptime_s);
        println!("isolation {}; environment {}", s.isolation, s.environment);
        println!(
            "builds {} (reproduced {}, mismatched {}, failed {}; {} not kept as they may depend on the moment); {} answered from the store",
            s.builds, s.reproduced, s.mismatched, s.failed, s.not_kept, s.answered_from_store
        );
        println!(
            "running {}, waiting {}; requests refused {}, frames refused {}",
            s.running, s.waiting, s.refused_requests, s.refused_frames
        );
    }
    Ok(())
}
