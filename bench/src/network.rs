//! Scenario 3: real `chainiac witness run` processes over QUIC on 127.0.0.1, each with its
//! own RocksDB (synced votes, locks and appends): append latency, append latency while a
//! witness is killed and restarted every 5 s, the time a dead leader's locked index
//! takes to fill, throughput with concurrent projects, and a timeline block over many
//! project chains.

#[path = "../../tests/common/mod.rs"]
mod common;

use crate::report::{percentile, Plot, Report, Series};
use chainiac_proto::{Request, Response};
use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry, KIND_TIMELINE};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::Proposal;
use common::Cluster;
use std::sync::Arc;
use std::time::Instant;

pub struct Options {
    pub sizes: Vec<usize>,
    pub appends: usize,
    pub concurrent_projects: usize,
    pub appends_each: usize,
    /// Chain counts of the timeline rows.
    pub timeline_chains: Vec<usize>,
    /// How long appends run under kills, and every how many seconds a witness is killed.
    pub kill_seconds: u64,
    pub kill_every: u64,
}

async fn append_latency(witnesses: usize, appends: usize) -> (Vec<String>, f64) {
    let cluster = Cluster::start_with(witnesses, 0).await;
    let members: Vec<usize> = (0..witnesses).collect();
    let (chain, _) = cluster.create_chain(&members).await;
    for i in 0..5 {
        cluster.propose(0, chain, format!("warm-up {i}").as_bytes()).await.expect("warm-up append");
    }
    let mut latencies = Vec::with_capacity(appends);
    let started = Instant::now();
    for i in 0..appends {
        let t = Instant::now();
        cluster.propose(i % witnesses, chain, format!("release {i}").as_bytes()).await.expect("append");
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    let median = percentile(&latencies, 0.5);
    (
        vec![
            witnesses.to_string(),
            appends.to_string(),
            format!("{median:.1}"),
            format!("{:.1}", percentile(&latencies, 0.99)),
            format!("{:.0}", appends as f64 / total.as_secs_f64()),
        ],
        median,
    )
}

/// Append latency (until acknowledged, retries through another witness included) for
/// `seconds`, while a random witness is SIGKILLed and restarted every `every` seconds.
async fn append_latency_under_kills(witnesses: usize, seconds: u64, every: u64) -> Vec<String> {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let mut cluster = Cluster::start_with(witnesses, 0).await;
    let members: Vec<usize> = (0..witnesses).collect();
    let (chain, _) = cluster.create_chain(&members).await;
    let addresses: Vec<(String, chainiac_cosi::PublicKey)> =
        cluster.witnesses.iter().map(|w| (w.address.clone(), w.key)).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
            let mut kills = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_secs(every)).await;
                let victim = rng.next_u32() as usize % cluster.witnesses.len();
                cluster.witnesses[victim].kill();
                kills += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                cluster.witnesses[victim].start();
            }
            kills
        })
    };
    let client = common::Client::new();
    let mut latencies = Vec::new();
    let mut retries = 0;
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < std::time::Duration::from_secs(seconds) {
        i += 1;
        let t = Instant::now();
        let mut at = i % witnesses;
        loop {
            let (address, key) = &addresses[at];
            let proposal = Proposal { payload: format!("release {i}").into_bytes(), ..Proposal::default() };
            match client.call_at(address, key, Request::Propose { chain, proposal }).await {
                Ok(Response::Appended { .. }) => break,
                _ => {
                    retries += 1;
                    at = (at + 1) % witnesses;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let kills = killer.await.expect("the killer task");
    latencies.sort();
    vec![
        witnesses.to_string(),
        latencies.len().to_string(),
        kills.to_string(),
        retries.to_string(),
        format!("{:.1}", percentile(&latencies, 0.5)),
        format!("{:.1}", percentile(&latencies, 0.99)),
        format!("{:.0}", latencies.last().map_or(0.0, |l| l.as_secs_f64() * 1000.0)),
        format!("{:.0}", latencies.len() as f64 / total.as_secs_f64()),
    ]
}

/// A leader that dies after the other members locked its block (a stand-in with its key
/// stops there, as SIGKILL would): the time from then until a proposal at another witness
/// has filled that index with the locked block and appended its own after it.
async fn dead_leader_recovery(witnesses: usize) -> Vec<String> {
    use chainiac_cosi::protocol::{commit, Leader, Session, SessionId, Tree};
    use chainiac_cosi::Mask;
    use chainiac_proto::message::{Certificate, Vote};
    let mut cluster = Cluster::start_with(witnesses, 0).await;
    let members: Vec<usize> = (0..witnesses).collect();
    let (chain, genesis) = cluster.create_chain(&members).await;
    cluster.propose(0, chain, b"first").await.expect("append");
    for i in 0..witnesses {
        cluster.wait_head(i, chain, 1).await;
    }
    cluster.witnesses[0].kill();
    let head = cluster.prove_from_genesis(1, chain, &genesis).await;
    let mut ids = std::collections::HashMap::new();
    for index in 0..=head.index() {
        if let Ok(Response::Block(Some(block))) =
            cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain, index }).await
        {
            ids.insert(index, block.id());
        }
    }
    let proposal = Proposal { payload: b"promised".to_vec(), timestamp_ms: common::now_ms(), ..Proposal::default() };
    let block = head.propose(proposal, |i| ids.get(&i).copied()).expect("a block");
    let key = cluster.keys(&[0]).pop().expect("a key");
    let stand_in = common::Client::with_key(cluster.keys(&[0]).pop().expect("a key"));
    let roster = Arc::new(cluster.roster(&members));
    let at = |w: usize| roster.index_of(&cluster.witnesses[w].key).expect("a member");
    let session_id = SessionId([7; 32]);
    let ballot = chainiac_witness::agreement::next_owned(0, at(0), witnesses).expect("a ballot");
    let session = Session::new(roster.clone(), session_id, BlockSignature::message(&block.id(), ballot).to_vec());
    let tree = Tree::new(witnesses, at(0), witnesses, &Mask::empty(witnesses));
    let mut round = Leader::new(session.clone(), &tree, witnesses - 1).expect("a round");
    let (_nonces, own) = commit(&session, at(0), &key, &mut rand_core::OsRng).expect("a commitment");
    round.aggregator().receive_commitment(at(0), &own).expect("own commitment");
    let announce = chainiac_proto::message::Announce {
        block: block.clone(),
        session: session_id,
        leader: at(0) as u32,
        branching: witnesses as u32,
        excluded: Mask::empty(witnesses).as_bytes().to_vec(),
        ballot,
        justification: None,
        leader_signature: [0; 64],
    };
    let mut announce = announce;
    announce.sign(&key);
    let mut votes = vec![Vote::sign(&key, at(0) as u32, &block.id(), ballot)];
    for w in 1..witnesses {
        if let Ok(Response::Voted { commitment, votes: theirs }) =
            stand_in.call(&cluster.witnesses[w], Request::Announce(announce.clone())).await
        {
            let _ = round.aggregator().receive_commitment(at(w), &commitment);
            votes.extend(theirs);
        }
    }
    let challenge = round.challenge().expect("a challenge");
    let certificate = Certificate { ballot, votes };
    for w in 1..witnesses {
        let request =
            Request::Challenge { session: session_id, challenge: challenge.clone(), certificate: certificate.clone() };
        let _ = stand_in.call(&cluster.witnesses[w], request).await;
    }
    let dead = Instant::now();
    let appended = cluster.propose(1, chain, b"after the dead leader").await.expect("the index fills");
    let took = dead.elapsed();
    assert_eq!(appended.header.index, 3, "the locked block at 2, then this one");
    vec![witnesses.to_string(), format!("{:.0}", took.as_secs_f64() * 1000.0)]
}

async fn concurrent_projects(witnesses: usize, projects: usize, appends_each: usize) -> Vec<String> {
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
                cluster.propose((p + i) % witnesses, chain, format!("p{p} r{i}").as_bytes()).await.expect("append");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("append task");
    }
    let total = started.elapsed();
    let appends = projects * appends_each;
    vec![
        witnesses.to_string(),
        projects.to_string(),
        appends.to_string(),
        format!("{:.2}", total.as_secs_f64()),
        format!("{:.0}", appends as f64 / total.as_secs_f64()),
    ]
}

/// A timeline block over `chains` project chains, `moved` of which got one block first, and
/// real clients following every chain. Returns the timeline row and the client row.
async fn timeline(chains: usize, moved: usize) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let cluster = Cluster::start_with(4, 0).await;
    let members = [0, 1, 2, 3];
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&members, KIND_TIMELINE).await;
    let created = Instant::now();
    let mut leaves = Vec::with_capacity(chains);
    let mut geneses = vec![timeline_genesis];
    for _ in 0..chains {
        let (chain, genesis) = cluster.create_chain(&members).await;
        leaves.push(HeadLeaf { chain, index: 0, id: chain });
        geneses.push(genesis);
    }
    let creation = created.elapsed();
    for (i, leaf) in leaves.iter_mut().take(moved).enumerate() {
        let block = cluster.propose(i % 4, leaf.chain, format!("release {i}").as_bytes()).await.expect("append");
        (leaf.index, leaf.id) = (block.header.index, block.id());
    }
    let followed: Vec<chainiac_skipchain::ChainId> = leaves.iter().map(|l| l.chain).collect();
    let probe_chain = leaves[chains / 2].chain;
    let set = HeadSet::new(leaves);
    let time_ms = common::now_ms();
    let entry = TimelineEntry { time_ms, chains: set.len() as u64, root: set.root(), changes: None };
    let proposal =
        Proposal { kind: KIND_TIMELINE, payload: entry.to_bytes(), timestamp_ms: time_ms, ..Proposal::default() };
    // Timeline blocks are asked for by a member's operator (the witnesses' own timer is off).
    let operator = cluster.operator(1);
    operator.call(&cluster.witnesses[0], Request::Status).await?; // connected before the clock starts
    let started = Instant::now();
    let reply = operator.call(&cluster.witnesses[0], Request::Propose { chain: timeline, proposal }).await;
    let cosign = started.elapsed();
    assert!(matches!(reply, Ok(Response::Appended { .. })), "timeline block refused: {reply:?}");
    // The next tick, nothing moved: what a witness pays every interval at this size.
    let time_ms = common::now_ms().max(time_ms + 1);
    let entry = TimelineEntry { time_ms, chains: set.len() as u64, root: set.root(), changes: None };
    let proposal =
        Proposal { kind: KIND_TIMELINE, payload: entry.to_bytes(), timestamp_ms: time_ms, ..Proposal::default() };
    let started = Instant::now();
    let reply = operator.call(&cluster.witnesses[0], Request::Propose { chain: timeline, proposal }).await;
    let tick = started.elapsed();
    assert!(matches!(reply, Ok(Response::Appended { .. })), "the next timeline block refused: {reply:?}");
    let rss_mib = cluster.witnesses.iter().filter_map(|w| w.rss_kib()).max().unwrap_or(0) as f64 / 1024.0;
    let t = Instant::now();
    let request = Request::GetTimeline { timeline: Some(timeline), chain: Some(probe_chain) };
    let answered = cluster.client.call(&cluster.witnesses[2], request).await;
    let query = t.elapsed();
    let Ok(Response::Timeline(info)) = answered else { panic!("no timeline answer: {answered:?}") };
    let inclusion = info.inclusion.expect("asked for a chain");
    inclusion.verify(&info.entry).expect("the inclusion proof verifies");
    let proof_bytes = postcard::to_allocvec(&inclusion).expect("serializes").len();
    let timeline_row = vec![
        chains.to_string(),
        format!("{:.1}", creation.as_secs_f64()),
        format!("{:.0}", cosign.as_secs_f64() * 1e3),
        format!("{:.0}", tick.as_secs_f64() * 1e3),
        format!("{rss_mib:.0}"),
        proof_bytes.to_string(),
        format!("{:.1}", query.as_secs_f64() * 1e3),
    ];

    // Real clients (chainiac-client over QUIC) following every chain: anchored at the
    // geneses in one write, then updated, by linked proofs and with every hop.
    let dir = tempfile::tempdir()?;
    let mut update_secs = Vec::new();
    let mut again_secs = 0.0;
    let mut anchor_secs = 0.0;
    let mut state_bytes = 0;
    let mut open_ms = 0.0;
    for every_hop in [false, true] {
        let path = dir.path().join(format!("client-{every_hop}.state"));
        let mut client = chainiac_client::Client::open(&path, chainiac_client::TrustLevel::default())?;
        client.every_hop = every_hop;
        let t = Instant::now();
        client.anchor_many(&geneses)?;
        anchor_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let results = client.update_many(&followed).await?;
        update_secs.push(t.elapsed().as_secs_f64());
        let failed: Vec<String> =
            results.iter().filter_map(|(c, r)| r.as_ref().err().map(|e| format!("{c}: {e}"))).take(3).collect();
        anyhow::ensure!(failed.is_empty(), "client updates failed: {}", failed.join("; "));
        let reached: usize = results.iter().filter(|(_, r)| r.as_ref().is_ok_and(|u| u.to == 1)).count();
        anyhow::ensure!(reached == moved, "{reached} chains moved, expected {moved}");
        if !every_hop {
            let t = Instant::now();
            client.update_many(&followed).await?;
            again_secs = t.elapsed().as_secs_f64();
            state_bytes = std::fs::metadata(&path)?.len();
            drop(client);
            let t = Instant::now();
            let reopened = chainiac_client::Client::open(&path, chainiac_client::TrustLevel::default())?;
            open_ms = t.elapsed().as_secs_f64() * 1e3;
            anyhow::ensure!(reopened.state().chains.len() == chains + 1, "the state file holds every chain");
        }
    }
    let client_row = vec![
        chains.to_string(),
        moved.to_string(),
        format!("{anchor_secs:.2}"),
        format!("{:.2}", update_secs[0]),
        format!("{:.2}", update_secs[1]),
        format!("{again_secs:.2}"),
        format!("{:.2}", state_bytes as f64 / 1e6),
        format!("{open_ms:.0}"),
    ];
    Ok((timeline_row, client_row))
}

pub fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let binary = common::bin();
    if !binary.exists() {
        anyhow::bail!(
            "the network scenario runs real `chainiac` processes and cannot find {}: build it (`cargo build --release -p chainiac`) or set CHAINIAC_BIN",
            binary.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        report.text(&format!(
            "Real `{}` witness processes on 127.0.0.1 (QUIC, RocksDB with synced votes, locks and appends).\n",
            binary.display()
        ));
        report.text("#### Append latency, one project, leaders rotating\n");
        let mut rows = Vec::new();
        let mut medians = Vec::new();
        for &n in &options.sizes {
            let (row, median) = append_latency(n, options.appends).await;
            rows.push(row);
            medians.push((n as f64, median));
        }
        report.table(&["witnesses", "appends", "median ms", "p99 ms", "appends/s"], &rows);
        report.text(
            &format!("#### Append latency while a random witness is SIGKILLed and restarted every {} s (4 witnesses, {} s)\n\nEach append is timed until acknowledged, retries through the next witness included.\n", options.kill_every, options.kill_seconds),
        );
        let row = append_latency_under_kills(4, options.kill_seconds, options.kill_every).await;
        report.table(&["witnesses", "appends", "kills", "retries", "median ms", "p99 ms", "max ms", "appends/s"], &[row]);
        report.text(
            "#### A leader dies after the locks (4 witnesses)\n\nFrom the moment the other members have locked its block until a proposal at another witness has re-led that block and appended its own after it.\n",
        );
        let row = dead_leader_recovery(4).await;
        report.table(&["witnesses", "index filled and next appended, ms"], &[row]);
        report.text("#### Throughput with concurrent projects\n");
        let mut rows = Vec::new();
        for &n in options.sizes.iter().take(2) {
            rows.push(concurrent_projects(n, options.concurrent_projects, options.appends_each).await);
        }
        report.table(&["witnesses", "projects", "appends", "seconds", "appends/s"], &rows);
        report.text("#### Timeline block over many project chains (4 witnesses)\n");
        let (mut timeline_rows, mut client_rows) = (Vec::new(), Vec::new());
        let moved = |chains: usize| (chains / 15).max(1);
        for &chains in &options.timeline_chains {
            let (timeline_row, client_row) = timeline(chains, moved(chains)).await?;
            timeline_rows.push(timeline_row);
            client_rows.push(client_row);
        }
        report.table(
            &[
                "chains",
                "creating them, s",
                "cosigning the timeline block, ms",
                "next tick (nothing moved), ms",
                "witness RSS (largest), MiB",
                "inclusion proof, bytes",
                "timeline query, ms",
            ],
            &timeline_rows,
        );
        report.text(
            "#### A real client following every one of those chains

`chainiac-client` over QUIC against the same 4 witnesses, the timeline block recording one chain in 15 (`moved`) one block ahead of the client's anchors: anchoring every genesis (one state write), `update_many` over all chains with linked proofs (the default) and, on a second client, with `every_hop`, then the linked client again with nothing new; its state file and the time to open it.\n"
        );
        report.table(
            &[
                "chains",
                "moved",
                "anchor all, s",
                "update (linked), s",
                "update (every hop), s",
                "again, nothing new, s",
                "state file, MB",
                "open state, ms",
            ],
            &client_rows,
        );
        report.plot(&Plot {
            file: "network-append-latency.svg",
            title: "Append latency, real witnesses over QUIC on loopback",
            x_label: "witnesses",
            y_label: "median ms",
            log_x: false,
            log_y: false,
            series: vec![Series { name: "median append".into(), points: medians }],
        })
    })
}
