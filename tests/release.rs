//! Release chains on real witness processes: every release rule enforced by the cothority,
//! and a developer-key rotation a client sees when it catches up. (Attestations here are
//! signed with test verifier keys; real rebuilds by verifier daemons are tested with the
//! verifier.)

mod common;

use chainiac_cosi::SecretKey;
use chainiac_proto::{ErrorCode, Request, Response};
use chainiac_release::model::RootSignature;
use chainiac_release::*;
use chainiac_skipchain::{genesis, ChainId, ChainParams, ChainState, Committee, Proposal};
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
                        isolation: chainiac_release::BuildIsolation::Namespaces,
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
        verifiers: vec![
            VerifierEntry { key: v1.public_key(), address: "127.0.0.1:1".into() },
            VerifierEntry { key: v2.public_key(), address: "127.0.0.1:2".into() },
        ],
        verifier_threshold: 2,
        require_isolation: false,
        max_age_ms: 3_600_000,
        version: 0,
        yanked: Vec::new(),
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
    rotated.version = 1;
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
    let reached = proof.verify(&ChainState::genesis(&first).unwrap(), &chainiac_release::policy_rule).unwrap();
    assert_eq!(reached.state.id, last.id());
    assert_eq!(reached.checkpoints, vec![rotation.header.index]);
    assert_eq!(Policy::from_bytes(&reached.state.policy).unwrap(), rotated);
    let payload = ReleasePayload::from_bytes(reached.payload.as_ref().unwrap()).unwrap();
    assert_eq!(payload.manifest.version, "1.2");
}

const HELLO_C: &str = "#include <stdio.h>\nint main(void) { printf(\"hello from a verified build\\n\"); return 0; }\n";
const MAKEFILE: &str = "hello: hello.c\n\tgcc -O2 -ffile-prefix-map=$(CURDIR)=. -o hello hello.c\n";

/// A source archive with fixed metadata, as a reproducible release ships.
fn source_archive(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data.as_bytes()).unwrap();
    }
    builder.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifiers_rebuild_submitted_releases_and_only_reproduced_ones_are_appended() {
    let cluster = Cluster::start_with(4, 0).await;
    let root = tempfile::tempdir().unwrap();
    // The verifiers take build jobs from the witnesses and from the release manager.
    let manager = key(20);
    let mut callers: Vec<_> = cluster.witnesses.iter().map(|w| w.key).collect();
    callers.push(manager.public_key());
    // Verifier 2 is broken: no build fits its time limit of 0 s, so it keeps disagreeing.
    let mut verifiers: Vec<common::VerifierProcess> = (0..3)
        .map(|i| {
            let limit = if i == 2 { 0 } else { 60 };
            common::VerifierProcess::init_with(&root.path().join(format!("v{i}")), limit, &callers)
        })
        .collect();
    let (d1, d2) = (key(1), key(2));
    let policy = Policy {
        project: "hello".into(),
        developers: vec![d1.public_key(), d2.public_key()],
        release_threshold: 2,
        root_keys: vec![key(10).public_key()],
        root_threshold: 1,
        verifiers: verifiers.iter().map(|v| VerifierEntry { key: v.key, address: v.address.clone() }).collect(),
        verifier_threshold: 2,
        require_isolation: false,
        max_age_ms: 3_600_000,
        version: 0,
        yanked: Vec::new(),
    };
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let first =
        genesis(ChainParams::new(2, 24).unwrap(), committee, policy.to_bytes(), KIND_RELEASE, vec![], common::now_ms());
    let Ok(Response::Created { chain }) =
        cluster.client.call(&cluster.witnesses[0], Request::CreateChain { genesis: first.clone() }).await
    else {
        panic!("release chain not created")
    };
    // Each verifier's operator agrees to build for this chain.
    for v in &mut verifiers {
        v.allow(&["--chain", &chain.to_hex()]);
        v.start();
    }
    for v in &verifiers {
        v.wait_ready(&cluster.client).await;
    }

    // The release manager builds locally to learn what the artifact must be.
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("hello.c"), HELLO_C).unwrap();
    std::fs::write(local.path().join("Makefile"), MAKEFILE).unwrap();
    let built = std::process::Command::new("make")
        .current_dir(local.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(built.status.success());
    let binary = std::fs::read(local.path().join("hello")).unwrap();
    let source = source_archive(&[("hello-1.0/Makefile", MAKEFILE), ("hello-1.0/hello.c", HELLO_C)]);
    let manifest = Manifest {
        project: "hello".into(),
        version: "1.0".into(),
        source: SourceArchive { name: "hello-1.0.tar".into(), sha3: content_hash(&source), size: source.len() as u64 },
        recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: "hello-1.0".into() },
        artifacts: vec![Artifact {
            path: "hello-1.0/hello".into(),
            sha3: content_hash(&binary),
            size: binary.len() as u64,
        }],
        time_ms: common::now_ms(),
    };
    let id = manifest.id();
    let submit = |manifest: Manifest, source: Vec<u8>| {
        let cluster = &cluster;
        let signatures =
            vec![DeveloperSignature::sign(&d1, &manifest.id()), DeveloperSignature::sign(&d2, &manifest.id())];
        async move {
            cluster
                .client
                .call(
                    &cluster.witnesses[2],
                    Request::SubmitRelease { chain, manifest, developer_signatures: signatures, source },
                )
                .await
        }
    };
    let Ok(Response::Appended { block }) = submit(manifest.clone(), source.clone()).await else {
        panic!("not appended")
    };
    let payload = ReleasePayload::from_bytes(&block.payload).unwrap();
    assert_eq!(payload.attestations.len(), 3, "every attestation is kept with the release, agreeing or not");
    assert!(payload.attestations[..2].iter().all(|a| a.body.outcome == Outcome::Reproduced && a.verify()));
    assert!(
        matches!(&payload.attestations[2].body.outcome, Outcome::Failed { reason } if reason.contains("time limit"))
    );
    // Operators see the broken verifier.
    let Ok(Response::Tracker(report)) = cluster.client.call(&cluster.witnesses[1], Request::GetTracker { chain }).await
    else {
        panic!("no tracker report")
    };
    let row = |v: &common::VerifierProcess| report.records.iter().find(|r| r.key == v.key).unwrap().clone();
    assert_eq!((row(&verifiers[0]).agreed, row(&verifiers[0]).disagreed), (1, 0));
    assert_eq!((row(&verifiers[2]).agreed, row(&verifiers[2]).disagreed), (0, 1));
    assert_eq!(report.disputed.len(), 1, "the broken verifier's failure flags the release");
    // The verifier keeps the attestation and the build log; the log goes to those who may
    // build, the attestation to anyone.
    let reply = common::Client::with_key(key(20))
        .call_at(&verifiers[0].address, &verifiers[0].key, Request::GetBuildLog { manifest: id })
        .await;
    let Ok(Response::BuildLog(Some(log))) = reply else { panic!("no build log: {reply:?}") };
    assert!(String::from_utf8_lossy(&log).contains("gcc -O2"), "{}", String::from_utf8_lossy(&log));
    let stranger = &cluster.client;
    let refused =
        stranger.call_at(&verifiers[0].address, &verifiers[0].key, Request::GetBuildLog { manifest: id }).await;
    let reply = refusal(refused.as_ref().unwrap_err());
    assert!(reply.code == ErrorCode::Forbidden && reply.message.contains("build_callers"), "{reply:?}");
    let kept =
        stranger.call_at(&verifiers[0].address, &verifiers[0].key, Request::GetAttestation { manifest: id }).await;
    assert!(matches!(kept, Ok(Response::Attestation(Some(a))) if a.body.outcome == Outcome::Reproduced));
    // A stranger's build job is refused before anything is unpacked or run.
    let mut other = manifest.clone();
    other.version = "1.0-stranger".into();
    let request = Request::Build { manifest: other.clone(), source: source.clone(), chain: None };
    let refused = stranger.call_at(&verifiers[1].address, &verifiers[1].key, request.clone()).await;
    assert_eq!(refusal(refused.as_ref().unwrap_err()).code, ErrorCode::Forbidden);
    // A key the verifier serves must name a chain it builds for: only its operator sends
    // build jobs for none.
    let refused = common::Client::with_key(key(20)).call_at(&verifiers[1].address, &verifiers[1].key, request).await;
    let reply = refusal(refused.as_ref().unwrap_err());
    assert!(reply.code == ErrorCode::Forbidden && reply.message.contains("names the release chain"), "{reply:?}");
    let status = stranger.call_at(&verifiers[1].address, &verifiers[1].key, Request::Status).await;
    let Ok(Response::VerifierStatus(status)) = status else { panic!("no status: {status:?}") };
    assert_eq!((status.builds, status.reproduced, status.refused_requests), (1, 1, 2), "{status:?}");
    assert_eq!(status.isolation, "bubblewrap");
    // Verifier 2's time-limit failure was signed but not kept: it depends on the moment.
    let status = stranger.call_at(&verifiers[2].address, &verifiers[2].key, Request::Status).await;
    let Ok(Response::VerifierStatus(status)) = status else { panic!("no status: {status:?}") };
    assert_eq!((status.builds, status.failed, status.not_kept), (1, 1, 1), "{status:?}");
    let kept =
        stranger.call_at(&verifiers[2].address, &verifiers[2].key, Request::GetAttestation { manifest: id }).await;
    assert!(matches!(kept, Ok(Response::Attestation(None))), "{kept:?}");

    // A stranger cannot borrow the witnesses' standing with the verifiers: anyone may
    // create a chain whose policy names verifier 0 and sign releases for it with their
    // own developer key, but the verifier builds only for the chains its operator listed.
    let intruder = key(30);
    let borrowed = Policy {
        developers: vec![intruder.public_key()],
        release_threshold: 1,
        verifiers: vec![VerifierEntry { key: verifiers[0].key, address: verifiers[0].address.clone() }],
        verifier_threshold: 1,
        require_isolation: false,
        ..policy.clone()
    };
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let theirs = genesis(
        ChainParams::new(2, 24).unwrap(),
        committee,
        borrowed.to_bytes(),
        KIND_RELEASE,
        vec![],
        common::now_ms(),
    );
    let Ok(Response::Created { chain: their_chain }) =
        stranger.call(&cluster.witnesses[0], Request::CreateChain { genesis: theirs }).await
    else {
        panic!("anyone may create a chain")
    };
    let status = |v: &common::VerifierProcess| {
        let (address, key) = (v.address.clone(), v.key);
        async move {
            match stranger.call_at(&address, &key, Request::Status).await {
                Ok(Response::VerifierStatus(s)) => s,
                other => panic!("no status: {other:?}"),
            }
        }
    };
    let before = status(&verifiers[0]).await;
    let mut work = manifest.clone();
    work.version = "1.0-borrowed".into();
    let request = Request::SubmitRelease {
        chain: their_chain,
        developer_signatures: vec![DeveloperSignature::sign(&intruder, &work.id())],
        manifest: work,
        source: source.clone(),
    };
    let refused = stranger.call(&cluster.witnesses[3], request).await.unwrap_err();
    assert_eq!(refusal(&refused).code, ErrorCode::Refused, "{refused}");
    let after = status(&verifiers[0]).await;
    assert_eq!(after.builds, before.builds, "nothing was built for the stranger's chain");
    assert_eq!(after.refused_requests, before.refused_requests + 1, "the witness's Build was refused");

    // A build that embeds the time: both verifiers report a mismatch naming the artifact;
    // the witnesses refuse and nothing is appended.
    let stamped = "hello: hello.c\n\tgcc -O2 -DSTAMP='\"'$$(date +%s%N)'\"' -o hello hello.c\n";
    let stamped_c = "#include <stdio.h>\nint main(void) { puts(\"built at \" STAMP); return 0; }\n";
    let source = source_archive(&[("hello-1.1/Makefile", stamped), ("hello-1.1/hello.c", stamped_c)]);
    let mut unreproducible = manifest.clone();
    unreproducible.version = "1.1".into();
    unreproducible.source.sha3 = content_hash(&source);
    unreproducible.source.size = source.len() as u64;
    unreproducible.recipe.workdir = "hello-1.1".into();
    unreproducible.artifacts[0].path = "hello-1.1/hello".into();
    let head_before = cluster.head(0, chain).await;
    let artifact = &unreproducible.artifacts[0];
    let expected = format!("the manifest's {}…, {} bytes", hex::encode(&artifact.sha3[..8]), artifact.size);
    let unreproducible_id = unreproducible.id();
    let refused = submit(unreproducible, source).await.unwrap_err();
    let reply = refusal(&refused);
    assert_eq!(reply.code, ErrorCode::Refused);
    // Each verifier's hash and size, beside the manifest's: two machines that agree with
    // each other and not with the manifest point at the release manager's build.
    assert!(
        reply.message.contains("reproduced the build")
            && reply.message.matches("hello-1.1/hello (sha3 ").count() == 2
            && reply.message.matches(&expected).count() == 2,
        "{}",
        reply.message
    );
    assert_eq!(cluster.head(0, chain).await, head_before, "nothing appended");
    // What each verifier built is kept for comparison, for the keys it serves only, and
    // only under the manifest's own artifact paths.
    let get = |path: &str| Request::GetArtifact { manifest: unreproducible_id, path: path.into() };
    let manager = common::Client::with_key(key(20));
    let kept = manager.call_at(&verifiers[0].address, &verifiers[0].key, get("hello-1.1/hello")).await;
    assert!(matches!(&kept, Ok(Response::Artifact(Some(bytes))) if bytes.starts_with(b"\x7fELF")), "{kept:?}");
    for path in ["../../node.key", "/etc/passwd", "hello-1.1/hello.c/.."] {
        let none = manager.call_at(&verifiers[0].address, &verifiers[0].key, get(path)).await;
        assert!(matches!(none, Ok(Response::Artifact(None))), "{path}: {none:?}");
    }
    let refused = stranger.call_at(&verifiers[0].address, &verifiers[0].key, get("hello-1.1/hello")).await;
    assert_eq!(refusal(refused.as_ref().unwrap_err()).code, ErrorCode::Forbidden);
    // The verifiers stay up.
    for v in &verifiers {
        v.wait_ready(&cluster.client).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_manager_works_from_the_shell() {
    use std::process::Command;
    let cluster = Cluster::start_with(4, 0).await;
    let root = tempfile::tempdir().unwrap();
    let mut verifiers: Vec<common::VerifierProcess> =
        (0..2).map(|i| common::VerifierProcess::init(&root.path().join(format!("v{i}")), &[])).collect();
    let path = |name: &str| root.path().join(name).to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(common::bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json = |out: String| serde_json::from_str::<serde_json::Value>(&out).unwrap();
    // Developer 0 has a fresh chainiac key; developer 1 signs with the passphrase-protected
    // OpenSSH ed25519 key they already have (an `ssh-keygen` fixture).
    let dev0 = json(run(&["keygen", "--out", &path("dev0.key"), "--json"]))["public_key"].as_str().unwrap().to_string();
    let ssh_key = path("id_ed25519");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../witness/tests/data/openssh_ed25519_protected"), &ssh_key)
        .unwrap();
    std::fs::set_permissions(&ssh_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let locked = Command::new(common::bin())
        .args(["keygen", "--from-openssh", &ssh_key, "--out", &path("dev1-copy.key")])
        .env_remove("CHAINIAC_SSH_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(locked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&locked.stderr).contains("CHAINIAC_SSH_PASSPHRASE"));
    let run_ssh = |args: &[&str]| {
        let out =
            Command::new(common::bin()).args(args).env("CHAINIAC_SSH_PASSPHRASE", "correct horse").output().unwrap();
        assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let converted = json(run_ssh(&["keygen", "--from-openssh", &ssh_key, "--out", &path("dev1-copy.key"), "--json"]));
    let developers = [dev0, converted["public_key"].as_str().unwrap().to_string()];
    let root_key =
        json(run(&["keygen", "--out", &path("root.key"), "--json"]))["public_key"].as_str().unwrap().to_string();
    let mut roster = String::new();
    for w in &cluster.witnesses {
        roster += &std::fs::read_to_string(w.dir.join("member.toml")).unwrap();
    }
    std::fs::write(path("roster.toml"), roster).unwrap();
    std::fs::write(path("policy.toml"), policy_toml(&developers, &root_key, &verifiers)).unwrap();
    let created = json(run(&[
        "project",
        "init",
        "--roster",
        &path("roster.toml"),
        "--policy",
        &path("policy.toml"),
        "--out",
        &path("project.genesis"),
        "--json",
    ]));
    let chain = created["chain"].as_str().unwrap().to_string();
    // The verifiers' operators let the cothority's witnesses send build jobs for it.
    for v in &mut verifiers {
        let config = v.dir.join("verifier.toml");
        let config = config.to_str().unwrap();
        // ... and developer 0, who reads the build logs.
        let roster = path("roster.toml");
        let added = run(&[
            "verifier",
            "allow",
            "--config",
            config,
            "--roster",
            &roster,
            "--chain",
            &chain,
            "--key",
            &developers[0],
        ]);
        assert!(added.starts_with("5 key(s) added to build_callers (5 in all) and 1 chain(s)"), "{added}");
        v.start();
    }
    for v in &verifiers {
        v.wait_ready(&cluster.client).await;
    }
    let status = json(run(&[
        "verifier",
        "status",
        "--address",
        &verifiers[0].address,
        "--key",
        &verifiers[0].key.to_string(),
        "--json",
    ]));
    assert_eq!((status["isolation"].as_str(), status["builds"].as_u64()), (Some("bubblewrap"), Some(0)), "{status}");

    // Build locally, pack, prepare, sign twice, submit.
    let source = source_archive(&[("hello-1.0/Makefile", MAKEFILE), ("hello-1.0/hello.c", HELLO_C)]);
    std::fs::write(path("hello-1.0.tar"), &source).unwrap();
    let build = root.path().join("build");
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(build.join("hello.c"), HELLO_C).unwrap();
    std::fs::write(build.join("Makefile"), MAKEFILE).unwrap();
    assert!(Command::new("make")
        .current_dir(&build)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .status()
        .unwrap()
        .success());
    let binary = build.join("hello").to_str().unwrap().to_string();
    // A source no verifier reads is refused by `prepare`, before anything is signed.
    let not_an_archive = build.join("Makefile");
    let refused = Command::new(common::bin())
        .args(["release", "prepare", "--project", "hello", "--version", "1.0", "--source"])
        .arg(&not_an_archive)
        .args(["--workdir", "hello-1.0", "--artifact", &format!("hello-1.0/hello={binary}")])
        .args(["--out", &path("never.manifest"), "--", "make"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("tar, tar.gz, tar.xz, tar.bz2, tar.zst, zip"), "{stderr}");
    assert!(!std::path::Path::new(&path("never.manifest")).exists());
    let prepared = json(run(&[
        "release",
        "prepare",
        "--project",
        "hello",
        "--version",
        "1.0",
        "--source",
        &path("hello-1.0.tar"),
        "--workdir",
        "hello-1.0",
        "--artifact",
        &format!("hello-1.0/hello={binary}"),
        "--out",
        &path("hello.manifest"),
        "--json",
        "--",
        "make",
    ]));
    assert_eq!(prepared["version"], "1.0");
    assert_eq!(prepared["manifest"].as_str().unwrap().len(), 64);
    for key in [path("dev0.key"), ssh_key.clone()] {
        run_ssh(&[
            "release",
            "sign",
            "--manifest",
            &path("hello.manifest"),
            "--key",
            &key,
            "--signatures",
            &path("hello.sigs"),
        ]);
    }
    let w = &cluster.witnesses[2];
    let submitted = {
        let args = submit_args(&chain, &path("hello.manifest"), &path("hello.sigs"), &path("hello-1.0.tar"), w);
        json(run(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    assert_eq!(submitted["index"], 1);
    // Each verifier's outcome and build log, for a key the verifiers serve; a key they do
    // not serve gets the outcome (public) and is told why there is no log.
    let logs_dir = path("logs");
    let logs = |key: &str| {
        let args = ["release", "logs", "--manifest", &path("hello.manifest"), "--policy", &path("policy.toml")];
        json(run(&[&args[..], &["--key", key, "--out-dir", &logs_dir, "--json"]].concat()))
    };
    let served = logs(&path("dev0.key"));
    for row in served["verifiers"].as_array().unwrap() {
        assert_eq!(row["outcome"], "reproduced", "{served}");
        let log = std::fs::read_to_string(row["log"].as_str().unwrap()).unwrap();
        assert!(log.contains("gcc"), "{log}");
    }
    let refused = logs(&path("root.key"));
    for row in refused["verifiers"].as_array().unwrap() {
        assert!(row["log"].is_null() && row["note"].as_str().unwrap().contains("build_callers"), "{refused}");
        assert_eq!(row["outcome"], "reproduced", "{refused}");
    }

    // A release whose manifest names the wrong file as its artifact: the verifiers' builds
    // differ, the submission is refused, and `release logs --compare` fetches each
    // verifier's copy and names the first byte where it differs from the local file.
    let wrong = build.join("Makefile").to_str().unwrap().to_string();
    let source_11 = source_archive(&[("hello-1.1/Makefile", MAKEFILE), ("hello-1.1/hello.c", HELLO_C)]);
    std::fs::write(path("hello-1.1.tar"), &source_11).unwrap();
    let prepare_11 =
        ["release", "prepare", "--project", "hello", "--version", "1.1", "--source", &path("hello-1.1.tar")];
    let artifact_11 = format!("hello-1.1/hello={wrong}");
    let rest =
        ["--workdir", "hello-1.1", "--artifact", &artifact_11, "--out", &path("hello-1.1.manifest"), "--", "make"];
    run(&[&prepare_11[..], &rest[..]].concat());
    for key in [path("dev0.key"), ssh_key.clone()] {
        let signatures = path("hello-1.1.sigs");
        run_ssh(&[
            "release",
            "sign",
            "--manifest",
            &path("hello-1.1.manifest"),
            "--key",
            &key,
            "--signatures",
            &signatures,
        ]);
    }
    let args = submit_args(&chain, &path("hello-1.1.manifest"), &path("hello-1.1.sigs"), &path("hello-1.1.tar"), w);
    let refused = Command::new(common::bin()).args(&args).output().unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("reproduced the build"));
    let compared = json(run(&[
        "release",
        "logs",
        "--manifest",
        &path("hello-1.1.manifest"),
        "--policy",
        &path("policy.toml"),
        "--key",
        &path("dev0.key"),
        "--out-dir",
        &logs_dir,
        "--compare",
        &artifact_11,
        "--json",
    ]));
    for row in compared["verifiers"].as_array().unwrap() {
        assert!(row["outcome"].as_str().unwrap().starts_with("mismatch: hello-1.1/hello"), "{compared}");
        let difference = row["differences"][0].as_str().unwrap();
        assert!(difference.starts_with("hello-1.1/hello: first difference at byte 0"), "{compared}");
        let theirs = difference.rsplit("theirs is ").next().unwrap();
        assert!(std::fs::read(theirs).unwrap().starts_with(b"\x7fELF"), "the verifier's copy is written: {theirs}");
    }

    // A client, from the shell too.
    let state = path("client.state");
    run(&["anchor", "--state", &state, &path("project.genesis")]);
    let update = json(run(&["update", "--state", &state, "--chain", &chain, "--json"]));
    assert_eq!(update["release"]["version"], "1.0");
    let verified = json(run(&[
        "verify",
        "--state",
        &state,
        "--chain",
        &chain,
        "--artifact",
        "hello-1.0/hello",
        &binary,
        "--json",
    ]));
    assert_eq!(verified["verified"], true);

    // Operators see verifier agreement; root keys rotate a developer key.
    let shown = json(run(&["project", "show", "--state", &state, "--chain", &chain, "--json"]));
    assert_eq!(shown["release"], "1.0");
    let tracked = shown["tracker"].as_array().unwrap();
    assert_eq!(tracked.len(), 2);
    assert!(tracked.iter().all(|v| v["role"] == "verifier" && v["agreed"] == 1 && v["disagreed"] == 0));
    let new_developer =
        json(run(&["keygen", "--out", &path("dev2.key"), "--json"]))["public_key"].as_str().unwrap().to_string();
    let rotated = std::fs::read_to_string(path("policy.toml")).unwrap().replace(&developers[0], &new_developer);
    std::fs::write(path("policy2.toml"), rotated).unwrap();
    let args = ["policy", "rotate", "--state", &state, "--chain", &chain, "--policy", &path("policy2.toml")];
    let rotation = json(run(&[&args[..], &["--key", &path("root.key"), "--json"]].concat()));
    assert_eq!(rotation["index"], 2);
    let shown = json(run(&["project", "show", "--state", &state, "--chain", &chain, "--json"]));
    let listed = shown["developers"].as_array().unwrap();
    assert!(listed.contains(&serde_json::json!(new_developer)));
    assert!(!listed.contains(&serde_json::json!(developers[0])));
    let key = w.key.to_string();
    let blocks =
        json(run(&["chain", "show", "--chain", &chain, "--witness", &w.address, "--witness-key", &key, "--json"]));
    let blocks = blocks.as_array().unwrap();
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[2]["policy_change"], true, "the rotation is marked as a checkpoint");
    assert_eq!(blocks[2]["links_to"], serde_json::json!([1, 0]));
    assert_eq!(blocks[1]["policy_change"], false);
}

/// `chainiac release submit` of a manifest, its signatures and source to witness `w`, JSON out.
fn submit_args<'a>(
    chain: &'a str,
    manifest: &'a str,
    signatures: &'a str,
    source: &'a str,
    w: &'a common::WitnessProcess,
) -> Vec<String> {
    let mut args: Vec<String> =
        ["release", "submit", "--chain", chain, "--manifest", manifest, "--signatures", signatures]
            .map(String::from)
            .to_vec();
    args.extend(
        ["--source", source, "--witness", &w.address, "--witness-key", &w.key.to_string(), "--json"].map(String::from),
    );
    args
}

/// README's `policy.toml` for project hello: both developers sign, both verifiers reproduce
/// in their sandboxes.
fn policy_toml(developers: &[String], root_key: &str, verifiers: &[common::VerifierProcess]) -> String {
    let mut policy = format!(
        "project = \"hello\"\ndevelopers = [\"{}\", \"{}\"]\nrelease_threshold = 2\nroot_keys = [\"{root_key}\"]\nroot_threshold = 1\nverifier_threshold = 2\nrequire_isolation = true\nmax_age_ms = 86400000\n",
        developers[0], developers[1]
    );
    for v in verifiers {
        policy += &format!("\n[[verifier]]\nkey = \"{}\"\naddress = \"{}\"\n", v.key, v.address);
    }
    policy
}

/// The release manager, as README's worked example goes: GNU hello 2.10 from
/// `../shared/data/sources`, prepared with `--build` (in the verifiers' sandbox, at their
/// path, with SOURCE_DATE_EPOCH from the archive fixed first; no touch step, no prefix
/// map), signed by two developers, and reproduced bit for bit by two verifiers with
/// different data folders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gnu_hello_is_released_from_a_build_in_the_verifiers_sandbox() {
    use std::process::Command;
    let tarball = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/sources/hello-2.10.tar.gz");
    if !tarball.exists() {
        println!("SKIPPED: {} is not on this machine", tarball.display());
        return;
    }
    let cluster = Cluster::start_with(4, 0).await;
    let root = tempfile::tempdir().unwrap();
    let path = |name: &str| root.path().join(name).to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(common::bin()).args(args).current_dir(root.path()).output().unwrap();
        assert!(out.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json = |out: String| serde_json::from_str::<serde_json::Value>(&out).unwrap();
    std::fs::copy(&tarball, path("hello-2.10.tar.gz")).unwrap();
    let mut roster = String::new();
    for w in &cluster.witnesses {
        roster += &std::fs::read_to_string(w.dir.join("member.toml")).unwrap();
    }
    std::fs::write(path("roster.toml"), roster).unwrap();
    let mut verifiers: Vec<common::VerifierProcess> =
        (0..2).map(|i| common::VerifierProcess::init(&root.path().join(format!("v{i}")), &[])).collect();
    let key = |name: &str| json(run(&["keygen", "--out", name, "--json"]))["public_key"].as_str().unwrap().to_string();
    let (dev1, dev2, root_key) = (key("dev1.key"), key("dev2.key"), key("root.key"));
    std::fs::write(path("policy.toml"), policy_toml(&[dev1, dev2], &root_key, &verifiers)).unwrap();
    let created = json(run(&[
        "project",
        "init",
        "--roster",
        "roster.toml",
        "--policy",
        "policy.toml",
        "--out",
        "project.genesis",
        "--json",
    ]));
    let chain = created["chain"].as_str().unwrap().to_string();
    // Each verifier's operator serves the cothority's witnesses, for this chain.
    for v in &mut verifiers {
        v.allow(&["--roster", &path("roster.toml"), "--chain", &chain]);
        v.start();
    }
    for v in &verifiers {
        v.wait_ready(&cluster.client).await;
    }

    let prepare = ["release", "prepare", "--project", "hello", "--version", "2.10", "--source", "hello-2.10.tar.gz"];
    let artifact = ["--workdir", "hello-2.10", "--artifact", "hello-2.10/hello", "--build", "--out", "hello.manifest"];
    // One quoted string is no command a verifier can run: refused, with the fix.
    let refused = Command::new(common::bin())
        .args(prepare)
        .args(artifact)
        .args(["--", "./configure && make"])
        .current_dir(root.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.status.code() == Some(2) && stderr.contains("sh -c"), "{stderr}");
    let prepared =
        json(run(&[&prepare[..], &artifact[..], &["--json", "--", "sh", "-c", "./configure && make"]].concat()));
    // The archive's newest file time (2014-11-16), not the moment of preparing.
    let epoch = prepared["source_date_epoch"].as_u64().unwrap();
    assert!((1_416_000_000..1_416_300_000).contains(&epoch), "{prepared}");
    assert!(prepared["artifacts"][0]["size"].as_u64().unwrap() > 10_000, "{prepared}");
    let log = std::fs::read_to_string(path("hello.manifest.build.log")).unwrap();
    assert!(log.contains("checking for gcc"), "the local build's log is kept beside the manifest");
    for key in ["dev1.key", "dev2.key"] {
        run(&["release", "sign", "--manifest", "hello.manifest", "--key", key, "--signatures", "hello.sigs"]);
    }
    let w = &cluster.witnesses[1];
    let submitted = {
        let args = submit_args(&chain, "hello.manifest", "hello.sigs", "hello-2.10.tar.gz", w);
        json(run(&args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    assert_eq!(submitted["index"], 1, "{submitted}");
    let Ok(Response::Block(Some(block))) = cluster
        .client
        .call(&cluster.witnesses[0], Request::GetBlock { chain: ChainId::from_hex(&chain).unwrap(), index: 1 })
        .await
    else {
        panic!("no release block")
    };
    let payload = ReleasePayload::from_bytes(&block.payload).unwrap();
    assert_eq!(payload.attestations.len(), 2);
    assert!(payload.attestations.iter().all(|a| a.body.outcome == Outcome::Reproduced), "{:?}", payload.attestations);
}

/// `release prepare --build` works for a release manager without root, in the same
/// sandbox, and gets the same bytes as root does (a root build drops to uid 65534 before
/// bubblewrap; an unprivileged one enters a user namespace itself). Run as root, the test
/// runs the second prepare as uid 65534.
#[test]
fn prepare_builds_the_same_bytes_as_root_and_as_an_unprivileged_user() {
    use std::process::Command;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let source = source_archive(&[("hello-1.0/Makefile", MAKEFILE), ("hello-1.0/hello.c", HELLO_C)]);
    std::fs::write(dir.join("hello-1.0.tar"), &source).unwrap();
    let as_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    if as_root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let reachable = Command::new(nobody[0]).args(&nobody[1..]).arg(common::bin()).arg("--version").output();
        if !reachable.is_ok_and(|o| o.status.success()) {
            let bin = common::bin();
            println!("SKIPPED: uid 65534 cannot run {} (a directory above it is not searchable)", bin.display());
            return;
        }
    }
    let prepare = |out: &str, unprivileged: bool| {
        let mut command = if unprivileged && as_root {
            let mut c = Command::new(nobody[0]);
            c.args(&nobody[1..]).arg(common::bin()).env("HOME", dir).env("TMPDIR", dir);
            c
        } else {
            Command::new(common::bin())
        };
        let output = command
            .args(["release", "prepare", "--project", "hello", "--version", "1.0", "--source", "hello-1.0.tar"])
            .args(["--workdir", "hello-1.0", "--artifact", "hello-1.0/hello", "--build", "--out", out, "--json"])
            .args(["--", "make"])
            .current_dir(dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
    };
    let (ok, first, stderr) = prepare("root.manifest", false);
    assert!(ok, "{stderr}");
    let (ok, second, stderr) = prepare("user.manifest", true);
    if !ok && stderr.contains("does not run here") {
        println!("SKIPPED: bubblewrap does not run unprivileged on this machine: {stderr}");
        return;
    }
    assert!(ok, "as uid 65534: {stderr}");
    let artifacts = |out: &str| serde_json::from_str::<serde_json::Value>(out).unwrap()["artifacts"].clone();
    assert_eq!(artifacts(&first), artifacts(&second), "the same bytes either way");
    assert!(artifacts(&first)[0]["size"].as_u64().unwrap() > 1000);
}

/// `chainiac verifier allow` edits verifier.toml in place — the operator's comments stay —
/// and a running verifier applies it at its next build request, without a restart: a key
/// refused before is served after, and a chain refused before is built for after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifier_allow_keeps_comments_and_applies_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = common::VerifierProcess::init(dir.path(), &[]);
    let path = dir.path().join("verifier.toml");
    let written = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("# operator's note: keep this\n{written}")).unwrap();
    v.start();
    let manager = SecretKey::from_seed(&[77; 32]).public_key();
    let client = common::Client::with_key(SecretKey::from_seed(&[77; 32]));
    v.wait_ready(&client).await;
    let log = Request::GetBuildLog { manifest: ManifestId([0; 32]) };
    let refused = client.call_at(&v.address, &v.key, log.clone()).await.unwrap_err();
    assert_eq!(refusal(&refused).code, ErrorCode::Forbidden, "{}", refusal(&refused).message);
    let chain = ChainId::from_hex(&"ab".repeat(32)).unwrap();
    let source = b"not the archive the manifest names".to_vec();
    let manifest = Manifest {
        project: "hello".into(),
        version: "1.0".into(),
        source: SourceArchive { name: "hello-1.0.tar".into(), sha3: content_hash(b"the archive"), size: 11 },
        recipe: Recipe { argv: vec!["true".into()], env: vec![], workdir: ".".into() },
        artifacts: vec![],
        time_ms: 1_700_000_000_000,
    };
    let build = Request::Build { manifest, source, chain: Some(chain) };

    v.allow(&["--key", &manager.to_string()]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# operator's note: keep this\n"), "{text}");
    assert!(matches!(client.call_at(&v.address, &v.key, log).await, Ok(Response::BuildLog(None))), "served now");
    let refused = client.call_at(&v.address, &v.key, build.clone()).await.unwrap_err();
    assert!(refusal(&refused).message.contains("does not build for chain"), "{}", refusal(&refused).message);

    v.allow(&["--chain", &chain.to_hex()]);
    let refused = client.call_at(&v.address, &v.key, build).await.unwrap_err();
    assert_eq!(refusal(&refused).code, ErrorCode::BadRequest, "built for now: {}", refusal(&refused).message);
    assert!(std::fs::read_to_string(&path).unwrap().contains("# operator's note: keep this"));
    assert!(v.log().contains("read again from"), "{}", v.log());
}
