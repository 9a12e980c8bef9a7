//! `chainiac witness init | run | status`.

use crate::UsageError;
use anyhow::{Context, Result};
use chainiac_cosi::{Member, PublicKey, SecretKey};
use chainiac_proto::message::{Request, Response};
use chainiac_witness::config::{MemberEntry, Peer, WitnessConfig};
use chainiac_witness::{keyfile, Witness};
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum WitnessCommand {
    /// Create a node key (mode 0600) and a config in DIR, and print the roster entry to
    /// hand to the projects this witness will serve.
    Init {
        /// Folder for the key, the config and the data.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on (UDP).
        #[arg(long, default_value = "127.0.0.1:7441")]
        listen: SocketAddr,
        /// Address others reach this node at, if not the listen address.
        #[arg(long)]
        address: Option<String>,
        /// Children per node in cosigning trees.
        #[arg(long, default_value_t = 8)]
        branching: u32,
        /// Milliseconds between timeline blocks when no project head moved.
        #[arg(long, default_value_t = 10_000)]
        timeline_interval_ms: u64,
        /// A witness allowed to bring this node chains it does not serve yet: KEY@HOST:PORT.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Print the roster entry as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add every member of a roster file (but this witness) to the peers of a witness's
    /// config: the witnesses it learns chains from before a timeline names them (a new
    /// cothority, a newcomer to one). Restart the witness to apply.
    Peers {
        /// The config file `init` wrote.
        #[arg(long)]
        config: PathBuf,
        /// `[[member]]` entries, as `chainiac witness init` prints them.
        #[arg(long)]
        roster: PathBuf,
    },
    /// Serve until SIGINT or SIGTERM.
    Run {
        /// The config file `init` wrote.
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask a running witness for its health and counters.
    Status {
        #[command(flatten)]
        node: RunningNode,
        #[arg(long)]
        json: bool,
    },
}

/// A running node (witness or verifier) to ask, by address and pinned key.
#[derive(clap::Args)]
pub struct RunningNode {
    /// The node's address.
    #[arg(long)]
    pub address: String,
    /// The node's public key (hex), pinned for the connection.
    #[arg(long)]
    pub key: String,
}

impl RunningNode {
    /// Its answer to `Status`, asked with a fresh key.
    pub fn status(&self) -> Result<Response> {
        let key = parse_key(&self.key)?;
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async move {
            let endpoint = chainiac_proto::endpoint::client("0.0.0.0:0".parse().expect("valid"))?;
            let me = SecretKey::generate(&mut rand_core::OsRng);
            let connection = chainiac_proto::endpoint::connect(&endpoint, &me, &self.address, &key).await?;
            Ok(chainiac_proto::call(&connection, &Request::Status, Duration::from_secs(5)).await?)
        })
    }
}

pub fn run(command: WitnessCommand) -> Result<()> {
    match command {
        WitnessCommand::Init { dir, listen, address, branching, timeline_interval_ms, peers, json } => {
            init(dir, listen, address, branching, timeline_interval_ms, peers, json)
        }
        WitnessCommand::Peers { config, roster } => add_peers(&config, &roster),
        WitnessCommand::Run { config } => serve(config),
        WitnessCommand::Status { node, json } => status(&node, json),
    }
}

fn add_peers(path: &std::path::Path, roster: &std::path::Path) -> Result<()> {
    // Read as written (relative paths stay relative), checked as `run` will load it.
    WitnessConfig::load(path)?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: WitnessConfig =
        toml::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?;
    let key = keyfile::read(&path.parent().unwrap_or(std::path::Path::new(".")).join(&config.key_file))?.public_key();
    let members = crate::roster_cmd::read_committee(roster, None)?;
    let mut added = 0;
    for member in members.roster().members().iter().filter(|m| m.key != key) {
        if !config.peers.iter().any(|p| p.public_key() == Some(member.key)) {
            config.peers.push(Peer { key: member.key.to_string(), address: member.address.clone() });
            added += 1;
        }
    }
    std::fs::write(path, config.to_toml()).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{added} peer(s) added to {} ({} in all); restart the witness to apply",
        path.display(),
        config.peers.len()
    );
    Ok(())
}

fn parse_peer(spec: &str) -> Result<Peer> {
    let (key, address) = spec.split_once('@').ok_or_else(|| UsageError(format!("peer {spec} is not KEY@HOST:PORT")))?;
    let peer = Peer { key: key.to_string(), address: address.to_string() };
    peer.public_key().ok_or_else(|| UsageError(format!("peer key {key} is not a valid public key")))?;
    Ok(peer)
}

fn init(
    dir: PathBuf,
    listen: SocketAddr,
    address: Option<String>,
    branching: u32,
    timeline_interval_ms: u64,
    peers: Vec<String>,
    json: bool,
) -> Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = SecretKey::generate(&mut rand_core::OsRng);
    keyfile::write(&dir.join("node.key"), &key)?;
    let mut config = WitnessConfig::new(listen, address.unwrap_or_else(|| listen.to_string()));
    config.branching = branching;
    config.timeline_interval_ms = timeline_interval_ms;
    config.peers = peers.iter().map(|p| parse_peer(p)).collect::<Result<_>>()?;
    let config_path = dir.join("witness.toml");
    std::fs::write(&config_path, config.to_toml()).with_context(|| format!("writing {}", config_path.display()))?;
    let entry = MemberEntry::from_member(&Member::new(&key, config.address.clone()));
    let entry_toml = toml::to_string(&entry).expect("entries serialize");
    std::fs::write(dir.join("member.toml"), format!("[[member]]\n{entry_toml}")).context("writing member.toml")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entry)?);
    } else {
        eprintln!(
            "wrote {} (key, mode 0600), {} and member.toml",
            dir.join("node.key").display(),
            config_path.display()
        );
        eprintln!("roster entry for this witness (append it to a project's roster file):");
        println!("[[member]]\n{entry_toml}");
    }
    Ok(())
}

fn serve(config_path: PathBuf) -> Result<()> {
    let config = WitnessConfig::load(&config_path).map_err(|e| UsageError(e.to_string()))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let listen = config.listen;
        let witness = Witness::start(config)?;
        tracing::info!(%listen, key = %witness.node.public_key(), "witness serving");
        wait_for_signal().await;
        tracing::info!("shutting down");
        witness.shutdown().await;
        Ok(())
    })
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

pub fn parse_key(hex_key: &str) -> Result<PublicKey> {
    Ok(PublicKey::from_hex(hex_key).map_err(UsageError)?)
}

fn status(node: &RunningNode, json: bool) -> Result<()> {
    let response = node.status()?;
    let Response::Status(status) = response else {
        anyhow::bail!("{} answered {}, not a witness's status", node.address, response.name())
    };
    if json {
        let chains: Vec<_> = status
            .chains
            .iter()
            .map(|c| serde_json::json!({"chain": c.chain.to_hex(), "head": c.index, "head_id": c.id.to_hex()}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "key": hex::encode(status.key),
                "address": status.address,
                "uptime_s": status.uptime_s,
                "rounds_led": status.rounds_led,
                "rounds_failed": status.rounds_failed,
                "blocks_signed": status.blocks_signed,
                "faults_named": status.faults_named,
                "round_ms_mean": status.round_ms_mean,
                "round_ms_max": status.round_ms_max,
                "peers_up": status.peers_up,
                "refused_frames": status.refused_frames,
                "blocks_adopted": status.blocks_adopted,
                "chains_total": status.chains_total,
                "peers_left_out": status.peers_left_out,
                "timeline_age_ms": status.timeline_age_ms,
                "chains": chains,
            })
        );
    } else {
        println!("witness {} at {} (up {} s)", hex::encode(status.key), status.address, status.uptime_s);
        println!(
            "rounds led {}, failed {} (mean {} ms, max {} ms); blocks signed {}, re-led as locked {}; faults named {}",
            status.rounds_led,
            status.rounds_failed,
            status.round_ms_mean,
            status.round_ms_max,
            status.blocks_signed,
            status.blocks_adopted,
            status.faults_named
        );
        println!(
            "peers connected {}, left out of trees {}; frames refused {}",
            status.peers_up, status.peers_left_out, status.refused_frames
        );
        if let Some(age) = status.timeline_age_ms {
            println!("newest timeline block made {:.1} s ago", age as f64 / 1000.0);
        }
        let listed = status.chains.len() as u64;
        for chain in status.chains {
            println!("chain {}  head {}  {}", chain.chain.to_hex(), chain.index, chain.id.to_hex());
        }
        if status.chains_total > listed {
            println!("... and {} more chains ({} in all)", status.chains_total - listed, status.chains_total);
        }
    }
    Ok(())
}
