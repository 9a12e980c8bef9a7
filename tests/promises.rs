//! No index freezes when its leader dies after the locks (SPEC §9.1), against real witness
//! processes (QUIC, RocksDB). A stand-in holding witness 0's key leads a round through the
//! votes and the certificate, until the other members have durably locked its block and
//! released their partial signatures, then vanishes — what a leader SIGKILLed mid-round,
//! or one withholding the signature, leaves behind. Those members then vote for no other
//! block without a newer certificate; before members kept what they were bound to, the
//! chain stopped there for good (issue 17's wedge).

mod common;

use chainiac_cosi::protocol::{commit, Leader, Session, SessionId, Tree};
use chainiac_cosi::Mask;
use chainiac_proto::message::{Announce, Certificate, Vote};
use chainiac_proto::{ErrorCode, Request, Response};
use chainiac_skipchain::{Block, BlockSignature, ChainId, Proposal};
use chainiac_witness::agreement;
use common::{refusal, Client, Cluster};
use rand_core::OsRng;
use std::sync::Arc;

/// Four witnesses with a chain of one block, then witness 0 killed (its key is a test's to
/// play with).
async fn four_with_witness_zero_dead() -> (Cluster, ChainId, Block) {
    let mut cluster = Cluster::start_with(4, 0).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(0, chain, b"first").await.unwrap();
    for i in 0..4 {
        cluster.wait_head(i, chain, 1).await;
    }
    cluster.witnesses[0].kill();
    (cluster, chain, genesis)
}

/// The next block of `chain` with `payload`, built on witness `i`'s proven head.
async fn next_block(cluster: &Cluster, i: usize, chain: ChainId, genesis: &Block, payload: &[u8]) -> Block {
    let proposal = Proposal { payload: payload.to_vec(), timestamp_ms: common::now_ms(), ..Proposal::default() };
    cluster.next_block(i, chain, genesis, proposal).await
}

/// Leads a round for `block` at the first ballot above `above` that witness `witness` owns
/// (with its key) over a star of `voters` (witness indices; the roster is witnesses
/// `0..members`): announce (each votes and commits), certificate, challenge to `lockers`
/// only (each locks and signs) — and stops there: no signature is formed, no commit is
/// sent. Returns how many signed, and the ballot.
async fn lead_until_the_locks(
    cluster: &Cluster,
    witness: usize,
    members: usize,
    block: &Block,
    above: u64,
    voters: &[usize],
    lockers: &[usize],
) -> (usize, u64) {
    let key = cluster.keys(&[witness]).pop().unwrap();
    let stand_in = Client::with_key(cluster.keys(&[witness]).pop().unwrap());
    let roster = Arc::new(cluster.roster(&(0..members).collect::<Vec<_>>()));
    let at = |w: usize| roster.index_of(&cluster.witnesses[w].key).unwrap();
    let leader = at(witness);
    let ballot = agreement::next_owned(above, leader, members).unwrap();
    let session_id = SessionId([ballot as u8; 32]);
    let session = Session::new(roster.clone(), session_id, BlockSignature::message(&block.id(), ballot).to_vec());
    let tree = Tree::new(members, leader, members, &Mask::empty(members));
    let mut round = Leader::new(session.clone(), &tree, voters.len() + 1).unwrap();
    let (_nonces, own) = commit(&session, leader, &key, &mut OsRng).unwrap();
    round.aggregator().receive_commitment(leader, &own).unwrap();
    let announce = Announce {
        block: block.clone(),
        session: session_id,
        leader: leader as u32,
        branching: members as u32,
        excluded: Mask::empty(members).as_bytes().to_vec(),
        ballot,
        justification: None,
        leader_signature: [0; 64],
    };
    let mut announce = announce;
    announce.sign(&key);
    let mut votes = vec![Vote::sign(&key, leader as u32, &block.id(), ballot)];
    for &w in voters {
        match stand_in.call(&cluster.witnesses[w], Request::Announce(announce.clone())).await {
            Ok(Response::Voted { commitment, votes: theirs }) => {
                round.aggregator().receive_commitment(at(w), &commitment).unwrap();
                votes.extend(theirs);
            }
            other => panic!("witness {w} did not vote: {other:?}"),
        }
    }
    let challenge = round.challenge().unwrap();
    let certificate = Certificate { ballot, votes };
    // A voter left out of the locks is shown a certificate of another ballot than its
    // session's, and refuses it: its share would leave over `id || ballot` while it locked
    // at another ballot.
    for &w in voters.iter().filter(|w| !lockers.contains(w)) {
        let mut wrong = certificate.clone();
        wrong.ballot -= 1;
        let request = Request::Challenge { session: session_id, challenge: challenge.clone(), certificate: wrong };
        let reply = stand_in.call(&cluster.witnesses[w], request).await.unwrap_err();
        assert!(refusal(&reply).message.contains("this round's is"), "{}", refusal(&reply).message);
    }
    let mut signed = 0;
    for &w in lockers {
        let request =
            Request::Challenge { session: session_id, challenge: challenge.clone(), certificate: certificate.clone() };
        if let Ok(Response::Signed(_)) = stand_in.call(&cluster.witnesses[w], request).await {
            signed += 1;
        }
    }
    (signed, ballot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dying_after_the_locks_leaves_its_block_to_the_next_leader() {
    // No automatic timeline blocks: only this test's requests move the chain. A tight clock
    // skew, so that the locked block is stale by the time it is re-led.
    let mut cluster = Cluster::start_configured(4, 0, |_, config| config.max_clock_skew_ms = 1_500).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(0, chain, b"first").await.unwrap();
    for i in 0..4 {
        cluster.wait_head(i, chain, 1).await;
    }

    // Witness 0 dies; its key leads block X at index 2 through the locks, then vanishes.
    cluster.witnesses[0].kill();
    let locked = next_block(&cluster, 1, chain, &genesis, b"locked by three").await;
    assert_eq!(locked.header.index, 2);
    let (signed, ballot) = lead_until_the_locks(&cluster, 0, 4, &locked, 0, &[1, 2, 3], &[1, 2, 3]).await;
    assert_eq!(signed, 3, "members 1-3 locked X and signed");

    // Each member reports its state to a member of the committee, and to no one else.
    let member = cluster.operator(2);
    match member.call(&cluster.witnesses[1], Request::GetIndexState { chain, index: 2 }).await {
        Ok(Response::IndexState(state)) => {
            let (block, certificate) = state.lock.clone().expect("witness 1 is locked");
            assert_eq!(
                (block.id(), certificate.ballot, certificate.votes.len()),
                (locked.id(), ballot, 3),
                "a lock keeps the threshold's votes"
            );
            assert_eq!(state.voted, ballot);
        }
        other => panic!("witness 1 must report its lock, got {other:?}"),
    }
    let stranger = Client::new();
    let refused = stranger.call(&cluster.witnesses[1], Request::GetIndexState { chain, index: 2 }).await.unwrap_err();
    assert_eq!(refusal(&refused).code, ErrorCode::Forbidden);

    // A full restart of the locked members: only what is on disk survives.
    for i in 1..4 {
        cluster.witnesses[i].kill();
    }
    tokio::time::sleep(std::time::Duration::from_millis(2_000)).await; // X is now older than the skew
    for i in 1..4 {
        cluster.witnesses[i].start();
    }
    for i in 1..4 {
        cluster.client.wait_ready(&cluster.witnesses[i]).await;
    }
    cluster.client = Client::new();
    let member = cluster.operator(2);

    // Another block at index 2, at a higher ballot, is refused by every locked member...
    let other = next_block(&cluster, 1, chain, &genesis, b"another block").await;
    let roster = cluster.roster(&[0, 1, 2, 3]);
    let one = roster.index_of(&cluster.witnesses[1].key).unwrap();
    let higher = agreement::next_owned(ballot, one, 4).unwrap();
    let mut announce = Announce {
        leader_signature: [0; 64],
        block: other,
        session: SessionId([8; 32]),
        leader: one as u32,
        branching: 4,
        excluded: vec![0],
        ballot: higher,
        justification: None,
    };
    announce.sign(&cluster.keys(&[1]).pop().unwrap());
    let reply = cluster.operator(1).call(&cluster.witnesses[2], Request::Announce(announce)).await.unwrap_err();
    assert_eq!(refusal(&reply).code, ErrorCode::Promised, "{}", refusal(&reply).message);
    assert!(refusal(&reply).message.contains("locked"), "{}", refusal(&reply).message);

    // ...so the next proposal re-leads X (stale now, justified by its certificate) at a
    // higher ballot, then goes on index 3.
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
        assert_eq!(block.id(), locked.id(), "witness {i} holds the locked block at index 2");
        assert!(block.signature.is_some());
    }
    // The client's view: the whole chain verifies from the genesis.
    assert_eq!(cluster.prove_from_genesis(3, chain, &genesis).await.index(), 4);
    match cluster.client.call(&cluster.witnesses[2], Request::Status).await {
        Ok(Response::Status(status)) => assert_eq!(status.blocks_adopted, 1, "witness 2 re-led one locked block"),
        other => panic!("status: {other:?}"),
    }
    // The state ends when its index is filled: the asker is told so (and catches up).
    let filled = member.call(&cluster.witnesses[1], Request::GetIndexState { chain, index: 2 }).await.unwrap_err();
    assert_eq!(refusal(&filled).code, ErrorCode::Conflict, "{}", refusal(&filled).message);

    // What a faulty member can do with a justification: no more than without one. A block
    // older than the clock skew with a certificate of its own vote alone (fewer than the
    // threshold) gets every check.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let mut stale = next_block(&cluster, 1, chain, &genesis, b"backdated").await;
    let head_time = cluster.prove_from_genesis(1, chain, &genesis).await.header.timestamp_ms;
    stale.header.timestamp_ms = head_time + 1;
    let faulty = cluster.keys(&[0]).pop().unwrap();
    let leader = roster.index_of(&cluster.witnesses[0].key).unwrap() as u32;
    let own_vote = Vote::sign(&faulty, leader, &stale.id(), 1);
    let announce = Announce {
        block: stale.clone(),
        session: SessionId([9; 32]),
        leader,
        branching: 4,
        excluded: vec![0],
        ballot: 2,
        justification: Some(Certificate { ballot: 1, votes: vec![own_vote, own_vote, own_vote] }),
        leader_signature: [0; 64],
    };
    let mut announce = announce;
    announce.sign(&faulty);
    let as_leader = Client::with_key(cluster.keys(&[0]).pop().unwrap());
    let reply = as_leader.call(&cluster.witnesses[1], Request::Announce(announce)).await.unwrap_err();
    assert!(refusal(&reply).message.contains("from this witness's clock"), "{}", refusal(&reply).message);
}

/// Split locks, the case that froze an index under promises: with witness 0 dead, member 1
/// is locked on X at ballot 1, member 2 on Y at ballot 2, member 3 voted at ballot 2 — no
/// block can gather 3 of the 3 live members as they stand. The next leader gathers their
/// states, re-leads Y (the highest lock) with its certificate at ballot 3, member 1 moves
/// on that newer certificate, and the index fills with Y. Rule 0 against real processes: a
/// ballot beyond the member's frontier, a ballot of another member's and an announce
/// not signed by its leader are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_locks_no_longer_freeze_an_index() {
    let (cluster, chain, genesis) = four_with_witness_zero_dead().await;
    let x = next_block(&cluster, 1, chain, &genesis, b"X").await;
    let y = next_block(&cluster, 1, chain, &genesis, b"Y").await;
    let (signed, x_ballot) = lead_until_the_locks(&cluster, 0, 4, &x, 0, &[1, 2, 3], &[1]).await;
    assert_eq!(signed, 1, "member 1 locked X");
    let (signed, y_ballot) = lead_until_the_locks(&cluster, 0, 4, &y, x_ballot, &[2, 3], &[2]).await;
    assert_eq!(signed, 1, "member 2 locked Y, higher");
    let member = cluster.operator(3);
    for (w, block, ballot) in [(1, &x, x_ballot), (2, &y, y_ballot)] {
        let Ok(Response::IndexState(state)) =
            member.call(&cluster.witnesses[w], Request::GetIndexState { chain, index: 2 }).await
        else {
            panic!("witness {w} reports its state")
        };
        let (locked, certificate) = state.lock.clone().expect("locked");
        assert_eq!((locked.id(), certificate.ballot), (block.id(), ballot), "witness {w}");
    }

    // Rule 0, as a liar pushing ballots would try it: each refused, member 3's ballot unmoved.
    let roster = cluster.roster(&[0, 1, 2, 3]);
    let zero = roster.index_of(&cluster.witnesses[0].key).unwrap();
    let zero_key = cluster.keys(&[0]).pop().unwrap();
    let as_zero = Client::with_key(cluster.keys(&[0]).pop().unwrap());
    let beyond = agreement::next_owned(agreement::frontier(4, common::now_ms() + 60_000), zero, 4).unwrap();
    let others = agreement::next_owned(y_ballot, (zero + 1) % 4, 4).unwrap();
    let announce_at = |ballot: u64, signer: &chainiac_cosi::SecretKey| {
        let mut announce = Announce {
            block: y.clone(),
            session: SessionId([0x33; 32]),
            leader: zero as u32,
            branching: 4,
            excluded: vec![0],
            ballot,
            justification: None,
            leader_signature: [0; 64],
        };
        announce.sign(signer);
        announce
    };
    let one_key = cluster.keys(&[1]).pop().unwrap();
    let cases = [
        (beyond, &zero_key, ErrorCode::Promised, "beyond"),
        (others, &zero_key, ErrorCode::Refused, "belongs to member"),
        (y_ballot + 4, &one_key, ErrorCode::BadRequest, "not signed by its leader"),
    ];
    for (ballot, signer, code, says) in cases {
        let reply = as_zero.call(&cluster.witnesses[3], Request::Announce(announce_at(ballot, signer))).await;
        let reply = reply.unwrap_err();
        assert_eq!(refusal(&reply).code, code, "{}", refusal(&reply).message);
        assert!(refusal(&reply).message.contains(says), "{}", refusal(&reply).message);
    }
    let Ok(Response::IndexState(state)) =
        member.call(&cluster.witnesses[3], Request::GetIndexState { chain, index: 2 }).await
    else {
        panic!("witness 3 reports its state")
    };
    assert_eq!(state.voted, y_ballot, "no refused announce moved witness 3's ballot");

    // The next proposal fills index 2 with Y, then goes on index 3.
    let mine = match cluster.propose(3, chain, b"after the split").await {
        Ok(block) => block,
        Err(e) => panic!(
            "{e:?}\n{}\n{}\n{}",
            cluster.witnesses[1].log(),
            cluster.witnesses[2].log(),
            cluster.witnesses[3].log()
        ),
    };
    assert_eq!((mine.header.index, mine.payload.as_slice()), (3, &b"after the split"[..]));
    for i in 1..4 {
        cluster.wait_head(i, chain, 3).await;
        let Ok(Response::Block(Some(block))) =
            cluster.client.call(&cluster.witnesses[i], Request::GetBlock { chain, index: 2 }).await
        else {
            panic!("witness {i} lacks block 2")
        };
        assert_eq!(block.id(), y.id(), "witness {i} holds Y, the highest lock, at index 2");
        assert!(block.signature.as_ref().unwrap().ballot > y_ballot, "signed at a ballot above both locks");
    }
    assert_eq!(cluster.prove_from_genesis(1, chain, &genesis).await.index(), 3);
}

/// A re-sign (SPEC §9.1): a leader whose signature fell short announces the same block at
/// the same ballot again, in a fresh session. Members locked on that block at that ballot
/// vote for it again, their state unchanged; another block at that ballot is refused; a
/// second re-sign replaces the first one's session (one set of nonces per ballot); and the
/// shares of the last session make a signature that every member appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_signature_is_signed_again_at_its_ballot() {
    let (cluster, chain, genesis) = four_with_witness_zero_dead().await;
    let x = next_block(&cluster, 1, chain, &genesis, b"X").await;
    let y = next_block(&cluster, 1, chain, &genesis, b"Y").await;
    let (signed, ballot) = lead_until_the_locks(&cluster, 0, 4, &x, 0, &[1, 2, 3], &[1, 2, 3]).await;
    assert_eq!(signed, 3, "members 1-3 locked X and signed; no signature was formed");
    let key = cluster.keys(&[0]).pop().unwrap();
    let stand_in = Client::with_key(cluster.keys(&[0]).pop().unwrap());
    let roster = Arc::new(cluster.roster(&[0, 1, 2, 3]));
    let at = |w: usize| roster.index_of(&cluster.witnesses[w].key).unwrap();
    let zero = at(0);
    let announce = |block: &Block, session: SessionId| {
        let mut announce = Announce {
            block: block.clone(),
            session,
            leader: zero as u32,
            branching: 4,
            excluded: Mask::empty(4).as_bytes().to_vec(),
            ballot,
            justification: None,
            leader_signature: [0; 64],
        };
        announce.sign(&key);
        Request::Announce(announce)
    };
    for w in 1..4 {
        let reply = stand_in.call(&cluster.witnesses[w], announce(&y, SessionId([0x61; 32]))).await.unwrap_err();
        assert_eq!(refusal(&reply).code, ErrorCode::Promised, "{}", refusal(&reply).message);
    }

    let (first, second) = (SessionId([0x62; 32]), SessionId([0x63; 32]));
    let session = Session::new(roster.clone(), second, BlockSignature::message(&x.id(), ballot).to_vec());
    let tree = Tree::new(4, zero, 4, &Mask::empty(4));
    let mut round = Leader::new(session.clone(), &tree, 3).unwrap();
    let (nonces, own) = commit(&session, zero, &key, &mut OsRng).unwrap();
    round.aggregator().receive_commitment(zero, &own).unwrap();
    let mut votes = vec![Vote::sign(&key, zero as u32, &x.id(), ballot)];
    for w in 1..4 {
        let reply = stand_in.call(&cluster.witnesses[w], announce(&x, first)).await;
        assert!(matches!(reply, Ok(Response::Voted { .. })), "witness {w} re-signs: {reply:?}");
        match stand_in.call(&cluster.witnesses[w], announce(&x, second)).await {
            Ok(Response::Voted { commitment, votes: theirs }) => {
                round.aggregator().receive_commitment(at(w), &commitment).unwrap();
                assert!(theirs.iter().all(|v| v.verify(&cluster.witnesses[w].key, &x.id(), ballot)));
                votes.extend(theirs);
            }
            other => panic!("witness {w} did not re-sign: {other:?}"),
        }
    }
    let member = cluster.operator(1);
    let Ok(Response::IndexState(state)) =
        member.call(&cluster.witnesses[2], Request::GetIndexState { chain, index: 2 }).await
    else {
        panic!("witness 2 reports its state")
    };
    assert_eq!(state.voted, ballot, "a re-sign moves no ballot");
    let challenge = round.challenge().unwrap();
    let certificate = Certificate { ballot, votes };
    let challenge_in =
        |session| Request::Challenge { session, challenge: challenge.clone(), certificate: certificate.clone() };
    let replaced = stand_in.call(&cluster.witnesses[1], challenge_in(first)).await.unwrap_err();
    assert_eq!(refusal(&replaced).code, ErrorCode::NotFound, "the second re-sign replaced the first's session");
    round.aggregator().receive_response(zero, &nonces.respond(&session, &key, &challenge).unwrap()).unwrap();
    for w in 1..4 {
        match stand_in.call(&cluster.witnesses[w], challenge_in(second)).await {
            Ok(Response::Signed(share)) => round.aggregator().receive_response(at(w), &share).unwrap(),
            other => panic!("witness {w} did not sign: {other:?}"),
        }
    }
    let mut block = x.clone();
    block.signature = Some(BlockSignature { ballot, signature: round.finish().unwrap() });
    for w in 1..4 {
        let reply = stand_in.call(&cluster.witnesses[w], Request::Commit { block: block.clone() }).await;
        assert!(matches!(reply, Ok(Response::Ack)), "witness {w}: {reply:?}");
    }
    for w in 1..4 {
        cluster.wait_head(w, chain, 2).await;
    }
    let head = cluster.prove_from_genesis(3, chain, &genesis).await;
    assert_eq!((head.index(), head.id), (2, x.id()), "X, signed by the re-sign, at index 2");
}

/// A member that votes and commits at every announce, then refuses every challenge as
/// if a liar had pushed it past the ballot (`Promised`): a stand-in with witness 0's key,
/// at its address.
struct RefusesEveryChallenge {
    roster: Arc<chainiac_cosi::Roster>,
    key: chainiac_cosi::SecretKey,
    me: usize,
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl chainiac_proto::server::Handler for RefusesEveryChallenge {
    async fn handle(
        self: Arc<Self>,
        _: chainiac_cosi::PublicKey,
        _: std::net::SocketAddr,
        request: Request,
    ) -> Response {
        use chainiac_proto::ErrorReply;
        match request {
            Request::Announce(announce) => {
                let id = announce.block.id();
                let message = BlockSignature::message(&id, announce.ballot).to_vec();
                let session = Session::new(self.roster.clone(), announce.session, message);
                let (_nonces, commitment) = commit(&session, self.me, &self.key, &mut OsRng).unwrap();
                Response::Voted { commitment, votes: vec![Vote::sign(&self.key, self.me as u32, &id, announce.ballot)] }
            }
            Request::Challenge { .. } => {
                self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Response::Error(ErrorReply::new(ErrorCode::Promised, "voted past this ballot"))
            }
            Request::GetIndexState { .. } => Response::IndexState(Box::default()),
            Request::Commit { .. } | Request::Abort { .. } => Response::Ack,
            _ => Response::Error(ErrorReply::new(ErrorCode::NotFound, "not served here")),
        }
    }
    fn refused(&self, _: &str) {}
}

/// A liar that refuses every challenge, as an honest member pushed past the ballot would
/// (SPEC §9.1): with `n = 4` and `t = 3` no round completes with it in, so a leader must
/// leave it out while the others reach the threshold. A leader that never left such a
/// refuser out stalled every index (an attack review); one that always left refusers out
/// spent its attempts on too few members when the refusers were honest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_complete_while_a_liar_refuses_every_challenge() {
    let mut cluster = Cluster::start_with(4, 0).await;
    let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(1, chain, b"first").await.unwrap();
    for i in 0..4 {
        cluster.wait_head(i, chain, 1).await;
    }
    let roster = Arc::new(cluster.roster(&[0, 1, 2, 3]));
    let me = roster.index_of(&cluster.witnesses[0].key).unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let liar = RefusesEveryChallenge { roster, key: cluster.keys(&[0]).pop().unwrap(), me, refused: refused.clone() };
    common::replace_witness_0_serving(
        &mut cluster,
        liar,
        &[chainiac_proto::frame::FrameClass::Query, chainiac_proto::frame::FrameClass::Peer],
    );
    for (i, payload) in [(1, b"two".as_slice()), (2, b"three"), (3, b"four")] {
        let block = match cluster.propose(i, chain, payload).await {
            Ok(block) => block,
            Err(e) => panic!("{e:?}\n{}", cluster.witnesses[i].log()),
        };
        assert_eq!(block.payload, payload);
    }
    assert!(refused.load(std::sync::atomic::Ordering::Relaxed) > 0, "the liar was challenged, and refused");
    for i in 1..4 {
        cluster.wait_head(i, chain, 4).await;
    }
    assert_eq!(cluster.prove_from_genesis(3, chain, &genesis).await.index(), 4);
}

/// A leader that missed a commit (it was down while the others appended) proposes at an
/// index the others have filled. They answer `Conflict`; the leader catches up from them
/// and leads its proposal at the next index. Before, it proposed at the filled index until
/// another leader's message happened to bring it up to date: a chain led only through it
/// stopped (found by the whole-cluster simulation, `witness/tests/cluster.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_missed_a_commit_catches_up_and_proposes_on_the_new_head() {
    let mut cluster = Cluster::start_with(4, 0).await;
    let (chain, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(0, chain, b"first").await.unwrap();
    for i in 0..4 {
        cluster.wait_head(i, chain, 1).await;
    }
    cluster.witnesses[3].kill();
    let second = cluster.propose(0, chain, b"second").await.unwrap();
    assert_eq!(second.header.index, 2);
    // The commit to a member presumed down is sent in the background, within a peer timeout.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    cluster.witnesses[3].start();
    cluster.client.wait_ready(&cluster.witnesses[3]).await;
    assert_eq!(cluster.head(3, chain).await, Some(1), "witness 3 missed block 2");

    let third = match cluster.propose(3, chain, b"third").await {
        Ok(block) => block,
        Err(e) => panic!("{e:?}\n{}", cluster.witnesses[3].log()),
    };
    assert_eq!((third.header.index, third.payload.as_slice()), (3, &b"third"[..]));
    for i in 0..4 {
        cluster.wait_head(i, chain, 3).await;
    }
    cluster.assert_same_blocks(4, chain, 1..=3).await;
}

/// A liar in the committee — a stand-in with witness 0's key — pushes every honest
/// member's ballot at the next index as far as rule 0 lets it (the highest ballot it owns
/// within each member's frontier), twenty times a second, for the whole test. With `n = 4`
/// and `t = 3` every honest member is needed, so before ballots had owners and epochs such
/// a liar stopped the chain for as long as it kept at it (SPEC §9.1). Now the last ballot
/// of each epoch's successor belongs to each member in turn, and honest proposals complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_complete_while_a_liar_pushes_ballots() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (cluster, chain, genesis) = four_with_witness_zero_dead().await;
    let roster = cluster.roster(&[0, 1, 2, 3]);
    let zero = roster.index_of(&cluster.witnesses[0].key).unwrap();
    let zero_key = cluster.keys(&[0]).pop().unwrap();
    let cluster = Arc::new(cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let liar = {
        let (cluster, stop, accepted, genesis) = (cluster.clone(), stop.clone(), accepted.clone(), genesis.clone());
        let as_zero = Client::with_key(cluster.keys(&[0]).pop().unwrap());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let block = next_block(&cluster, 1, chain, &genesis, b"pushed by a liar").await;
                let frontier = agreement::frontier(4, common::now_ms());
                let ballot = (frontier - 8..=frontier).rev().find(|&b| agreement::owner(b, 4) == zero).unwrap();
                for w in 1..4 {
                    let target = roster.index_of(&cluster.witnesses[w].key).unwrap();
                    let mut excluded = Mask::empty(4);
                    (0..4).filter(|&i| i != zero && i != target).for_each(|i| excluded.insert(i));
                    let mut announce = Announce {
                        block: block.clone(),
                        session: SessionId([0x55; 32]),
                        leader: zero as u32,
                        branching: 4,
                        excluded: excluded.as_bytes().to_vec(),
                        ballot,
                        justification: None,
                        leader_signature: [0; 64],
                    };
                    announce.sign(&zero_key);
                    if let Ok(Response::Voted { .. }) =
                        as_zero.call(&cluster.witnesses[w], Request::Announce(announce)).await
                    {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    };
    // Honest proposals, retried as a client retries an error, under a generous bound: the
    // liar may win every epoch but the leader's (SPEC §9.1).
    let mut took = Vec::new();
    for (i, payload) in [b"one".as_slice(), b"two"].into_iter().enumerate() {
        let started = std::time::Instant::now();
        let block = loop {
            match cluster.propose(1 + i, chain, payload).await {
                Ok(block) => break block,
                Err(e) => {
                    assert!(started.elapsed().as_secs() < 150, "no append in 150 s while the liar pushed: {e:?}");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        };
        assert_eq!(block.header.index, 2 + i as u64);
        took.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    liar.await.unwrap();
    println!("appends took {took:?} while a liar pushed ballots; {} pushes accepted", accepted.load(Ordering::Relaxed));
    assert!(accepted.load(Ordering::Relaxed) > 0, "the liar moved members' ballots");
    for i in 1..4 {
        cluster.wait_head(i, chain, 3).await;
    }
    assert_eq!(cluster.prove_from_genesis(2, chain, &genesis).await.index(), 3);
}
