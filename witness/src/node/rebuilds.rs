//! Late attestations (SPEC §11.8): rebuilders' `SubmitRebuild`, the rebuilds blocks (kind 6)
//! that carry their signed attestations, and the summary blocks (kind 9) clients read.

use super::*;
use chainiac_release::{
    Attestation, RebuildSummary, RebuilderId, Rebuilds, RecordsTree, ReleasePayload, KIND_REBUILDS,
    KIND_REBUILD_SUMMARY, KIND_RELEASE,
};

/// Inserts into a cache of at most `cap` entries, dropping one (any) when full: what it
/// holds can be read again, and strangers' queries must not grow it.
fn insert_bounded<K: std::hash::Hash + Eq + Copy, V>(map: &mut HashMap<K, V>, cap: usize, key: K, value: V) {
    if map.len() >= cap && !map.contains_key(&key) {
        if let Some(dropped) = map.keys().next().copied() {
            map.remove(&dropped);
        }
    }
    map.insert(key, value);
}

/// Per rebuilder key and release chain, the block times of its disagreements.
pub(super) type Disagreements = HashMap<(PublicKey, ChainId), Vec<u64>>;

/// Per release chain: its newest release's index, the block index the evidence was read up
/// to, and the attestations the chain's rebuilds blocks hold about that release.
pub(super) type RebuildEvidence = HashMap<ChainId, (u64, u64, Vec<Attestation>)>;

/// Per (release chain, release no longer its newest): the records of its attestations.
pub(super) type OlderRecords = HashMap<(ChainId, u64), Arc<Vec<chainiac_release::RebuildRecord>>>;

/// How many attestations one rebuilder key may submit to this witness per hour.
const REBUILD_WINDOW_MS: u64 = 3_600_000;

/// Chains whose evidence is kept in memory at once (more: one is dropped).
const EVIDENCE_CACHE_CHAINS: usize = 4096;
/// Attestations the evidence cache keeps over all chains (≤ 1 GiB at 4 KiB each; more:
/// chains are dropped until they fit): a release takes up to 4,096, and keys cost nothing.
const EVIDENCE_CACHE_ATTESTATIONS: usize = 262_144;
/// Record trees kept for `GetRebuildRecords` (one per chain, release and count).
const RECORD_TREES_CACHED: usize = 64;
/// Older releases whose records are kept for `GetRebuildRecords` (≤ 74 KB each).
const OLDER_RECORDS_CACHED: usize = 256;

/// How many more times a rebuilds or summary block whose round failed is led again.
const APPEND_TRIES: u32 = 4;

/// Attestations a witness holds for their batches at once, over every chain (more are
/// appended at once).
const MAX_PENDING_REBUILDS: usize = 16_384;

/// A release chain's attestations waiting to be appended together (`rebuild_batch_seconds`),
/// kept in memory and on disk ([`CF_REBUILD_BATCHES`]) until appended.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct PendingBatch {
    /// The release they attest: the chain's newest when each was taken.
    release: u64,
    /// When the batch is appended (ms since the epoch): the first one's arrival plus the
    /// batch interval.
    due_ms: u64,
    attestations: Vec<Attestation>,
}

impl Node {
    /// The release block at `index` of `chain`, if it is one.
    fn release_at(&self, chain: &ChainId, index: u64) -> Option<ReleasePayload> {
        let block = self.store.block(chain, index).ok().flatten()?;
        (block.header.kind == KIND_RELEASE).then(|| ReleasePayload::from_bytes(&block.payload).ok()).flatten()
    }

    /// The newest release of `chain`: its block index and payload.
    fn newest_release(&self, chain: &ChainId) -> Option<(u64, ReleasePayload)> {
        let index = self.with_releases(chain, |releases| releases.values().map(|(i, _)| *i).max())?;
        self.release_at(chain, index).map(|payload| (index, payload))
    }

    /// Every attestation the chain's rebuilds blocks hold about `release`, which must be the
    /// chain's newest release (rebuilds of no other are taken), in chain order. Kept per
    /// chain with the index read up to; each call reads only the blocks appended since, so
    /// a block is never counted twice whatever order appends and reads come in.
    ///
    /// The blocks are read outside the cache's lock (a slow read, or a stranger's
    /// `GetRebuilds` over many chains, does not stall members' checks of other chains), and
    /// a full cache drops one chain, not all of them.
    pub(super) fn rebuild_evidence(&self, chain: &ChainId, release: u64) -> Vec<Attestation> {
        blocking(|| {
            let head = self.store.head(chain).ok().flatten().map_or(0, |h| h.index);
            let cached = self.rebuild_evidence.lock().expect("lock").get(chain).filter(|e| e.0 == release).cloned();
            let (read_to, mut found) = cached.map_or((release, Vec::new()), |(_, read_to, found)| (read_to, found));
            for index in read_to.saturating_add(1)..=head {
                if let Ok(Some(block)) = self.store.block(chain, index) {
                    if block.header.kind == KIND_REBUILDS {
                        if let Ok(rebuilds) = Rebuilds::from_bytes(&block.payload) {
                            if rebuilds.release == release {
                                found.extend(rebuilds.attestations);
                            }
                        }
                    }
                }
            }
            let mut evidence = self.rebuild_evidence.lock().expect("lock");
            // Another call may have read further meanwhile: the furthest read stays.
            let newer_there = evidence.get(chain).is_some_and(|e| e.0 == release && e.1 >= head.max(read_to));
            if !newer_there {
                evidence.remove(chain);
                let mut held: usize = evidence.values().map(|e| e.2.len()).sum();
                while evidence.len() >= EVIDENCE_CACHE_CHAINS || held + found.len() > EVIDENCE_CACHE_ATTESTATIONS {
                    let Some(dropped) = evidence.keys().next().copied() else { break };
                    held -= evidence.remove(&dropped).map_or(0, |e| e.2.len());
                }
                evidence.insert(*chain, (release, head.max(read_to), found.clone()));
            }
            found
        })
    }

    /// After a rebuilds block is appended: its disagreements count towards their
    /// rebuilders' throttle.
    pub(super) fn note_rebuilds(&self, block: &Block) {
        let (Some(chain), Ok(rebuilds)) = (block.header.chain, Rebuilds::from_bytes(&block.payload)) else { return };
        if let Some(disagreements) = self.rebuild_disagreements.lock().expect("lock").as_mut() {
            note_disagreements(disagreements, chain, block.header.timestamp_ms, &rebuilds);
        }
    }

    fn window_ms(&self) -> u64 {
        self.config.rebuild_disagreement_window_days.saturating_mul(86_400_000)
    }

    /// Until when `rebuilder`'s attestations about `chain`'s releases are refused here (ms
    /// since the epoch), if they are: it disagreed with `chain`'s releases
    /// `rebuild_disagreement_limit` times within the window, and stays throttled on that
    /// chain until the oldest of those leaves it. Per chain, so that a project that ships
    /// releases nobody reproduces cannot silence its critics elsewhere. The disagreements
    /// are read from every release chain here on first use (the blocks within the window,
    /// walking down from each head), then kept up to date on every append.
    pub(super) fn throttled_until(&self, rebuilder: &PublicKey, chain: &ChainId) -> Option<u64> {
        let limit = self.config.rebuild_disagreement_limit as usize;
        if limit == 0 {
            return None;
        }
        let (now, window) = (now_ms(), self.window_ms());
        let since = now.saturating_sub(window);
        blocking(|| {
            // The first read walks every release chain's recent blocks: outside the lock,
            // so that appends (`note_rebuilds`) do not wait for it. A block appended during
            // it may go uncounted (never counted twice): the throttle errs towards leniency.
            if self.rebuild_disagreements.lock().expect("lock").is_none() {
                let read = self.read_disagreements(since);
                self.rebuild_disagreements.lock().expect("lock").get_or_insert(read);
            }
            let mut known = self.rebuild_disagreements.lock().expect("lock");
            let disagreements = known.as_mut().expect("just read");
            let times = disagreements.get_mut(&(*rebuilder, *chain))?;
            times.retain(|&t| t >= since);
            times.sort_unstable();
            (times.len() >= limit).then(|| times[times.len() - limit].saturating_add(window))
        })
    }

    /// Every rebuilder's disagreements in rebuilds blocks at or after `since_ms`, over the
    /// release chains this node serves.
    fn read_disagreements(&self, since_ms: u64) -> Disagreements {
        let mut disagreements = HashMap::new();
        for (chain, head) in self.store.heads().unwrap_or_default() {
            if head.kind != KIND_RELEASE {
                continue;
            }
            for index in (1..=head.index).rev() {
                let Ok(Some(block)) = self.store.block(&chain, index) else { break };
                if block.header.timestamp_ms < since_ms {
                    break;
                }
                if block.header.kind == KIND_REBUILDS {
                    if let Ok(rebuilds) = Rebuilds::from_bytes(&block.payload) {
                        note_disagreements(&mut disagreements, chain, block.header.timestamp_ms, &rebuilds);
                    }
                }
            }
        }
        disagreements
    }

    /// The summary a summary block must hold now: every attestation on the chain about its
    /// newest release.
    fn expected_summary(&self, chain: &ChainId) -> Result<RebuildSummary, ErrorReply> {
        let (release, payload) = self
            .newest_release(chain)
            .ok_or_else(|| err(ErrorCode::Refused, format!("chain {chain} has no release to summarize")))?;
        Ok(RebuildSummary::of(release, payload.manifest.id(), &self.rebuild_evidence(chain, release)))
    }

    /// The id of `chain`'s block at `release`, which a summary about it names.
    fn release_block_id(&self, chain: &ChainId, release: u64) -> Result<chainiac_skipchain::BlockId, ErrorReply> {
        self.store
            .block_id(chain, release)
            .ok()
            .flatten()
            .ok_or_else(|| err(ErrorCode::Internal, format!("chain {chain} lacks its release block {release}")))
    }

    /// The rules of rebuilds and summary blocks that read the chain (its newest release, what is recorded
    /// of it, its policy's verifiers): checked before voting, not for blocks caught up on
    /// (their committee did; `rules::check_rules` checks what needs no history for all).
    pub(super) fn check_rebuild_block(&self, head: &ChainState, block: &Block) -> Result<(), ErrorReply> {
        let refused = |e: chainiac_release::ReleaseError| err(ErrorCode::Refused, e.to_string());
        match block.header.kind {
            KIND_REBUILDS => {
                let rebuilds = Rebuilds::from_bytes(&block.payload)
                    .map_err(|e| refused(chainiac_release::ReleaseError::DecodeRebuilds(e)))?;
                let newest = self.newest_release(&head.chain);
                let recorded: Vec<_> = match &newest {
                    Some((index, _)) if *index == rebuilds.release => self
                        .rebuild_evidence(&head.chain, *index)
                        .iter()
                        .map(chainiac_release::RebuildRecord::of)
                        .collect(),
                    _ => Vec::new(),
                };
                let verifiers = policy_verifiers(&head.policy);
                let newest = newest.as_ref().map(|(index, payload)| (*index, payload));
                chainiac_release::check_rebuilds(&rebuilds, newest, &recorded, &verifiers).map_err(refused)
            }
            kind if chainiac_release::is_rebuild_summary(kind) => {
                let expected = self.expected_summary(&head.chain)?;
                let release_block = self.release_block_id(&head.chain, expected.release)?;
                chainiac_release::check_rebuild_summary(kind, &block.payload, &expected, release_block)
                    .map(|_| ())
                    .map_err(refused)
            }
            _ => Ok(()),
        }
    }

    /// For a fresh summary block only (not one a round locked or certified, which may date
    /// from members that did not apply this): it must add to the newest summary the chain
    /// holds about the release, else it would only move the head again (a faulty leader's
    /// way to make every follower download something).
    pub(super) fn check_summary_adds_something(&self, head: &ChainState, block: &Block) -> Result<(), ErrorReply> {
        let Ok(summary) = RebuildSummary::of_block(block.header.kind, &block.payload) else { return Ok(()) };
        if self.summarized(&head.chain, summary.release).is_some_and(|s| s == summary) {
            return Err(err(
                ErrorCode::Refused,
                format!("the chain's newest summary of release {} already records all of it", summary.release),
            ));
        }
        Ok(())
    }

    /// A rebuilder's attestation about a release of `chain` (anyone may send one):
    /// signed, within the key's hourly allowance, checked as a rebuilds block would be, then appended in a
    /// rebuilds block followed by the release's new summary, which is the answer. An
    /// attestation already on the chain whose summary a crash kept from being appended gets
    /// that summary now; otherwise a second one is refused.
    pub(super) async fn submit_rebuild(
        self: &Arc<Self>,
        caller: PublicKey,
        chain: ChainId,
        attestation: Attestation,
    ) -> Reply {
        if self.chain_kind(&chain)? != KIND_RELEASE {
            return Err(err(ErrorCode::Refused, format!("chain {chain} is not a release chain")));
        }
        let rebuilder = attestation.body.verifier;
        // The rebuilder submits its own: nobody can spend its allowance by replaying its
        // attestations (they are public).
        if caller != rebuilder {
            return Err(self.forbidden(format!(
                "an attestation by {rebuilder} is submitted by its rebuilder, connected with that key; you are {caller}"
            )));
        }
        if !attestation.verify() {
            let refusal = chainiac_release::ReleaseError::BadRebuildSignature { key: rebuilder.to_string() };
            return Err(err(ErrorCode::Refused, refusal.to_string()));
        }
        // Every signed submission counts, taken or not: each costs this witness a lookup.
        self.take_rebuild_allowance(&rebuilder)?;
        let manifest = attestation.body.manifest;
        let unknown = || err(ErrorCode::Refused, format!("chain {chain} has no release with manifest {manifest}"));
        let release = self.release_index(&chain, &manifest).ok_or_else(unknown)?;
        let (newest, payload) = self.newest_release(&chain).ok_or_else(unknown)?;
        if newest != release {
            let refusal = chainiac_release::ReleaseError::NotTheNewestRelease { release, newest };
            return Err(err(ErrorCode::Refused, refusal.to_string()));
        }
        let evidence = self.rebuild_evidence(&chain, release);
        if let Some(position) = evidence.iter().position(|a| a.body.verifier == rebuilder) {
            // Summaries cover a prefix of the evidence in chain order (all before them).
            if self.summarized(&chain, release).is_some_and(|s| (position as u64) < s.count()) {
                return Err(err(
                    ErrorCode::Refused,
                    chainiac_release::ReleaseError::DuplicateRebuild { key: rebuilder.to_string(), release }
                        .to_string(),
                ));
            }
            return self.append_summary(chain).await.map(|block| Response::Appended { block });
        }
        // Waiting in this witness's batch already: the same answer again, nothing added.
        let pending = self.pending_rebuilds(&chain, release);
        if let Some(due_ms) = pending
            .as_ref()
            .filter(|(_, queued)| queued.iter().any(|a| a.body.verifier == rebuilder))
            .map(|(due, _)| *due)
        {
            return Ok(Response::RebuildQueued { due_ms });
        }
        // Throttled rebuilders' new attestations only: a duplicate is answered as such.
        if let Some(until) = self.throttled_until(&rebuilder, &chain) {
            let limit = self.config.rebuild_disagreement_limit;
            let days = self.config.rebuild_disagreement_window_days;
            return Err(err(
                ErrorCode::Refused,
                format!(
                    "rebuilder {rebuilder} is throttled on chain {chain}: {limit} or more of its attestations disagreed \
                     with its releases within {days} days; this witness takes its attestations again from {until} ms \
                     since the epoch"
                ),
            ));
        }
        let rebuilds = Rebuilds { release, attestations: vec![attestation] };
        // What the release will hold: the chain's and this witness's batch (the cap of
        // rebuilds per release counts both).
        let queued = pending.map(|(_, queued)| queued).unwrap_or_default();
        let recorded: Vec<_> = evidence.iter().chain(&queued).map(chainiac_release::RebuildRecord::of).collect();
        let verifiers = policy_verifiers(&self.head(&chain)?.policy);
        chainiac_release::check_rebuilds_alone(&rebuilds)
            .and_then(|()| {
                chainiac_release::check_rebuilds(&rebuilds, Some((release, &payload)), &recorded, &verifiers)
            })
            .map_err(|e| err(ErrorCode::Refused, e.to_string()))?;
        if self.config.rebuild_batch_seconds > 0 {
            let attestation = rebuilds.attestations[0].clone();
            if let Some(queued) = self.queue_rebuild(chain, release, attestation) {
                return Ok(queued);
            }
        }
        let proposal = Proposal { kind: KIND_REBUILDS, payload: rebuilds.to_bytes(), ..Proposal::default() };
        self.lead(chain, proposal).await?;
        self.append_summary(chain).await.map(|block| Response::Appended { block })
    }

    /// The batch waiting here for `chain`'s release `release`: when it is due, and its
    /// attestations.
    fn pending_rebuilds(&self, chain: &ChainId, release: u64) -> Option<(u64, Vec<Attestation>)> {
        let batches = self.rebuild_batches.lock().expect("lock");
        batches.get(chain).filter(|b| b.release == release).map(|b| (b.due_ms, b.attestations.clone()))
    }

    /// Holds a checked attestation for its chain's batch, which the first one schedules, and
    /// the answer: when the batch is due (also for a key the batch holds already: nothing
    /// added). A batch about an older release (the chain moved on since) is replaced:
    /// witnesses take rebuilds of the newest release only. `None` when this witness holds
    /// [`MAX_PENDING_REBUILDS`] already: then it is appended at once, so that strangers
    /// filling the batches cost blocks, not other rebuilders' submissions.
    fn queue_rebuild(self: &Arc<Self>, chain: ChainId, release: u64, attestation: Attestation) -> Option<Response> {
        let now = now_ms();
        let interval_ms = self.config.rebuild_batch_seconds.saturating_mul(1000);
        let mut batches = self.rebuild_batches.lock().expect("lock");
        if let Some(batch) = batches.get(&chain).filter(|b| b.release == release) {
            if batch.attestations.iter().any(|a| a.body.verifier == attestation.body.verifier) {
                return Some(Response::RebuildQueued { due_ms: batch.due_ms });
            }
        }
        if batches.values().map(|b| b.attestations.len()).sum::<usize>() >= MAX_PENDING_REBUILDS {
            return None;
        }
        let batch = match batches.get_mut(&chain) {
            Some(batch) if batch.release == release => batch,
            replaced => {
                // An older release's batch (the chain moved on): dropped from disk too; its
                // task finds it gone.
                if let Some(old) = replaced {
                    self.forget_batch(&chain, old.due_ms);
                }
                let due_ms = now.saturating_add(interval_ms);
                let node = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(interval_ms)).await;
                    node.append_batch(chain, due_ms).await;
                });
                batches.insert(chain, PendingBatch { release, due_ms, attestations: Vec::new() });
                batches.get_mut(&chain).expect("just inserted")
            }
        };
        batch.attestations.push(attestation);
        // On disk before the answer: a restart appends it all the same.
        let (due_ms, stored) = (batch.due_ms, batch.clone());
        if let Err(e) = self.store_batch(&chain, &stored) {
            warn!(%chain, "cannot keep a rebuild batch on disk: {e}; appending at once");
            batches.get_mut(&chain).expect("present").attestations.pop();
            return None;
        }
        Some(Response::RebuildQueued { due_ms })
    }

    /// Writes `chain`'s batch (synced), under its key.
    fn store_batch(&self, chain: &ChainId, batch: &PendingBatch) -> Result<(), String> {
        let db = self.store.db();
        let cf = db.cf_handle(CF_REBUILD_BATCHES).ok_or("no rebuild batch column family")?;
        let bytes = postcard::to_allocvec(batch).map_err(|e| e.to_string())?;
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        blocking(|| db.put_cf_opt(cf, index_key(chain, batch.due_ms), bytes, &options)).map_err(|e| e.to_string())
    }

    fn forget_batch(&self, chain: &ChainId, due_ms: u64) {
        let db = self.store.db();
        if let Some(cf) = db.cf_handle(CF_REBUILD_BATCHES) {
            if let Err(e) = blocking(|| db.delete_cf(cf, index_key(chain, due_ms))) {
                warn!(%chain, "cannot forget an appended rebuild batch: {e}");
            }
        }
    }

    /// At start: the batches a stop or crash left on disk, each chain's merged into one
    /// (the newest release's, due at the earliest time), scheduled again.
    pub fn restore_rebuild_batches(self: &Arc<Self>) {
        let db = self.store.db();
        let Some(cf) = db.cf_handle(CF_REBUILD_BATCHES) else { return };
        let mut found: HashMap<ChainId, (Vec<u64>, PendingBatch)> = HashMap::new();
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let Ok((key, value)) = item else { break };
            let (Ok(chain), Ok(batch)) = (
                <[u8; 32]>::try_from(&key[..key.len().min(32)]),
                chainiac_skipchain::decode_exact::<PendingBatch>(&value),
            ) else {
                warn!("a stored rebuild batch does not decode; dropped");
                let _ = db.delete_cf(cf, &key);
                continue;
            };
            let chain = BlockId(chain);
            let entry = found.entry(chain).or_insert_with(|| (Vec::new(), batch.clone()));
            entry.0.push(batch.due_ms);
            let merged = &mut entry.1;
            if batch.release > merged.release {
                *merged = PendingBatch { due_ms: merged.due_ms.min(batch.due_ms), ..batch };
            } else if batch.release == merged.release {
                merged.due_ms = merged.due_ms.min(batch.due_ms);
                for attestation in batch.attestations {
                    if !merged.attestations.iter().any(|a| a.body.verifier == attestation.body.verifier) {
                        merged.attestations.push(attestation);
                    }
                }
            }
        }
        let mut batches = self.rebuild_batches.lock().expect("lock");
        for (chain, (keys, batch)) in found {
            for due_ms in keys.iter().filter(|&&d| d != batch.due_ms) {
                self.forget_batch(&chain, *due_ms);
            }
            if let Err(e) = self.store_batch(&chain, &batch) {
                warn!(%chain, "cannot keep a restored rebuild batch on disk: {e}");
            }
            let (due_ms, node) = (batch.due_ms, self.clone());
            info!(%chain, "{} rebuild attestation(s) kept over a restart, appended at {due_ms}", batch.attestations.len());
            batches.insert(chain, batch);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(due_ms.saturating_sub(now_ms()))).await;
                node.append_batch(chain, due_ms).await;
            });
        }
    }

    /// Appends `chain`'s batch due at `due_ms` (a batch another task scheduled is left to
    /// it): its attestations the chain does not hold yet, in rebuilds blocks of at most
    /// [`chainiac_release::MAX_REBUILDS_PER_BLOCK`], then the release's summary. A block the
    /// members refuse (one of its keys got on the chain through another witness meanwhile,
    /// or the release's cap filled) is tried again one attestation at a time, so one that no
    /// longer fits costs only itself; what still cannot be appended is dropped with a
    /// warning, and its rebuilders submit again.
    async fn append_batch(self: &Arc<Self>, chain: ChainId, due_ms: u64) {
        let batch = {
            let mut batches = self.rebuild_batches.lock().expect("lock");
            match batches.get(&chain) {
                Some(batch) if batch.due_ms == due_ms => batches.remove(&chain).expect("present"),
                _ => return,
            }
        };
        self.flush_batch(chain, batch).await;
        // Off the disk once appended (or dropped): a crash before this appends it again,
        // and what the chain holds by then is left out.
        self.forget_batch(&chain, due_ms);
    }

    async fn flush_batch(self: &Arc<Self>, chain: ChainId, batch: PendingBatch) {
        let release = batch.release;
        if self.newest_release(&chain).map(|(index, _)| index) != Some(release) {
            let n = batch.attestations.len();
            warn!(%chain, "dropped {n} rebuild attestation(s) of release {release}: a newer release came first");
            return;
        }
        let mut appended = false;
        let chunks: Vec<&[Attestation]> = batch.attestations.chunks(chainiac_release::MAX_REBUILDS_PER_BLOCK).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            let fresh = self.not_on_chain(&chain, release, chunk);
            if fresh.is_empty() {
                continue;
            }
            let refused = match self.append_rebuilds(chain, release, fresh.clone()).await {
                Ok(()) => {
                    appended = true;
                    // The crash tests stop here: a rebuilds block without its summary.
                    fail::fail_point!("witness::rebuilds-appended", |_| std::process::abort());
                    continue;
                }
                Err(e) if e.code == ErrorCode::Refused => e,
                // No quorum or no time even after pauses: the rest waits for its rebuilders
                // to send it again, rather than a round per attestation now.
                Err(e) => {
                    let left: usize = chunks[k..].iter().map(|c| c.len()).sum();
                    warn!(%chain, "{left} rebuild attestation(s) of release {release} were not appended: {e}");
                    break;
                }
            };
            // A rule refused the block (a key reached the chain through another witness, the
            // release's cap filled): each on its own, so one that no longer fits costs only
            // itself.
            debug!(%chain, "a rebuilds block was refused ({}); appending its attestations one by one", refused.message);
            for attestation in fresh {
                let key = attestation.body.verifier;
                if self.not_on_chain(&chain, release, std::slice::from_ref(&attestation)).is_empty() {
                    continue;
                }
                match self.append_rebuilds(chain, release, vec![attestation]).await {
                    Ok(()) => appended = true,
                    Err(e) => warn!(%chain, "the rebuild attestation by {key} was not appended: {e}"),
                }
            }
        }
        // Also when nothing was appended now but the chain holds attestations its newest
        // summary lacks: a crash between a batch's rebuilds block and its summary, the
        // batch restored from disk at start.
        let unsummarized = || {
            let summarized = self.summarized(&chain, release).map_or(0, |s| s.count());
            summarized < self.rebuild_evidence(&chain, release).len() as u64
        };
        if appended || unsummarized() {
            if let Err(e) = self.append_summary(chain).await {
                warn!(%chain, "the rebuild summary of release {release} was not appended: {e}");
            }
        }
    }

    /// Those of `attestations` whose keys the chain holds none of about `release`.
    fn not_on_chain(&self, chain: &ChainId, release: u64, attestations: &[Attestation]) -> Vec<Attestation> {
        let on_chain = self.rebuild_evidence(chain, release);
        attestations.iter().filter(|a| !on_chain.iter().any(|e| e.body.verifier == a.body.verifier)).cloned().collect()
    }

    /// One rebuilds block of `attestations`. A round that fails for want of time or
    /// signatures (another leader's round at the index, a slow member) is led again a few
    /// times, after a pause; a refusal (a rule) is the answer.
    async fn append_rebuilds(
        self: &Arc<Self>,
        chain: ChainId,
        release: u64,
        attestations: Vec<Attestation>,
    ) -> Result<(), ErrorReply> {
        let payload = Rebuilds { release, attestations }.to_bytes();
        let mut tries = 0;
        loop {
            let proposal = Proposal { kind: KIND_REBUILDS, payload: payload.clone(), ..Proposal::default() };
            match self.lead(chain, proposal).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code == ErrorCode::Refused || tries >= APPEND_TRIES => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200 * tries as u64)).await;
                }
            }
        }
    }

    /// Appends the summary of the newest release as the chain now holds it. Another rebuilds
    /// block appended in between makes the summary stale (members refuse it): computed again.
    async fn append_summary(self: &Arc<Self>, chain: ChainId) -> Result<Block, ErrorReply> {
        let mut last = None;
        for tries in 0..=APPEND_TRIES {
            if tries > 0 {
                tokio::time::sleep(Duration::from_millis(200 * tries as u64)).await;
            }
            let summary = self.expected_summary(&chain)?;
            // Already on the chain (another member's round won): that block is the answer.
            if let Some((block, _)) = self.newest_summary_block(&chain, summary.release).filter(|(_, s)| *s == summary)
            {
                return Ok(block);
            }
            let payload = summary.to_block_bytes(self.release_block_id(&chain, summary.release)?);
            let proposal = Proposal { kind: KIND_REBUILD_SUMMARY, payload, ..Proposal::default() };
            match self.lead(chain, proposal).await {
                Ok(block) => return Ok(block),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// The newest summary block about `release` on `chain`, walking down from the head to the
    /// release (the blocks after a release are few: its rebuilds and summaries, yanks).
    fn summarized(&self, chain: &ChainId, release: u64) -> Option<RebuildSummary> {
        self.newest_summary_block(chain, release).map(|(_, summary)| summary)
    }

    /// [`Self::summarized`] with its block.
    fn newest_summary_block(&self, chain: &ChainId, release: u64) -> Option<(Block, RebuildSummary)> {
        let head = self.store.head(chain).ok().flatten()?.index;
        blocking(|| {
            (release + 1..=head).rev().find_map(|index| {
                let block = self.store.block(chain, index).ok().flatten()?;
                let summary = RebuildSummary::of_block(block.header.kind, &block.payload)
                    .ok()
                    .filter(|s| s.release == release)?;
                Some((block, summary))
            })
        })
    }

    /// Counts one attestation against `rebuilder`'s hourly allowance on this witness
    /// (`rebuilds_per_hour`), refusing it past the limit.
    fn take_rebuild_allowance(&self, rebuilder: &PublicKey) -> Result<(), ErrorReply> {
        let mut allowances = self.rebuild_allowances.lock().expect("lock");
        allowances.take(rebuilder, now_ms(), self.config.rebuilds_per_hour).map_err(|AllowanceSpent { used }| {
            err(
                ErrorCode::Refused,
                format!(
                    "rebuilder {rebuilder} sent {used} attestations here within the hour, the most this witness takes \
                     (rebuilds_per_hour); try later"
                ),
            )
        })
    }

    /// `GetRebuildRecords`: proofs for `rebuilders` over the records of the first `count`
    /// attestations of release `release` in chain order — what a summary of `count`
    /// records commits to, since every summary covers all before it. The client checks
    /// them against the root its summary holds. Open to anyone, like `GetRebuilds`.
    pub(super) fn rebuild_records(
        &self,
        chain: &ChainId,
        release: u64,
        count: u64,
        rebuilders: &[RebuilderId],
    ) -> Reply {
        if rebuilders.len() > chainiac_proto::MAX_RECORD_QUERIES {
            let limit = chainiac_proto::MAX_RECORD_QUERIES;
            return Err(err(ErrorCode::BadRequest, format!("more than {limit} rebuilders asked about")));
        }
        if self.chain_kind(chain)? != KIND_RELEASE {
            return Err(err(ErrorCode::BadRequest, format!("chain {chain} is not a release chain")));
        }
        if rebuilders.is_empty() {
            return Ok(Response::RebuildRecords(Vec::new()));
        }
        // A tree is over fixed history (the first `count` attestations): kept, and a
        // stranger's repeated query costs the proofs alone.
        let key = (*chain, release, count);
        let cached = self.record_trees.lock().expect("lock").get(&key).cloned();
        let tree = match cached {
            Some(tree) => tree,
            None => {
                if self.release_at(chain, release).is_none() {
                    return Err(err(ErrorCode::NotFound, format!("block {release} of chain {chain} is no release")));
                }
                let records = match self.newest_release(chain) {
                    Some((newest, _)) if newest == release => Arc::new(
                        self.rebuild_evidence(chain, newest).iter().map(chainiac_release::RebuildRecord::of).collect(),
                    ),
                    _ => self.records_of_older(chain, release),
                };
                let Some(covered) = usize::try_from(count).ok().and_then(|n| records.get(..n)) else {
                    let held = records.len();
                    return Err(err(
                        ErrorCode::NotFound,
                        format!("release {release} has {held} attestations here, not {count}"),
                    ));
                };
                let tree = Arc::new(blocking(|| RecordsTree::new(covered)));
                insert_bounded(&mut self.record_trees.lock().expect("lock"), RECORD_TREES_CACHED, key, tree.clone());
                tree
            }
        };
        Ok(Response::RebuildRecords(rebuilders.iter().map(|id| tree.prove(id)).collect()))
    }

    /// The records of the attestations about release `release`, not the chain's newest (the
    /// evidence cache holds the newest's), in chain order: in the rebuilds blocks up to the
    /// next release, which take no more. Kept (18 bytes a record), so that strangers asking
    /// about an old release cost one read of its blocks.
    fn records_of_older(&self, chain: &ChainId, release: u64) -> Arc<Vec<chainiac_release::RebuildRecord>> {
        let key = (*chain, release);
        if let Some(records) = self.older_records.lock().expect("lock").get(&key) {
            return records.clone();
        }
        let records: Arc<Vec<_>> =
            Arc::new(self.evidence_of_older(chain, release).iter().map(chainiac_release::RebuildRecord::of).collect());
        insert_bounded(&mut self.older_records.lock().expect("lock"), OLDER_RECORDS_CACHED, key, records.clone());
        records
    }

    fn evidence_of_older(&self, chain: &ChainId, release: u64) -> Vec<Attestation> {
        blocking(|| {
            let mut found = Vec::new();
            let head = self.store.head(chain).ok().flatten().map_or(0, |h| h.index);
            for index in release.saturating_add(1)..=head {
                let Ok(Some(block)) = self.store.block(chain, index) else { continue };
                match block.header.kind {
                    KIND_RELEASE => break,
                    KIND_REBUILDS => {
                        if let Ok(rebuilds) = Rebuilds::from_bytes(&block.payload) {
                            if rebuilds.release == release {
                                found.extend(rebuilds.attestations);
                            }
                        }
                    }
                    _ => {}
                }
            }
            found
        })
    }

    /// `GetRebuilds`: the signed attestations behind release `release`'s records, for
    /// auditors to check a summary against.
    pub(super) fn rebuilds(&self, chain: &ChainId, release: u64) -> Reply {
        if self.chain_kind(chain)? != KIND_RELEASE {
            return Err(err(ErrorCode::BadRequest, format!("chain {chain} is not a release chain")));
        }
        match self.newest_release(chain) {
            Some((newest, _)) if newest == release => Ok(Response::Rebuilds(self.rebuild_evidence(chain, release))),
            // Older releases take no rebuilds since the next one came; theirs are in the
            // chain's rebuilds blocks (`GetBlocks`).
            _ => Err(err(ErrorCode::NotFound, format!("block {release} is not chain {chain}'s newest release"))),
        }
    }
}

/// The most rebuilder keys whose hourly allowance a witness counts at once (≈ 3 MB): keys
/// are free, so without a bound their count would be the memory's.
pub(super) const MAX_ALLOWANCE_KEYS: usize = 65_536;

/// Rebuilders' hourly allowances on this witness, per key: when its hour started and how
/// many attestations it took in it. At most `cap` keys are counted at once: past that (ended
/// hours dropped first) a new key takes the place of one counted, so a flood of fresh keys
/// costs memory up to the cap and refuses nobody. A key dropped so starts a new hour: the
/// limit binds a key, not whoever makes keys, which it never did (keys are free).
pub(crate) struct Allowances {
    per_key: HashMap<PublicKey, (u64, u32)>,
    cap: usize,
    /// When ended hours were last dropped: at most once a minute, so that a full map does
    /// not make every request walk it.
    pruned_ms: u64,
}

/// Why [`Allowances::take`] refused: the key took `used` attestations within its hour,
/// the limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AllowanceSpent {
    pub used: u32,
}

impl Allowances {
    pub(crate) fn new(cap: usize) -> Self {
        Allowances { per_key: HashMap::new(), cap, pruned_ms: 0 }
    }

    /// Counts one attestation by `key` at `now_ms` against `limit` an hour.
    pub(crate) fn take(&mut self, key: &PublicKey, now_ms: u64, limit: u32) -> Result<(), AllowanceSpent> {
        let ended = |start: u64| now_ms.saturating_sub(start) >= REBUILD_WINDOW_MS;
        let full = |this: &Self| !this.per_key.contains_key(key) && this.per_key.len() >= this.cap;
        if full(self) && now_ms >= self.pruned_ms + 60_000 {
            self.per_key.retain(|_, (start, _)| !ended(*start));
            self.pruned_ms = now_ms;
        }
        if full(self) {
            if let Some(dropped) = self.per_key.keys().next().copied() {
                self.per_key.remove(&dropped);
            }
        }
        let (start, used) = self.per_key.entry(*key).or_insert((now_ms, 0));
        if ended(*start) {
            (*start, *used) = (now_ms, 0);
        }
        if *used >= limit {
            return Err(AllowanceSpent { used: *used });
        }
        *used += 1;
        Ok(())
    }
}

/// Counts the rebuilds' attestations (in a block of `chain` at `time_ms`) that did not
/// reproduce their release.
fn note_disagreements(disagreements: &mut Disagreements, chain: ChainId, time_ms: u64, rebuilds: &Rebuilds) {
    for attestation in &rebuilds.attestations {
        if attestation.body.outcome != chainiac_release::Outcome::Reproduced {
            disagreements.entry((attestation.body.verifier, chain)).or_default().push(time_ms);
        }
    }
}

/// The verifiers' keys of a release policy (none for a policy that does not decode).
fn policy_verifiers(policy: &[u8]) -> Vec<PublicKey> {
    chainiac_release::Policy::from_bytes(policy)
        .map(|p| p.verifiers.iter().map(|v| v.key).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> PublicKey {
        chainiac_cosi::SecretKey::from_seed(&[i; 32]).public_key()
    }

    /// Each key takes `limit` an hour; past the cap of keys a new key is counted all the
    /// same (nobody is refused for others' keys), in the place of one counted, and the map
    /// never grows past the cap; hours that ended are dropped first.
    #[test]
    fn allowances_limit_each_key_and_how_many_keys_are_counted() {
        let mut allowances = Allowances::new(2);
        let hour = REBUILD_WINDOW_MS;
        assert_eq!(allowances.take(&key(1), 0, 2), Ok(()));
        assert_eq!(allowances.take(&key(1), 10, 2), Ok(()));
        assert_eq!(allowances.take(&key(1), 20, 2), Err(AllowanceSpent { used: 2 }));
        assert_eq!(allowances.take(&key(2), 30, 2), Ok(()));
        assert_eq!(allowances.take(&key(2), 35, 2), Ok(()));
        assert_eq!(allowances.take(&key(3), 40, 2), Ok(()), "a new key past the cap");
        assert_eq!(allowances.per_key.len(), 2);
        // One of keys 1 and 2 gave its place: that one starts a new hour, the other is spent.
        let spent = [key(1), key(2)].iter().filter(|k| allowances.take(k, 50, 2).is_err()).count();
        assert!(spent <= 1, "{spent}");
        assert_eq!(allowances.per_key.len(), 2);
        // Hours that ended are dropped before anyone is: a key past the cap after both hours
        // ended finds room, and the map holds what is live.
        for i in 10..20 {
            assert_eq!(allowances.take(&key(i), 2 * hour + u64::from(i), 2), Ok(()));
        }
        assert_eq!(allowances.per_key.len(), 2);
    }

    /// A flood of fresh keys within one hour, past the cap this witness runs with: every
    /// one is taken (a flood refuses nobody's first attestation), the map never holds more
    /// than the cap, and a key counted after the flood is limited as before.
    #[test]
    fn a_flood_of_fresh_keys_refuses_nobody_and_stays_within_the_cap() {
        let mut allowances = Allowances::new(MAX_ALLOWANCE_KEYS);
        let fresh = |i: u32| {
            let mut seed = [7; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            chainiac_cosi::SecretKey::from_seed(&seed).public_key()
        };
        let flood = MAX_ALLOWANCE_KEYS as u32 + 4_096;
        for i in 0..flood {
            assert_eq!(allowances.take(&fresh(i), 1_000 + u64::from(i / 64), 1), Ok(()), "key {i}");
        }
        assert_eq!(allowances.per_key.len(), MAX_ALLOWANCE_KEYS);
        let last = fresh(flood - 1);
        assert_eq!(allowances.take(&last, 5_000, 1), Err(AllowanceSpent { used: 1 }), "still counted");
    }
}
