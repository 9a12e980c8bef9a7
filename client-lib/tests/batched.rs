//! `update_many` against witnesses that answer batches awkwardly: part of an answer "busy"
//! (the byte budget), then one forged proof; or proofs that stop below the head the
//! timeline records (a freeze). The client asks again for what is missing, names the liars
//! and freezers, and ends with every chain verified — or, when every member lies about a
//! chain or freezes it, with that chain alone failing.

use chainiac_client::{Client, ClientError, TrustLevel, UpdateResults};
use chainiac_cosi::simulation::sign_with_all_keys;
use chainiac_cosi::{Mask, Member, PublicKey, Roster, SecretKey};
use chainiac_proto::frame::FrameClass;
use chainiac_proto::server::Handler;
use chainiac_proto::{ErrorCode, ErrorReply, Request, Response};
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{genesis, Block, ChainId, ChainParams, Committee, Proposal};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

/// `n` raw chains of 5 signed blocks each, all served by one committee.
fn chains(n: u8, keys: &[SecretKey], addresses: &[SocketAddr]) -> (MemoryStore, Vec<Block>) {
    let store = MemoryStore::new();
    let geneses = (0..n as u16).map(|i| chain_into(&store, i, keys, addresses)).collect();
    (store, geneses)
}

/// `block`'s signature by every member of `roster` (whose keys are `keys`), at ballot 0.
fn signed_by_all(block: &Block, roster: &Roster, keys: &[SecretKey]) -> BlockSignature {
    let message = BlockSignature::message(&block.id(), 0);
    let signature = sign_with_all_keys(roster, keys, &Mask::full(keys.len()), &message, &mut rand_core::OsRng);
    BlockSignature { ballot: 0, signature }
}

/// Raw chain number `i` of 5 signed blocks in `store`; its genesis.
fn chain_into(store: &MemoryStore, i: u16, keys: &[SecretKey], addresses: &[SocketAddr]) -> Block {
    let members = keys.iter().zip(addresses).map(|(k, a)| Member::new(k, a.to_string())).collect();
    let roster = Roster::new(members).unwrap();
    let committee = Committee::new(roster.clone(), 3).unwrap();
    let first = genesis(ChainParams::new(2, 8).unwrap(), committee, vec![], 0, i.to_be_bytes().to_vec(), 1_000);
    let mut head = store::append(store, &first).unwrap().into_inner();
    for j in 0..5u8 {
        let proposal = Proposal { payload: vec![i as u8, j], timestamp_ms: 2_000, ..Proposal::default() };
        let mut block = head.propose(proposal, |k| store.block_id(&head.chain, k).unwrap()).unwrap();
        block.signature = Some(signed_by_all(&block, &roster, keys));
        let state = head.extend(&block, |k| store.block_id(&head.chain, k).unwrap()).unwrap();
        store::commit_verified(store, &state, &block, Some(head.index())).unwrap();
        head = state.into_inner();
    }
    first
}

/// Appends `n` signed blocks to `chain` (signed by all of `keys`, its committee's).
fn extend(store: &MemoryStore, chain: ChainId, keys: &[SecretKey], n: u8) {
    let mut head = store::head_state(store, &chain).unwrap().into_inner();
    for j in 0..n {
        let proposal = Proposal { payload: vec![0xaa, j], timestamp_ms: 3_000, ..Proposal::default() };
        let mut block = head.propose(proposal, |k| store.block_id(&chain, k).unwrap()).unwrap();
        let roster = head.committee.roster().clone();
        block.signature = Some(signed_by_all(&block, &roster, keys));
        let state = head.extend(&block, |k| store.block_id(&chain, k).unwrap()).unwrap();
        store::commit_verified(store, &state, &block, Some(head.index())).unwrap();
        head = state.into_inner();
    }
}

/// Answers the first `GetProofs` with its second half "busy", the second with a forged
/// proof for `forged` (always, if `always_forge`), and honestly after that.
struct Awkward {
    store: MemoryStore,
    calls: AtomicUsize,
    forged: ChainId,
    always_forge: bool,
    asked: Mutex<Vec<usize>>,
}

impl Handler for Awkward {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        let Request::GetProofs { queries, with_payload, .. } = request else {
            return Response::Error(ErrorReply::new(ErrorCode::BadRequest, "only proofs"));
        };
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.asked.lock().unwrap().push(queries.len());
        let answers = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                if call == 0 && i >= queries.len() / 2 {
                    return Err(ErrorReply::new(ErrorCode::Busy, "this answer is full; ask for this chain again"));
                }
                let head = self.store.head(&q.chain).unwrap().unwrap().index;
                let mut proof =
                    store::prove(&self.store, &q.chain, q.from, q.to.unwrap_or(head), with_payload).unwrap();
                if q.chain == self.forged && (call == 1 || self.always_forge) {
                    proof.steps.last_mut().unwrap().signature.as_mut().unwrap().signature.s[5] ^= 1;
                }
                Ok(proof)
            })
            .collect();
        Response::Proofs(answers)
    }
    fn refused(&self, _: &str) {}
}

async fn serve(always_forge: bool) -> (Vec<Block>, Arc<Awkward>) {
    let keys: Vec<SecretKey> = (60..64).map(key).collect();
    let addresses: Vec<SocketAddr> =
        keys.iter().map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).collect();
    let (store, geneses) = chains(10, &keys, &addresses);
    let forged = geneses[7].id();
    let server = Arc::new(Awkward { store, calls: AtomicUsize::new(0), forged, always_forge, asked: Mutex::default() });
    // Every member's key and address, one shared (awkward) state behind them.
    for (key, address) in keys.iter().zip(addresses) {
        let endpoint = chainiac_proto::endpoint::server(key, address).unwrap();
        tokio::spawn(chainiac_proto::server::serve(server.clone(), endpoint, &[FrameClass::Query]));
    }
    (geneses, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_parts_are_asked_again_and_a_forged_proof_moves_on_to_the_next_member() {
    let (geneses, server) = serve(false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    let chains: Vec<ChainId> = geneses.iter().map(|g| client.anchor(g).unwrap()).collect();
    let results = client.update_many(&chains).await.unwrap();
    for (chain, result) in &results {
        let update = result.as_ref().unwrap_or_else(|e| panic!("chain {chain}: {e}"));
        assert_eq!((update.from, update.to), (0, 5));
    }
    // 10 asked; the 5 busy ones again (chain 7 forged there: the other four are kept);
    // the next member for chain 7 alone.
    assert_eq!(*server.asked.lock().unwrap(), vec![10, 5, 1]);
    let skipped = &results[7].1.as_ref().unwrap().skipped;
    assert!(skipped.iter().any(|(_, why)| why.contains("lied") && why.contains(&chains[7].to_string())), "{skipped:?}");
    let reopened = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    assert!(chains.iter().all(|c| reopened.state().chains[c].index() == 5), "all saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_every_member_lies_about_fails_alone() {
    let (geneses, _server) = serve(true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    let chains: Vec<ChainId> = geneses.iter().map(|g| client.anchor(g).unwrap()).collect();
    let results = client.update_many(&chains).await.unwrap();
    for (i, (chain, result)) in results.iter().enumerate() {
        if i == 7 {
            assert!(matches!(result, Err(ClientError::NoHonestWitness(tries)) if tries.len() >= 4), "{result:?}");
            assert_eq!(client.state().chains[chain].index(), 0, "the forged chain keeps its state");
        } else {
            assert_eq!(result.as_ref().unwrap().to, 5, "chain {i}");
            assert_eq!(client.state().chains[chain].index(), 5);
        }
    }
}

/// A timeline chain in `store` whose block 1 records the heads of `chains` now (and hands
/// the timeline to `handover`, if given).
fn timeline_over(
    store: &MemoryStore,
    keys: &[SecretKey],
    committee: &Committee,
    chains: &[ChainId],
    handover: Option<Committee>,
) -> Block {
    use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry, KIND_TIMELINE};
    let leaves = chains
        .iter()
        .map(|c| {
            let head = store.head(c).unwrap().unwrap();
            HeadLeaf { chain: *c, index: head.index, id: head.id }
        })
        .collect();
    let set = HeadSet::new(leaves);
    let now = chainiac_client::now_ms();
    let first = genesis(ChainParams::DEFAULT, committee.clone(), vec![], KIND_TIMELINE, vec![], now - 1_000);
    let head = store::append(store, &first).unwrap().into_inner();
    let entry = TimelineEntry { time_ms: now, chains: set.len() as u64, root: set.root(), changes: None };
    let proposal = Proposal {
        kind: KIND_TIMELINE,
        payload: entry.to_bytes(),
        timestamp_ms: now,
        committee: handover.map(|next| chainiac_skipchain::Appointment {
            approvals: keys.iter().map(|k| chainiac_skipchain::Approval::sign(k, &next, now + 60_000, None)).collect(),
            committee: next,
        }),
        ..Proposal::default()
    };
    let mut block = head.propose(proposal, |k| store.block_id(&head.chain, k).unwrap()).unwrap();
    let roster = committee.roster();
    block.signature = Some(signed_by_all(&block, roster, keys));
    let state = head.extend(&block, |k| store.block_id(&head.chain, k).unwrap()).unwrap();
    store::commit_verified(store, &state, &block, Some(0)).unwrap();
    first
}

/// How a member of the test cothority answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Honest,
    /// Proves project chains only up to block 2 (the timeline records 5).
    Freezes,
    /// Answers the timeline batch with a made-up entry at the real index: every project at
    /// block 0, time now (a rollback dressed as fresh).
    ForgesEntry,
    /// Leaves the payload out of the project proofs.
    StripsPayload,
    /// Like `ForgesEntry`, but only in batches after the first (a client following more than
    /// 1,024 chains asks several).
    ForgesLaterBatches,
    /// Bends one byte of the newest link of every linked proof.
    ForgesLinks,
}

struct TestMember {
    store: Arc<MemoryStore>,
    timeline: ChainId,
    /// The chains timeline block 1 records.
    recorded: Vec<ChainId>,
    /// Their heads as block 1 records them (a chain may have grown since).
    leaves: Vec<chainiac_skipchain::timeline::HeadLeaf>,
    mode: Mode,
}

impl Handler for TestMember {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry};
        match request {
            Request::GetTimelineBatch { chains, .. } => {
                let block = self.store.block(&self.timeline, 1).unwrap().unwrap();
                let mut entry = TimelineEntry::from_bytes(&block.payload).unwrap();
                let forges = self.mode == Mode::ForgesEntry
                    || (self.mode == Mode::ForgesLaterBatches && !chains.contains(&self.recorded[0]));
                let leaves = self
                    .leaves
                    .iter()
                    .map(|leaf| match forges {
                        true => HeadLeaf { chain: leaf.chain, index: 0, id: leaf.chain },
                        false => *leaf,
                    })
                    .collect();
                let set = HeadSet::new(leaves);
                if forges {
                    entry.root = set.root();
                }
                let inclusion = set.prove_many(&chains);
                Response::TimelineBatch(chainiac_proto::TimelineBatch {
                    timeline: self.timeline,
                    index: 1,
                    entry,
                    inclusion,
                })
            }
            Request::GetProofs { queries, with_payload, .. } => Response::Proofs(
                queries
                    .iter()
                    .map(|q| {
                        let head = self.store.head(&q.chain).unwrap().unwrap().index;
                        let project = q.chain != self.timeline;
                        let to = if self.mode == Mode::Freezes && project { 2 } else { q.to.unwrap_or(head) };
                        let payload = with_payload && to > q.from && !(self.mode == Mode::StripsPayload && project);
                        Ok(store::prove(&*self.store, &q.chain, q.from, to, payload).unwrap())
                    })
                    .collect(),
            ),
            // As a witness whose head is block 2 answers: it has no block 5 to link down from.
            Request::GetLinkedProofs { queries, with_payload, .. } => Response::LinkedProofs(
                queries
                    .iter()
                    .map(|q| {
                        let head = self.store.head(&q.chain).unwrap().unwrap().index;
                        let to = if self.mode == Mode::Freezes { 2 } else { head };
                        let payload = with_payload && to > q.from && self.mode != Mode::StripsPayload;
                        let mut proof =
                            store::prove_linked(&*self.store, &q.chain, q.from, q.recorded, to, payload, |_| false)
                                .map_err(|e| ErrorReply::new(ErrorCode::NotFound, e.to_string()))?;
                        if let Some(first) = proof.links.first_mut().filter(|_| self.mode == Mode::ForgesLinks) {
                            first.payload_hash[0] ^= 1;
                        }
                        Ok(proof)
                    })
                    .collect(),
            ),
            _ => Response::Error(ErrorReply::new(ErrorCode::BadRequest, "not served here")),
        }
    }
    fn refused(&self, _: &str) {}
}

/// Four members answering in `modes`, over four project chains of five blocks and a
/// timeline whose block 1 records the first three.
async fn cothority(modes: [Mode; 4]) -> (Vec<Block>, Block, Vec<SocketAddr>) {
    cothority_of(modes, 3).await
}

/// [`cothority`] with `recorded` chains in the timeline (and one more that is not).
async fn cothority_of(modes: [Mode; 4], recorded: u16) -> (Vec<Block>, Block, Vec<SocketAddr>) {
    cothority_serving(modes, recorded, None, None).await
}

/// [`cothority_of`], the project chains signed by `project_committee` (keys and addresses)
/// if given, else by the timeline's.
async fn cothority_serving(
    modes: [Mode; 4],
    recorded: u16,
    project_committee: Option<(&[SecretKey], &[SocketAddr])>,
    timeline_handover: Option<Committee>,
) -> (Vec<Block>, Block, Vec<SocketAddr>) {
    let (geneses, timeline_genesis, addresses, _) =
        cothority_with_store(modes, recorded, project_committee, timeline_handover).await;
    (geneses, timeline_genesis, addresses)
}

/// [`cothority_serving`], with the store every member serves (chains may grow after the
/// timeline block).
async fn cothority_with_store(
    modes: [Mode; 4],
    recorded: u16,
    project_committee: Option<(&[SecretKey], &[SocketAddr])>,
    timeline_handover: Option<Committee>,
) -> (Vec<Block>, Block, Vec<SocketAddr>, Arc<MemoryStore>) {
    let keys: Vec<SecretKey> = (70..74).map(key).collect();
    let addresses: Vec<SocketAddr> =
        keys.iter().map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).collect();
    let (project_keys, project_addresses) = project_committee.unwrap_or((&keys, &addresses));
    let store = MemoryStore::new();
    let mut geneses: Vec<Block> =
        (0..recorded).map(|i| chain_into(&store, i, project_keys, project_addresses)).collect();
    let members = keys.iter().zip(&addresses).map(|(k, a)| Member::new(k, a.to_string())).collect();
    let committee = Committee::new(Roster::new(members).unwrap(), 3).unwrap();
    let ids: Vec<ChainId> = geneses.iter().map(Block::id).collect();
    let timeline_genesis = timeline_over(&store, &keys, &committee, &ids, timeline_handover);
    // One more chain, made after the timeline block: no timeline records it yet.
    geneses.push(chain_into(&store, recorded, project_keys, project_addresses));
    let leaves: Vec<chainiac_skipchain::timeline::HeadLeaf> = ids
        .iter()
        .map(|c| {
            let head = store.head(c).unwrap().unwrap();
            chainiac_skipchain::timeline::HeadLeaf { chain: *c, index: head.index, id: head.id }
        })
        .collect();
    let store = Arc::new(store);
    for ((key, address), mode) in keys.iter().zip(&addresses).zip(modes) {
        let timeline = timeline_genesis.id();
        let member = TestMember { store: store.clone(), timeline, recorded: ids.clone(), leaves: leaves.clone(), mode };
        let endpoint = chainiac_proto::endpoint::server(key, *address).unwrap();
        tokio::spawn(chainiac_proto::server::serve(Arc::new(member), endpoint, &[FrameClass::Query]));
    }
    (geneses, timeline_genesis, addresses, store)
}

/// A client anchored at the timeline and the projects, updating them all, with linked
/// proofs or (`every_hop`) forward ones.
async fn update_all(
    geneses: &[Block],
    timeline_genesis: &Block,
    every_hop: bool,
) -> (Client, tempfile::TempDir, UpdateResults) {
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    client.every_hop = every_hop;
    client.anchor(timeline_genesis).unwrap();
    let chains: Vec<ChainId> = geneses.iter().map(|g| client.anchor(g).unwrap()).collect();
    let results = client.update_many(&chains).await.unwrap();
    (client, dir, results)
}

fn named(skipped: &[(String, String)], who: &SocketAddr, why: &str) -> bool {
    skipped.iter().any(|(w, reason)| w == &who.to_string() && reason.contains(why))
}

/// The fourth chain, which no timeline block records: it fails alone, the others update.
fn unrecorded(results: &mut UpdateResults) {
    let (chain, result) = results.pop().unwrap();
    match result {
        Err(ClientError::Timeline(reason)) => assert!(reason.contains("records chain"), "{reason}"),
        other => panic!("chain {chain}: an unrecorded chain must fail alone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_proving_less_than_the_timeline_records_is_skipped_and_all_of_them_is_a_freeze() {
    use Mode::*;
    for every_hop in [false, true] {
        // Two of four members freeze: the client goes past them and names them (a forward
        // proof stops short; a linked one cannot be made without the recorded block).
        let (geneses, timeline_genesis, addresses) = cothority([Freezes, Freezes, Honest, Honest]).await;
        let (_, _dir, mut results) = update_all(&geneses, &timeline_genesis, every_hop).await;
        unrecorded(&mut results);
        let why = if every_hop { "frozen or behind" } else { "block 5" };
        for (chain, result) in results {
            let update = result.unwrap_or_else(|e| panic!("chain {chain}: {e}"));
            assert_eq!(update.to, 5);
            for frozen in &addresses[..2] {
                assert!(named(&update.skipped, frozen, why), "{:?}", update.skipped);
            }
        }

        // Every member freezes: the chains fail (with forward proofs the best one is
        // refused as a freeze), and nothing is saved.
        let (geneses, timeline_genesis, _) = cothority([Freezes; 4]).await;
        let (client, _dir, mut results) = update_all(&geneses, &timeline_genesis, every_hop).await;
        unrecorded(&mut results);
        for (chain, result) in results {
            match result {
                Err(ClientError::Timeline(reason)) if every_hop => assert!(reason.contains("freeze"), "{reason}"),
                Err(ClientError::NoHonestWitness(tries)) if !every_hop => {
                    assert!(tries.iter().filter(|(_, why)| why.contains("block 5")).count() >= 4, "{tries:?}")
                }
                other => panic!("chain {chain}: a frozen head must be refused, got {other:?}"),
            }
            assert_eq!(client.state().chains[&chain].index(), 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_timeline_entry_and_a_stripped_payload_are_lies() {
    use Mode::*;
    let cases = [(ForgesEntry, "timeline entry differs"), (StripsPayload, "left out the new head's payload")];
    for ((liar, why), every_hop) in cases.into_iter().flat_map(|case| [(case, false), (case, true)]) {
        let (geneses, timeline_genesis, addresses) = cothority([liar, Honest, Honest, Honest]).await;
        let (client, _dir, mut results) = update_all(&geneses, &timeline_genesis, every_hop).await;
        unrecorded(&mut results);
        for (chain, result) in results {
            let update = result.unwrap_or_else(|e| panic!("chain {chain}: {e}"));
            assert_eq!(update.to, 5);
            assert!(named(&update.skipped, &addresses[0], why), "{:?}", update.skipped);
            assert_eq!(client.state().chains[&chain].index(), 5);
        }
        assert_eq!(client.state().chains[&timeline_genesis.id()].index(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_link_is_a_lie_and_the_next_member_is_asked() {
    use Mode::*;
    let (geneses, timeline_genesis, addresses) = cothority([ForgesLinks, Honest, Honest, Honest]).await;
    let (client, _dir, mut results) = update_all(&geneses, &timeline_genesis, false).await;
    unrecorded(&mut results);
    for (chain, result) in results {
        let update = result.unwrap_or_else(|e| panic!("chain {chain}: {e}"));
        assert_eq!((update.from, update.to), (0, 5));
        assert!(
            named(&update.skipped, &addresses[0], "does not hash to the id the timeline records"),
            "{:?}",
            update.skipped
        );
        assert_eq!(client.state().chains[&chain].index(), 5);
    }
}

/// Project chains whose own committee no longer answers (its members retired, say, while
/// the client was offline): linked proofs come from the timeline's committee, whose
/// signers hold every chain the timeline records, so the client still catches up, hashes
/// only, without one request to the retired members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_whose_committee_retired_are_served_by_the_timeline_committee() {
    let retired_keys: Vec<SecretKey> = (90..94).map(key).collect();
    let retired: Vec<SocketAddr> = (0..4).map(|i| SocketAddr::from(([127, 0, 0, 1], 9 + i))).collect();
    let (geneses, timeline_genesis, _) =
        cothority_serving([Mode::Honest; 4], 3, Some((&retired_keys, &retired)), None).await;
    let (client, _dir, mut results) = update_all(&geneses, &timeline_genesis, false).await;
    unrecorded(&mut results);
    for (chain, result) in results {
        let update = result.unwrap_or_else(|e| panic!("chain {chain}: {e}"));
        assert_eq!((update.from, update.to), (0, 5));
        let asked_retired = update.skipped.iter().any(|(w, _)| retired.iter().any(|r| r.to_string() == *w));
        assert!(!asked_retired, "{:?}", update.skipped);
        let trusted = &client.state().chains[&chain];
        assert_eq!(trusted.index(), 5);
        assert!(trusted.committee.roster().members().iter().all(|m| retired.contains(&m.address.parse().unwrap())));
    }
}

/// The newest timeline block hands the timeline to new members who hold no project chain
/// yet (and here do not even answer): linked proofs are asked of the members that signed
/// it first, so every chain updates and no newcomer is asked (asking only the newcomers,
/// the update fails: checked by reverting the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_proofs_are_asked_of_the_timeline_signers_before_a_new_committee() {
    let newcomers: Vec<Member> = (100..104)
        .map(|i| Member::new(&key(i), SocketAddr::from(([127, 0, 0, 1], 20 + i as u16)).to_string()))
        .collect();
    let handover = Committee::new(Roster::new(newcomers.clone()).unwrap(), 3).unwrap().with_epoch(1);
    let (geneses, timeline_genesis, _) = cothority_serving([Mode::Honest; 4], 3, None, Some(handover.clone())).await;
    let (client, _dir, mut results) = update_all(&geneses, &timeline_genesis, false).await;
    unrecorded(&mut results);
    for (chain, result) in results {
        let update = result.unwrap_or_else(|e| panic!("chain {chain}: {e}"));
        assert_eq!((update.from, update.to), (0, 5));
        let asked_newcomer = update.skipped.iter().any(|(w, _)| newcomers.iter().any(|m| &m.address == w));
        assert!(!asked_newcomer, "{:?}", update.skipped);
    }
    let timeline = &client.state().chains[&timeline_genesis.id()];
    assert_eq!((timeline.index(), timeline.committee.hash()), (1, handover.hash()), "the handover is trusted");
}

/// A chain that grew after the newest timeline block: the client follows signatures past
/// the recorded head (5 → 7), and next time, with the timeline still at 5, the links lead
/// down from the client's block 7 to the recorded 5 (no fork), in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ahead_of_the_timeline_links_down_to_the_recorded_head() {
    for every_hop in [false, true] {
        let (geneses, timeline_genesis, _, store) = cothority_with_store([Mode::Honest; 4], 3, None, None).await;
        let keys: Vec<SecretKey> = (70..74).map(key).collect();
        let grown = geneses[0].id();
        extend(&store, grown, &keys, 2);
        let (mut client, _dir, mut results) = update_all(&geneses, &timeline_genesis, every_hop).await;
        unrecorded(&mut results);
        let first = results.iter().find(|(c, _)| *c == grown).unwrap().1.as_ref().unwrap();
        assert_eq!((first.from, first.to), (0, 7));
        let again = client.update(grown).await.unwrap();
        assert_eq!((again.from, again.to), (7, 7));
        if !every_hop {
            assert_eq!(again.hops, 1, "a link 7 -> 6 -> 5 down to the recorded head (both ends known)");
        }
        assert_eq!(client.state().chains[&grown].index(), 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_alone_updates_whether_or_not_it_moved() {
    let (_, timeline_genesis, _) = cothority([Mode::Honest; 4]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    let timeline = client.anchor(&timeline_genesis).unwrap();
    let moved = client.update(timeline).await.unwrap();
    assert_eq!((moved.from, moved.to), (0, 1));
    assert!(moved.timeline_age_ms.is_some(), "the entry came with the proof");
    let still = client.update(timeline).await.unwrap();
    assert_eq!((still.from, still.to, still.hops), (1, 1, 0));
}

/// More than 1,024 chains: two batches. The first member's second batch carries a made-up
/// entry at the real index; it is caught by its own check against the proven block, not
/// trusted because the first batch checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_is_checked_when_a_client_follows_more_than_one_batch_of_chains() {
    use Mode::*;
    let (geneses, timeline_genesis, addresses) =
        cothority_of([ForgesLaterBatches, Honest, Honest, Honest], 1_030).await;
    let (client, _dir, mut results) = update_all(&geneses, &timeline_genesis, false).await;
    unrecorded(&mut results);
    assert_eq!(results.len(), 1_030);
    for (chain, result) in results {
        let update = result.unwrap_or_else(|e| panic!("chain {chain}: {e}"));
        assert_eq!(update.to, 5);
        assert!(named(&update.skipped, &addresses[0], "timeline entry differs"), "{:?}", update.skipped);
        assert_eq!(client.state().chains[&chain].index(), 5);
    }
}

#[test]
fn anchoring_many_is_all_or_nothing() {
    let keys: Vec<SecretKey> = (80..84).map(key).collect();
    let addresses: Vec<SocketAddr> = (0..4).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))).collect();
    let (store, geneses) = chains(2, &keys, &addresses);
    let not_a_genesis = store.block(&geneses[0].id(), 1).unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    match client.anchor_many(&[geneses[0].clone(), not_a_genesis]) {
        Err(ClientError::BadAnchor(reason)) => assert!(reason.starts_with("genesis 2 of 2"), "{reason}"),
        other => panic!("a block that is no genesis must be refused, got {other:?}"),
    }
    assert!(client.state().chains.is_empty() && !dir.path().join("c.state").exists());
    let anchored = client.anchor_many(&geneses).unwrap();
    assert_eq!(anchored, geneses.iter().map(Block::id).collect::<Vec<_>>());
    let reopened = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    assert_eq!(reopened.state().chains.len(), 2);
}
