//! `chainiac`: one binary for every user. Each subcommand is a thin shell over a library.

mod demo;
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
    /// A local cothority (4 witnesses, 2 verifiers, RocksDB in a temporary folder) releasing
    /// three versions of a real program, and a client verifying the last one.
    Demo {
        /// Keep the nodes' folders here instead of a temporary folder that is removed.
        #[arg(long)]
        keep: Option<std::path::PathBuf>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or(cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Witness(command) => witness_cmd::run(command),
        Command::Verifier(command) => verifier_cmd::run(command),
        Command::Demo { keep } => demo::run(keep),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            eprintln!("error: {error:#}");
            let usage = error.chain().any(|e| e.downcast_ref::<UsageError>().is_some());
            ExitCode::from(if usage { exit::USAGE } else { exit::FAILURE })
        }
    }
}

/// An error in what the user asked for (exit code 2), as opposed to a failure doing it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
