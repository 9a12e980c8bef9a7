//! Scenario 2: the real cosi protocol (every member's state machine, every message encoded
//! and decoded) over a simulated network, from 4 to 8,192 witnesses.
//!
//! The simulation runs every member on this one thread, so its wall time is the sum of all
//! members' CPU: an upper bound of a real round's compute, whose members work in parallel.
//! Link latency is modelled, not slept: a round is `2 · depth` link round trips.

use crate::report::{Plot, Report, Series};
use chainiac_cosi::simulation::{self, Behaviour, Config};
use chainiac_cosi::{verify, Member, Roster, SecretKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;
use std::time::Instant;

pub struct Options {
    pub sizes: Vec<usize>,
    pub branchings: Vec<usize>,
    pub latency_ms: f64,
    pub rounds: usize,
}

/// CPU time of this process so far (user + system), from /proc.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

pub fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut series: Vec<Series> = options
        .branchings
        .iter()
        .map(|&b| Series {
            name: if b == usize::MAX { "star".into() } else { format!("tree, b = {b}") },
            points: vec![],
        })
        .collect();
    for &n in &options.sizes {
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
        let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate(&mut rng)).collect();
        let roster = Arc::new(Roster::new(keys.iter().map(|k| Member::new(k, "")).collect())?);
        let behaviours = vec![Behaviour::Honest; n];
        for (s, &branching) in options.branchings.iter().enumerate() {
            let config = Config { threshold: n - n / 3, branching, leader: 0, max_attempts: 1 };
            let rounds = if n >= 4096 { options.rounds.min(2) } else { options.rounds };
            let cpu_before = process_cpu_seconds();
            let started = Instant::now();
            let mut outcome = None;
            for r in 0..rounds {
                let message = format!("block {r}");
                let o = simulation::run(&roster, &keys, message.as_bytes(), &behaviours, &config, &mut rng)
                    .map_err(|e| anyhow::anyhow!("round over {n} members failed: {e}"))?;
                verify(&roster, config.threshold, message.as_bytes(), &o.signature)?;
                outcome = Some(o);
            }
            let wall_ms = started.elapsed().as_secs_f64() * 1e3 / rounds as f64;
            let cpu_ms = match (cpu_before, process_cpu_seconds()) {
                (Some(a), Some(b)) => format!("{:.0}", (b - a) * 1e3 / rounds as f64),
                _ => "n/a".into(),
            };
            let outcome = outcome.expect("at least one round");
            let modelled = wall_ms + 2.0 * outcome.depth as f64 * options.latency_ms;
            let goal = match n {
                1024 => " (goal < 250)",
                8192 => " (goal < 2000)",
                _ => "",
            };
            rows.push(vec![
                n.to_string(),
                series[s].name.clone(),
                outcome.depth.to_string(),
                format!("{wall_ms:.1}{goal}"),
                cpu_ms,
                format!("{:.1}", modelled),
                outcome.messages.to_string(),
                format!("{:.1}", outcome.bytes as f64 / 1e3),
            ]);
            series[s].points.push((n as f64, wall_ms));
        }
    }
    report.text(&format!(
        "Rounds per size: {} (2 above 4,096 members); threshold n − ⌊n/3⌋; every message encoded and decoded. \
         \"wall\" runs every member on one thread (an upper bound on a round's compute); \"with latency\" adds \
         2 · depth · {} ms of modelled link latency.\n",
        options.rounds, options.latency_ms
    ));
    report.table(
        &[
            "witnesses",
            "tree",
            "depth",
            "wall ms / round",
            "CPU ms / round",
            "with latency, ms",
            "messages",
            "KB on the wire",
        ],
        &rows,
    );
    report.plot(&Plot {
        file: "cosigning.svg",
        title: "Collective signing round, all members simulated on one core",
        x_label: "witnesses",
        y_label: "ms per round",
        log_x: true,
        log_y: true,
        series,
    })
}
