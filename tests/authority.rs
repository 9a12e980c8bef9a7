//! Trust boundaries against real witness processes (QUIC, RocksDB): who may send what
//! (SPEC §10.5's access table), committee changes that only a threshold of the outgoing
//! members' operators can authorize, chains nobody can inject, chain-creation quotas, and
//! clients that re-check every committee change whoever serves it.

mod common;

use chainiac_client::{Client, ClientError, TrustLevel};
use chainiac_cosi::protocol::SessionId;
use chainiac_cosi::{Member, PublicKey, Roster, SecretKey};
use chainiac_proto::message::Announce;
use chainiac_proto::server::Handler;
use chainiac_proto::{CallError, ErrorCode, Request, Response};
use chainiac_release::*;
use chainiac_skipchain::authority::KIND_COMMITTEE;
use chainiac_skipchain::timeline::KIND_TIMELINE;
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{genesis, Appointment, Approval, Block, ChainId, ChainParams, Committee, Proposal};
use common::{refusal, Cluster};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

/// Every running witness's head index of each of `chains` (None: not served).
async fn heads(cluster: &Cluster, chains: &[ChainId]) -> Vec<Vec<Option<u64>>> {
    let mut all = Vec::new();
    for i in (0..cluster.witnesses.len()).filter(|&i| cluster.witnesses[i].is_running()) {
        let mut row = Vec::new();
        for chain in chains {
            row.push(cluster.head(i, *chain).await);
        }
        all.push(row);
    }
    all
}

/// The refusal a call must end in, its code one of `codes`; returns its message.
fn refused(reply: Result<Response, CallError>, codes: &[ErrorCode], what: &str) -> String {
    match reply {
        Err(CallError::Remote(reply)) if codes.contains(&reply.code) => reply.message,
        other => panic!("{what}: expected a refusal ({codes:?}), got {other:?}"),
    }
}

/// A release policy whose developer and verifiers are test keys.
fn policy() -> Policy {
    Policy {
        project: "hello".into(),
        developers: vec![key(1).public_key()],
        release_threshold: 1,
        root_keys: vec![key(10).public_key()],
        root_threshold: 1,
        verifiers: vec![
            VerifierEntry { key: key(20).public_key(), address: "127.0.0.1:1".into() },
            VerifierEntry { key: key(21).public_key(), address: "127.0.0.1:2".into() },
        ],
        verifier_threshold: 1,
        require_isolation: false,
        max_age_ms: 60_000,
        version: 0,
        yanked: Vec::new(),
    }
}

/// A release of `version` with one attestation per key in `verifiers` (repeats included).
fn release(version: &str, verifiers: &[&SecretKey]) -> Proposal {
    let manifest = Manifest {
        project: "hello".into(),
        version: version.into(),
        source: SourceArchive { name: format!("hello-{version}.tar"), sha3: content_hash(version.as_bytes()), size: 1 },
        recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: ".".into() },
        artifacts: vec![Artifact { path: "hello".into(), sha3: content_hash(b"binary"), size: 6 }],
        time_ms: common::now_ms(),
    };
    let id = manifest.id();
    let attestation = |v: &&SecretKey| {
        let body = AttestationBody {
            verifier: v.public_key(),
            manifest: id,
            outcome: Outcome::Reproduced,
            environment: [0; 32],
            time_ms: common::now_ms(),
            isolation: chainiac_release::BuildIsolation::Namespaces,
        };
        Attestation::sign(v, body)
    };
    let payload = ReleasePayload {
        developer_signatures: vec![DeveloperSignature::sign(&key(1), &id)],
        attestations: verifiers.iter().map(attestation).collect(),
        manifest,
    };
    Proposal { kind: KIND_RELEASE, payload: payload.to_bytes(), ..Proposal::default() }
}

/// A release chain served by witnesses 0–3, created by a client with a throwaway key.
async fn release_chain(cluster: &Cluster) -> (ChainId, Block) {
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let first = genesis(
        ChainParams::new(2, 24).unwrap(),
        committee,
        policy().to_bytes(),
        KIND_RELEASE,
        vec![],
        common::now_ms(),
    );
    match cluster.client.call(&cluster.witnesses[0], Request::CreateChain { genesis: first.clone() }).await {
        Ok(Response::Created { chain }) => (chain, first),
        other => panic!("release chain: {other:?}"),
    }
}

/// The next block of `chain` as witness 1 would propose it, unsigned.
async fn next_block(cluster: &Cluster, chain: ChainId, genesis: &Block) -> Block {
    let proposal = Proposal { payload: b"a block".to_vec(), timestamp_ms: common::now_ms(), ..Proposal::default() };
    cluster.next_block(1, chain, genesis, proposal).await
}

/// Each request that needs more than "anyone" is tried from a throwaway key and from a
/// witness of the cothority that is not a member of the chains' committee (witness 4, a
/// configured peer of the others); each is refused, and no witness's head moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_access_table_refuses_strangers_and_non_members() {
    // No automatic timeline blocks: every head here moves only if a request moves it.
    let cluster = Cluster::start_with(5, 0).await;
    let (timeline, _) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (chain, raw_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(1, chain, b"first").await.unwrap();
    for i in 0..4 {
        cluster.wait_head(i, chain, 1).await;
    }
    let before = heads(&cluster, &[timeline, chain]).await;
    let members = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let elsewhere = Committee::byzantine(cluster.roster(&[1, 2, 3, 4]));
    let timeline_genesis = genesis(ChainParams::DEFAULT, members.clone(), vec![7], KIND_TIMELINE, vec![], 1);
    let raw_elsewhere = genesis(ChainParams::DEFAULT, elsewhere, vec![7], 0, vec![], 1);
    let raw_here = genesis(ChainParams::DEFAULT, members.clone(), vec![8], 0, vec![], 1);
    let next = next_block(&cluster, chain, &raw_genesis).await;
    let mut block_zero = next.clone();
    block_zero.header.index = 0;
    let new_roster = Committee::byzantine(cluster.roster(&[0, 1, 2, 4])).with_epoch(1);

    let stranger = common::Client::new();
    let outsider = cluster.operator(4);
    for (who, client) in [("a throwaway key", &stranger), ("a witness outside the committee", &outsider)] {
        let to = |i: usize| &cluster.witnesses[i];
        use ErrorCode::*;
        // CreateChain: a timeline only by its operators; any chain only where this witness serves.
        let m = refused(
            client.call(to(0), Request::CreateChain { genesis: timeline_genesis.clone() }).await,
            &[Forbidden],
            who,
        );
        assert!(m.contains("operator"), "{who}: {m}");
        let m = refused(
            client.call(to(0), Request::CreateChain { genesis: raw_elsewhere.clone() }).await,
            &[Forbidden],
            who,
        );
        assert!(m.contains("not in the chain's committee"), "{who}: {m}");
        // Propose: a timeline block that appoints no committee only by its members, nor one
        // that "appoints" the committee in force (it would be a free round).
        let proposal = Proposal { kind: KIND_TIMELINE, ..Proposal::default() };
        refused(client.call(to(0), Request::Propose { chain: timeline, proposal }).await, &[Forbidden], who);
        let proposal = Proposal {
            kind: KIND_TIMELINE,
            committee: Some(Appointment::anchor(members.clone())),
            policy: Some(b"a new timeline policy".to_vec()),
            ..Proposal::default()
        };
        let m = refused(client.call(to(0), Request::Propose { chain: timeline, proposal }).await, &[Refused], who);
        assert!(m.contains("already in force"), "{who}: {m}");
        // Propose: a committee change without approvals, on either chain.
        for target in [timeline, chain] {
            let proposal = Proposal {
                kind: KIND_COMMITTEE,
                committee: Some(Appointment::anchor(new_roster.clone())),
                ..Proposal::default()
            };
            let m = refused(client.call(to(1), Request::Propose { chain: target, proposal }).await, &[Refused], who);
            assert!(m.contains("without authority"), "{who}: {m}");
        }
        // Announce, Challenge, Abort, Commit: only the round's parent, a committee member.
        let announce = Announce {
            block: next.clone(),
            session: SessionId([5; 32]),
            leader: 0,
            branching: 8,
            excluded: vec![0],
            ballot: 1,
            justification: None,
            leader_signature: [0; 64],
        };
        refused(client.call(to(1), Request::Announce(announce.clone())).await, &[Forbidden], who);
        if who.contains("throwaway") {
            // A member of the committee that is not this witness's parent in the round.
            let from_member = cluster.operator(2).call(to(1), Request::Announce(announce.clone())).await;
            let m = refused(from_member, &[Forbidden], "a member that is not the parent");
            assert!(m.contains("parent"), "{m}");
        }
        let challenge = chainiac_cosi::protocol::Challenge {
            session: SessionId([5; 32]),
            mask: chainiac_cosi::WireMask(vec![15]),
            r1: [0; 32],
            r2: [0; 32],
        };
        refused(
            client
                .call(
                    to(1),
                    Request::Challenge {
                        session: SessionId([5; 32]),
                        challenge,
                        certificate: chainiac_proto::message::Certificate { ballot: 1, votes: vec![] },
                    },
                )
                .await,
            &[Forbidden, NotFound],
            who,
        );
        refused(client.call(to(1), Request::Abort { session: SessionId([5; 32]) }).await, &[Forbidden, NotFound], who);
        refused(client.call(to(1), Request::Commit { block: next.clone() }).await, &[Forbidden], who);
        // Agreement states are reported to members of the chain's committee only.
        refused(client.call(to(1), Request::GetIndexState { chain, index: 2 }).await, &[Forbidden], who);
        // Genesis broadcasts: only a witness this node knows, in the new chain's committee.
        refused(client.call(to(1), Request::Genesis { genesis: raw_here.clone() }).await, &[Forbidden], who);
        // Block 0 announced or committed: a clean refusal, and the node stays up.
        let zero = Announce { block: block_zero.clone(), ..announce };
        let m = refused(client.call(to(2), Request::Announce(zero)).await, &[BadRequest], who);
        assert!(m.contains("block 0 is a genesis"), "{who}: {m}");
        refused(client.call(to(2), Request::Commit { block: block_zero.clone() }).await, &[BadRequest], who);
        assert!(matches!(client.call(to(2), Request::Status).await, Ok(Response::Status(_))), "{who}: node down");
    }
    assert_eq!(heads(&cluster, &[timeline, chain]).await, before, "no witness's head moved");
    for made_up in [timeline_genesis.id(), raw_elsewhere.id(), raw_here.id()] {
        assert_eq!(heads(&cluster, &[made_up]).await, vec![vec![None]; 5], "no refused chain is stored");
    }
}

/// A peer that serves a chain of its own making (its genesis names neither the witness it
/// tells nor any of the cothority) and announces or commits its blocks, from the address
/// it serves at, as witnesses do.
struct Injector {
    store: chainiac_skipchain::store::MemoryStore,
}

impl Handler for Injector {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        use chainiac_skipchain::store::Store;
        match request {
            Request::GetBlocks { chain, from, count } => Response::Blocks(
                (from..from + count.min(256) as u64).map_while(|i| self.store.block(&chain, i).unwrap()).collect(),
            ),
            _ => Response::Error(chainiac_proto::ErrorReply::new(ErrorCode::NotFound, "no")),
        }
    }
    fn refused(&self, _: &str) {}
}

/// A chain of `n` blocks by the committee of `keys` (all of them sign), in `store`.
fn made_up_chain(store: &chainiac_skipchain::store::MemoryStore, keys: &[SecretKey], n: u64) -> Vec<Block> {
    use chainiac_cosi::simulation::sign_with_all_keys;
    let roster = Roster::new(keys.iter().map(|k| Member::new(k, "127.0.0.1:9")).collect()).unwrap();
    let committee = Committee::byzantine(roster.clone());
    let first = genesis(ChainParams::new(2, 8).unwrap(), committee, vec![], 0, vec![], common::now_ms());
    let mut head = chainiac_skipchain::store::append(store, &first).unwrap().into_inner();
    let mut blocks = vec![first];
    for j in 0..n {
        let proposal = Proposal { payload: vec![j as u8], timestamp_ms: common::now_ms(), ..Proposal::default() };
        let mut block = head.propose(proposal, |i| blocks.get(i as usize).map(Block::id)).unwrap();
        let mask = chainiac_cosi::Mask::full(keys.len());
        block.signature = Some(BlockSignature {
            ballot: 0,
            signature: sign_with_all_keys(
                &roster,
                keys,
                &mask,
                &BlockSignature::message(&block.id(), 0),
                &mut rand_core::OsRng,
            ),
        });
        head = chainiac_skipchain::store::append(store, &block).unwrap().into_inner();
        blocks.push(block);
    }
    blocks
}

/// Chain injection: a stranger's `Announce` or `Commit` for a chain the witness lacks is
/// refused before it fetches anything; a known peer's is fetched and verified without a
/// write, then refused because the chain's committee names neither it nor the caller. The
/// chain is stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_cannot_be_injected_through_announce_or_commit() {
    let mut cluster = Cluster::start_with(5, 0).await;
    let (timeline, _) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (chain, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    let before = heads(&cluster, &[timeline, chain]).await;
    let store = chainiac_skipchain::store::MemoryStore::new();
    let fakes: Vec<SecretKey> = (100..104).map(key).collect();
    let blocks = made_up_chain(&store, &fakes, 3);
    let injected = blocks[0].id();
    let announce = |i: usize| Announce {
        block: blocks[i].clone(),
        session: SessionId([9; 32]),
        leader: 0,
        branching: 8,
        excluded: vec![0],
        ballot: 1,
        justification: None,
        leader_signature: [0; 64],
    };

    // A stranger: refused at once.
    let stranger = common::Client::new();
    for target in 0..4 {
        let m = refused(
            stranger.call(&cluster.witnesses[target], Request::Announce(announce(3))).await,
            &[ErrorCode::Forbidden],
            "stranger's announce",
        );
        assert!(m.contains("no witness this node knows"), "{m}");
        refused(
            stranger.call(&cluster.witnesses[target], Request::Commit { block: blocks[3].clone() }).await,
            &[ErrorCode::Forbidden],
            "stranger's commit",
        );
    }

    // Witness 4, a configured peer of the others, turned: it serves the made-up chain at its
    // own address and announces and commits from there.
    cluster.witnesses[4].kill();
    let peer_key = chainiac_witness::keyfile::read(&cluster.witnesses[4].dir.join("node.key")).unwrap();
    let endpoint = chainiac_proto::endpoint::server(&peer_key, cluster.witnesses[4].address.parse().unwrap()).unwrap();
    let sender = chainiac_proto::Pool::new(endpoint.clone(), Arc::new(peer_key));
    tokio::spawn(chainiac_proto::server::serve(
        Arc::new(Injector { store }),
        endpoint,
        &[chainiac_proto::frame::FrameClass::Query],
    ));
    for target in 0..4 {
        let w = &cluster.witnesses[target];
        let reply = sender.call(&w.address, &w.key, &Request::Announce(announce(3)), common::CALL_TIMEOUT).await;
        let m = refused(reply, &[ErrorCode::Forbidden], "peer's announce");
        assert!(m.contains("not a member") || m.contains("not in chain"), "{m}");
        let reply =
            sender.call(&w.address, &w.key, &Request::Commit { block: blocks[3].clone() }, common::CALL_TIMEOUT).await;
        refused(reply, &[ErrorCode::Forbidden], "peer's commit");
    }
    let now = heads(&cluster, &[timeline, chain, injected]).await;
    assert_eq!(now.len(), 4);
    for (i, row) in now.iter().enumerate() {
        assert_eq!(row[..2], before[i][..], "witness {i}'s heads moved");
        assert_eq!(row[2], None, "witness {i} stored the injected chain");
    }
}

/// A committee changes only by the approvals of at least the outgoing threshold of its own
/// members' operators, over exactly the new committee, unexpired, and only to a Byzantine
/// quorum — on a release chain and on the timeline alike. Every other change is refused by
/// name with every head unchanged; the rightful one is taken by every witness, the newcomer
/// signs from then on, and a client anchored before lands on it in every mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_outgoing_operators_change_a_committee_and_clients_follow_in_every_mode() {
    let cluster = Cluster::start(5).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (project, project_genesis) = release_chain(&cluster).await;
    cluster
        .client
        .call(&cluster.witnesses[1], Request::Propose { chain: project, proposal: release("1.0", &[&key(20)]) })
        .await
        .unwrap();
    common::wait_timeline_has(&cluster, project, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("client.state");
    {
        let mut client = Client::open(&state, TrustLevel::default()).unwrap();
        client.anchor(&timeline_genesis).unwrap();
        client.anchor(&project_genesis).unwrap();
        assert_eq!(client.update(project).await.unwrap().to, 1);
    }

    let next = Committee::byzantine(cluster.roster(&[0, 1, 2, 4])).with_epoch(1);
    let old = cluster.committee_of(1, timeline).await;
    let before = heads(&cluster, &[project]).await;
    let expires = cluster.approvals_expire_ms;
    let approvals = |members: &[usize], committee: &Committee, expires_ms: u64| -> Vec<Approval> {
        cluster.keys(members).iter().map(|k| Approval::sign(k, committee, expires_ms, None)).collect()
    };
    let other = Committee::byzantine(cluster.roster(&[0, 1, 2, 3, 4])).with_epoch(1);
    let weak = Committee::new(next.roster().clone(), 2).unwrap().with_epoch(1);
    let same_epoch = next.clone().with_epoch(0);
    let wrong: Vec<(&str, Appointment, &str)> = vec![
        ("anonymous", Appointment::anchor(next.clone()), "0 of the outgoing committee's members approved"),
        (
            "too few",
            Appointment { committee: next.clone(), approvals: approvals(&[0, 1], &next, expires) },
            "2 of the outgoing committee's members approved",
        ),
        (
            "over another roster",
            Appointment { committee: next.clone(), approvals: approvals(&[0, 1, 2], &other, expires) },
            "not a valid signature over the new committee",
        ),
        (
            "numbered no higher than the committee in force",
            Appointment { committee: same_epoch.clone(), approvals: approvals(&[0, 1, 2, 3], &same_epoch, expires) },
            "epoch 0 does not exceed the outgoing committee's 0",
        ),
        (
            "by a stranger to the committee",
            Appointment { committee: next.clone(), approvals: approvals(&[0, 1, 4], &next, expires) },
            "not a member of the outgoing committee",
        ),
        (
            "expired",
            Appointment { committee: next.clone(), approvals: approvals(&[0, 1, 2], &next, common::now_ms() - 1) },
            "3 more expired",
        ),
        (
            "to a committee that is no quorum",
            Appointment { committee: weak.clone(), approvals: approvals(&[0, 1, 2, 3], &weak, expires) },
            "not a Byzantine quorum",
        ),
    ];
    for (what, appointment, rule) in wrong {
        for chain in [timeline, project] {
            let error = cluster.propose_appointment(1, chain, appointment.clone()).await.unwrap_err();
            let reply = refusal(&error);
            assert_eq!(reply.code, ErrorCode::Refused, "{what}");
            assert!(reply.message.contains(rule), "{what}: {}", reply.message);
        }
    }
    // The timeline keeps ticking, under the old committee.
    assert_eq!(heads(&cluster, &[project]).await, before, "no refused change moved a head");
    assert_eq!(cluster.committee_of(1, timeline).await, old);
    assert_eq!(cluster.committee_of(1, project).await, old);

    // The rightful change: operators of witnesses 0, 1 and 2 (the threshold, 3 of 4).
    let rightful = Appointment { committee: next.clone(), approvals: approvals(&[0, 1, 2], &next, expires) };
    let changed = cluster.propose_appointment(1, project, rightful.clone()).await.unwrap().header.index;
    cluster.propose_appointment(2, timeline, rightful.clone()).await.unwrap();
    for i in 0..5 {
        cluster.wait_head(i, project, changed).await;
    }
    // New chains start at the cothority's epoch, so the approvals just used cannot appoint
    // their committee on a chain created afterwards (even on the roster the cothority left).
    let below = genesis(ChainParams::DEFAULT, old.clone(), vec![9], 0, vec![], common::now_ms());
    let m = refused(
        cluster.client.call(&cluster.witnesses[1], Request::CreateChain { genesis: below }).await,
        &[ErrorCode::Refused],
        "a chain below the epoch",
    );
    assert!(m.contains("below the cothority's 1"), "{m}");
    let at_epoch = genesis(ChainParams::DEFAULT, old.clone().with_epoch(1), vec![9], 0, vec![], common::now_ms());
    let Ok(Response::Created { chain: late }) =
        cluster.client.call(&cluster.witnesses[1], Request::CreateChain { genesis: at_epoch }).await
    else {
        panic!("a chain at the cothority's epoch is created")
    };
    let replay = cluster.propose_appointment(1, late, rightful.clone()).await.unwrap_err();
    let m = &refusal(&replay).message;
    assert!(m.contains("epoch 1 does not exceed the outgoing committee's 1"), "{m}");
    // A client whose head is the committee change still exports a bundle: it ends on the
    // newest release, before the change.
    common::wait_timeline_has(&cluster, project, changed).await;
    {
        let path = dir.path().join("at-change.state");
        std::fs::copy(&state, &path).unwrap();
        let mut client = Client::open(&path, TrustLevel::default()).unwrap();
        assert_eq!(client.update(project).await.unwrap().to, changed);
        let bundle = client.export_bundle(&project_genesis, Some(&timeline_genesis)).await.unwrap();
        let checked = bundle.verify(&project, Some(&timeline), &TrustLevel::default()).unwrap();
        assert_eq!((checked.index, checked.release.manifest.version.as_str()), (1, "1.0"));
    }
    // The newcomer leads the next release; the one who left cannot.
    let release_2 = release("1.1", &[&key(20), &key(21)]);
    let Response::Appended { block } = cluster
        .client
        .call(&cluster.witnesses[4], Request::Propose { chain: project, proposal: release_2 })
        .await
        .unwrap()
    else {
        panic!("the newcomer did not lead")
    };
    let head = block.header.index;
    let release_3 = release("1.2", &[&key(20)]);
    let reply =
        cluster.client.call(&cluster.witnesses[3], Request::Propose { chain: project, proposal: release_3 }).await;
    let m = refused(reply, &[ErrorCode::Forbidden], "a former member leading");
    assert!(m.contains("not in the chain's committee"), "{m}");
    common::wait_timeline_has(&cluster, project, head).await;

    // Clients anchored before the change land on it: linked proofs, forward proofs, bundles.
    for (every_hop, name) in [(false, "linked.state"), (true, "forward.state")] {
        let path = dir.path().join(name);
        std::fs::copy(&state, &path).unwrap();
        let mut client = Client::open(&path, TrustLevel::default()).unwrap();
        client.every_hop = every_hop;
        let update = client.update(project).await.unwrap();
        assert_eq!(update.to, head, "every_hop {every_hop}");
        assert!(update.checkpoints.contains(&changed), "every_hop {every_hop}: {:?}", update.checkpoints);
        assert_eq!(client.state().chains[&project].committee.hash(), next.hash());
        if !every_hop {
            let bundle = client.export_bundle(&project_genesis, Some(&timeline_genesis)).await.unwrap();
            let checked = chainiac_client::Bundle::from_bytes(&bundle.to_bytes())
                .unwrap()
                .verify(&project, Some(&timeline), &TrustLevel::default())
                .unwrap();
            assert_eq!(checked.index, head);
        }
    }
}

/// Relays witness 1's answers with every committee change's approvals cut to one: the
/// whole old committee signed the block, but its operators did not approve the change.
struct Unapproved {
    honest: Arc<common::Client>,
    address: String,
    key: PublicKey,
}

impl Handler for Unapproved {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        // Ask for everything in full: nothing left out as held, so every change shows.
        let request = match request {
            Request::GetProofs { queries, with_payload, .. } => {
                Request::GetProofs { queries, with_payload, held_appointments: vec![] }
            }
            Request::GetLinkedProofs { queries, with_payload, .. } => {
                Request::GetLinkedProofs { queries, with_payload, held_appointments: vec![] }
            }
            Request::GetTimelineChanges { timeline, from, watched, max_bytes, .. } => {
                Request::GetTimelineChanges { timeline, from, watched, held_appointments: vec![], max_bytes }
            }
            other => other,
        };
        let cut = |a: &mut Appointment| a.approvals.truncate(1);
        match self.honest.call_at(&self.address, &self.key, request).await {
            Ok(Response::Proofs(mut proofs)) => {
                for proof in proofs.iter_mut().flatten() {
                    proof.steps.iter_mut().filter_map(|s| s.committee.as_mut()).for_each(cut);
                }
                Response::Proofs(proofs)
            }
            Ok(Response::LinkedProofs(mut proofs)) => {
                for proof in proofs.iter_mut().flatten() {
                    proof.appointments.iter_mut().for_each(cut);
                    proof.beyond.steps.iter_mut().filter_map(|s| s.committee.as_mut()).for_each(cut);
                }
                Response::LinkedProofs(proofs)
            }
            Ok(Response::TimelineChanges(mut changes)) => {
                changes.proof.steps.iter_mut().filter_map(|s| s.committee.as_mut()).for_each(cut);
                Response::TimelineChanges(changes)
            }
            Ok(other) => other,
            Err(e) => Response::Error(chainiac_proto::ErrorReply::new(ErrorCode::Internal, e.to_string())),
        }
    }
    fn refused(&self, _: &str) {}
}

/// A lying witness (witness 0's key and address, asked first) serves proofs of a rightful
/// roster change with the approvals cut below the threshold, the collective signatures
/// intact. The client refuses them naming the rule, in both modes, and takes the change
/// from an honest member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_an_unapproved_committee_change_whoever_serves_it() {
    let mut cluster = Cluster::start(5).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (chain, raw_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(1, chain, b"before").await.unwrap();
    let next = Committee::byzantine(cluster.roster(&[0, 1, 2, 4])).with_epoch(1);
    let changed = cluster.propose_change(1, chain, next.clone()).await.unwrap().header.index;
    cluster.propose_change(1, timeline, next.clone()).await.unwrap();
    cluster.wait_head(4, chain, changed).await;
    let head = cluster.propose(4, chain, b"after").await.unwrap().header.index;
    common::wait_timeline_has(&cluster, chain, head).await;
    let liar = Unapproved {
        honest: Arc::new(common::Client::new()),
        address: cluster.witnesses[1].address.clone(),
        key: cluster.witnesses[1].key,
    };
    common::replace_witness_0(&mut cluster, liar);
    let dir = tempfile::tempdir().unwrap();
    for every_hop in [false, true] {
        let mut client = Client::open(&dir.path().join(format!("{every_hop}.state")), TrustLevel::default()).unwrap();
        client.anchor(&timeline_genesis).unwrap();
        client.anchor(&raw_genesis).unwrap();
        client.every_hop = every_hop;
        let update = client.update(chain).await.unwrap();
        assert_eq!((update.to, client.state().chains[&chain].committee.hash()), (head, next.hash()));
        assert!(update.checkpoints.contains(&changed));
        let (_, why) = update
            .skipped
            .iter()
            .find(|(w, _)| w == &cluster.witnesses[0].address)
            .unwrap_or_else(|| panic!("every_hop {every_hop}: the liar was not named: {:?}", update.skipped));
        assert!(why.contains("without authority") && why.contains("1 of the outgoing"), "every_hop {every_hop}: {why}");
    }
}

/// `CreateChain` past the per-caller quota is refused, naming the limit: per key, and per
/// address (a fresh key from the same place does not reset it); in allow-list mode only
/// the listed keys create chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_chains_past_the_quota_is_refused_naming_the_limit() {
    let listed = key(77);
    let listed_hex = listed.public_key().to_string();
    let cluster = Cluster::start_configured(4, 0, move |i, config| {
        config.chain_quota_per_day = 2;
        if i == 1 {
            config.chain_creators = vec![listed_hex.clone()];
        }
    })
    .await;
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let chain_of = |n: u8| genesis(ChainParams::DEFAULT, committee.clone(), vec![n], 0, vec![], 1);
    let first = common::Client::new();
    for n in 0..2 {
        let reply = first.call(&cluster.witnesses[0], Request::CreateChain { genesis: chain_of(n) }).await;
        assert!(matches!(reply, Ok(Response::Created { .. })), "{reply:?}");
    }
    let m = refused(
        first.call(&cluster.witnesses[0], Request::CreateChain { genesis: chain_of(2) }).await,
        &[ErrorCode::Forbidden],
        "third chain",
    );
    assert!(m.contains("created 2 chains") && m.contains("chain_quota_per_day"), "{m}");
    let m = refused(
        common::Client::new().call(&cluster.witnesses[0], Request::CreateChain { genesis: chain_of(3) }).await,
        &[ErrorCode::Forbidden],
        "a fresh key from the same address",
    );
    assert!(m.contains("address 127.0.0.1"), "{m}");
    assert_eq!(cluster.head(0, chain_of(2).id()).await, None);
    // Witness 1 lists one creator: everyone else is refused, that one is not.
    let m = refused(
        common::Client::new().call(&cluster.witnesses[1], Request::CreateChain { genesis: chain_of(4) }).await,
        &[ErrorCode::Forbidden],
        "allow-list mode",
    );
    assert!(m.contains("allow-list mode"), "{m}");
    let reply = common::Client::with_key(listed)
        .call(&cluster.witnesses[1], Request::CreateChain { genesis: chain_of(4) })
        .await;
    assert!(matches!(reply, Ok(Response::Created { .. })), "{reply:?}");
}

/// One verifier listed twice is one reproduction: witnesses refuse the release by name,
/// and the chain does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_listing_one_verifier_twice_is_refused() {
    let cluster = Cluster::start(4).await;
    let (project, _) = release_chain(&cluster).await;
    let doubled = release("1.0", &[&key(20), &key(20)]);
    let error =
        cluster.client.call(&cluster.witnesses[1], Request::Propose { chain: project, proposal: doubled }).await;
    let m = refused(error, &[ErrorCode::Refused], "a doubled attestation");
    assert!(m.contains("attested twice"), "{m}");
    assert_eq!(heads(&cluster, &[project]).await, vec![vec![Some(0)]; 4]);
}

/// A member whose newest timeline block is older than the chains allow (a frozen or lagging
/// witness, here one serving a validly signed but old copy) is skipped as stale, and the
/// update goes through the next member instead of failing every chain as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_member_is_skipped_and_the_update_goes_through_the_next() {
    use chainiac_skipchain::store::{self, MemoryStore};
    use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry};
    let mut cluster = Cluster::start(4).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (chain, raw_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    let head = cluster.propose(1, chain, b"release").await.unwrap();
    common::wait_timeline_has(&cluster, chain, 1).await;
    // An old copy: the timeline as it is now, which records the chain's head.
    let old = MemoryStore::new();
    let timeline_head = cluster.head(1, timeline).await.unwrap();
    common::copy_chain(&cluster, &old, timeline, timeline_head).await;
    common::copy_chain(&cluster, &old, chain, 1).await;
    let last = store::head_state(&old, &timeline).unwrap();
    let Ok(Response::Block(Some(block))) =
        cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain: timeline, index: timeline_head }).await
    else {
        panic!("timeline block")
    };
    let entry = TimelineEntry::from_bytes(&block.payload).unwrap();
    assert_eq!(last.id, block.id());
    let set = HeadSet::new(vec![HeadLeaf { chain, index: 1, id: head.id() }]);
    assert_eq!(set.root(), entry.root);
    // Long enough for the copy to go stale under a 2.5 s bound; the cothority moves on.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let stale = common::Forger { store: old, timeline, index: timeline_head, entry, set };
    common::replace_witness_0(&mut cluster, stale);
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("client.state"), TrustLevel::default()).unwrap();
    client.default_max_age_ms = 2_500;
    client.anchor(&timeline_genesis).unwrap();
    client.anchor(&raw_genesis).unwrap();
    let update = match client.update(chain).await {
        Ok(update) => update,
        Err(ClientError::Stale { age_ms, .. }) => panic!("the stale member's block was taken ({age_ms} ms old)"),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(update.to, 1);
    assert!(update.timeline_age_ms.unwrap() <= 2_500);
    let (_, why) = update
        .skipped
        .iter()
        .find(|(w, _)| w == &cluster.witnesses[0].address)
        .unwrap_or_else(|| panic!("the stale member was not named: {:?}", update.skipped));
    assert!(why.starts_with("stale:"), "{why}");
}

/// The operators' path end to end, as README's "Changing the roster" shows it: three of the
/// four operators run `chainiac roster approve` with their witness keys, then `chainiac
/// roster rotate --all` moves every chain a witness serves (the timeline and both projects,
/// listed page by page); a rotation to an epoch the chains are already at is refused by the
/// witnesses, naming the rule, and the command exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_approve_and_rotate_every_chain_from_the_command_line() {
    use std::process::Command;
    let cluster = Cluster::start_with(5, 0).await;
    let (timeline, _) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (first, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    let (second, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    let dir = tempfile::tempdir().unwrap();
    let roster = dir.path().join("new-roster.toml");
    let members: String = [0, 1, 2, 4]
        .iter()
        .map(|&i| std::fs::read_to_string(cluster.witnesses[i].dir.join("member.toml")).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&roster, members).unwrap();
    let approvals = dir.path().join("approvals.toml");
    let run = |args: &[&str]| Command::new(common::bin()).args(args).output().unwrap();
    for i in [0, 1, 2] {
        let key = cluster.witnesses[i].dir.join("node.key");
        let out = run(&[
            "roster",
            "approve",
            "--roster",
            roster.to_str().unwrap(),
            "--epoch",
            "1",
            "--key",
            key.to_str().unwrap(),
            "--approvals",
            approvals.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.status.success(), "approve {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let w = &cluster.witnesses[1];
    let rotate = |epoch: &str| {
        run(&[
            "roster",
            "rotate",
            "--roster",
            roster.to_str().unwrap(),
            "--epoch",
            epoch,
            "--approvals",
            approvals.to_str().unwrap(),
            "--all",
            "--witness",
            &w.address,
            "--witness-key",
            &w.key.to_string(),
            "--json",
        ])
    };
    // Approvals name epoch 1: a rotation that names another committee does not use them.
    let out = rotate("2");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not of this roster, threshold and epoch"));
    let out = rotate("1");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let moved: Vec<&str> = answer["chains"].as_array().unwrap().iter().map(|c| c["chain"].as_str().unwrap()).collect();
    assert_eq!(moved.len(), 3, "{answer}");
    for chain in [timeline, first, second] {
        assert!(moved.contains(&chain.to_hex().as_str()), "{answer}");
        let committee = cluster.committee_of(1, chain).await;
        assert_eq!((committee.epoch(), committee.roster()), (1, &cluster.roster(&[0, 1, 2, 4])));
    }
    // Nothing is left to move; the same appointment again is refused per chain.
    let again = Command::new(common::bin())
        .args(["roster", "rotate", "--roster", roster.to_str().unwrap(), "--epoch", "1"])
        .args(["--approvals", approvals.to_str().unwrap(), "--chain", &first.to_hex()])
        .args(["--witness", &w.address, "--witness-key", &w.key.to_string()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("refused"), "{said}");
}
