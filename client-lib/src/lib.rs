//! # chainiac-client
//!
//! What package managers and update agents use: a trust anchor (genesis blocks, or any later
//! state the user trusts), `update` — catch up on a chain through any witness that answers
//! honestly, check the timeline's freshness and inclusion, refuse rollbacks, re-check the
//! release reached and the client's own bar — and `verify_artifact`. The state file is
//! replaced atomically and only after every check passed.

use chainiac_cosi::PublicKey;
use chainiac_proto::{Pool, Request, Response};
use chainiac_release::{
    is_rebuild_summary, BuildIsolation, KeyedRebuildSummary, Outcome, RebuildSummary, RebuildSummaryWithDigests,
    ReleasePayload, TimeWindow, KIND_RELEASE,
};
use chainiac_skipchain::timeline::KIND_TIMELINE;
use chainiac_skipchain::{Block, BlockId, ChainId, ChainParams, ChainState, Committee, Header};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod rebuilds;
mod update;

pub use rebuilds::{Attester, Level, ReleaseLevel};

/// A chain state the client trusts. Chains of one cothority share their committee: in
/// memory through the `Arc`, in the state file by index into one list (see
/// [`ClientState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedChain {
    pub chain: ChainId,
    pub params: ChainParams,
    pub header: Header,
    pub id: BlockId,
    pub committee: Arc<Committee>,
    pub policy: Vec<u8>,
    pub is_checkpoint: bool,
    /// The newest release verified on this chain, if any.
    pub release: Option<ReleasePayload>,
    /// The index of `release`'s block, when the client learnt it (a release kept in a state
    /// file from before 2026-12-01 has none).
    pub release_index: Option<u64>,
    /// What rebuilders said of `release`, as of the newest summary of it the client verified
    /// (SPEC §11.8).
    pub rebuilds: Option<RebuildSummary>,
}

impl TrustedChain {
    fn from_state(state: &ChainState, release: Option<ReleasePayload>) -> Self {
        TrustedChain {
            chain: state.chain,
            params: state.params,
            header: state.header.clone(),
            id: state.id,
            committee: state.committee.clone(),
            policy: (*state.policy).clone(),
            is_checkpoint: state.is_checkpoint,
            release,
            release_index: None,
            rebuilds: None,
        }
    }

    /// What rebuilders said of the newest release, if the summary held is about it.
    pub fn rebuilds_of_release(&self) -> Option<&RebuildSummary> {
        let release = self.release.as_ref()?;
        self.rebuilds.as_ref().filter(|s| s.manifest == release.manifest.id())
    }

    fn to_state(&self) -> ChainState {
        ChainState {
            chain: self.chain,
            params: self.params,
            header: self.header.clone(),
            id: self.id,
            committee: self.committee.clone(),
            policy: Arc::new(self.policy.clone()),
            is_checkpoint: self.is_checkpoint,
        }
    }

    pub fn index(&self) -> u64 {
        self.header.index
    }
}

/// Everything the client trusts, by chain.
///
/// On disk (postcard, SPEC §13): each distinct committee once, and each chain naming its
/// committee by position in that list. A client following 15,000 projects of one
/// cothority stores its ≈2 KB roster once instead of 15,000 times, and opening the file
/// checks each roster's proofs of possession once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoredState", into = "StoredState")]
pub struct ClientState {
    pub chains: BTreeMap<ChainId, TrustedChain>,
    /// The timeline chain this client checks freshness against.
    pub timeline: Option<ChainId>,
    /// Per project chain, the timeline block its trusted state was last reconciled with
    /// (the head that block records is this state or an ancestor): a chain reconciled with
    /// the client's own timeline block can learn what moved from change lists (SPEC §8).
    pub synced: BTreeMap<ChainId, u64>,
    /// How many chains the newest timeline entry verified covers (0: none yet): sizes the
    /// inclusion proofs the change lists compete with.
    pub timeline_chains: u64,
}

/// The first bytes of a state file since 2026-12-02 ([`ClientState::to_bytes`]): what tells
/// it from the formats before, which had none. Without it a file of an older format could
/// also decode in this one, its summaries' bytes read as others (rebuilders choose their
/// keys' bytes).
pub const STATE_MAGIC: &[u8; 16] = b"chainiac-state/3";

impl ClientState {
    pub fn to_bytes(&self) -> Vec<u8> {
        [&STATE_MAGIC[..], &postcard::to_allocvec(self).expect("state serializes")].concat()
    }

    /// Decodes a state file: this format, or one of the two before it (without the
    /// reconciliation records; with a committee per chain), which the next save replaces.
    /// All three hold committees with their epoch: files from before epochs are refused
    /// (every chain id changed with the committee encoding; anchor again).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        // Decoded, then converted: the conversion's reasons survive (postcard drops them).
        if let Some(current) = bytes.strip_prefix(&STATE_MAGIC[..]) {
            let stored = chainiac_skipchain::decode_exact::<StoredState>(current)
                .map_err(|e| format!("not a chainiac client state: {e}"))?;
            return ClientState::try_from(stored);
        }
        if let Ok(stored) = chainiac_skipchain::decode_exact::<StoredState<KeyedRebuildSummary>>(bytes) {
            return ClientState::try_from(stored.upgrade());
        }
        if let Ok(stored) = chainiac_skipchain::decode_exact::<StoredState<RebuildSummaryWithDigests>>(bytes) {
            return ClientState::try_from(stored.upgrade());
        }
        if let Ok(summaries) = chainiac_skipchain::decode_exact::<StateWithSummaries>(bytes) {
            let releases = summaries
                .rebuilds
                .into_iter()
                .map(|(chain, summary)| StoredRelease { chain, index: None, rebuilds: Some(summary.into()) })
                .collect();
            return ClientState::try_from(StoredState {
                committees: summaries.committees,
                chains: summaries.chains,
                timeline: summaries.timeline,
                synced: summaries.synced,
                timeline_chains: summaries.timeline_chains,
                releases,
            });
        }
        if let Ok(before) = chainiac_skipchain::decode_exact::<StateBeforeRebuilds>(bytes) {
            return ClientState::try_from(StoredState {
                committees: before.committees,
                chains: before.chains,
                timeline: before.timeline,
                synced: before.synced,
                timeline_chains: before.timeline_chains,
                releases: Vec::new(),
            });
        }
        match chainiac_skipchain::decode_exact::<PreviousState>(bytes) {
            Ok(previous) => ClientState::try_from(StoredState {
                committees: previous.committees,
                chains: previous.chains,
                timeline: previous.timeline,
                synced: Vec::new(),
                timeline_chains: 0,
                releases: Vec::new(),
            }),
            Err(e) => match chainiac_skipchain::decode_exact::<LegacyState>(bytes) {
                Ok(legacy) => ClientState::try_from(legacy),
                Err(_) => Err(format!(
                    "not a chainiac client state ({e}); a state written before committees carried an epoch \
                     (2026-11-30) is not read: anchor the chains again"
                )),
            },
        }
    }
}

/// [`Client::rebuilds_on_chain`]: a release's block index, the newest summary block about
/// it (index, summary) and the attestations of its rebuilds blocks (block index,
/// attestation).
#[derive(Debug, Clone)]
pub struct RebuildsOnChain {
    pub release: u64,
    pub summary: Option<(u64, RebuildSummary)>,
    pub attestations: Vec<(u64, chainiac_release::Attestation)>,
    /// Rebuilds and summary blocks on the way that do not decode, and summaries of the
    /// release that name another block as it (the committee cosigned them, so this is
    /// evidence against it), each named by index.
    pub undecodable: Vec<String>,
}

/// The state file before committees were stored once (2026-11).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LegacyState {
    chains: BTreeMap<ChainId, LegacyChain>,
    timeline: Option<ChainId>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct LegacyChain {
    chain: ChainId,
    params: ChainParams,
    header: Header,
    id: BlockId,
    committee: Committee,
    policy: Vec<u8>,
    is_checkpoint: bool,
    release: Option<ReleasePayload>,
}

impl TryFrom<LegacyState> for ClientState {
    type Error = String;

    fn try_from(legacy: LegacyState) -> Result<Self, String> {
        let mut shared: std::collections::HashMap<[u8; 32], Arc<Committee>> = std::collections::HashMap::new();
        let mut chains = BTreeMap::new();
        for (id, c) in legacy.chains {
            if id != c.chain {
                return Err(format!("chain {} is filed under {id}", c.chain));
            }
            let hash = c.committee.hash();
            if hash != c.header.committee_hash {
                return Err(format!("chain {}: its committee does not match its header", c.chain));
            }
            if chainiac_skipchain::block::policy_hash(&c.policy) != c.header.policy_hash {
                return Err(format!("chain {}: its policy does not match its header", c.chain));
            }
            let committee = shared.entry(hash).or_insert_with(|| Arc::new(c.committee)).clone();
            let trusted = TrustedChain {
                chain: c.chain,
                params: c.params,
                header: c.header,
                id: c.id,
                committee,
                policy: c.policy,
                is_checkpoint: c.is_checkpoint,
                release: c.release,
                release_index: None,
                rebuilds: None,
            };
            chains.insert(id, trusted);
        }
        Ok(ClientState { chains, timeline: legacy.timeline, ..ClientState::default() })
    }
}

/// [`ClientState`] as the state file holds it (with the rebuild summaries of before
/// 2026-12-02's rebuilder ids, or of before 2026-12-01's smaller records, as `S`, as those
/// files hold them).
#[derive(Serialize, Deserialize)]
struct StoredState<S = RebuildSummary> {
    committees: Vec<Committee>,
    chains: Vec<StoredChain>,
    timeline: Option<ChainId>,
    /// (position in `chains`, timeline index): [`ClientState::synced`].
    synced: Vec<(u32, u64)>,
    timeline_chains: u64,
    /// [`TrustedChain::release_index`] and [`TrustedChain::rebuilds`], for the chains that
    /// have either.
    releases: Vec<StoredRelease<S>>,
}

#[derive(Serialize, Deserialize)]
struct StoredRelease<S = RebuildSummary> {
    /// Position in [`StoredState::chains`].
    chain: u32,
    index: Option<u64>,
    rebuilds: Option<S>,
}

impl<S: Into<RebuildSummary>> StoredState<S> {
    fn upgrade(self) -> StoredState {
        let releases = self
            .releases
            .into_iter()
            .map(|r| StoredRelease { chain: r.chain, index: r.index, rebuilds: r.rebuilds.map(Into::into) })
            .collect();
        StoredState {
            committees: self.committees,
            chains: self.chains,
            timeline: self.timeline,
            synced: self.synced,
            timeline_chains: self.timeline_chains,
            releases,
        }
    }
}

/// The state file with rebuild summaries but not the releases' indices (6b61cde, 2026-12-01).
#[derive(Deserialize)]
struct StateWithSummaries {
    committees: Vec<Committee>,
    chains: Vec<StoredChain>,
    timeline: Option<ChainId>,
    synced: Vec<(u32, u64)>,
    timeline_chains: u64,
    rebuilds: Vec<(u32, RebuildSummaryWithDigests)>,
}

/// The state file before rebuild summaries (2026-12-01).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct StateBeforeRebuilds {
    committees: Vec<Committee>,
    chains: Vec<StoredChain>,
    timeline: Option<ChainId>,
    synced: Vec<(u32, u64)>,
    timeline_chains: u64,
}

/// The state file before reconciliation records (2026-11).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct PreviousState {
    committees: Vec<Committee>,
    chains: Vec<StoredChain>,
    timeline: Option<ChainId>,
}

#[derive(Serialize, Deserialize)]
struct StoredChain {
    chain: ChainId,
    params: ChainParams,
    header: Header,
    id: BlockId,
    /// Position in [`StoredState::committees`].
    committee: u32,
    policy: Vec<u8>,
    is_checkpoint: bool,
    release: Option<ReleasePayload>,
}

impl From<ClientState> for StoredState {
    fn from(state: ClientState) -> Self {
        let mut committees = Vec::new();
        // Filed under the hash the header names (what the reader checks each against), so
        // nothing is hashed here.
        let mut position: std::collections::HashMap<[u8; 32], u32> = std::collections::HashMap::new();
        let synced = state
            .chains
            .keys()
            .enumerate()
            .filter_map(|(position, chain)| state.synced.get(chain).map(|&index| (position as u32, index)))
            .collect();
        let releases = state
            .chains
            .values()
            .enumerate()
            .filter(|(_, t)| t.release_index.is_some() || t.rebuilds.is_some())
            .map(|(position, t)| StoredRelease {
                chain: position as u32,
                index: t.release_index,
                rebuilds: t.rebuilds.clone(),
            })
            .collect();
        let chains = state
            .chains
            .into_values()
            .map(|t| {
                let committee = *position.entry(t.header.committee_hash).or_insert_with(|| {
                    committees.push((*t.committee).clone());
                    committees.len() as u32 - 1
                });
                StoredChain {
                    chain: t.chain,
                    params: t.params,
                    header: t.header,
                    id: t.id,
                    committee,
                    policy: t.policy,
                    is_checkpoint: t.is_checkpoint,
                    release: t.release,
                }
            })
            .collect();
        StoredState {
            committees,
            chains,
            timeline: state.timeline,
            synced,
            timeline_chains: state.timeline_chains,
            releases,
        }
    }
}

impl TryFrom<StoredState> for ClientState {
    type Error = String;

    fn try_from(stored: StoredState) -> Result<Self, String> {
        let committees: Vec<(Arc<Committee>, [u8; 32])> =
            stored.committees.into_iter().map(|c| (c.hash(), Arc::new(c))).map(|(h, c)| (c, h)).collect();
        let mut chains = BTreeMap::new();
        let mut synced = BTreeMap::new();
        for &(position, index) in &stored.synced {
            let chain = stored
                .chains
                .get(position as usize)
                .ok_or_else(|| format!("a reconciliation record names chain {position} of {}", stored.chains.len()))?;
            synced.insert(chain.chain, index);
        }
        let mut releases: BTreeMap<ChainId, StoredRelease> = BTreeMap::new();
        for release in stored.releases {
            let position = release.chain;
            let chain = stored
                .chains
                .get(position as usize)
                .ok_or_else(|| format!("a release record names chain {position} of {}", stored.chains.len()))?;
            releases.insert(chain.chain, release);
        }
        for c in stored.chains {
            let (committee, hash) = committees
                .get(c.committee as usize)
                .ok_or_else(|| format!("chain {} names committee {} of {}", c.chain, c.committee, committees.len()))?;
            if *hash != c.header.committee_hash {
                return Err(format!("chain {}: its committee does not match its header", c.chain));
            }
            if chainiac_skipchain::block::policy_hash(&c.policy) != c.header.policy_hash {
                return Err(format!("chain {}: its policy does not match its header", c.chain));
            }
            let trusted = TrustedChain {
                chain: c.chain,
                params: c.params,
                header: c.header,
                id: c.id,
                committee: committee.clone(),
                policy: c.policy,
                is_checkpoint: c.is_checkpoint,
                release: c.release,
                release_index: releases.get(&c.chain).and_then(|r| r.index),
                rebuilds: releases.remove(&c.chain).and_then(|r| r.rebuilds),
            };
            if chains.insert(c.chain, trusted).is_some() {
                return Err(format!("chain {} is listed twice", c.chain));
            }
        }
        Ok(ClientState { chains, timeline: stored.timeline, synced, timeline_chains: stored.timeline_chains })
    }
}

/// What the client demands beyond a project's policy.
#[derive(Debug, Clone, Default)]
pub struct TrustLevel {
    /// At least this many verifiers must have reproduced the build.
    pub min_reproductions: usize,
    /// These verifiers must be among those that reproduced it.
    pub required_verifiers: Vec<PublicKey>,
    /// Only builds confined in namespaces count (`BuildIsolation::Namespaces`): an
    /// unconfined build could read the verifier's key and files.
    pub require_isolation: bool,
    /// Accept a release its project yanked (SPEC §11.7); by default it is refused.
    pub allow_yanked: bool,
    /// Rebuilders whose reproductions lift a release to [`Level::Trusted`].
    pub trusted_rebuilders: Vec<PublicKey>,
    /// The lowest level this client installs (SPEC §11.8).
    pub min_level: Level,
    /// How many rebuilders `min_level` takes (0 counts as 1): `rebuilt` by so many outside
    /// the policy, `trusted` by so many this client trusts.
    pub min_level_count: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("state file {path}: {reason}")]
    State { path: String, reason: String },
    #[error("cannot open a network endpoint: {0}")]
    Network(String),
    #[error("chain {0} is not anchored in this client; anchor its genesis first")]
    NotAnchored(ChainId),
    #[error("the anchor block is not a valid genesis: {0}")]
    BadAnchor(String),
    #[error("no witness gave a valid answer: {}", describe(.0))]
    NoHonestWitness(Vec<(String, String)>),
    /// The timeline, signed by the cothority, records another block at an index where this
    /// client holds (or a witness proved) a block signed by the same cothority: two blocks
    /// at one index. Keep the evidence; the chain is not updated.
    #[error("FORK on chain {chain}: the timeline records another block {index} than the one signed for this chain ({})", describe(.evidence))]
    Fork { chain: ChainId, index: u64, evidence: Vec<(String, String)> },
    #[error("the timeline is {age_ms} ms old, more than the allowed {max_age_ms} ms: the cothority may be frozen")]
    Stale { age_ms: u64, max_age_ms: u64 },
    #[error("the timeline does not record this chain's head consistently: {0}")]
    Timeline(String),
    #[error("release check failed: {0}")]
    Release(String),
    #[error("no verified release on chain {0}")]
    NoRelease(ChainId),
    #[error("chain {chain} has no release {version:?} up to the head this client verified")]
    NoSuchRelease { chain: ChainId, version: String },
    #[error("the release does not meet this client's bar: {0}")]
    BelowClientBar(String),
    #[error("release {version} is at level {level}, below this client's {wanted}: {missing}")]
    BelowLevel { version: String, level: Level, wanted: String, missing: String },
    #[error(
        "release {version} of chain {chain} is YANKED: {reason} (do not install it; --allow-yanked accepts it anyway)"
    )]
    Yanked { chain: ChainId, version: String, reason: String },
    #[error("artifact {path}: {reason}")]
    Artifact { path: String, reason: String },
}

fn describe(tries: &[(String, String)]) -> String {
    tries.iter().map(|(w, e)| format!("{w}: {e}")).collect::<Vec<_>>().join("; ")
}

/// What an update found.
#[derive(Debug, Clone)]
pub struct Update {
    pub chain: ChainId,
    pub from: u64,
    pub to: u64,
    pub hops: usize,
    /// Checkpoints (roster or policy changes) crossed.
    pub checkpoints: Vec<u64>,
    /// The release at the head, if it is one: version and whether it meets the client's bar.
    pub release: Option<(String, Result<(), String>)>,
    /// Witnesses that were down or lied on the way, and how.
    pub skipped: Vec<(String, String)>,
    /// Releases the project yanked since the client's last update (SPEC §11.7).
    pub yanked: Vec<chainiac_release::Yank>,
    /// Releases whose yank the root keys took back since the client's last update.
    pub unyanked: Vec<String>,
    /// The newest release's level after the update (SPEC §11.8), if the chain has one.
    pub level: Option<ReleaseLevel>,
    /// The level the same release had before the update, when it changed.
    pub level_was: Option<Level>,
    /// Age of the timeline entry checked, if a timeline is anchored.
    pub timeline_age_ms: Option<u64>,
    /// The timeline's change lists showed whether this chain moved (SPEC §8), instead of an
    /// inclusion proof of its head.
    pub change_lists: bool,
}

/// One result per chain of [`Client::update_many`], in the order asked.
pub type UpdateResults = Vec<(ChainId, Result<Update, ClientError>)>;

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub struct Client {
    path: PathBuf,
    state: ClientState,
    /// Made on first network use, so that offline operations need no runtime or socket.
    pool: std::sync::OnceLock<Pool>,
    trust: TrustLevel,
    /// Maximum timeline age for chains whose policy does not say (raw chains).
    pub default_max_age_ms: u64,
    /// Have each chain's own committees vouch for its blocks (forward proofs, landing on every
    /// checkpoint) instead of trusting the timeline's signature for the heads it records
    /// (linked proofs, hashes only; the default). See `update.rs`.
    pub every_hop: bool,
    /// Chains that take forward proofs even when `every_hop` is off: the few a client
    /// wants vouched for by their own committees (its own updater, say), the rest linked.
    pub every_hop_chains: HashSet<ChainId>,
    timeout: Duration,
}

impl Client {
    /// Opens the client whose state lives at `path` (created on first save).
    pub fn open(path: &Path, trust: TrustLevel) -> Result<Self, ClientError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => ClientState::from_bytes(&bytes)
                .map_err(|reason| ClientError::State { path: path.display().to_string(), reason })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientState::default(),
            Err(e) => return Err(ClientError::State { path: path.display().to_string(), reason: e.to_string() }),
        };
        Ok(Client {
            path: path.to_path_buf(),
            state,
            pool: std::sync::OnceLock::new(),
            trust,
            default_max_age_ms: 3_600_000,
            every_hop: false,
            every_hop_chains: HashSet::new(),
            timeout: Duration::from_secs(20),
        })
    }

    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// The connection pool, made on first use (inside the async runtime), with a throwaway key.
    fn pool(&self) -> Result<&Pool, ClientError> {
        if let Some(pool) = self.pool.get() {
            return Ok(pool);
        }
        let endpoint = chainiac_proto::endpoint::client("0.0.0.0:0".parse().expect("valid"))
            .map_err(|e| ClientError::Network(e.to_string()))?;
        let key = Arc::new(chainiac_cosi::SecretKey::generate(&mut rand_core::OsRng));
        let _ = self.pool.set(Pool::new(endpoint, key));
        Ok(self.pool.get().expect("just set"))
    }

    /// Trusts `genesis` (checked to be a well-formed genesis) as a chain's anchor; a timeline
    /// genesis becomes the freshness anchor.
    pub fn anchor(&mut self, genesis: &Block) -> Result<ChainId, ClientError> {
        Ok(self.anchor_many(std::slice::from_ref(genesis))?[0])
    }

    /// [`Client::anchor`] for many genesis blocks with one write of the state file (anchoring
    /// thousands of projects one by one would rewrite it each time). All or nothing: a bad
    /// genesis leaves the state as it was.
    pub fn anchor_many(&mut self, geneses: &[Block]) -> Result<Vec<ChainId>, ClientError> {
        let mut states = Vec::with_capacity(geneses.len());
        for (i, genesis) in geneses.iter().enumerate() {
            let state = ChainState::genesis(genesis)
                .map_err(|e| ClientError::BadAnchor(format!("genesis {} of {}: {e}", i + 1, geneses.len())))?;
            states.push((genesis.header.kind, state.into_inner()));
        }
        let mut chains = Vec::with_capacity(states.len());
        for (kind, state) in states {
            if kind == KIND_TIMELINE && self.state.timeline != Some(state.chain) {
                // Reconciliation records are block indices of the timeline held until now:
                // against another timeline they would show chains it never recorded as
                // unmoved. Each chain is reconciled again by inclusion proofs.
                self.state.synced.clear();
                self.state.timeline_chains = 0;
                self.state.timeline = Some(state.chain);
            }
            self.state.chains.entry(state.chain).or_insert_with(|| TrustedChain::from_state(&state, None));
            chains.push(state.chain);
        }
        self.save()?;
        Ok(chains)
    }

    /// Replaces the state file atomically (write, fsync, rename).
    fn save(&self) -> Result<(), ClientError> {
        let fail =
            |e: std::io::Error| ClientError::State { path: self.path.display().to_string(), reason: e.to_string() };
        let tmp = self.path.with_extension("tmp");
        let bytes = self.state.to_bytes();
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp).map_err(fail)?;
            file.write_all(&bytes).and_then(|_| file.sync_all()).map_err(fail)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }

    /// Asks the witnesses of `trusted`'s committee in turn until one answers `request` with
    /// something `check` accepts; records every one that was down or lied.
    async fn ask<T>(
        &self,
        trusted: &TrustedChain,
        request: Request,
        skipped: &mut Vec<(String, String)>,
        mut check: impl FnMut(Response) -> Result<T, String>,
    ) -> Result<T, ClientError> {
        let pool = self.pool()?;
        for member in trusted.committee.roster().members() {
            match pool.call(&member.address, &member.key, &request, self.timeout).await {
                Ok(response) => match check(response) {
                    Ok(value) => return Ok(value),
                    Err(lie) => skipped.push((member.address.clone(), format!("lied: {lie}"))),
                },
                Err(e) => skipped.push((member.address.clone(), format!("unavailable: {e}"))),
            }
        }
        Err(ClientError::NoHonestWitness(std::mem::take(skipped)))
    }

    fn meets_bar(&self, release: &ReleasePayload) -> Result<(), String> {
        meets(&self.trust, release)
    }

    /// The project's yank of `version`, as the policy in force at the verified head says
    /// (SPEC §11.7), if any. A release chain whose policy does not decode has yanks no one
    /// can read: an error, never "not yanked".
    pub fn yank_of(&self, chain: ChainId, version: &str) -> Result<Option<chainiac_release::Yank>, ClientError> {
        let Some(trusted) = self.state.chains.get(&chain) else { return Ok(None) };
        yank_in(&trusted.policy, version, trusted.release.is_some())
    }

    /// How old this client's view of `chain` is when its policy would not take it at an
    /// update (ms since the newest timeline block it verified, and the policy's
    /// `max_age_ms`): a yank since then is unknown to it until it updates. None when fresh
    /// enough, or when it follows no timeline (nothing then says how fresh it is).
    pub fn stale_view(&self, chain: ChainId) -> Option<(u64, u64)> {
        let trusted = self.state.chains.get(&chain)?;
        let timeline = self.state.chains.get(&self.state.timeline?)?;
        let policy = chainiac_release::Policy::from_bytes(&trusted.policy);
        let max_age_ms = policy.map(|p| p.max_age_ms).unwrap_or(self.default_max_age_ms);
        let age_ms = now_ms().saturating_sub(timeline.header.timestamp_ms);
        (age_ms > max_age_ms).then_some((age_ms, max_age_ms))
    }

    /// The level of the newest verified release of `chain`, as this client reads it.
    pub fn level(&self, chain: ChainId) -> Option<ReleaseLevel> {
        let trusted = self.state.chains.get(&chain)?;
        let release = trusted.release.as_ref()?;
        Some(self.level_of(release, trusted.rebuilds_of_release()))
    }

    fn level_of(&self, release: &ReleasePayload, rebuilds: Option<&RebuildSummary>) -> ReleaseLevel {
        ReleaseLevel::of(release, rebuilds, &self.trust.trusted_rebuilders, self.trust.require_isolation)
    }

    /// What the client installs: a release that meets its bar and level (with what rebuilders
    /// said of it, as the held summary has it: for the newest release; `verify` and `fetch`
    /// of an earlier one read its summary on the walk down, [`Client::release_and_rebuilds`])
    /// and was not yanked (unless the client allows yanked ones).
    fn installable(&self, chain: ChainId, release: &ReleasePayload) -> Result<(), ClientError> {
        let trusted = self.state.chains.get(&chain).ok_or(ClientError::NotAnchored(chain))?;
        let rebuilds = trusted.rebuilds.as_ref().filter(|s| s.manifest == release.manifest.id());
        self.check_installable(chain, &trusted.policy, release, rebuilds)
    }

    /// [`Client::installable`] under `policy` (the chain's at its verified head): one home
    /// for `verify`, `fetch`, `bundle export` and what `update` says of a release.
    pub(crate) fn check_installable(
        &self,
        chain: ChainId,
        policy: &[u8],
        release: &ReleasePayload,
        rebuilds: Option<&RebuildSummary>,
    ) -> Result<(), ClientError> {
        self.meets_bar(release).map_err(ClientError::BelowClientBar)?;
        let level = self.level_of(release, rebuilds);
        if let Some(missing) = level.missing(self.trust.min_level, self.trust.min_level_count) {
            return Err(ClientError::BelowLevel {
                version: level.version,
                level: level.level,
                wanted: rebuilds::level_bar(self.trust.min_level, self.trust.min_level_count),
                missing,
            });
        }
        match yank_in(policy, &release.manifest.version, true)? {
            Some(yank) if !self.trust.allow_yanked => {
                Err(ClientError::Yanked { chain, version: yank.version, reason: yank.reason })
            }
            _ => Ok(()),
        }
    }

    /// Checks an artifact's bytes against the newest verified release of `chain`.
    pub fn verify_artifact(&self, chain: ChainId, path: &str, bytes: &[u8]) -> Result<String, ClientError> {
        let trusted = self.state.chains.get(&chain).ok_or(ClientError::NotAnchored(chain))?;
        let release = trusted.release.as_ref().ok_or(ClientError::NoRelease(chain))?;
        self.check_artifact(chain, release, trusted.rebuilds_of_release(), path, bytes)
    }

    /// Checks an artifact's bytes against release `version` of `chain`, any release on it
    /// up to the head this client verified: the blocks below that head are fetched from
    /// the chain's committee and each is checked by hash links down from it (so no witness
    /// can slip in a block that is not the chain's), its payload against its header.
    pub async fn verify_artifact_of(
        &self,
        chain: ChainId,
        version: &str,
        path: &str,
        bytes: &[u8],
    ) -> Result<String, ClientError> {
        let (release, rebuilds) = self.release_and_rebuilds(chain, version).await?;
        self.check_artifact(chain, &release, rebuilds.as_ref(), path, bytes)
    }

    /// Release `version` of `chain`, walking down from the trusted head a page of blocks at
    /// a time (see [`Client::verify_artifact_of`]).
    pub async fn release_by_version(&self, chain: ChainId, version: &str) -> Result<ReleasePayload, ClientError> {
        self.release_and_rebuilds(chain, version).await.map(|(release, _)| release)
    }

    /// Release `version` of `chain` and the newest rebuild summary about it: the held one
    /// for the release held; for an earlier release, the newest summary block about it the
    /// walk down from the verified head passes (every block of the walk is hash-linked to
    /// the head, and rebuilds of a release stop when the next one is appended, so its last
    /// summary is final), so its level reads as the newest release's does.
    async fn release_and_rebuilds(
        &self,
        chain: ChainId,
        version: &str,
    ) -> Result<(ReleasePayload, Option<RebuildSummary>), ClientError> {
        let trusted = self.state.chains.get(&chain).cloned().ok_or(ClientError::NotAnchored(chain))?;
        if let Some(release) = trusted.release.as_ref().filter(|r| r.manifest.version == version) {
            return Ok((release.clone(), trusted.rebuilds_of_release().cloned()));
        }
        // Walking down: the first summary seen about a block is its newest.
        let mut summaries: HashMap<u64, RebuildSummary> = HashMap::new();
        let found = self
            .newest_below(&trusted, |block| {
                if let Ok(summary) = RebuildSummary::of_block(block.header.kind, &block.payload) {
                    summaries.entry(summary.release).or_insert(summary);
                }
                let release =
                    (block.header.kind == KIND_RELEASE).then(|| ReleasePayload::from_bytes(&block.payload).ok());
                release.flatten().filter(|r| r.manifest.version == version)
            })
            .await?;
        let (index, release) =
            found.ok_or_else(|| ClientError::NoSuchRelease { chain, version: version.to_string() })?;
        let rebuilds = summaries.remove(&index).filter(|s| s.manifest == release.manifest.id());
        Ok((release, rebuilds))
    }

    /// What the chain holds about its release with manifest `manifest`, read from the
    /// verified head of `chain` down to that release's block, each page hash-linked to the
    /// head (so no member can add, drop or change a block): the release block's index, the
    /// newest summary block about it (index, summary) and every attestation of its rebuilds
    /// blocks, in chain order with their block's index. A summary or rebuilds block on the
    /// way that does not decode is named in `undecodable` (its committee signed it). What
    /// `chainiac rebuilder audit` compares (SPEC §11.8).
    pub async fn rebuilds_on_chain(
        &self,
        chain: ChainId,
        manifest: chainiac_release::ManifestId,
    ) -> Result<RebuildsOnChain, ClientError> {
        let trusted = self.state.chains.get(&chain).cloned().ok_or(ClientError::NotAnchored(chain))?;
        let (mut summaries, mut blocks, mut undecodable) = (Vec::new(), Vec::new(), Vec::new());
        let mut names = Vec::new();
        let found = self
            .newest_below(&trusted, |block| {
                let index = block.header.index;
                let bad = |e: String| format!("block {index} (kind {}) does not decode: {e}", block.header.kind);
                match block.header.kind {
                    KIND_RELEASE => {
                        return ReleasePayload::from_bytes(&block.payload)
                            .ok()
                            .filter(|r| r.manifest.id() == manifest)
                            .map(|_| block.header.id())
                    }
                    kind if is_rebuild_summary(kind) => match RebuildSummary::from_block(kind, &block.payload) {
                        Ok((summary, named)) => {
                            names.extend(named.map(|id| (index, summary.release, id)));
                            summaries.push((index, summary));
                        }
                        Err(e) => undecodable.push(bad(e)),
                    },
                    chainiac_release::KIND_REBUILDS => match chainiac_release::Rebuilds::from_bytes(&block.payload) {
                        Ok(rebuilds) => blocks.push((index, rebuilds)),
                        Err(e) => undecodable.push(bad(e)),
                    },
                    _ => {}
                }
                None
            })
            .await?;
        let (release, release_id) = found.ok_or_else(|| {
            ClientError::Release(format!("no release block with manifest {manifest} below the verified head"))
        })?;
        // A summary about this release naming another block as it (kind 8) was cosigned wrongly.
        for (index, _, named) in names.iter().filter(|(_, about, named)| *about == release && *named != release_id) {
            undecodable.push(format!("block {index}: a summary of release {release} naming block {named} as it"));
        }
        // Walked down: the first summary about the release is its newest.
        let summary = summaries.into_iter().find(|(_, s)| s.release == release);
        let attestations = blocks
            .into_iter()
            .rev()
            .filter(|(_, rebuilds)| rebuilds.release == release)
            .flat_map(|(index, rebuilds)| rebuilds.attestations.into_iter().map(move |a| (index, a)))
            .collect();
        Ok(RebuildsOnChain { release, summary, attestations, undecodable })
    }

    /// The bad-hash tracker of `chain` (SPEC §11.8) over its release and rebuilds blocks up to
    /// the verified head, read by hash-linked `GetBlocks` pages down to the genesis: no
    /// member can hide a disagreement from it, or add one. It costs the chain's whole
    /// history of release and rebuilds payloads (a `project show`, not an `update`).
    pub async fn tracker_on_chain(&self, chain: ChainId) -> Result<chainiac_release::Tracker, ClientError> {
        let trusted = self.state.chains.get(&chain).cloned().ok_or(ClientError::NotAnchored(chain))?;
        let mut blocks = Vec::new();
        self.newest_below(&trusted, |block| {
            // The genesis has the chain's kind and no release in it.
            let kind = block.header.kind;
            if block.header.index > 0 && [KIND_RELEASE, chainiac_release::KIND_REBUILDS].contains(&kind) {
                blocks.push(block.clone());
            }
            None::<()>
        })
        .await?;
        let mut tracker = chainiac_release::Tracker::default();
        for block in blocks.iter().rev() {
            let (index, time_ms) = (block.header.index, block.header.timestamp_ms);
            let bad = |e: String| ClientError::Release(format!("block {index} does not decode: {e}"));
            if block.header.kind == KIND_RELEASE {
                let release = ReleasePayload::from_bytes(&block.payload).map_err(|e| bad(e.to_string()))?;
                tracker.release(index, time_ms, &release);
            } else {
                let rebuilds =
                    chainiac_release::Rebuilds::from_bytes(&block.payload).map_err(|e| bad(e.to_string()))?;
                tracker.rebuilds(time_ms, &rebuilds);
            }
        }
        Ok(tracker)
    }

    /// The newest block at or below the verified head of `trusted`'s chain that `pick` takes
    /// (its index and what `pick` made of it), walking down a page of blocks at a time, each
    /// page linked by hashes to the one above; None if no block down to the genesis is.
    async fn newest_below<T>(
        &self,
        trusted: &TrustedChain,
        pick: impl FnMut(&Block) -> Option<T>,
    ) -> Result<Option<(u64, T)>, ClientError> {
        self.newest_between(trusted, 0, pick).await
    }

    /// [`Client::newest_below`] asking for no block below `lowest` (where `pick` stops the
    /// walk at the latest: pages then hold only the blocks the walk needs).
    pub(crate) async fn newest_between<T>(
        &self,
        trusted: &TrustedChain,
        lowest: u64,
        mut pick: impl FnMut(&Block) -> Option<T>,
    ) -> Result<Option<(u64, T)>, ClientError> {
        let chain = trusted.chain;
        let mut skipped = Vec::new();
        // The block the walk reaches next, by index and the id the block above names.
        let mut expected = (trusted.index(), trusted.id);
        loop {
            let top = expected.0;
            let from = top.saturating_sub(u64::from(BLOCKS_PER_PAGE) - 1).max(lowest.min(top));
            let request = Request::GetBlocks { chain, from, count: (top - from + 1) as u32 };
            // A page is taken from one member whole or not at all (256 release blocks are
            // far below the 16 MiB a `GetBlocks` answer may carry).
            let page = self.ask(trusted, request, &mut skipped, |r| linked_page(r, from, expected)).await?;
            for block in page.iter().rev() {
                if let Some(found) = pick(block) {
                    return Ok(Some((block.header.index, found)));
                }
            }
            let lowest = page.first().expect("pages are not empty");
            match lowest.header.back_links.first() {
                Some(below) => expected = (lowest.header.index - 1, *below),
                None => return Ok(None),
            }
        }
    }

    /// What artifact `path` of the newest verified release of `chain` must be (its hash and
    /// size), with the release's version, if the release meets this client's bar: what a
    /// download from an untrusted host is checked against.
    pub fn expected_artifact(
        &self,
        chain: ChainId,
        path: &str,
    ) -> Result<(chainiac_release::Artifact, String), ClientError> {
        let trusted = self.state.chains.get(&chain).ok_or(ClientError::NotAnchored(chain))?;
        let release = trusted.release.as_ref().ok_or(ClientError::NoRelease(chain))?;
        let artifact = Self::artifact_of(release, path)?;
        self.installable(chain, release)?;
        Ok((artifact.clone(), release.manifest.version.clone()))
    }

    /// [`Client::expected_artifact`] of release `version`, any release up to the verified
    /// head (walked down as [`Client::verify_artifact_of`] does).
    pub async fn expected_artifact_of(
        &self,
        chain: ChainId,
        version: &str,
        path: &str,
    ) -> Result<(chainiac_release::Artifact, String), ClientError> {
        let (release, rebuilds) = self.release_and_rebuilds(chain, version).await?;
        let artifact = Self::artifact_of(&release, path)?;
        let trusted = self.state.chains.get(&chain).ok_or(ClientError::NotAnchored(chain))?;
        self.check_installable(chain, &trusted.policy, &release, rebuilds.as_ref())?;
        Ok((artifact.clone(), release.manifest.version.clone()))
    }

    fn artifact_of<'r>(release: &'r ReleasePayload, path: &str) -> Result<&'r chainiac_release::Artifact, ClientError> {
        release.manifest.artifacts.iter().find(|a| a.path == path).ok_or_else(|| ClientError::Artifact {
            path: path.to_string(),
            reason: format!("release {} has no such artifact", release.manifest.version),
        })
    }

    /// `bytes` as artifact `path` of `release`, which must be installable here with the
    /// summary `rebuilds` of who rebuilt it.
    fn check_artifact(
        &self,
        chain: ChainId,
        release: &ReleasePayload,
        rebuilds: Option<&RebuildSummary>,
        path: &str,
        bytes: &[u8],
    ) -> Result<String, ClientError> {
        let trusted = self.state.chains.get(&chain).ok_or(ClientError::NotAnchored(chain))?;
        self.check_installable(chain, &trusted.policy, release, rebuilds)?;
        let fail = |reason: String| ClientError::Artifact { path: path.to_string(), reason };
        let artifact = Self::artifact_of(release, path)?;
        if bytes.len() as u64 != artifact.size {
            return Err(fail(format!("size {} differs from the release's {}", bytes.len(), artifact.size)));
        }
        if chainiac_release::content_hash(bytes) != artifact.sha3 {
            return Err(fail(format!(
                "content differs from release {} (SHA3-256 mismatch): do not install it",
                release.manifest.version
            )));
        }
        Ok(release.manifest.version.clone())
    }
}

/// Everything needed to check one release offline, from a project's genesis: the genesis,
/// a proof to the release block (with its payload), and optionally the timeline block that
/// records it (timeline genesis, proof with payload, inclusion proof).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub genesis: Block,
    pub proof: chainiac_skipchain::Proof,
    pub timeline: Option<TimelineEvidence>,
    /// From the release block to the chain's head at export (or the head the timeline
    /// evidence records, if later), without payload: every policy change after the
    /// release, so its yanks (SPEC §11.7), checked as any proof is.
    pub after: chainiac_skipchain::Proof,
}

/// A bundle from before `after` (2026-12-01): read with an empty one.
#[derive(Deserialize)]
struct BundleBeforeYanks {
    genesis: Block,
    proof: chainiac_skipchain::Proof,
    timeline: Option<TimelineEvidence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEvidence {
    pub genesis: Block,
    pub proof: chainiac_skipchain::Proof,
    pub inclusion: chainiac_skipchain::timeline::InclusionProof,
}

/// What an offline check established.
#[derive(Debug, Clone)]
pub struct BundleCheck {
    pub chain: ChainId,
    pub index: u64,
    pub release: ReleasePayload,
    /// Age of the timeline entry at check time, if the bundle carries one.
    pub timeline_age_ms: Option<u64>,
}

impl Bundle {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("bundles serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ClientError> {
        let e = match chainiac_skipchain::decode_exact(bytes) {
            Ok(bundle) => return Ok(bundle),
            Err(e) => e,
        };
        match chainiac_skipchain::decode_exact::<BundleBeforeYanks>(bytes) {
            Ok(old) => Ok(Bundle {
                genesis: old.genesis,
                proof: old.proof,
                timeline: old.timeline,
                after: chainiac_skipchain::Proof { steps: Vec::new(), payload: None },
            }),
            Err(_) => Err(ClientError::Release(format!("bundle does not decode: {e}"))),
        }
    }

    /// Checks the bundle with no network: the genesis is the expected anchor, the proof
    /// verifies from it and ends on a release block that passes the release rules, and the
    /// timeline evidence (if any) records that block or a later one of this very chain.
    /// `expected_timeline` is the timeline genesis id the caller trusts; without it the
    /// bundle's timeline evidence proves nothing and is not checked.
    pub fn verify(
        &self,
        expected_chain: &ChainId,
        expected_timeline: Option<&ChainId>,
        trust: &TrustLevel,
    ) -> Result<BundleCheck, ClientError> {
        let genesis = ChainState::genesis(&self.genesis).map_err(|e| ClientError::BadAnchor(e.to_string()))?;
        if genesis.chain != *expected_chain {
            return Err(ClientError::BadAnchor(format!(
                "the bundle is for chain {}, not {expected_chain}",
                genesis.chain
            )));
        }
        let reached = self
            .proof
            .verify(&genesis, &chainiac_release::policy_rule)
            .map_err(|e| ClientError::Release(e.to_string()))?
            .into_inner();
        if reached.state.header.kind != KIND_RELEASE {
            return Err(ClientError::Release("the bundle does not end on a release block".into()));
        }
        let payload =
            reached.payload.clone().ok_or_else(|| ClientError::Release("the bundle lacks the release".into()))?;
        let release = chainiac_release::check_release(
            &reached.state.policy,
            &payload,
            reached.state.header.timestamp_ms,
            TimeWindow::default(),
            |_| false,
        )
        .map_err(|e| ClientError::Release(e.to_string()))?;
        meets(trust, &release).map_err(ClientError::BelowClientBar)?;
        // Past the release, to the head at export: the policy in force there names every
        // yank up to it.
        let head = self
            .after
            .verify(&reached.state, &chainiac_release::policy_rule)
            .map_err(|e| ClientError::Release(format!("the proof past the release: {e}")))?
            .into_inner()
            .state;
        if self.after.payload.is_some() {
            return Err(ClientError::Release("the proof past the release carries a payload".into()));
        }
        if let Some(yank) = yank_in(&head.policy, &release.manifest.version, true)? {
            if !trust.allow_yanked {
                return Err(ClientError::Yanked { chain: genesis.chain, version: yank.version, reason: yank.reason });
            }
        }
        // A bundle carries no rebuild summary: its release is at the policy's level.
        let level = ReleaseLevel::of(&release, None, &trust.trusted_rebuilders, trust.require_isolation);
        if let Some(missing) = level.missing(trust.min_level, trust.min_level_count) {
            let wanted = rebuilds::level_bar(trust.min_level, trust.min_level_count);
            let (version, level) = (level.version, level.level);
            return Err(ClientError::BelowLevel { version, level, wanted, missing });
        }
        let timeline_age_ms = match (&self.timeline, expected_timeline) {
            (_, None) => None,
            (None, Some(_)) => return Err(ClientError::Timeline("the bundle carries no timeline evidence".into())),
            (Some(evidence), Some(expected)) => {
                let start =
                    ChainState::genesis(&evidence.genesis).map_err(|e| ClientError::BadAnchor(e.to_string()))?;
                if start.chain != *expected {
                    return Err(ClientError::Timeline(
                        "the bundle's timeline is not the one this client trusts".into(),
                    ));
                }
                let timeline = evidence
                    .proof
                    .verify(&start, &chainiac_release::policy_rule)
                    .map_err(|e| ClientError::Timeline(e.to_string()))?
                    .into_inner();
                let entry = chainiac_skipchain::timeline::TimelineEntry::from_bytes(
                    timeline.payload.as_deref().unwrap_or_default(),
                )
                .map_err(|e| ClientError::Timeline(e.to_string()))?;
                evidence.inclusion.verify(&entry).map_err(|e| ClientError::Timeline(e.to_string()))?;
                let leaf = evidence.inclusion.leaf;
                if leaf.chain != *expected_chain || leaf.index < reached.state.index() {
                    return Err(ClientError::Timeline("the timeline evidence does not cover this release".into()));
                }
                // Whatever the timeline knows of the chain, the bundle shows: no yank it
                // records is left out.
                if leaf.index > head.index() {
                    return Err(ClientError::Timeline(format!(
                        "the timeline records block {} of the chain, past the bundle's {}: a yank could be left out",
                        leaf.index,
                        head.index()
                    )));
                }
                let at_leaf = [(reached.state.index(), reached.state.id), (head.index(), head.id)];
                if at_leaf.iter().any(|(index, id)| leaf.index == *index && leaf.id != *id) {
                    return Err(ClientError::Timeline("the timeline records another block at this index".into()));
                }
                Some(now_ms().saturating_sub(entry.time_ms))
            }
        };
        Ok(BundleCheck { chain: genesis.chain, index: reached.state.index(), release, timeline_age_ms })
    }
}

/// The yank of `version` in a chain's `policy`; `is_release_chain`: a policy that does not
/// decode is an error (its yanks cannot be read), not "none".
fn yank_in(
    policy: &[u8],
    version: &str,
    is_release_chain: bool,
) -> Result<Option<chainiac_release::Yank>, ClientError> {
    match chainiac_release::Policy::from_bytes(policy) {
        Ok(policy) => Ok(policy.yank_of(version).cloned()),
        Err(_) if !is_release_chain => Ok(None),
        Err(e) => {
            Err(ClientError::Release(format!("the policy in force does not decode ({e}): its yanks cannot be read")))
        }
    }
}

fn meets(trust: &TrustLevel, release: &ReleasePayload) -> Result<(), String> {
    // Each verifier counts once, however often a block lists it.
    let reproduced: std::collections::BTreeSet<PublicKey> = release
        .attestations
        .iter()
        .filter(|a| a.body.outcome == Outcome::Reproduced)
        .filter(|a| !trust.require_isolation || a.body.isolation == BuildIsolation::Namespaces)
        .map(|a| a.body.verifier)
        .collect();
    let how = if trust.require_isolation { " in a sandbox" } else { "" };
    if reproduced.len() < trust.min_reproductions {
        return Err(format!(
            "{} verifiers reproduced it{how}, this client wants {}",
            reproduced.len(),
            trust.min_reproductions
        ));
    }
    for required in &trust.required_verifiers {
        if !reproduced.contains(required) {
            return Err(format!("verifier {required} did not reproduce it{how}"));
        }
    }
    Ok(())
}

impl Client {
    /// Builds an offline bundle for the newest release this client verified on `chain`,
    /// from the genesis `genesis`, fetching the proofs from the chain's witnesses.
    pub async fn export_bundle(
        &self,
        genesis: &Block,
        timeline_genesis: Option<&Block>,
    ) -> Result<Bundle, ClientError> {
        let chain = genesis.id();
        let trusted = self.state.chains.get(&chain).cloned().ok_or(ClientError::NotAnchored(chain))?;
        let mut skipped = Vec::new();
        // The bundle ends on the newest release: the head may be a summary of its rebuilds
        // (which names it), a yank, a committee or policy change after it.
        let target = match trusted.rebuilds_of_release() {
            Some(summary) => summary.release,
            None => self
                .newest_below(&trusted, |block| (block.header.kind == KIND_RELEASE).then_some(()))
                .await?
                .map(|(index, ())| index)
                .ok_or(ClientError::NoRelease(chain))?,
        };
        let request = Request::GetProof { chain, from: 0, to: Some(target), with_payload: true };
        let proof = self
            .ask(&trusted, request, &mut skipped, |r| match r {
                Response::Proof(p) => Ok(p),
                other => Err(format!("answered {other:?}")),
            })
            .await?;
        let mut reach = trusted.index();
        let timeline = match timeline_genesis {
            None => None,
            Some(tg) => {
                let request = Request::GetTimeline { timeline: Some(tg.id()), chain: Some(chain) };
                let info = self
                    .ask(&trusted, request, &mut skipped, |r| match r {
                        Response::Timeline(info) if info.inclusion.is_some() => Ok(info),
                        other => Err(format!("answered {other:?}")),
                    })
                    .await?;
                let request = Request::GetProof { chain: tg.id(), from: 0, to: Some(info.index), with_payload: true };
                let proof = self
                    .ask(&trusted, request, &mut skipped, |r| match r {
                        Response::Proof(p) => Ok(p),
                        other => Err(format!("answered {other:?}")),
                    })
                    .await?;
                let inclusion = info.inclusion.expect("checked");
                reach = reach.max(inclusion.leaf.index);
                Some(TimelineEvidence { genesis: tg.clone(), proof, inclusion })
            }
        };
        // Past the release to the head (the timeline's, if later): its yanks.
        let request = Request::GetProof { chain, from: target, to: Some(reach), with_payload: false };
        let after = self
            .ask(&trusted, request, &mut skipped, |r| match r {
                Response::Proof(p) => Ok(p),
                other => Err(format!("answered {}", other.name())),
            })
            .await?;
        let bundle = Bundle { genesis: genesis.clone(), proof, timeline, after };
        // Never hand out a bundle that does not check, nor one of a release this client
        // would not install.
        let trust = TrustLevel { allow_yanked: true, ..TrustLevel::default() };
        let check = bundle.verify(&chain, timeline_genesis.map(|g| g.id()).as_ref(), &trust)?;
        self.installable(chain, &check.release)?;
        Ok(bundle)
    }
}

/// Blocks asked per page when walking down a chain.
const BLOCKS_PER_PAGE: u32 = 256;

/// The blocks of a `GetBlocks` answer from `from` that end at `expected` (index and id)
/// and link down by hashes, each payload matching its header; cut at the top if the answer
/// reaches beyond it.
fn linked_page(response: Response, from: u64, expected: (u64, BlockId)) -> Result<Vec<Block>, String> {
    let Response::Blocks(mut blocks) = response else { return Err(format!("answered {}", response.name())) };
    blocks.retain(|b| b.header.index <= expected.0);
    if blocks.last().map(|b| (b.header.index, b.id())) != Some(expected) {
        return Err(format!("no block {} with the id the chain links to", expected.0));
    }
    for (i, block) in blocks.iter().enumerate() {
        if block.header.index != from + i as u64 {
            return Err(format!("block {} where block {} belongs", block.header.index, from + i as u64));
        }
        if chainiac_skipchain::block::payload_hash(&block.payload) != block.header.payload_hash {
            return Err(format!("block {}'s payload does not match its header", block.header.index));
        }
        if i > 0 && block.header.back_links.first() != Some(&blocks[i - 1].id()) {
            return Err(format!("block {} does not link to block {}", block.header.index, block.header.index - 1));
        }
    }
    Ok(blocks)
}

/// The same client for callers without an async runtime: each call runs on a runtime of
/// the client's own.
pub mod blocking {
    use super::{Block, Bundle, ChainId, ClientError, TrustLevel, Update};
    use std::path::Path;

    pub struct Client {
        inner: super::Client,
        runtime: tokio::runtime::Runtime,
    }

    impl Client {
        pub fn open(path: &Path, trust: TrustLevel) -> Result<Self, ClientError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ClientError::Network(e.to_string()))?;
            Ok(Client { inner: super::Client::open(path, trust)?, runtime })
        }

        pub fn anchor(&mut self, genesis: &Block) -> Result<ChainId, ClientError> {
            self.inner.anchor(genesis)
        }

        pub fn update(&mut self, chain: ChainId) -> Result<Update, ClientError> {
            self.runtime.block_on(self.inner.update(chain))
        }

        pub fn update_many(&mut self, chains: &[ChainId]) -> Result<super::UpdateResults, ClientError> {
            self.runtime.block_on(self.inner.update_many(chains))
        }

        /// See [`super::Client::every_hop`].
        pub fn set_every_hop(&mut self, every_hop: bool) {
            self.inner.every_hop = every_hop;
        }

        /// See [`super::Client::every_hop_chains`].
        pub fn set_every_hop_chains(&mut self, chains: impl IntoIterator<Item = ChainId>) {
            self.inner.every_hop_chains = chains.into_iter().collect();
        }

        pub fn verify_artifact(&self, chain: ChainId, path: &str, bytes: &[u8]) -> Result<String, ClientError> {
            self.inner.verify_artifact(chain, path, bytes)
        }

        pub fn verify_artifact_of(
            &self,
            chain: ChainId,
            version: &str,
            path: &str,
            bytes: &[u8],
        ) -> Result<String, ClientError> {
            self.runtime.block_on(self.inner.verify_artifact_of(chain, version, path, bytes))
        }

        pub fn export_bundle(&self, genesis: &Block, timeline_genesis: Option<&Block>) -> Result<Bundle, ClientError> {
            self.runtime.block_on(self.inner.export_bundle(genesis, timeline_genesis))
        }

        /// The async client, for state queries.
        pub fn inner(&self) -> &super::Client {
            &self.inner
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainiac_cosi::{Member, Roster, SecretKey};

    fn committee(seed: u8, members: u8) -> Committee {
        let members = (0..members)
            .map(|i| Member::new(&SecretKey::from_seed(&[seed + i; 32]), format!("127.0.0.1:{}", 9000 + i as u16)))
            .collect();
        Committee::new(Roster::new(members).unwrap(), 2).unwrap()
    }

    /// Chains 0..n under `shared`, and one more under `other`.
    fn state(n: u16, shared: &Committee, other: &Committee) -> ClientState {
        let mut state = ClientState::default();
        for i in 0..=n {
            let committee = if i == n { other } else { shared };
            let genesis = chainiac_skipchain::genesis(
                ChainParams::DEFAULT,
                committee.clone(),
                vec![i as u8],
                0,
                i.to_be_bytes().to_vec(),
                1_000,
            );
            let chain_state = ChainState::genesis(&genesis).unwrap().into_inner();
            state.chains.insert(chain_state.chain, TrustedChain::from_state(&chain_state, None));
        }
        state.timeline = state.chains.keys().next().copied();
        state
    }

    #[test]
    fn the_state_file_holds_each_committee_once_and_reads_back_the_same_state() {
        let (shared, other) = (committee(1, 16), committee(40, 4));
        let state = state(200, &shared, &other);
        let bytes = state.to_bytes();
        let stored: StoredState = postcard::from_bytes(bytes.strip_prefix(&STATE_MAGIC[..]).unwrap()).unwrap();
        assert_eq!(stored.committees.len(), 2);
        let committee_bytes = postcard::to_allocvec(&shared).unwrap().len();
        assert!(bytes.len() < 200 * committee_bytes / 4, "{} bytes for 201 chains", bytes.len());
        let read = ClientState::from_bytes(&bytes).unwrap();
        assert_eq!(read, state);
        // Chains that shared a committee share it again in memory.
        let arcs: Vec<&Arc<Committee>> = read.chains.values().map(|t| &t.committee).collect();
        assert_eq!(
            arcs.iter().filter(|a| Arc::ptr_eq(a, arcs[0])).count() as u16,
            if arcs[0].roster().len() == 16 { 200 } else { 1 }
        );
        assert!(ClientState::from_bytes(&[bytes.as_slice(), &[0]].concat()).unwrap_err().contains("left over"));
    }

    #[test]
    fn a_state_file_of_the_previous_format_is_read() {
        let (shared, other) = (committee(1, 4), committee(40, 4));
        let state = state(3, &shared, &other);
        let legacy = LegacyState {
            chains: state
                .chains
                .iter()
                .map(|(id, t)| {
                    let chain = LegacyChain {
                        chain: t.chain,
                        params: t.params,
                        header: t.header.clone(),
                        id: t.id,
                        committee: (*t.committee).clone(),
                        policy: t.policy.clone(),
                        is_checkpoint: t.is_checkpoint,
                        release: None,
                    };
                    (*id, chain)
                })
                .collect(),
            timeline: state.timeline,
        };
        let read = ClientState::from_bytes(&postcard::to_allocvec(&legacy).unwrap()).unwrap();
        assert_eq!(read, state);
        let stored = read.to_bytes();
        assert_eq!(postcard::from_bytes::<StoredState>(&stored[STATE_MAGIC.len()..]).unwrap().committees.len(), 2);
        // A legacy file whose committee is not the one its header names is refused too, and
        // so is one whose policy is not (the policy decides which rule a change must pass).
        let mut wrong = legacy;
        wrong.chains.values_mut().next().unwrap().committee = committee(90, 4);
        let error = ClientState::from_bytes(&postcard::to_allocvec(&wrong).unwrap()).unwrap_err();
        assert!(error.contains("committee does not match its header"), "{error}");
        let mut wrong_policy = state.clone();
        wrong_policy.chains.values_mut().next().unwrap().policy = b"another policy".to_vec();
        let error = ClientState::from_bytes(&wrong_policy.to_bytes()).unwrap_err();
        assert!(error.contains("policy does not match its header"), "{error}");
    }

    #[test]
    fn reconciliation_records_are_kept_and_a_file_without_them_is_read() {
        let (shared, other) = (committee(1, 4), committee(40, 4));
        let mut state = state(3, &shared, &other);
        let chains: Vec<ChainId> = state.chains.keys().copied().collect();
        state.synced.insert(chains[2], 17);
        state.synced.insert(chains[0], 5);
        state.timeline_chains = 886_000;
        let read = ClientState::from_bytes(&state.to_bytes()).unwrap();
        assert_eq!(read, state);
        let stored: StoredState = state.clone().into();
        let previous =
            PreviousState { committees: stored.committees, chains: stored.chains, timeline: stored.timeline };
        let read = ClientState::from_bytes(&postcard::to_allocvec(&previous).unwrap()).unwrap();
        assert_eq!(read, ClientState { synced: BTreeMap::new(), timeline_chains: 0, ..state.clone() });
        let mut stored: StoredState = state.into();
        stored.synced.push((9, 1));
        let error = ClientState::from_bytes(&postcard::to_allocvec(&stored).unwrap()).unwrap_err();
        assert!(error.contains("names chain 9 of 4"), "{error}");
    }

    /// A file whose rebuild summaries name rebuilders by whole key (before 2026-12-02), or
    /// also carry evidence digests (before 2026-12-01), is read: the same records, by id.
    #[test]
    fn a_file_with_the_summaries_of_before_is_read() {
        let (shared, other) = (committee(1, 4), committee(40, 4));
        let mut state = state(2, &shared, &other);
        let chain = *state.chains.keys().next().unwrap();
        let key = chainiac_cosi::SecretKey::from_seed(&[3; 32]).public_key();
        let (verdict, isolation) = (chainiac_release::Verdict::Mismatch, BuildIsolation::Namespaces);
        let record =
            chainiac_release::RebuildRecord { rebuilder: chainiac_release::RebuilderId::of(&key), verdict, isolation };
        let manifest = chainiac_release::ManifestId([6; 32]);
        let summary = RebuildSummary { release: 4, manifest, records: vec![record], committed: None, absent: vec![] };
        let trusted = state.chains.get_mut(&chain).unwrap();
        trusted.release_index = Some(4);
        trusted.rebuilds = Some(summary.clone());
        fn old_file<S: Serialize>(state: &ClientState, rebuilds: S) -> Vec<u8> {
            let stored: StoredState = state.clone().into();
            let old = StoredState {
                committees: stored.committees,
                chains: stored.chains,
                timeline: stored.timeline,
                synced: stored.synced,
                timeline_chains: stored.timeline_chains,
                releases: vec![StoredRelease { chain: 0, index: Some(4), rebuilds: Some(rebuilds) }],
            };
            postcard::to_allocvec(&old).unwrap()
        }
        let keyed = old_file(
            &state,
            KeyedRebuildSummary {
                release: 4,
                manifest,
                records: vec![chainiac_release::KeyedRebuildRecord { rebuilder: key, verdict, isolation }],
            },
        );
        // Whole keys; no `committed`, `absent` nor magic.
        assert_eq!(keyed.len(), state.to_bytes().len() + 16 - 2 - STATE_MAGIC.len());
        assert_eq!(ClientState::from_bytes(&keyed).unwrap(), state);
        let with_digests = old_file(
            &state,
            chainiac_release::RebuildSummaryWithDigests {
                release: 4,
                manifest,
                records: vec![chainiac_release::RebuildRecordWithDigest {
                    rebuilder: key,
                    verdict,
                    isolation,
                    evidence: [9; 16],
                }],
            },
        );
        assert_eq!(with_digests.len(), state.to_bytes().len() + 32 - 2 - STATE_MAGIC.len());
        assert_eq!(ClientState::from_bytes(&with_digests).unwrap(), state);
    }

    /// Anchoring another timeline forgets the reconciliation records (indices of the old
    /// one); anchoring the same one again keeps them.
    #[test]
    fn another_timeline_forgets_what_chains_were_reconciled_with() {
        let dir = tempfile::tempdir().unwrap();
        let mut client = Client::open(&dir.path().join("state"), TrustLevel::default()).unwrap();
        let timeline = |seed: u8| {
            chainiac_skipchain::genesis(ChainParams::DEFAULT, committee(seed, 4), vec![], KIND_TIMELINE, vec![], 1_000)
        };
        let (first, second) = (timeline(1), timeline(60));
        let project = chainiac_skipchain::genesis(ChainParams::DEFAULT, committee(1, 4), vec![7], 0, vec![], 1_000);
        let ids = client.anchor_many(&[first.clone(), project]).unwrap();
        client.state.synced.insert(ids[1], 5);
        client.state.timeline_chains = 100;
        client.anchor(&first).unwrap();
        assert_eq!(client.state.synced.get(&ids[1]), Some(&5), "the same timeline again");
        client.anchor(&second).unwrap();
        assert_eq!(client.state.timeline, Some(second.id()));
        assert!(client.state.synced.is_empty() && client.state.timeline_chains == 0);
    }

    #[test]
    fn a_state_file_naming_a_wrong_or_missing_committee_is_refused() {
        let (shared, other) = (committee(1, 4), committee(40, 4));
        let mut stored: StoredState = state(2, &shared, &other).into();
        stored.chains[0].committee = 7;
        let error = ClientState::from_bytes(&postcard::to_allocvec(&stored).unwrap()).unwrap_err();
        assert!(error.contains("names committee 7 of 2"), "{error}");
        let mut stored: StoredState = state(2, &shared, &other).into();
        stored.committees.swap(0, 1);
        let error = ClientState::from_bytes(&postcard::to_allocvec(&stored).unwrap()).unwrap_err();
        assert!(error.contains("does not match its header"), "{error}");
    }

    /// A client that requires isolation counts only the attestations of sandboxed builds,
    /// towards its count and its required verifiers; without it, every reproduction counts.
    #[test]
    fn a_client_may_count_only_sandboxed_builds() {
        use chainiac_release::{Attestation, AttestationBody, Manifest, Recipe, SourceArchive};
        let manifest = Manifest {
            project: "p".into(),
            version: "1".into(),
            source: SourceArchive { name: "p.tar".into(), sha3: [0; 32], size: 0 },
            recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: ".".into() },
            artifacts: vec![],
            time_ms: 0,
        };
        let attest = |seed: u8, isolation| {
            let key = SecretKey::from_seed(&[seed; 32]);
            let body = AttestationBody {
                verifier: key.public_key(),
                manifest: manifest.id(),
                outcome: Outcome::Reproduced,
                environment: [0; 32],
                time_ms: 0,
                isolation,
            };
            Attestation::sign(&key, body)
        };
        let release = ReleasePayload {
            manifest: manifest.clone(),
            developer_signatures: vec![],
            attestations: vec![attest(1, BuildIsolation::Namespaces), attest(2, BuildIsolation::None)],
        };
        let unconfined = SecretKey::from_seed(&[2; 32]).public_key();
        let two = TrustLevel { min_reproductions: 2, ..TrustLevel::default() };
        assert_eq!(meets(&two, &release), Ok(()));
        let isolated = TrustLevel { require_isolation: true, ..two.clone() };
        let refused = meets(&isolated, &release).unwrap_err();
        assert!(refused.contains("1 verifiers reproduced it in a sandbox, this client wants 2"), "{refused}");
        let named =
            TrustLevel { required_verifiers: vec![unconfined], require_isolation: true, ..TrustLevel::default() };
        assert!(meets(&named, &release).unwrap_err().contains("did not reproduce it in a sandbox"));
        let named = TrustLevel { required_verifiers: vec![unconfined], ..TrustLevel::default() };
        assert_eq!(meets(&named, &release), Ok(()));
    }
}
