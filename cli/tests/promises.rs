//! No index freezes when its leader dies after the promises (SPEC §9.2), against real
//! witness processes (QUIC, RocksDB). A stand-in holding witness 0's key leads a round up
//! to the point where the other members have durably promised its block, then vanishes —
//! what a leader SIGKILLed mid-round, or one withholding the signature, leaves behind.
//! Every member then refuses any other block at that index for good; before promises kept
//! their block, the chain stopped there forever (issue 17's wedge).

mod common;

use chainiac_cosi::protocol::{commit, Leader, Session, SessionId, Tree};
use chainiac_cosi::Mask;
use chainiac_proto::message::Announce;
use chainiac_proto::{ErrorCode, Request, Response};
use chainiac_skipchain::{Block, BlockSignature, ChainId, Proposal};
use common::{refusal, Client, Cluster};
use rand_core::OsRng;
use std::sync::Arc;

/// The next block of `chain` with `payload`, built on witness `i`'s proven head.
async fn next_block(cluster: &Cluster, i: usize, chain: ChainId, genesis: &Block, payload: &[u8]) -> Block {
    let head = cluster.prove_from_genesis(i, chain, genesis).await;
    let mut ids = std::collections::HashMap::new();
    for index in 0..=head.index() {
        let Ok(Response::Block(Some(block))) =
            cluster.client.call(&cluster.witnesses[i], Request::GetBlock { chain, index }).await
        else {
            panic!("block {index}")
        };
        ids.insert(index, block.id());
    }
    let proposal = Proposal { payload: payload.to_vec(), timestamp_ms: common::now_ms(), ..Proposal::default() };
    head.propose(proposal, |i| ids.get(&i).copied()).unwrap()
}

/// Leads a round for `block` as witness `leader` (with its key) over a star of every other
/// member, through the challenge — each member promises the block before it answers —
/// and stops there: no signature is formed, no commit is sent. Returns how many answered.
async fn lead_until_the_promises(cluster: &Cluster, witness: usize, members: usize, block: &Block) -> usize {
    let key = cluster.keys(&[witness]).pop().unwrap();
    let stand_in = Client::with_key(cluster.keys(&[witness]).pop().unwrap());
    let roster = Arc::new(cluster.roster(&(0..members).collect::<Vec<_>>()));
    // Roster positions, by witness.
    let at = |w: usize| roster.index_of(&cluster.witnesses[w].key).unwrap();
    let leader = at(witness);
    let session_id = SessionId([7; 32]);
    let session = Session::new(roster.clone(), session_id, BlockSignature::message(&block.id(), 1).to_vec());
    let tree = Tree::new(members, leader, members, &Mask::empty(members));
    let mut round = Leader::new(session.clone(), &tree, members - 1).unwrap();
    let (_nonces, own) = commit(&session, leader, &key, &mut OsRng).unwrap();
    round.aggregator().receive_commitment(leader, &own).unwrap();
    let announce = Announce {
        block: block.clone(),
        session: session_id,
        leader: leader as u32,
        branching: members as u32,
        excluded: Mask::empty(members).as_bytes().to_vec(),
        ballot: 1,
        promises: vec![],
    };
    let others: Vec<usize> = (0..members).filter(|&w| w != witness).collect();
    for &w in &others {
        match stand_in.call(&cluster.witnesses[w], Request::Announce(announce.clone())).await {
            Ok(Response::Commitment(c)) => round.aggregator().receive_commitment(at(w), &c).unwrap(),
            other => panic!("witness {w} did not commit: {other:?}"),
        }
    }
    let challenge = round.challenge().unwrap();
    let mut answered = 0;
    for &w in &others {
        let request = Request::Challenge { session: session_id, challenge: challenge.clone() };
        if let Ok(Response::Signed(_)) = stand_in.call(&cluster.witnesses[w], request).await {
            answered += 1;
        }
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dying_after_the_promises_leaves_its_block_to_the_next_leader() {
    // No automatic timeline blocks: only this test's requests move the chain. A tight clock
    // skew, so that the promised block is stale by the time it is re-led.
    let mut cluster = Cluster::start_configured(4, 0, |_, config| config.max_clock_skew_ms = 1_500).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(0, chain, b"first").await.unwrap();
    for i in 0..4 {
        cluster.wait_head(i, chain, 1).await;
    }

    // Witness 0 dies; its key leads block X at index 2 up to the promises, then vanishes.
    cluster.witnesses[0].kill();
    let promised = next_block(&cluster, 1, chain, &genesis, b"promised by three").await;
    assert_eq!(promised.header.index, 2);
    assert_eq!(lead_until_the_promises(&cluster, 0, 4, &promised).await, 3, "members 1-3 promised X");

    // Each member reports its promise, signed, to a member of the committee, and to no one else.
    let member = cluster.operator(2);
    match member.call(&cluster.witnesses[1], Request::GetPromise { chain, index: 2 }).await {
        Ok(Response::Promise(Some(p))) => {
            assert!(p.verify(), "a valid signature");
            assert_eq!((p.member, p.block.id()), (cluster.witnesses[1].key, promised.id()));
        }
        other => panic!("witness 1 must report its promise, got {other:?}"),
    }
    let stranger = Client::new();
    let refused = stranger.call(&cluster.witnesses[1], Request::GetPromise { chain, index: 2 }).await.unwrap_err();
    assert_eq!(refusal(&refused).code, ErrorCode::Forbidden);

    // A full restart of the members that promised: only what is on disk survives.
    for i in 1..4 {
        cluster.witnesses[i].kill();
    }
    for i in 1..4 {
        cluster.witnesses[i].start();
    }
    for i in 1..4 {
        cluster.client.wait_ready(&cluster.witnesses[i]).await;
    }
    // Connections cached from before the restart are dead: new clients.
    cluster.client = Client::new();
    let member = cluster.operator(2);

    // Another block at index 2 is refused by every member that promised X...
    let other = next_block(&cluster, 1, chain, &genesis, b"another block").await;
    let roster = cluster.roster(&[0, 1, 2, 3]);
    let announce = Announce {
        block: other,
        session: SessionId([8; 32]),
        leader: roster.index_of(&cluster.witnesses[1].key).unwrap() as u32,
        branching: 4,
        excluded: vec![0],
        ballot: 1,
        promises: vec![],
    };
    let reply = cluster.operator(1).call(&cluster.witnesses[2], Request::Announce(announce)).await.unwrap_err();
    assert_eq!(refusal(&reply).code, ErrorCode::Promised, "{}", refusal(&reply).message);

    // ...so the next proposal fills index 2 with X first, then goes on index 3.
    let mine = cluster.propose(2, chain, b"after the dead leader").await.unwrap();
    assert_eq!(mine.header.index, 3);
    assert_eq!(mine.payload, b"after the dead leader");
    cluster.witnesses[0].start();
    cluster.client.wait_ready(&cluster.witnesses[0]).await;
    cluster.propose(1, chain, b"everyone again").await.unwrap();
    for i in 0..4 {
        cluster.wait_head(i, chain, 4).await;
        let Ok(Response::Block(Some(block))) =
            cluster.client.call(&cluster.witnesses[i], Request::GetBlock { chain, index: 2 }).await
        else {
            panic!("witness {i} lacks block 2")
        };
        assert_eq!(block.id(), promised.id(), "witness {i} holds the promised block at index 2");
        assert!(block.signature.is_some());
    }
    // The client's view: the whole chain verifies from the genesis.
    assert_eq!(cluster.prove_from_genesis(3, chain, &genesis).await.index(), 4);
    match cluster.client.call(&cluster.witnesses[2], Request::Status).await {
        Ok(Response::Status(status)) => assert_eq!(status.blocks_adopted, 1, "witness 2 re-led one promised block"),
        other => panic!("status: {other:?}"),
    }
    // A promise ends when its index is filled: nothing is reported there any more.
    match member.call(&cluster.witnesses[1], Request::GetPromise { chain, index: 2 }).await {
        Ok(Response::Promise(None)) => {}
        other => panic!("a filled index reports no promise, got {other:?}"),
    }

    // What a faulty member can do with the promises an announce carries: no more than
    // without them. A block older than the clock skew, vouched for only by its own
    // promise (no more than the faulty members a committee tolerates), gets every check.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let mut stale = next_block(&cluster, 1, chain, &genesis, b"backdated").await;
    let head_time = cluster.prove_from_genesis(1, chain, &genesis).await.header.timestamp_ms;
    stale.header.timestamp_ms = head_time + 1;
    let faulty = cluster.keys(&[0]).pop().unwrap();
    let own = chainiac_proto::message::SignedPromise::sign(&faulty, stale.clone()).signature();
    let announce = |promises| Announce {
        block: stale.clone(),
        session: SessionId([9; 32]),
        leader: roster.index_of(&cluster.witnesses[0].key).unwrap() as u32,
        branching: 4,
        excluded: vec![0],
        ballot: 1,
        promises,
    };
    let as_leader = Client::with_key(cluster.keys(&[0]).pop().unwrap());
    let reply = as_leader.call(&cluster.witnesses[1], Request::Announce(announce(vec![own]))).await.unwrap_err();
    assert!(refusal(&reply).message.contains("from this witness's clock"), "{}", refusal(&reply).message);
    // The same promise twice, or a stranger's, is refused before any signature is checked.
    let reply = as_leader.call(&cluster.witnesses[1], Request::Announce(announce(vec![own, own]))).await.unwrap_err();
    assert_eq!(refusal(&reply).code, ErrorCode::BadRequest, "{}", refusal(&reply).message);
    let stranger_key = chainiac_cosi::SecretKey::from_seed(&[77; 32]);
    let strangers = chainiac_proto::message::SignedPromise::sign(&stranger_key, stale.clone()).signature();
    let reply =
        as_leader.call(&cluster.witnesses[1], Request::Announce(announce(vec![own, strangers]))).await.unwrap_err();
    assert_eq!(refusal(&reply).code, ErrorCode::BadRequest, "{}", refusal(&reply).message);
}
