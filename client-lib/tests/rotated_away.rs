//! A colluding cothority cosigns a release signed only by a developer key that a root-signed
//! policy change had already rotated away. The client re-checks every release it reaches
//! under the policy in force at that block, so it refuses it — through `update` from a
//! witness serving that chain over QUIC, and through an offline bundle — and keeps its state.
//! The same chain with the release signed by the new key is accepted, so the refusal is the
//! rotation's doing.

use chainiac_client::{Bundle, Client, ClientError, TrustLevel};
use chainiac_cosi::simulation::sign_with_all_keys;
use chainiac_cosi::{Mask, Member, PublicKey, Roster, SecretKey};
use chainiac_proto::frame::FrameClass;
use chainiac_proto::server::Handler;
use chainiac_proto::{Request, Response};
use chainiac_release::*;
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{genesis, Block, ChainId, ChainParams, ChainState, Committee, Proposal};
use std::net::SocketAddr;
use std::sync::Arc;

/// A bundle whose release is the head: nothing past it.
const NO_PROOF: chainiac_skipchain::Proof = chainiac_skipchain::Proof { steps: Vec::new(), payload: None };
fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

const OLD_DEVELOPER: u8 = 1;
const NEW_DEVELOPER: u8 = 2;
const ROOT: u8 = 9;
const VERIFIER: u8 = 20;
const BINARY: &[u8] = b"the hello binary";

fn policy(developer: u8) -> Policy {
    Policy {
        project: "hello".into(),
        developers: vec![key(developer).public_key()],
        release_threshold: 1,
        root_keys: vec![key(ROOT).public_key()],
        root_threshold: 1,
        verifiers: vec![VerifierEntry { key: key(VERIFIER).public_key(), address: "127.0.0.1:1".into() }],
        verifier_threshold: 1,
        require_isolation: false,
        max_age_ms: 3_600_000,
        version: developer as u64,
        yanked: Vec::new(),
    }
}

fn release(version: &str, signer: u8, now: u64) -> Proposal {
    let manifest = Manifest {
        project: "hello".into(),
        version: version.into(),
        source: SourceArchive { name: format!("hello-{version}.tar"), sha3: content_hash(version.as_bytes()), size: 1 },
        recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: ".".into() },
        artifacts: vec![Artifact { path: "hello".into(), sha3: content_hash(BINARY), size: BINARY.len() as u64 }],
        time_ms: now,
    };
    let id = manifest.id();
    let body = AttestationBody {
        verifier: key(VERIFIER).public_key(),
        manifest: id,
        outcome: Outcome::Reproduced,
        environment: [0; 32],
        time_ms: now,
        isolation: chainiac_release::BuildIsolation::Namespaces,
    };
    let payload = ReleasePayload {
        developer_signatures: vec![DeveloperSignature::sign(&key(signer), &id)],
        attestations: vec![Attestation::sign(&key(VERIFIER), body)],
        manifest,
    };
    Proposal { kind: KIND_RELEASE, payload: payload.to_bytes(), timestamp_ms: now, ..Proposal::default() }
}

/// A chain whose every block the whole (colluding) committee signs, rules or not:
/// release 1.0 by the old developer, a root-signed rotation to the new developer, then
/// release 1.1 signed by `last_signer`.
fn chain(witness_keys: &[SecretKey], address: &str, last_signer: u8) -> (MemoryStore, Block, ChainId, u64) {
    chain_rotated_by(witness_keys, address, last_signer, &[ROOT])
}

/// [`chain`], the rotation signed by the root keys `rotators` (none: the colluding
/// committee's rotation alone).
fn chain_rotated_by(
    witness_keys: &[SecretKey],
    address: &str,
    last_signer: u8,
    rotators: &[u8],
) -> (MemoryStore, Block, ChainId, u64) {
    colluders_chain(witness_keys, address, KIND_RELEASE, policy(OLD_DEVELOPER).to_bytes(), |chain, now| {
        let (old_hash, new_hash) = (
            chainiac_skipchain::block::policy_hash(&policy(OLD_DEVELOPER).to_bytes()),
            chainiac_skipchain::block::policy_hash(&policy(NEW_DEVELOPER).to_bytes()),
        );
        let rotation = Proposal {
            kind: KIND_POLICY_CHANGE,
            payload: PolicyChange {
                root_signatures: rotators
                    .iter()
                    .map(|&r| RootSignature::sign(&key(r), &chain.0, &old_hash, &new_hash))
                    .collect(),
            }
            .to_bytes(),
            policy: Some(policy(NEW_DEVELOPER).to_bytes()),
            timestamp_ms: now,
            ..Proposal::default()
        };
        vec![release("1.0", OLD_DEVELOPER, now), rotation, release("1.1", last_signer, now)]
    })
}

/// A chain of `kind` with `policy` in its genesis, then `blocks` (made from the chain id and
/// the time), every one signed by the whole committee, rules or not.
fn colluders_chain(
    witness_keys: &[SecretKey],
    address: &str,
    kind: u16,
    policy: Vec<u8>,
    blocks: impl FnOnce(ChainId, u64) -> Vec<Proposal>,
) -> (MemoryStore, Block, ChainId, u64) {
    let roster = Roster::new(witness_keys.iter().map(|k| Member::new(k, address)).collect()).unwrap();
    let committee = Committee::new(roster.clone(), 3).unwrap();
    let now = chainiac_client::now_ms();
    let first = genesis(ChainParams::new(2, 4).unwrap(), committee, policy, kind, Vec::new(), now);
    let store = MemoryStore::new();
    let mut head = store::append(&store, &first).unwrap().into_inner();
    let chain = head.chain;
    let mut rng = rand_core::OsRng;
    for proposal in blocks(chain, now) {
        let mut block = head.propose(proposal, |j| store.block_id(&chain, j).unwrap()).unwrap();
        block.signature = Some(BlockSignature {
            ballot: 0,
            signature: sign_with_all_keys(
                &roster,
                witness_keys,
                &Mask::full(witness_keys.len()),
                &BlockSignature::message(&block.id(), 0),
                &mut rng,
            ),
        });
        let state = head.extend(&block, |j| store.block_id(&chain, j).unwrap()).unwrap();
        store::commit_verified(&store, &state, &block, Some(head.index())).unwrap();
        head = state.into_inner();
    }
    (store, first, chain, head.index())
}

/// Serves proofs of the colluders' chain.
struct Colluder {
    store: MemoryStore,
}

impl Handler for Colluder {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        if let Request::GetBackwardProof { chain, from, to, with_payload } = request {
            return Response::BackwardProof(
                store::prove_backward(&self.store, &chain, from, to, with_payload).unwrap(),
            );
        }
        let Request::GetProofs { queries, with_payload, .. } = request else {
            return Response::Error(chainiac_proto::ErrorReply::new(
                chainiac_proto::ErrorCode::Internal,
                "only proofs",
            ));
        };
        let prove = |q: &chainiac_proto::ProofQuery| {
            let head = self.store.head(&q.chain).unwrap().unwrap().index;
            Ok(store::prove(&self.store, &q.chain, q.from, q.to.unwrap_or(head), with_payload).unwrap())
        };
        Response::Proofs(queries.iter().map(prove).collect())
    }
    fn refused(&self, _: &str) {}
}

/// Serves the colluders' `store` at `address` with the first witness key (every roster
/// entry points there) and opens a client anchored at `first`, its state in the returned
/// folder.
fn client_of_colluders(
    store: MemoryStore,
    key: &SecretKey,
    address: SocketAddr,
    first: &Block,
) -> (tempfile::TempDir, Client) {
    let endpoint = chainiac_proto::endpoint::server(key, address).unwrap();
    tokio::spawn(chainiac_proto::server::serve(Arc::new(Colluder { store }), endpoint, &[FrameClass::Query]));
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    client.anchor(first).unwrap();
    (dir, client)
}

fn free_udp_address() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_signed_by_a_rotated_away_key_is_refused() {
    let witness_keys: Vec<SecretKey> = (40..44).map(key).collect();
    let address = free_udp_address();
    let (store, first, chain, head) = chain(&witness_keys, &address.to_string(), OLD_DEVELOPER);
    assert_eq!(head, 3);

    // Online: every roster entry points at the colluder, which holds the first key.
    let bundle = Bundle {
        genesis: first.clone(),
        proof: store::prove(&store, &chain, 0, head, true).unwrap(),
        timeline: None,
        after: NO_PROOF,
    };
    let (dir, mut client) = client_of_colluders(store, &witness_keys[0], address, &first);
    match client.update(chain).await {
        Err(ClientError::Release(reason)) => {
            assert!(reason.contains("not a developer key of the policy in force"), "{reason}");
            assert!(reason.contains(&key(OLD_DEVELOPER).public_key().to_string()), "{reason}");
        }
        other => panic!("a release by a rotated-away key must be refused, got {other:?}"),
    }
    assert_eq!(client.state().chains[&chain].index(), 0, "nothing was saved");
    drop(client);
    let reopened = Client::open(&dir.path().join("c.state"), TrustLevel::default()).unwrap();
    assert_eq!(reopened.state().chains[&chain].index(), 0);

    // Offline: the same release in a bundle.
    match Bundle::from_bytes(&bundle.to_bytes()).unwrap().verify(&chain, None, &TrustLevel::default()) {
        Err(ClientError::Release(reason)) => assert!(reason.contains("not a developer key"), "{reason}"),
        other => panic!("the bundle must be refused, got {other:?}"),
    }
}

/// Found by review: a release a client reaches through a rebuild summary at the head (it
/// skipped the release block) is checked like a head release. A colluding committee signs
/// a release by a key that is no developer's and a summary naming it: the client refuses
/// the chain's update and keeps its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_release_named_by_a_rebuild_summary_is_refused() {
    let witness_keys: Vec<SecretKey> = (40..44).map(key).collect();
    let address = free_udp_address();
    let (store, first, chain, head) = colluders_chain(
        &witness_keys,
        &address.to_string(),
        KIND_RELEASE,
        policy(OLD_DEVELOPER).to_bytes(),
        |_, now| {
            let forged = release("1.0", 7, now);
            let manifest = ReleasePayload::from_bytes(&forged.payload).unwrap().manifest.id();
            let summary = KeyedRebuildSummary { release: 1, manifest, records: Vec::new() };
            let summary = Proposal {
                // The encoding before 2026-12-02 (kind 7), which clients still read.
                kind: KIND_REBUILD_SUMMARY_UNNAMED,
                payload: summary.to_bytes(),
                timestamp_ms: now,
                ..Proposal::default()
            };
            vec![forged, summary]
        },
    );
    assert_eq!(head, 2);
    let (_dir, mut client) = client_of_colluders(store, &witness_keys[0], address, &first);
    match client.update(chain).await {
        Err(ClientError::Release(reason)) => {
            assert!(reason.contains("the release the rebuild summary at the head names"), "{reason}");
            assert!(reason.contains("not a developer key of the policy in force"), "{reason}");
        }
        other => panic!("a forged release must be refused, got {other:?}"),
    }
    assert_eq!(client.state().chains[&chain].index(), 0, "nothing was saved");
    assert!(client.state().chains[&chain].release.is_none());
}

#[test]
fn the_same_chain_signed_by_the_new_key_is_accepted() {
    let witness_keys: Vec<SecretKey> = (40..44).map(key).collect();
    let (store, first, chain, head) = chain(&witness_keys, "127.0.0.1:1", NEW_DEVELOPER);
    let bundle = Bundle {
        genesis: first,
        proof: store::prove(&store, &chain, 0, head, true).unwrap(),
        timeline: None,
        after: NO_PROOF,
    };
    let checked = bundle.verify(&chain, None, &TrustLevel::default()).unwrap();
    assert_eq!(checked.index, head);
    assert_eq!(checked.release.manifest.version, "1.1");
    assert_eq!(ChainState::genesis(&bundle.genesis).unwrap().chain, chain);
}

/// A chain whose genesis names no release policy (a raw chain, no root keys): the colluding
/// committee gives it a release policy with its own developer key and signs a release under
/// it. A chain never becomes a release chain after its genesis, so the client refuses it.
#[test]
fn a_chain_that_is_not_a_release_chain_cannot_become_one() {
    let witness_keys: Vec<SecretKey> = (40..44).map(key).collect();
    let (store, first, chain, head) = colluders_chain(&witness_keys, "127.0.0.1:1", 0, b"raw".to_vec(), |_, now| {
        let takeover = Proposal {
            kind: 0,
            policy: Some(policy(NEW_DEVELOPER).to_bytes()),
            timestamp_ms: now,
            ..Proposal::default()
        };
        vec![takeover, release("1.0", NEW_DEVELOPER, now)]
    });
    let bundle = Bundle {
        genesis: first,
        proof: store::prove(&store, &chain, 0, head, true).unwrap(),
        timeline: None,
        after: NO_PROOF,
    };
    match bundle.verify(&chain, None, &TrustLevel::default()) {
        Err(ClientError::Release(reason)) => assert!(reason.contains("cannot take one"), "{reason}"),
        other => panic!("a raw chain turned release chain must be refused, got {other:?}"),
    }
}

/// The colluding committee rotates the developer key on its own (no root signature, or a
/// signature by a key that is not a root key) and signs a release by its own developer
/// key: the client re-checks every policy change on the way with the policy's root keys,
/// so it refuses the update online and the bundle offline, naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_the_root_keys_did_not_sign_is_refused() {
    let witness_keys: Vec<SecretKey> = (40..44).map(key).collect();
    for rotators in [vec![], vec![OLD_DEVELOPER]] {
        let address = free_udp_address();
        let (store, first, chain, head) =
            chain_rotated_by(&witness_keys, &address.to_string(), NEW_DEVELOPER, &rotators);
        let bundle = Bundle {
            genesis: first.clone(),
            proof: store::prove(&store, &chain, 0, head, true).unwrap(),
            timeline: None,
            after: NO_PROOF,
        };
        let (_dir, mut client) = client_of_colluders(store, &witness_keys[0], address, &first);
        match client.update(chain).await {
            Err(ClientError::NoHonestWitness(tries)) => {
                // The colluder's answer (the other members share its address, not its key).
                assert!(tries.iter().any(|(_, why)| why.contains("changes the policy without authority")), "{tries:?}");
            }
            other => panic!("a policy change without the root keys must be refused, got {other:?}"),
        }
        assert_eq!(client.state().chains[&chain].index(), 0, "nothing was saved");
        match Bundle::from_bytes(&bundle.to_bytes()).unwrap().verify(&chain, None, &TrustLevel::default()) {
            Err(ClientError::Release(reason)) => assert!(reason.contains("without authority"), "{reason}"),
            other => panic!("the bundle must be refused, got {other:?}"),
        }
    }
}
