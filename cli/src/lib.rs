//! `chainiac`: one binary for every user. Each subcommand is a thin shell over a library.
//! The binary is [`main`]; it lives in this library so that the end-to-end tests (the
//! top-level `tests/` package) can build it under a name of their own and spawn it.

mod client_cmd;
mod demo;
mod fetch_cmd;
mod rebuilder_cmd;
mod release_cmd;
mod roster_cmd;
mod verifier_cmd;
mod witness_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "chainiac", version, about = "Transparent, hard-to-subvert software updates")]
struct Cli {
    /// Log filter (e.g. `info`, `chainiac_witness=debug`); also read from RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run and manage a witness node.
    #[command(subcommand)]
    Witness(witness_cmd::WitnessCommand),
    /// Run and manage a build verifier.
    #[command(subcommand)]
    Verifier(verifier_cmd::VerifierCommand),
    /// Rebuild releases in the background and submit attestations: trust that grows after
    /// a release.
    #[command(subcommand)]
    Rebuilder(rebuilder_cmd::RebuilderCommand),
    /// Create an Ed25519 key file (mode 0600): developer, root, witness or verifier key.
    ///
    /// Signing commands also take an OpenSSH ed25519 private key directly (passphrase from
    /// CHAINIAC_SSH_PASSPHRASE); `--from-openssh` converts one into a chainiac key file.
    Keygen {
        #[arg(long)]
        out: std::path::PathBuf,
        /// Convert this OpenSSH ed25519 private key (e.g. ~/.ssh/id_ed25519) instead of generating.
        #[arg(long, value_name = "PATH")]
        from_openssh: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Trust a genesis block file (a project's or the timeline's) in the client state.
    Anchor {
        #[command(flatten)]
        state: client_cmd::StateArg,
        /// Genesis block files (one write of the state file for all of them).
        #[arg(required = true)]
        genesis: Vec<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Catch chains up to their heads: proofs, timeline freshness, release checks. Many
    /// chains share a few batched requests; each gets its own result.
    Update {
        #[command(flatten)]
        state: client_cmd::StateArg,
        /// A chain (genesis id, hex); repeat for several.
        #[arg(long, required_unless_present = "all")]
        chain: Vec<String>,
        /// Every chain anchored in the state file.
        #[arg(long, conflicts_with = "chain")]
        all: bool,
        /// Have each chain's own committees vouch for its blocks (forward proofs through every
        /// roster and key change) instead of trusting the verified timeline block for the
        /// heads it records (hashes only). Costs more bytes and CPU; trusts no other
        /// chain's committee for a chain's blocks.
        #[arg(long)]
        every_hop: bool,
        /// `--every-hop` for this chain only (genesis id, hex; repeat for several): the
        /// others take the timeline's word.
        #[arg(long, value_name = "CHAIN")]
        every_hop_for: Vec<String>,
        #[command(flatten)]
        trust: client_cmd::TrustArgs,
        #[arg(long)]
        json: bool,
    },
    /// Check a file against the newest verified release of a chain (or `--version`'s)
    /// before installing it.
    Verify {
        #[command(flatten)]
        state: client_cmd::StateArg,
        #[arg(long)]
        chain: String,
        /// Check against this release instead of the newest: any release up to the head
        /// `update` verified (its blocks are fetched and linked down from that head).
        #[arg(long)]
        version: Option<String>,
        /// The artifact's path in the release manifest.
        #[arg(long)]
        artifact: String,
        /// The file to check.
        file: std::path::PathBuf,
        #[command(flatten)]
        trust: client_cmd::TrustArgs,
        #[arg(long)]
        json: bool,
    },
    /// Download an artifact of the newest verified release of a chain from any host — a
    /// mirror, a LAN binary host, a peer — and keep it only if its hash and size match the
    /// release: the first source that serves the right bytes wins, one that serves others is
    /// named and the next is tried.
    Fetch {
        #[command(flatten)]
        state: client_cmd::StateArg,
        #[arg(long)]
        chain: String,
        /// Fetch this release's artifact instead of the newest's: any release up to the head
        /// `update` verified.
        #[arg(long)]
        version: Option<String>,
        /// The artifact's path in the release manifest.
        #[arg(long)]
        artifact: String,
        /// Where to download it from: http(s)://host/path, file:///path, or host:port/path
        /// (http); repeat for several, tried in order.
        #[arg(long = "from", required = true)]
        from: Vec<String>,
        /// The file to write (only when the bytes match).
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        trust: client_cmd::TrustArgs,
        #[arg(long)]
        json: bool,
    },
    /// Serve a directory over plain HTTP (a LAN binary host, a demo mirror). Nobody has to
    /// trust it: `fetch` checks what it serves.
    Serve {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// Create projects and the cothority's timeline.
    #[command(subcommand)]
    Project(release_cmd::ProjectCommand),
    /// Inspect a chain as a witness serves it.
    #[command(subcommand)]
    Chain(ChainCommand),
    /// Change a project's policy.
    #[command(subcommand)]
    Policy(release_cmd::PolicyCommand),
    /// Change a committee the rightful way: a threshold of the outgoing members' operators
    /// approve the new roster, then anyone submits the change.
    #[command(subcommand)]
    Roster(roster_cmd::RosterCommand),
    /// Prepare, sign and submit releases.
    #[command(subcommand)]
    Release(release_cmd::ReleaseCommand),
    /// Offline bundles: everything needed to check a release with no network.
    #[command(subcommand)]
    Bundle(client_cmd::BundleCommand),
    /// A local cothority (4 witnesses, 2 verifiers, RocksDB in a temporary folder) releasing
    /// three versions of a real program, and a client verifying the last one.
    Demo {
        /// Keep the nodes' folders here instead of a temporary folder that is removed.
        #[arg(long)]
        keep: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum ChainCommand {
    /// Blocks with heights, back links and checkpoints marked.
    Show {
        #[arg(long)]
        chain: String,
        /// A witness: HOST:PORT.
        #[arg(long)]
        witness: String,
        /// That witness's public key (hex).
        #[arg(long)]
        witness_key: String,
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 64)]
        count: u32,
        #[arg(long)]
        json: bool,
    },
}

/// Exit codes scripts can rely on.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// Something failed (the message says what).
    pub const FAILURE: u8 = 1;
    /// The command line or a file it names is wrong.
    pub const USAGE: u8 = 2;
    /// A chain forked: the cothority signed two blocks at one index (`update`; the message
    /// holds the evidence). Not a transient failure: alert whoever runs the cothority.
    pub const FORK: u8 = 3;
    /// A check found the cothority vouched for something wrong (`rebuilder audit`: summary
    /// records no signed attestation backs, attestations left out, blocks that do not
    /// decode). Evidence, not a transient failure: keep the output, alert the operators.
    pub const ALARM: u8 = 4;
}

/// The `chainiac` command line, from the process's arguments to its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Witness(command) => witness_cmd::run(command),
        Command::Verifier(command) => verifier_cmd::run(command),
        Command::Rebuilder(command) => rebuilder_cmd::run(command),
        Command::Demo { keep } => demo::run(keep),
        Command::Keygen { out, from_openssh, json } => client_cmd::keygen(&out, from_openssh.as_deref(), json),
        Command::Anchor { state, genesis, json } => client_cmd::anchor(&state, &genesis, json),
        Command::Update { state, chain, all, every_hop, every_hop_for, trust, json } => {
            client_cmd::update(&state, &chain, all, every_hop, &every_hop_for, &trust, json)
        }
        Command::Verify { state, chain, version, artifact, file, trust, json } => {
            client_cmd::verify(&state, &chain, version.as_deref(), &artifact, &file, &trust, json)
        }
        Command::Fetch { state, chain, version, artifact, from, out, trust, json } => {
            fetch_cmd::fetch(&state, &chain, version.as_deref(), &artifact, &from, &out, &trust, json)
        }
        Command::Serve { dir, listen } => fetch_cmd::serve(&dir, listen),
        Command::Bundle(command) => client_cmd::bundle(command),
        Command::Project(command) => release_cmd::project(command),
        Command::Release(command) => release_cmd::release(command),
        Command::Policy(command) => release_cmd::policy(command),
        Command::Roster(command) => roster_cmd::run(command),
        Command::Chain(ChainCommand::Show { chain, witness, witness_key, from, count, json }) => {
            client_cmd::chain_show(&chain, &witness, &witness_key, from, count, json)
        }
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            eprintln!("error: {error:#}");
            let usage = error.chain().any(|e| e.downcast_ref::<UsageError>().is_some());
            let alarm = error.chain().any(|e| e.downcast_ref::<Alarm>().is_some());
            let fork = error.chain().any(|e| {
                e.downcast_ref::<client_cmd::ForkSeen>().is_some()
                    || matches!(
                        e.downcast_ref::<chainiac_client::ClientError>(),
                        Some(chainiac_client::ClientError::Fork { .. })
                    )
            });
            ExitCode::from(if usage {
                exit::USAGE
            } else if fork {
                exit::FORK
            } else if alarm {
                exit::ALARM
            } else {
                exit::FAILURE
            })
        }
    }
}

/// What a check found the cothority vouched for wrongly (exit code 4), as opposed to a
/// failure to check (a network error, a chain not anchored: exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Alarm(pub String);

/// An error in what the user asked for (exit code 2), as opposed to a failure doing it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
