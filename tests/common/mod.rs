//! Starts real `chainiac witness` processes on 127.0.0.1 with their own RocksDB folders,
//! and talks to them over QUIC like a client would.
#![allow(dead_code)]

use chainiac_cosi::{PublicKey, Roster, SecretKey};
use chainiac_proto::endpoint;
use chainiac_proto::message::{ErrorReply, Request, Response};
use chainiac_proto::CallError;
use chainiac_skipchain::{
    genesis, Appointment, Approval, Block, ChainId, ChainParams, ChainState, Committee, Proposal,
};
use chainiac_witness::config::RosterFile;
use chainiac_witness::keyfile;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `chainiac` binary: in the `tests/` package's tests, Cargo's `chainiac-under-test`
/// (the same `chainiac::main`); elsewhere (the `chainiac-bench` binary) `$CHAINIAC_BIN`,
/// else the `chainiac` next to the running program.
pub fn bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_chainiac-under-test") {
        return path.into();
    }
    std::env::var_os("CHAINIAC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("chainiac"))
}
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A port free now, below the ephemeral range (32768 and up on Linux): the clients of
/// tests running alongside bind ephemeral ports all the time, and one taking a witness's
/// port between this check and the witness's start would keep it from coming up.
/// A port is handed out once per test process: two tests running at once that drew the
/// same free port before either's witness bound it would otherwise collide (CI saw it).
pub fn free_port() -> u16 {
    use rand_core::RngCore;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = 20_000 + (rand_core::OsRng.next_u32() % 12_000) as u16;
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

pub struct WitnessProcess {
    pub dir: PathBuf,
    pub address: String,
    pub key: PublicKey,
    child: Option<Child>,
}

impl WitnessProcess {
    /// The process's resident memory in KiB (Linux `/proc`), while it runs.
    #[allow(dead_code)] // the bench's; tests do not read it
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// `chainiac witness init` in `dir`.
    pub fn init(dir: &Path) -> Self {
        Self::init_with(dir, 400)
    }

    /// `chainiac witness init` in `dir`, with automatic timeline blocks every
    /// `timeline_interval_ms` (0: none).
    pub fn init_with(dir: &Path, timeline_interval_ms: u64) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let out = Command::new(bin())
            .args(["witness", "init", "--dir", dir.to_str().unwrap(), "--listen", &address, "--json"])
            .args(["--timeline-interval-ms", &timeline_interval_ms.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
        let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let key = parse_key(entry["key"].as_str().unwrap());
        WitnessProcess { dir: dir.to_path_buf(), address, key, child: None }
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// [`WitnessProcess::start`] with these environment variables (`FAILPOINTS`, say).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("witness.log")).unwrap();
        let child = Command::new(bin())
            .args(["witness", "run", "--config", self.dir.join("witness.toml").to_str().unwrap(), "--log", "info"])
            .envs(env.iter().copied())
            // A core file from a fail point's abort lands there, not in the source tree.
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits up to `within` for the process to end on its own (a fail point's abort); its
    /// exit status, or None if it still runs.
    pub async fn exited(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        child.wait().unwrap()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("witness.log")).unwrap_or_default()
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn parse_key(hex_key: &str) -> PublicKey {
    PublicKey::from_hex(hex_key).unwrap()
}

pub struct Cluster {
    pub root: tempfile::TempDir,
    pub witnesses: Vec<WitnessProcess>,
    pub client: Client,
    /// When the operators' approvals made in this test expire.
    pub approvals_expire_ms: u64,
}

impl Cluster {
    /// `n` witnesses initialised and running.
    pub async fn start(n: usize) -> Self {
        Self::start_with(n, 400).await
    }

    /// `n` witnesses with automatic timeline blocks every `timeline_interval_ms` (0: none).
    pub async fn start_with(n: usize, timeline_interval_ms: u64) -> Self {
        Self::start_configured(n, timeline_interval_ms, |_, _| {}).await
    }

    /// [`Cluster::start_with`], each witness's config (`i`) changed by `configure` first.
    pub async fn start_configured(
        n: usize,
        timeline_interval_ms: u64,
        configure: impl Fn(usize, &mut chainiac_witness::WitnessConfig),
    ) -> Self {
        let root = tempfile::tempdir().unwrap();
        let mut witnesses: Vec<WitnessProcess> = (0..n)
            .map(|i| WitnessProcess::init_with(&root.path().join(format!("w{i}")), timeline_interval_ms))
            .collect();
        // A cothority whose operators know each other: each witness learns chains it lacks
        // from the others (a newcomer to a committee, say).
        let peers: Vec<chainiac_witness::config::Peer> = witnesses
            .iter()
            .map(|w| chainiac_witness::config::Peer { key: w.key.to_string(), address: w.address.clone() })
            .collect();
        for (i, w) in witnesses.iter().enumerate() {
            let path = w.dir.join("witness.toml");
            let mut config: chainiac_witness::WitnessConfig =
                toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            config.peers = peers.iter().filter(|p| p.key != w.key.to_string()).cloned().collect();
            // Tests create chains by the dozen from one address.
            config.chain_quota_per_day = 100_000;
            configure(i, &mut config);
            std::fs::write(&path, config.to_toml()).unwrap();
        }
        for w in &mut witnesses {
            w.start();
        }
        let client = Client::new();
        for w in &witnesses {
            client.wait_ready(w).await;
        }
        Cluster { root, witnesses, client, approvals_expire_ms: now_ms() + 86_400_000 }
    }

    /// The roster of witnesses `members`, read from the `member.toml` files `init` wrote.
    pub fn roster(&self, members: &[usize]) -> Roster {
        let mut entries = Vec::new();
        for &i in members {
            let text = std::fs::read_to_string(self.witnesses[i].dir.join("member.toml")).unwrap();
            let file: RosterFile = toml::from_str(&text).unwrap();
            entries.extend(file.member);
        }
        RosterFile { member: entries }.to_roster().unwrap()
    }

    /// Creates a raw chain served by witnesses `members` (Byzantine threshold).
    pub async fn create_chain(&self, members: &[usize]) -> (ChainId, Block) {
        self.create_chain_of_kind(members, 0).await
    }

    /// Creates a chain of `kind` (0: raw, 1: timeline) served by witnesses `members`.
    pub async fn create_chain_of_kind(&self, members: &[usize], kind: u16) -> (ChainId, Block) {
        let committee = Committee::byzantine(self.roster(members));
        let genesis =
            genesis(ChainParams::new(2, 20).unwrap(), committee, b"test policy".to_vec(), kind, vec![], now_ms());
        // A timeline is created by an operator of its committee, with the witness key.
        let operator;
        let client = if kind == chainiac_skipchain::timeline::KIND_TIMELINE {
            operator = self.operator(members[0]);
            &operator
        } else {
            &self.client
        };
        let reply = client.call(&self.witnesses[members[0]], Request::CreateChain { genesis: genesis.clone() }).await;
        match reply {
            Ok(Response::Created { chain }) => (chain, genesis),
            other => panic!("create chain: {other:?}"),
        }
    }

    pub async fn propose(&self, leader: usize, chain: ChainId, payload: &[u8]) -> Result<Block, CallError> {
        let proposal = Proposal { kind: 0, payload: payload.to_vec(), ..Proposal::default() };
        match self.client.call(&self.witnesses[leader], Request::Propose { chain, proposal }).await? {
            Response::Appended { block } => Ok(block),
            other => panic!("propose: unexpected {other:?}"),
        }
    }

    /// The witness keys of `members`, read from their key files (what their operators hold).
    pub fn keys(&self, members: &[usize]) -> Vec<SecretKey> {
        members.iter().map(|&i| keyfile::read(&self.witnesses[i].dir.join("node.key")).unwrap()).collect()
    }

    /// A client presenting witness `i`'s key: its operator.
    pub fn operator(&self, i: usize) -> Client {
        Client::with_key(self.keys(&[i]).pop().unwrap())
    }

    /// `committee` appointed by the operators of witnesses `approvers`, their approvals
    /// valid for a day (the same bytes every time in one test: signatures are deterministic).
    pub fn appoint(&self, approvers: &[usize], committee: &Committee) -> Appointment {
        let approvals =
            self.keys(approvers).iter().map(|k| Approval::sign(k, committee, self.approvals_expire_ms, None)).collect();
        Appointment { committee: committee.clone(), approvals }
    }

    /// Proposes a block that hands the chain to `committee` from the next block on,
    /// approved by the operators of every member of the chain's committee now (`outgoing`).
    pub async fn propose_change(
        &self,
        leader: usize,
        chain: ChainId,
        committee: Committee,
    ) -> Result<Block, CallError> {
        let outgoing = self.committee_of(leader, chain).await;
        let approvers: Vec<usize> = (0..self.witnesses.len())
            .filter(|&i| outgoing.roster().index_of(&self.witnesses[i].key).is_some())
            .collect();
        self.propose_appointment(leader, chain, self.appoint(&approvers, &committee)).await
    }

    /// Proposes a committee-change block carrying `appointment` as it is; asks again while
    /// the index is busy or taken (a timeline's own blocks race it).
    pub async fn propose_appointment(
        &self,
        leader: usize,
        chain: ChainId,
        appointment: Appointment,
    ) -> Result<Block, CallError> {
        let proposal = Proposal {
            kind: chainiac_skipchain::authority::KIND_COMMITTEE,
            committee: Some(appointment),
            ..Proposal::default()
        };
        let mut tries = 0;
        loop {
            let request = Request::Propose { chain, proposal: proposal.clone() };
            match self.client.call(&self.witnesses[leader], request).await {
                Ok(Response::Appended { block }) => return Ok(block),
                Ok(other) => panic!("propose: unexpected {other:?}"),
                Err(CallError::Remote(reply))
                    if matches!(reply.code, chainiac_proto::ErrorCode::Busy | chainiac_proto::ErrorCode::Conflict)
                        && tries < 20 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The committee in force at `chain`'s head, as witness `i` proves it from the genesis
    /// it serves.
    pub async fn committee_of(&self, i: usize, chain: ChainId) -> Committee {
        let genesis = match self.client.call(&self.witnesses[i], Request::GetBlock { chain, index: 0 }).await {
            Ok(Response::Block(Some(genesis))) => genesis,
            other => panic!("genesis: {other:?}"),
        };
        self.prove_from_genesis(i, chain, &genesis).await.committee.as_ref().clone()
    }

    pub async fn head(&self, witness: usize, chain: ChainId) -> Option<u64> {
        match self.client.call(&self.witnesses[witness], Request::GetHead { chain }).await {
            Ok(Response::Head(head)) => Some(head.index),
            _ => None,
        }
    }

    /// Asserts that witnesses `0..n` hold one and the same block at each of `indices`.
    #[allow(dead_code)] // not every test binary uses it
    pub async fn assert_same_blocks(&self, n: usize, chain: ChainId, indices: std::ops::RangeInclusive<u64>) {
        for index in indices {
            let mut ids = std::collections::HashSet::new();
            for w in 0..n {
                let reply = self.client.call(&self.witnesses[w], Request::GetBlock { chain, index }).await.unwrap();
                let Response::Block(Some(block)) = reply else { panic!("witness {w} lacks block {index}") };
                ids.insert(block.id());
            }
            assert_eq!(ids.len(), 1, "witnesses disagree at index {index}");
        }
    }

    /// Waits until witness `i` reports head `index` for `chain`.
    pub async fn wait_head(&self, i: usize, chain: ChainId, index: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.head(i, chain).await == Some(index) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "witness {i} never reached head {index} (at {:?})",
                self.head(i, chain).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Verifies the chain from its genesis to witness `i`'s head with a proof it serves.
    pub async fn prove_from_genesis(&self, i: usize, chain: ChainId, genesis: &Block) -> ChainState {
        let request = Request::GetProof { chain, from: 0, to: None, with_payload: true };
        let Ok(Response::Proof(proof)) = self.client.call(&self.witnesses[i], request).await else {
            panic!("no proof")
        };
        let trusted = ChainState::genesis(genesis).unwrap();
        proof.verify(&trusted, &chainiac_release::policy_rule).unwrap().into_inner().state
    }

    /// The block `proposal` would be after witness `i`'s proven head of `chain` (built as a
    /// leader builds it, for a test to announce or commit itself).
    pub async fn next_block(
        &self,
        i: usize,
        chain: ChainId,
        genesis: &Block,
        proposal: chainiac_skipchain::Proposal,
    ) -> Block {
        let head = self.prove_from_genesis(i, chain, genesis).await;
        let mut ids = std::collections::HashMap::new();
        for index in 0..=head.index() {
            let Ok(Response::Block(Some(block))) =
                self.client.call(&self.witnesses[i], Request::GetBlock { chain, index }).await
            else {
                panic!("block {index}")
            };
            ids.insert(index, block.id());
        }
        head.propose(proposal, |i| ids.get(&i).copied()).unwrap()
    }
}

/// A client with a throwaway key; connections are kept per witness and reopened when a
/// witness restarts.
pub struct Client {
    pool: chainiac_proto::Pool,
}

impl Client {
    pub fn new() -> Self {
        Self::with_key(SecretKey::generate(&mut rand_core::OsRng))
    }

    /// A client that presents `key`.
    pub fn with_key(key: SecretKey) -> Self {
        let endpoint = endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        Client { pool: chainiac_proto::Pool::new(endpoint, std::sync::Arc::new(key)) }
    }

    pub async fn call(&self, witness: &WitnessProcess, request: Request) -> Result<Response, CallError> {
        self.pool.call(&witness.address, &witness.key, &request, CALL_TIMEOUT).await
    }

    pub async fn call_at(&self, address: &str, key: &PublicKey, request: Request) -> Result<Response, CallError> {
        self.pool.call(address, key, &request, CALL_TIMEOUT).await
    }

    /// Waits until `witness` answers on a fresh connection (a restarted witness is not
    /// reached through a connection cached from its previous run).
    pub async fn wait_ready(&self, witness: &WitnessProcess) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let key = SecretKey::generate(&mut rand_core::OsRng);
        let probe = || async {
            let connecting = endpoint::connect(self.pool.endpoint(), &key, &witness.address, &witness.key);
            let connection = tokio::time::timeout(Duration::from_secs(2), connecting).await.ok()?.ok()?;
            endpoint::call(&connection, &Request::Status, Duration::from_secs(2)).await.ok()
        };
        while probe().await.is_none() {
            assert!(Instant::now() < deadline, "witness at {} never came up:\n{}", witness.address, witness.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn refusal(error: &CallError) -> &ErrorReply {
    match error {
        CallError::Remote(reply) => reply,
        other => panic!("expected a refusal from the node, got {other}"),
    }
}

/// A `chainiac verifier` process.
pub struct VerifierProcess {
    pub dir: PathBuf,
    pub address: String,
    pub key: PublicKey,
    child: Option<Child>,
}

impl VerifierProcess {
    /// A verifier that takes build jobs from `callers` (the witnesses, release managers).
    pub fn init(dir: &Path, callers: &[PublicKey]) -> Self {
        Self::init_with(dir, 60, callers)
    }

    /// A verifier whose builds may run `time_limit_s` seconds.
    pub fn init_with(dir: &Path, time_limit_s: u64, callers: &[PublicKey]) -> Self {
        let address = format!("127.0.0.1:{}", free_port());
        let limit = time_limit_s.to_string();
        let mut args: Vec<String> = ["verifier", "init", "--dir", dir.to_str().unwrap(), "--listen", &address]
            .into_iter()
            .chain(["--json", "--time-limit-s", &limit])
            .map(String::from)
            .collect();
        for key in callers {
            args.extend(["--allow".to_string(), key.to_string()]);
        }
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "verifier init failed: {}", String::from_utf8_lossy(&out.stderr));
        let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        VerifierProcess { dir: dir.to_path_buf(), address, key: parse_key(entry["key"].as_str().unwrap()), child: None }
    }

    /// `chainiac verifier allow` on its config (`--chain ID`, `--roster FILE`, `--key K`);
    /// a running verifier applies it at its next build request.
    pub fn allow(&self, args: &[&str]) {
        let out = Command::new(bin())
            .args(["verifier", "allow", "--config", self.dir.join("verifier.toml").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "verifier allow failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("verifier.log")).unwrap();
        let child = Command::new(bin())
            .args(["verifier", "run", "--config", self.dir.join("verifier.toml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("verifier.log")).unwrap_or_default()
    }

    pub async fn wait_ready(&self, client: &Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe = Request::GetAttestation { manifest: chainiac_release::ManifestId([0; 32]) };
        loop {
            if let Ok(Response::Attestation(None)) = client.call_at(&self.address, &self.key, probe.clone()).await {
                return;
            }
            assert!(Instant::now() < deadline, "verifier at {} never came up:\n{}", self.address, self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for VerifierProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Kills witness 0 and serves `handler` with its key at its address (queries only).
pub fn replace_witness_0<H: chainiac_proto::server::Handler>(cluster: &mut Cluster, handler: H) {
    replace_witness_0_serving(cluster, handler, &[chainiac_proto::frame::FrameClass::Query]);
}

/// Kills witness 0 and serves `handler` with its key at its address, taking frames of
/// `classes` (`Peer` for a stand-in member of rounds).
pub fn replace_witness_0_serving<H: chainiac_proto::server::Handler>(
    cluster: &mut Cluster,
    handler: H,
    classes: &'static [chainiac_proto::frame::FrameClass],
) {
    cluster.witnesses[0].kill();
    let key = chainiac_witness::keyfile::read(&cluster.witnesses[0].dir.join("node.key")).unwrap();
    let endpoint = chainiac_proto::endpoint::server(&key, cluster.witnesses[0].address.parse().unwrap()).unwrap();
    tokio::spawn(chainiac_proto::server::serve(std::sync::Arc::new(handler), endpoint, classes));
}

/// A witness that serves a forged view: a store holding the honest chains up to some block
/// and, past it, blocks signed by a colluding cothority (every key of the committee).
pub struct Forger {
    pub store: chainiac_skipchain::store::MemoryStore,
    pub timeline: ChainId,
    pub index: u64,
    pub entry: chainiac_skipchain::timeline::TimelineEntry,
    pub set: chainiac_skipchain::timeline::HeadSet,
}

impl chainiac_proto::server::Handler for Forger {
    async fn handle(self: std::sync::Arc<Self>, _: PublicKey, _: std::net::SocketAddr, request: Request) -> Response {
        use chainiac_proto::{ErrorCode, ErrorReply, TimelineBatch};
        use chainiac_skipchain::store::{self, Store};
        let head = |chain: &ChainId| self.store.head(chain).unwrap().map(|h| h.index);
        match request {
            // No change lists: the client takes inclusion proofs of the forged block.
            Request::GetTimelineChanges { from, max_bytes, .. } => {
                Response::Error(chainiac_proto::changes_too_large(from, u64::MAX, max_bytes))
            }
            Request::GetTimelineBatch { chains, .. } => Response::TimelineBatch(TimelineBatch {
                timeline: self.timeline,
                index: self.index,
                entry: self.entry.clone(),
                inclusion: self.set.prove_many(&chains),
            }),
            Request::GetProofs { queries, with_payload, .. } => Response::Proofs(
                queries
                    .iter()
                    .map(|q| {
                        let to = q.to.or(head(&q.chain)).unwrap_or(0);
                        store::prove(&self.store, &q.chain, q.from, to, with_payload && to > q.from)
                            .map_err(|e| ErrorReply::new(ErrorCode::NotFound, e.to_string()))
                    })
                    .collect(),
            ),
            Request::GetBlocks { chain, from, count } => Response::Blocks(
                (from..from + u64::from(count)).map_while(|i| self.store.block(&chain, i).unwrap()).collect(),
            ),
            // What its rebuilds blocks hold about the release.
            Request::GetRebuilds { chain, release } => {
                let head = head(&chain).unwrap_or(0);
                let blocks = (release + 1..=head).filter_map(|i| self.store.block(&chain, i).unwrap());
                let rebuilds = blocks
                    .filter(|b| b.header.kind == chainiac_release::KIND_REBUILDS)
                    .filter_map(|b| chainiac_release::Rebuilds::from_bytes(&b.payload).ok());
                Response::Rebuilds(rebuilds.filter(|r| r.release == release).flat_map(|r| r.attestations).collect())
            }
            Request::GetBackwardProof { chain, from, to, with_payload } => {
                match chainiac_skipchain::store::prove_backward(&self.store, &chain, from, to, with_payload) {
                    Ok(proof) => Response::BackwardProof(proof),
                    Err(e) => Response::Error(ErrorReply::new(ErrorCode::NotFound, e.to_string())),
                }
            }
            // As a witness answers: a rebuild summary's release comes with the links.
            Request::GetLinkedProofs { queries, with_payload, .. } => {
                match chainiac_witness::answers::linked_proofs(&self.store, &queries, with_payload, Vec::new()) {
                    Ok(answers) => Response::LinkedProofs(answers),
                    Err(e) => Response::Error(e),
                }
            }
            _ => Response::Error(ErrorReply::new(ErrorCode::NotFound, "not served here")),
        }
    }
    fn refused(&self, _: &str) {}
}

/// Signs a block with every key of the committee of witnesses 0–3 (ballot 0): a cothority
/// whose every member colludes.
#[allow(dead_code)] // not every test binary uses it
pub fn colluders(cluster: &Cluster) -> impl FnMut(&mut Block) {
    use chainiac_cosi::simulation::sign_with_all_keys;
    let committee = Committee::byzantine(cluster.roster(&[0, 1, 2, 3]));
    let ordered: Vec<SecretKey> = committee
        .roster()
        .members()
        .iter()
        .map(|m| {
            let w = cluster.witnesses.iter().find(|w| w.key == m.key).unwrap();
            keyfile::read(&w.dir.join("node.key")).unwrap()
        })
        .collect();
    let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(7);
    move |block: &mut Block| {
        let message = chainiac_skipchain::BlockSignature::message(&block.id(), 0);
        let mask = chainiac_cosi::Mask::full(ordered.len());
        let signature = sign_with_all_keys(committee.roster(), &ordered, &mask, &message, &mut rng);
        block.signature = Some(chainiac_skipchain::BlockSignature { ballot: 0, signature });
    }
}

/// Copies blocks `0..=to` of `chain` from witness 1 into `store`, each checked as appended.
pub async fn copy_chain(cluster: &Cluster, store: &chainiac_skipchain::store::MemoryStore, chain: ChainId, to: u64) {
    let mut next = 0;
    while next <= to {
        let count = (to + 1 - next).min(256) as u32;
        let reply = cluster.client.call(&cluster.witnesses[1], Request::GetBlocks { chain, from: next, count }).await;
        let Ok(Response::Blocks(blocks)) = reply else { panic!("no blocks: {reply:?}") };
        assert!(!blocks.is_empty());
        for block in blocks.iter().take((to + 1 - next) as usize) {
            chainiac_skipchain::store::append(store, block).unwrap();
        }
        next += blocks.len() as u64;
    }
}

/// Waits until witness 1's newest timeline block records `chain` at `index` or later
/// (witness 0's while witness 1 is down).
pub async fn wait_timeline_has(cluster: &Cluster, chain: ChainId, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let asked = if cluster.witnesses[1].is_running() { &cluster.witnesses[1] } else { &cluster.witnesses[0] };
        let reply = cluster.client.call(asked, Request::GetTimeline { timeline: None, chain: Some(chain) }).await;
        if let Ok(Response::Timeline(info)) = reply {
            if info.inclusion.is_some_and(|p| p.leaf.index >= index) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the timeline never recorded head {index}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
