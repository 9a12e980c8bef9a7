//! Release chains on real witness processes: every release rule enforced by the cothority,
//! and a developer-key rotation a client sees when it catches up. (Attestations here are
//! signed with test verifier keys; real rebuilds by verifier daemons are tested with the
//! verifier.)

mod common;

use chainiac_cosi::SecretKey;
use chainiac_proto::{ErrorCode, Request, Response};
use chainiac_release::model::RootSignature;
use chainiac_release::*;
use chainiac_skipchain::{genesis, ChainParams, ChainState, Committee, Proposal};
use common::{refusal, Cluster};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn manifest(version: &str) -> Manifest {
    Manifest {
        project: "hello".into(),
        version: version.into(),
        source: SourceArchive {
            name: format!("hello-{version}.tar"),
            sha3: content_hash(version.as_bytes()),
            size: 10,
        },
        recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: ".".into() },
        artifacts: vec![Artifact { path: "hello".into(), sha3: content_hash(b"bin"), size: 3 }],
        time_ms: common::now_ms(),
    }
}

fn release(m: Manifest, developers: &[&SecretKey], verifiers: &[(&SecretKey, Outcome)]) -> Proposal {
    let id = m.id();
    let payload = ReleasePayload {
        developer_signatures: developers.iter().map(|d| DeveloperSignature::sign(d, &id)).collect(),
        attestations: verifiers
            .iter()
            .map(|(v, outcome)| {
                Attestation::sign(
                    v,
                    AttestationBody {
                        verifier: v.public_key(),
                        manifest: id,
                        outcome: outcome.clone(),
                        environment: [1; 32],
                        time_ms: common::now_ms(),
                    },
                )
            })
            .collect(),
        manifest: m,
    };
    Proposal { kind: KIND_RELEASE, payload: payload.to_bytes(), ..Proposal::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cothority_enforces_every_release_rule_and_clients_see_key_rotation() {
    let cluster = Cluster::start_with(4, 0).await;
    let (d1, d2, d3, d4) = (key(1), key(2), key(3), key(4));
    let (r1, r2) = (key(10), key(11));
    let (v1, v2) = (key(20), key(21));
    let policy = Policy {
        project: "hello".into(),
        developers: vec![d1.public_key(), d2.public_key(), d3.public_key()],
        release_threshold: 2,
        root_keys: vec![r1.public_key(), r2.public_key()],
        root_threshold: 2,
        verifiers: vec![v1.public_key(), v2.public_key()],
        verifier_threshold: 2,
        max_age_ms: 3_600_000,
    };
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let first =
        genesis(ChainParams::new(2, 24).unwrap(), committee, policy.to_bytes(), KIND_RELEASE, vec![], common::now_ms());
    let Ok(Response::Created { chain }) =
        cluster.client.call(&cluster.witnesses[0], Request::CreateChain { genesis: first.clone() }).await
    else {
        panic!("release chain not created")
    };
    let propose = |proposal: Proposal| {
        let cluster = &cluster;
        async move {
            match cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await {
                Ok(Response::Appended { block }) => Ok(block),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(refusal(&e).clone()),
            }
        }
    };
    let ok = Outcome::Reproduced;
    propose(release(manifest("1.0"), &[&d1, &d2], &[(&v1, ok.clone()), (&v2, ok.clone())])).await.unwrap();

    let refusals = [
        (release(manifest("1.0"), &[&d1, &d2], &[(&v1, ok.clone()), (&v2, ok.clone())]), "already released"),
        (
            release(manifest("1.1"), &[&d1], &[(&v1, ok.clone()), (&v2, ok.clone())]),
            "distinct valid developer signatures",
        ),
        (release(manifest("1.1"), &[&d1, &key(66)], &[(&v1, ok.clone()), (&v2, ok.clone())]), "not a developer key"),
        (
            {
                let mut p = release(manifest("1.1"), &[&d1, &d2], &[(&v1, ok.clone()), (&v2, ok.clone())]);
                let mut payload = ReleasePayload::from_bytes(&p.payload).unwrap();
                payload.developer_signatures[1] = DeveloperSignature::sign(&d2, &manifest("9.9").id());
                p.payload = payload.to_bytes();
                p
            },
            "not valid for this manifest",
        ),
        (
            release(
                manifest("1.1"),
                &[&d1, &d2],
                &[(&v1, ok.clone()), (&v2, Outcome::Failed { reason: "build timed out".into() })],
            ),
            "reproduced the build",
        ),
    ];
    for (proposal, rule) in refusals {
        let reply = propose(proposal).await.unwrap_err();
        assert_eq!(reply.code, ErrorCode::Refused);
        assert!(reply.message.contains(rule), "expected rule {rule:?}, got {}", reply.message);
    }

    // Rotation: the root keys replace developer 1 with developer 4.
    let mut rotated = policy.clone();
    rotated.developers[0] = d4.public_key();
    let (old_bytes, new_bytes) = (policy.to_bytes(), rotated.to_bytes());
    let (old_hash, new_hash) =
        (chainiac_skipchain::block::policy_hash(&old_bytes), chainiac_skipchain::block::policy_hash(&new_bytes));
    let change = PolicyChange {
        root_signatures: vec![
            RootSignature::sign(&r1, &chain.0, &old_hash, &new_hash),
            RootSignature::sign(&r2, &chain.0, &old_hash, &new_hash),
        ],
    };
    let short = PolicyChange { root_signatures: change.root_signatures[..1].to_vec() };
    let refused = propose(Proposal {
        kind: KIND_POLICY_CHANGE,
        payload: short.to_bytes(),
        policy: Some(new_bytes.clone()),
        ..Proposal::default()
    })
    .await
    .unwrap_err();
    assert!(refused.message.contains("root signatures"), "{}", refused.message);
    let rotation = propose(Proposal {
        kind: KIND_POLICY_CHANGE,
        payload: change.to_bytes(),
        policy: Some(new_bytes.clone()),
        ..Proposal::default()
    })
    .await
    .unwrap();

    let old_key = propose(release(manifest("1.2"), &[&d1, &d2], &[(&v1, ok.clone()), (&v2, ok.clone())])).await;
    assert!(old_key.unwrap_err().message.contains("not a developer key"));
    let last = propose(release(manifest("1.2"), &[&d4, &d2], &[(&v1, ok.clone()), (&v2, ok.clone())])).await.unwrap();

    // A client anchored at the genesis catches up, landing on the rotation.
    let request = Request::GetProof { chain, from: 0, to: None, with_payload: true };
    let Ok(Response::Proof(proof)) = cluster.client.call(&cluster.witnesses[3], request).await else { panic!() };
    let reached = proof.verify(&ChainState::genesis(&first).unwrap()).unwrap();
    assert_eq!(reached.state.id, last.id());
    assert_eq!(reached.checkpoints, vec![rotation.header.index]);
    assert_eq!(Policy::from_bytes(&reached.state.policy).unwrap(), rotated);
    let payload = ReleasePayload::from_bytes(reached.payload.as_ref().unwrap()).unwrap();
    assert_eq!(payload.manifest.version, "1.2");
}
