//! The witness node: what it does with each request. The server (`server.rs`) moves frames
//! in and out; the cores (`cosi`, `skipchain`) decide; this module holds the node's state
//! between the two and the rules that are the node's own. Here: the state, dispatch, who
//! may ask what (access), the block rules a witness applies, appends, submissions and chain
//! creation. By concern: [`queries`] (read-only answers), [`timeline`] (recorded heads,
//! timeline blocks), [`rounds`] (votes and locks on disk, the driver of [`crate::round`]'s
//! leader, joining others' rounds) and
//! [`catch_up`] (learning chains and blocks from peers).

use crate::agreement;
use crate::answers::{self, store_err};
use crate::config::WitnessConfig;
use crate::metrics::Metrics;
use crate::round::{AnnounceOutcome, ChallengeOutcome, Event, LeaderRound, Proposed, Reservations, Step};
use crate::rules;
use chainiac_cosi::protocol::{
    commit, Aggregator, Challenge, Leader, ProtocolError, Response as CosiResponse, RoundError, Session, SessionId,
    SignerNonces, Tree,
};
use chainiac_cosi::{Mask, Member, PublicKey, Roster, SecretKey};
use chainiac_proto::message::{
    Announce, Certificate, ErrorCode, ErrorReply, HeadInfo, IndexState, LinkedQuery, NodeStatus, ProofQuery, Request,
    Response, TimelineBatch, TimelineInfo, Vote, CHAINS_PER_PAGE, MAX_TIMELINE_CHAINS,
};
use chainiac_proto::{CallError, Pool};
use chainiac_release::KIND_RELEASE;
use chainiac_skipchain::rocks::RocksStore;
use chainiac_skipchain::store::{self, Store, StoreError};
use chainiac_skipchain::timeline::{ChainPrefix, ChangeList, HeadLeaf, HeadSet, TimelineEntry, KIND_TIMELINE};
use chainiac_skipchain::{Block, BlockId, BlockSignature, ChainId, ChainState, Proposal};
use rand_core::{OsRng, RngCore};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Column family of agreement states (SPEC §9.1): `chain || index` → `IndexState` (the
/// highest ballot voted at, and the lock: a block with its certificate), until the index is
/// filled.
pub const CF_AGREEMENT: &str = "agreement";
/// Column family of the head set of each timeline's newest block this node holds one for:
/// `timeline || chain` → `u64be(index) || id` per leaf, and `timeline` → `u64be(block
/// index)`. Written with each newer timeline block (its changes only), read at start, so
/// that a restarted node answers timeline clients at once.
pub const CF_TIMELINE_HEADS: &str = "timeline_heads";

/// Column family of the rebuilders' attestations waiting for their batch: `chain id ||
/// u64be(due_ms)` → the batch, written before `RebuildQueued` is answered and deleted once
/// the batch is appended, so a restart appends what a crash interrupted.
pub const CF_REBUILD_BATCHES: &str = "rebuild_batches";
/// How long a member that missed a round this node led is left out of its next rounds'
/// trees (while the threshold allows), before it is asked again.
const PRESUMED_DOWN: Duration = Duration::from_secs(10);
/// How long members a led round showed faulty are left out of this node's trees.
const SHOWN_FAULTY: Duration = Duration::from_secs(60);
/// Most blocks one `GetBlocks` answer carries.
const MAX_BLOCKS_PER_ANSWER: u32 = 256;
/// Bytes of blocks one `GetBlocks` answer carries past its first block (blocks carry up to
/// 4 MiB of payload: 256 of them would pass the response frame limit many times over).
const BLOCKS_RESPONSE_BUDGET: usize = 16 << 20;

type Reply = Result<Response, ErrorReply>;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
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

/// [`Node::lead_on`]'s answer when the head moved past the one a proposal was made for.
const HEAD_MOVED: &str = "the head moved since the proposal was made";

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

/// The heads a timeline records, kept up to date per append: a moved head rehashes its
/// path at once; chains new since the last read wait in `new` and are merged when the set
/// is next read (one rebuild of the levels per timeline tick, not one per created chain —
/// creating 15,000 chains one by one would otherwise rehash the set 15,000 times).
struct CurrentHeads {
    set: Arc<HeadSet>,
    /// By chain, so that a node that never reads the set (it serves no timeline) does not
    /// pay a scan of every waiting chain per append.
    new: HashMap<ChainId, HeadLeaf>,
}

impl CurrentHeads {
    fn note(&mut self, leaf: HeadLeaf) {
        if self.set.leaf(&leaf.chain).is_some() {
            Arc::make_mut(&mut self.set).apply(&[leaf]);
        } else {
            self.new.insert(leaf.chain, leaf);
        }
    }

    fn set(&mut self) -> Arc<HeadSet> {
        if !self.new.is_empty() {
            let new: Vec<HeadLeaf> = std::mem::take(&mut self.new).into_values().collect();
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
/// A release chain's releases: version → (block index, manifest id).
type Releases = HashMap<String, (u64, chainiac_release::ManifestId)>;

fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn agreement_committee(committee: &chainiac_skipchain::Committee) -> agreement::Committee {
    agreement::Committee { members: committee.roster().len(), threshold: committee.threshold() }
}

/// The voters of `certificate` whose votes are valid for block `id`: distinct members of
/// `roster`, each vote a valid signature over the block and the certificate's ballot,
/// checked until `threshold` are (a complete certificate needs no more; each check is an
/// Ed25519 verification, on every member, every round). More votes than members: none
/// counted (checking them would be a liar's way to spend our CPU).
fn checked_certificate(
    roster: &Roster,
    threshold: usize,
    id: &BlockId,
    certificate: &Certificate,
) -> agreement::Certificate<BlockId> {
    let mut voters = std::collections::BTreeSet::new();
    if certificate.votes.len() <= roster.len() {
        for vote in &certificate.votes {
            let member = vote.member as usize;
            if voters.len() >= threshold {
                break;
            }
            if voters.contains(&member) {
                continue;
            }
            if roster.member(member).is_some_and(|m| vote.verify(&m.key, id, certificate.ballot)) {
                voters.insert(member);
            }
        }
    }
    agreement::Certificate { block: *id, ballot: certificate.ballot, voters }
}

/// This node's stored state as the agreement rules see it (its lock's votes were checked
/// when it was taken).
fn core_state(roster: &Roster, state: &IndexState) -> agreement::Durable<BlockId> {
    let lock = state.lock.as_ref().map(|(block, certificate)| agreement::Lock {
        certificate: agreement::Certificate {
            block: block.id(),
            ballot: certificate.ballot,
            voters: certificate.votes.iter().map(|v| v.member as usize).filter(|&m| m < roster.len()).collect(),
        },
    });
    agreement::Durable { voted: state.voted, lock }
}

/// A refusal by the agreement rules as the leader acts on it: `Promised` (gather the
/// members' states and re-lead at a higher ballot) when this member is locked elsewhere or
/// past the ballot.
fn refused(index: u64, refusal: agreement::Refusal) -> ErrorReply {
    let code = match refusal {
        agreement::Refusal::Locked { .. } | agreement::Refusal::OldBallot { .. } | agreement::Refusal::Early { .. } => {
            ErrorCode::Promised
        }
        _ => ErrorCode::Refused,
    };
    err(code, format!("index {index}: {refusal}"))
}

fn index_key(chain: &ChainId, index: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&chain.0);
    key[32..].copy_from_slice(&index.to_be_bytes());
    key
}

/// A round this node takes part in, between its commitment and its response.
struct RoundState {
    chain: ChainId,
    block: Block,
    /// The ballot this node voted for `block` at: the only one it locks at in this session.
    ballot: u64,
    session: Session,
    member: usize,
    tree: Tree,
    nonces: SignerNonces,
    aggregator: Option<Aggregator>,
    expires: Instant,
}

/// A round this node leads, from its announce to its signature (one attempt of a
/// [`LeaderRound`]).
struct LedAttempt {
    roster: Arc<Roster>,
    me: usize,
    tree: Tree,
    session_id: SessionId,
    session: Session,
    leader: Leader,
    /// Taken when this node responds (nonces are used once).
    nonces: Option<SignerNonces>,
    /// None when too few committed.
    challenge: Option<Challenge>,
    votes: std::collections::BTreeMap<u32, Vote>,
    /// The block is re-led with a certificate.
    justified: bool,
    /// The attempt's number within its run.
    number: usize,
    signature: Option<BlockSignature>,
    /// How long the leader waits for each phase (§9.1: at most a second at the frontier).
    phase_wait: Duration,
    /// A round at the frontier (§9.1 rule 0): over a star.
    at_frontier: bool,
    /// The ballot was the last of the frontier when announced: no member can have voted
    /// past it before the challenge, so a refusal then is a fault.
    unbeatable: bool,
}

pub struct Node {
    key: Arc<SecretKey>,
    config: WitnessConfig,
    store: RocksStore,
    pool: Pool,
    rounds: Mutex<HashMap<SessionId, RoundState>>,
    /// `(chain, index)` → the announced block holding that index, until when.
    reservations: Mutex<Reservations<ChainId, BlockId>>,
    /// Makes an agreement state's read, check and write one step (votes, locks, and the
    /// drop when an index is filled).
    agreement_lock: Mutex<()>,
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
    /// Per release chain, the block index read up to and its releases: version → (block
    /// index, manifest id).
    released: Mutex<HashMap<ChainId, (u64, Releases)>>,
    /// Rebuilders' attestations per (release chain, release), as the chain holds them.
    rebuild_evidence: Mutex<rebuilds::RebuildEvidence>,
    /// Trees over a release's records per (chain, release, count), for `GetRebuildRecords`.
    record_trees: Mutex<HashMap<(ChainId, u64, u64), Arc<chainiac_release::RecordsTree>>>,
    /// The records of releases that are no longer their chain's newest, per (chain, release).
    older_records: Mutex<rebuilds::OlderRecords>,
    /// Per release chain, the rebuilders' attestations waiting for their batch.
    rebuild_batches: Mutex<HashMap<ChainId, rebuilds::PendingBatch>>,
    /// Rebuilders' hourly allowances (`rebuilds_per_hour`).
    rebuild_allowances: Mutex<rebuilds::Allowances>,
    /// Per rebuilder key and release chain, the block times of its disagreements within the
    /// throttle's window (None until first read from the chains).
    rebuild_disagreements: Mutex<Option<rebuilds::Disagreements>>,
    /// Per release chain, the bad-hash tracker and the block index it read up to.
    trackers: Mutex<HashMap<ChainId, (u64, chainiac_release::Tracker)>>,
    /// The verified head of each chain, as last read or appended.
    heads: Mutex<HashMap<ChainId, Arc<ChainState>>>,
    /// Members that missed a round this node led, until when they are left out of trees.
    down: Mutex<HashMap<PublicKey, Instant>>,
    /// Members shown faulty by a round this node led, until when ([`SHOWN_FAULTY`]).
    faulty: Mutex<HashMap<PublicKey, Instant>>,
    /// Members silent in a round this node led below a parent that answered, until when:
    /// their silence may be a refusal the parent kept (a ballot a liar pushed up), so a
    /// gathering asks them though they are presumed down.
    hidden: Mutex<HashMap<PublicKey, Instant>>,
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

mod catch_up;
mod queries;
mod rebuilds;
mod rounds;
mod timeline;

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
            reservations: Mutex::new(Reservations::default()),
            agreement_lock: Mutex::new(()),
            chain_locks: Mutex::new(HashMap::new()),
            pending_timelines: Mutex::new(HashMap::new()),
            change_lists: Mutex::new(HashMap::new()),
            lists_refused: Mutex::new(HashMap::new()),
            timelines: Mutex::new(timelines),
            heads: Mutex::new(HashMap::new()),
            current_heads: Mutex::new(CurrentHeads { set: Arc::new(current_heads), new: HashMap::new() }),
            down: Mutex::new(HashMap::new()),
            faulty: Mutex::new(HashMap::new()),
            hidden: Mutex::new(HashMap::new()),
            released: Mutex::new(HashMap::new()),
            rebuild_evidence: Mutex::new(HashMap::new()),
            record_trees: Mutex::new(HashMap::new()),
            older_records: Mutex::new(HashMap::new()),
            rebuild_batches: Mutex::new(HashMap::new()),
            rebuild_allowances: Mutex::new(rebuilds::Allowances::new(rebuilds::MAX_ALLOWANCE_KEYS)),
            rebuild_disagreements: Mutex::new(None),
            trackers: Mutex::new(HashMap::new()),
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
            Request::Challenge { session, challenge, certificate } => {
                self.on_challenge(caller, session, challenge, certificate).await
            }
            Request::Abort { session } => self.on_abort(caller, session),
            Request::Commit { block } => self.on_commit(caller, from, block).await,
            Request::Genesis { genesis } => self.on_genesis(caller, genesis),
            Request::GetIndexState { chain, index } => self.get_index_state(caller, chain, index),
            Request::ListChains { after } => {
                self.chain_page(after).map(|(heads, more)| Response::Chains { heads, more })
            }
            Request::SubmitRelease { chain, manifest, developer_signatures, source } => {
                self.submit_release(chain, manifest, developer_signatures, source).await
            }
            Request::GetTracker { chain } => self.tracker(&chain),
            Request::SubmitRebuild { chain, attestation } => self.submit_rebuild(caller, chain, attestation).await,
            Request::GetRebuilds { chain, release } => self.rebuilds(&chain, release),
            Request::GetRebuildRecords { chain, release, count, rebuilders } => {
                self.rebuild_records(&chain, release, count, &rebuilders)
            }
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
            Request::Build { .. }
            | Request::GetAttestation { .. }
            | Request::GetBuildLog { .. }
            | Request::GetArtifact { .. } => {
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
        self.forget_index_states(&state.chain, state.index());
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

    /// Every rule for a block this node is asked to sign now: [`Node::check_valid`], then
    /// that it is fresh (its time within the clock skew; a timeline block's heads are this
    /// node's).
    fn check_block(&self, head: &ChainState, block: &Block) -> Result<(), ErrorReply> {
        self.check_valid(head, block)?;
        self.check_summary_adds_something(head, block)?;
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
        rules::check_rules(chain_kind, head, block, self.release_window(), Some(&is_released))
            .map_err(|reason| err(ErrorCode::Refused, reason))?;
        self.check_rebuild_block(head, block)
    }

    /// The checks before this node votes for `block` (§9.1). A block this node is locked on,
    /// or one the announce justifies with a complete certificate (`t` votes: more than the
    /// faulty members, so an honest one checked it when it was fresh), is checked by the
    /// rules that do not depend on the moment: it may be older than the clock skew, and a
    /// timeline block's heads may have moved since (its entry must still decode and carry
    /// the block's time). Any other block gets every rule ([`Node::check_block`]). Returns
    /// whether the justification is a complete certificate.
    fn check_to_sign(
        &self,
        head: &ChainState,
        block: &Block,
        justification: Option<&Certificate>,
    ) -> Result<bool, ErrorReply> {
        let id = block.id();
        let roster = head.committee.roster();
        let locked = self.index_state(&head.chain, block.header.index)?.lock.is_some_and(|(b, _)| b.id() == id);
        let justified = justification.is_some_and(|c| {
            checked_certificate(roster, head.committee.threshold(), &id, c)
                .is_complete(roster.len(), head.committee.threshold())
        });
        if !locked && !justified {
            return self.check_block(head, block).map(|()| false);
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
        Ok(justified)
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
        self.with_releases(chain, |releases| releases.contains_key(version))
    }

    /// The index of the release block of `chain` whose manifest is `manifest`, if any.
    fn release_index(&self, chain: &ChainId, manifest: &chainiac_release::ManifestId) -> Option<u64> {
        self.with_releases(chain, |releases| releases.values().find(|(_, id)| id == manifest).map(|(i, _)| *i))
    }

    /// `look` at the releases of `chain` (read from the chain on first use, then kept up to
    /// date on every append).
    fn with_releases<R>(&self, chain: &ChainId, look: impl FnOnce(&Releases) -> R) -> R {
        blocking(|| {
            let head = self.store.head(chain).ok().flatten().map_or(0, |h| h.index);
            // A chain's first read walks it whole: outside the lock, so that votes on other
            // chains do not wait for it. Each read then takes the blocks appended since.
            if !self.released.lock().expect("lock").contains_key(chain) {
                let mut releases = Releases::new();
                self.read_releases(chain, 1..=head, &mut releases);
                self.released.lock().expect("lock").entry(*chain).or_insert((head, releases));
            }
            let mut released = self.released.lock().expect("lock");
            let (read_to, releases) = released.get_mut(chain).expect("just read");
            if *read_to < head {
                self.read_releases(chain, *read_to + 1..=head, releases);
                *read_to = head;
            }
            look(releases)
        })
    }

    fn read_releases(&self, chain: &ChainId, indices: std::ops::RangeInclusive<u64>, releases: &mut Releases) {
        for index in indices {
            if let Ok(Some(block)) = self.store.block(chain, index) {
                if block.header.kind == KIND_RELEASE {
                    if let Ok(payload) = chainiac_release::ReleasePayload::from_bytes(&block.payload) {
                        releases.insert(payload.manifest.version.clone(), (index, payload.manifest.id()));
                    }
                }
            }
        }
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
        if proposal.kind == chainiac_release::KIND_REBUILDS || chainiac_release::is_rebuild_summary(proposal.kind) {
            // Through `SubmitRebuild` only, where each rebuilder's allowance is counted.
            return Err(err(ErrorCode::Refused, "send rebuilders' attestations with SubmitRebuild, not Propose"));
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
        self.broadcast(&roster, &request, false).await;
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
    /// Sends `request` to every other member of `roster` and waits for their answers — with
    /// `live_only`, only for those not presumed down: members that missed a recent round get
    /// it in the background, so a dead member does not add a peer timeout to every append (a
    /// commit; a member that lacks one catches up at its next round). A new chain's genesis
    /// waits for all: the caller may next propose through any member.
    async fn broadcast(self: &Arc<Self>, roster: &Roster, request: &Request, live_only: bool) {
        let me = self.key.public_key();
        let down: HashSet<PublicKey> = if !live_only {
            HashSet::new()
        } else {
            let now = Instant::now();
            self.down.lock().expect("lock").iter().filter(|(_, until)| **until > now).map(|(k, _)| *k).collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for member in roster.members().iter().filter(|m| m.key != me) {
            let presumed_down = down.contains(&member.key);
            let (node, member, request) = (self.clone(), member.clone(), request.clone());
            let send = async move {
                if let Err(e) = node.call(&member, &request, node.config.peer_timeout()).await {
                    debug!("{} to {} failed: {e}", request.name(), member.address);
                }
            };
            if presumed_down {
                tokio::spawn(send);
            } else {
                tasks.spawn(send);
            }
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
        let request = Request::Build { manifest: unattested.manifest.clone(), source, chain: Some(chain) };
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
        let mut heads = CurrentHeads { set: Arc::new(HeadSet::new(vec![leaf(1, 1), leaf(3, 1)])), new: HashMap::new() };
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
