//! What witness operators run to change a committee the rightful way: `chainiac roster
//! approve` (each operator, offline, with its witness key) and `chainiac roster rotate`
//! (anyone holding enough approvals: the witnesses check them).

use crate::client_cmd::{parse_chain, read_key};
use crate::release_cmd::pool_with;
use crate::witness_cmd::parse_key;
use crate::UsageError;
use anyhow::{bail, Context, Result};
use chainiac_proto::{Request, Response};
use chainiac_skipchain::authority::KIND_COMMITTEE;
use chainiac_skipchain::{Appointment, Approval, ChainId, Committee, Proposal};
use chainiac_witness::config::RosterFile;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand)]
pub enum RosterCommand {
    /// Approve a new committee as the successor of the committees your witness serves in
    /// (offline, with the witness key); appends the approval to the approvals file.
    Approve {
        #[command(flatten)]
        committee: CommitteeArgs,
        /// Your witness's key file (`node.key`).
        #[arg(long)]
        key: PathBuf,
        /// How long the approval holds: the chains must move within it.
        #[arg(long, default_value_t = 7)]
        valid_days: u64,
        /// Approve for this chain only (genesis id, hex); by default for every chain your
        /// witness serves in (a whole cothority moves on one set of approvals).
        #[arg(long)]
        chain: Option<String>,
        /// The approvals file (TOML `[[approval]]` entries) to append to.
        #[arg(long)]
        approvals: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Hand chains to the new committee: each gets a committee-change block carrying the
    /// approvals (at least the outgoing committee's threshold of its members', or the
    /// witnesses refuse it, naming the rule).
    Rotate {
        #[command(flatten)]
        committee: CommitteeArgs,
        /// The approvals file the operators appended to.
        #[arg(long)]
        approvals: PathBuf,
        /// A chain (genesis id, hex) to move; repeat for several.
        #[arg(long, required_unless_present = "all")]
        chain: Vec<String>,
        /// Every chain the witness serves that the new committee does not sign yet.
        #[arg(long, conflicts_with = "chain")]
        all: bool,
        /// A witness of the chains (HOST:PORT); it leads the rounds.
        #[arg(long)]
        witness: String,
        /// That witness's public key (hex).
        #[arg(long)]
        witness_key: String,
        #[arg(long)]
        json: bool,
    },
}

/// The new committee: a roster file, its threshold and its epoch.
#[derive(Args)]
pub struct CommitteeArgs {
    /// The new committee's epoch: above the epoch of the committee the chains have now
    /// (`chainiac chain show` prints it at each roster change; a new chain's is 0). Approvals
    /// name it, so they cannot bring a committee back after the chains moved past it.
    #[arg(long)]
    epoch: u64,
    /// The new roster: `[[member]]` entries, as `chainiac witness init` prints them.
    #[arg(long)]
    roster: PathBuf,
    /// Witnesses that must cosign each block (default: the Byzantine quorum; it must exceed
    /// two thirds of the roster).
    #[arg(long)]
    threshold: Option<u32>,
}

impl CommitteeArgs {
    fn committee(&self) -> Result<Committee> {
        Ok(read_committee(&self.roster, self.threshold)?.with_epoch(self.epoch))
    }
}

/// A committee from a roster file and an optional threshold (default: the Byzantine quorum),
/// at epoch 0 (what a genesis names).
pub fn read_committee(roster: &Path, threshold: Option<u32>) -> Result<Committee> {
    let text = std::fs::read_to_string(roster).with_context(|| format!("reading {}", roster.display()))?;
    let file: RosterFile = toml::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", roster.display())))?;
    let roster = file.to_roster().map_err(UsageError)?;
    Ok(match threshold {
        Some(t) => Committee::new(roster, t).map_err(|e| UsageError(e.to_string()))?,
        None => Committee::byzantine(roster),
    })
}

/// The approvals file: what operators pass around and append to.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalsFile {
    #[serde(default)]
    approval: Vec<ApprovalEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalEntry {
    /// The approving witness key (hex).
    key: String,
    /// The hash of the committee approved (hex): a check that all approve the same one.
    committee: String,
    expires_ms: u64,
    /// The one chain the approval is for (hex); absent: every chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<String>,
    /// Ed25519 signature (hex).
    signature: String,
}

fn read_approvals(path: &Path) -> Result<ApprovalsFile> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(toml::from_str(&text).map_err(|e| UsageError(format!("{}: {e}", path.display())))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApprovalsFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The approvals of `committee` in the file; entries for another committee are refused by
/// name, so that a mixed-up file is noticed here rather than by the witnesses.
fn approvals_of(file: &ApprovalsFile, committee: &Committee) -> Result<Vec<Approval>> {
    let hash = hex::encode(committee.hash());
    file.approval
        .iter()
        .map(|entry| {
            if entry.committee != hash {
                bail!(UsageError(format!(
                    "the approval by {} is of committee {}, not of this roster, threshold and epoch ({hash})",
                    entry.key, entry.committee
                )));
            }
            let mut signature = [0u8; 64];
            hex::decode_to_slice(&entry.signature, &mut signature)
                .map_err(|_| UsageError(format!("the approval by {} has no 128-digit hex signature", entry.key)))?;
            let chain = entry.chain.as_deref().map(parse_chain).transpose()?;
            Ok(Approval { key: parse_key(&entry.key)?, expires_ms: entry.expires_ms, chain, signature })
        })
        .collect()
}

pub fn run(command: RosterCommand) -> Result<()> {
    match command {
        RosterCommand::Approve { committee, key, valid_days, chain, approvals, json } => {
            let chain = chain.as_deref().map(parse_chain).transpose()?;
            approve(&committee.committee()?, &key, valid_days, chain, &approvals, json)
        }
        RosterCommand::Rotate { committee, approvals, chain, all, witness, witness_key, json } => {
            let chains = chain.iter().map(|c| parse_chain(c)).collect::<Result<Vec<_>>>()?;
            rotate(&committee.committee()?, &approvals, chains, all, &witness, &witness_key, json)
        }
    }
}

fn approve(
    committee: &Committee,
    key: &Path,
    valid_days: u64,
    chain: Option<ChainId>,
    path: &Path,
    json: bool,
) -> Result<()> {
    chainiac_skipchain::authority::check_quorum(committee).map_err(|e| UsageError(e.to_string()))?;
    if committee.epoch() == u64::MAX {
        bail!(UsageError("epoch 18446744073709551615 would leave the committee no successor".into()));
    }
    let key = read_key(key)?;
    let expires_ms = chainiac_client::now_ms().saturating_add(valid_days.saturating_mul(86_400_000));
    let approval = Approval::sign(&key, committee, expires_ms, chain);
    let mut file = read_approvals(path)?;
    let hash = hex::encode(committee.hash());
    let scope = chain.map(|c| c.to_hex());
    file.approval.retain(|a| a.key != approval.key.to_string() || a.chain != scope);
    file.approval.push(ApprovalEntry {
        key: approval.key.to_string(),
        committee: hash.clone(),
        expires_ms,
        chain: scope,
        signature: hex::encode(approval.signature),
    });
    approvals_of(&file, committee)?;
    std::fs::write(path, toml::to_string_pretty(&file)?).with_context(|| format!("writing {}", path.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "key": approval.key.to_string(), "committee": hash, "expires_ms": expires_ms,
                "approvals": file.approval.len() })
        );
    } else {
        println!(
            "{} approves committee {hash} until {expires_ms} ms; {} approval(s) in {}",
            approval.key,
            file.approval.len(),
            path.display()
        );
    }
    Ok(())
}

fn rotate(
    committee: &Committee,
    approvals: &Path,
    chains: Vec<ChainId>,
    all: bool,
    witness: &str,
    witness_key: &str,
    json: bool,
) -> Result<()> {
    let appointment =
        Appointment { committee: committee.clone(), approvals: approvals_of(&read_approvals(approvals)?, committee)? };
    appointment.verify().map_err(|e| UsageError(format!("{}: {e}", approvals.display())))?;
    let witness_key = parse_key(witness_key)?;
    let hash = committee.hash();
    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(async {
        let pool = pool_with(chainiac_cosi::SecretKey::generate(&mut rand_core::OsRng))?;
        let call = |request: Request| {
            let pool = &pool;
            async move { pool.call(witness, &witness_key, &request, Duration::from_secs(60)).await }
        };
        let chains = if all {
            // Every chain the witness serves, a page at a time.
            let mut moving = Vec::new();
            let mut after = None;
            loop {
                match call(Request::ListChains { after }).await? {
                    Response::Chains { heads, more } => {
                        after = heads.last().map(|head| head.chain);
                        moving.extend(
                            heads.iter().filter(|head| head.header.committee_hash != hash).map(|head| head.chain),
                        );
                        if !more || after.is_none() {
                            break;
                        }
                    }
                    other => bail!("unexpected answer to a chain listing: {other:?}"),
                }
            }
            moving
        } else {
            chains
        };
        let mut results = Vec::with_capacity(chains.len());
        for chain in chains {
            // Timelines make their own entry (an empty payload asks for it).
            let proposal =
                Proposal { kind: KIND_COMMITTEE, committee: Some(appointment.clone()), ..Proposal::default() };
            let result = match call(Request::Propose { chain, proposal }).await {
                Ok(Response::Appended { block }) => Ok(block.header.index),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            results.push((chain, result));
        }
        anyhow::Ok(results)
    })?;
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    if json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(chain, result)| match result {
                Ok(index) => serde_json::json!({ "chain": chain.to_hex(), "index": index }),
                Err(error) => serde_json::json!({ "chain": chain.to_hex(), "error": error }),
            })
            .collect();
        println!("{}", serde_json::json!({ "committee": hex::encode(hash), "chains": rows }));
    } else {
        for (chain, result) in &results {
            match result {
                Ok(index) => println!("chain {chain}: committee changed at block {index}"),
                Err(error) => println!("chain {chain}: refused: {error}"),
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} chains did not move", results.len());
    }
    Ok(())
}
