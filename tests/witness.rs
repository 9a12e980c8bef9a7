//! Witness processes over real QUIC and RocksDB: appends, catch-up proofs, failures.

mod common;

use chainiac_proto::message::ErrorCode;
use common::{refusal, Cluster};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_witnesses_append_a_hundred_blocks_and_a_client_proves_the_head() {
    let cluster = Cluster::start(4).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    for i in 0..100u64 {
        let leader = (i % 4) as usize; // any witness may lead
        let block = cluster.propose(leader, chain, format!("release {i}").as_bytes()).await.unwrap();
        assert_eq!(block.header.index, i + 1);
    }
    for w in 0..4 {
        cluster.wait_head(w, chain, 100).await;
    }
    let state = cluster.prove_from_genesis(2, chain, &genesis).await;
    assert_eq!(state.index(), 100);
    // The operator's view: `chainiac witness status --json` on a witness that led rounds.
    let w = &cluster.witnesses[1];
    let out = std::process::Command::new(common::bin())
        .args(["witness", "status", "--address", &w.address, "--key", &w.key.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["rounds_led"], 25);
    assert_eq!(status["rounds_failed"], 0);
    assert_eq!(status["peers_up"], 3, "connected to the other three witnesses");
    assert_eq!(status["chains"][0]["head"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_witness_is_tolerated_losing_two_is_refused_and_they_catch_up() {
    let mut cluster = Cluster::start(4).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    for i in 0..5 {
        cluster.propose(0, chain, format!("before {i}").as_bytes()).await.unwrap();
    }
    cluster.witnesses[3].kill();
    for i in 0..5 {
        cluster.propose(0, chain, format!("one down {i}").as_bytes()).await.unwrap();
    }
    cluster.witnesses[2].kill();
    let started = Instant::now();
    let error = cluster.propose(0, chain, b"two down").await.unwrap_err();
    let reply = refusal(&error);
    assert_eq!(reply.code, ErrorCode::Unavailable, "{}", reply.message);
    assert!(reply.message.contains("3 must sign"), "{}", reply.message);
    assert!(started.elapsed() < Duration::from_secs(15), "failed within the timeout, took {:?}", started.elapsed());
    for w in [0, 1] {
        assert_eq!(cluster.head(w, chain).await, Some(10), "nothing written on witness {w}");
    }
    cluster.witnesses[2].start();
    cluster.witnesses[3].start();
    cluster.client.wait_ready(&cluster.witnesses[2]).await;
    cluster.client.wait_ready(&cluster.witnesses[3]).await;
    for i in 0..3 {
        cluster.propose(1, chain, format!("all back {i}").as_bytes()).await.unwrap();
    }
    for w in 0..4 {
        cluster.wait_head(w, chain, 13).await;
    }
    let state = cluster.prove_from_genesis(3, chain, &genesis).await;
    assert_eq!(state.index(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leaders_racing_at_one_index_append_exactly_one_block() {
    let cluster = Cluster::start(4).await;
    let (chain, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(0, chain, b"first").await.unwrap();
    let mut next = 2u64;
    for round in 0..5u64 {
        let (first, second) = (format!("from witness 0, round {round}"), format!("from witness 2, round {round}"));
        let (a, b) =
            tokio::join!(cluster.propose(0, chain, first.as_bytes()), cluster.propose(2, chain, second.as_bytes()));
        let mut winners: Vec<_> = [&a, &b].into_iter().filter_map(|r| r.as_ref().ok()).collect();
        winners.sort_by_key(|w| w.header.index);
        match winners.as_slice() {
            // The loser went on the new head (a leader that finds its index filled proposes
            // again there), or was told clearly.
            [one, two] => assert_eq!((one.header.index, two.header.index), (next, next + 1), "one block an index"),
            [winner] => {
                assert_eq!(winner.header.index, next);
                let loser = match (&a, &b) {
                    (Err(e), _) | (_, Err(e)) => e,
                    _ => unreachable!("exactly one succeeded"),
                };
                let reply = refusal(loser);
                assert!(
                    matches!(reply.code, ErrorCode::Conflict | ErrorCode::Busy | ErrorCode::Unavailable),
                    "loser told clearly: {reply:?}"
                );
            }
            _ => panic!("neither leader appended at index {next}: {a:?} / {b:?}"),
        }
        let last = next + winners.len() as u64 - 1;
        for w in 0..4 {
            cluster.wait_head(w, chain, last).await;
        }
        cluster.assert_same_blocks(4, chain, next..=last).await;
        next = last + 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_changes_four_five_four_and_a_client_catches_up_across_both() {
    let cluster = Cluster::start(5).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    for i in 0..3 {
        cluster.propose(0, chain, format!("v{i}").as_bytes()).await.unwrap();
    }
    let grow = chainiac_skipchain::Committee::byzantine(cluster.roster(&[0, 1, 2, 3, 4])).with_epoch(1);
    let change = cluster.propose_change(1, chain, grow.clone()).await.unwrap();
    assert_eq!(change.header.index, 4);
    // The newcomer leads a round on the new roster: it caught up first.
    for i in 0..3 {
        cluster.propose(4, chain, format!("five {i}").as_bytes()).await.unwrap();
    }
    let shrink = chainiac_skipchain::Committee::byzantine(cluster.roster(&[0, 1, 2, 4])).with_epoch(2);
    let change = cluster.propose_change(4, chain, shrink.clone()).await.unwrap();
    assert_eq!(change.header.index, 8);
    for i in 0..2 {
        cluster.propose(2, chain, format!("four again {i}").as_bytes()).await.unwrap();
    }
    // Witness 3 left: it is no longer asked, and cannot lead.
    let error = cluster.propose(3, chain, b"not a member").await.unwrap_err();
    assert!(
        matches!(refusal(&error).code, ErrorCode::Forbidden | ErrorCode::NotFound | ErrorCode::Conflict),
        "{error}"
    );
    let request = chainiac_proto::Request::GetProof { chain, from: 0, to: None, with_payload: false };
    let chainiac_proto::Response::Proof(proof) = cluster.client.call(&cluster.witnesses[4], request).await.unwrap()
    else {
        panic!("no proof")
    };
    let reached = proof
        .verify(&chainiac_skipchain::ChainState::genesis(&genesis).unwrap(), &chainiac_release::policy_rule)
        .unwrap();
    assert_eq!(reached.state.index(), 10);
    assert_eq!(reached.checkpoints, vec![4, 8], "the proof lands on both roster changes");
    assert_eq!(reached.state.committee.hash(), shrink.hash());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_killed_repeatedly_during_appends_never_forks() {
    let mut cluster = Cluster::start(4).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    let mut appended = 0u64;
    for cycle in 0..4 {
        let victim = 2 + cycle % 2;
        for i in 0..6 {
            if i == 3 {
                cluster.witnesses[victim].kill(); // SIGKILL, mid-stream
            }
            match cluster.propose(0, chain, format!("cycle {cycle} block {i}").as_bytes()).await {
                Ok(block) => appended = block.header.index,
                Err(e) => panic!("one witness down must not stop appends: {e}"),
            }
        }
        cluster.witnesses[victim].start();
        cluster.client.wait_ready(&cluster.witnesses[victim]).await;
    }
    cluster.propose(1, chain, b"last").await.unwrap();
    appended += 1;
    for w in 0..4 {
        cluster.wait_head(w, chain, appended).await;
    }
    cluster.assert_same_blocks(4, chain, 1..=appended).await;
    assert_eq!(cluster.prove_from_genesis(3, chain, &genesis).await.index(), appended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_frames_and_strangers_are_refused_and_the_node_stays_healthy() {
    use chainiac_proto::endpoint::{self, read_frame};
    use chainiac_proto::frame::{FrameClass, VERSION};
    use chainiac_proto::{Request, Response};
    let cluster = Cluster::start(4).await;
    let (chain, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(0, chain, b"one").await.unwrap();
    let target = &cluster.witnesses[1];
    let stranger = chainiac_cosi::SecretKey::generate(&mut rand_core::OsRng);
    let client = endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connection = endpoint::connect(&client, &stranger, &target.address, &target.key).await.unwrap();

    let mut huge = vec![VERSION, FrameClass::Submit as u8];
    huge.extend_from_slice(&(100u32 << 20).to_le_bytes());
    let mut garbage = vec![VERSION, FrameClass::Query as u8, 3, 0, 0, 0];
    garbage.extend_from_slice(&[0xde, 0xad, 0xff]);
    for bytes in [huge, garbage, vec![42, 1, 0, 0, 0, 0], b"GET / HTTP/1.1\r\n\r\n".to_vec()] {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let (_, reply): (_, Response) = read_frame(&mut recv, &[FrameClass::Response]).await.unwrap();
        assert!(matches!(&reply, Response::Error(e) if e.code == ErrorCode::BadRequest), "{reply:?}");
    }
    // A key outside the roster may not take part in rounds.
    let block = match cluster.client.call(target, Request::GetBlock { chain, index: 1 }).await.unwrap() {
        Response::Block(Some(block)) => block,
        other => panic!("{other:?}"),
    };
    let reply = endpoint::call(&connection, &Request::Commit { block }, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(refusal(&reply).code, ErrorCode::Forbidden);
    // Connecting while expecting another key fails at the handshake.
    let wrong = cluster.witnesses[2].key;
    assert!(endpoint::connect(&client, &stranger, &target.address, &wrong).await.is_err());
    // Healthy: still serving and appending, and it counted the refusals.
    cluster.propose(1, chain, b"two").await.unwrap();
    match cluster.client.call(target, Request::Status).await.unwrap() {
        Response::Status(status) => assert!(status.refused_frames >= 5, "refusals counted: {}", status.refused_frames),
        other => panic!("{other:?}"),
    }
}

#[test]
fn witness_run_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut witness = common::WitnessProcess::init(&dir.path().join("w"));
    witness.start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async { common::Client::new().wait_ready(&witness).await });
    let status = witness.stop();
    assert!(status.success(), "exit status {status:?}\n{}", witness.log());
    assert!(witness.log().contains("shutting down"));
    // Written to a file, log lines carry no colour codes.
    assert!(!witness.log().contains('\x1b'), "{}", witness.log());
    let key = std::fs::metadata(dir.path().join("w/node.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_commits_to_every_head_and_clients_check_inclusion_and_age() {
    use chainiac_proto::{Request, Response};
    use chainiac_skipchain::timeline::{TimelineEntry, KIND_TIMELINE};
    let cluster = Cluster::start(4).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (project, project_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    let (other, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    for i in 0..3 {
        cluster.propose(1, project, format!("p{i}").as_bytes()).await.unwrap();
    }
    cluster.propose(2, other, b"o").await.unwrap();

    // Wait until a timeline block records the project at head 3.
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let reply = cluster
            .client
            .call(&cluster.witnesses[3], Request::GetTimeline { timeline: None, chain: Some(project) })
            .await;
        if let Ok(Response::Timeline(info)) = reply {
            if info.inclusion.as_ref().is_some_and(|p| p.leaf.index == 3) {
                break info;
            }
        }
        assert!(Instant::now() < deadline, "no timeline block recorded head 3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.timeline, timeline);
    assert_eq!(info.entry.chains, 2, "the timeline covers both project chains, not itself");

    // The client proves the timeline block from the timeline's genesis and checks its entry.
    let request = Request::GetProof { chain: timeline, from: 0, to: Some(info.index), with_payload: true };
    let Response::Proof(proof) = cluster.client.call(&cluster.witnesses[0], request).await.unwrap() else { panic!() };
    let reached = proof
        .verify(&chainiac_skipchain::ChainState::genesis(&timeline_genesis).unwrap(), &chainiac_release::policy_rule)
        .unwrap();
    let entry = TimelineEntry::from_bytes(reached.payload.as_ref().unwrap()).unwrap();
    assert_eq!(entry, info.entry);
    let age = common::now_ms().saturating_sub(entry.time_ms);
    assert!(age < 30_000, "fresh: {age} ms old");
    let inclusion = info.inclusion.unwrap();
    inclusion.verify(&entry).unwrap();
    // The leaf is the project's real head.
    let head = cluster.prove_from_genesis(0, project, &project_genesis).await;
    assert_eq!((inclusion.leaf.index, inclusion.leaf.id), (head.index(), head.id));
    // A lie about the head does not verify.
    let mut lie = inclusion.clone();
    lie.leaf.index = 2;
    assert!(lie.verify(&entry).is_err());

    // A timeline entry with a root the witnesses cannot recompute is refused, rule named.
    // Its time is 5 s ahead (within the 30 s skew allowed): a timer block appended meanwhile
    // would otherwise be later than it, and the entry be refused for its time instead.
    let bogus = TimelineEntry { time_ms: common::now_ms() + 5_000, chains: 2, root: [7; 32], changes: None };
    let proposal = chainiac_skipchain::Proposal {
        kind: KIND_TIMELINE,
        payload: bogus.to_bytes(),
        timestamp_ms: bogus.time_ms,
        ..Default::default()
    };
    let reply = cluster.operator(1).call(&cluster.witnesses[0], Request::Propose { chain: timeline, proposal }).await;
    let error = reply.unwrap_err();
    assert!(refusal(&error).message.contains("timeline root"), "{error}");
    // And a timeline block on a project chain is refused by kind.
    let proposal =
        chainiac_skipchain::Proposal { kind: KIND_TIMELINE, payload: bogus.to_bytes(), ..Default::default() };
    let error =
        cluster.client.call(&cluster.witnesses[0], Request::Propose { chain: project, proposal }).await.unwrap_err();
    assert!(refusal(&error).message.contains("kind"), "{error}");
}

/// Every timeline block records the heads that moved since the block before; a client at
/// any timeline block learns from the lists which of its chains moved, and a proposal whose
/// list differs from the witnesses' is refused, rule named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_change_lists_name_every_moved_head() {
    use chainiac_proto::{Request, Response};
    use chainiac_skipchain::timeline::{TimelineEntry, KIND_TIMELINE};
    use chainiac_skipchain::ChainState;
    let cluster = Cluster::start(4).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (project, project_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    let (other, other_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    for i in 0..3 {
        cluster.propose(1, project, format!("p{i}").as_bytes()).await.unwrap();
    }
    cluster.propose(2, other, b"o").await.unwrap();
    let recorded_for = |chain: chainiac_skipchain::ChainId, index: u64| {
        let cluster = &cluster;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let request = Request::GetTimeline { timeline: Some(timeline), chain: Some(chain) };
                if let Ok(Response::Timeline(info)) = cluster.client.call(&cluster.witnesses[0], request).await {
                    if info.inclusion.as_ref().is_some_and(|p| p.leaf.index == index) {
                        return info;
                    }
                }
                assert!(Instant::now() < deadline, "no timeline block recorded head {index}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let recorded = |index: u64| recorded_for(project, index);
    recorded_for(other, 1).await;
    let first = recorded(3).await;

    // The client follows both chains: the lists open their leaves and show the others'
    // chain prefixes only.
    let both = [project, other];
    let watched = || both.iter().map(chainiac_skipchain::timeline::chain_prefix).collect::<Vec<_>>();
    // Any witness that checked every block since holds the lists (one that caught up
    // while heads moved may miss some and says so).
    let ask = |from: u64| {
        let cluster = &cluster;
        async move {
            for witness in &cluster.witnesses {
                let request = Request::GetTimelineChanges {
                    timeline,
                    from,
                    watched: watched(),
                    held_appointments: vec![],
                    max_bytes: 0,
                };
                match cluster.client.call(witness, request).await {
                    Ok(Response::TimelineChanges(answer)) => return Some(answer),
                    other => eprintln!("no change lists: {other:?}"),
                }
            }
            None
        }
    };
    // From the genesis, the lists name both chains at their heads. A leader whose listed
    // proposal failed (this test binary loads the machine) proposes the next block without
    // a list; the lists then stop before it, and only what they reach is checked.
    let genesis = ChainState::genesis(&timeline_genesis).unwrap().into_inner();
    let project_head = cluster.prove_from_genesis(0, project, &project_genesis).await;
    let other_head = cluster.prove_from_genesis(0, other, &other_genesis).await;
    if let Some(answer) = ask(0).await {
        let seen = answer
            .verify_with(&genesis, &chainiac_skipchain::Appointments::default(), &both, &chainiac_release::policy_rule)
            .unwrap()
            .into_inner();
        if seen.caught.state.index() >= first.index {
            assert_eq!(seen.moved.len(), 2, "{:?}", seen.moved);
            assert_eq!((seen.moved[&project].index, seen.moved[&project].id), (3, project_head.id));
            assert_eq!((seen.moved[&other].index, seen.moved[&other].id), (1, other_head.id));
        }
    }

    // One more release: from the block the client holds, only that chain moved (tried again
    // from a newer block if one in between went without a list).
    let mut checked = false;
    for attempt in 0..5u64 {
        let request = Request::GetProof { chain: timeline, from: 0, to: None, with_payload: false };
        let Response::Proof(proof) = cluster.client.call(&cluster.witnesses[1], request).await.unwrap() else {
            panic!("not a proof")
        };
        let held = proof.verify(&genesis, &chainiac_release::policy_rule).unwrap().into_inner().state;
        let head = 4 + attempt;
        cluster.propose(1, project, format!("p{head}").as_bytes()).await.unwrap();
        let recording = recorded(head).await;
        let Some(answer) = ask(held.index()).await else { continue };
        let seen = answer
            .verify_with(&held, &chainiac_skipchain::Appointments::default(), &both, &chainiac_release::policy_rule)
            .unwrap()
            .into_inner();
        if seen.caught.state.index() < recording.index {
            continue;
        }
        assert_eq!(seen.moved.keys().copied().collect::<Vec<_>>(), vec![project]);
        assert_eq!(seen.moved[&project].index, head);
        // A list with the move left out does not verify.
        let mut cut = answer.clone();
        let block = cut.blocks.iter_mut().find(|b| !b.opened.is_empty()).expect("the move is opened");
        block.opened.clear();
        assert!(cut
            .verify_with(&held, &chainiac_skipchain::Appointments::default(), &both, &chainiac_release::policy_rule)
            .is_err());
        checked = true;
        break;
    }
    assert!(checked, "five tries, each with a block in between that went without a list");
    // A client that would rather take inclusion proofs says how much it would pay.
    let request =
        Request::GetTimelineChanges { timeline, from: 0, watched: watched(), held_appointments: vec![], max_bytes: 10 };
    let error = cluster.client.call(&cluster.witnesses[1], request).await.unwrap_err();
    assert!(refusal(&error).message.contains("more than the 10 asked"), "{error}");

    // An entry whose root is right but whose change list is not: refused, rule named.
    let request = Request::GetTimeline { timeline: Some(timeline), chain: None };
    let Response::Timeline(now) = cluster.client.call(&cluster.witnesses[0], request).await.unwrap() else {
        panic!("not a timeline answer")
    };
    // 5 s ahead, as above: no timer block can come after it meanwhile.
    let forged = TimelineEntry { time_ms: common::now_ms() + 5_000, changes: Some([7; 32]), ..now.entry.clone() };
    let proposal = chainiac_skipchain::Proposal {
        kind: KIND_TIMELINE,
        payload: forged.to_bytes(),
        timestamp_ms: forged.time_ms,
        ..Default::default()
    };
    let error = cluster
        .operator(1)
        .call(&cluster.witnesses[0], Request::Propose { chain: timeline, proposal })
        .await
        .unwrap_err();
    assert!(refusal(&error).message.contains("change list"), "{error}");

    // A block without a list (a leader lacking the heads before proposes one): lists from
    // before it cannot reach the head, and witnesses say so rather than pass off the block
    // before it as the newest; from it on, lists are served again.
    let mut attempts = 0;
    let listless = loop {
        let request = Request::GetTimeline { timeline: Some(timeline), chain: None };
        let Response::Timeline(now) = cluster.client.call(&cluster.witnesses[0], request).await.unwrap() else {
            panic!("not a timeline answer")
        };
        let entry = TimelineEntry { time_ms: common::now_ms(), changes: None, ..now.entry.clone() };
        let proposal = chainiac_skipchain::Proposal {
            kind: KIND_TIMELINE,
            payload: entry.to_bytes(),
            timestamp_ms: entry.time_ms,
            ..Default::default()
        };
        match cluster.operator(1).call(&cluster.witnesses[0], Request::Propose { chain: timeline, proposal }).await {
            Ok(Response::Appended { block }) => break block.header.index,
            other => {
                attempts += 1;
                assert!(attempts < 30, "a list-less timeline block was never appended: {other:?}");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    };
    assert!(listless >= 2);
    // Every witness has checked a block after it (a witness that has not yet would rightly
    // serve lists up to the block before).
    let deadline = Instant::now() + Duration::from_secs(30);
    for witness in &cluster.witnesses {
        loop {
            let request = Request::GetTimeline { timeline: Some(timeline), chain: None };
            if let Ok(Response::Timeline(info)) = cluster.client.call(witness, request).await {
                if info.index > listless {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "a witness checked no timeline block after the list-less one");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut named = false;
    for witness in &cluster.witnesses {
        let request = Request::GetTimelineChanges {
            timeline,
            from: listless - 2,
            watched: watched(),
            held_appointments: vec![],
            max_bytes: 0,
        };
        match cluster.client.call(witness, request).await {
            Ok(answer) => panic!("lists across a block without one: {answer:?}"),
            Err(error) => {
                assert_eq!(refusal(&error).code, ErrorCode::NotFound, "{error}");
                named |= refusal(&error).message.contains(&format!("no change list for block {listless} "));
            }
        }
    }
    assert!(named, "no witness named block {listless} as the one without a list");
    let request = Request::GetProof { chain: timeline, from: 0, to: Some(listless), with_payload: false };
    let Response::Proof(proof) = cluster.client.call(&cluster.witnesses[1], request).await.unwrap() else {
        panic!("not a proof")
    };
    let at_listless = proof.verify(&genesis, &chainiac_release::policy_rule).unwrap().into_inner().state;
    let after = ask(listless).await.expect("lists after the list-less block");
    let seen = after
        .verify_with(&at_listless, &chainiac_skipchain::Appointments::default(), &both, &chainiac_release::policy_rule)
        .unwrap()
        .into_inner();
    assert!(seen.caught.state.index() > listless && seen.moved.is_empty(), "{seen:?}");
}

/// Every witness SIGKILLed and restarted at once: the newest timeline block's head set comes
/// back from RocksDB, so timeline clients are answered at once (before, every witness said
/// "no timeline block known" until a new block), with inclusion proofs that verify, and the
/// next timeline block's change list is made and checked against the restored set.
/// Clients' connections from before the restart are reset, not left to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_keeps_serving_timeline_clients() {
    use chainiac_proto::{Request, Response};
    use chainiac_skipchain::timeline::KIND_TIMELINE;
    use chainiac_skipchain::Proposal;
    // No automatic timeline blocks: the operator asks for each one.
    let mut cluster = Cluster::start_with(4, 0).await;
    let (timeline, _) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (chain, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(1, chain, b"recorded").await.unwrap();
    async fn tick(cluster: &Cluster, timeline: chainiac_skipchain::ChainId) -> u64 {
        let proposal = Proposal { kind: KIND_TIMELINE, ..Proposal::default() };
        match cluster.operator(0).call(&cluster.witnesses[0], Request::Propose { chain: timeline, proposal }).await {
            Ok(Response::Appended { block }) => block.header.index,
            other => panic!("a timeline block: {other:?}"),
        }
    }
    let recorded = tick(&cluster, timeline).await;
    for i in 0..4 {
        cluster.wait_head(i, timeline, recorded).await;
    }
    for w in &mut cluster.witnesses {
        w.kill();
    }
    for w in &mut cluster.witnesses {
        w.start();
    }
    for w in &cluster.witnesses {
        cluster.client.wait_ready(w).await;
    }
    // `cluster.client` still holds its connections from before the restart: each node's
    // stateless-reset key comes from its node key, so the new run resets them at the first
    // packet and the client reconnects at once (else: a timeout, 20 s here).
    for i in 0..4 {
        let request = Request::GetTimeline { timeline: Some(timeline), chain: Some(chain) };
        match cluster.client.call(&cluster.witnesses[i], request).await {
            Ok(Response::Timeline(info)) => {
                assert_eq!(info.index, recorded, "witness {i}");
                let leaf = info.inclusion.expect("the chain's inclusion proof");
                leaf.verify(&info.entry).unwrap();
                assert_eq!(leaf.leaf.index, 1, "witness {i} proves the recorded head");
            }
            other => panic!("witness {i} after the restart: {other:?}"),
        }
        assert!(cluster.witnesses[i].log().contains("timeline heads restored"), "witness {i}");
    }
    // The next block records what moved since the restored set, and every member checks it.
    cluster.propose(2, chain, b"after the restart").await.unwrap();
    let next = tick(&cluster, timeline).await;
    assert_eq!(next, recorded + 1);
    let request = Request::GetTimeline { timeline: Some(timeline), chain: Some(chain) };
    let Ok(Response::Timeline(info)) = cluster.client.call(&cluster.witnesses[3], request).await else {
        panic!("timeline")
    };
    assert_eq!(info.index, next);
    assert!(info.entry.changes.is_some(), "a change list over the restored set");
}

/// A dead member is asked once, then left out of the leader's trees while the others reach
/// the threshold (every round used to wait out its timeout); it is asked again once back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_member_is_left_out_of_the_next_rounds_and_rejoins() {
    use chainiac_proto::{Request, Response};
    let mut cluster = Cluster::start_with(4, 0).await;
    let (chain, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(0, chain, b"all four").await.unwrap();
    cluster.witnesses[3].kill();
    for i in 0..5 {
        cluster.propose(0, chain, format!("three of four {i}").as_bytes()).await.unwrap();
    }
    let status = match cluster.client.call(&cluster.witnesses[0], Request::Status).await {
        Ok(Response::Status(status)) => status,
        other => panic!("status: {other:?}"),
    };
    assert_eq!(status.peers_left_out, 4, "asked in the first round after it died, left out of the next four");
    assert_eq!(status.timeline_age_ms, None, "no timeline served");
    cluster.witnesses[3].start();
    cluster.client.wait_ready(&cluster.witnesses[3]).await;
    // Back after the presumption lapses (10 s): asked again, and it signs again.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let block = cluster.propose(0, chain, b"four again").await.unwrap();
    let signers: u32 = block.signature.as_ref().unwrap().signature.mask.iter().map(|b| b.count_ones()).sum();
    assert_eq!(signers, 4, "the member that came back signed");
}

/// A timeline's committee changes while its members append a timeline block every 100 ms.
/// The entry (its time, its change list) is made for the head the proposing witness read;
/// when another block takes that place before the round starts, the witness makes it again
/// on the new head, so no change is refused for an entry that no longer fits ("timeline
/// entry time differs from the block's time", "cannot check the change list").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_committee_changes_racing_its_own_blocks_are_appended() {
    use chainiac_skipchain::timeline::KIND_TIMELINE;
    use chainiac_skipchain::Committee;
    let cluster = Cluster::start_with(4, 100).await;
    let (timeline, _) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (chain, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    for epoch in 1..=8u64 {
        // A head that moves: the next entries carry a change list.
        cluster.propose((epoch % 4) as usize, chain, format!("b{epoch}").as_bytes()).await.unwrap();
        let next = Committee::byzantine(cluster.roster(&[0, 1, 2, 3])).with_epoch(epoch);
        let leader = (epoch % 4) as usize;
        // `propose_change` asks again only while the index is busy or taken.
        let block = cluster
            .propose_change(leader, timeline, next.clone())
            .await
            .unwrap_or_else(|e| panic!("epoch {epoch}: the change was refused: {e}"));
        assert_eq!(block.header.committee_hash, next.hash(), "epoch {epoch}");
        assert_eq!(block.header.kind, KIND_TIMELINE);
    }
}
