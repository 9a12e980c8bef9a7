//! The client library against real witness processes: catch-up, timeline freshness and
//! inclusion, release re-checks, the client's own bar, artifacts, and a lying witness.

mod common;

use chainiac_client::{Client, ClientError, TrustLevel};
use chainiac_cosi::{PublicKey, SecretKey};
use chainiac_proto::frame::FrameClass;
use chainiac_proto::server::Handler;
use chainiac_proto::{Request, Response};
use chainiac_release::*;
use chainiac_skipchain::timeline::KIND_TIMELINE;
use chainiac_skipchain::{genesis, Block, ChainId, ChainParams, Committee, Proposal};
use common::Cluster;
use std::net::SocketAddr;
use std::sync::Arc;

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

const BINARY: &[u8] = b"\x7fELF pretend this is the hello binary";

fn release(version: &str, verifiers: &[&SecretKey]) -> Proposal {
    let m = Manifest {
        project: "hello".into(),
        version: version.into(),
        source: SourceArchive { name: format!("hello-{version}.tar"), sha3: content_hash(version.as_bytes()), size: 1 },
        recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: ".".into() },
        artifacts: vec![Artifact { path: "hello".into(), sha3: content_hash(BINARY), size: BINARY.len() as u64 }],
        time_ms: common::now_ms(),
    };
    release_of(m, verifiers)
}

/// Manifest `m` signed by developer 1, each of `verifiers` attesting that it reproduced it.
fn release_of(m: Manifest, verifiers: &[&SecretKey]) -> Proposal {
    let id = m.id();
    let payload = ReleasePayload {
        developer_signatures: vec![DeveloperSignature::sign(&key(1), &id)],
        attestations: verifiers
            .iter()
            .map(|v| {
                Attestation::sign(
                    v,
                    AttestationBody {
                        verifier: v.public_key(),
                        manifest: id,
                        outcome: Outcome::Reproduced,
                        environment: [0; 32],
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

/// A folder holding `project.genesis` and `timeline.genesis`.
fn genesis_files(project: &Block, timeline: &Block) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("project.genesis"), project.to_bytes()).unwrap();
    std::fs::write(dir.path().join("timeline.genesis"), timeline.to_bytes()).unwrap();
    dir
}

/// `chainiac anchor` of the timeline and project geneses in `dir` into the client `state`.
fn anchor_both(dir: &std::path::Path, state: &str) {
    for genesis in ["timeline.genesis", "project.genesis"] {
        let file = dir.join(genesis);
        let (code, _, err) = chainiac(&["anchor", "--state", state, file.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
    }
}

/// Runs the `chainiac` binary: exit code, stdout, stderr.
fn chainiac(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(common::bin()).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `chainiac update --json` of `chain_hex` with `state`, which must succeed: its answer.
fn update_json(state: &str, chain_hex: &str) -> serde_json::Value {
    let (code, out, err) = chainiac(&["update", "--state", state, "--chain", chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// An HTTP server on 127.0.0.1 that answers its first request with `answer(arg)` (the
/// bytes as they are, then closes): its URL, ending in `/hello`.
fn answer_once(answer: fn(&str) -> String, arg: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hello", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.read(&mut [0u8; 4096]);
            let _ = stream.write_all(answer(&arg).as_bytes());
        }
    });
    url
}

/// Project hello's policy: developer 1 releases alone, root key 10 changes the policy alone,
/// verifiers 20 and 21 must both reproduce.
fn hello_policy() -> Policy {
    Policy {
        project: "hello".into(),
        developers: vec![key(1).public_key()],
        release_threshold: 1,
        root_keys: vec![key(10).public_key()],
        root_threshold: 1,
        verifiers: [(20, "127.0.0.1:1"), (21, "127.0.0.1:2")]
            .map(|(k, address)| VerifierEntry { key: key(k).public_key(), address: address.into() })
            .to_vec(),
        verifier_threshold: 2,
        require_isolation: false,
        max_age_ms: 60_000,
        version: 0,
        yanked: Vec::new(),
    }
}

/// A timeline and project hello under `policy`, both on witnesses 0–3: (timeline id, its
/// genesis, project chain id, its genesis).
async fn timeline_and_project(cluster: &Cluster, policy: &Policy) -> (ChainId, Block, ChainId, Block) {
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let project_genesis =
        genesis(ChainParams::new(2, 24).unwrap(), committee, policy.to_bytes(), KIND_RELEASE, vec![], common::now_ms());
    let created =
        cluster.client.call(&cluster.witnesses[0], Request::CreateChain { genesis: project_genesis.clone() }).await;
    let Ok(Response::Created { chain }) = created else { panic!("{created:?}") };
    (timeline, timeline_genesis, chain, project_genesis)
}

/// A witness that lies: it holds a real witness's key but serves proofs with one byte changed.
struct Liar {
    honest: Arc<common::Client>,
    honest_address: String,
    honest_key: PublicKey,
}

impl Handler for Liar {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        let answer = self.honest.call_at(&self.honest_address, &self.honest_key, request).await;
        match answer {
            Ok(Response::Proof(mut proof)) if !proof.steps.is_empty() => {
                bend_last_signature(&mut proof);
                Response::Proof(proof)
            }
            Ok(Response::Proofs(mut proofs)) => {
                for proof in proofs.iter_mut().flatten().filter(|p| !p.steps.is_empty()) {
                    bend_last_signature(proof);
                }
                Response::Proofs(proofs)
            }
            Ok(Response::TimelineChanges(mut changes)) => {
                // Hides a move: leaves out the first opened leaf, and bends its prefix so
                // that the client would not look for it.
                if let Some(block) = changes.blocks.iter_mut().find(|b| !b.opened.is_empty()) {
                    let hidden = block.opened.remove(0);
                    let prefix = chainiac_skipchain::timeline::chain_prefix(&hidden.chain);
                    if let Some(p) = block.prefixes.iter_mut().find(|p| **p == prefix) {
                        p[3] ^= 0x80;
                    }
                }
                Response::TimelineChanges(changes)
            }
            Ok(Response::Blocks(mut blocks)) => {
                // Swaps in another payload: a release that was never appended.
                if let Some(block) = blocks.iter_mut().find(|b| !b.payload.is_empty()) {
                    block.payload = release("6.6.6", &[]).payload;
                }
                Response::Blocks(blocks)
            }
            Ok(Response::LinkedProofs(mut proofs)) => {
                for proof in proofs.iter_mut().flatten().filter(|p| !p.links.is_empty()) {
                    proof.links[0].timestamp_ms += 1;
                }
                Response::LinkedProofs(proofs)
            }
            Ok(other) => other,
            Err(e) => {
                Response::Error(chainiac_proto::ErrorReply::new(chainiac_proto::ErrorCode::Internal, e.to_string()))
            }
        }
    }
    fn refused(&self, _: &str) {}
}

/// A member that drops proposals: it refuses the first, and answers each later one with a
/// block it made up (the proposal's kind and payload put into a real block, so the
/// collective signature no longer covers it); it relays everything else to witness 1
/// honestly (through a [`Liar`]'s connection, not its lies).
struct Dropper(Liar, std::sync::atomic::AtomicBool);

impl Handler for Dropper {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        let Request::Propose { chain, proposal } = request else { return self.0.relay(request).await };
        if !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let refusal = "a made-up rule says no";
            return Response::Error(chainiac_proto::ErrorReply::new(chainiac_proto::ErrorCode::Refused, refusal));
        }
        let Response::Block(Some(mut block)) = self.0.relay(Request::GetBlock { chain, index: 1 }).await else {
            panic!("witness 1 serves block 1");
        };
        (block.header.index, block.header.kind, block.payload) = (1_000, proposal.kind, proposal.payload);
        if let Some(policy) = &proposal.policy {
            block.header.policy_hash = chainiac_skipchain::block::policy_hash(policy);
        }
        Response::Appended { block }
    }
    fn refused(&self, _: &str) {}
}

/// Kills witness 0 and serves, with its key at its address, a [`Liar`] relaying witness 1.
fn replace_witness_0_with_a_liar(cluster: &mut Cluster) {
    let liar = Liar::relaying_witness_1(cluster);
    common::replace_witness_0(cluster, liar);
}

impl Liar {
    /// Witness 1's honest answer to `request` (a failure to reach it as an `Internal` error).
    async fn relay(&self, request: Request) -> Response {
        self.honest.call_at(&self.honest_address, &self.honest_key, request).await.unwrap_or_else(|e| {
            Response::Error(chainiac_proto::ErrorReply::new(chainiac_proto::ErrorCode::Internal, e.to_string()))
        })
    }

    fn relaying_witness_1(cluster: &Cluster) -> Liar {
        Liar {
            honest: Arc::new(common::Client::new()),
            honest_address: cluster.witnesses[1].address.clone(),
            honest_key: cluster.witnesses[1].key,
        }
    }
}

/// Four witnesses, a timeline, a raw chain of three blocks the timeline records, and a
/// client (its state `client.state` in the folder returned) caught up to block 2.
async fn a_client_at_block_2() -> (Cluster, ChainId, ChainId, tempfile::TempDir, Client) {
    let cluster = Cluster::start(4).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let (chain, raw_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
    for i in 0..2 {
        cluster.propose(1, chain, format!("a{i}").as_bytes()).await.unwrap();
    }
    common::wait_timeline_has(&cluster, chain, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("client.state"), TrustLevel::default()).unwrap();
    client.anchor(&timeline_genesis).unwrap();
    client.anchor(&raw_genesis).unwrap();
    assert_eq!(client.update(chain).await.unwrap().to, 2);
    (cluster, timeline, chain, dir, client)
}

/// The last step is always signed (SPEC §7.3).
fn bend_last_signature(proof: &mut chainiac_skipchain::Proof) {
    let step = proof.steps.last_mut().expect("not empty");
    step.signature.as_mut().expect("the last step is signed").signature.s[3] ^= 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_catches_up_checks_freshness_and_artifacts_and_skips_a_liar() {
    let mut cluster = Cluster::start(4).await;
    let (v1, v2) = (key(20), key(21));
    let (timeline, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &hello_policy()).await;
    for version in ["1.0", "1.1"] {
        let reply = cluster
            .client
            .call(&cluster.witnesses[2], Request::Propose { chain, proposal: release(version, &[&v1, &v2]) })
            .await;
        assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    }
    common::wait_timeline_has(&cluster, chain, 2).await;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("client.state");
    let mut client = Client::open(&state, TrustLevel::default()).unwrap();
    assert_eq!(client.anchor(&timeline_genesis).unwrap(), timeline);
    assert_eq!(client.anchor(&project_genesis).unwrap(), chain);
    let update = client.update(chain).await.unwrap();
    assert_eq!((update.from, update.to), (0, 2));
    assert_eq!(update.release, Some(("1.1".to_string(), Ok(()))));
    assert!(update.timeline_age_ms.is_some_and(|age| age < 60_000));
    assert_eq!(client.verify_artifact(chain, "hello", BINARY).unwrap(), "1.1");
    let mut tampered = BINARY.to_vec();
    tampered[5] ^= 1;
    assert!(
        matches!(client.verify_artifact(chain, "hello", &tampered), Err(ClientError::Artifact { reason, .. }) if reason.contains("SHA3-256"))
    );
    assert!(
        matches!(client.verify_artifact(chain, "hello", &BINARY[1..]), Err(ClientError::Artifact { reason, .. }) if reason.contains("size"))
    );

    // Offline bundles: exported once, checked with no network.
    let bundle = client.export_bundle(&project_genesis, Some(&timeline_genesis)).await.unwrap();
    let bytes = bundle.to_bytes();
    let checked = chainiac_client::Bundle::from_bytes(&bytes)
        .unwrap()
        .verify(&chain, Some(&timeline), &TrustLevel::default())
        .unwrap();
    assert_eq!((checked.index, checked.release.manifest.version.as_str()), (2, "1.1"));
    assert!(checked.timeline_age_ms.is_some());
    let other_project = chainiac_skipchain::BlockId([9; 32]);
    assert!(matches!(
        bundle.verify(&other_project, Some(&timeline), &TrustLevel::default()),
        Err(ClientError::BadAnchor(_))
    ));
    assert!(matches!(
        bundle.verify(&chain, Some(&other_project), &TrustLevel::default()),
        Err(ClientError::Timeline(_))
    ));
    // Every single byte: a bundle is a few kilobytes and each check takes well under a millisecond.
    for position in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[position] ^= 0x10;
        let accepted = chainiac_client::Bundle::from_bytes(&tampered)
            .and_then(|b| b.verify(&chain, Some(&timeline), &TrustLevel::default()));
        assert!(accepted.is_err(), "byte {position} of the bundle changed and it still verified");
    }

    // The client's own bar: three reproductions, or a named verifier.
    let strict_state = dir.path().join("strict.state");
    let mut strict = Client::open(&strict_state, TrustLevel { min_reproductions: 3, ..TrustLevel::default() }).unwrap();
    strict.anchor(&timeline_genesis).unwrap();
    strict.anchor(&project_genesis).unwrap();
    let update = strict.update(chain).await.unwrap();
    assert!(matches!(&update.release, Some((_, Err(reason))) if reason.contains("wants 3")), "{:?}", update.release);
    assert!(matches!(strict.verify_artifact(chain, "hello", BINARY), Err(ClientError::BelowClientBar(_))));

    // Witness 0 now lies (its key, its address, altered proofs): the client says so and
    // catches up through the others.
    replace_witness_0_with_a_liar(&mut cluster);
    let reply = cluster
        .client
        .call(&cluster.witnesses[3], Request::Propose { chain, proposal: release("1.2", &[&v1, &v2]) })
        .await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 3).await;
    let update = client.update(chain).await.unwrap();
    assert_eq!((update.from, update.to), (2, 3));
    assert!(
        update.skipped.iter().any(|(w, why)| w == &cluster.witnesses[0].address && why.starts_with("lied")),
        "the liar is reported: {:?}",
        update.skipped
    );

    // The state survives a restart of the client.
    drop(client);
    let reopened = Client::open(&state, TrustLevel::default()).unwrap();
    assert_eq!(reopened.state().chains[&chain].index(), 3);
    assert_eq!(reopened.verify_artifact(chain, "hello", BINARY).unwrap(), "1.2");
    // Any earlier release too: its block is linked down from the verified head by hashes,
    // so the liar's swapped payload is caught and the next witness answers.
    assert_eq!(reopened.verify_artifact_of(chain, "1.0", "hello", BINARY).await.unwrap(), "1.0");
    assert!(matches!(
        reopened.verify_artifact_of(chain, "1.0", "hello", &BINARY[1..]).await,
        Err(ClientError::Artifact { .. })
    ));
    let missing = reopened.verify_artifact_of(chain, "6.6.6", "hello", BINARY).await;
    assert!(matches!(&missing, Err(ClientError::NoSuchRelease { version, .. }) if version == "6.6.6"), "{missing:?}");

    // Freeze: a client whose own bound is 0 ms (raw chains have no policy, so the client's
    // bound applies) refuses the real, slightly old, timeline.
    let raw_genesis = cluster.create_chain(&[1, 2, 3, 0]).await.1;
    let mut frozen = Client::open(&dir.path().join("frozen.state"), TrustLevel::default()).unwrap();
    frozen.default_max_age_ms = 0;
    frozen.anchor(&timeline_genesis).unwrap();
    let raw = frozen.anchor(&raw_genesis).unwrap();
    common::wait_timeline_has(&cluster, raw, 0).await;
    match frozen.update(raw).await {
        Err(ClientError::Stale { age_ms, max_age_ms: 0 }) => assert!(age_ms > 0),
        other => panic!("a stale timeline must be refused, got {other:?}"),
    }
    assert_eq!(frozen.state().chains[&raw].index(), 0, "nothing was accepted from the refused update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_work_from_the_shell_and_bundles_check_offline() {
    use std::process::Command;
    let mut cluster = Cluster::start(4).await;
    let (v1, v2) = (key(20), key(21));
    let (timeline, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &hello_policy()).await;
    let reply = cluster
        .client
        .call(&cluster.witnesses[1], Request::Propose { chain, proposal: release("2.0", &[&v1, &v2]) })
        .await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("project.genesis"), project_genesis.to_bytes()).unwrap();
    std::fs::write(path("timeline.genesis"), timeline_genesis.to_bytes()).unwrap();
    std::fs::write(path("hello"), BINARY).unwrap();
    std::fs::write(path("evil"), b"not the binary").unwrap();
    let state = path("client.state");
    let run = chainiac;
    for genesis in ["timeline.genesis", "project.genesis"] {
        let (code, _, err) = run(&["anchor", "--state", &state, &path(genesis), "--json"]);
        assert_eq!(code, Some(0), "{err}");
    }
    // Several genesis files in one call: one write, all or nothing.
    let both = path("both.state");
    let (code, _, err) = run(&["anchor", "--state", &both, &path("project.genesis"), &path("hello")]);
    assert_eq!(code, Some(2), "a file that is no block is a usage error: {err}");
    assert!(err.contains("hello is not a block"), "{err}");
    assert!(!std::path::Path::new(&both).exists(), "nothing was anchored");
    let (code, out, err) =
        run(&["anchor", "--state", &both, &path("timeline.genesis"), &path("project.genesis"), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let anchored: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(anchored["anchored"][0]["chain"], timeline.to_hex());
    assert_eq!(anchored["anchored"][1]["chain"], chain.to_hex());
    let chain_hex = chain.to_hex();
    let (code, out, err) = run(&["update", "--state", &state, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((update["from"].as_u64(), update["to"].as_u64()), (Some(0), Some(1)));
    assert_eq!(update["release"]["version"], "2.0");
    let (code, out, _) =
        run(&["verify", "--state", &state, "--chain", &chain_hex, "--artifact", "hello", &path("hello"), "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["verified"], true);
    // A named release: this one, or one the chain never had (walked down to the genesis).
    // `of_version("verify", V, rest)`: the command for artifact hello of release V.
    let of_version = |command: &str, version: &str, rest: &[&str]| {
        let mut args = vec![command, "--state", &state, "--chain", &chain_hex, "--version", version];
        args.extend(["--artifact", "hello"]);
        args.extend(rest);
        run(&args)
    };
    let hello = path("hello");
    let verify_version = |version: &str| of_version("verify", version, &[&hello]);
    let (code, out, err) = verify_version("2.0");
    assert!(code == Some(0) && out.contains("release 2.0: verified"), "{out}{err}");
    let (code, _, err) = verify_version("1.9");
    assert!(code == Some(1) && err.contains("has no release \"1.9\""), "{err}");
    let (code, _, err) =
        run(&["verify", "--state", &state, "--chain", &chain_hex, "--artifact", "hello", &path("evil")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("differs"), "{err}");
    let (code, _, err) = run(&[
        "verify",
        "--state",
        &state,
        "--chain",
        &chain_hex,
        "--artifact",
        "hello",
        "--min-reproductions",
        "3",
        &path("hello"),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("client's bar"), "{err}");

    // Downloads from hosts nobody trusts: a lying mirror, then an honest one (`chainiac
    // serve`, real HTTP), and a file URL. The output exists only once the bytes matched,
    // and the liar is named.
    for (name, bytes) in [("liar", b"not the binary".as_slice()), ("honest", BINARY)] {
        std::fs::create_dir_all(path(name)).unwrap();
        std::fs::write(dir.path().join(name).join("hello"), bytes).unwrap();
    }
    let mirror = |name: &str| {
        let listen = format!("127.0.0.1:{}", common::free_port());
        let child = Command::new(common::bin())
            .args(["serve", "--dir", &path(name), "--listen", &listen])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (KillOnDrop(child), format!("http://{listen}/hello"))
    };
    let ((_liar, liar), (_honest, honest)) = (mirror("liar"), mirror("honest"));
    for url in [&liar, &honest] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches("/hello")).is_err() {
            assert!(std::time::Instant::now() < deadline, "{url} never came up");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let fetched = path("fetched");
    let fetch = |sources: &[&str]| {
        let mut args =
            vec!["fetch", "--state", &state, "--chain", &chain_hex, "--artifact", "hello", "--out", &fetched];
        for source in sources {
            args.extend(["--from", source]);
        }
        run(&args)
    };
    let (code, _, err) = fetch(&[&liar]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("{liar} served wrong bytes")), "the liar is named: {err}");
    assert!(!std::path::Path::new(&fetched).exists(), "nothing is written from a liar");
    // A source that redirects to the liar: both are named.
    let redirector_url =
        answer_once(|url| format!("HTTP/1.1 302 Found\r\nLocation: {url}\r\nContent-Length: 0\r\n\r\n"), liar.clone());
    let (code, _, err) = fetch(&[&redirector_url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("{redirector_url} served wrong bytes")), "{err}");
    assert!(err.contains(&format!("redirected to {liar}")), "the host that lied is named too: {err}");
    // Redirected to a host that breaks off the body: that host is named as well.
    let breaker_url = answer_once(|_| "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc".into(), String::new());
    let redirector_url = answer_once(
        |url| format!("HTTP/1.1 302 Found\r\nLocation: {url}\r\nContent-Length: 0\r\n\r\n"),
        breaker_url.clone(),
    );
    let (code, _, err) = fetch(&[&redirector_url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("reading the download, redirected to {breaker_url}")), "{err}");
    let missing = format!("{}/nothing-here", honest.trim_end_matches("/hello"));
    let (code, out, err) = fetch(&[&liar, &missing, &honest]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("HTTP status 404"), "{err}");
    assert!(out.contains(&format!("from {honest}: verified")), "{out}");
    assert_eq!(std::fs::read(&fetched).unwrap(), BINARY);
    std::fs::remove_file(&fetched).unwrap();
    // A hostile HTTP server: a chunked body whose first chunk's extension never ends (an
    // HTTP client that buffered it would grow or hang for ever). Refused, and the next
    // source is tried.
    let hostile = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hostile_url = format!("http://{}/hello", hostile.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut stream, _)) = hostile.accept() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;");
            let junk = [b'x'; 65536];
            while stream.write_all(&junk).is_ok() {}
        }
    });
    let (code, out, err) = fetch(&[&hostile_url, &honest]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("{hostile_url}:")), "the hostile server is named: {err}");
    assert!(out.contains(&format!("from {honest}: verified")), "{out}");
    std::fs::remove_file(&fetched).unwrap();

    // Same size, other bytes; one byte more: both named, neither kept.
    let mut same_size = BINARY.to_vec();
    same_size[0] ^= 1;
    let mut longer = BINARY.to_vec();
    longer.push(0);
    std::fs::write(path("same-size"), &same_size).unwrap();
    std::fs::write(path("longer"), &longer).unwrap();
    let file_url = |name: &str| format!("file://{}", path(name));
    let (code, _, err) = fetch(&[&file_url("same-size"), &file_url("longer")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("same-size served wrong bytes") && err.contains("sha3"), "{err}");
    assert!(err.contains("longer served wrong bytes for hello (more than the release's"), "{err}");
    assert!(!std::path::Path::new(&fetched).exists());
    let honest_file = format!("file://{}", dir.path().join("honest").join("hello").display());
    let (code, out, err) = fetch(&[&honest_file]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("verified"), "{out}");
    // A new file gets what the umask leaves of 0666; one it replaces keeps its mode (an
    // executable stays executable).
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &str| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask =
        status.lines().find_map(|l| l.strip_prefix("Umask:")).map(|m| u32::from_str_radix(m.trim(), 8).unwrap());
    assert_eq!(mode(&fetched), 0o666 & !umask.unwrap(), "a new file");
    std::fs::set_permissions(&fetched, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // A named release, walked down from the verified head; one the chain never had.
    let fetch_version = |version: &str| of_version("fetch", version, &["--from", &honest_file, "--out", &fetched]);
    let (code, out, err) = fetch_version("2.0");
    assert!(code == Some(0) && out.contains("of release 2.0"), "{out}{err}");
    assert_eq!(mode(&fetched), 0o755, "the file replaced keeps its permission bits, not its setuid bit");
    let (code, _, err) = fetch_version("1.9");
    assert!(code == Some(1) && err.contains("has no release \"1.9\""), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".chainiac-fetch-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let (code, _, err) = run(&[
        "bundle",
        "export",
        "--state",
        &state,
        "--genesis",
        &path("project.genesis"),
        "--timeline-genesis",
        &path("timeline.genesis"),
        "--out",
        &path("hello.bundle"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&["update", "--state", &state, "--chain", "zz"]);
    assert_eq!(code, Some(2), "a malformed chain id is a usage error: {err}");

    // With every witness gone, the bundle still checks.
    for w in &mut cluster.witnesses {
        w.kill();
    }
    let (code, out, err) = run(&[
        "bundle",
        "verify",
        &path("hello.bundle"),
        "--chain",
        &chain_hex,
        "--timeline",
        &timeline.to_hex(),
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let checked: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(checked["version"], "2.0");
    let other = chainiac_skipchain::BlockId([3; 32]).to_hex();
    let (code, _, err) = run(&["bundle", "verify", &path("hello.bundle"), "--chain", &other]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is for chain"), "a bundle for another project is refused clearly: {err}");
}

/// Yanking from the shell (SPEC §11.7): too few or foreign signatures and unreleased
/// versions are refused; after a yank `update` reports it, `verify`, `fetch` and `bundle
/// export` refuse the release naming the reason (unless `--allow-yanked`), and clients that
/// anchor afterwards and skip every block below the head see it too. The root keys take it
/// back with `policy rotate --unyank`, and the old yank cannot be replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yanked_release_is_refused_by_every_client_command_until_the_roots_take_it_back() {
    let cluster = Cluster::start(4).await;
    let (v1, v2) = (key(20), key(21));
    let (developers, roots) = ([key(1), key(2), key(3)], [key(10), key(11)]);
    let policy = Policy {
        developers: developers.iter().map(SecretKey::public_key).collect(),
        release_threshold: 2,
        root_keys: roots.iter().map(SecretKey::public_key).collect(),
        root_threshold: 2,
        ..hello_policy()
    };
    let (_, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &policy).await;
    for version in ["1.0", "1.1"] {
        // Two developers sign (the release helper signs with developer 1 only).
        let mut proposal = release(version, &[&v1, &v2]);
        let mut payload = ReleasePayload::from_bytes(&proposal.payload).unwrap();
        payload.developer_signatures.push(DeveloperSignature::sign(&developers[1], &payload.manifest.id()));
        proposal.payload = payload.to_bytes();
        let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
        assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    }
    common::wait_timeline_has(&cluster, chain, 2).await;

    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("hello"), BINARY).unwrap();
    let key_files = [("dev1", &developers[0]), ("dev2", &developers[1]), ("root1", &roots[0]), ("root2", &roots[1])];
    for (name, key) in key_files.into_iter().chain([("verifier", &v1)]) {
        chainiac_witness::keyfile::write(&dir.path().join(format!("{name}.key")), key).unwrap();
    }
    let run = chainiac;
    let anchored = |name: &str| {
        let state = path(name);
        anchor_both(dir.path(), &state);
        state
    };
    let state = anchored("client.state");
    let chain_hex = chain.to_hex();
    let (code, _, err) = run(&["update", "--state", &state, "--chain", &chain_hex]);
    assert_eq!(code, Some(0), "{err}");

    let reason = "CVE-2026-1234: 1.1 writes its config world-readable";
    let yank = |version: &str, keys: &[&str]| {
        let mut args = vec!["release", "yank", "--state", &state, "--chain", &chain_hex, "--version", version];
        args.extend(["--reason", reason, "--json"]);
        let key_paths: Vec<String> = keys.iter().map(|k| path(&format!("{k}.key"))).collect();
        for key in &key_paths {
            args.extend(["--key", key.as_str()]);
        }
        run(&args)
    };
    let (code, _, err) = yank("1.1", &["dev1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 developer keys and 0 root keys signed the yank"), "too few: {err}");
    let (code, _, err) = yank("1.1", &["dev1", "root1"]);
    assert!(code == Some(1) && err.contains("1 developer keys and 1 root keys"), "not summed: {err}");
    let (code, _, err) = yank("1.1", &["dev1", "verifier"]);
    assert!(code == Some(1) && err.contains("neither a developer nor a root key"), "{err}");
    let (code, _, err) = yank("2.0", &["dev1", "dev2"]);
    assert!(code == Some(1) && err.contains("no such release"), "{err}");
    let (code, out, err) = yank("1.1", &["dev1", "dev2"]);
    assert_eq!(code, Some(0), "{err}");
    let yanked: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(yanked["index"], 3);
    common::wait_timeline_has(&cluster, chain, 3).await;

    // The client that had 1.1 hears of the yank once, and refuses 1.1 from then on.
    let (code, out, err) = run(&["update", "--state", &state, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(update["yanked"][0]["version"], "1.1", "{update}");
    assert_eq!(update["yanked"][0]["reason"], reason);
    let (code, out, err) = run(&["update", "--state", &state, "--chain", &chain_hex]);
    assert!(code == Some(0) && !out.contains("YANKED"), "reported once: {out}{err}");
    let (code, _, err) = yank("1.1", &["root1", "root2"]);
    assert!(code == Some(2) && err.contains("already yanked"), "{err}");
    let hello = path("hello");
    let verify = |state: &str, extra: &[&str]| {
        let mut args = vec!["verify", "--state", state, "--chain", &chain_hex, "--artifact", "hello"];
        args.extend(extra);
        args.push(&hello);
        run(&args)
    };
    let (code, _, err) = verify(&state, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("release 1.1") && err.contains("YANKED") && err.contains(reason), "{err}");
    let (code, out, err) = verify(&state, &["--allow-yanked"]);
    assert!(code == Some(0) && out.contains("release 1.1: verified"), "{out}{err}");
    let (code, out, err) = verify(&state, &["--version", "1.0"]);
    assert!(code == Some(0) && out.contains("release 1.0: verified"), "1.0 is not yanked: {out}{err}");
    let fetched = path("fetched");
    let source = format!("file://{hello}");
    let fetch = |extra: &[&str]| {
        let mut args = vec!["fetch", "--state", &state, "--chain", &chain_hex, "--artifact", "hello"];
        args.extend(["--from", &source, "--out", &fetched]);
        args.extend(extra);
        run(&args)
    };
    let (code, _, err) = fetch(&[]);
    assert!(code == Some(1) && err.contains("YANKED") && err.contains(reason), "{err}");
    assert!(!std::path::Path::new(&fetched).exists(), "nothing is fetched of a yanked release");
    let (code, _, err) = fetch(&["--allow-yanked"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("WARNING: release 1.1 is YANKED") && err.contains(reason), "said, not silent: {err}");
    let export = |extra: &[&str]| {
        let (genesis, out) = (path("project.genesis"), path("hello.bundle"));
        let mut args = vec!["bundle", "export", "--state", &state, "--genesis", &genesis, "--out", &out];
        args.extend(extra);
        run(&args)
    };
    let (code, _, err) = export(&[]);
    assert!(code == Some(1) && err.contains("YANKED"), "{err}");
    let (code, _, err) = export(&["--allow-yanked"]);
    assert_eq!(code, Some(0), "{err}");
    // The bundle carries the chain past its release, so offline checks see the yank too.
    let bundle_verify = |extra: &[&str]| {
        let bundle = path("hello.bundle");
        let mut args = vec!["bundle", "verify", &bundle, "--chain", &chain_hex];
        args.extend(extra);
        run(&args)
    };
    let (code, _, err) = bundle_verify(&[]);
    assert!(code == Some(1) && err.contains("YANKED") && err.contains(reason), "{err}");
    let (code, _, err) = bundle_verify(&["--allow-yanked"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = run(&["project", "show", "--state", &state, "--chain", &chain_hex]);
    assert!(code == Some(0) && out.contains(&format!("yanked: 1.1 ({reason})")), "{out}{err}");

    // Clients that anchor now skip every block below the head (through the timeline, or
    // by forward proofs that land on each policy change): the yank is in the policy in
    // force at the head, so they refuse 1.1 all the same.
    for (name, every_hop) in [("fresh.state", false), ("hops.state", true)] {
        let fresh = anchored(name);
        let mut args = vec!["update", "--state", &fresh, "--chain", &chain_hex];
        if every_hop {
            args.push("--every-hop");
        }
        let (code, out, err) = run(&args);
        assert!(code == Some(0) && out.contains("YANKED release 1.1"), "{out}{err}");
        let (code, _, err) = verify(&fresh, &["--version", "1.1"]);
        assert!(code == Some(1) && err.contains(reason), "{name}: {err}");
    }

    // The root keys take it back; the developers' old yank cannot be replayed.
    let yank_block = match cluster.client.call(&cluster.witnesses[0], Request::GetBlock { chain, index: 3 }).await {
        Ok(Response::Block(Some(block))) => block,
        other => panic!("{other:?}"),
    };
    assert_eq!(yank_block.header.kind, KIND_YANK);
    let hex_keys =
        |keys: &[SecretKey]| keys.iter().map(|k| format!("\"{}\"", k.public_key())).collect::<Vec<_>>().join(", ");
    let mut toml = format!(
        "project = \"hello\"\ndevelopers = [{}]\nrelease_threshold = 2\nroot_keys = [{}]\nroot_threshold = 2\n",
        hex_keys(&developers),
        hex_keys(&roots)
    );
    toml += "verifier_threshold = 2\nmax_age_ms = 60000\n";
    for (v, address) in [(&v1, "127.0.0.1:1"), (&v2, "127.0.0.1:2")] {
        toml += &format!("\n[[verifier]]\nkey = \"{}\"\naddress = \"{address}\"\n", v.public_key());
    }
    std::fs::write(path("policy.toml"), toml).unwrap();
    let rotate = |unyank: &str| {
        let (policy, root1, root2) = (path("policy.toml"), path("root1.key"), path("root2.key"));
        let mut args = vec!["policy", "rotate", "--state", &state, "--chain", &chain_hex, "--policy", &policy];
        args.extend(["--key", &root1, "--key", &root2, "--unyank", unyank]);
        run(&args)
    };
    let (code, _, err) = rotate("1.0");
    assert!(code == Some(2) && err.contains("is not yanked"), "{err}");
    let (code, out, err) = rotate("1.1");
    assert!(code == Some(0) && out.contains("replaced at block 4"), "{out}{err}");
    common::wait_timeline_has(&cluster, chain, 4).await;
    let (code, out, err) = run(&["update", "--state", &state, "--chain", &chain_hex]);
    assert!(code == Some(0) && out.contains("release 1.1 is no longer yanked"), "{out}{err}");
    let (code, out, err) = verify(&state, &[]);
    assert!(code == Some(0) && out.contains("release 1.1: verified"), "taken back: {out}{err}");
    let replay = Proposal {
        kind: KIND_YANK,
        payload: yank_block.payload.clone(),
        policy: yank_block.policy.clone(),
        ..Proposal::default()
    };
    let reply = cluster.client.call(&cluster.witnesses[0], Request::Propose { chain, proposal: replay }).await;
    assert!(format!("{reply:?}").contains("one yank added"), "a replayed yank is refused: {reply:?}");
}

/// Hello `version` as a rebuilder builds it for real: a source archive whose script writes
/// `hello-<version>/out.txt` = "hello <version>\n", and its manifest.
fn buildable_hello(version: &str) -> (Manifest, Vec<u8>) {
    let script = format!("printf 'hello %s\\n' {version} > out.txt\n");
    let mut archive = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(script.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(&mut header, format!("hello-{version}/build.sh"), script.as_bytes()).unwrap();
    let source = archive.into_inner().unwrap();
    let built = format!("hello {version}\n");
    let manifest = Manifest {
        project: "hello".into(),
        version: version.into(),
        source: SourceArchive {
            name: format!("hello-{version}.tar"),
            sha3: content_hash(&source),
            size: source.len() as u64,
        },
        recipe: Recipe { argv: vec!["sh".into(), "build.sh".into()], env: vec![], workdir: format!("hello-{version}") },
        artifacts: vec![Artifact {
            path: format!("hello-{version}/out.txt"),
            sha3: content_hash(built.as_bytes()),
            size: built.len() as u64,
        }],
        time_ms: common::now_ms(),
    };
    (manifest, source)
}

/// A witness that takes rebuilders' attestations and drops them: it answers `RebuildQueued`
/// and appends nothing; everything else it relays to an honest member.
struct DropsRebuilds {
    honest: Arc<common::Client>,
    honest_address: String,
    honest_key: PublicKey,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl Handler for DropsRebuilds {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        if let Request::SubmitRebuild { .. } = request {
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Response::RebuildQueued { due_ms: common::now_ms() };
        }
        match self.honest.call_at(&self.honest_address, &self.honest_key, request).await {
            Ok(answer) => answer,
            Err(e) => {
                Response::Error(chainiac_proto::ErrorReply::new(chainiac_proto::ErrorCode::Internal, e.to_string()))
            }
        }
    }
    fn refused(&self, _: &str) {}
}

/// The member every rebuilder of a chain asks first takes attestations and drops them. The
/// daemon waits for the batch (`resubmit_after_s`), finds its key in no summary, and submits
/// the attestation it built again, starting at the next member, where it is recorded: a
/// witness that drops attestations delays them, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_that_drops_rebuilders_attestations_only_delays_them() {
    let mut cluster = Cluster::start_configured(4, 400, |_, config| config.rebuild_batch_seconds = 1).await;
    let (_, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    // A project whose first member for rebuilders is witness 0 (the genesis time picks it).
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let first = committee.roster().index_of(&cluster.witnesses[0].key).unwrap();
    let mut time = common::now_ms();
    let project_genesis = loop {
        let params = ChainParams::new(2, 24).unwrap();
        let candidate = genesis(params, committee.clone(), hello_policy().to_bytes(), KIND_RELEASE, vec![], time);
        if u64::from_be_bytes(candidate.id().0[..8].try_into().unwrap()) as usize % 4 == first {
            break candidate;
        }
        time += 1;
    };
    let created =
        cluster.client.call(&cluster.witnesses[0], Request::CreateChain { genesis: project_genesis.clone() }).await;
    let Ok(Response::Created { chain }) = created else { panic!("{created:?}") };
    let (manifest, source) = buildable_hello("1.0");
    let proposal = release_of(manifest, &[&key(20), &key(21)]);
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 1).await;

    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dropper = DropsRebuilds {
        honest: Arc::new(common::Client::new()),
        honest_address: cluster.witnesses[1].address.clone(),
        honest_key: cluster.witnesses[1].key,
        dropped: dropped.clone(),
    };
    common::replace_witness_0_serving(&mut cluster, dropper, &[FrameClass::Query, FrameClass::Submit]);

    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::create_dir_all(path("sources")).unwrap();
    std::fs::write(dir.path().join("sources").join("hello-1.0.tar"), &source).unwrap();
    let rebuilder_dir = path("rebuilder");
    let sources = format!("file://{}/", path("sources"));
    let (code, out, err) = chainiac(&["rebuilder", "init", "--dir", &rebuilder_dir, "--source", &sources, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let init: serde_json::Value = serde_json::from_str(&out).unwrap();
    let config = init["config"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("resubmit_after_s = 120"), "{text}");
    std::fs::write(&config, text.replace("resubmit_after_s = 120", "resubmit_after_s = 3")).unwrap();
    anchor_both(dir.path(), &format!("{rebuilder_dir}/client.state"));
    let pass = || {
        let (code, out, err) = chainiac(&["rebuilder", "run", "--config", &config, "--once", "--json"]);
        assert_eq!(code, Some(0), "{out}{err}");
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };

    // The first member takes it and drops it.
    let first_pass = pass();
    let outcome = first_pass[0]["outcome"].as_str().unwrap();
    assert!(outcome.starts_with(&format!("reproduced; queued at {}", cluster.witnesses[0].address)), "{outcome}");
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Before its time: nothing sent.
    assert!(pass().is_empty());
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
    // After it: not in any summary, so sent again from the next member on, which takes it.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let second_pass = pass();
    let outcome = second_pass[0]["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("reproduced; queued at "), "{outcome}");
    assert!(!outcome.contains(&cluster.witnesses[0].address), "not the dropper again: {outcome}");
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Appended with its batch, and then the rebuilder's own update finds it recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while cluster.head(1, chain).await < Some(3) {
        assert!(std::time::Instant::now() < deadline, "the batch was never appended");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    common::wait_timeline_has(&cluster, chain, 3).await;
    assert!(pass().is_empty(), "recorded: nothing left to do");
    let submitted = std::fs::read_to_string(format!("{rebuilder_dir}/data/submitted")).unwrap();
    assert_eq!(submitted.lines().count(), 1, "{submitted}");
    let took = second_pass[0]["outcome"].as_str().unwrap().split("queued at ").nth(1).unwrap().split(',').next();

    // The next release starts at the member that took the last one: the dropper is not
    // asked again.
    let (next, next_source) = buildable_hello("1.1");
    std::fs::write(dir.path().join("sources").join("hello-1.1.tar"), &next_source).unwrap();
    let reply = cluster
        .client
        .call(&cluster.witnesses[1], Request::Propose { chain, proposal: release_of(next, &[&key(20), &key(21)]) })
        .await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    let head = cluster.head(1, chain).await.unwrap();
    common::wait_timeline_has(&cluster, chain, head).await;
    let third_pass = pass();
    let outcome = third_pass[0]["outcome"].as_str().unwrap();
    assert_eq!(third_pass[0]["version"], "1.1", "{third_pass:?}");
    assert_eq!(outcome.split("queued at ").nth(1).unwrap().split(',').next(), took, "{outcome}");
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1, "the dropper is passed over");
}

/// Trust that grows after a release (SPEC §11.8), from the shell: a rebuilder daemon
/// (`chainiac rebuilder run`, a real build in the sandbox) fetches a release's source from a
/// host nobody trusts, rebuilds it and submits its attestation; the witnesses append it
/// and the release's summary, and a client that trusts the rebuilder sees the level rise
/// (`update` says so) and installs at `--min-level trusted`. A lying rebuilder is recorded
/// as a disagreement and lifts nothing. Unknown releases, replays, bad signatures, rebuilds
/// through `Propose` and rebuilders past their hourly allowance are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilder_raises_a_release_to_trusted_and_a_liar_is_flagged() {
    let mut cluster = Cluster::start_configured(4, 400, |_, config| {
        config.rebuilds_per_hour = 3;
        config.rebuild_disagreement_limit = 1;
        // Each attestation appended at once (batches: `rebuild_batches_…`).
        config.rebuild_batch_seconds = 0;
    })
    .await;
    let (timeline, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &hello_policy()).await;
    let (manifest, source) = buildable_hello("1.0");
    let built = b"hello 1.0\n";
    let proposal = release_of(manifest.clone(), &[&key(20), &key(21)]);
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 1).await;

    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::create_dir_all(path("sources")).unwrap();
    std::fs::write(dir.path().join("sources").join("hello-1.0.tar"), &source).unwrap();
    std::fs::write(path("hello-1.0.tar"), b"a mirror that lies").unwrap();
    std::fs::write(path("out.txt"), built).unwrap();
    let run = chainiac;
    let anchored = |state: &str| anchor_both(dir.path(), state);
    let chain_hex = chain.to_hex();
    let state = path("client.state");
    anchored(&state);
    let (code, out, err) = run(&["update", "--state", &state, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(update["level"]["level"], "policy", "{update}");

    // The rebuilder: the lying mirror first, then the honest one.
    let rebuilder_dir = path("rebuilder");
    let (liar_source, honest_source) =
        (format!("file://{}/", dir.path().display()), format!("file://{}/", path("sources")));
    let (code, out, err) = run(&[
        "rebuilder",
        "init",
        "--dir",
        &rebuilder_dir,
        "--source",
        &liar_source,
        "--source",
        &honest_source,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let init: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rebuilder_key = init["key"].as_str().unwrap().to_string();
    let config = init["config"].as_str().unwrap().to_string();
    anchored(&format!("{rebuilder_dir}/client.state"));
    let (code, out, err) = run(&["rebuilder", "run", "--config", &config, "--once", "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["ok"], true, "{out}");
    assert!(line["outcome"].as_str().unwrap().starts_with("reproduced; summary at block 3 records 1"), "{out}");
    // A second pass has nothing to do: the release is recorded as submitted.
    let (code, out, err) = run(&["rebuilder", "run", "--config", &config, "--once", "--json"]);
    assert!(code == Some(0) && out.trim().is_empty(), "{out}{err}");

    // A lying rebuilder: other bytes, signed; recorded, and shown as a disagreement.
    let liar = key(30);
    let lie = |outcome: Outcome, manifest: ManifestId| {
        Attestation::sign(
            &liar,
            AttestationBody {
                verifier: liar.public_key(),
                manifest,
                outcome,
                environment: [7; 32],
                time_ms: common::now_ms(),
                isolation: BuildIsolation::Namespaces,
            },
        )
    };
    let mismatch = Outcome::Mismatch {
        artifacts: vec![ArtifactMismatch {
            path: "hello-1.0/out.txt".into(),
            expected: content_hash(built),
            got: Some([6; 32]),
            got_size: Some(10),
        }],
    };
    // A rebuilder submits its own attestations, connected with its key (seed `who`).
    let submit_as = |who: u8, attestation: Attestation| {
        let witness = &cluster.witnesses[2];
        async move {
            common::Client::with_key(key(who))
                .call_at(&witness.address, &witness.key, Request::SubmitRebuild { chain, attestation })
                .await
        }
    };
    let submit = |attestation: Attestation| submit_as(30, attestation);
    let reply = submit(lie(mismatch.clone(), manifest.id())).await;
    let Ok(Response::Appended { block }) = reply else { panic!("{reply:?}") };
    let summary = RebuildSummary::of_block(block.header.kind, &block.payload).unwrap();
    assert_eq!(summary.records.len(), 2);
    assert_eq!(summary.records[1].verdict, Verdict::Mismatch);
    // What the witnesses keep behind each record: the signed attestations, digests matching.
    let Ok(Response::Rebuilds(evidence)) =
        cluster.client.call(&cluster.witnesses[3], Request::GetRebuilds { chain, release: 1 }).await
    else {
        panic!("no evidence")
    };
    assert_eq!(evidence.iter().map(RebuildRecord::of).collect::<Vec<_>>(), summary.records);
    assert!(evidence.iter().all(Attestation::verify));

    // Refused: a replay (by the rebuilder, or by anyone else, who may not spend its
    // allowance), an unknown release, a bad signature, a rebuild through Propose, and a
    // rebuilder past its allowance (3 an hour on each witness).
    let refused = |reply: Result<Response, chainiac_proto::CallError>| format!("{reply:?}");
    let replay = refused(submit(lie(mismatch.clone(), manifest.id())).await);
    assert!(replay.contains("already attested release 1"), "{replay}");
    let relayed = refused(
        cluster
            .client
            .call(
                &cluster.witnesses[2],
                Request::SubmitRebuild { chain, attestation: lie(mismatch.clone(), manifest.id()) },
            )
            .await,
    );
    assert!(relayed.contains("submitted by its rebuilder"), "{relayed}");
    let other = key(31);
    let unknown = Attestation::sign(
        &other,
        AttestationBody { verifier: other.public_key(), ..lie(Outcome::Reproduced, ManifestId([9; 32])).body },
    );
    let unknown = refused(submit_as(31, unknown).await);
    assert!(unknown.contains("has no release with manifest"), "{unknown}");
    let mut forged = Attestation::sign(
        &other,
        AttestationBody { verifier: other.public_key(), ..lie(Outcome::Reproduced, manifest.id()).body },
    );
    forged.signature[0] ^= 1;
    let forged = refused(submit_as(31, forged).await);
    assert!(forged.contains("invalid signature"), "{forged}");
    let through_propose = Proposal {
        kind: KIND_REBUILDS,
        payload: Rebuilds { release: 1, attestations: vec![lie(Outcome::Reproduced, manifest.id())] }.to_bytes(),
        ..Proposal::default()
    };
    let proposed = refused(
        cluster.client.call(&cluster.witnesses[0], Request::Propose { chain, proposal: through_propose }).await,
    );
    assert!(proposed.contains("SubmitRebuild"), "{proposed}");
    // Every signed submission counts, taken or not: three refused ones use the allowance up.
    let flood = key(32);
    let flood_attestation = |manifest| {
        Attestation::sign(
            &flood,
            AttestationBody { verifier: flood.public_key(), ..lie(Outcome::Reproduced, manifest).body },
        )
    };
    for _ in 0..3 {
        let _ = submit_as(32, flood_attestation(ManifestId([8; 32]))).await;
    }
    let flooded = refused(submit_as(32, flood_attestation(manifest.id())).await);
    assert!(flooded.contains("rebuilds_per_hour"), "{flooded}");
    common::wait_timeline_has(&cluster, chain, 5).await;

    // A client that trusts the rebuilder: level trusted, up from policy, and it installs at
    // --min-level trusted. One that trusts only the liar stays at rebuilt and refuses.
    std::fs::write(path("trusted"), format!("# our build farm\n{rebuilder_key}\n")).unwrap();
    std::fs::write(path("liar-trusted"), format!("{}\n", liar.public_key())).unwrap();
    let (code, out, err) =
        run(&["update", "--state", &state, "--chain", &chain_hex, "--trust-rebuilders", &path("trusted"), "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(update["level"]["level"], "trusted", "{update}");
    assert_eq!(update["level_was"], "policy", "{update}");
    assert_eq!(update["level"]["trusted_rebuilders"][0], rebuilder_key);
    assert_eq!(update["level"]["other_rebuilders"], 0, "{update}");
    assert_eq!(update["level"]["disagreements"][0]["verdict"], "mismatch", "{update}");
    // The liar by the id its summary record names it by.
    let liar_id = chainiac_release::RebuilderId::of(&liar.public_key()).to_string();
    assert_eq!(update["level"]["disagreements"][0]["role"], "rebuilder", "{update}");
    assert_eq!(update["level"]["disagreements"][0]["rebuilder_id"], liar_id, "{update}");
    // `verify` of out.txt as hello-1.0/out.txt of the newest release, or of `version`.
    let verify_of = |version: Option<&str>, trust: &str, level: &str| {
        let (trust, out) = (path(trust), path("out.txt"));
        let mut args = vec!["verify", "--state", &state, "--chain", &chain_hex, "--artifact", "hello-1.0/out.txt"];
        args.extend(["--trust-rebuilders", &trust, "--min-level", level, &out]);
        if let Some(version) = version {
            args.extend(["--version", version]);
        }
        run(&args)
    };
    let verify = |trust: &str, level: &str| verify_of(None, trust, level);
    let (code, out, err) = verify("trusted", "trusted");
    assert!(code == Some(0) && out.contains("verified"), "{out}{err}");
    let (code, _, err) = verify("liar-trusted", "trusted");
    assert!(code == Some(1) && err.contains("level rebuilt, below this client's trusted"), "{err}");
    assert!(err.contains("no rebuilder this client trusts has reproduced it yet"), "{err}");
    let (code, out, err) = run(&["update", "--state", &state, "--chain", &chain_hex]);
    assert!(code == Some(0) && out.contains("DISAGREED"), "the liar stands out: {out}{err}");

    // Anyone can audit the summary a client verified against the witnesses' evidence.
    let (code, out, err) = run(&["rebuilder", "audit", "--state", &state, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let audit: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((audit["records"].as_array().unwrap().len(), audit["unbacked"].as_u64()), (2, Some(0)), "{audit}");

    // A client that anchors now skips the release block: the summary at the head names it,
    // and the release comes down from the head by hash links.
    let fresh = path("fresh.state");
    anchored(&fresh);
    let (code, out, err) = run(&["update", "--state", &fresh, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(update["release"]["version"], "1.0", "{update}");
    assert_eq!(update["level"]["level"], "rebuilt", "{update}");

    // Release 1.1: rebuilds of 1.0 are no longer taken (a summary at the head is always
    // about the newest release, so it can never take a client back), and the liar, one
    // disagreement over its limit of 1, is throttled.
    let mut next = manifest.clone();
    next.version = "1.1".into();
    next.time_ms = common::now_ms();
    let reply = cluster
        .client
        .call(
            &cluster.witnesses[1],
            Request::Propose { chain, proposal: release_of(next.clone(), &[&key(20), &key(21)]) },
        )
        .await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    let late = Attestation::sign(
        &key(33),
        AttestationBody { verifier: key(33).public_key(), ..lie(Outcome::Reproduced, manifest.id()).body },
    );
    let late = refused(submit_as(33, late).await);
    assert!(late.contains("newest release only"), "{late}");
    let throttled = refused(submit(lie(mismatch.clone(), next.id())).await);
    assert!(throttled.contains("is throttled"), "{throttled}");
    // Release 1.0, no longer the newest, keeps the level its last summary gave it: read on
    // the walk down to it, so it installs at --min-level trusted where 1.1 does not.
    common::wait_timeline_has(&cluster, chain, cluster.head(1, chain).await.unwrap()).await;
    let (code, out, err) =
        run(&["update", "--state", &state, "--chain", &chain_hex, "--trust-rebuilders", &path("trusted")]);
    assert!(code == Some(0) && out.contains("1.1"), "{out}{err}");
    let (code, out, err) = verify_of(Some("1.0"), "trusted", "trusted");
    assert!(code == Some(0) && out.contains("verified"), "1.0 is trusted: {out}{err}");
    let (code, _, err) = verify("trusted", "trusted");
    assert!(code == Some(1) && err.contains("below this client's trusted"), "1.1 is not yet: {err}");

    // The bad-hash tracker, against what happened: verifiers 20 and 21 reproduced both
    // releases; the rebuilder reproduced 1.0; the liar disagreed with it and is throttled.
    let Ok(Response::Tracker(report)) = cluster.client.call(&cluster.witnesses[0], Request::GetTracker { chain }).await
    else {
        panic!("no tracker")
    };
    let counts = |k: &chainiac_cosi::PublicKey| {
        let r = report.records.iter().find(|r| r.key == *k).unwrap();
        (r.role, r.attested, r.agreed, r.disagreed)
    };
    let rebuilder = chainiac_cosi::PublicKey::from_bytes(&hex_bytes(&rebuilder_key)).unwrap();
    assert_eq!(counts(&key(20).public_key()), (Role::Verifier, 2, 2, 0));
    assert_eq!(counts(&rebuilder), (Role::Rebuilder, 1, 1, 0));
    assert_eq!(counts(&liar.public_key()), (Role::Rebuilder, 1, 0, 1));
    assert_eq!(report.records.len(), 4);
    assert_eq!(report.disputed.len(), 1);
    assert_eq!((report.disputed[0].release, report.disputed[0].version.as_str()), (1, "1.0"));
    assert_eq!(report.throttled.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![liar.public_key().to_bytes()]);
    let (code, out, err) = run(&["project", "show", "--state", &state, "--chain", &chain_hex]);
    assert!(code == Some(0) && out.contains("THROTTLED") && out.contains("DISPUTED release 1.0"), "{out}{err}");

    // Strangers' queries stay within bounds: no tracker or evidence of a timeline (which
    // would be a scan of every block), no evidence of a release that is no longer the newest.
    let ask = |request: Request| {
        let client = &cluster.client;
        let witness = &cluster.witnesses[3];
        async move { format!("{:?}", client.call(witness, request).await) }
    };
    let tracker = ask(Request::GetTracker { chain: timeline }).await;
    assert!(tracker.contains("BadRequest") && tracker.contains("not a release chain"), "{tracker}");
    let evidence = ask(Request::GetRebuilds { chain: timeline, release: u64::MAX }).await;
    assert!(evidence.contains("BadRequest"), "{evidence}");
    let older = ask(Request::GetRebuilds { chain, release: 1 }).await;
    assert!(older.contains("NotFound") && older.contains("newest release"), "{older}");
    let nonsense = ask(Request::GetRebuilds { chain, release: u64::MAX }).await;
    assert!(nonsense.contains("NotFound"), "{nonsense}");
    let Ok(Response::Rebuilds(none)) =
        cluster.client.call(&cluster.witnesses[3], Request::GetRebuilds { chain, release: 6 }).await
    else {
        panic!("the newest release's evidence")
    };
    assert!(none.is_empty(), "nothing rebuilt 1.1 yet: the liar was throttled");

    // `project show` reads the tracker from the chain: a first member whose own tracker
    // hides the dispute hides nothing (its throttles are named as its own).
    let hider = Hider(Liar::relaying_witness_1(&cluster));
    common::replace_witness_0_serving(&mut cluster, hider, &[FrameClass::Query]);
    let (code, out, err) = run(&["project", "show", "--state", &state, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["disputed"][0]["version"], "1.0", "{shown}");
    let liar_line = shown["tracker"].as_array().unwrap().iter().find(|r| r["key"] == liar.public_key().to_string());
    assert_eq!(liar_line.unwrap()["disagreed"], 1, "{shown}");
    assert_eq!(shown["tracker"].as_array().unwrap().len(), 4, "{shown}");
}

/// A member whose tracker answers show nobody disagreeing (and nobody throttled); it relays
/// everything else to witness 1 honestly.
struct Hider(Liar);

impl Handler for Hider {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        match self.0.relay(request).await {
            Response::Tracker(mut report) => {
                report.disputed.clear();
                report.throttled.clear();
                for record in &mut report.records {
                    (record.agreed, record.disagreed) = (record.attested, 0);
                }
                Response::Tracker(report)
            }
            other => other,
        }
    }
    fn refused(&self, _: &str) {}
}

/// Witnesses that batch (`rebuild_batch_seconds`) hold each rebuilder's attestation and
/// append a release's batch as one rebuilds block and one summary, so a client following
/// the project downloads one head move for all of them. A resubmission while it waits gets
/// the same answer and adds nothing. A batch whose witness is killed before it is due is
/// kept on disk and appended after the restart. A client that skipped the
/// release takes it with the summary at the head, by linked proof (the links routed through
/// it) and by forward proofs (`--every-hop`, then the release asked for separately).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_batches_append_a_release_s_attestations_together() {
    let (mut cluster, timeline_genesis, chain, project_genesis, manifest) = batching_cluster_with_a_release(3).await;
    let attestation = |who: u8| attested_by(who, manifest, Outcome::Reproduced);
    let members: Vec<(String, PublicKey)> = cluster.witnesses.iter().map(|w| (w.address.clone(), w.key)).collect();
    let submit = |who: u8, witness: usize| {
        let (address, witness_key) = members[witness].clone();
        let request = Request::SubmitRebuild { chain, attestation: attestation(who) };
        async move { common::Client::with_key(key(who)).call_at(&address, &witness_key, request).await }
    };
    let queued = |reply: Result<Response, chainiac_proto::CallError>| match reply {
        Ok(Response::RebuildQueued { due_ms }) => due_ms,
        other => panic!("not queued: {other:?}"),
    };
    async fn wait_head(cluster: &Cluster, chain: ChainId, at: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while cluster.head(1, chain).await != Some(at) {
            assert!(std::time::Instant::now() < deadline, "head {:?}, not {at}", cluster.head(1, chain).await);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    // Three rebuilders at one member: one batch, due 3 s after the first; a resubmission
    // gets the same answer.
    let due = queued(submit(40, 1).await);
    assert_eq!(queued(submit(41, 1).await), due);
    assert_eq!(queued(submit(42, 1).await), due);
    assert_eq!(queued(submit(40, 1).await), due, "a resubmission while it waits");
    assert_eq!(cluster.head(1, chain).await, Some(1), "nothing appended before the batch is due");
    wait_head(&cluster, chain, 3).await;
    let blocks = match cluster.client.call(&cluster.witnesses[1], Request::GetBlocks { chain, from: 2, count: 2 }).await
    {
        Ok(Response::Blocks(blocks)) => blocks,
        other => panic!("{other:?}"),
    };
    assert_eq!(blocks[0].header.kind, KIND_REBUILDS);
    let rebuilds = Rebuilds::from_bytes(&blocks[0].payload).unwrap();
    let keys: Vec<_> = rebuilds.attestations.iter().map(|a| a.body.verifier).collect();
    assert_eq!(keys, [40, 41, 42].map(|k| key(k).public_key()), "one rebuilds block, each once");
    let summary = RebuildSummary::of_block(blocks[1].header.kind, &blocks[1].payload).unwrap();
    assert_eq!((blocks[1].header.kind, summary.release, summary.records.len()), (KIND_REBUILD_SUMMARY, 1, 3));
    let replay = format!("{:?}", submit(41, 2).await);
    assert!(replay.contains("already attested release 1"), "{replay}");

    // Killed before its batch is due: the batch was on disk before the answer, and the
    // restarted witness appends it (the rebuilder sends nothing again).
    queued(submit(43, 2).await);
    cluster.witnesses[2].kill();
    cluster.witnesses[2].start();
    wait_head(&cluster, chain, 5).await;
    let summary = match cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain, index: 5 }).await {
        Ok(Response::Block(Some(block))) => RebuildSummary::of_block(block.header.kind, &block.payload).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(summary.record_of(&key(43).public_key()).is_some(), "{summary:?}");

    // One key at two members at once, so both batches hold it, with two others at one of
    // them: whichever batch lands second finds the key on the chain, and the others in it
    // are appended all the same (one at a time if the members refused the block).
    let (first, second) = tokio::join!(submit(44, 1), submit(44, 3));
    queued(first);
    queued(second);
    queued(submit(45, 3).await);
    queued(submit(46, 3).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let head = loop {
        let head = cluster.head(1, chain).await.unwrap();
        let reply = cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain, index: head }).await;
        let Ok(Response::Block(Some(block))) = reply else { panic!("{reply:?}") };
        let recorded = RebuildSummary::of_block(block.header.kind, &block.payload).map_or(0, |s| s.records.len());
        if recorded == 7 {
            break head;
        }
        assert!(std::time::Instant::now() < deadline, "the summary at {head} records {recorded} of 7 rebuilders");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    common::wait_timeline_has(&cluster, chain, head).await;

    // Clients that anchor now skipped the release: it comes with the summary.
    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let chain_hex = chain.to_hex();
    for (name, every_hop) in [("linked.state", false), ("hops.state", true)] {
        let state = dir.path().join(name).to_str().unwrap().to_string();
        anchor_both(dir.path(), &state);
        let mut args = vec!["update", "--state", &state, "--chain", &chain_hex, "--json"];
        if every_hop {
            args.push("--every-hop");
        }
        let (code, out, err) = chainiac(&args);
        assert_eq!(code, Some(0), "{name}: {out}{err}");
        let update: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(update["release"]["version"], "1.0", "{name}: {update}");
        assert_eq!(update["level"]["level"], "rebuilt", "{name}: {update}");
        assert_eq!(update["level"]["other_rebuilders"], 7, "{name}: {update}");
    }
    // A client that wants eight rebuilders outside the policy refuses it, seven takes it.
    let (state, hello) = (dir.path().join("linked.state"), dir.path().join("hello"));
    std::fs::write(&hello, BINARY).unwrap();
    let (state, hello) = (state.to_str().unwrap(), hello.to_str().unwrap());
    let verify = |level: &str| {
        chainiac(&[
            "verify",
            "--state",
            state,
            "--chain",
            &chain_hex,
            "--artifact",
            "hello",
            "--min-level",
            level,
            hello,
        ])
    };
    let (code, out, err) = verify("rebuilt:8");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("below this client's rebuilt:8: 7 rebuilder(s) outside the policy reproduced it, 8 wanted"),
        "{err}"
    );
    let (code, out, err) = verify("rebuilt:7");
    assert!(code == Some(0) && out.contains("verified"), "{out}{err}");
    let (code, _, err) = verify("rebuilt:0");
    assert!(code == Some(2) && err.contains("rebuilt:N or trusted:N (N ≥ 1)"), "{err}");
    let (code, _, err) = verify("trusted:2");
    assert!(code == Some(2) && err.contains("needs --trust-rebuilders naming at least 2 key(s)"), "{err}");
}

/// A client that holds a release and a summary about it, whose chain then gets a new
/// release and a yank of the old one (the usual fix, then yank), finds the new release
/// below the yank at the head (walked down by hash links): the summary it held is about a
/// release the chain has replaced. Likewise a summary alone below a roster-like head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_a_summary_finds_a_new_release_below_a_yank() {
    let (mut cluster, timeline_genesis, chain, project_genesis, manifest) = batching_cluster_with_a_release(1).await;
    let (address, witness_key) = (cluster.witnesses[1].address.clone(), cluster.witnesses[1].key);
    let submit = |who: u8, manifest: chainiac_release::ManifestId| {
        let attestation = attested_by(who, manifest, Outcome::Reproduced);
        let request = Request::SubmitRebuild { chain, attestation };
        let (address, witness_key) = (address.clone(), witness_key);
        async move { common::Client::with_key(key(who)).call_at(&address, &witness_key, request).await }
    };
    let reply = submit(40, manifest).await;
    assert!(matches!(reply, Ok(Response::RebuildQueued { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 3).await;

    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    chainiac_witness::keyfile::write(&dir.path().join("dev1.key"), &key(1)).unwrap();
    let state = path("client.state");
    anchor_both(dir.path(), &state);
    // The release manager's own state (yanking updates it first).
    let yanker = path("yanker.state");
    anchor_both(dir.path(), &yanker);
    let chain_hex = chain.to_hex();
    let update = || update_json(&state, &chain_hex);
    let first = update();
    assert_eq!(
        (first["release"]["version"].as_str(), first["level"]["level"].as_str()),
        (Some("1.0"), Some("rebuilt"))
    );

    // Release 1.1 (block 4), then 1.0 yanked (block 5): the head is the yank.
    let proposal = release("1.1", &[&key(20), &key(21)]);
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    // The first member the yanks go to drops them: it refuses this one, and the next
    // member appends it.
    let dropper = Dropper(Liar::relaying_witness_1(&cluster), Default::default());
    let classes = &[FrameClass::Query, FrameClass::Submit];
    common::replace_witness_0_serving(&mut cluster, dropper, classes);
    let dev1 = path("dev1.key");
    let yank = ["release", "yank", "--state", &yanker, "--chain", &chain_hex, "--version", "1.0"];
    let (code, out, err) = chainiac(&[&yank[..], &["--reason", "superseded by 1.1", "--key", &dev1]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("refused it: Refused: a made-up rule says no"), "named: {err}");
    common::wait_timeline_has(&cluster, chain, 5).await;
    let second = update();
    assert_eq!(second["to"].as_u64(), Some(5), "{second}");
    assert_eq!(second["release"]["version"], "1.1", "the release below the yank: {second}");
    assert_eq!(second["level"]["level"], "policy", "no rebuilder has attested 1.1: {second}");
    assert_eq!(second["yanked"][0]["version"], "1.0", "{second}");
    std::fs::write(path("hello"), BINARY).unwrap();
    let verify = ["verify", "--state", &state, "--chain", &chain_hex, "--version", "1.0", "--artifact", "hello"];
    let (code, out, err) = chainiac(&[&verify[..], &[path("hello").as_str()]].concat());
    assert_eq!(code, Some(1), "1.0 stays refused: {out}{err}");
    assert!(err.contains("superseded by 1.1"), "{err}");

    // A rebuilder attests 1.1 (summary at block 7), then 1.1 is yanked too (block 8): the
    // summary below the head is taken with the release it is about.
    let manifest_11 = match cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain, index: 4 }).await {
        Ok(Response::Block(Some(block))) => ReleasePayload::from_bytes(&block.payload).unwrap().manifest.id(),
        other => panic!("{other:?}"),
    };
    let reply = submit(41, manifest_11).await;
    assert!(matches!(reply, Ok(Response::RebuildQueued { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 7).await;
    // It claims a block for this one: the answer is checked, and the next member appends it.
    let yank = ["release", "yank", "--state", &yanker, "--chain", &chain_hex, "--version", "1.1"];
    let (code, out, err) = chainiac(&[&yank[..], &["--reason", "also broken", "--key", &dev1, "--json"]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    let yanked: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(yanked["index"], 8, "appended by the next member: {yanked}");
    assert!(err.contains("answered a block that the committee did not sign"), "{err}");
    common::wait_timeline_has(&cluster, chain, 8).await;
    let third = update();
    assert_eq!(third["to"].as_u64(), Some(8), "{third}");
    assert_eq!(third["level"]["level"], "rebuilt", "the summary below the yank: {third}");
    assert_eq!(third["level_was"], "policy", "{third}");
}

/// A state an older client left behind holds release 1.0 (and its summary) at the block
/// that yanked 1.0, although 1.1 replaced it below. The next summary at the head, about 1.1
/// at or below the client's block, brings 1.1 (it was ignored as "at or below the client's
/// block"), checked under the policy in force at 1.1's block: not the client's nor the
/// head's (the yank changed it), fetched by its hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_left_on_a_replaced_release_takes_the_release_a_summary_names() {
    let (updated, stripped) = update_a_state_left_on_release_1(Some(1)).await;
    assert!(stripped > 0, "the stripper was asked");
    assert_eq!(updated["to"].as_u64(), Some(7), "{updated}");
    assert_eq!(updated["release"]["version"], "1.1", "the release the summary names: {updated}");
    assert_eq!(updated["level"]["level"], "rebuilt", "{updated}");
}

/// The same state as a client from before `release_index` (2026-12-01) left it: it cannot
/// tell a later release at or below its block from an earlier one, so it ignores every
/// summary there (SPEC §11.8: none may take a client back) and keeps 1.0 until a release
/// reaches the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_without_its_release_index_ignores_summaries_at_or_below_its_block() {
    let (updated, _) = update_a_state_left_on_release_1(None).await;
    assert_eq!(updated["to"].as_u64(), Some(7), "{updated}");
    assert!(updated["release"].is_null(), "no release taken: {updated}");
    assert_eq!(updated["level"]["version"], "1.0", "the summary of 1.1 is ignored: {updated}");
}

/// Release 1.0 (block 1) with a summary (3), 1.1 (4), a yank of 1.0 (5); a state edited to
/// hold 1.0 at block 5 with `release_index`; then a summary of 1.1 (7), and the update to
/// it, witness 0 replaced by a [`PolicyStripper`]: the update and how often it stripped.
async fn update_a_state_left_on_release_1(release_index: Option<u64>) -> (serde_json::Value, usize) {
    let (mut cluster, timeline_genesis, chain, project_genesis, manifest) = batching_cluster_with_a_release(1).await;
    let (address, witness_key) = (cluster.witnesses[1].address.clone(), cluster.witnesses[1].key);
    let submit = |who: u8, manifest: chainiac_release::ManifestId| {
        let request = Request::SubmitRebuild { chain, attestation: attested_by(who, manifest, Outcome::Reproduced) };
        let (address, witness_key) = (address.clone(), witness_key);
        async move { common::Client::with_key(key(who)).call_at(&address, &witness_key, request).await }
    };
    let block = |index: u64| {
        let client = &cluster.client;
        let witness = &cluster.witnesses[1];
        async move {
            match client.call(witness, Request::GetBlock { chain, index }).await {
                Ok(Response::Block(Some(block))) => block,
                other => panic!("block {index}: {other:?}"),
            }
        }
    };
    assert!(matches!(submit(40, manifest).await, Ok(Response::RebuildQueued { .. })));
    common::wait_timeline_has(&cluster, chain, 3).await;
    let proposal = release("1.1", &[&key(20), &key(21)]);
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 4).await;

    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let state = dir.path().join("client.state").to_str().unwrap().to_string();
    anchor_both(dir.path(), &state);
    let chain_hex = chain.to_hex();
    let dev1 = dir.path().join("dev1.key");
    chainiac_witness::keyfile::write(&dev1, &key(1)).unwrap();
    let yank = ["release", "yank", "--state", &state, "--chain", &chain_hex, "--version", "1.0", "--reason", "old"];
    let (code, out, err) = chainiac(&[&yank[..], &["--key", dev1.to_str().unwrap()]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    common::wait_timeline_has(&cluster, chain, 5).await;
    let update = || update_json(&state, &chain_hex);
    update();
    // As an older client would have left it: at block 5 (the yank), holding 1.0 and its
    // summary.
    let mut stuck = chainiac_client::ClientState::from_bytes(&std::fs::read(&state).unwrap()).unwrap();
    let held = stuck.chains.get_mut(&chain).unwrap();
    assert_eq!((held.index(), held.release_index), (5, Some(4)));
    held.release = Some(ReleasePayload::from_bytes(&block(1).await.payload).unwrap());
    held.release_index = release_index;
    let summary_block = block(3).await;
    held.rebuilds = Some(RebuildSummary::of_block(summary_block.header.kind, &summary_block.payload).unwrap());
    std::fs::write(&state, stuck.to_bytes()).unwrap();

    let manifest_11 = ReleasePayload::from_bytes(&block(4).await.payload).unwrap().manifest.id();
    assert!(matches!(submit(41, manifest_11).await, Ok(Response::RebuildQueued { .. })));
    common::wait_timeline_has(&cluster, chain, 7).await;
    // The first member asked for the policy's block withholds the policy: the next is asked.
    let stripped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stripper = PolicyStripper(Liar::relaying_witness_1(&cluster), stripped.clone());
    common::replace_witness_0(&mut cluster, stripper);
    let updated = update();
    (updated, stripped.load(std::sync::atomic::Ordering::SeqCst))
}

/// A member that answers `GetBlock` with the block's policy left out (counting how often),
/// as if that block had not put it in force; it relays everything else to witness 1.
struct PolicyStripper(Liar, Arc<std::sync::atomic::AtomicUsize>);

impl Handler for PolicyStripper {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        match self.0.relay(request).await {
            Response::Block(Some(mut block)) if block.policy.is_some() => {
                block.policy = None;
                self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Response::Block(Some(block))
            }
            other => other,
        }
    }
    fn refused(&self, _: &str) {}
}

/// Members refuse to cosign a summary the chain already holds: a faulty leader could
/// otherwise move the chain's head, for every client following it, again and again with
/// nothing new (here witness 0's key leads the round, its process killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_the_chain_already_holds_is_not_cosigned_again() {
    let (mut cluster, _, chain, project_genesis, manifest) = batching_cluster_with_a_release(1).await;
    let attestation = attested_by(40, manifest, Outcome::Reproduced);
    let (address, witness_key) = (cluster.witnesses[1].address.clone(), cluster.witnesses[1].key);
    let request = Request::SubmitRebuild { chain, attestation };
    let reply = common::Client::with_key(key(40)).call_at(&address, &witness_key, request).await;
    assert!(matches!(reply, Ok(Response::RebuildQueued { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 3).await;
    cluster.witnesses[0].kill();

    // Block 4: the summary at block 3 again, as witness 0 would lead it.
    let Ok(Response::Block(Some(summary))) =
        cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain, index: 3 }).await
    else {
        panic!("block 3")
    };
    assert_eq!(summary.header.kind, KIND_REBUILD_SUMMARY);
    let proposal = Proposal {
        kind: KIND_REBUILD_SUMMARY,
        payload: summary.payload,
        timestamp_ms: common::now_ms(),
        ..Proposal::default()
    };
    let block = cluster.next_block(1, chain, &project_genesis, proposal).await;
    assert_eq!(block.header.index, 4);
    let refusal = announce_as_witness_0(&cluster, block).await;
    assert!(refusal.contains("already records all of it"), "{refusal}");
    assert_eq!(cluster.head(1, chain).await, Some(3));
}

/// `verify` and `fetch` ask nobody: when the state's newest timeline block is older than
/// the project's policy takes at an update, they say that a yank since may be unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_fetch_say_when_the_state_is_older_than_the_policy_takes() {
    let cluster = Cluster::start(4).await;
    let policy = Policy { max_age_ms: 3_000, ..hello_policy() };
    let (_, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &policy).await;
    let reply = cluster
        .client
        .call(&cluster.witnesses[1], Request::Propose { chain, proposal: release("1.0", &[&key(20), &key(21)]) })
        .await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 1).await;
    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let state = path("client.state");
    anchor_both(dir.path(), &state);
    std::fs::write(path("hello"), BINARY).unwrap();
    let chain_hex = chain.to_hex();
    let (code, out, err) = chainiac(&["update", "--state", &state, "--chain", &chain_hex]);
    assert_eq!(code, Some(0), "{out}{err}");
    let hello = path("hello");
    let verify = ["verify", "--state", &state, "--chain", &chain_hex, "--artifact", "hello", &hello];
    let (code, out, err) = chainiac(&verify);
    assert!(code == Some(0) && !err.contains("WARNING"), "fresh: {out}{err}");
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    let (code, out, err) = chainiac(&verify);
    assert_eq!(code, Some(0), "still verified: {out}{err}");
    assert!(err.contains("WARNING: this state's view") && err.contains("more than its policy's 3 s"), "{err}");
    let source = format!("file://{hello}");
    let fetched = path("fetched");
    let mut fetch = vec!["fetch", "--state", &state, "--chain", &chain_hex, "--artifact", "hello"];
    fetch.extend(["--from", &source, "--out", &fetched]);
    let (code, out, err) = chainiac(&fetch);
    assert!(code == Some(0) && err.contains("a yank since then is not known here"), "{out}{err}");
}

/// Four witnesses batching rebuilds for `batch_seconds`, a timeline, and a project chain
/// with release 1.0 (block 1): the cluster, both geneses and the release's manifest id.
async fn batching_cluster_with_a_release(
    batch_seconds: u64,
) -> (Cluster, Block, ChainId, Block, chainiac_release::ManifestId) {
    let cluster = Cluster::start_configured(4, 400, |_, config| config.rebuild_batch_seconds = batch_seconds).await;
    let (_, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &hello_policy()).await;
    let proposal = release("1.0", &[&key(20), &key(21)]);
    let manifest = ReleasePayload::from_bytes(&proposal.payload).unwrap().manifest.id();
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    (cluster, timeline_genesis, chain, project_genesis, manifest)
}

/// A member that sends the rebuild summary at the head in full (SPEC §7.5, the named form)
/// with its records rewritten to a key the client trusts: the full header no longer hashes
/// to the id the timeline records, so the client refuses the answer and takes another
/// member's. Counts the answers it rewrote.
struct Renamer(Liar, PublicKey, Arc<std::sync::atomic::AtomicUsize>);

impl Handler for Renamer {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        let mut answer = self.0.relay(request).await;
        if let Response::LinkedProofs(answers) = &mut answer {
            for named in answers.iter_mut().flatten().filter_map(|proof| proof.named.as_mut()) {
                let Some((release, release_block)) = chainiac_release::names_block(named.kind, &named.payload) else {
                    continue;
                };
                let mut summary = RebuildSummary::of_block(named.kind, &named.payload).unwrap();
                assert_eq!(summary.release, release);
                for record in &mut summary.records {
                    record.rebuilder = chainiac_release::RebuilderId::of(&self.1);
                }
                named.payload = summary.to_block_bytes(release_block);
                self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        answer
    }
    fn refused(&self, _: &str) {}
}

/// A client that skipped a release gets the rebuild summary at the head in full, with the
/// links starting at the release it names (SPEC §7.5): the blocks between cost nothing. A
/// member that rewrites the summary's records (to make a rebuilder the client trusts appear)
/// is refused: the summary is bound by the id the timeline records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_at_the_head_names_its_release_and_cannot_be_rewritten() {
    let (mut cluster, timeline_genesis, chain, project_genesis, manifest) = batching_cluster_with_a_release(0).await;
    let attestation = attested_by(40, manifest, Outcome::Reproduced);
    let request = Request::SubmitRebuild { chain, attestation };
    let reply = common::Client::with_key(key(40))
        .call_at(&cluster.witnesses[1].address, &cluster.witnesses[1].key, request)
        .await;
    let Ok(Response::Appended { block: summary }) = reply else { panic!("{reply:?}") };
    assert_eq!((summary.header.index, summary.header.kind), (3, KIND_REBUILD_SUMMARY));
    let release_block = match cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain, index: 1 }).await {
        Ok(Response::Block(Some(block))) => block.id(),
        other => panic!("{other:?}"),
    };
    assert_eq!(chainiac_release::names_block(summary.header.kind, &summary.payload), Some((1, release_block)));
    common::wait_timeline_has(&cluster, chain, 3).await;

    // Witness 1's own answer for a client at the genesis: the summary in full, one link
    // (the release, with its payload), nothing of block 2.
    let query = chainiac_proto::LinkedQuery { chain, from: 0, recorded: 3 };
    let request = Request::GetLinkedProofs { queries: vec![query], with_payload: true, held_appointments: vec![] };
    let Ok(Response::LinkedProofs(answers)) = cluster.client.call(&cluster.witnesses[1], request).await else {
        panic!("linked proofs")
    };
    let proof = answers[0].as_ref().unwrap();
    assert!(proof.named.is_some(), "{proof:?}");
    assert_eq!(proof.links.iter().map(|l| l.index).collect::<Vec<_>>(), vec![1]);
    assert_eq!(proof.link_payload.as_ref().map(|p| p.index), Some(1));

    let renamed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let trusted = key(41).public_key();
    let renamer = Renamer(Liar::relaying_witness_1(&cluster), trusted, renamed.clone());
    common::replace_witness_0(&mut cluster, renamer);
    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("trusted"), format!("{trusted}\n")).unwrap();
    let state = path("client.state");
    anchor_both(dir.path(), &state);
    let (chain_hex, trust) = (chain.to_hex(), path("trusted"));
    let (code, out, err) =
        chainiac(&["update", "--state", &state, "--chain", &chain_hex, "--trust-rebuilders", &trust, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((update["to"].as_u64(), update["release"]["version"].as_str()), (Some(3), Some("1.0")), "{update}");
    assert_eq!(update["level"]["level"], "rebuilt", "the rewritten records were refused: {update}");
    assert_eq!(update["level"]["other_rebuilders"], 1, "{update}");
    assert!(renamed.load(std::sync::atomic::Ordering::SeqCst) > 0, "the client asked the member that rewrites");
}

/// A member that answers `GetRebuildRecords` with each proven record's verdict turned to
/// `Reproduced` (a disagreeing trusted rebuilder shown agreeing), relaying the rest
/// honestly. Counts the answers it changed.
struct RecordBender(Liar, Arc<std::sync::atomic::AtomicUsize>);

impl Handler for RecordBender {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        let mut answer = self.0.relay(request).await;
        if let Response::RebuildRecords(proofs) = &mut answer {
            for proof in proofs.iter_mut() {
                if let chainiac_release::RecordProof::Present(opening) = proof {
                    opening.record.verdict = Verdict::Reproduced;
                }
            }
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        answer
    }
    fn refused(&self, _: &str) {}
}

/// Past 32 rebuilders a release's summary holds their counts and a Merkle root (SPEC
/// §11.8), so a flood of keys costs a follower a fixed ≈ 110 bytes, not 18 a key, and
/// fills no slot another rebuilder needs below 4,096. A client that trusts some keys gets
/// their records proven against the root — present, or proven absent — and the others
/// counted; a member that changes a proven record is skipped for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rebuilders_is_committed_and_a_client_proves_the_ones_it_trusts() {
    let (mut cluster, timeline_genesis, chain, project_genesis, manifest) = batching_cluster_with_a_release(2).await;
    let outcome = |who: u8| match who {
        120 | 130 => Outcome::Mismatch { artifacts: vec![] },
        121 => Outcome::Failed { reason: "out of memory".into() },
        _ => Outcome::Reproduced,
    };
    let (address, witness_key) = (cluster.witnesses[1].address.clone(), cluster.witnesses[1].key);
    for who in 100..140u8 {
        let request = Request::SubmitRebuild { chain, attestation: attested_by(who, manifest, outcome(who)) };
        let reply = common::Client::with_key(key(who)).call_at(&address, &witness_key, request).await;
        assert!(matches!(reply, Ok(Response::RebuildQueued { .. })), "{who}: {reply:?}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (head, summary) = loop {
        let head = cluster.head(1, chain).await.unwrap();
        let reply = cluster.client.call(&cluster.witnesses[1], Request::GetBlock { chain, index: head }).await;
        let Ok(Response::Block(Some(block))) = reply else { panic!("{reply:?}") };
        match RebuildSummary::of_block(block.header.kind, &block.payload) {
            Ok(summary) if summary.count() == 40 => break (head, summary),
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "no summary of the 40 attestations by block {head}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let committed = summary.committed.expect("40 records are committed");
    assert!(summary.records.is_empty());
    assert_eq!(
        committed.tally,
        chainiac_release::Tally { reproduced_sandboxed: 37, reproduced_unconfined: 0, mismatch: 2, failed: 1 }
    );
    common::wait_timeline_has(&cluster, chain, head).await;
    // Anyone may ask, within bounds: at most 64 ids, over attestations the witness holds.
    let ask = |count: u64, ids: usize| Request::GetRebuildRecords {
        chain,
        release: 1,
        count,
        rebuilders: vec![chainiac_release::RebuilderId([7; 16]); ids],
    };
    let too_many = format!("{:?}", cluster.client.call(&cluster.witnesses[1], ask(40, 65)).await);
    assert!(too_many.contains("more than 64 rebuilders"), "{too_many}");
    let beyond = format!("{:?}", cluster.client.call(&cluster.witnesses[1], ask(41, 1)).await);
    assert!(beyond.contains("has 40 attestations here, not 41"), "{beyond}");
    let Ok(Response::RebuildRecords(proofs)) = cluster.client.call(&cluster.witnesses[1], ask(40, 1)).await else {
        panic!("no proofs")
    };
    assert_eq!(committed.check(&chainiac_release::RebuilderId([7; 16]), &proofs[0]), Ok(None), "proven absent");

    // Witness 0 bends the records it proves; the client asks it first, refuses, asks on.
    let bent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bender = RecordBender(Liar::relaying_witness_1(&cluster), bent.clone());
    common::replace_witness_0(&mut cluster, bender);
    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Trusted: 110 (reproduced), 130 (mismatch), and 200, who attested nothing.
    let trusted: Vec<String> = [110u8, 130, 200].iter().map(|&k| key(k).public_key().to_string()).collect();
    std::fs::write(path("trusted"), trusted.join("\n")).unwrap();
    let state = path("client.state");
    anchor_both(dir.path(), &state);
    let (chain_hex, trust) = (chain.to_hex(), path("trusted"));
    // First without trusting anyone: the counts alone, nothing asked.
    let before = update_json(&state, &chain_hex);
    assert_eq!((before["to"].as_u64(), before["level"]["level"].as_str()), (Some(head), Some("rebuilt")), "{before}");
    assert_eq!(before["level"]["other_rebuilders"], 37, "{before}");
    assert_eq!(bent.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing asked");
    // Then trusting three keys, the chain unmoved: their records are proven now.
    let (code, out, err) =
        chainiac(&["update", "--state", &state, "--chain", &chain_hex, "--trust-rebuilders", &trust, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    let level = &update["level"];
    assert_eq!(level["level"], "trusted", "{update}");
    assert_eq!(level["trusted_rebuilders"], serde_json::json!([trusted[0]]), "{update}");
    assert_eq!(level["other_rebuilders"], 36, "37 reproduced, one of them trusted: {update}");
    let id130 = chainiac_release::RebuilderId::of(&key(130).public_key()).to_string();
    assert_eq!(
        level["disagreements"],
        serde_json::json!([{ "role": "rebuilder", "rebuilder_id": id130, "verdict": "mismatch" }]),
        "{update}"
    );
    assert_eq!(level["other_disagreements"], 2, "{update}");
    assert!(bent.load(std::sync::atomic::Ordering::SeqCst) > 0, "the client asked the member that bends records");
    let skipped = update["skipped"].to_string();
    assert!(skipped.contains("rebuild records"), "the bending member is named: {update}");
    // Proven present or absent, for this summary: the next update asks nothing.
    let asked = bent.load(std::sync::atomic::Ordering::SeqCst);
    let (code, out, err) =
        chainiac(&["update", "--state", &state, "--chain", &chain_hex, "--trust-rebuilders", &trust, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["level"], update["level"], "{again}");
    assert_eq!(bent.load(std::sync::atomic::Ordering::SeqCst), asked, "nothing asked again");

    // `verify` reads the held records: trusted:2 is missing one (130 disagreed, 200 is absent).
    std::fs::write(path("hello"), BINARY).unwrap();
    let verify = |level: &str| {
        let (state, hello) = (state.as_str(), path("hello"));
        let args = [
            "verify",
            "--state",
            state,
            "--chain",
            &chain_hex,
            "--artifact",
            "hello",
            "--trust-rebuilders",
            &trust,
            "--min-level",
            level,
            &hello,
        ];
        chainiac(&args)
    };
    let (code, out, err) = verify("trusted:2");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("1 rebuilder(s) this client trusts reproduced it, 2 wanted"), "{err}");
    let (code, out, err) = verify("trusted");
    assert!(code == Some(0) && out.contains("verified"), "{out}{err}");

    // An auditor recomputes the counts and root from the 40 signed attestations before it.
    let (code, out, err) = chainiac(&["rebuilder", "audit", "--state", &state, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let audit: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(audit["committed"]["matches_the_attestations"], true, "{audit}");
    assert_eq!((audit["committed"]["records"].as_u64(), audit["invalid"].as_u64()), (Some(40), Some(0)), "{audit}");

    // Once the next release is appended, release 1's records are still proven (read from
    // its rebuilds blocks, which take no more).
    let proposal = release("1.1", &[&key(20), &key(21)]);
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    let id110 = chainiac_release::RebuilderId::of(&key(110).public_key());
    let request = Request::GetRebuildRecords { chain, release: 1, count: 40, rebuilders: vec![id110] };
    let Ok(Response::RebuildRecords(proofs)) = cluster.client.call(&cluster.witnesses[1], request).await else {
        panic!("no proofs for the older release")
    };
    let record = committed.check(&id110, &proofs[0]).unwrap().expect("present");
    assert_eq!(record.verdict, Verdict::Reproduced);
}

/// `block` announced to witness 1 with witness 0's key, as witness 0 would lead its round
/// (four members): witness 1's answer, as text.
async fn announce_as_witness_0(cluster: &Cluster, block: Block) -> String {
    use chainiac_proto::message::Announce;
    let leader_key = cluster.keys(&[0]).pop().unwrap();
    let roster = cluster.roster(&[0, 1, 2, 3]);
    let leader = roster.index_of(&leader_key.public_key()).unwrap();
    let mut announce = Announce {
        block,
        session: chainiac_cosi::protocol::SessionId([7; 32]),
        leader: leader as u32,
        branching: 4,
        excluded: chainiac_cosi::Mask::empty(4).as_bytes().to_vec(),
        ballot: chainiac_witness::agreement::next_owned(0, leader, 4).unwrap(),
        justification: None,
        leader_signature: [0; 64],
    };
    announce.sign(&leader_key);
    let reply = common::Client::with_key(leader_key).call(&cluster.witnesses[1], Request::Announce(announce)).await;
    format!("{reply:?}")
}

/// A member that passes a proposal on to witness 1, which appends it, and loses the answer.
struct Swallower(Liar);

impl Handler for Swallower {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        if !matches!(request, Request::Propose { .. }) {
            return self.0.relay(request).await;
        }
        self.0.relay(request).await;
        Response::Error(chainiac_proto::ErrorReply::new(chainiac_proto::ErrorCode::Unavailable, "the answer was lost"))
    }
    fn refused(&self, _: &str) {}
}

/// `release yank` sent first to a member that gets it appended and loses the answer: the
/// other members refuse the replay (1.0 is yanked already), and the command finds the yank
/// in force at the chain's head, from the chain's own committee (the timeline has not
/// recorded it yet), says so, and names the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yank_whose_answer_is_lost_is_found_at_the_head() {
    let (mut cluster, timeline_genesis, chain, project_genesis, _) = batching_cluster_with_a_release(1).await;
    common::wait_timeline_has(&cluster, chain, 1).await;
    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    chainiac_witness::keyfile::write(&dir.path().join("dev1.key"), &key(1)).unwrap();
    let state = path("client.state");
    anchor_both(dir.path(), &state);
    let chain_hex = chain.to_hex();
    let classes = &[FrameClass::Query, FrameClass::Submit];
    let swallower = Swallower(Liar::relaying_witness_1(&cluster));
    common::replace_witness_0_serving(&mut cluster, swallower, classes);
    let (dev1, reason) = (path("dev1.key"), "lost answer");
    let yank = ["release", "yank", "--state", &state, "--chain", &chain_hex, "--version", "1.0", "--reason", reason];
    let (code, out, err) = chainiac(&[&yank[..], &["--key", &dev1]].concat());
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("no member said it appended it, but its policy is in force at the head, block 2"), "{err}");
    assert!(err.contains("the answer was lost"), "the member is named: {err}");
    assert!(err.contains("refused it"), "the replay was refused: {err}");
    assert_eq!(cluster.head(1, chain).await, Some(2), "appended once");
}

/// Serves `GetBlocks` from its own store, as a member serves its chain to one catching up.
struct BlockServer(chainiac_skipchain::store::MemoryStore);

impl Handler for BlockServer {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        use chainiac_skipchain::store::Store;
        match request {
            Request::GetBlocks { chain, from, count } => Response::Blocks(
                (from..from + u64::from(count)).map_while(|i| self.0.block(&chain, i).unwrap()).collect(),
            ),
            _ => Response::Error(chainiac_proto::ErrorReply::new(chainiac_proto::ErrorCode::NotFound, "not here")),
        }
    }
    fn refused(&self, _: &str) {}
}

/// The whole committee signs a summary (kind 8) naming a made-up block id as its release,
/// and announces the block after it to a witness that lacks both. The witness catches up
/// from the announcer and refuses to store the summary: a name is checked on every block a
/// witness stores, so the timeline never records one no honest witness checked (SPEC §7.5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_catching_up_refuses_a_summary_naming_another_block() {
    use chainiac_skipchain::store::{self, MemoryStore, Store};
    let (mut cluster, _, chain, _, manifest) = batching_cluster_with_a_release(0).await;
    let mut sign = common::colluders(&cluster);
    let forged = MemoryStore::new();
    common::copy_chain(&cluster, &forged, chain, 1).await;
    let summary = RebuildSummary { release: 1, manifest, records: vec![], committed: None, absent: vec![] };
    let misnamed = Proposal {
        kind: KIND_REBUILD_SUMMARY,
        payload: summary.to_block_bytes(chainiac_skipchain::BlockId([9; 32])),
        timestamp_ms: common::now_ms(),
        ..Proposal::default()
    };
    let next = |proposal: Proposal| {
        let head = store::head_state(&forged, &chain).unwrap().into_inner();
        head.propose(proposal, |j| forged.block_id(&chain, j).unwrap()).unwrap()
    };
    let mut block = next(misnamed.clone());
    sign(&mut block);
    store::append(&forged, &block).unwrap();
    let announced = next(misnamed);
    assert_eq!(announced.header.index, 3);
    common::replace_witness_0(&mut cluster, BlockServer(forged));

    let refusal = announce_as_witness_0(&cluster, announced).await;
    assert!(refusal.contains("block 2 caught up: a rebuild summary naming block 0909"), "{refusal}");
    assert_eq!(cluster.head(1, chain).await, Some(1), "nothing stored");
}

/// Rebuilder `key(who)`'s signed attestation of `manifest` with `outcome`, sandboxed.
fn attested_by(who: u8, manifest: chainiac_release::ManifestId, outcome: Outcome) -> Attestation {
    Attestation::sign(
        &key(who),
        AttestationBody {
            verifier: key(who).public_key(),
            manifest,
            outcome,
            environment: [3; 32],
            time_ms: common::now_ms(),
            isolation: BuildIsolation::Namespaces,
        },
    )
}

/// A witness that crashes between a batch's rebuilds block and its summary (a fail point
/// aborts the process there) leaves the attestations on the chain and no summary recording
/// them: clients would not see them. Either repair completes it: a rebuilder that sends its
/// attestation again, to any member, gets the summary appended; and the crashed witness,
/// restarted, appends it from the batch it kept on disk, with nobody sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_rebuilds_block_and_its_summary_is_repaired() {
    let (mut cluster, timeline_genesis, chain, project_genesis, manifest) = batching_cluster_with_a_release(3).await;
    let request =
        |who: u8| (who, Request::SubmitRebuild { chain, attestation: attested_by(who, manifest, Outcome::Reproduced) });
    async fn submit(
        (who, request): (u8, Request),
        witness: &common::WitnessProcess,
    ) -> Result<Response, chainiac_proto::CallError> {
        common::Client::with_key(key(who)).call_at(&witness.address, &witness.key, request).await
    }
    // Witness 1 starts armed, takes these two attestations into one batch and dies (the
    // fail point's abort) once their rebuilds block is on the chain.
    async fn crash_after_rebuilds(cluster: &mut Cluster, [first, second]: [(u8, Request); 2]) {
        use std::os::unix::process::ExitStatusExt;
        cluster.witnesses[1].start_with_env(&[("FAILPOINTS", "witness::rebuilds-appended=return")]);
        cluster.client.wait_ready(&cluster.witnesses[1]).await;
        let witness = &cluster.witnesses[1];
        let due = |reply: Result<Response, chainiac_proto::CallError>| match reply {
            Ok(Response::RebuildQueued { due_ms }) => due_ms,
            other => panic!("not queued: {other:?}"),
        };
        let (a, b) = tokio::join!(submit(first, witness), submit(second, witness));
        assert_eq!(due(a), due(b), "one batch");
        let status = cluster.witnesses[1].exited(std::time::Duration::from_secs(30)).await;
        assert_eq!(status.and_then(|s| s.signal()), Some(6), "the fail point aborts witness 1: {status:?}");
    }
    async fn block(cluster: &Cluster, chain: ChainId, index: u64) -> Block {
        match cluster.client.call(&cluster.witnesses[0], Request::GetBlock { chain, index }).await {
            Ok(Response::Block(Some(block))) => block,
            other => panic!("block {index}: {other:?}"),
        }
    }
    async fn wait_head(cluster: &Cluster, chain: ChainId, at: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while cluster.head(0, chain).await != Some(at) {
            assert!(std::time::Instant::now() < deadline, "head {:?}, not {at}", cluster.head(0, chain).await);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // Who, in key order (a batch takes concurrent submissions in arrival order).
    let sorted = |keys: &mut dyn Iterator<Item = PublicKey>| {
        let mut keys: Vec<String> = keys.map(|k| chainiac_release::RebuilderId::of(&k).to_string()).collect();
        keys.sort();
        keys
    };
    let rebuilders = |summary: &RebuildSummary| {
        let mut ids: Vec<String> = summary.records.iter().map(|r| r.rebuilder.to_string()).collect();
        ids.sort();
        ids
    };
    let keys = |who: &[u8]| sorted(&mut who.iter().map(|&k| key(k).public_key()));

    cluster.witnesses[1].stop();
    crash_after_rebuilds(&mut cluster, [request(40), request(41)]).await;
    wait_head(&cluster, chain, 2).await;
    let rebuilds = Rebuilds::from_bytes(&block(&cluster, chain, 2).await.payload).unwrap();
    assert_eq!(sorted(&mut rebuilds.attestations.iter().map(|a| a.body.verifier)), keys(&[40, 41]));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(cluster.head(0, chain).await, Some(2), "nobody else appends the summary on its own");
    // An auditor sees attestations on the chain that no summary shows clients.
    common::wait_timeline_has(&cluster, chain, 2).await;
    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let state = dir.path().join("client.state").to_str().unwrap().to_string();
    anchor_both(dir.path(), &state);
    // A client new to the chain finds the release below that head (walked down by hash links).
    let (code, out, err) = chainiac(&["update", "--state", &state, "--chain", &chain.to_hex(), "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((update["to"].as_u64(), update["release"]["version"].as_str()), (Some(2), Some("1.0")), "{update}");
    let audit = ["rebuilder", "audit", "--state", &state, "--chain", &chain.to_hex()];
    let (code, out, err) = chainiac(&audit);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("2 attestation(s) on the chain and no summary of them"), "{err}");

    // Repair 1: a rebuilder sends its attestation again, to another member: the summary.
    match submit(request(41), &cluster.witnesses[2]).await {
        Ok(Response::Appended { block }) => {
            assert_eq!((block.header.index, block.header.kind), (3, KIND_REBUILD_SUMMARY));
            let summary = RebuildSummary::of_block(block.header.kind, &block.payload).unwrap();
            assert_eq!(rebuilders(&summary), keys(&[40, 41]));
        }
        other => panic!("the resubmission repairs the summary: {other:?}"),
    }
    let replay = format!("{:?}", submit(request(41), &cluster.witnesses[3]).await);
    assert!(replay.contains("already attested release 1"), "once summarized, a replay is refused: {replay}");
    common::wait_timeline_has(&cluster, chain, 3).await;
    let (code, out, err) = chainiac(&audit);
    assert_eq!(code, Some(0), "the summary covers both: {out}{err}");

    // Repair 2: armed again, it dies after the next batch's rebuilds block; restarted
    // without the fail point, it appends the summary from the batch it kept on disk.
    crash_after_rebuilds(&mut cluster, [request(42), request(43)]).await;
    wait_head(&cluster, chain, 4).await;
    assert_eq!(block(&cluster, chain, 4).await.header.kind, KIND_REBUILDS);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(cluster.head(0, chain).await, Some(4), "no summary before witness 1 restarts");
    cluster.witnesses[1].start();
    wait_head(&cluster, chain, 5).await;
    let summary_block = block(&cluster, chain, 5).await;
    let summary = RebuildSummary::of_block(summary_block.header.kind, &summary_block.payload).unwrap();
    assert_eq!(rebuilders(&summary), keys(&[40, 41, 42, 43]));
    assert!(cluster.witnesses[1].log().contains("witness serving"), "{}", cluster.witnesses[1].log());

    // A client sees every rebuilder.
    common::wait_timeline_has(&cluster, chain, 5).await;
    let (code, out, err) = chainiac(&["update", "--state", &state, "--chain", &chain.to_hex(), "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(update["level"]["other_rebuilders"], 4, "{update}");
}

/// Every key of the cothority colludes: after the client's release 1.0 it signs a release
/// by a key that is not the project's developer, a rebuild summary naming it, and a
/// timeline block recording the summary, and serves them as a witness does (the summary's
/// release carried with the links to it, SPEC §7.5). The client checks that release as a
/// head release, refuses it, and keeps what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_release_carried_with_the_links_to_a_rebuild_summary_is_refused() {
    use chainiac_skipchain::store::{self, MemoryStore, Store};
    use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry};
    let mut cluster = Cluster::start(4).await;
    let (timeline, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &hello_policy()).await;
    let proposal = release("1.0", &[&key(20), &key(21)]);
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("client.state");
    let mut client = Client::open(&state, TrustLevel::default()).unwrap();
    client.anchor_many(&[timeline_genesis, project_genesis]).unwrap();
    assert_eq!(client.update(chain).await.unwrap().to, 1);
    let held = client.state().chains[&chain].clone();

    let mut sign = common::colluders(&cluster);
    let forged = MemoryStore::new();
    common::copy_chain(&cluster, &forged, chain, 1).await;
    let mut append = |store: &MemoryStore, on: ChainId, proposal: Proposal| {
        let head = store::head_state(store, &on).unwrap().into_inner();
        let mut block = head.propose(proposal, |j| store.block_id(&on, j).unwrap()).unwrap();
        sign(&mut block);
        store::append(store, &block).unwrap();
        block
    };
    // Release 6.6.6, signed by a key that is not the developer's, then a summary naming it.
    let mut payload = ReleasePayload::from_bytes(&release("6.6.6", &[&key(20), &key(21)]).payload).unwrap();
    payload.developer_signatures = vec![DeveloperSignature::sign(&key(7), &payload.manifest.id())];
    let now = common::now_ms();
    let evil = Proposal { kind: KIND_RELEASE, payload: payload.to_bytes(), timestamp_ms: now, ..Proposal::default() };
    let evil = append(&forged, chain, evil);
    let summary = RebuildSummary {
        release: 2,
        manifest: payload.manifest.id(),
        records: Vec::new(),
        committed: None,
        absent: vec![],
    };
    let summary = Proposal {
        kind: KIND_REBUILD_SUMMARY,
        payload: summary.to_block_bytes(evil.id()),
        timestamp_ms: now,
        ..Proposal::default()
    };
    let head = append(&forged, chain, summary);
    let timeline_head = cluster.head(1, timeline).await.unwrap();
    common::copy_chain(&cluster, &forged, timeline, timeline_head).await;
    let set = HeadSet::new(vec![HeadLeaf { chain, index: 3, id: head.id() }]);
    let entry = TimelineEntry { time_ms: now, chains: 1, root: set.root(), changes: None };
    let recording =
        Proposal { kind: KIND_TIMELINE, payload: entry.to_bytes(), timestamp_ms: now, ..Proposal::default() };
    append(&forged, timeline, recording);
    // The links down from the summary carry the forged release, as a witness sends them.
    let query = chainiac_proto::LinkedQuery { chain, from: 1, recorded: 3 };
    let answer = chainiac_witness::answers::linked_proofs(&forged, &[query], true, Vec::new()).unwrap();
    let answer = answer[0].as_ref().unwrap();
    assert!(answer.named.is_some(), "the summary names its release: the links start there");
    let carried = answer.link_payload.as_ref().expect("the release comes with the links");
    assert_eq!((carried.index, &carried.payload), (2, &payload.to_bytes()));

    common::replace_witness_0(
        &mut cluster,
        common::Forger { store: forged, timeline, index: timeline_head + 1, entry, set },
    );
    drop(client);
    let mut client = Client::open(&state, TrustLevel::default()).unwrap();
    match client.update(chain).await {
        Err(ClientError::Release(reason)) => {
            assert!(reason.contains("the release the rebuild summary at the head names"), "{reason}");
            assert!(reason.contains("not a developer key of the policy in force"), "{reason}");
        }
        other => panic!("a forged release must be refused, got {other:?}"),
    }
    assert_eq!(client.state().chains[&chain].id, held.id, "nothing was saved");
    assert_eq!(client.state().chains[&chain].release, held.release);
}

/// Clients take a rebuild summary on the committee's word; a colluding committee can put in
/// a record no rebuilder signed, and leave out a disagreement its rebuilds blocks hold.
/// `chainiac rebuilder audit` reads the rebuilds blocks from the verified head down (hash
/// links: no member can add or hide one) and exits 1 naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilder_audit_names_a_summary_record_no_signed_attestation_backs() {
    audit_a_forged_summary(Forgery::Record).await;
}

/// The same colluders' summary naming a made-up block id as its release (honest
/// witnesses refuse to store it, even caught up on): served with plain links (a prover
/// whose block there is not the one named does not use the name) or forward proofs, the
/// client takes it, and the audit names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilder_audit_names_a_summary_naming_another_block_as_its_release() {
    audit_a_forged_summary(Forgery::Name).await;
}

/// Colluders' summary committing to 33 made-up records (SPEC §11.8): the client takes its
/// counts, and the audit, recomputing them from the one attestation before it, names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilder_audit_names_a_summary_committing_to_records_no_attestations_give() {
    audit_a_forged_summary(Forgery::Commitment).await;
}

/// Colluders' rebuilds blocks holding one attestation twice (witnesses catching up check a
/// block alone), under a summary whose counts and root are those blocks': the counts take
/// the one rebuilder as two, and the audit names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilder_audit_names_a_committed_summary_counting_one_rebuilder_twice() {
    audit_a_forged_summary(Forgery::Twice).await;
}

#[derive(PartialEq)]
enum Forgery {
    /// A record no attestation backs.
    Record,
    /// That, and another block id named as its release.
    Name,
    /// Counts and root of records no attestation backs.
    Commitment,
    /// Counts and root of attestations on the chain, one of them twice.
    Twice,
}

async fn audit_a_forged_summary(forgery: Forgery) {
    let misnamed = forgery == Forgery::Name;
    use chainiac_skipchain::store::{self, MemoryStore, Store};
    use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry};
    let mut cluster = Cluster::start(4).await;
    let (timeline, timeline_genesis, chain, project_genesis) = timeline_and_project(&cluster, &hello_policy()).await;
    let proposal = release("1.0", &[&key(20), &key(21)]);
    let manifest = ReleasePayload::from_bytes(&proposal.payload).unwrap().manifest.id();
    let reply = cluster.client.call(&cluster.witnesses[1], Request::Propose { chain, proposal }).await;
    assert!(matches!(reply, Ok(Response::Appended { .. })), "{reply:?}");
    common::wait_timeline_has(&cluster, chain, 1).await;

    // The colluders' summary: rebuilder 50 reproduced it, says a record nobody signed.
    let mut sign = common::colluders(&cluster);
    let forged = MemoryStore::new();
    let mut append = |on: ChainId, proposal: Proposal| {
        let head = store::head_state(&forged, &on).unwrap().into_inner();
        let mut block = head.propose(proposal, |j| forged.block_id(&on, j).unwrap()).unwrap();
        sign(&mut block);
        store::append(&forged, &block).unwrap();
        block
    };
    common::copy_chain(&cluster, &forged, chain, 1).await;
    // Rebuilder 51's mismatch is on the chain, and the summary leaves it out.
    let mismatch = attested_by(51, manifest, Outcome::Mismatch { artifacts: vec![] });
    let now = common::now_ms();
    let rebuilds = Rebuilds { release: 1, attestations: vec![mismatch] };
    append(
        chain,
        Proposal { kind: KIND_REBUILDS, payload: rebuilds.to_bytes(), timestamp_ms: now, ..Proposal::default() },
    );
    let record = RebuildRecord {
        rebuilder: chainiac_release::RebuilderId::of(&key(50).public_key()),
        verdict: Verdict::Reproduced,
        isolation: BuildIsolation::Namespaces,
    };
    let mut summary = RebuildSummary { release: 1, manifest, records: vec![record], committed: None, absent: vec![] };
    if forgery == Forgery::Commitment {
        let made_up: Vec<Attestation> = (60..93).map(|k| attested_by(k, manifest, Outcome::Reproduced)).collect();
        summary = RebuildSummary::of(1, manifest, &made_up);
        assert!(summary.committed.is_some());
    }
    if forgery == Forgery::Twice {
        let mut on_chain = rebuilds.attestations.clone();
        let many: Vec<Attestation> = (60..93).map(|k| attested_by(k, manifest, Outcome::Reproduced)).collect();
        // Each block valid alone: 16 at most, no key twice in one.
        for chunk in many.chunks(16).chain([&many[..1]]) {
            let rebuilds = Rebuilds { release: 1, attestations: chunk.to_vec() };
            let proposal = Proposal {
                kind: KIND_REBUILDS,
                payload: rebuilds.to_bytes(),
                timestamp_ms: now,
                ..Proposal::default()
            };
            append(chain, proposal);
            on_chain.extend_from_slice(chunk);
        }
        summary = RebuildSummary::of(1, manifest, &on_chain);
        assert_eq!(summary.count(), 35);
    }
    let release_block = match misnamed {
        true => chainiac_skipchain::BlockId([9; 32]),
        false => forged.block_id(&chain, 1).unwrap().unwrap(),
    };
    let summary = Proposal {
        kind: KIND_REBUILD_SUMMARY,
        payload: summary.to_block_bytes(release_block),
        timestamp_ms: now,
        ..Proposal::default()
    };
    let head = append(chain, summary);
    let timeline_head = cluster.head(1, timeline).await.unwrap();
    common::copy_chain(&cluster, &forged, timeline, timeline_head).await;
    let set = HeadSet::new(vec![HeadLeaf { chain, index: head.header.index, id: head.id() }]);
    let entry = TimelineEntry { time_ms: now, chains: 1, root: set.root(), changes: None };
    append(
        timeline,
        Proposal { kind: KIND_TIMELINE, payload: entry.to_bytes(), timestamp_ms: now, ..Proposal::default() },
    );
    common::replace_witness_0(
        &mut cluster,
        common::Forger { store: forged, timeline, index: timeline_head + 1, entry, set },
    );

    let dir = genesis_files(&project_genesis, &timeline_genesis);
    let state = dir.path().join("client.state").to_str().unwrap().to_string();
    anchor_both(dir.path(), &state);
    let chain_hex = chain.to_hex();
    let (code, out, err) = chainiac(&["update", "--state", &state, "--chain", &chain_hex, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let update: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(update["level"]["level"], "rebuilt", "the client took the summary: {update}");
    let (code, out, err) = chainiac(&["rebuilder", "audit", "--state", &state, "--chain", &chain_hex, "--json"]);
    // Exit 4: evidence against the committee, not a failure to check (which exits 1).
    assert_eq!(code, Some(4), "{out}{err}");
    if forgery == Forgery::Twice {
        assert!(err.contains("1 attestation(s) before the summary are by a rebuilder that attested"), "{err}");
        assert!(!err.contains("counts and root are not those"), "the counts are the blocks': {err}");
        let audit: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!((audit["twice"].as_u64(), audit["attestations_before"].as_u64()), (Some(1), Some(35)), "{audit}");
        return;
    }
    if forgery == Forgery::Commitment {
        assert!(err.contains("counts and root are not those of the 1 attestation(s) before it"), "{err}");
        let audit: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(audit["committed"]["matches_the_attestations"], false, "{audit}");
        assert_eq!(update["level"]["other_rebuilders"], 33, "the client took the counts: {update}");
        return;
    }
    assert_eq!(
        err.contains("a summary of release 1 naming block 0909"),
        misnamed,
        "a wrong release block id is named: {err}"
    );
    assert!(err.contains("1 record(s) of the summary have no signed attestation behind them"), "{err}");
    assert!(err.contains("1 attestation(s) on the chain are left out of the summary"), "{err}");
    let audit: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((audit["unbacked"].as_u64(), audit["summary_block"].as_u64()), (Some(1), Some(3)), "{audit}");
    // No attestation behind it: named by the id the record holds.
    let id = chainiac_release::RebuilderId::of(&key(50).public_key()).to_string();
    assert_eq!(audit["records"][0]["rebuilder"], id, "{audit}");
    assert_eq!(audit["records"][0]["backed"], false, "{audit}");
    let omitted = &audit["omitted"][0];
    assert_eq!(
        (omitted["rebuilder"].as_str(), omitted["verdict"].as_str()),
        (Some(&*key(51).public_key().to_string()), Some("mismatch")),
        "{audit}"
    );
}

fn hex_bytes(text: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap()).collect();
    bytes.try_into().unwrap()
}

/// A child process killed when dropped (a test's `chainiac serve`).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The blocking wrapper, from plain synchronous code.
#[test]
fn the_blocking_client_catches_up_without_an_async_caller() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (cluster, chain, raw_genesis) = runtime.block_on(async {
        let cluster = Cluster::start_with(4, 0).await;
        let (chain, raw_genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
        for i in 0..3 {
            cluster.propose(i % 4, chain, format!("block {i}").as_bytes()).await.unwrap();
        }
        (cluster, chain, raw_genesis)
    });
    let dir = tempfile::tempdir().unwrap();
    let mut client =
        chainiac_client::blocking::Client::open(&dir.path().join("client.state"), TrustLevel::default()).unwrap();
    assert_eq!(client.anchor(&raw_genesis).unwrap(), chain);
    let update = client.update(chain).unwrap();
    assert_eq!((update.from, update.to), (0, 3));
    assert!(
        matches!(client.verify_artifact(chain, "x", b""), Err(ClientError::NoRelease(_))),
        "a raw chain has no release"
    );
    assert_eq!(client.inner().state().chains[&chain].index(), 3);
    drop(cluster);
}

/// A witness that pretends nothing happened since the client's state: it answers proof
/// requests on the project chain with an empty proof (a forward one verifies: it proves the
/// trusted block itself; a linked one cannot reach the head the timeline records) and
/// passes everything else to an honest witness.
struct Freezer {
    honest: Arc<common::Client>,
    honest_address: String,
    honest_key: PublicKey,
    frozen_chain: ChainId,
}

impl Handler for Freezer {
    async fn handle(self: Arc<Self>, _: PublicKey, _: SocketAddr, request: Request) -> Response {
        if let Request::GetProofs { queries, .. } = &request {
            if queries.iter().any(|q| q.chain == self.frozen_chain) {
                let empty = chainiac_skipchain::Proof { steps: vec![], payload: None };
                return Response::Proofs(queries.iter().map(|_| Ok(empty.clone())).collect());
            }
        }
        if let Request::GetLinkedProofs { queries, .. } = &request {
            if queries.iter().any(|q| q.chain == self.frozen_chain) {
                let empty = chainiac_skipchain::Proof { steps: vec![], payload: None };
                let nothing = chainiac_skipchain::LinkedProof {
                    links: vec![],
                    appointments: vec![],
                    policies: vec![],
                    beyond: empty,
                    link_payload: None,
                    named: None,
                };
                return Response::LinkedProofs(queries.iter().map(|_| Ok(nothing.clone())).collect());
            }
        }
        self.honest.call_at(&self.honest_address, &self.honest_key, request).await.unwrap_or_else(|e| {
            Response::Error(chainiac_proto::ErrorReply::new(chainiac_proto::ErrorCode::Internal, e.to_string()))
        })
    }
    fn refused(&self, _: &str) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_serving_a_head_older_than_the_timeline_says_is_skipped_as_a_freezer() {
    let (mut cluster, _, chain, dir, client) = a_client_at_block_2().await;
    for i in 0..2 {
        cluster.propose(2, chain, format!("b{i}").as_bytes()).await.unwrap();
    }
    common::wait_timeline_has(&cluster, chain, 4).await;

    // Witness 0, first in the roster, now serves a frozen view of the project.
    let freezer = Freezer {
        honest: Arc::new(common::Client::new()),
        honest_address: cluster.witnesses[1].address.clone(),
        honest_key: cluster.witnesses[1].key,
        frozen_chain: chain,
    };
    common::replace_witness_0(&mut cluster, freezer);
    // A fresh run of the client (its connections to the old witness 0 are gone), checking
    // every hop's signature: the freezer's proof verifies but stops short of the head the
    // timeline records.
    drop(client);
    let saved = std::fs::read(dir.path().join("client.state")).unwrap();
    let mut client = Client::open(&dir.path().join("client.state"), TrustLevel::default()).unwrap();
    client.every_hop = true;
    let update = client.update(chain).await.unwrap();
    assert_eq!(update.to, 4, "the client went past the freezer to an honest witness");
    let freezer = &cluster.witnesses[0].address;
    assert!(
        update.skipped.iter().any(|(w, why)| w == freezer && why.contains("the timeline records 4")),
        "the freezer is named: {:?}",
        update.skipped
    );
    assert_eq!(client.state().chains[&chain].index(), 4);
    // The same with linked proofs (the default), from the same state: the freezer cannot
    // link down from the recorded head at all, and is named a liar.
    drop(client);
    std::fs::write(dir.path().join("client.state"), saved).unwrap();
    let mut client = Client::open(&dir.path().join("client.state"), TrustLevel::default()).unwrap();
    let update = client.update(chain).await.unwrap();
    assert_eq!((update.from, update.to), (2, 4));
    assert!(
        update.skipped.iter().any(|(w, why)| w == freezer && why.contains("no link leads there")),
        "the freezer is named: {:?}",
        update.skipped
    );
    assert_eq!(client.state().chains[&chain].index(), 4);
}

/// Many chains through the batched requests: one `GetProofs` answer carries a new committee
/// once however many chains changed to it, and not at all when the client names it; the
/// multi-leaf timeline proof covers every chain; `chainiac update --all` updates them all
/// and says which failed; oversized batches are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_chains_update_together_and_a_new_committee_travels_once() {
    use chainiac_proto::{
        ErrorCode, LinkedQuery, ProofQuery, MAX_HELD_APPOINTMENTS, MAX_PROOF_QUERIES, MAX_TIMELINE_CHAINS,
    };
    use std::process::Command;
    let cluster = Cluster::start(5).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let old = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let new = Committee::byzantine(cluster.roster(&[0, 1, 2, 4])).with_epoch(1);
    let mut chains = Vec::new();
    for i in 0..12 {
        let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
        cluster.propose(i % 4, chain, b"first").await.unwrap();
        let change = cluster.propose_change(0, chain, new.clone()).await.unwrap();
        // The newcomer learns the chain from the change's commit; under load that can
        // outlast the leader's wait for it.
        cluster.wait_head(4, chain, change.header.index).await;
        cluster.propose(4, chain, b"after the change").await.unwrap();
        chains.push((chain, genesis));
    }
    for (chain, _) in &chains {
        common::wait_timeline_has(&cluster, *chain, 3).await;
    }

    // The wire: the new committee once per answer, or never when named.
    let queries: Vec<ProofQuery> = chains.iter().map(|(c, _)| ProofQuery { chain: *c, from: 0, to: None }).collect();
    let ask = |held: Vec<[u8; 32]>, queries: Vec<ProofQuery>| {
        cluster
            .client
            .call(&cluster.witnesses[1], Request::GetProofs { queries, with_payload: false, held_appointments: held })
    };
    let carried = |response: Response| match response {
        Response::Proofs(proofs) => {
            assert_eq!(proofs.len(), 12);
            proofs.into_iter().map(|p| p.unwrap().steps.iter().filter(|s| s.committee.is_some()).count()).sum::<usize>()
        }
        other => panic!("{other:?}"),
    };
    // Held appointments are named by digest: the committee's hash alone leaves nothing out.
    let appointment = cluster.appoint(&[0, 1, 2, 3], &new).digest();
    assert_eq!(carried(ask(vec![old.hash(), new.hash()], queries.clone()).await.unwrap()), 1);
    assert_eq!(carried(ask(vec![old.hash(), appointment], queries.clone()).await.unwrap()), 0);
    let refused = |r: Result<Response, _>| match r {
        Err(chainiac_proto::CallError::Remote(reply)) => {
            assert_eq!(reply.code, ErrorCode::BadRequest);
            reply.message
        }
        other => panic!("an oversized batch must be refused, got {other:?}"),
    };
    let message = refused(ask(vec![], vec![queries[0]; MAX_PROOF_QUERIES + 1]).await);
    assert!(message.contains("257 proofs"), "{message}");
    let message = refused(ask(vec![[7; 32]; MAX_HELD_APPOINTMENTS + 1], vec![queries[0]]).await);
    assert!(message.contains("65 held committees"), "{message}");
    let message = refused(ask(vec![], vec![]).await);
    assert!(message.contains("0 proofs"), "{message}");
    // Linked proofs down from the recorded block 3: the same committee rule, the same limits.
    let linked: Vec<LinkedQuery> =
        chains.iter().map(|(c, _)| LinkedQuery { chain: *c, from: 0, recorded: 3 }).collect();
    let ask_linked = |held: Vec<[u8; 32]>, queries: Vec<LinkedQuery>| {
        cluster.client.call(
            &cluster.witnesses[1],
            Request::GetLinkedProofs { queries, with_payload: true, held_appointments: held },
        )
    };
    let carried_linked = |response: Response| match response {
        Response::LinkedProofs(proofs) => {
            assert_eq!(proofs.len(), 12);
            let proofs: Vec<_> = proofs.into_iter().map(Result::unwrap).collect();
            assert!(proofs.iter().all(|p| p.links.first().is_some_and(|l| l.index == 3) && p.beyond.payload.is_some()));
            proofs.iter().filter(|p| !p.appointments.is_empty()).count()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(carried_linked(ask_linked(vec![old.hash()], linked.clone()).await.unwrap()), 1);
    assert_eq!(carried_linked(ask_linked(vec![appointment], linked.clone()).await.unwrap()), 0);
    let message = refused(ask_linked(vec![], vec![linked[0]; MAX_PROOF_QUERIES + 1]).await);
    assert!(message.contains("257 proofs"), "{message}");
    let request =
        Request::GetTimelineBatch { timeline: Some(timeline), chains: vec![timeline; MAX_TIMELINE_CHAINS + 1] };
    let message = refused(cluster.client.call(&cluster.witnesses[1], request).await);
    assert!(message.contains("1025 chains"), "{message}");
    let all: Vec<ChainId> = chains.iter().map(|(c, _)| *c).collect();
    let request = Request::GetTimelineBatch { timeline: Some(timeline), chains: all.clone() };
    match cluster.client.call(&cluster.witnesses[2], request).await.unwrap() {
        Response::TimelineBatch(batch) => {
            let leaves = batch.inclusion.verify(&batch.entry, &all).unwrap();
            assert_eq!(leaves.len(), all.len());
            assert!(leaves.iter().all(|l| all.contains(&l.chain) && l.index >= 3));
        }
        other => panic!("{other:?}"),
    }

    // The library: every chain in one call, results in the order asked.
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::open(&dir.path().join("client.state"), TrustLevel::default()).unwrap();
    client.anchor(&timeline_genesis).unwrap();
    for (_, genesis) in &chains {
        client.anchor(genesis).unwrap();
    }
    let mut asked = all.clone();
    asked.reverse();
    asked.push(asked[0]); // named twice: one result
    let results = client.update_many(&asked).await.unwrap();
    assert_eq!(results.iter().map(|(c, _)| *c).collect::<Vec<_>>(), asked[..12].to_vec());
    for (_, result) in &results {
        let update = result.as_ref().unwrap();
        assert_eq!((update.from, update.to), (0, 3));
        assert_eq!(update.checkpoints, vec![2], "the roster change is a checkpoint");
        assert!(update.timeline_age_ms.is_some());
    }
    assert!(client.state().chains[&timeline].index() > 0, "the timeline moved too");

    // The shell: --all, then a chain the witnesses lost track of fails alone.
    drop(client);
    let state = dir.path().join("client.state");
    let (more, _) = cluster.create_chain(&[0, 1, 2, 3]).await;
    cluster.propose(1, more, b"x").await.unwrap();
    cluster.propose(2, all[0], b"newer").await.unwrap();
    common::wait_timeline_has(&cluster, all[0], 4).await;
    let out = Command::new(common::bin())
        .args(["update", "--state", state.to_str().unwrap(), "--all", "--every-hop", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["failed"], 0);
    let updates = value["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 13, "12 projects and the timeline");
    let first = updates.iter().find(|u| u["chain"] == all[0].to_hex()).unwrap();
    assert_eq!((first["from"].as_u64(), first["to"].as_u64()), (Some(3), Some(4)));
    let out = Command::new(common::bin())
        .args(["update", "--state", state.to_str().unwrap(), "--chain", &all[1].to_hex(), "--chain", &more.to_hex()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("chain {}: 3 -> 3", all[1])), "{stdout}");
    assert!(stdout.contains(&format!("chain {more}: FAILED")) && stdout.contains("not anchored"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 chains failed"));
}

/// A client following many chains updates once with inclusion proofs, then learns from the
/// timeline's change lists which chains moved — skipping a witness whose lists hide a move
/// — and keeps what it reconciled across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_following_many_chains_learns_what_moved_from_change_lists() {
    // Idle timeline blocks every 2.5 s: a few between updates, even on a loaded machine,
    // so the lists stay cheaper than 64 inclusion leaves.
    let mut cluster = Cluster::start_with(4, 2_500).await;
    let (timeline, timeline_genesis) = cluster.create_chain_of_kind(&[0, 1, 2, 3], KIND_TIMELINE).await;
    let mut chains = Vec::new();
    for i in 0..64 {
        let (chain, genesis) = cluster.create_chain(&[0, 1, 2, 3]).await;
        cluster.propose(i % 4, chain, b"first").await.unwrap();
        chains.push((chain, genesis));
    }
    common::wait_timeline_has(&cluster, chains[63].0, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("client.state");
    let mut client = Client::open(&state, TrustLevel::default()).unwrap();
    client.anchor(&timeline_genesis).unwrap();
    let all: Vec<ChainId> = chains.iter().map(|(_, g)| client.anchor(g).unwrap()).collect();
    for (_, result) in client.update_many(&all).await.unwrap() {
        let update = result.unwrap();
        assert_eq!((update.from, update.to, update.change_lists), (0, 1, false), "first: inclusion proofs");
    }
    let at = client.state().chains[&timeline].index();
    assert!(all.iter().all(|c| client.state().synced.get(c) == Some(&at)), "every chain reconciled");

    // Witness 0 now hides moves in its change lists; one chain moves.
    replace_witness_0_with_a_liar(&mut cluster);
    cluster.propose(1, all[5], b"second").await.unwrap();
    common::wait_timeline_has(&cluster, all[5], 2).await;
    // Reopened: the reconciliation records come from the state file (and no connection to
    // the killed witness lingers).
    drop(client);
    let mut client = Client::open(&state, TrustLevel::default()).unwrap();
    let results = client.update_many(&all).await.unwrap();
    for (chain, result) in &results {
        let update = result.as_ref().unwrap();
        assert!(update.change_lists, "the change lists are cheaper for 64 chains and a few blocks: {update:?}");
        let expected = if *chain == all[5] { (1, 2) } else { (1, 1) };
        assert_eq!((update.from, update.to), expected);
        if *chain == all[5] {
            assert!(
                update
                    .skipped
                    .iter()
                    .any(|(w, why)| w == &cluster.witnesses[0].address && why.contains("change lists")),
                "the liar is reported: {:?}",
                update.skipped
            );
        }
    }
    // With every hop too: the lists say which moved, each chain's committee vouches for it.
    cluster.propose(2, all[6], b"second").await.unwrap();
    common::wait_timeline_has(&cluster, all[6], 2).await;
    client.every_hop = true;
    for (chain, result) in client.update_many(&all).await.unwrap() {
        let update = result.unwrap();
        assert!(update.change_lists);
        let expected = if chain == all[6] {
            (1, 2)
        } else if chain == all[5] {
            (2, 2)
        } else {
            (1, 1)
        };
        assert_eq!((update.from, update.to), expected);
        assert_eq!(update.hops, (chain == all[6]) as usize, "a forward proof for the chain that moved alone");
    }
    let at = client.state().chains[&timeline].index();
    drop(client);
    let reopened = Client::open(&state, TrustLevel::default()).unwrap();
    assert_eq!(reopened.state().chains[&all[5]].index(), 2);
    assert_eq!(reopened.state().chains[&all[6]].index(), 2);
    assert!(all.iter().all(|c| reopened.state().synced.get(c) == Some(&at)), "reconciled again, and saved");
}

/// Every key of the cothority colludes: it signs a second block at the index of the
/// client's newest block and a timeline block recording that one, and serves them from
/// the first member the client asks. Linked proofs (the default) and forward proofs
/// (`--every-hop`) both refuse the recorded head, naming a fork — the honest members'
/// proofs too, since they reach the client's block, not the recorded one — and the client
/// keeps the block it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_signed_by_the_whole_cothority_is_refused_and_named() {
    use chainiac_skipchain::store::{self, MemoryStore, Store};
    use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, TimelineEntry};
    let (mut cluster, timeline, project, dir, client) = a_client_at_block_2().await;
    let honest = client.state().chains[&project].id;

    // The forgery: block 2' after block 1, and a timeline block recording it.
    let mut sign = common::colluders(&cluster);
    let forged = MemoryStore::new();
    common::copy_chain(&cluster, &forged, project, 1).await;
    let at_1 = store::head_state(&forged, &project).unwrap().into_inner();
    let proposal = Proposal { kind: 0, payload: b"a1, evil".to_vec(), ..Proposal::default() };
    let mut evil = at_1.propose(proposal, |j| forged.block_id(&project, j).unwrap()).unwrap();
    sign(&mut evil);
    store::append(&forged, &evil).unwrap();
    assert_ne!(evil.id(), honest);
    let timeline_head = cluster.head(1, timeline).await.unwrap();
    common::copy_chain(&cluster, &forged, timeline, timeline_head).await;
    let set = HeadSet::new(vec![HeadLeaf { chain: project, index: 2, id: evil.id() }]);
    let now = common::now_ms();
    let entry = TimelineEntry { time_ms: now, chains: 1, root: set.root(), changes: None };
    let at_head = store::head_state(&forged, &timeline).unwrap().into_inner();
    let proposal =
        Proposal { kind: KIND_TIMELINE, payload: entry.to_bytes(), timestamp_ms: now, ..Proposal::default() };
    let mut recording = at_head.propose(proposal, |j| forged.block_id(&timeline, j).unwrap()).unwrap();
    sign(&mut recording);
    store::append(&forged, &recording).unwrap();

    // Witness 0, the first the client asks, serves the forgery; the honest others stay up.
    common::replace_witness_0(
        &mut cluster,
        common::Forger { store: forged, timeline, index: timeline_head + 1, entry, set },
    );
    // A fresh client process: no connection left to the witness the forger replaced.
    drop(client);
    let mut client = Client::open(&dir.path().join("client.state"), TrustLevel::default()).unwrap();
    let timeline_before = client.state().chains[&timeline].id;

    // Linked proofs, forward proofs for every chain, and forward proofs for this one only.
    for (every_hop, this_one) in [(false, false), (true, false), (false, true)] {
        client.every_hop = every_hop;
        client.every_hop_chains = if this_one { [project].into() } else { Default::default() };
        let forward = every_hop || this_one;
        match client.update(project).await {
            Err(ClientError::Fork { chain, index: 2, evidence }) => {
                assert_eq!(chain, project);
                // The forger's own answer shows it (the honest members' too, when they
                // answer: their proofs reach the client's block, not the recorded one).
                let (_, why) = evidence
                    .iter()
                    .find(|(w, _)| w == &cluster.witnesses[0].address)
                    .unwrap_or_else(|| panic!("no answer from the forger: {evidence:?}"));
                assert!(why.contains("a fork"), "{evidence:?}");
                // Forward proofs reach the client's block; linked ones stop at the record.
                assert_eq!(
                    why.contains("proved block 2"),
                    forward,
                    "every_hop {every_hop}, this one {this_one}: {why}"
                );
            }
            other => panic!("every_hop {every_hop}: the fork is not named: {other:?}"),
        }
        // Nothing of that update is taken: not the chain, not the forged timeline block.
        assert_eq!(client.state().chains[&project].id, honest, "every_hop {every_hop}");
        assert_eq!(client.state().chains[&project].index(), 2);
        assert_eq!(client.state().chains[&timeline].id, timeline_before);
    }
    // The command line says so with its own exit code, for update agents to alert on.
    drop(client);
    let state = dir.path().join("client.state");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_chainiac-under-test"))
            .args(["update", "--state", state.to_str().unwrap(), "--all", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let forked: Vec<_> = answer["updates"].as_array().unwrap().iter().filter(|u| u["fork_at"] == 2).collect();
    assert_eq!(forked.len(), 1, "{stdout}");
    assert_eq!(forked[0]["chain"], project.to_hex());
}
