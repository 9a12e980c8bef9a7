//! `chainiac verifier init | run`.

use crate::witness_cmd::wait_for_signal;
use crate::UsageError;
use anyhow::{Context, Result};
use chainiac_cosi::SecretKey;
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
        #[arg(long)]
        json: bool,
    },
    /// Serve build jobs until SIGINT or SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
}

pub fn run(command: VerifierCommand) -> Result<()> {
    match command {
        VerifierCommand::Init { dir, listen, address, concurrency, time_limit_s, isolation, json } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = SecretKey::generate(&mut rand_core::OsRng);
            keyfile::write(&dir.join("node.key"), &key)?;
            let mut config = VerifierConfig::new(listen, address.unwrap_or_else(|| listen.to_string()));
            config.concurrency = concurrency;
            config.time_limit_s = time_limit_s;
            config.isolation = if isolation == "none" { Isolation::None } else { Isolation::Bubblewrap };
            let path = dir.join("verifier.toml");
            std::fs::write(&path, config.to_toml()).with_context(|| format!("writing {}", path.display()))?;
            let entry = serde_json::json!({ "key": key.public_key().to_string(), "address": config.address });
            if json {
                println!("{entry}");
            } else {
                eprintln!("wrote {} (key, mode 0600) and {}", dir.join("node.key").display(), path.display());
                eprintln!("policy entry for this verifier:");
                println!("[[verifier]]\nkey = \"{}\"\naddress = \"{}\"", key.public_key(), config.address);
            }
            Ok(())
        }
        VerifierCommand::Run { config } => {
            let config = VerifierConfig::load(&config).map_err(|e| UsageError(e.to_string()))?;
            let key = keyfile::read(&config.key_file)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async move {
                let endpoint = chainiac_proto::endpoint::server(&key, config.listen)?;
                let verifier = Verifier::open(key, config.settings())?;
                tracing::info!(listen = %config.listen, key = %verifier.public_key(), environment = verifier.environment_description(), "verifier serving");
                let service = Service::new(verifier);
                tokio::spawn(chainiac_proto::server::serve(service, endpoint.clone(), ALLOWED));
                wait_for_signal().await;
                tracing::info!("shutting down");
                endpoint.close(0u32.into(), b"shutting down");
                Ok(())
            })
        }
    }
}
