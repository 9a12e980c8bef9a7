//! `chainiac demo`: a whole cothority on 127.0.0.1 — 4 witnesses and 2 build verifiers as
//! child processes with RocksDB in a temporary folder — a project that releases three
//! versions of a real C program (rotating a developer key in between), and a client anchored
//! at the genesis that catches up and verifies the last artifact. Then trust after the
//! release: a rebuilder (`chainiac rebuilder run`) rebuilds the last release from two
//! mirrors (`chainiac serve`, one lying) and lifts its level for a client that trusts it, a
//! lying rebuilder is flagged, the developers yank the release before, and `chainiac fetch`
//! falls through the lying mirror to the honest one.

use anyhow::{bail, Context, Result};
use chainiac_client::{Client, TrustLevel};
use chainiac_cosi::{Member, PublicKey, Roster, SecretKey};
use chainiac_proto::{Pool, Request, Response};
use chainiac_release::model::RootSignature;
use chainiac_release::{
    content_hash, Artifact, DeveloperSignature, Manifest, Policy, PolicyChange, Recipe, SourceArchive, VerifierEntry,
    KIND_POLICY_CHANGE, KIND_RELEASE,
};
use chainiac_skipchain::authority::KIND_COMMITTEE;
use chainiac_skipchain::timeline::KIND_TIMELINE;
use chainiac_skipchain::{genesis, Appointment, Approval, ChainId, ChainParams, Committee, Proposal};
use chainiac_verifier::service::VerifierConfig;
use chainiac_witness::{keyfile, WitnessConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const WITNESSES: usize = 4;
/// A fifth witness that joins the cothority in the demo's roster change.
const NEWCOMER: usize = WITNESSES;
const VERIFIERS: usize = 2;
const TIMEOUT: Duration = Duration::from_secs(60);

struct Step {
    started: Instant,
    n: usize,
}

impl Step {
    fn say(&mut self, what: &str) -> Instant {
        self.n += 1;
        println!("[{:>6.2} s] {}. {what}", self.started.elapsed().as_secs_f64(), self.n);
        Instant::now()
    }

    fn done(&self, since: Instant, detail: &str) {
        println!("           {detail} ({:.0} ms)", since.elapsed().as_secs_f64() * 1e3);
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Node {
    key: PublicKey,
    address: String,
    _child: Child,
}

fn spawn(args: &[&str], log: &Path) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting a child process")
}

/// Makes the witnesses' keys and configs in `dirs` (each lists the others as peers: the
/// operators of a new cothority know each other), then starts them.
fn start_witnesses(dirs: &[PathBuf]) -> Result<(Vec<Node>, Vec<Member>)> {
    let mut members = Vec::new();
    for dir in dirs {
        std::fs::create_dir_all(dir)?;
        let key = SecretKey::generate(&mut rand_core::OsRng);
        keyfile::write(&dir.join("node.key"), &key)?;
        members.push(Member::new(&key, format!("127.0.0.1:{}", free_port()?)));
    }
    let mut nodes = Vec::new();
    for (dir, member) in dirs.iter().zip(&members) {
        let mut config = WitnessConfig::new(member.address.parse()?, member.address.clone());
        config.timeline_interval_ms = 500;
        // Rebuilders' attestations wait a second for others about the same release.
        config.rebuild_batch_seconds = 1;
        config.peers = members
            .iter()
            .filter(|m| m.key != member.key)
            .map(|m| chainiac_witness::config::Peer { key: m.key.to_string(), address: m.address.clone() })
            .collect();
        std::fs::write(dir.join("witness.toml"), config.to_toml())?;
        let child =
            spawn(&["witness", "run", "--config", dir.join("witness.toml").to_str().unwrap()], &dir.join("log"))?;
        nodes.push(Node { key: member.key, address: member.address.clone(), _child: child });
    }
    Ok((nodes, members))
}

/// A verifier's key (written in `dir`) and address: what a policy names.
fn init_verifier(dir: &Path) -> Result<VerifierEntry> {
    std::fs::create_dir_all(dir)?;
    let key = SecretKey::generate(&mut rand_core::OsRng);
    keyfile::write(&dir.join("node.key"), &key)?;
    Ok(VerifierEntry { key: key.public_key(), address: format!("127.0.0.1:{}", free_port()?) })
}

/// Starts the verifier `init_verifier` made in `dir`, taking build jobs from the witnesses
/// `members` for the release chains `chains`.
fn start_verifier(dir: &Path, entry: &VerifierEntry, members: &[Member], chains: &[ChainId]) -> Result<Node> {
    let mut config = VerifierConfig::new(entry.address.parse()?, entry.address.clone());
    for member in members {
        config.allow(&member.key);
    }
    for chain in chains {
        config.allow_chain(chain);
    }
    std::fs::write(dir.join("verifier.toml"), config.to_toml())?;
    let child = spawn(&["verifier", "run", "--config", dir.join("verifier.toml").to_str().unwrap()], &dir.join("log"))?;
    Ok(Node { key: entry.key, address: entry.address.clone(), _child: child })
}

async fn wait_ready(pool: &Pool, node: &Node, probe: Request) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.call(&node.address, &node.key, &probe, Duration::from_secs(2)).await.is_err() {
        if Instant::now() > deadline {
            bail!("{} did not come up", node.address);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn source_files(version: &str) -> Vec<(String, String)> {
    let c = format!(
        "#include <stdio.h>\nint main(void) {{ printf(\"hello from chainiac, version {version}\\n\"); return 0; }}\n"
    );
    let make = "hello: hello.c\n\tgcc -O2 -ffile-prefix-map=$(CURDIR)=. -o hello hello.c\n".to_string();
    vec![(format!("hello-{version}/hello.c"), c), (format!("hello-{version}/Makefile"), make)]
}

fn tar_of(files: &[(String, String)]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data.as_bytes())?;
    }
    Ok(builder.into_inner()?)
}

/// Builds the release locally, as its release manager does, and returns the binary.
fn build_locally(dir: &Path, files: &[(String, String)]) -> Result<Vec<u8>> {
    for (path, data) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::write(path, data)?;
    }
    let workdir = dir.join(Path::new(&files[0].0).parent().unwrap());
    let out =
        std::process::Command::new("make").current_dir(&workdir).env_clear().env("PATH", "/usr/bin:/bin").output()?;
    if !out.status.success() {
        bail!("local build failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(std::fs::read(workdir.join("hello"))?)
}

async fn call(pool: &Pool, node: &Node, request: Request) -> Result<Response> {
    Ok(pool.call(&node.address, &node.key, &request, TIMEOUT).await?)
}

pub fn run(keep: Option<PathBuf>) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let dir = tempfile::Builder::new().prefix("chainiac-demo-").tempdir()?;
        let root = keep.clone().unwrap_or_else(|| dir.path().to_path_buf());
        tokio::select! {
            result = demo(&root) => result,
            _ = tokio::signal::ctrl_c() => {
                println!("interrupted: stopping the processes and removing {}", root.display());
                Ok(())
            }
        }
        // Children are killed on drop; the temporary folder is removed on drop.
    })
}

async fn demo(root: &Path) -> Result<()> {
    let mut step = Step { started: Instant::now(), n: 0 };
    let t = step.say(&format!(
        "starting {} witnesses ({WITNESSES} in the first roster, one to join later) and {VERIFIERS} build verifiers in {}",
        WITNESSES + 1,
        root.display()
    ));
    let dirs: Vec<PathBuf> = (0..=NEWCOMER).map(|i| root.join(format!("witness-{i}"))).collect();
    let (witnesses, all_members) = start_witnesses(&dirs)?;
    let members = all_members[..WITNESSES].to_vec();
    // The project names its verifiers, and each verifier's operator lists the project's
    // chain among those it builds for: keys and addresses first, the chain id, then the
    // verifiers start.
    let verifier_dirs: Vec<PathBuf> = (0..VERIFIERS).map(|i| root.join(format!("verifier-{i}"))).collect();
    let entries: Vec<VerifierEntry> = verifier_dirs.iter().map(|d| init_verifier(d)).collect::<Result<_>>()?;
    let committee = Committee::byzantine(Roster::new(members)?);
    let developers: Vec<SecretKey> = (0..4).map(|_| SecretKey::generate(&mut rand_core::OsRng)).collect();
    let root_key = SecretKey::generate(&mut rand_core::OsRng);
    let policy = Policy {
        project: "hello".into(),
        developers: developers[..3].iter().map(SecretKey::public_key).collect(),
        release_threshold: 2,
        root_keys: vec![root_key.public_key()],
        root_threshold: 1,
        verifiers: entries.clone(),
        verifier_threshold: 2,
        require_isolation: false,
        max_age_ms: 60_000,
        version: 0,
        yanked: Vec::new(),
    };
    let now = chainiac_client::now_ms();
    let timeline_genesis =
        genesis(ChainParams::DEFAULT, committee.clone(), b"timeline".to_vec(), KIND_TIMELINE, vec![], now);
    let project_genesis = genesis(ChainParams::DEFAULT, committee, policy.to_bytes(), KIND_RELEASE, vec![], now);
    let verifiers: Vec<Node> = verifier_dirs
        .iter()
        .zip(&entries)
        .map(|(dir, entry)| start_verifier(dir, entry, &all_members, &[project_genesis.id()]))
        .collect::<Result<_>>()?;
    let endpoint = chainiac_proto::endpoint::client("127.0.0.1:0".parse()?)?;
    let pool = Pool::new(endpoint, Arc::new(SecretKey::generate(&mut rand_core::OsRng)));
    for w in &witnesses {
        wait_ready(&pool, w, Request::Status).await?;
    }
    for v in &verifiers {
        wait_ready(&pool, v, Request::GetAttestation { manifest: chainiac_release::ManifestId([0; 32]) }).await?;
    }
    step.done(t, "all answering over QUIC, each with its own RocksDB");

    let t =
        step.say("creating the timeline and the project `hello` (developers 2 of 3, both verifiers must reproduce)");
    // The timeline is created by an operator of its committee (witness 0's, with its key);
    // the project by anyone.
    let operator = {
        let endpoint = chainiac_proto::endpoint::client("127.0.0.1:0".parse()?)?;
        Pool::new(endpoint, Arc::new(keyfile::read(&root.join("witness-0").join("node.key"))?))
    };
    for (who, g) in [(&operator, &timeline_genesis), (&pool, &project_genesis)] {
        match call(who, &witnesses[0], Request::CreateChain { genesis: g.clone() }).await? {
            Response::Created { .. } => {}
            other => bail!("chain not created: {other:?}"),
        }
    }
    let chain = project_genesis.id();
    std::fs::write(root.join("project.genesis"), project_genesis.to_bytes())?;
    std::fs::write(root.join("timeline.genesis"), timeline_genesis.to_bytes())?;
    step.done(t, &format!("project chain {} (genesis files in the demo folder)", &chain.to_hex()[..16]));

    let work = root.join("release-manager");
    let mut signers = vec![&developers[0], &developers[1]];
    let mut last_binary = Vec::new();
    let mut released: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
    for (n, version) in ["1.0", "1.1", "1.2"].into_iter().enumerate() {
        if n == 1 {
            change_roster(&mut step, &pool, &witnesses, &dirs, &all_members, &[timeline_genesis.id(), chain]).await?;
        }
        if n == 2 {
            let t = step.say("rotating developer keys: the root key replaces developer 1 with developer 4");
            let rotated = Policy {
                developers: vec![developers[3].public_key(), developers[1].public_key(), developers[2].public_key()],
                version: policy.version + 1,
                ..policy.clone()
            };
            let (old, new) = (policy.to_bytes(), rotated.to_bytes());
            let (old_hash, new_hash) =
                (chainiac_skipchain::block::policy_hash(&old), chainiac_skipchain::block::policy_hash(&new));
            let change =
                PolicyChange { root_signatures: vec![RootSignature::sign(&root_key, &chain.0, &old_hash, &new_hash)] };
            let proposal = Proposal {
                kind: KIND_POLICY_CHANGE,
                payload: change.to_bytes(),
                policy: Some(new),
                ..Proposal::default()
            };
            match call(&pool, &witnesses[1], Request::Propose { chain, proposal }).await? {
                Response::Appended { block } => {
                    step.done(t, &format!("policy change cosigned at index {}", block.header.index))
                }
                other => bail!("rotation refused: {other:?}"),
            }
            signers = vec![&developers[3], &developers[1]];
        }
        let t = step.say(&format!("releasing hello {version}: build locally, sign (2 developers), submit"));
        let files = source_files(version);
        let source = tar_of(&files)?;
        let binary = build_locally(&work.join(version), &files)?;
        let manifest = Manifest {
            project: "hello".into(),
            version: version.into(),
            source: SourceArchive {
                name: format!("hello-{version}.tar"),
                sha3: content_hash(&source),
                size: source.len() as u64,
            },
            recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: format!("hello-{version}") },
            artifacts: vec![Artifact {
                path: format!("hello-{version}/hello"),
                sha3: content_hash(&binary),
                size: binary.len() as u64,
            }],
            time_ms: chainiac_client::now_ms(),
        };
        let id = manifest.id();
        let developer_signatures = signers.iter().map(|k| DeveloperSignature::sign(k, &id)).collect();
        released.push((version.to_string(), source.clone(), binary.clone()));
        let request = Request::SubmitRelease { chain, manifest, developer_signatures, source };
        match call(&pool, &witnesses[n % WITNESSES], request).await? {
            Response::Appended { block } => {
                let payload =
                    chainiac_release::ReleasePayload::from_bytes(&block.payload).map_err(anyhow::Error::msg)?;
                let reproduced = payload
                    .attestations
                    .iter()
                    .filter(|a| a.body.outcome == chainiac_release::Outcome::Reproduced)
                    .count();
                step.done(
                    t,
                    &format!(
                        "both verifiers rebuilt it bit for bit ({reproduced} attestations); cosigned at index {}",
                        block.header.index
                    ),
                );
            }
            other => bail!("release {version} refused: {other:?}"),
        }
        last_binary = binary;
    }

    let t = step.say(
        "a client anchored at the genesis catches up (timeline freshness, roster change, key rotation, release checks)",
    );
    wait_for_timeline(&pool, &witnesses[0], chain).await?;
    let mut client = Client::open(&root.join("client.state"), TrustLevel::default())?;
    client.anchor(&timeline_genesis)?;
    client.anchor(&project_genesis)?;
    let update = client.update(chain).await?;
    step.done(
        t,
        &format!(
            "genesis -> block {} in {} hops (hash links from the head the timeline records), past checkpoint(s) {:?}; timeline {} ms old",
            update.to,
            update.hops,
            update.checkpoints,
            update.timeline_age_ms.unwrap_or(0)
        ),
    );
    let t = step.say("verifying the last artifact before installing it");
    let version = client.verify_artifact(chain, "hello-1.2/hello", &last_binary)?;
    let mut tampered = last_binary.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let refused = client.verify_artifact(chain, "hello-1.2/hello", &tampered).is_err();
    step.done(t, &format!("hello {version} verified; a copy with one bit changed is refused: {refused}"));
    let t = step.say("the client checks again a moment later: nothing new, the timeline says so");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = client.update(chain).await?;
    let how = if again.change_lists {
        "from the timeline's change lists (no proof per chain)"
    } else {
        // One chain in the tree: its inclusion proof is cheaper than the lists.
        "from an inclusion proof"
    };
    step.done(
        t,
        &format!("still block {}, fresh {how}; timeline {} ms old", again.to, again.timeline_age_ms.unwrap_or(0)),
    );
    drop(client);
    let trust = After { root, pool: &pool, witnesses: &witnesses, chain, released: &released, yankers: &signers };
    trust.run(&mut step, &timeline_genesis, &project_genesis).await?;
    println!(
        "\ndone: 3 releases, 1 roster change, 1 key rotation, every build reproduced by 2 verifiers and cosigned by {WITNESSES} witnesses; a rebuilder, a liar, a yank and a lying mirror after."
    );
    Ok(())
}

/// What happens after the releases: trust that grows (a rebuilder), a rebuilder that lies,
/// a yank, and downloads from mirrors nobody trusts.
struct After<'a> {
    root: &'a Path,
    pool: &'a Pool,
    witnesses: &'a [Node],
    chain: ChainId,
    /// (version, source archive, binary) of each release.
    released: &'a [(String, Vec<u8>, Vec<u8>)],
    /// The developer keys in force (the policy's threshold of them).
    yankers: &'a [&'a SecretKey],
}

impl After<'_> {
    async fn run(
        &self,
        step: &mut Step,
        timeline: &chainiac_skipchain::Block,
        project: &chainiac_skipchain::Block,
    ) -> Result<()> {
        let (version, source, binary) = self.released.last().expect("three releases").clone();
        let archive = format!("hello-{version}.tar");
        let t = step.say("two mirrors nobody has to trust (`chainiac serve`): one honest, one serving other bytes");
        let mut mirrors = Vec::new();
        for (name, honest) in [("mirror-liar", false), ("mirror-honest", true)] {
            let dir = self.root.join(name);
            std::fs::create_dir_all(&dir)?;
            let (archive_bytes, binary_bytes) = if honest {
                (source.clone(), binary.clone())
            } else {
                (b"not the source".to_vec(), b"malware".to_vec())
            };
            std::fs::write(dir.join(&archive), archive_bytes)?;
            std::fs::write(dir.join("hello"), binary_bytes)?;
            let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
            let child =
                spawn(&["serve", "--dir", dir.to_str().unwrap(), "--listen", &listen], &dir.with_extension("log"))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(&listen).is_err() {
                if Instant::now() > deadline {
                    bail!("mirror {name} did not come up");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            mirrors.push((format!("http://{listen}"), child));
        }
        let (liar, honest) = (mirrors[0].0.clone(), mirrors[1].0.clone());
        step.done(t, &format!("liar {liar}, honest {honest}"));

        let t = step.say(&format!(
            "a rebuilder (anyone's) rebuilds hello {version} from the mirrors and submits its attestation"
        ));
        let dir = self.root.join("rebuilder");
        let init = self
            .chainiac(&[
                "rebuilder",
                "init",
                "--dir",
                dir.to_str().unwrap(),
                "--source",
                &format!("{liar}/"),
                "--source",
                &format!("{honest}/"),
                "--json",
            ])
            .await?;
        let init: serde_json::Value = serde_json::from_str(&init).context("rebuilder init's report")?;
        let rebuilder = crate::witness_cmd::parse_key(init["key"].as_str().unwrap_or_default())?;
        let mut own = Client::open(&dir.join("client.state"), TrustLevel::default())?;
        own.anchor_many(&[timeline.clone(), project.clone()])?;
        let config = dir.join("rebuilder.toml");
        let before = head_index(self.pool, &self.witnesses[0], self.chain).await?;
        let report =
            self.chainiac(&["rebuilder", "run", "--config", config.to_str().unwrap(), "--once", "--json"]).await?;
        let report: serde_json::Value =
            serde_json::from_str(report.lines().next().unwrap_or_default()).context("rebuilder's report")?;
        let outcome = report["outcome"].as_str().unwrap_or_default().to_string();
        wait_for_head_past(self.pool, &self.witnesses[0], self.chain, before).await?;
        wait_for_timeline(self.pool, &self.witnesses[0], self.chain).await?;
        let trust = TrustLevel { trusted_rebuilders: vec![rebuilder], ..TrustLevel::default() };
        let mut client = Client::open(&self.root.join("client.state"), trust)?;
        let update = client.update(self.chain).await?;
        let level = update.level.as_ref().context("the release's level")?;
        let was = update.level_was.map(|l| format!(" (was {l})")).unwrap_or_default();
        step.done(
            t,
            &format!(
                "{outcome}; for a client that trusts rebuilder {}…: hello {version} {}{was}",
                &rebuilder.to_string()[..16],
                level.describe()
            ),
        );

        let t = step.say("a rebuilder that lies (other bytes, signed) is recorded, and stands out");
        let liar_key = SecretKey::generate(&mut rand_core::OsRng);
        let manifest = client.state().chains[&self.chain].release.as_ref().context("the release")?.manifest.clone();
        let body = chainiac_release::AttestationBody {
            verifier: liar_key.public_key(),
            manifest: manifest.id(),
            outcome: chainiac_release::Outcome::Mismatch {
                artifacts: vec![chainiac_release::ArtifactMismatch {
                    path: manifest.artifacts[0].path.clone(),
                    expected: manifest.artifacts[0].sha3,
                    got: Some(content_hash(b"malware")),
                    got_size: Some(7),
                }],
            },
            environment: [0; 32],
            time_ms: chainiac_client::now_ms(),
            isolation: chainiac_release::BuildIsolation::Namespaces,
        };
        let attestation = chainiac_release::Attestation::sign(&liar_key, body);
        // A rebuilder submits its own attestations, connected with its key.
        let as_liar = Pool::new(chainiac_proto::endpoint::client("127.0.0.1:0".parse()?)?, Arc::new(liar_key));
        let before = head_index(self.pool, &self.witnesses[0], self.chain).await?;
        match call(&as_liar, &self.witnesses[2], Request::SubmitRebuild { chain: self.chain, attestation }).await? {
            Response::Appended { .. } | Response::RebuildQueued { .. } => {}
            other => bail!("the lie was not recorded: {other:?}"),
        }
        wait_for_head_past(self.pool, &self.witnesses[0], self.chain, before).await?;
        wait_for_timeline(self.pool, &self.witnesses[0], self.chain).await?;
        let update = client.update(self.chain).await?;
        let level = update.level.as_ref().context("the release's level")?;
        step.done(t, &format!("hello {version} {}", level.describe()));

        let (old, _, old_binary) = &self.released[1];
        let t = step.say(&format!("the developers yank hello {old}; clients refuse it from then on"));
        let policy_bytes = client.state().chains[&self.chain].policy.clone();
        let policy = Policy::from_bytes(&policy_bytes)?;
        let yank = chainiac_release::Yank {
            version: old.clone(),
            reason: "CVE-2026-0042: prints to the wrong stream".into(),
            time_ms: chainiac_client::now_ms(),
        };
        let old_hash = chainiac_skipchain::block::policy_hash(&policy_bytes);
        let signatures = self
            .yankers
            .iter()
            .map(|k| chainiac_release::YankSignature::sign(k, &self.chain.0, &old_hash, &yank))
            .collect();
        let proposal = Proposal {
            kind: chainiac_release::KIND_YANK,
            payload: chainiac_release::YankPayload { signatures }.to_bytes(),
            policy: Some(policy.with_yank(yank).to_bytes()),
            ..Proposal::default()
        };
        let index = match call(self.pool, &self.witnesses[1], Request::Propose { chain: self.chain, proposal }).await? {
            Response::Appended { block } => block.header.index,
            other => bail!("the yank was refused: {other:?}"),
        };
        wait_for_timeline(self.pool, &self.witnesses[0], self.chain).await?;
        let update = client.update(self.chain).await?;
        let seen = update.yanked.iter().map(|y| y.version.clone()).collect::<Vec<_>>().join(", ");
        let refused = match client.verify_artifact_of(self.chain, old, &format!("hello-{old}/hello"), old_binary).await
        {
            Err(e) => e.to_string(),
            Ok(_) => bail!("a yanked release was accepted"),
        };
        step.done(t, &format!("yank at block {index}; update reports {seen}; verify: {refused}"));

        let t = step
            .say(&format!("fetching hello {version} (`chainiac fetch`): the lying mirror first, then the honest one"));
        let out = self.root.join("hello");
        let state = self.root.join("client.state");
        let artifact = format!("hello-{version}/hello");
        let (stdout, stderr) = self
            .chainiac_both(&[
                "fetch",
                "--state",
                state.to_str().unwrap(),
                "--chain",
                &self.chain.to_hex(),
                "--artifact",
                &artifact,
                "--from",
                &format!("{liar}/hello"),
                "--from",
                &format!("{honest}/hello"),
                "--out",
                out.to_str().unwrap(),
            ])
            .await?;
        let named = stderr.lines().next().unwrap_or_default().to_string();
        step.done(t, &format!("{named}\n           {}", stdout.trim()));
        drop(mirrors);
        Ok(())
    }

    /// Runs this binary with `args`; its stdout, or its stderr as the error.
    async fn chainiac(&self, args: &[&str]) -> Result<String> {
        Ok(self.chainiac_both(args).await?.0)
    }

    async fn chainiac_both(&self, args: &[&str]) -> Result<(String, String)> {
        let out = Command::new(std::env::current_exe()?).args(args).output().await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if !out.status.success() {
            bail!("chainiac {}: {}", args.join(" "), text(&out.stderr));
        }
        Ok((text(&out.stdout), text(&out.stderr)))
    }
}

/// The cothority's roster changes the rightful way: witness 3 leaves and witness 4 joins.
/// A change nobody approved is refused first; then the operators of witnesses 0–2 (3 of
/// the 4 members, the threshold) approve the new roster with their witness keys, and the
/// timeline and the project move to it.
async fn change_roster(
    step: &mut Step,
    pool: &Pool,
    witnesses: &[Node],
    dirs: &[PathBuf],
    members: &[Member],
    chains: &[ChainId],
) -> Result<()> {
    let t = step.say("changing the roster: witness 3 leaves, witness 4 joins, approved by 3 of the 4 operators");
    // Epoch 1: above the genesis committees' 0, so these approvals can never bring it back.
    let next = Committee::byzantine(Roster::new([0, 1, 2, NEWCOMER].iter().map(|&i| members[i].clone()).collect())?)
        .with_epoch(1);
    let propose = |appointment: Appointment, chain: ChainId| {
        let proposal = Proposal { kind: KIND_COMMITTEE, committee: Some(appointment), ..Proposal::default() };
        call(pool, &witnesses[1], Request::Propose { chain, proposal })
    };
    let refused = match propose(Appointment::anchor(next.clone()), chains[0]).await {
        Err(e) => e.to_string(),
        Ok(other) => bail!("a change nobody approved was not refused: {other:?}"),
    };
    let expires_ms = chainiac_client::now_ms() + 30 * 86_400_000;
    let mut approvals = Vec::new();
    for dir in &dirs[..3] {
        approvals.push(Approval::sign(&keyfile::read(&dir.join("node.key"))?, &next, expires_ms, None));
    }
    let appointment = Appointment { committee: next, approvals };
    let mut moved = Vec::new();
    for &chain in chains {
        // The timeline's own blocks may hold the index for a moment: ask again.
        let mut tries = 0;
        let block = loop {
            match propose(appointment.clone(), chain).await {
                Ok(Response::Appended { block }) => break block,
                Ok(other) => bail!("the approved change was refused: {other:?}"),
                Err(e) if tries < 20 && is_busy(&e) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        moved.push(block.header.index.to_string());
    }
    step.done(
        t,
        &format!("unapproved: {refused}; approved: timeline and project changed at blocks {}", moved.join(" and ")),
    );
    Ok(())
}

/// Whether a call failed because the index was held or taken by a block racing it.
fn is_busy(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<chainiac_proto::CallError>(),
        Some(chainiac_proto::CallError::Remote(reply))
            if matches!(reply.code, chainiac_proto::ErrorCode::Busy | chainiac_proto::ErrorCode::Conflict)
    )
}

/// The index of `chain`'s head at `witness`.
async fn head_index(pool: &Pool, witness: &Node, chain: ChainId) -> Result<u64> {
    match call(pool, witness, Request::GetHead { chain }).await? {
        Response::Head(head) => Ok(head.index),
        other => bail!("{other:?}"),
    }
}

/// Until `witness` holds a head of `chain` past `index` (a batch of rebuilds appended).
async fn wait_for_head_past(pool: &Pool, witness: &Node, chain: ChainId, index: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while head_index(pool, witness, chain).await? <= index {
        if Instant::now() > deadline {
            bail!("no rebuild batch was appended to the project in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Waits until the timeline records the project's current head.
async fn wait_for_timeline(pool: &Pool, witness: &Node, chain: ChainId) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let head = match call(pool, witness, Request::GetHead { chain }).await? {
            Response::Head(head) => head.index,
            other => bail!("{other:?}"),
        };
        if let Ok(Response::Timeline(info)) =
            call(pool, witness, Request::GetTimeline { timeline: None, chain: Some(chain) }).await
        {
            if info.inclusion.is_some_and(|p| p.leaf.index >= head) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the timeline did not record the project's head in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
