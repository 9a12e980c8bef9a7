//! Read-only requests: heads, blocks, proofs (single and batched), timeline blocks and
//! their change lists, verifier agreement, the node's status and its chains page by page.

use super::*;

impl Node {
    pub(super) fn status(&self) -> Reply {
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
    pub(super) fn timeline_age_ms(&self) -> Option<u64> {
        let timelines: Vec<ChainId> = self.timeline_chains.lock().expect("lock").iter().copied().collect();
        let newest = timelines.iter().filter_map(|t| self.head(t).ok()).map(|h| h.header.timestamp_ms).max()?;
        Some(now_ms().saturating_sub(newest))
    }

    /// A page of heads after `after`, as stored (no committee decoded), and whether more
    /// chains follow.
    pub(super) fn chain_page(&self, after: Option<ChainId>) -> Result<(Vec<HeadInfo>, bool), ErrorReply> {
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

    pub(super) fn head_info(&self, chain: &ChainId) -> Result<HeadInfo, ErrorReply> {
        let head = self.head(chain)?;
        Ok(HeadInfo { chain: *chain, index: head.index(), id: head.id, header: head.header.clone() })
    }

    pub(super) fn head_index(&self, chain: &ChainId) -> Result<u64, ErrorReply> {
        answers::head_index(&self.store, chain)
    }

    pub(super) fn block_by_id(&self, id: &BlockId) -> Reply {
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
    pub(super) fn blocks(&self, chain: &ChainId, from: u64, count: u32) -> Reply {
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

    pub(super) fn proof(&self, chain: &ChainId, from: u64, to: Option<u64>, with_payload: bool) -> Reply {
        let to = match to {
            Some(to) => to,
            None => self.head_index(chain)?,
        };
        store::prove(&self.store, chain, from, to, with_payload).map(Response::Proof).map_err(store_err)
    }

    pub(super) fn proofs(&self, queries: &[ProofQuery], with_payload: bool, held_appointments: Vec<[u8; 32]>) -> Reply {
        answers::proofs(&self.store, queries, with_payload, held_appointments).map(Response::Proofs)
    }

    pub(super) fn linked_proofs(
        &self,
        queries: &[LinkedQuery],
        with_payload: bool,
        held_appointments: Vec<[u8; 32]>,
    ) -> Reply {
        answers::linked_proofs(&self.store, queries, with_payload, held_appointments).map(Response::LinkedProofs)
    }

    /// The timeline block asked for, or the newest of any timeline this node serves.
    pub(super) fn known_timeline(&self, timeline: Option<ChainId>) -> Result<(ChainId, KnownTimeline), ErrorReply> {
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

    pub(super) fn timeline_info(&self, timeline: Option<ChainId>, chain: Option<ChainId>) -> Reply {
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

    pub(super) fn timeline_batch(&self, timeline: Option<ChainId>, chains: &[ChainId]) -> Reply {
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

    /// The blocks of `timeline` after `from` with their change lists, up to
    /// [`MAX_CHANGE_BLOCKS`] or the response budget, proven block by block; `NotFound` when
    /// this node lacks a list before its head within that page, refused when all the lists
    /// since `from` would take more than `max_bytes` (not 0).
    pub(super) fn timeline_changes(
        &self,
        timeline: &ChainId,
        from: u64,
        watched: Vec<ChainPrefix>,
        held_appointments: Vec<[u8; 32]>,
        max_bytes: u64,
    ) -> Reply {
        answers::check_changes_request(&watched, &held_appointments)?;
        let watched: std::collections::HashSet<ChainPrefix> = watched.into_iter().collect();
        if !self.timeline_chains.lock().expect("lock").contains(timeline) {
            return Err(err(ErrorCode::NotFound, "no such timeline here"));
        }
        // The newest block whose list (if any) is in place: a block just stored has its list
        // added a moment later, and must not look like one without.
        let head = self.timelines.lock().expect("lock").get(timeline).map(|(index, _, set)| (*index, set.clone()));
        let Some((head, everyone)) = head.filter(|&(head, _)| head >= from) else {
            return Err(err(ErrorCode::NotFound, format!("this witness has checked no timeline block after {from}")));
        };
        let lists = self.change_lists.lock().expect("lock").get(timeline).cloned().unwrap_or_default();
        answers::timeline_changes(
            &self.store,
            timeline,
            from,
            head,
            &lists,
            &watched,
            &everyone,
            held_appointments,
            max_bytes,
        )
        .map(Response::TimelineChanges)
    }

    /// Per verifier, how often it agreed with the majority on this chain's releases (from the
    /// attestations kept in every release block, agreeing or not).
    /// `GetTracker`: the bad-hash tracker over a release chain's release and rebuilds blocks
    /// (kept per chain with the index read up to: each request reads only the blocks since),
    /// and the rebuilders among them this node throttles on the chain.
    pub(super) fn tracker(&self, chain: &ChainId) -> Reply {
        if self.chain_kind(chain)? != KIND_RELEASE {
            return Err(err(ErrorCode::BadRequest, format!("chain {chain} is not a release chain")));
        }
        let head = self.head(chain)?;
        // Read outside the cache's lock (a long chain read from its start does not stall
        // other chains' answers); a full cache drops one chain, not all of them.
        let tracker = blocking(|| {
            let cached = self.trackers.lock().expect("lock").get(chain).cloned();
            let (read_to, mut tracker) = cached.unwrap_or_default();
            for index in read_to.saturating_add(1)..=head.index() {
                let Ok(Some(block)) = self.store.block(chain, index) else { continue };
                let time = block.header.timestamp_ms;
                match block.header.kind {
                    KIND_RELEASE => {
                        if let Ok(payload) = chainiac_release::ReleasePayload::from_bytes(&block.payload) {
                            tracker.release(index, time, &payload);
                        }
                    }
                    chainiac_release::KIND_REBUILDS => {
                        if let Ok(rebuilds) = chainiac_release::Rebuilds::from_bytes(&block.payload) {
                            tracker.rebuilds(time, &rebuilds);
                        }
                    }
                    _ => {}
                }
            }
            let read_to = read_to.max(head.index());
            let mut trackers = self.trackers.lock().expect("lock");
            if trackers.get(chain).is_none_or(|(there, _)| *there < read_to) {
                if trackers.len() >= 4096 && !trackers.contains_key(chain) {
                    if let Some(dropped) = trackers.keys().next().copied() {
                        trackers.remove(&dropped);
                    }
                }
                trackers.insert(*chain, (read_to, tracker.clone()));
            }
            tracker
        });
        let records = tracker.records();
        let throttled = records
            .iter()
            .filter_map(|r| self.throttled_until(&r.key, chain).map(|until| (r.key.to_bytes(), until)))
            .collect();
        let disputed = tracker.disputed().to_vec();
        Ok(Response::Tracker(chainiac_proto::message::TrackerReport { records, disputed, throttled }))
    }
}
