//! Real witness processes (`chainiac witness run`, release build) over QUIC on 127.0.0.1,
//! each with its own RocksDB: append latency, throughput with concurrent projects, and the
//! time to cosign a timeline block over many project chains.
//!
//! `cargo bench -p chainiac --bench cothority` (full) or `... -- --quick` (CI).

#[path = "../tests/common/mod.rs"]
mod common;

use chainiac_proto::{Request, Response};
use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry, KIND_TIMELINE};
use chainiac_skipchain::Proposal;
use common::Cluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn append_latency(witnesses: usize, appends: usize) {
    let cluster = Cluster::start_with(witnesses, 0).await;
    let members: Vec<usize> = (0..witnesses).collect();
    let (chain, _) = cluster.create_chain(&members).await;
    for i in 0..5 {
        cluster.propose(0, chain, format!("warm-up {i}").as_bytes()).await.unwrap();
    }
    let mut latencies = Vec::with_capacity(appends);
    let started = Instant::now();
    for i in 0..appends {
        let t = Instant::now();
        cluster.propose(i % witnesses, chain, format!("release {i}").as_bytes()).await.unwrap();
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    println!(
        "| {witnesses} | {appends} | {:.1} | {:.1} | {:.1} | {:.0} |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        total.as_secs_f64() * 1e3 / appends as f64,
        appends as f64 / total.as_secs_f64()
    );
}

async fn concurrent_projects(witnesses: usize, projects: usize, appends_each: usize) {
    let cluster = Arc::new(Cluster::start_with(witnesses, 0).await);
    let members: Vec<usize> = (0..witnesses).collect();
    let mut chains = Vec::new();
    for _ in 0..projects {
        chains.push(cluster.create_chain(&members).await.0);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (p, chain) in chains.into_iter().enumerate() {
        let cluster = cluster.clone();
        tasks.spawn(async move {
            for i in 0..appends_each {
                cluster.propose((p + i) % witnesses, chain, format!("p{p} r{i}").as_bytes()).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let total = started.elapsed();
    let appends = projects * appends_each;
    println!(
        "| {witnesses} | {projects} | {appends} | {:.2} | {:.0} |",
        total.as_secs_f64(),
        appends as f64 / total.as_secs_f64()
    );
}

async fn timeline(chains: usize) {
    let cluster = Cluster::start_with(4, 0).await;
    let members = [0, 1, 2, 3];
    let (timeline, _) = cluster.create_chain_of_kind(&members, KIND_TIMELINE).await;
    let created = Instant::now();
    let mut leaves = Vec::with_capacity(chains);
    for _ in 0..chains {
        let (chain, _) = cluster.create_chain(&members).await;
        leaves.push(HeadLeaf { chain, index: 0, id: chain });
    }
    let creation = created.elapsed();
    let probe_chain = leaves[chains / 2].chain;
    let set = HeadSet::new(leaves);
    let time_ms = common::now_ms();
    let entry = TimelineEntry { time_ms, chains: set.len() as u64, root: set.root() };
    let proposal =
        Proposal { kind: KIND_TIMELINE, payload: entry.to_bytes(), timestamp_ms: time_ms, ..Proposal::default() };
    let started = Instant::now();
    let reply = cluster.client.call(&cluster.witnesses[0], Request::Propose { chain: timeline, proposal }).await;
    let cosign = started.elapsed();
    assert!(matches!(reply, Ok(Response::Appended { .. })), "timeline block refused: {reply:?}");
    let t = Instant::now();
    let request = Request::GetTimeline { timeline: Some(timeline), chain: Some(probe_chain) };
    let answered = cluster.client.call(&cluster.witnesses[2], request).await;
    let query = t.elapsed();
    let Ok(Response::Timeline(info)) = answered else { panic!("no timeline answer: {answered:?}") };
    let inclusion = info.inclusion.expect("asked for a chain");
    inclusion.verify(&info.entry).expect("the inclusion proof verifies");
    let proof_bytes = postcard::to_allocvec(&inclusion).unwrap().len();
    println!(
        "| {chains} | {:.1} | {:.0} | {proof_bytes} | {:.1} |",
        creation.as_secs_f64(),
        cosign.as_secs_f64() * 1e3,
        query.as_secs_f64() * 1e3
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--witnesses 16` runs only the append-latency table for that size.
    let only: Option<usize> = args.iter().position(|a| a == "--witnesses").and_then(|i| args.get(i + 1)?.parse().ok());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        println!("Real `chainiac witness` processes on 127.0.0.1 (QUIC, RocksDB with synced promises and appends).\n");
        println!("### Append latency, one project, leaders rotating\n");
        println!("| witnesses | appends | median ms | p99 ms | mean ms | appends/s |");
        println!("|---|---|---|---|---|---|");
        let sizes: &[usize] = if quick { &[4] } else { &[4, 16, 32] };
        if let Some(n) = only {
            append_latency(n, 200).await;
            return;
        }
        for &n in sizes {
            append_latency(n, if quick { 30 } else { 300 }).await;
        }
        println!("\n### Throughput with concurrent projects\n");
        println!("| witnesses | projects | appends | seconds | appends/s |");
        println!("|---|---|---|---|---|");
        for &n in if quick { &[4][..] } else { &[4, 16][..] } {
            concurrent_projects(n, 8, if quick { 5 } else { 40 }).await;
        }
        println!("\n### Timeline block over many project chains (4 witnesses)\n");
        println!("| chains | creating them, s | cosigning the timeline block, ms | inclusion proof, bytes | timeline query, ms |");
        println!("|---|---|---|---|---|");
        for &chains in if quick { &[300][..] } else { &[15_000][..] } {
            timeline(chains).await;
        }
    });
}
