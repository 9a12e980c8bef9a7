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
    let payload = cluster.witnesses[2].address.clone();
    assert!(!payload.is_empty());
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
