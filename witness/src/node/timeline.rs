//! The timeline: the heads it records (kept in memory, updated per append, restored at
//! start), checking proposed timeline blocks and their change lists, and extending the
//! timeline on a timer.

use super::*;

impl Node {
    /// The heads of every chain here that is not a timeline, as a timeline would record them.
    pub fn head_set(&self) -> Result<Arc<HeadSet>, ErrorReply> {
        Ok(self.current_heads.lock().expect("lock").set())
    }

    /// A timeline block must carry its own time and the root of the heads this node holds.
    pub(super) fn check_timeline_block(&self, block: &Block) -> Result<(), ErrorReply> {
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
    pub(super) fn timeline_set(&self, chain: Option<ChainId>, index: u64) -> Option<Arc<HeadSet>> {
        if index == 0 {
            return Some(Arc::new(HeadSet::default()));
        }
        let timelines = self.timelines.lock().expect("lock");
        timelines.get(&chain?).filter(|(i, _, _)| *i == index).map(|(_, _, set)| set.clone())
    }

    /// After a timeline block is appended: remember the head set it commits to.
    pub(super) fn note_appended(&self, block: &Block) {
        if block.header.kind == chainiac_release::KIND_REBUILDS {
            self.note_rebuilds(block);
            return;
        }
        if block.header.kind == KIND_RELEASE {
            // `with_releases` reads the blocks appended since its last read.
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
    pub(super) fn record_timeline_heads(
        &self,
        timeline: &ChainId,
        index: u64,
        set: &HeadSet,
        before: Option<&HeadSet>,
    ) {
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

    pub(super) async fn maybe_extend_timeline(
        self: &Arc<Self>,
        chain: ChainId,
        interval: u64,
    ) -> Result<(), ErrorReply> {
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
        // A head that moved meanwhile is fresh: nothing to do until the next tick.
        self.extend_timeline_once(chain, None).await.0.map(|_| ())
    }

    /// Leads the next timeline block: the root over this node's heads now, its change list
    /// when it holds the head's heads (unless listed proposals kept failing), and the
    /// committee `appointment` appoints, if any.
    pub(super) async fn extend_timeline(
        self: &Arc<Self>,
        chain: ChainId,
        appointment: Option<chainiac_skipchain::Appointment>,
    ) -> Result<Block, ErrorReply> {
        // The entry is made for the head read then: if another block was appended before
        // this node holds the round (its own timer's, or another leader's), it is made again
        // on the new head, rather than proposed with a time that no longer fits ("timeline
        // entry time differs from the block's time"). An entry with a change list that
        // members refused (one that appended the block before without checking it may not
        // hold its heads: "cannot check the change list") is made again, and after
        // `LISTED_FAILURES` without a list, which every member can check: a committee change
        // is not lost to a list, which only saves clients bytes.
        let mut last = None;
        for _ in 0..LISTED_FAILURES + 4 {
            match self.extend_timeline_once(chain, appointment.clone()).await {
                (Err(e), _) if e.code == ErrorCode::Conflict && e.message == HEAD_MOVED => last = Some(e),
                (Err(e), true) => last = Some(e),
                (led, _) => return led,
            }
        }
        Err(last.expect("tried"))
    }

    /// One attempt of [`Node::extend_timeline`] ([`HEAD_MOVED`] if the head moved), and
    /// whether its entry had a change list.
    async fn extend_timeline_once(
        self: &Arc<Self>,
        chain: ChainId,
        appointment: Option<chainiac_skipchain::Appointment>,
    ) -> (Result<Block, ErrorReply>, bool) {
        let head = match self.head(&chain) {
            Ok(head) => head,
            Err(e) => return (Err(e), false),
        };
        let set = match self.head_set() {
            Ok(set) => set,
            Err(e) => return (Err(e), false),
        };
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
        let led = self.lead_on(chain, proposal, Some(head.index())).await;
        if led.as_ref().is_err_and(|e| e.code == ErrorCode::Conflict && e.message == HEAD_MOVED) {
            return (led, listed);
        }
        let mut refused = self.lists_refused.lock().expect("lock");
        match (&led, listed) {
            (Err(_), true) => *refused.entry(chain).or_insert(0) += 1,
            _ => {
                refused.remove(&chain);
            }
        }
        drop(refused);
        (led, listed)
    }
}
