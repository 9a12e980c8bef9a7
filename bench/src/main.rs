//! `chainiac-bench`: the evaluators' entry point. Each scenario prints markdown tables and
//! writes SVG plots into the results folder; `--write-results` also writes them, with the
//! machine and the exact command, into one markdown file (how bench/RESULTS.md is made).

mod catchup;
mod chains;
mod cosigning;
mod network;
mod report;
mod timeline;
mod verification;

use anyhow::Context;
use clap::{Parser, Subcommand};
use report::Report;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "chainiac-bench", version, about = "Benchmarks of chainiac on PyPI-like data and at cothority scale")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Small sizes: every scenario in a few seconds to a minute (what CI runs).
    #[arg(long, global = true)]
    quick: bool,
    /// Folder for plots (SVG).
    #[arg(long, global = true, default_value = "bench/results")]
    out: PathBuf,
    /// Also write the tables, the machine description and the command into this markdown file.
    #[arg(long, global = true, value_name = "FILE")]
    write_results: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct CatchupArgs {
    /// The PyPI snapshot (gzip TSV: name, version, month YYYY-MM, download rank or empty).
    #[arg(long, default_value = "../shared/data/pypi-latest.tsv.gz", env = "CHAINIAC_PYPI")]
    pypi: PathBuf,
    /// Use release events instead: TSV of `unix_time<TAB>package<TAB>version` (seconds;
    /// optional header; `#` comments; `.gz` accepted).
    #[arg(long, value_name = "TSV")]
    events: Option<PathBuf>,
    /// Days between a client's updates (comma-separated). Default 1,7,30,90,365,1826 (quick: 1,30,365).
    #[arg(long, value_delimiter = ',')]
    days: Vec<u64>,
    /// Numbers of followed projects (comma-separated). Default 1,10,100,1000,15000 (quick: 1,10,100).
    #[arg(long = "follow", value_delimiter = ',')]
    follows: Vec<usize>,
    /// Minutes between timeline blocks.
    #[arg(long, default_value_t = 60)]
    timeline_interval_minutes: u64,
    /// Days between witness roster changes (each is a committee change on every chain).
    #[arg(long, default_value_t = 182)]
    roster_change_days: u64,
    /// Days since the newest roster change, at the moment clients update: the default puts
    /// them half-way between two changes; 0 is the worst case for short intervals.
    #[arg(long, default_value_t = 91)]
    roster_phase_days: u64,
    /// Days between a project's developer key rotations (policy changes); 0: never.
    #[arg(long, default_value_t = 730)]
    key_rotation_days: u64,
    /// Skipchain base `b` of every chain (project and timeline), 2..=16; the maximum height
    /// is the most that keeps `b^(h-1)` below 2^64, capped at 32 (the default chain's).
    #[arg(long, default_value_t = chainiac_skipchain::ChainParams::DEFAULT.base)]
    base: u8,
    /// The moment clients update, YYYY-MM-DD (midnight UTC), at or before the data's edge
    /// (default: the snapshot's newest month + 7 days, or the newest event + 1 s). A date
    /// inside the data's well-covered months measures steady-state activity: later releases
    /// are dropped, earlier ones kept.
    #[arg(long, value_name = "DATE", value_parser = catchup::parse_date)]
    now: Option<u64>,
    /// The moment clients update, this many days before the data's edge (instead of --now).
    #[arg(long, value_name = "DAYS", conflicts_with = "now")]
    now_before_edge: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Rebuilders attesting every release of the top 1,000 projects (SPEC §11.8): the run
    /// is made without them, then with them, and the bytes each attestation costs a client
    /// that follows the project are reported. 0: none.
    #[arg(long, default_value_t = 0)]
    rebuilders: usize,
    /// The witnesses' `rebuild_batch_seconds` in the rebuilders' run, in minutes (default:
    /// the witnesses' default, an hour): the attestations that arrive within it of the first
    /// one pending are appended as one rebuilds block and one summary block; 0: each alone.
    #[arg(long, default_value_t = 60)]
    rebuild_batch_minutes: u64,
}

#[derive(Subcommand)]
enum Scenario {
    /// 1. Client catch-up on PyPI-like data: bytes and CPU of linear, TUF-style, skipchain,
    ///    and timeline + inclusion + skipchain updates.
    Catchup(CatchupArgs),
    /// 2. Cosigning scale: the real protocol over a simulated network, 4 to 8,192 witnesses.
    Cosigning {
        /// Witness counts (comma-separated). Default 4..8192 by powers of 4 and 8192 (quick: up to 1024).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Tree branching factors; 0 means a star. Default 0,8,32.
        #[arg(long, value_delimiter = ',')]
        branching: Vec<usize>,
        /// Modelled one-way link latency, ms (added as 2 · depth · latency; never slept).
        #[arg(long, default_value_t = 0.0)]
        latency_ms: f64,
        /// Rounds measured per size (fewer above 4,096 members).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// 3. Real witness processes over QUIC on loopback: append latency and throughput.
    Network {
        /// Witness counts. Default 4,16,32 (quick: 4).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
    },
    /// 4. Timeline blocks over 15,000 and 886,000 chains: tree, cosigning, inclusion proofs.
    Timeline {
        /// Chain counts. Default 15000,886000 (quick: 15000,100000).
        #[arg(long, value_delimiter = ',')]
        chains: Vec<usize>,
    },
    /// 5. Build verification: the verifier's overhead over the bare build (a small C program, then GNU hello 2.10).
    Verification {
        /// Builds of each kind. Default 15 (quick: 3).
        #[arg(long)]
        runs: Option<usize>,
    },
    /// Every scenario, one after the other.
    All {
        #[command(flatten)]
        catchup: CatchupArgs,
    },
}

fn or<T: Clone>(given: &[T], full: &[T], quick_default: &[T], quick: bool) -> Vec<T> {
    if !given.is_empty() {
        given.to_vec()
    } else if quick {
        quick_default.to_vec()
    } else {
        full.to_vec()
    }
}

/// The catch-up scenario; returns whether it ran on the PyPI snapshot.
fn catchup(args: &CatchupArgs, quick: bool, report: &mut Report, scratch: &Path) -> anyhow::Result<bool> {
    let mut events = args.events.clone();
    if events.is_none() && !args.pypi.exists() {
        anyhow::ensure!(
            quick,
            "the PyPI snapshot {} is missing: pass --pypi PATH (or CHAINIAC_PYPI), or --events TSV",
            args.pypi.display()
        );
        // CI machines may lack the snapshot: exercise the events path on a small synthetic file.
        let path = scratch.join("synthetic-events.tsv");
        write_synthetic_events(&path)?;
        report.text(&format!(
            "**{} is missing: this quick run uses synthetic release events instead.**\n",
            args.pypi.display()
        ));
        events = Some(path);
    }
    let options = catchup::Options {
        pypi: args.pypi.clone(),
        events,
        days: or(&args.days, &[1, 7, 30, 90, 365, 1826], &[1, 30, 365], quick),
        follows: or(&args.follows, &[1, 10, 100, 1000, 15000], &[1, 10, 100], quick),
        timeline_interval_minutes: args.timeline_interval_minutes,
        roster_change_days: args.roster_change_days,
        roster_phase_days: args.roster_phase_days,
        key_rotation_days: args.key_rotation_days,
        params: chain_params(args.base)?,
        now: match (args.now, args.now_before_edge) {
            (Some(at), _) => catchup::Now::At(at),
            (None, Some(days)) => catchup::Now::BeforeEdge(days),
            (None, None) => catchup::Now::Edge,
        },
        plot_suffix: if args.now.is_some() || args.now_before_edge.is_some() { "-now".into() } else { String::new() },
        seed: args.seed,
        rebuilders: 0,
        rebuild_batch_ms: 0,
        rebuilt_projects: catchup::REBUILT_PROJECTS,
    };
    let on_snapshot = options.events.is_none();
    let without = catchup::run(&options, report)?;
    if args.rebuilders > 0 {
        report.text(&format!(
            "\n#### The same clients with {} rebuilders attesting every release of the top {} projects\n\n\
             Each attests a release an hour after the one before it (none after the next release: witnesses take \
             rebuilds of a chain's newest release only); those within {} minutes of the first one waiting are \
             appended together, as a rebuilds block and a summary block.\n",
            args.rebuilders,
            catchup::REBUILT_PROJECTS,
            args.rebuild_batch_minutes
        ));
        let with = catchup::Options {
            rebuilders: args.rebuilders,
            rebuild_batch_ms: args.rebuild_batch_minutes * 60_000,
            plot_suffix: format!("{}-rebuilders", options.plot_suffix),
            ..options
        };
        let rebuilt = catchup::run(&with, report)?;
        // The same clients with only the projects each follows rebuilt (a run per P, its
        // tables not kept): what its own projects' attestations cost it, apart from what the
        // other rebuilt projects' moves cost it in the change lists.
        let mut own: std::collections::HashMap<(u64, usize), catchup::Measured> = Default::default();
        for &follow in with.follows.iter().filter(|&&p| p < with.rebuilt_projects) {
            let alone = catchup::Options { follows: vec![follow], rebuilt_projects: follow, ..with.clone() };
            for measured in catchup::run(&alone, &mut report::Report::quiet())? {
                own.insert((measured.days, measured.follow), measured);
            }
        }
        let per = |extra: f64, n: u64| match n {
            0 => "—".to_string(),
            n => format!("{:.0}", extra / n as f64),
        };
        let mut rows = Vec::new();
        for (plain, attested) in without.iter().zip(&rebuilt) {
            let (before, after) = (plain.timeline_skipchain.bytes, attested.timeline_skipchain.bytes);
            let alone = own.get(&(plain.days, plain.follow)).unwrap_or(attested);
            let mine = alone.timeline_skipchain.bytes;
            rows.push(vec![
                plain.days.to_string(),
                plain.follow.to_string(),
                attested.attestations.to_string(),
                report::bytes(before),
                report::bytes(after),
                per(after as f64 - before as f64, attested.attestations),
                per(mine as f64 - before as f64, alone.attestations),
                format!("{}", after as i64 - mine as i64),
            ]);
        }
        report.text(&format!(
            "\nWhat the rebuilders' attestations cost `chainiac update` (d): the same update without and with them, \
             and the difference per attestation to a followed project (goal: at most 100 bytes for a client that \
             follows the project, nothing for one that does not). \"own\": the same update when the rebuilders \
             attest only the P projects the client follows (a run per P), per attestation; \"others'\": what \
             the other rebuilt projects' attestations (of the top {}) add to the update, in bytes (their moves in the \
             change lists: 4 bytes a chain and timeline block, and a list root for a block they alone fill).\n",
            with.rebuilt_projects
        ));
        report.table(
            &[
                "days behind",
                "projects followed",
                "attestations",
                "without",
                "with",
                "bytes per attestation",
                "own, per attestation",
                "others', bytes",
            ],
            &rows,
        );
    }
    Ok(on_snapshot)
}

/// The chain parameters for base `base`: the tallest height up to the default's that the
/// base allows.
fn chain_params(base: u8) -> anyhow::Result<chainiac_skipchain::ChainParams> {
    let default = chainiac_skipchain::ChainParams::DEFAULT;
    (1..=default.max_height)
        .rev()
        .find_map(|height| chainiac_skipchain::ChainParams::new(base, height).ok())
        .with_context(|| format!("--base {base}: a skipchain base is 2 to 16"))
}

/// 200 packages, each releasing at its own steady pace over two years.
fn write_synthetic_events(path: &Path) -> anyhow::Result<()> {
    let mut out = String::from("unix_time\tpackage\tversion\n");
    let end: u64 = 1_790_000_000;
    for p in 0..200u64 {
        let gap = 86_400 * (1 + p % 60);
        let mut t = end - 2 * 365 * 86_400 + (p * 7919) % gap;
        let mut v = 0;
        while t < end {
            out.push_str(&format!("{t}\tpkg-{p}\t1.{v}\n"));
            t += gap;
            v += 1;
        }
    }
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("unknown");
    let memory = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("unknown".into(), |kb| format!("{:.1} GiB", kb as f64 / 1048576.0));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    format!(
        "- CPU: {model}, {cores} cores available\n- memory: {memory}\n- kernel: Linux {}\n- {}\n- build: {} profile\n- commit: {}\n",
        read("/proc/sys/kernel/osrelease").trim(),
        command("rustc", &["--version"]),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        command("git", &["rev-parse", "--short", "HEAD"]),
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut report = Report::new(&cli.out)?;
    let scratch = tempfile::tempdir()?;
    let quick = cli.quick;
    let started = Instant::now();
    let section = |report: &mut Report, title: &str| report.text(&format!("### {title}\n"));
    match &cli.scenario {
        Scenario::Catchup(args) => {
            section(&mut report, "1. Client catch-up on PyPI-like data");
            catchup(args, quick, &mut report, scratch.path())?;
        }
        Scenario::Cosigning { sizes, branching, latency_ms, rounds } => {
            section(&mut report, "2. Cosigning scale");
            cosigning_run(sizes, branching, *latency_ms, *rounds, quick, &mut report)?;
        }
        Scenario::Network { sizes } => {
            section(&mut report, "3. Real network");
            network_run(sizes, quick, &mut report)?;
        }
        Scenario::Timeline { chains } => {
            section(&mut report, "4. Timeline scale");
            timeline::run(&or(chains, &[15_000, 886_000], &[15_000, 100_000], quick), &mut report)?;
        }
        Scenario::Verification { runs } => {
            section(&mut report, "5. Build verification");
            verification::run(runs.unwrap_or(if quick { 3 } else { 15 }), if quick { 1 } else { 3 }, &mut report)?;
        }
        Scenario::All { catchup: args } => {
            section(&mut report, "1. Client catch-up on PyPI-like data");
            let on_snapshot = catchup(args, quick, &mut report, scratch.path())?;
            // The snapshot's newest weeks are sparsely dated: short intervals again, inside it.
            if on_snapshot && args.now.is_none() && args.now_before_edge.is_none() {
                section(&mut report, "1b. Client catch-up at steady state (short intervals, inside the snapshot)");
                let steady = CatchupArgs {
                    days: or(&[], &[1, 7, 30], &[1, 7], quick),
                    now_before_edge: Some(catchup::STEADY_DAYS_BEFORE_EDGE),
                    ..args.clone()
                };
                catchup(&steady, quick, &mut report, scratch.path())?;
            }
            section(&mut report, "2. Cosigning scale");
            cosigning_run(&[], &[], 0.0, 5, quick, &mut report)?;
            section(&mut report, "3. Real network");
            network_run(&[], quick, &mut report)?;
            section(&mut report, "4. Timeline scale");
            timeline::run(&or(&[], &[15_000, 886_000], &[15_000, 100_000], quick), &mut report)?;
            section(&mut report, "5. Build verification");
            verification::run(if quick { 3 } else { 15 }, if quick { 1 } else { 3 }, &mut report)?;
        }
    }
    let took = started.elapsed().as_secs_f64();
    report.text(&format!("_{took:.0} s in all._\n"));
    if let Some(path) = &cli.write_results {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        let text = format!(
            "Command: `cargo run --release -p chainiac-bench -- {}`\n\nMachine:\n\n{}\n{}",
            argv.join(" "),
            machine(),
            report.markdown()
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn cosigning_run(
    sizes: &[usize],
    branching: &[usize],
    latency_ms: f64,
    rounds: usize,
    quick: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let options = cosigning::Options {
        sizes: or(sizes, &[4, 16, 64, 256, 1024, 4096, 8192], &[4, 16, 64, 256, 1024], quick),
        branchings: or(branching, &[0, 8, 32], &[0, 32], quick)
            .into_iter()
            .map(|b| if b == 0 { usize::MAX } else { b })
            .collect(),
        latency_ms,
        rounds: if quick { rounds.min(2) } else { rounds },
    };
    cosigning::run(&options, report)
}

fn network_run(sizes: &[usize], quick: bool, report: &mut Report) -> anyhow::Result<()> {
    let options = network::Options {
        sizes: or(sizes, &[4, 16, 32], &[4], quick),
        appends: if quick { 30 } else { 300 },
        concurrent_projects: 8,
        appends_each: if quick { 5 } else { 40 },
        timeline_chains: if quick { vec![300] } else { vec![15_000, 100_000] },
        kill_seconds: if quick { 5 } else { 60 },
        kill_every: if quick { 2 } else { 5 },
    };
    network::run(&options, report)
}
