//! The witness node: what it does with each request. The server (`server.rs`) moves frames
//! in and out; the cores (`cosi`, `skipchain`) decide; this module holds the node's state
//! between the two and the rules that are the node's own (promises, reservations, who may
//! ask what).

use crate::config::WitnessConfig;
use crate::metrics::Metrics;
use crate::rules;
use chainiac_cosi::protocol::{
    commit, Aggregator, Challenge, Leader, ProtocolError, Response as CosiResponse, RoundError, Session, SessionId,
    SignerNonces, Tree,
};
use chainiac_cosi::{Mask, Member, PublicKey, Roster, SecretKey};
use chainiac_proto::message::{
    Announce, ErrorCode, ErrorReply, HeadInfo, LinkedQuery, NodeStatus, PromiseSignature, ProofQuery, Request,
    Response, SignedPromise, TimelineBatch, TimelineInfo, CHAINS_PER_PAGE, MAX_CHANGE_BLOCKS, MAX_HELD_APPOINTMENTS,
    MAX_PROOF_QUERIES, MAX_TIMELINE_CHAINS, MAX_WATCHED_PREFIXES, PROOFS_RESPONSE_BUDGET,
};
use chainiac_proto::{CallError, FrameClass, Pool};
use chainiac_release::KIND_RELEASE;
use chainiac_skipchain::rocks::RocksStore;
use chainiac_skipchain::store::{self, Store, StoreError};
use chainiac_skipchain::timeline::{
    changes_cost, changes_page, changes_page_full, ChainPrefix, ChangeList, HeadLeaf, HeadSet, TimelineChanges,
    TimelineEntry, KIND_TIMELINE,
};
use chainiac_skipchain::{Block, BlockId, ChainId, ChainState, Proposal};
use rand_core::{OsRng, RngCore};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Column family of promises: `chain || index` → the one block (unsigned, encoded) this node
/// will sign there, until the index is filled.
pub const CF_PROMISES: &str = "promises";
/// Column family of the head set of each timeline's newest block this node holds one for:
/// `timeline || chain` → `u64be(index) || id` per leaf, and `timeline` → `u64be(block
/// index)`. Written with each newer timeline block (its changes only), read at start, so
/// that a restarted node answers timeline clients at once.
pub const CF_TIMELINE_HEADS: &str = "timeline_heads";
/// How long a member that missed a round this node led is left out of its next rounds'
/// trees (while the threshold allows), before it is asked again.
const PRESUMED_DOWN: Duration = Duration::from_secs(10);
/// Promised blocks a leader re-leads before its own proposal, at most (one per index).
const MAX_ADOPTIONS: usize = 4;
/// Most blocks one `GetBlocks` answer carries.
const MAX_BLOCKS_PER_ANSWER: u32 = 256;
/// Bytes of blocks one `GetBlocks` answer carries past its first block (blocks carry up to
/// 4 MiB of payload: 256 of them would pass the response frame limit many times over).
const BLOCKS_RESPONSE_BUDGET: usize = 16 << 20;
/// Attempts per round before the leader gives up.
const MAX_ATTEMPTS: usize = 3;

type Reply = Result<Response, ErrorReply>;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

/// The answers of a batched proof request, in order: `prove` makes each (with the hashes of
/// the committees it carries), leaving out every committee the request names as held or an
/// earlier answer carried. Once the answer holds [`PROOFS_RESPONSE_BUDGET`] bytes, or the
/// next proof would overflow one response frame, the rest are `Busy` ("ask again"); a
/// first proof too large for a frame alone is `Refused`.
fn answer_each<Q, P: serde::Serialize>(
    queries: &[Q],
    held_appointments: Vec<[u8; 32]>,
    mut prove: impl FnMut(&Q, &HashSet<[u8; 32]>) -> Result<(P, Vec<[u8; 32]>), ErrorReply>,
) -> Result<Vec<Result<P, ErrorReply>>, ErrorReply> {
    if queries.is_empty() || queries.len() > MAX_PROOF_QUERIES {
        let n = queries.len();
        return Err(err(ErrorCode::BadRequest, format!("asks for {n} proofs; 1 to {MAX_PROOF_QUERIES} allowed")));
    }
    if held_appointments.len() > MAX_HELD_APPOINTMENTS {
        let n = held_appointments.len();
        return Err(err(ErrorCode::BadRequest, format!("names {n} held committees; at most {MAX_HELD_APPOINTMENTS}")));
    }
    let mut held: HashSet<[u8; 32]> = held_appointments.into_iter().collect();
    let mut size = 0usize;
    let answers = queries
        .iter()
        .map(|query| {
            if size >= PROOFS_RESPONSE_BUDGET {
                return Err(err(ErrorCode::Busy, "this answer is full; ask for this chain again"));
            }
            let (proof, carried) = prove(query, &held)?;
            // The answer must fit one response frame whatever the chains hold. Measured
            // without encoding: the answer is encoded once, when it is sent.
            let len = postcard::experimental::serialized_size(&proof).expect("proofs serialize");
            let room = FrameClass::Response.limit() - (1 << 20);
            if size + len > room {
                return Err(if size > 0 {
                    err(ErrorCode::Busy, "this answer is full; ask for this chain again")
                } else {
                    err(
                        ErrorCode::Refused,
                        format!("the proof is {len} bytes, over one answer; ask for a nearer block"),
                    )
                });
            }
            held.extend(carried);
            size += len;
            Ok(proof)
        })
        .collect();
    Ok(answers)
}

fn store_err<E: std::error::Error>(e: StoreError<E>) -> ErrorReply {
    match e {
        StoreError::Block(b) => err(ErrorCode::Refused, b.to_string()),
        StoreError::UnknownChain(c) => err(ErrorCode::NotFound, format!("chain {c} is not served here")),
        StoreError::NoSuchBlock { .. } => err(ErrorCode::NotFound, e.to_string()),
        StoreError::Conflict { .. } => err(ErrorCode::Conflict, e.to_string()),
        StoreError::WrongDirection { .. } | StoreError::ChainExists(_) => err(ErrorCode::BadRequest, e.to_string()),
        StoreError::Backend(_) | StoreError::Corrupt(_) => err(ErrorCode::Internal, e.to_string()),
    }
}

fn protocol_err(e: ProtocolError) -> ErrorReply {
    err(ErrorCode::BadRequest, format!("cosigning protocol: {e}"))
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A timeline block this node can prove inclusions in: its index, entry and head set.
type KnownTimeline = (u64, TimelineEntry, Arc<HeadSet>);

/// A checked timeline block's head set and, if its entry records one, its change list.
type CheckedTimeline = (Arc<HeadSet>, Option<Arc<ChangeList>>);

/// Failed proposals with a change list in a row after which a leader proposes one without.
const LISTED_FAILURES: u32 = 2;

/// One timeline's change lists, by block index.
type ChangeLists = std::collections::BTreeMap<u64, Arc<ChangeList>>;

/// Change lists kept per timeline (newest blocks), to answer `GetTimelineChanges`.
const KEPT_CHANGE_LISTS: usize = 4096;
/// At most this many leaves in the lists kept per timeline (≈ 150 MB with their trees).
const KEPT_CHANGE_LEAVES: usize = 1 << 20;

/// Who a chain-creation quota counts against: a client key, and separately the address it
/// connects from (throwaway keys are free; addresses are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Creator {
    Key([u8; 32]),
    Address(std::net::IpAddr),
}

/// The window a chain-creation quota counts over.
const QUOTA_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The head set of each timeline's newest recorded block, read back from
/// [`CF_TIMELINE_HEADS`] and kept only if it is the one the block's entry commits to (root
/// and size), so that a restarted node serves timeline clients at once.
fn restore_timelines(store: &RocksStore, timelines: &HashSet<ChainId>) -> HashMap<ChainId, KnownTimeline> {
    let db = store.db();
    let cf = db.cf_handle(CF_TIMELINE_HEADS).expect("timeline heads column family is opened at start");
    let mut restored = HashMap::new();
    for timeline in timelines {
        let Ok(Some(recorded)) = db.get_cf(cf, timeline.0) else { continue };
        let Ok(index) = <[u8; 8]>::try_from(recorded.as_slice()).map(u64::from_be_bytes) else { continue };
        let mut leaves = Vec::new();
        let prefix = timeline.0;
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward)) {
            let Ok((key, value)) = item else { break };
            if !key.starts_with(&prefix) {
                break;
            }
            if key.len() != 64 || value.len() != 40 {
                continue; // the block index, under the bare timeline id
            }
            let chain = BlockId(key[32..].try_into().expect("64-byte key"));
            let index = u64::from_be_bytes(value[..8].try_into().expect("40-byte value"));
            leaves.push(HeadLeaf { chain, index, id: BlockId(value[8..].try_into().expect("40-byte value")) });
        }
        let set = HeadSet::new(leaves);
        let entry =
            store.block(timeline, index).ok().flatten().and_then(|b| TimelineEntry::from_bytes(&b.payload).ok());
        match entry {
            Some(entry) if entry.root == set.root() && entry.chains == set.len() as u64 => {
                info!(timeline = %timeline.to_hex()[..16], index, chains = set.len(), "timeline heads restored");
                restored.insert(*timeline, (index, entry, Arc::new(set)));
            }
            _ => {
                warn!(timeline = %timeline.to_hex()[..16], index, "recorded timeline heads do not match their block; answering from the next one")
            }
        }
    }
    restored
}

/// Most blocks one round or replication message may make a node catch up on: a member that
/// is further behind learns the chain in steps, from rounds at lower indices.
const MAX_CATCH_UP_BLOCKS: u64 = 1 << 20;

fn check_catch_up_length(head: u64, index: u64) -> Result<(), ErrorReply> {
    if index.saturating_sub(head) > MAX_CATCH_UP_BLOCKS {
        return Err(err(
            ErrorCode::Refused,
            format!("block {index} is more than {MAX_CATCH_UP_BLOCKS} blocks past this witness's head {head}"),
        ));
    }
    Ok(())
}

/// What this node promised at an index: the block, and its id.
struct Promised {
    id: BlockId,
    block: Block,
}

/// The heads a timeline records, kept up to date per append: a moved head rehashes its
/// path at once; chains new since the last read wait in `new` and are merged when the set
/// is next read (one rebuild of the levels per timeline tick, not one per created chain —
/// creating 15,000 chains one by one would otherwise rehash the set 15,000 times).
struct CurrentHeads {
    set: Arc<HeadSet>,
    new: Vec<HeadLeaf>,
}

impl CurrentHeads {
    fn note(&mut self, leaf: HeadLeaf) {
        if self.set.leaf(&leaf.chain).is_some() {
            Arc::make_mut(&mut self.set).apply(&[leaf]);
        } else if let Some(waiting) = self.new.iter_mut().find(|l| l.chain == leaf.chain) {
            *waiting = leaf;
        } else {
            self.new.push(leaf);
        }
    }

    fn set(&mut self) -> Arc<HeadSet> {
        if !self.new.is_empty() {
            let new = std::mem::take(&mut self.new);
            Arc::make_mut(&mut self.set).apply(&new);
        }
        self.set.clone()
    }

    fn len(&self) -> usize {
        self.set.len() + self.new.len()
    }
}

/// Runs disk work (synced RocksDB writes, whole-chain scans) off the runtime's worker
/// threads: the worker becomes a blocking thread for the call and the runtime moves its
/// other tasks to a fresh worker, so one slow fsync does not stall every round and query.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// How many members of `committee` may be faulty while its rounds stay safe: fewer than a
/// third, and at most `n − t` (beyond that no threshold is reached without them anyway).
/// More promises of a block than this include an honest member's.
fn faulty_bound(committee: &chainiac_skipchain::Committee) -> usize {
    let n = committee.roster().len();
    (n - committee.threshold()).max((n - 1) / 3)
}

fn promise_key(chain: &ChainId, index: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&chain.0);
    key[32..].copy_from_slice(&index.to_be_bytes());
    key
}

/// A round this node takes part in, between its commitment and its response.
struct RoundState {
    chain: ChainId,
    block: Block,
    session: Session,
    member: usize,
    tree: Tree,
    nonces: SignerNonces,
    aggregator: Option<Aggregator>,
    expires: Instant,
}

pub struct Node {
    key: Arc<SecretKey>,
    config: WitnessConfig,
    store: RocksStore,
    pool: Pool,
    rounds: Mutex<HashMap<SessionId, RoundState>>,
    /// `(chain, index)` → the announced block holding that index, until when.
    reservations: Mutex<HashMap<(ChainId, u64), (BlockId, Instant)>>,
    /// Makes a promise's check and write one step.
    promise_lock: Mutex<()>,
    /// One round led at a time per chain on this node.
    chain_locks: Mutex<HashMap<ChainId, Arc<tokio::sync::Mutex<()>>>>,
    /// Head sets that matched a timeline block this node checked, by block id, until the
    /// block is appended (then they become `timelines`).
    pending_timelines: Mutex<HashMap<BlockId, CheckedTimeline>>,
    /// Per timeline chain: the change lists of its newest blocks, by index (in memory: a
    /// node that restarts answers from the blocks it checks after).
    change_lists: Mutex<HashMap<ChainId, ChangeLists>>,
    /// Per timeline chain: how many proposals with a change list failed in a row. After
    /// [`LISTED_FAILURES`] the next one records none (signers that miss the previous
    /// block's heads cannot check a list); one failure alone is more likely a race or a
    /// slow peer, and a block without a list makes clients fall back to inclusion proofs.
    lists_refused: Mutex<HashMap<ChainId, u32>>,
    /// Per timeline chain: the newest appended block whose head set this node holds.
    timelines: Mutex<HashMap<ChainId, KnownTimeline>>,
    /// Versions released per release chain.
    released: Mutex<HashMap<ChainId, std::collections::HashSet<String>>>,
    /// The verified head of each chain, as last read or appended.
    heads: Mutex<HashMap<ChainId, Arc<ChainState>>>,
    /// Members that missed a round this node led, until when they are left out of trees.
    down: Mutex<HashMap<PublicKey, Instant>>,
    /// The heads of every chain that is not a timeline, as a timeline records them: read
    /// once at start, then updated on each append (a moved head rehashes its path).
    current_heads: Mutex<CurrentHeads>,
    /// The timeline chains this node serves.
    timeline_chains: Mutex<std::collections::HashSet<ChainId>>,
    /// Chains created per caller (key, and IP address) in the last 24 hours.
    created: Mutex<HashMap<Creator, Vec<Instant>>>,
    pub metrics: Metrics,
    started: Instant,
}

impl Node {
    pub fn new(key: SecretKey, config: WitnessConfig, store: RocksStore, endpoint: quinn::Endpoint) -> Arc<Self> {
        let key = Arc::new(key);
        let heads = store.heads().unwrap_or_else(|e| {
            warn!("cannot read the chains' heads: {e}");
            Vec::new()
        });
        let timeline_chains: HashSet<ChainId> =
            heads.iter().filter(|(_, h)| h.kind == KIND_TIMELINE).map(|(c, _)| *c).collect();
        let current_heads = HeadSet::new(
            heads
                .iter()
                .filter(|(_, head)| head.kind != KIND_TIMELINE)
                .map(|(chain, head)| HeadLeaf { chain: *chain, index: head.index, id: head.id })
                .collect(),
        );
        let timelines = restore_timelines(&store, &timeline_chains);
        Arc::new(Node {
            pool: Pool::new(endpoint, key.clone()),
            key,
            config,
            store,
            rounds: Mutex::new(HashMap::new()),
            reservations: Mutex::new(HashMap::new()),
            promise_lock: Mutex::new(()),
            chain_locks: Mutex::new(HashMap::new()),
            pending_timelines: Mutex::new(HashMap::new()),
            change_lists: Mutex::new(HashMap::new()),
            lists_refused: Mutex::new(HashMap::new()),
            timelines: Mutex::new(timelines),
            heads: Mutex::new(HashMap::new()),
            current_heads: Mutex::new(CurrentHeads { set: Arc::new(current_heads), new: Vec::new() }),
            down: Mutex::new(HashMap::new()),
            released: Mutex::new(HashMap::new()),
            timeline_chains: Mutex::new(timeline_chains),
            created: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            started: Instant::now(),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    pub fn store(&self) -> &RocksStore {
        &self.store
    }

    /// Answers one request from the holder of `caller`.
    pub async fn handle(self: &Arc<Self>, caller: PublicKey, from: SocketAddr, request: Request) -> Response {
        let name = request.name();
        let result = match request {
            Request::Status => self.status(),
            Request::GetHead { chain } => self.head_info(&chain).map(Response::Head),
            Request::GetBlock { chain, index } => self
                .store
                .block(&chain, index)
                .map(Response::Block)
                .map_err(|e| err(ErrorCode::Internal, e.to_string())),
            Request::GetBlockById { id } => self.block_by_id(&id),
            Request::GetBlocks { chain, from, count } => self.blocks(&chain, from, count),
            Request::GetProof { chain, from, to, with_payload } => self.proof(&chain, from, to, with_payload),
            Request::GetBackwardProof { chain, from, to, with_payload } => {
                store::prove_backward(&self.store, &chain, from, to, with_payload)
                    .map(Response::BackwardProof)
                    .map_err(store_err)
            }
            Request::GetTimeline { timeline, chain } => self.timeline_info(timeline, chain),
            Request::CreateChain { genesis } => self.create_chain(caller, from, genesis).await,
            Request::Propose { chain, proposal } => {
                self.propose(caller, chain, proposal).await.map(|block| Response::Appended { block })
            }
            Request::Announce(announce) => self.on_announce(caller, from, announce).await,
            Request::Challenge { session, challenge } => self.on_challenge(caller, session, challenge).await,
            Request::Abort { session } => self.on_abort(caller, session),
            Request::Commit { block } => self.on_commit(caller, from, block).await,
            Request::Genesis { genesis } => self.on_genesis(caller, genesis),
            Request::GetPromise { chain, index } => self.get_promise(caller, chain, index),
            Request::ListChains { after } => {
                self.chain_page(after).map(|(heads, more)| Response::Chains { heads, more })
            }
            Request::SubmitRelease { chain, manifest, developer_signatures, source } => {
                self.submit_release(chain, manifest, developer_signatures, source).await
            }
            Request::GetAgreement { chain } => self.agreement(&chain),
            Request::GetProofs { queries, with_payload, held_appointments } => {
                self.proofs(&queries, with_payload, held_appointments)
            }
            Request::GetTimelineBatch { timeline, chains } => self.timeline_batch(timeline, &chains),
            Request::GetLinkedProofs { queries, with_payload, held_appointments } => {
                self.linked_proofs(&queries, with_payload, held_appointments)
            }
            Request::GetTimelineChanges { timeline, from, watched, held_appointments, max_bytes } => {
                self.timeline_changes(&timeline, from, watched, held_appointments, max_bytes)
            }
            Request::Build { .. } | Request::GetAttestation { .. } | Request::GetBuildLog { .. } => {
                Err(err(ErrorCode::BadRequest, "this is a witness; send build jobs to a verifier"))
            }
        };
        match result {
            Ok(response) => response,
            Err(reply) => {
                debug!(request = name, code = ?reply.code, "refused: {}", reply.message);
                Response::Error(reply)
            }
        }
    }

    // ---- queries ----

    fn status(&self) -> Reply {
        let (heads, _) = self.chain_page(None)?;
        let chains_total =
            self.current_heads.lock().expect("lock").len() + self.timeline_chains.lock().expect("lock").len();
        let m = &self.metrics;
        Ok(Response::Status(NodeStatus {
            key: self.key.public_key().to_bytes(),
            address: self.config.address.clone(),
            chains: heads,
            chains_total: chains_total as u64,
            uptime_s: self.started.elapsed().as_secs(),
            rounds_led: m.rounds_led.load(Ordering::Relaxed),
            rounds_failed: m.rounds_failed.load(Ordering::Relaxed),
            blocks_signed: m.blocks_signed.load(Ordering::Relaxed),
            faults_named: m.faults_named.load(Ordering::Relaxed),
            round_ms_mean: m.round_ms_total.load(Ordering::Relaxed) / m.rounds_led.load(Ordering::Relaxed).max(1),
            round_ms_max: m.round_ms_max.load(Ordering::Relaxed),
            peers_up: self.pool.live_connections() as u64,
            refused_frames: m.refused_frames.load(Ordering::Relaxed),
            blocks_adopted: m.blocks_adopted.load(Ordering::Relaxed),
            peers_left_out: m.peers_left_out.load(Ordering::Relaxed),
            timeline_age_ms: self.timeline_age_ms(),
        }))
    }

    /// How long ago the newest block of the timelines this node serves was made: a stalled
    /// timeline shows here before clients see stale answers.
    fn timeline_age_ms(&self) -> Option<u64> {
        let timelines: Vec<ChainId> = self.timeline_chains.lock().expect("lock").iter().copied().collect();
        let newest = timelines.iter().filter_map(|t| self.head(t).ok()).map(|h| h.header.timestamp_ms).max()?;
        Some(now_ms().saturating_sub(newest))
    }

    /// A page of heads after `after`, as stored (no committee decoded), and whether more
    /// chains follow.
    fn chain_page(&self, after: Option<ChainId>) -> Result<(Vec<HeadInfo>, bool), ErrorReply> {
        let internal = |e: chainiac_skipchain::rocks::RocksError| err(ErrorCode::Internal, e.to_string());
        let mut chains = self.store.chains_after(after.as_ref(), CHAINS_PER_PAGE + 1).map_err(internal)?;
        let more = chains.len() > CHAINS_PER_PAGE;
        chains.truncate(CHAINS_PER_PAGE);
        let mut heads = Vec::with_capacity(chains.len());
        for chain in chains {
            let Some(record) = self.store.head(&chain).map_err(internal)? else { continue };
            let Some(block) = self.store.block(&chain, record.index).map_err(internal)? else { continue };
            heads.push(HeadInfo { chain, index: record.index, id: record.id, header: block.header });
        }
        Ok((heads, more))
    }

    fn head_info(&self, chain: &ChainId) -> Result<HeadInfo, ErrorReply> {
        let head = self.head(chain)?;
        Ok(HeadInfo { chain: *chain, index: head.index(), id: head.id, header: head.header.clone() })
    }

    /// The index of a chain's head: one record read, no block decoded (a batched answer
    /// needs it for every chain it names).
    fn head_index(&self, chain: &ChainId) -> Result<u64, ErrorReply> {
        let record = self.store.head(chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        record.map(|r| r.index).ok_or_else(|| err(ErrorCode::NotFound, format!("chain {chain} is not served here")))
    }

    fn block_by_id(&self, id: &BlockId) -> Reply {
        let found = self.store.locate(id).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        let block = match found {
            Some((chain, index)) => {
                self.store.block(&chain, index).map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            }
            None => None,
        };
        Ok(Response::Block(block))
    }

    /// Up to `count` blocks from `from`, at most [`MAX_BLOCKS_PER_ANSWER`] and, past the
    /// first, no more than [`BLOCKS_RESPONSE_BUDGET`] bytes: the caller asks again from
    /// where the answer stopped.
    fn blocks(&self, chain: &ChainId, from: u64, count: u32) -> Reply {
        let mut blocks = Vec::new();
        let mut bytes = 0usize;
        for index in from..from.saturating_add(count.min(MAX_BLOCKS_PER_ANSWER) as u64) {
            match self.store.block(chain, index).map_err(|e| err(ErrorCode::Internal, e.to_string()))? {
                Some(block) => {
                    bytes += postcard::experimental::serialized_size(&block).unwrap_or(usize::MAX / 2);
                    if !blocks.is_empty() && bytes > BLOCKS_RESPONSE_BUDGET {
                        break;
                    }
                    blocks.push(block);
                }
                None => break,
            }
        }
        Ok(Response::Blocks(blocks))
    }

    fn proof(&self, chain: &ChainId, from: u64, to: Option<u64>, with_payload: bool) -> Reply {
        let to = match to {
            Some(to) => to,
            None => self.head_index(chain)?,
        };
        store::prove(&self.store, chain, from, to, with_payload).map(Response::Proof).map_err(store_err)
    }

    /// Proofs for many chains in one answer; each appointment travels at most once (and not
    /// at all if the client holds it), and the answer stops growing at the byte budget.
    fn proofs(&self, queries: &[ProofQuery], with_payload: bool, held_appointments: Vec<[u8; 32]>) -> Reply {
        let answers = answer_each(queries, held_appointments, |query, held| {
            let to = match query.to {
                Some(to) => to,
                None => self.head_index(&query.chain)?,
            };
            // No payload for a chain that did not move: the client has it already.
            let proof = store::prove(&self.store, &query.chain, query.from, to, with_payload && to > query.from)
                .map_err(store_err)?
                .without_appointments(|hash| held.contains(hash));
            let carried = proof.steps.iter().filter_map(|step| step.committee.as_ref().map(|a| a.digest())).collect();
            Ok((proof, carried))
        })?;
        Ok(Response::Proofs(answers))
    }

    fn linked_proofs(&self, queries: &[LinkedQuery], with_payload: bool, held_appointments: Vec<[u8; 32]>) -> Reply {
        let answers = answer_each(queries, held_appointments, |query, held| {
            let to = self.head_index(&query.chain)?;
            let moved = to > query.from;
            let proof = store::prove_linked(
                &self.store,
                &query.chain,
                query.from,
                query.recorded,
                to,
                with_payload && moved,
                |hash| held.contains(hash),
            )
            .map_err(store_err)?;
            let beyond = proof.beyond.clone().without_appointments(|hash| held.contains(hash));
            let proof = chainiac_skipchain::LinkedProof { beyond, ..proof };
            let carried = proof
                .appointments
                .iter()
                .chain(proof.beyond.steps.iter().filter_map(|step| step.committee.as_ref()))
                .map(|a| a.digest())
                .collect();
            Ok((proof, carried))
        })?;
        Ok(Response::LinkedProofs(answers))
    }

    // ---- who may ask ----

    /// The verified state at a chain's head, from memory when the store's head is still the
    /// one cached (decoding a committee re-checks every proof of possession; a round needs
    /// the head several times).
    fn head(&self, chain: &ChainId) -> Result<Arc<ChainState>, ErrorReply> {
        let record = self
            .store
            .head(chain)
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            .ok_or_else(|| err(ErrorCode::NotFound, format!("chain {chain} is not served here")))?;
        if let Some(cached) = self.heads.lock().expect("lock").get(chain) {
            if cached.index() == record.index && cached.id == record.id {
                return Ok(cached.clone());
            }
        }
        let state = Arc::new(store::head_state(&self.store, chain).map_err(store_err)?.into_inner());
        self.heads.lock().expect("lock").insert(*chain, state.clone());
        Ok(state)
    }

    /// Verifies `block` against the chain's head (or as a genesis) and appends it.
    fn append(&self, block: &Block) -> Result<Arc<ChainState>, StoreError<chainiac_skipchain::rocks::RocksError>> {
        blocking(|| self.append_now(block))
    }

    fn append_now(&self, block: &Block) -> Result<Arc<ChainState>, StoreError<chainiac_skipchain::rocks::RocksError>> {
        let state = match block.header.chain {
            None => store::append(&self.store, block)?,
            Some(chain) => {
                let head = self.head(&chain).map_err(|_| StoreError::UnknownChain(chain))?;
                let state = head.extend(block, |i| self.store.block_id(&chain, i).ok().flatten())?;
                store::commit_verified(&self.store, &state, block, Some(head.index()))?;
                state
            }
        };
        let state = Arc::new(state.into_inner());
        self.heads.lock().expect("lock").insert(state.chain, state.clone());
        let timeline =
            block.header.kind == KIND_TIMELINE || self.timeline_chains.lock().expect("lock").contains(&state.chain);
        if !timeline {
            let leaf = HeadLeaf { chain: state.chain, index: state.index(), id: state.id };
            self.current_heads.lock().expect("lock").note(leaf);
        }
        self.forget_promises(&state.chain, state.index());
        self.note_appended(block);
        Ok(state)
    }

    fn is_configured_peer(&self, caller: &PublicKey) -> bool {
        self.config.peers.iter().any(|p| p.public_key().as_ref() == Some(caller))
    }

    /// A witness this node may catch a chain it lacks up from: a configured peer, or a member
    /// of the committee of a timeline it serves (its cothority). Anyone else could make it
    /// fetch and verify a long chain of their own for nothing.
    fn is_known_witness(&self, caller: &PublicKey) -> bool {
        if self.is_configured_peer(caller) {
            return true;
        }
        let timelines: Vec<ChainId> = self.timeline_chains.lock().expect("lock").iter().copied().collect();
        timelines.iter().any(|t| self.head(t).is_ok_and(|head| head.committee.roster().index_of(caller).is_some()))
    }

    /// A message about a round this node has no state for: `NotFound` to a witness it
    /// knows (the round expired or never reached it), `Forbidden` to anyone else.
    fn unknown_session(&self, caller: &PublicKey) -> ErrorReply {
        if self.is_known_witness(caller) {
            err(ErrorCode::NotFound, "unknown or expired session")
        } else {
            self.forbidden(format!("key {caller} is no witness this node knows"))
        }
    }

    fn forbidden(&self, message: String) -> ErrorReply {
        self.metrics.refused_frames.fetch_add(1, Ordering::Relaxed);
        err(ErrorCode::Forbidden, message)
    }

    /// Round and replication messages come from members of the chain's committee only.
    fn authorize(&self, caller: &PublicKey, roster: &Roster) -> Result<(), ErrorReply> {
        if roster.index_of(caller).is_some() {
            Ok(())
        } else {
            Err(self.forbidden(format!("key {caller} is not a member of this chain's committee")))
        }
    }

    fn member_of(&self, roster: &Roster) -> Result<usize, ErrorReply> {
        roster
            .index_of(&self.key.public_key())
            .ok_or_else(|| err(ErrorCode::Forbidden, "this witness is not in the chain's committee; ask one that is"))
    }

    // ---- the rules a proposed block must meet here ----

    /// Every rule for a block this node is asked to sign now: [`Node::check_valid`], then
    /// that it is fresh (its time within the clock skew; a timeline block's heads are this
    /// node's).
    fn check_block(&self, head: &ChainState, block: &Block) -> Result<(), ErrorReply> {
        self.check_valid(head, block)?;
        let skew = block.header.timestamp_ms.abs_diff(now_ms());
        if skew > self.config.max_clock_skew_ms {
            return Err(err(
                ErrorCode::Refused,
                format!(
                    "block time is {skew} ms from this witness's clock (allowed: {} ms)",
                    self.config.max_clock_skew_ms
                ),
            ));
        }
        if block.header.kind == KIND_TIMELINE {
            self.check_timeline_block(block)?;
        }
        Ok(())
    }

    /// The rules that do not depend on the moment: the block extends the head (chain
    /// rules, committee authority) and meets its kind's rules.
    fn check_valid(&self, head: &ChainState, block: &Block) -> Result<(), ErrorReply> {
        head.check_successor(block, |i| self.store.block_id(&head.chain, i).ok().flatten())
            .map_err(|e| err(ErrorCode::Refused, e.to_string()))?;
        let chain_kind = self.chain_kind(&head.chain)?;
        let is_released = |version: &str| self.is_released(&head.chain, version);
        rules::check_rules(chain_kind, head, block, self.release_window(), is_released)
            .map_err(|reason| err(ErrorCode::Refused, reason))
    }

    /// The checks before this node commits to `block` in a round (§9.1). A node that
    /// promised another block at the index refuses (`Promised`: the leader should re-lead
    /// that one). A block this node promised, or that more members promised than the
    /// committee may have faulty ones ([`faulty_bound`], so at least one honest member
    /// checked it when it was fresh), is checked by the rules that do not depend on the
    /// moment: it may be older than the clock skew, and a timeline block's heads may have
    /// moved since (its entry must still decode and carry the block's time). Any other
    /// block gets every rule ([`Node::check_block`]).
    fn check_to_sign(&self, head: &ChainState, block: &Block, promises: &[PromiseSignature]) -> Result<(), ErrorReply> {
        let index = block.header.index;
        let id = block.id();
        let vouched = match self.promised(&head.chain, index)? {
            Some(own) if own.id != id => {
                return Err(err(
                    ErrorCode::Promised,
                    format!(
                        "this witness promised another block at index {index} and signs no other; re-lead that one"
                    ),
                ))
            }
            Some(_) => true,
            None if promises.is_empty() => false,
            None => {
                let roster = head.committee.roster();
                // Members and no member twice, before any signature is checked.
                let mut seen = HashSet::with_capacity(promises.len());
                if promises.len() > roster.len()
                    || promises.iter().any(|p| roster.index_of(&p.member).is_none() || !seen.insert(p.member))
                {
                    return Err(err(
                        ErrorCode::BadRequest,
                        "the announce's promises must be by distinct members of the committee",
                    ));
                }
                let valid = promises.iter().filter(|p| p.verify(&id)).count();
                valid > faulty_bound(&head.committee)
            }
        };
        if !vouched {
            return self.check_block(head, block);
        }
        self.check_valid(head, block)?;
        let ahead = block.header.timestamp_ms.saturating_sub(now_ms());
        if ahead > self.config.max_clock_skew_ms {
            return Err(err(ErrorCode::Refused, format!("block time is {ahead} ms ahead of this witness's clock")));
        }
        if block.header.kind == KIND_TIMELINE {
            let entry = TimelineEntry::from_bytes(&block.payload)
                .map_err(|e| err(ErrorCode::Refused, format!("timeline entry does not decode: {e}")))?;
            if entry.time_ms != block.header.timestamp_ms {
                return Err(err(ErrorCode::Refused, "timeline entry time differs from the block's time"));
            }
        }
        Ok(())
    }

    /// The kind of a chain this node serves (its genesis's).
    fn chain_kind(&self, chain: &ChainId) -> Result<u16, ErrorReply> {
        let record = self.store.head(chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        record.map(|h| h.kind).ok_or_else(|| err(ErrorCode::NotFound, format!("chain {chain} is not served here")))
    }

    fn release_window(&self) -> chainiac_release::TimeWindow {
        chainiac_release::TimeWindow { skew_ms: self.config.max_clock_skew_ms, ..Default::default() }
    }

    /// Whether `version` is already released on `chain` (the set is built from the chain on
    /// first use and kept up to date on every append).
    fn is_released(&self, chain: &ChainId, version: &str) -> bool {
        blocking(|| self.is_released_scan(chain, version))
    }

    fn is_released_scan(&self, chain: &ChainId, version: &str) -> bool {
        let mut released = self.released.lock().expect("lock");
        if !released.contains_key(chain) {
            let mut versions = std::collections::HashSet::new();
            let head = self.store.head(chain).ok().flatten().map_or(0, |h| h.index);
            for index in 1..=head {
                if let Ok(Some(block)) = self.store.block(chain, index) {
                    if block.header.kind == KIND_RELEASE {
                        if let Ok(payload) = chainiac_release::ReleasePayload::from_bytes(&block.payload) {
                            versions.insert(payload.manifest.version);
                        }
                    }
                }
            }
            released.insert(*chain, versions);
        }
        released[chain].contains(version)
    }

    /// The heads of every chain here that is not a timeline, as a timeline would record them.
    pub fn head_set(&self) -> Result<Arc<HeadSet>, ErrorReply> {
        Ok(self.current_heads.lock().expect("lock").set())
    }

    /// A timeline block must carry its own time and the root of the heads this node holds.
    fn check_timeline_block(&self, block: &Block) -> Result<(), ErrorReply> {
        let entry = TimelineEntry::from_bytes(&block.payload)
            .map_err(|e| err(ErrorCode::Refused, format!("timeline entry does not decode: {e}")))?;
        if entry.time_ms != block.header.timestamp_ms {
            return Err(err(ErrorCode::Refused, "timeline entry time differs from the block's time"));
        }
        let set = self.head_set()?;
        if set.root() != entry.root || set.len() as u64 != entry.chains {
            return Err(err(
                ErrorCode::Refused,
                format!(
                    "timeline root over {} chains does not match this witness's {} chain heads",
                    entry.chains,
                    set.len()
                ),
            ));
        }
        let changes = match entry.changes {
            None => None,
            Some(hash) => {
                let Some(before) = block.header.index.checked_sub(1) else {
                    return Err(err(ErrorCode::Refused, "a timeline genesis records no change list"));
                };
                let Some(previous) = self.timeline_set(block.header.chain, before) else {
                    return Err(err(
                        ErrorCode::Refused,
                        format!(
                            "cannot check the change list: this witness does not hold the heads block {before} records"
                        ),
                    ));
                };
                let changes = ChangeList::new(set.changes_since(&previous));
                if changes.hash() != hash {
                    return Err(err(
                        ErrorCode::Refused,
                        format!(
                            "the change list differs from this witness's: {} heads moved since block {}",
                            changes.len(),
                            before
                        ),
                    ));
                }
                Some(Arc::new(changes))
            }
        };
        let mut pending = self.pending_timelines.lock().expect("lock");
        if pending.len() >= 8 {
            pending.clear();
        }
        pending.insert(block.id(), (set, changes));
        Ok(())
    }

    /// The head set timeline block `index` of `chain` records, if this node holds it (the
    /// genesis records none: empty).
    fn timeline_set(&self, chain: Option<ChainId>, index: u64) -> Option<Arc<HeadSet>> {
        if index == 0 {
            return Some(Arc::new(HeadSet::default()));
        }
        let timelines = self.timelines.lock().expect("lock");
        timelines.get(&chain?).filter(|(i, _, _)| *i == index).map(|(_, _, set)| set.clone())
    }

    /// After a timeline block is appended: remember the head set it commits to.
    fn note_appended(&self, block: &Block) {
        if block.header.kind == KIND_RELEASE {
            if let (Some(chain), Ok(payload)) =
                (block.header.chain, chainiac_release::ReleasePayload::from_bytes(&block.payload))
            {
                if let Some(versions) = self.released.lock().expect("lock").get_mut(&chain) {
                    versions.insert(payload.manifest.version);
                }
            }
            return;
        }
        if block.header.kind != KIND_TIMELINE {
            return;
        }
        if block.header.index == 0 {
            self.timeline_chains.lock().expect("lock").insert(block.id());
            return;
        }
        let Some(chain) = block.header.chain else { return };
        let Ok(entry) = TimelineEntry::from_bytes(&block.payload) else { return };
        let index = block.header.index;
        let (set, changes) = match self.pending_timelines.lock().expect("lock").remove(&block.id()) {
            Some(checked) => checked,
            None => match self.head_set() {
                Ok(set) if set.root() == entry.root => {
                    // Caught up, not checked here: the list is known if the block before's
                    // heads are.
                    let changes = self
                        .timeline_set(Some(chain), index - 1)
                        .map(|previous| ChangeList::new(set.changes_since(&previous)))
                        .filter(|changes| entry.changes == Some(changes.hash()));
                    (set, changes.map(Arc::new))
                }
                _ => return, // heads moved since; the next timeline block will do
            },
        };
        if let Some(changes) = changes {
            let mut lists = self.change_lists.lock().expect("lock");
            let kept = lists.entry(chain).or_default();
            kept.insert(index, changes);
            // The newest blocks' lists, within a count and a number of leaves (memory).
            let mut leaves: usize = kept.values().map(|list| list.len()).sum();
            while kept.len() > KEPT_CHANGE_LISTS || (leaves > KEPT_CHANGE_LEAVES && kept.len() > 1) {
                leaves -= kept.pop_first().map_or(0, |(_, list)| list.len());
            }
        }
        let mut timelines = self.timelines.lock().expect("lock");
        let newer = timelines.get(&chain).is_none_or(|(index, _, _)| *index < block.header.index);
        if newer {
            self.record_timeline_heads(&chain, index, &set, timelines.get(&chain).map(|(_, _, before)| &**before));
            timelines.insert(chain, (block.header.index, entry, set));
        }
    }

    /// Writes the head set of timeline block `index` (its changes since `before`, the set
    /// last written; all of it when none), so that a restart finds it.
    fn record_timeline_heads(&self, timeline: &ChainId, index: u64, set: &HeadSet, before: Option<&HeadSet>) {
        let db = self.store.db();
        let cf = db.cf_handle(CF_TIMELINE_HEADS).expect("timeline heads column family is opened at start");
        let mut batch = rocksdb::WriteBatch::default();
        let leaves = match before {
            Some(before) => set.changes_since(before),
            None => set.changes_since(&HeadSet::default()),
        };
        for leaf in &leaves {
            let mut key = [0u8; 64];
            key[..32].copy_from_slice(&timeline.0);
            key[32..].copy_from_slice(&leaf.chain.0);
            let mut value = [0u8; 40];
            value[..8].copy_from_slice(&leaf.index.to_be_bytes());
            value[8..].copy_from_slice(&leaf.id.0);
            batch.put_cf(cf, key, value);
        }
        batch.put_cf(cf, timeline.0, index.to_be_bytes());
        if let Err(e) = db.write(batch) {
            warn!(timeline = %timeline.to_hex()[..16], "could not record the timeline's heads: {e}");
        }
    }

    /// The timeline block asked for, or the newest of any timeline this node serves.
    fn known_timeline(&self, timeline: Option<ChainId>) -> Result<(ChainId, KnownTimeline), ErrorReply> {
        let timelines = self.timelines.lock().expect("lock");
        match timeline {
            Some(t) => timelines
                .get(&t)
                .map(|known| (t, known.clone()))
                .ok_or_else(|| err(ErrorCode::NotFound, "no timeline block known for that chain")),
            None => timelines
                .iter()
                .max_by_key(|(_, (index, _, _))| *index)
                .map(|(t, known)| (*t, known.clone()))
                .ok_or_else(|| err(ErrorCode::NotFound, "this witness has no timeline block yet")),
        }
    }

    fn timeline_info(&self, timeline: Option<ChainId>, chain: Option<ChainId>) -> Reply {
        let (timeline, (index, entry, set)) = self.known_timeline(timeline)?;
        let inclusion =
            match chain {
                Some(chain) => Some(set.prove(&chain).ok_or_else(|| {
                    err(ErrorCode::NotFound, format!("chain {chain} is not in timeline block {index}"))
                })?),
                None => None,
            };
        Ok(Response::Timeline(TimelineInfo { timeline, index, entry, inclusion }))
    }

    fn timeline_batch(&self, timeline: Option<ChainId>, chains: &[ChainId]) -> Reply {
        if chains.is_empty() || chains.len() > MAX_TIMELINE_CHAINS {
            let n = chains.len();
            return Err(err(ErrorCode::BadRequest, format!("asks for {n} chains; 1 to {MAX_TIMELINE_CHAINS} allowed")));
        }
        let (timeline, (index, entry, set)) = self.known_timeline(timeline)?;
        let inclusion = set.prove_many(chains);
        if inclusion.leaves.is_empty() {
            return Err(err(ErrorCode::NotFound, format!("none of the chains is in timeline block {index}")));
        }
        Ok(Response::TimelineBatch(TimelineBatch { timeline, index, entry, inclusion }))
    }

    /// Adds timeline blocks: at once when a project head moved, at least every interval
    /// otherwise. Member `i` of the timeline's committee steps in only after `i` intervals
    /// without a block, so one leader is usual and a dead one is replaced.
    pub async fn run_timeline(self: Arc<Self>) {
        if self.config.timeline_interval_ms == 0 {
            return; // automatic timeline blocks are off
        }
        let interval = self.config.timeline_interval_ms.max(50);
        loop {
            tokio::time::sleep(Duration::from_millis(interval / 4)).await;
            let timelines: Vec<ChainId> = self.timeline_chains.lock().expect("lock").iter().copied().collect();
            for chain in timelines {
                if let Err(e) = self.maybe_extend_timeline(chain, interval).await {
                    debug!(timeline = %chain.to_hex()[..16], "no timeline block this time: {}", e.message);
                }
            }
        }
    }

    async fn maybe_extend_timeline(self: &Arc<Self>, chain: ChainId, interval: u64) -> Result<(), ErrorReply> {
        let head = self.head(&chain)?;
        let Some(me) = head.committee.roster().index_of(&self.key.public_key()) else { return Ok(()) };
        let age = now_ms().saturating_sub(head.header.timestamp_ms);
        let set = self.head_set()?;
        let recorded = self
            .store
            .block(&chain, head.index())
            .ok()
            .flatten()
            .and_then(|b| TimelineEntry::from_bytes(&b.payload).ok());
        let moved = recorded.is_none_or(|e| e.root != set.root());
        let wait = me as u64 * interval + if moved { 0 } else { interval };
        if age < wait {
            return Ok(());
        }
        self.extend_timeline(chain, None).await.map(|_| ())
    }

    /// Leads the next timeline block: the root over this node's heads now, its change list
    /// when it holds the head's heads (unless listed proposals kept failing), and the
    /// committee `appointment` appoints, if any.
    async fn extend_timeline(
        self: &Arc<Self>,
        chain: ChainId,
        appointment: Option<chainiac_skipchain::Appointment>,
    ) -> Result<Block, ErrorReply> {
        let head = self.head(&chain)?;
        let set = self.head_set()?;
        let time_ms = now_ms().max(head.header.timestamp_ms);
        let failures = self.lists_refused.lock().expect("lock").get(&chain).copied().unwrap_or(0);
        let previous = if failures >= LISTED_FAILURES { None } else { self.timeline_set(Some(chain), head.index()) };
        let (entry, _) = set.entry(time_ms, previous.as_deref());
        let listed = entry.changes.is_some();
        let proposal = Proposal {
            kind: KIND_TIMELINE,
            payload: entry.to_bytes(),
            timestamp_ms: time_ms,
            committee: appointment,
            ..Proposal::default()
        };
        let led = self.lead(chain, proposal).await;
        let mut refused = self.lists_refused.lock().expect("lock");
        match (&led, listed) {
            (Err(_), true) => *refused.entry(chain).or_insert(0) += 1,
            _ => {
                refused.remove(&chain);
            }
        }
        drop(refused);
        led
    }

    /// A `Propose`: a block the caller wants on the chain, checked like any block before a
    /// round starts (so a proposal that fails a rule costs no round). On a timeline only a
    /// member of its committee may ask for a block that appoints no new committee (each is a
    /// round of the whole committee, and their own timer makes them anyway); with an empty
    /// payload this node makes the entry itself.
    async fn propose(
        self: &Arc<Self>,
        caller: PublicKey,
        chain: ChainId,
        mut proposal: Proposal,
    ) -> Result<Block, ErrorReply> {
        let head = self.head(&chain)?;
        // An appointment is checked before anything else: the committee must change, and
        // the outgoing committee's operators must have approved it (no round, no head set
        // for a change that cannot pass).
        if let Some(appointment) = &proposal.committee {
            if appointment.committee.hash() == head.header.committee_hash {
                return Err(err(ErrorCode::Refused, "the proposal appoints the committee already in force"));
            }
            let index = head.index() + 1;
            appointment.check_change(&head.committee, &chain, now_ms()).map_err(|error| {
                err(ErrorCode::Refused, chainiac_skipchain::BlockError::Authority { index, error }.to_string())
            })?;
        }
        if self.chain_kind(&chain)? == KIND_TIMELINE {
            let member = head.committee.roster().index_of(&caller).is_some();
            if !member && proposal.committee.is_none() {
                return Err(self.forbidden(
                    "only a member of the timeline's committee proposes a timeline block that appoints no committee"
                        .into(),
                ));
            }
            // Anyone else brings only the appointment: this node makes the entry.
            if !member {
                proposal.payload.clear();
            }
            if proposal.payload.is_empty() {
                return self.extend_timeline(chain, proposal.committee).await;
            }
        }
        self.lead(chain, proposal).await
    }

    /// The blocks of `timeline` after `from` with their change lists, up to
    /// [`MAX_CHANGE_BLOCKS`] or the response budget, proven block by block; `NotFound` when
    /// this node lacks a list before its head within that page, refused when all the lists
    /// since `from` would take more than `max_bytes` (not 0).
    fn timeline_changes(
        &self,
        timeline: &ChainId,
        from: u64,
        watched: Vec<ChainPrefix>,
        held_appointments: Vec<[u8; 32]>,
        max_bytes: u64,
    ) -> Reply {
        if held_appointments.len() > MAX_HELD_APPOINTMENTS {
            return Err(err(ErrorCode::BadRequest, format!("more than {MAX_HELD_APPOINTMENTS} held committees")));
        }
        if watched.len() > MAX_WATCHED_PREFIXES {
            return Err(err(ErrorCode::BadRequest, format!("more than {MAX_WATCHED_PREFIXES} watched prefixes")));
        }
        let watched: std::collections::HashSet<ChainPrefix> = watched.into_iter().collect();
        if !self.timeline_chains.lock().expect("lock").contains(timeline) {
            return Err(err(ErrorCode::NotFound, "no such timeline here"));
        }
        // The newest block whose list (if any) is in place: a block just stored has its list
        // added a moment later, and must not look like one without.
        let head = self.timelines.lock().expect("lock").get(timeline).map(|(index, _, _)| *index);
        let Some(head) = head.filter(|&head| head >= from) else {
            return Err(err(ErrorCode::NotFound, format!("this witness has checked no timeline block after {from}")));
        };
        let lists = self.change_lists.lock().expect("lock").get(timeline).cloned().unwrap_or_default();
        // The offer is weighed against the prefixes alone (one length per list, however
        // large the request): the opened leaves are the client's own moves.
        let size: u64 = lists.range(from + 1..).map(|(_, list)| changes_cost(list.len(), 0)).sum();
        if max_bytes > 0 && size > max_bytes {
            return Err(chainiac_proto::changes_too_large(from, size, max_bytes));
        }
        let budget = PROOFS_RESPONSE_BUDGET as u64;
        let cost = |k: u64| lists.get(&k).map(|list| changes_cost(list.len(), list.opened(&watched)));
        let page = changes_page(from, head, cost, MAX_CHANGE_BLOCKS, budget);
        let to = from + page.len() as u64;
        // Lists that stop short of the head for want of one would show the client an old
        // block as the newest: it is told, and asks another member or takes inclusion proofs.
        if to < head && !changes_page_full(&page, MAX_CHANGE_BLOCKS, budget) {
            return Err(err(
                ErrorCode::NotFound,
                format!("this witness holds no change list for block {} (its head is block {head})", to + 1),
            ));
        }
        let mut blocks = Vec::new();
        for k in (from + 1)..=to {
            let block = self
                .store
                .block(timeline, k)
                .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
                .ok_or_else(|| err(ErrorCode::Internal, "a listed block is not stored"))?;
            let entry = TimelineEntry::from_bytes(&block.payload)
                .map_err(|e| err(ErrorCode::Internal, format!("stored timeline entry: {e}")))?;
            let list = lists.get(&k).ok_or_else(|| err(ErrorCode::Internal, "a paged list is gone"))?;
            blocks.push((entry, &**list));
        }
        let held: std::collections::HashSet<[u8; 32]> = held_appointments.into_iter().collect();
        let proof = store::prove_each(&self.store, timeline, from, to)
            .map_err(store_err)?
            .without_appointments(|h| held.contains(h));
        Ok(Response::TimelineChanges(TimelineChanges::answer(proof, blocks, &watched)))
    }

    /// Holds `(chain, index)` for `id` for a while, so that concurrent leaders do not split
    /// the witnesses between two blocks before any response is given.
    fn reserve(&self, chain: ChainId, index: u64, id: BlockId) -> Result<(), ErrorReply> {
        let now = Instant::now();
        let mut reservations = self.reservations.lock().expect("lock");
        reservations.retain(|_, (_, until)| *until > now);
        match reservations.get(&(chain, index)) {
            Some((held, _)) if *held != id => {
                Err(err(ErrorCode::Busy, format!("index {index} is held by another proposed block; retry shortly")))
            }
            _ => {
                reservations.insert((chain, index), (id, now + Duration::from_millis(self.config.reservation_ms)));
                Ok(())
            }
        }
    }

    fn release(&self, chain: ChainId, index: u64) {
        self.reservations.lock().expect("lock").retain(|(c, i), _| !(*c == chain && *i <= index));
    }

    /// Durably promises to sign no block but `block` at its index; refuses if another was
    /// promised. Called before any partial response leaves this node. The block is kept
    /// (unsigned) so that a leader can re-lead it if this round dies (§9.1).
    fn promise(&self, block: &Block) -> Result<(), ErrorReply> {
        blocking(|| self.promise_now(block))
    }

    fn promise_now(&self, block: &Block) -> Result<(), ErrorReply> {
        let chain = block.header.chain.ok_or_else(|| err(ErrorCode::BadRequest, "a genesis is not promised"))?;
        let index = block.header.index;
        let _guard = self.promise_lock.lock().expect("lock");
        // Under the lock that `forget_promises` takes too: no promise is written at an index
        // already filled (its earlier promise may just have been dropped).
        let filled = self.store.head(&chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        if filled.is_some_and(|head| head.index >= index) {
            return Err(err(ErrorCode::Conflict, format!("index {index} is filled; propose on the new head")));
        }
        match self.promised(&chain, index)? {
            Some(existing) if existing.id != block.id() => Err(err(
                ErrorCode::Promised,
                format!("this witness already promised another block at index {index} and never signs two"),
            )),
            Some(_) => Ok(()),
            None => {
                let db = self.store.db();
                let cf = db.cf_handle(CF_PROMISES).expect("promises column family is opened at start");
                let unsigned = Block { signature: None, ..block.clone() };
                let bytes = postcard::to_allocvec(&unsigned).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
                let mut options = rocksdb::WriteOptions::default();
                options.set_sync(true);
                db.put_cf_opt(cf, promise_key(&chain, index), bytes, &options)
                    .map_err(|e| err(ErrorCode::Internal, format!("promise store: {e}")))
            }
        }
    }

    /// What this node promised at `(chain, index)`, if anything.
    fn promised(&self, chain: &ChainId, index: u64) -> Result<Option<Promised>, ErrorReply> {
        let db = self.store.db();
        let cf = db.cf_handle(CF_PROMISES).expect("promises column family is opened at start");
        let internal = |e: String| err(ErrorCode::Internal, format!("promise store: {e}"));
        let Some(value) = db.get_pinned_cf(cf, promise_key(chain, index)).map_err(|e| internal(e.to_string()))? else {
            return Ok(None);
        };
        let block: Block = chainiac_skipchain::decode_exact(&value).map_err(|e| internal(e.to_string()))?;
        Ok(Some(Promised { id: block.id(), block }))
    }

    /// A promise ends when its index is filled: drops this chain's promises up to `index`.
    fn forget_promises(&self, chain: &ChainId, index: u64) {
        let _guard = self.promise_lock.lock().expect("lock");
        let db = self.store.db();
        let cf = db.cf_handle(CF_PROMISES).expect("promises column family is opened at start");
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(cf, promise_key(chain, 0), promise_key(chain, index));
        batch.delete_cf(cf, promise_key(chain, index));
        if let Err(e) = db.write(batch) {
            warn!(chain = %chain.to_hex()[..16], "could not drop filled promises: {e}");
        }
    }

    /// A `GetPromise` from a member of the chain's committee: the block this node promised
    /// at an unfilled index, signed (none at a filled one).
    fn get_promise(&self, caller: PublicKey, chain: ChainId, index: u64) -> Reply {
        let head = self.head(&chain)?;
        self.authorize(&caller, head.committee.roster())?;
        if index <= head.index() {
            return Ok(Response::Promise(None));
        }
        let promise = self.promised(&chain, index)?.map(|p| Box::new(SignedPromise::sign(&self.key, p.block)));
        Ok(Response::Promise(promise))
    }

    /// The promises members hold at the index after `head`, gathered from every member
    /// (this node's own included), and the block to re-lead: this node's own promise if it
    /// has one (it signs no other there), else the block most members promised (ties: the
    /// lower id). `None` when nobody reports one.
    async fn gather_promises(
        self: &Arc<Self>,
        head: &ChainState,
    ) -> Result<Option<(Block, Vec<PromiseSignature>)>, ErrorReply> {
        let (chain, index) = (head.chain, head.index() + 1);
        let roster = Arc::new(head.committee.roster().clone());
        let me = self.member_of(&roster)?;
        let own = self.promised(&chain, index)?;
        let mut reports: Vec<SignedPromise> = Vec::new();
        if let Some(own) = &own {
            reports.push(SignedPromise::sign(&self.key, own.block.clone()));
        }
        let others: Vec<usize> = (0..roster.len()).filter(|&i| i != me).collect();
        let request = Request::GetPromise { chain, index };
        for (member, reply) in self.ask_children(&roster, &others, request, self.config.peer_timeout()).await {
            if let Ok(Response::Promise(Some(promise))) = reply {
                let from_member = roster.member(member).is_some_and(|m| m.key == promise.member);
                let here = promise.block.header.chain == Some(chain) && promise.block.header.index == index;
                let again = reports.iter().any(|r| r.member == promise.member);
                if from_member && here && !again && promise.verify() {
                    reports.push(*promise);
                }
            }
        }
        let chosen = match &own {
            Some(own) => own.id,
            None => {
                let mut counts: HashMap<BlockId, usize> = HashMap::new();
                for report in &reports {
                    *counts.entry(report.block.id()).or_default() += 1;
                }
                match counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0 .0.cmp(&a.0 .0))) {
                    Some((id, _)) => id,
                    None => return Ok(None),
                }
            }
        };
        let block = reports.iter().find(|p| p.block.id() == chosen).map(|p| p.block.clone());
        let promises = reports.iter().filter(|p| p.block.id() == chosen).map(SignedPromise::signature).collect();
        Ok(block.map(|block| (block, promises)))
    }

    /// Fills the index after `head` with `block`, which members promised there (a leader
    /// died or withheld the signature after the promises were written, §9.1).
    async fn adopt(
        self: &Arc<Self>,
        head: &ChainState,
        block: Block,
        promises: Vec<PromiseSignature>,
    ) -> Result<Block, ErrorReply> {
        let index = block.header.index;
        self.check_to_sign(head, &block, &promises)?;
        info!(chain = %head.chain.to_hex()[..16], index, promised_by = promises.len(), "re-leading the promised block");
        let block = self.run_round(head, block, promises).await?;
        self.metrics.blocks_adopted.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    // ---- catching up ----

    async fn call(&self, member: &Member, request: &Request, timeout: Duration) -> Result<Response, CallError> {
        self.pool.call(&member.address, &member.key, request, timeout).await
    }

    /// Who may send a round or replication message about block `index` of `chain`, checked
    /// before anything else this node does for it; then what it takes to get there. For a
    /// chain this node serves, the caller must be a member of the committee at its head or a
    /// witness it knows ([`Node::is_known_witness`]: its committee may have changed since);
    /// it then catches up from the caller, every block checked and written as it comes
    /// (blocks of a chain it serves, each signed by that chain's committee). For a chain it
    /// lacks, only a witness it knows is heard: the chain is fetched from the genesis and
    /// checked without writing anything, and written only if this node is in the committee
    /// at `index − 1` (or in the one `appointing` appoints, checked: a committed block that
    /// brings it in). Either way the caller must be in the committee at `index − 1`.
    async fn admit_peer(
        &self,
        caller: &PublicKey,
        from: SocketAddr,
        chain: ChainId,
        index: u64,
        appointing: Option<&Block>,
    ) -> Result<Arc<ChainState>, ErrorReply> {
        let Some(before) = index.checked_sub(1) else {
            return Err(err(ErrorCode::BadRequest, "block 0 is a genesis: it is created, not announced or committed"));
        };
        let known = self.store.head(&chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        match known {
            Some(record) => {
                let head = self.head(&chain)?;
                if head.committee.roster().index_of(caller).is_none() && !self.is_known_witness(caller) {
                    return Err(self.forbidden(format!("key {caller} is not a member of this chain's committee")));
                }
                if record.index < before {
                    let source = self.source_for(caller, from, &chain);
                    self.catch_up(chain, before, &source).await?;
                }
            }
            None => {
                if !self.is_known_witness(caller) {
                    return Err(self.forbidden(format!(
                        "chain {chain} is not served here, and key {caller} is no witness this node knows to learn it from"
                    )));
                }
                let source = self.source_for(caller, from, &chain);
                self.learn_chain(chain, before, &source, caller, appointing).await?;
            }
        }
        let head = self.head(&chain)?;
        self.authorize(caller, head.committee.roster())?;
        Ok(head)
    }

    /// One page of blocks of `chain` from `next` as `source` serves them.
    async fn fetch_blocks(&self, chain: ChainId, next: u64, source: &Member) -> Result<Vec<Block>, ErrorReply> {
        let timeout = self.config.peer_timeout() * 4;
        let request = Request::GetBlocks { chain, from: next, count: MAX_BLOCKS_PER_ANSWER };
        match self.call(source, &request, timeout).await {
            Ok(Response::Blocks(blocks)) if !blocks.is_empty() && blocks.len() <= MAX_BLOCKS_PER_ANSWER as usize => {
                Ok(blocks)
            }
            Ok(_) => {
                Err(err(ErrorCode::Unavailable, format!("{} has no block {next} to catch up from", source.address)))
            }
            Err(e) => Err(err(ErrorCode::Unavailable, format!("catching up from {}: {e}", source.address))),
        }
    }

    /// The chain rules, kind rules and deterministic payload rules of a block after `head`,
    /// as this node checks every block it catches up on (the clock and the timeline's
    /// heads are those of the moment it was made, so they are not checked again).
    fn check_caught_up(&self, chain_kind: u16, head: &ChainState, block: &Block) -> Result<(), ErrorReply> {
        // Any manifest time: the committee checked it against its clocks then, and a node
        // configured with a narrower skew must not refuse what the cothority signed.
        let window = chainiac_release::TimeWindow { skew_ms: u64::MAX, delay_ms: u64::MAX };
        rules::check_rules(chain_kind, head, block, window, |_| false)
            .map_err(|reason| err(ErrorCode::Refused, format!("block {} caught up: {reason}", block.header.index)))
    }

    /// Fetches, checks and appends blocks from `source` until the chain's head (a chain this
    /// node serves) is at least `index`.
    async fn catch_up(&self, chain: ChainId, index: u64, source: &Member) -> Result<(), ErrorReply> {
        let chain_kind = self.chain_kind(&chain)?;
        check_catch_up_length(self.head(&chain)?.index(), index)?;
        loop {
            let head = self.head(&chain)?;
            if head.index() >= index {
                return Ok(());
            }
            let next = head.index() + 1;
            let blocks = self.fetch_blocks(chain, next, source).await?;
            for block in blocks {
                let head = self.head(&chain)?;
                if block.header.index != head.index() + 1 {
                    if block.header.index <= head.index() {
                        continue; // raced a commit
                    }
                    return Err(err(ErrorCode::Refused, format!("{} served blocks out of order", source.address)));
                }
                self.check_caught_up(chain_kind, &head, &block)?;
                match self.append(&block) {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => {} // raced a commit
                    Err(e) => return Err(store_err(e)),
                }
            }
            // A page of blocks this node had already (or none it could use) is no progress.
            if self.head(&chain)?.index() < next {
                return Err(err(ErrorCode::Refused, format!("{} served no block {next}", source.address)));
            }
            info!(chain = %chain.to_hex()[..16], from = next, "caught up blocks from {}", source.address);
        }
    }

    /// Learns a chain this node lacks, up to block `index`, from `source`: a first pass
    /// fetches and checks every block from the genesis (genesis rules, chain rules and
    /// signatures, kind and payload rules) keeping only their ids; only if the caller and
    /// this node belong (see [`Node::admit_peer`]) does a second pass fetch and append them.
    async fn learn_chain(
        &self,
        chain: ChainId,
        index: u64,
        source: &Member,
        caller: &PublicKey,
        appointing: Option<&Block>,
    ) -> Result<(), ErrorReply> {
        let genesis = self.fetch_blocks(chain, 0, source).await?.swap_remove(0);
        if genesis.header.index != 0 || genesis.id() != chain {
            return Err(err(ErrorCode::Refused, "the genesis served does not match the chain id"));
        }
        let mut state = ChainState::genesis(&genesis)
            .map_err(|e| err(ErrorCode::Refused, format!("genesis served: {e}")))?
            .into_inner();
        rules::check_genesis(&genesis).map_err(|reason| err(ErrorCode::Refused, reason))?;
        let chain_kind = genesis.header.kind;
        // A timeline makes its committee witnesses this node knows: only the operator's
        // configured peers bring one.
        if chain_kind == KIND_TIMELINE && !self.is_configured_peer(caller) {
            return Err(self.forbidden(format!("timeline {chain} is learned only from a configured peer")));
        }
        check_catch_up_length(0, index)?;
        let mut ids = vec![chain];
        while state.index() < index {
            let blocks = self.fetch_blocks(chain, state.index() + 1, source).await?;
            let before = state.index();
            for block in blocks.iter().take_while(|b| b.header.index <= index) {
                let link = |i: u64| ids.get(i as usize).copied();
                let next = state.extend(block, link).map_err(|e| {
                    err(ErrorCode::Refused, format!("{} served a chain that does not verify: {e}", source.address))
                })?;
                self.check_caught_up(chain_kind, &state, block)?;
                ids.push(next.id);
                state = next.into_inner();
            }
            if state.index() == before {
                return Err(err(ErrorCode::Refused, format!("{} served no block {}", source.address, before + 1)));
            }
        }
        let me = self.key.public_key();
        let mut member = state.committee.roster().index_of(&me).is_some();
        if let Some(block) =
            appointing.filter(|b| b.committee.as_ref().is_some_and(|a| a.committee.roster().index_of(&me).is_some()))
        {
            member |= state.extend(block, |i| ids.get(i as usize).copied()).is_ok();
        }
        if state.committee.roster().index_of(caller).is_none() {
            return Err(self.forbidden(format!("key {caller} is not a member of chain {chain}'s committee")));
        }
        if !member {
            return Err(err(ErrorCode::Forbidden, format!("this witness is not in chain {chain}'s committee")));
        }
        match self.append(&genesis) {
            Ok(_) | Err(StoreError::ChainExists(_)) => {}
            Err(e) => return Err(store_err(e)),
        }
        // The second pass writes exactly the blocks the first checked (a source serving
        // another branch now is refused), each verified again as it is appended.
        loop {
            let head = self.head(&chain)?;
            if head.index() >= index {
                return Ok(());
            }
            let blocks = self.fetch_blocks(chain, head.index() + 1, source).await?;
            let mut progressed = false;
            for block in blocks.iter().take_while(|b| b.header.index <= index) {
                let head = self.head(&chain)?;
                let expected = usize::try_from(block.header.index).ok().and_then(|i| ids.get(i));
                if block.header.index != head.index() + 1 || expected != Some(&block.id()) {
                    return Err(err(
                        ErrorCode::Refused,
                        format!("{} served block {} unlike the first time", source.address, block.header.index),
                    ));
                }
                self.check_caught_up(chain_kind, &head, block)?;
                match self.append(block) {
                    Ok(_) => progressed = true,
                    Err(StoreError::Conflict { .. }) => {} // raced a commit of the same chain
                    Err(e) => return Err(store_err(e)),
                }
            }
            if !progressed && self.head(&chain)?.index() < index {
                return Err(err(ErrorCode::Refused, format!("{} stopped serving the chain", source.address)));
            }
        }
    }

    // ---- submissions ----

    /// A new chain: this node must be in its committee. A timeline only from this node's
    /// operator (its own key), a witness it knows that is in the timeline's committee, or an
    /// allow-listed key, since every timeline costs its committee a round per interval
    /// forever; anything else from anyone within the caller's quota (this node's operator,
    /// the witnesses it knows and allow-listed keys have none), or only from allow-listed
    /// keys in allow-list mode.
    async fn create_chain(self: &Arc<Self>, caller: PublicKey, from: SocketAddr, genesis: Block) -> Reply {
        let state = ChainState::genesis(&genesis).map_err(|e| err(ErrorCode::Refused, e.to_string()))?;
        rules::check_genesis(&genesis).map_err(|reason| err(ErrorCode::Refused, reason))?;
        let roster = state.committee.roster().clone();
        self.member_of(&roster)?;
        self.check_genesis_epoch(&state.committee)?;
        let creators = self.config.creators();
        let listed = creators.contains(&caller);
        let own = caller == self.key.public_key();
        let known = self.is_known_witness(&caller);
        // A timeline makes its committee witnesses this node knows: only the operator, a
        // configured peer in the committee or an allow-listed key creates one.
        let operator = own || (self.is_configured_peer(&caller) && roster.index_of(&caller).is_some());
        if genesis.header.kind == KIND_TIMELINE && !listed && !operator {
            return Err(self.forbidden(
                "a timeline is created by an operator of its committee: with this witness's key, a member peer's, \
                 or an allow-listed one"
                    .into(),
            ));
        }
        if !creators.is_empty() && !listed && !own {
            return Err(self.forbidden(format!("key {caller} may not create chains here (allow-list mode)")));
        }
        let exists = self.store.head(&state.chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?.is_some();
        if !exists && !listed && !own && !known {
            self.count_creation(caller, from)?;
        }
        match self.append(&genesis) {
            Ok(_) => {}
            Err(StoreError::ChainExists(_)) => self.note_appended(&genesis),
            Err(e) => return Err(store_err(e)),
        }
        info!(chain = %state.chain.to_hex()[..16], members = roster.len(), "chain created");
        let request = Request::Genesis { genesis };
        self.broadcast(&roster, &request).await;
        Ok(Response::Created { chain: state.chain })
    }

    /// A new chain starts at the cothority's epoch: at or above the epoch of every timeline
    /// committee this node serves in. Below it, approvals of a committee the cothority has
    /// moved away from (still unexpired) would appoint it on the new chain (§7.6).
    fn check_genesis_epoch(&self, committee: &chainiac_skipchain::Committee) -> Result<(), ErrorReply> {
        let timelines: Vec<ChainId> = self.timeline_chains.lock().expect("lock").iter().copied().collect();
        let me = self.key.public_key();
        let current = timelines
            .iter()
            .filter_map(|t| self.head(t).ok())
            .filter(|head| head.committee.roster().index_of(&me).is_some())
            .map(|head| head.committee.epoch())
            .max();
        match current {
            Some(epoch) if committee.epoch() < epoch => Err(err(
                ErrorCode::Refused,
                format!(
                    "the genesis committee's epoch {} is below the cothority's {epoch} (its timeline's committee): \
                     create the chain at epoch {epoch} or above",
                    committee.epoch()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Counts a chain creation against the caller's key and address, refusing past the quota.
    fn count_creation(&self, caller: PublicKey, from: SocketAddr) -> Result<(), ErrorReply> {
        let quota = self.config.chain_quota_per_day as usize;
        let now = Instant::now();
        let mut created = self.created.lock().expect("lock");
        created.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < QUOTA_WINDOW);
            !times.is_empty()
        });
        let who =
            [Creator::Key(caller.to_bytes()), Creator::Address(chainiac_proto::server::counted_address(from.ip()))];
        for creator in who {
            if created.get(&creator).is_some_and(|times| times.len() >= quota) {
                let whom = match creator {
                    Creator::Key(_) => format!("key {caller}"),
                    Creator::Address(ip) => format!("address {ip}"),
                };
                drop(created);
                return Err(self.forbidden(format!(
                    "{whom} created {quota} chains here in the last 24 hours, the limit (chain_quota_per_day)"
                )));
            }
        }
        for creator in who {
            created.entry(creator).or_default().push(now);
        }
        Ok(())
    }

    /// A chain another witness created: only from a witness this node knows, in the chain's
    /// committee (which must name this node too); the creator applied the quota.
    fn on_genesis(&self, caller: PublicKey, genesis: Block) -> Reply {
        let state = ChainState::genesis(&genesis).map_err(|e| err(ErrorCode::Refused, e.to_string()))?;
        rules::check_genesis(&genesis).map_err(|reason| err(ErrorCode::Refused, reason))?;
        if !self.is_known_witness(&caller) {
            return Err(
                self.forbidden(format!("key {caller} is no witness this node knows; create chains with CreateChain"))
            );
        }
        if genesis.header.kind == KIND_TIMELINE && !self.is_configured_peer(&caller) {
            return Err(self.forbidden(format!("a timeline comes only from a configured peer, not key {caller}")));
        }
        self.authorize(&caller, state.committee.roster())?;
        self.member_of(state.committee.roster())?;
        match self.append(&genesis) {
            Ok(_) => Ok(Response::Ack),
            Err(StoreError::ChainExists(_)) => {
                self.note_appended(&genesis);
                Ok(Response::Ack)
            }
            Err(e) => Err(store_err(e)),
        }
    }

    /// Sends `request` to every other member of `roster` and waits (bounded) for them.
    async fn broadcast(self: &Arc<Self>, roster: &Roster, request: &Request) {
        let me = self.key.public_key();
        let mut tasks = tokio::task::JoinSet::new();
        for member in roster.members().iter().filter(|m| m.key != me) {
            let (node, member, request) = (self.clone(), member.clone(), request.clone());
            tasks.spawn(async move {
                if let Err(e) = node.call(&member, &request, node.config.peer_timeout()).await {
                    debug!("{} to {} failed: {e}", request.name(), member.address);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// A release manager's submission: check what can be checked cheaply, have every
    /// verifier of the policy rebuild the source, then lead the round with all their
    /// attestations (agreeing or not; every witness re-checks them).
    async fn submit_release(
        self: &Arc<Self>,
        chain: ChainId,
        manifest: chainiac_release::Manifest,
        developer_signatures: Vec<chainiac_release::DeveloperSignature>,
        source: Vec<u8>,
    ) -> Reply {
        let head = self.head(&chain)?;
        let policy = chainiac_release::Policy::from_bytes(&head.policy)
            .map_err(|e| err(ErrorCode::Refused, format!("chain {chain} has no release policy: {e}")))?;
        let unattested = chainiac_release::ReleasePayload { manifest, developer_signatures, attestations: vec![] };
        let is_released = |version: &str| self.is_released(&chain, version);
        match chainiac_release::check_release(
            &head.policy,
            &unattested.to_bytes(),
            now_ms(),
            self.release_window(),
            is_released,
        ) {
            Ok(_) | Err(chainiac_release::ReleaseError::NotReproduced { .. }) => {}
            Err(e) => return Err(err(ErrorCode::Refused, e.to_string())),
        }
        let id = unattested.manifest.id();
        let request = Request::Build { manifest: unattested.manifest.clone(), source };
        let timeout = Duration::from_millis(self.config.build_timeout_ms);
        let mut tasks = tokio::task::JoinSet::new();
        for verifier in &policy.verifiers {
            let (node, verifier, request) = (self.clone(), verifier.clone(), request.clone());
            tasks.spawn(async move {
                let reply = node.pool.call(&verifier.address, &verifier.key, &request, timeout).await;
                (verifier, reply)
            });
        }
        let mut attestations = Vec::new();
        while let Some(Ok((verifier, reply))) = tasks.join_next().await {
            match reply {
                Ok(Response::Attestation(Some(a)))
                    if a.body.verifier == verifier.key && a.body.manifest == id && a.verify() =>
                {
                    attestations.push(a)
                }
                Ok(other) => warn!(verifier = %verifier.address, "unusable answer to a build job: {other:?}"),
                Err(e) => warn!(verifier = %verifier.address, "no attestation: {e}"),
            }
        }
        // Keep the policy's order so that every witness sees the same payload.
        attestations.sort_by_key(|a| policy.verifiers.iter().position(|v| v.key == a.body.verifier));
        let payload = chainiac_release::ReleasePayload { attestations, ..unattested };
        let proposal = Proposal { kind: KIND_RELEASE, payload: payload.to_bytes(), ..Proposal::default() };
        self.lead(chain, proposal).await.map(|block| Response::Appended { block })
    }

    /// Per verifier, how often it agreed with the majority on this chain's releases (from the
    /// attestations kept in every release block, agreeing or not).
    fn agreement(&self, chain: &ChainId) -> Reply {
        blocking(|| self.agreement_scan(chain))
    }

    fn agreement_scan(&self, chain: &ChainId) -> Reply {
        let head = self.head(chain)?;
        let mut releases = Vec::new();
        for index in 1..=head.index() {
            if let Ok(Some(block)) = self.store.block(chain, index) {
                if block.header.kind == KIND_RELEASE {
                    if let Ok(payload) = chainiac_release::ReleasePayload::from_bytes(&block.payload) {
                        releases.push(payload.attestations);
                    }
                }
            }
        }
        let tally = chainiac_release::rules::tally_agreement(releases.iter().map(Vec::as_slice));
        let mut rows: Vec<_> = tally
            .into_iter()
            .map(|(key, a)| chainiac_proto::message::VerifierAgreement {
                verifier: key.to_bytes(),
                agreed: a.agreed,
                disagreed: a.disagreed,
            })
            .collect();
        rows.sort_by_key(|r| r.verifier);
        Ok(Response::Agreement(rows))
    }

    fn chain_lock(&self, chain: ChainId) -> Arc<tokio::sync::Mutex<()>> {
        self.chain_locks.lock().expect("lock").entry(chain).or_default().clone()
    }

    /// Leads a round for the block `proposal` makes on top of the chain's head, appends the
    /// signed block and tells the other witnesses. Where members promised another block at
    /// that index (its leader died or withheld the signature), that block is re-led first
    /// and the proposal goes on the next index; a timeline proposal ends there (the
    /// timeline moved).
    pub async fn lead(self: &Arc<Self>, chain: ChainId, mut proposal: Proposal) -> Result<Block, ErrorReply> {
        let lock = self.chain_lock(chain);
        let _one_round_per_chain = lock.lock().await;
        for _ in 0..=MAX_ADOPTIONS {
            let head = self.head(&chain)?;
            let index = head.index() + 1;
            // This node signs nothing but what it promised at the index: that goes first.
            let failure = if self.promised(&chain, index)?.is_some() {
                None
            } else {
                if proposal.kind != KIND_TIMELINE {
                    proposal.timestamp_ms = now_ms().max(head.header.timestamp_ms);
                }
                let block = head
                    .propose(proposal.clone(), |i| self.store.block_id(&chain, i).ok().flatten())
                    .map_err(|e| err(ErrorCode::Refused, e.to_string()))?;
                self.check_block(&head, &block)?;
                match self.run_round(&head, block, Vec::new()).await {
                    // Too few signed: members may be bound to a block whose leader died
                    // or withheld the signature (members deeper in the tree answer their
                    // parent, not this node, so any shortfall is a reason to ask).
                    Err(e) if matches!(e.code, ErrorCode::Promised | ErrorCode::Unavailable) => Some(e),
                    done => return done,
                }
            };
            let Some((block, promises)) = self.gather_promises(&head).await? else {
                return Err(failure.unwrap_or_else(|| {
                    err(ErrorCode::Unavailable, format!("no member reported a promise at index {index}; try again"))
                }));
            };
            let adopted = self.adopt(&head, block, promises).await?;
            let same = adopted.header.kind == proposal.kind
                && adopted.payload == proposal.payload
                && adopted.committee == proposal.committee
                && adopted.policy == proposal.policy;
            if same {
                return Ok(adopted); // a retried proposal whose first leader died after the promises
            }
            if proposal.kind == KIND_TIMELINE {
                if proposal.committee.is_some() {
                    return Err(err(
                        ErrorCode::Conflict,
                        format!("index {index} held a promised timeline block, now appended; propose the change again"),
                    ));
                }
                return Ok(adopted); // the timeline moved, which is what a tick asks
            }
        }
        Err(err(ErrorCode::Unavailable, "every index tried held another promised block; propose again"))
    }

    /// One round for `block` on top of `head` (attempts with faulty members left out),
    /// then the append and the commit to every member. `promises`: the members' signed
    /// promises of a block re-led as promised.
    async fn run_round(
        self: &Arc<Self>,
        head: &ChainState,
        mut block: Block,
        promises: Vec<PromiseSignature>,
    ) -> Result<Block, ErrorReply> {
        let chain = head.chain;
        let roster = Arc::new(head.committee.roster().clone());
        let me = self.member_of(&roster)?;
        let id = block.id();
        let index = block.header.index;
        let threshold = head.committee.threshold();
        let started = Instant::now();
        self.metrics.rounds_led.fetch_add(1, Ordering::Relaxed);
        // Members that missed a recent round are left out of the first attempt while the
        // others can still reach the threshold: a dead peer costs one timeout, not one a round.
        let mut excluded = self.presumed_down(&roster, threshold, me);
        let mut presumed = excluded.count() > 0;
        if presumed {
            self.metrics.peers_left_out.fetch_add(excluded.count() as u64, Ordering::Relaxed);
        }
        let mut last_error = err(ErrorCode::Unavailable, "no attempt made");
        for attempt in 1..=MAX_ATTEMPTS {
            if self.head(&chain)?.index() != head.index() {
                return Err(err(
                    ErrorCode::Conflict,
                    "the chain moved on while this block was proposed; propose again on the new head",
                ));
            }
            self.reserve(chain, index, id)?;
            let mut session_id = [0u8; 32];
            OsRng.fill_bytes(&mut session_id);
            let session_id = SessionId(session_id);
            let session = Session::new(roster.clone(), session_id, id.0.to_vec());
            let tree = Tree::new(roster.len(), me, self.config.branching as usize, &excluded);
            let mut leader =
                Leader::new(session.clone(), &tree, threshold).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
            let (nonces, own) = commit(&session, me, &self.key, &mut OsRng).map_err(protocol_err)?;
            leader.aggregator().receive_commitment(me, &own).map_err(protocol_err)?;
            let announce = Announce {
                block: block.clone(),
                session: session_id,
                leader: me as u32,
                branching: self.config.branching,
                excluded: excluded.as_bytes().to_vec(),
                promises: promises.clone(),
            };
            let wait = self.wait_for_children(&tree, me);
            let mut busy = false;
            let mut promised_elsewhere = 0;
            for (child, reply) in
                self.ask_children(&roster, &tree.children(me), Request::Announce(announce), wait).await
            {
                match reply {
                    Ok(Response::Commitment(c)) => {
                        if let Err(e) = leader.aggregator().receive_commitment(child, &c) {
                            warn!(member = child, "bad commitment: {e}");
                        }
                    }
                    Ok(other) => warn!(member = child, "unexpected answer to announce: {other:?}"),
                    Err(CallError::Remote(reply)) if reply.code == ErrorCode::Busy => busy = true,
                    Err(CallError::Remote(reply)) if reply.code == ErrorCode::Promised => promised_elsewhere += 1,
                    Err(e) => debug!(member = child, "no commitment: {e}"),
                }
            }
            let challenge = match leader.challenge() {
                Ok(challenge) => challenge,
                Err(RoundError::BelowThreshold { present, threshold, unreachable }) => {
                    self.note_reachability(&roster, &tree, &unreachable);
                    let hidden = unreachable.iter().any(|&u| !tree.children(u as usize).is_empty());
                    last_error = err(
                        ErrorCode::Unavailable,
                        format!(
                            "only {present} of {} witnesses answered, {threshold} must sign; unreachable: {}",
                            roster.len(),
                            describe(&roster, &unreachable)
                        ),
                    );
                    self.abort_children(&roster, &tree, me, session_id).await;
                    if presumed && attempt < MAX_ATTEMPTS {
                        // Too few without the members presumed down: ask everyone.
                        excluded = Mask::empty(roster.len());
                        presumed = false;
                        continue;
                    }
                    if roster.len() - promised_elsewhere < threshold && promises.is_empty() {
                        // So many members promised another block here that this one
                        // cannot pass: the caller re-leads that one.
                        last_error = err(
                            ErrorCode::Promised,
                            format!("{promised_elsewhere} member(s) promised another block at index {index}"),
                        );
                        break;
                    }
                    if busy && attempt < MAX_ATTEMPTS {
                        // Another leader holds some witnesses for its block at this index:
                        // step back for a random while so that one of us wins.
                        self.release(chain, index);
                        let pause = 50 + OsRng.next_u32() as u64 % 400;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        continue;
                    }
                    if hidden && attempt < MAX_ATTEMPTS {
                        unreachable.iter().for_each(|&u| excluded.insert(u as usize));
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    last_error = err(ErrorCode::Internal, e.to_string());
                    break;
                }
            };
            self.note_reachability(&roster, &tree, leader.unreachable());
            self.promise(&block)?;
            let own = nonces.respond(&session, &self.key, &challenge).map_err(protocol_err)?;
            leader.aggregator().receive_response(me, &own).map_err(protocol_err)?;
            let responders: Vec<usize> =
                leader.aggregator().expected_responders().into_iter().filter(|&m| m != me).collect();
            let request = Request::Challenge { session: session_id, challenge };
            for (child, reply) in self.ask_children(&roster, &responders, request, wait).await {
                match reply {
                    Ok(Response::Signed(r)) => {
                        if let Err(e) = leader.aggregator().receive_response(child, &r) {
                            warn!(member = child, "bad response: {e}");
                        }
                    }
                    Ok(other) => warn!(member = child, "unexpected answer to challenge: {other:?}"),
                    Err(e) => debug!(member = child, "no response: {e}"),
                }
            }
            match leader.finish() {
                Ok(signature) => {
                    block.signature = Some(signature);
                    self.append(&block).map_err(store_err)?;
                    self.release(chain, index);
                    self.metrics.record_round(started.elapsed());
                    self.metrics.blocks_signed.fetch_add(1, Ordering::Relaxed);
                    info!(chain = %chain.to_hex()[..16], index, attempt, ms = started.elapsed().as_millis() as u64, "block appended");
                    // Answer once every live witness has the block, so that a client reading
                    // from any of them next sees it.
                    let commit = Request::Commit { block: block.clone() };
                    self.broadcast(&roster, &commit).await;
                    if let Some(next) = &block.committee {
                        // New members learn the chain now rather than at their first round.
                        let newcomers: Vec<Member> = next
                            .committee
                            .roster()
                            .members()
                            .iter()
                            .filter(|m| roster.index_of(&m.key).is_none())
                            .cloned()
                            .collect();
                        if let Ok(newcomers) = Roster::new(newcomers) {
                            self.broadcast(&newcomers, &commit).await;
                        }
                    }
                    return Ok(block);
                }
                Err(RoundError::Faults { faults }) => {
                    for fault in &faults {
                        warn!(member = fault.member, address = %roster.member(fault.member as usize).map_or("?", |m| m.address.as_str()), "excluded from the restart: {fault}");
                        excluded.insert(fault.member as usize);
                    }
                    self.metrics.faults_named.fetch_add(faults.len() as u64, Ordering::Relaxed);
                    last_error = err(
                        ErrorCode::Unavailable,
                        format!(
                            "round failed: {}",
                            faults.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                Err(e) => {
                    last_error = err(ErrorCode::Internal, e.to_string());
                    break;
                }
            }
        }
        self.metrics.rounds_failed.fetch_add(1, Ordering::Relaxed);
        self.release(chain, index);
        Err(last_error)
    }

    /// The members (other than `me`) that missed a round this node led within
    /// [`PRESUMED_DOWN`], if leaving them out still leaves the threshold.
    fn presumed_down(&self, roster: &Roster, threshold: usize, me: usize) -> Mask {
        let now = Instant::now();
        let mut down = self.down.lock().expect("lock");
        down.retain(|_, until| *until > now);
        let mut mask = Mask::empty(roster.len());
        for (i, member) in roster.members().iter().enumerate() {
            if i != me && down.contains_key(&member.key) {
                mask.insert(i);
            }
        }
        if roster.len() - mask.count() >= threshold {
            mask
        } else {
            Mask::empty(roster.len())
        }
    }

    /// After a round's commitments: members of the tree that did not commit are presumed
    /// down for a while, the others up.
    fn note_reachability(&self, roster: &Roster, tree: &Tree, unreachable: &[u32]) {
        let until = Instant::now() + PRESUMED_DOWN;
        let mut down = self.down.lock().expect("lock");
        for member in tree.members_top_down() {
            let Some(key) = roster.member(member).map(|m| m.key) else { continue };
            if unreachable.contains(&(member as u32)) {
                down.insert(key, until);
            } else {
                down.remove(&key);
            }
        }
    }

    /// How long a node at `member`'s depth waits for its children: one peer timeout per
    /// level below it, so every parent outwaits its children.
    fn wait_for_children(&self, tree: &Tree, member: usize) -> Duration {
        let below = tree.depth().saturating_sub(tree.depth_of(member).unwrap_or(0)).max(1);
        self.config.peer_timeout() * below as u32
    }

    async fn ask_children(
        self: &Arc<Self>,
        roster: &Arc<Roster>,
        children: &[usize],
        request: Request,
        timeout: Duration,
    ) -> Vec<(usize, Result<Response, CallError>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for &child in children {
            let (node, roster, request) = (self.clone(), roster.clone(), request.clone());
            tasks.spawn(async move {
                let member = roster.member(child).expect("children are roster members");
                (child, node.call(member, &request, timeout).await)
            });
        }
        let mut replies = Vec::with_capacity(children.len());
        while let Some(result) = tasks.join_next().await {
            if let Ok(reply) = result {
                replies.push(reply);
            }
        }
        replies
    }

    async fn abort_children(self: &Arc<Self>, roster: &Arc<Roster>, tree: &Tree, me: usize, session: SessionId) {
        let children = tree.children(me);
        self.ask_children(roster, &children, Request::Abort { session }, self.config.peer_timeout()).await;
    }

    // ---- taking part in someone else's round ----

    async fn on_announce(self: &Arc<Self>, caller: PublicKey, from: SocketAddr, announce: Announce) -> Reply {
        let chain =
            announce.block.header.chain.ok_or_else(|| err(ErrorCode::BadRequest, "a genesis is not announced"))?;
        let index = announce.block.header.index;
        let head = self.admit_peer(&caller, from, chain, index, None).await?;
        let roster = Arc::new(head.committee.roster().clone());
        if index <= head.index() {
            return Err(err(
                ErrorCode::Conflict,
                format!("chain is at index {}; propose on the new head", head.index()),
            ));
        }
        let me = self.member_of(&roster)?;
        let leader = announce.leader as usize;
        let excluded = Mask::from_bytes(&announce.excluded, roster.len())
            .map_err(|e| err(ErrorCode::BadRequest, format!("excluded mask: {e}")))?;
        if leader >= roster.len() {
            return Err(err(ErrorCode::BadRequest, "announce names a leader outside the committee"));
        }
        let tree = Tree::new(roster.len(), leader, announce.branching.max(1) as usize, &excluded);
        if !tree.contains(me) {
            return Err(err(ErrorCode::BadRequest, "this witness is excluded from the round's tree"));
        }
        // Only this node's parent in the round's tree drives its part of the round.
        if tree.parent(me).and_then(|p| roster.member(p)).map(|m| m.key) != Some(caller) {
            return Err(self.forbidden(format!("key {caller} is not this witness's parent in the round's tree")));
        }
        self.check_to_sign(&head, &announce.block, &announce.promises)?;
        let block = announce.block.clone();
        let id = block.id();
        self.reserve(chain, index, id)?;
        let session = Session::new(roster.clone(), announce.session, id.0.to_vec());
        let (nonces, own) = commit(&session, me, &self.key, &mut OsRng).map_err(protocol_err)?;
        let children = tree.children(me);
        let (commitment, aggregator) = if children.is_empty() {
            (own, None)
        } else {
            let mut aggregator = Aggregator::new(session.clone(), &tree, me);
            aggregator.receive_commitment(me, &own).map_err(protocol_err)?;
            let relay = announce.clone();
            let wait = self.wait_for_children(&tree, me);
            for (child, reply) in self.ask_children(&roster, &children, Request::Announce(relay), wait).await {
                if let Ok(Response::Commitment(c)) = reply {
                    if let Err(e) = aggregator.receive_commitment(child, &c) {
                        warn!(member = child, "bad commitment: {e}");
                    }
                }
            }
            (aggregator.commitment().expect("own commitment is in"), Some(aggregator))
        };
        let expires = Instant::now() + Duration::from_millis(self.config.reservation_ms);
        let mut rounds = self.rounds.lock().expect("lock");
        rounds.retain(|_, r| r.expires > Instant::now());
        rounds.insert(
            announce.session,
            RoundState { chain, block, session, member: me, tree, nonces, aggregator, expires },
        );
        Ok(Response::Commitment(commitment))
    }

    /// Where to catch up from: the caller, at the address its connection comes from (a
    /// node's endpoint sends from the address it listens on). Whatever it serves is checked
    /// block by block from the genesis, and the caller must then be in the committee.
    fn source_for(&self, caller: &PublicKey, from: SocketAddr, chain: &ChainId) -> Member {
        if let Ok(head) = self.head(chain) {
            if let Some(i) = head.committee.roster().index_of(caller) {
                return head.committee.roster().members()[i].clone();
            }
        }
        Member {
            key: *caller,
            proof_of_possession: chainiac_cosi::ProofOfPossession([0; 64]),
            address: from.to_string(),
        }
    }

    async fn on_challenge(self: &Arc<Self>, caller: PublicKey, session_id: SessionId, challenge: Challenge) -> Reply {
        let state = {
            let mut rounds = self.rounds.lock().expect("lock");
            let Some(state) = rounds.get(&session_id) else {
                drop(rounds);
                return Err(self.unknown_session(&caller));
            };
            if !is_parent(state, &caller) {
                drop(rounds);
                return Err(self.forbidden(format!("key {caller} is not this witness's parent in the round")));
            }
            rounds.remove(&session_id).expect("present")
        };
        let RoundState { chain, block, session, member: me, tree, nonces, mut aggregator, .. } = state;
        let roster = session.roster().clone();
        let head = self.head(&chain)?;
        if head.index() + 1 != block.header.index {
            return Err(err(ErrorCode::Conflict, format!("chain moved to index {} during the round", head.index())));
        }
        if let Some(aggregator) = aggregator.as_mut() {
            aggregator.receive_challenge(&challenge).map_err(protocol_err)?;
        }
        self.promise(&block)?;
        let own = nonces.respond(&session, &self.key, &challenge).map_err(protocol_err)?;
        let Some(mut aggregator) = aggregator else {
            return Ok(Response::Signed(own));
        };
        aggregator.receive_response(me, &own).map_err(protocol_err)?;
        let responders: Vec<usize> = aggregator.expected_responders().into_iter().filter(|&m| m != me).collect();
        let wait = self.wait_for_children(&tree, me);
        let request = Request::Challenge { session: session_id, challenge };
        for (child, reply) in self.ask_children(&roster, &responders, request, wait).await {
            if let Ok(Response::Signed(r)) = reply {
                if let Err(e) = aggregator.receive_response(child, &r) {
                    warn!(member = child, "bad response: {e}");
                }
            }
        }
        let response = aggregator.response();
        if let CosiResponse::Failed { faults } = &response {
            for fault in faults {
                warn!(member = fault.member, "named in a round: {fault}");
            }
            self.metrics.faults_named.fetch_add(faults.len() as u64, Ordering::Relaxed);
        }
        Ok(Response::Signed(response))
    }

    /// Forgets a round (its nonces are zeroized on drop), frees its index, and passes the
    /// abort down the tree.
    fn on_abort(self: &Arc<Self>, caller: PublicKey, session: SessionId) -> Reply {
        let state = {
            let mut rounds = self.rounds.lock().expect("lock");
            match rounds.get(&session) {
                None => {
                    drop(rounds);
                    return Err(self.unknown_session(&caller));
                }
                Some(state) if !is_parent(state, &caller) => {
                    drop(rounds);
                    return Err(self.forbidden(format!("key {caller} is not this witness's parent in the round")));
                }
                Some(_) => rounds.remove(&session).expect("present"),
            }
        };
        self.release(state.chain, state.block.header.index);
        if !state.tree.children(state.member).is_empty() {
            let node = self.clone();
            tokio::spawn(async move {
                let roster = state.session.roster().clone();
                node.abort_children(&roster, &state.tree, state.member, session).await;
            });
        }
        Ok(Response::Ack)
    }

    async fn on_commit(self: &Arc<Self>, caller: PublicKey, from: SocketAddr, block: Block) -> Reply {
        let chain = block.header.chain.ok_or_else(|| err(ErrorCode::BadRequest, "a genesis is not committed"))?;
        let index = block.header.index;
        let head = self.admit_peer(&caller, from, chain, index, Some(&block)).await?;
        if index <= head.index() {
            return match self.store.block_id(&chain, index) {
                Ok(Some(id)) if id == block.id() => Ok(Response::Ack),
                _ => Err(err(ErrorCode::Conflict, format!("this witness holds another block at index {index}"))),
            };
        }
        self.check_caught_up(self.chain_kind(&chain)?, &head, &block)?;
        match self.append(&block) {
            Ok(_) => {
                self.release(chain, index);
                Ok(Response::Ack)
            }
            Err(StoreError::Conflict { .. }) => Ok(Response::Ack),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Whether `caller` is the member that announced `round` to this node (its parent in the
/// round's tree): the only one that may challenge or abort it here.
fn is_parent(round: &RoundState, caller: &PublicKey) -> bool {
    let roster = round.session.roster();
    round.tree.parent(round.member).and_then(|p| roster.member(p)).is_some_and(|m| m.key == *caller)
}

fn describe(roster: &Roster, members: &[u32]) -> String {
    if members.is_empty() {
        return "none".into();
    }
    members
        .iter()
        .map(|&m| roster.member(m as usize).map_or_else(|| format!("#{m}"), |x| format!("#{m} ({})", x.address)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(chain: u8, index: u64) -> HeadLeaf {
        HeadLeaf { chain: BlockId([chain; 32]), index, id: BlockId([chain.wrapping_add(index as u8); 32]) }
    }

    /// New chains wait until the set is read, moves apply at once, a chain moved before the
    /// read keeps its newest head; what is read is the set built from scratch.
    #[test]
    fn current_heads_read_as_the_set_built_from_scratch() {
        let mut heads = CurrentHeads { set: Arc::new(HeadSet::new(vec![leaf(1, 1), leaf(3, 1)])), new: Vec::new() };
        heads.note(leaf(2, 1));
        heads.note(leaf(3, 2));
        heads.note(leaf(2, 4));
        heads.note(leaf(9, 1));
        assert_eq!(heads.len(), 4);
        assert_eq!(heads.new.len(), 2, "new chains wait for a read");
        let read = heads.set();
        assert_eq!(*read, HeadSet::new(vec![leaf(1, 1), leaf(2, 4), leaf(3, 2), leaf(9, 1)]));
        assert!(heads.new.is_empty());
        heads.note(leaf(9, 2));
        assert_eq!(*heads.set(), HeadSet::new(vec![leaf(1, 1), leaf(2, 4), leaf(3, 2), leaf(9, 2)]));
    }
}
