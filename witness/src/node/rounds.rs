//! Rounds: reservations, durable promises and re-leading what was promised (SPEC §9.1),
//! leading a round over the tree, and taking part in others' (announce, challenge, abort,
//! commit).

use super::*;

impl Node {
    /// Holds `(chain, index)` for `id` for a while, so that concurrent leaders do not split
    /// the witnesses between two blocks before any response is given.
    pub(super) fn reserve(&self, chain: ChainId, index: u64, id: BlockId) -> Result<(), ErrorReply> {
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

    pub(super) fn release(&self, chain: ChainId, index: u64) {
        self.reservations.lock().expect("lock").retain(|(c, i), _| !(*c == chain && *i <= index));
    }

    /// Durably promises to sign no block but `block` at its index; refuses if another was
    /// promised. Called before any partial response leaves this node. The block is kept
    /// (unsigned) so that a leader can re-lead it if this round dies (§9.1).
    pub(super) fn promise(&self, block: &Block) -> Result<(), ErrorReply> {
        blocking(|| self.promise_now(block))
    }

    pub(super) fn promise_now(&self, block: &Block) -> Result<(), ErrorReply> {
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
    pub(super) fn promised(&self, chain: &ChainId, index: u64) -> Result<Option<Promised>, ErrorReply> {
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
    pub(super) fn forget_promises(&self, chain: &ChainId, index: u64) {
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
    pub(super) fn get_promise(&self, caller: PublicKey, chain: ChainId, index: u64) -> Reply {
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
    pub(super) async fn gather_promises(
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
        // Members presumed down (they just missed a round) are not waited for.
        let now = Instant::now();
        let down: HashSet<PublicKey> =
            self.down.lock().expect("lock").iter().filter(|(_, until)| **until > now).map(|(k, _)| *k).collect();
        let others: Vec<usize> = (0..roster.len())
            .filter(|&i| i != me && roster.member(i).is_some_and(|m| !down.contains(&m.key)))
            .collect();
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
    pub(super) async fn adopt(
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

    pub(super) fn chain_lock(&self, chain: ChainId) -> Arc<tokio::sync::Mutex<()>> {
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
    pub(super) async fn run_round(
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
            let ballot = attempt as u64;
            let session = Session::new(roster.clone(), session_id, BlockSignature::message(&id, ballot).to_vec());
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
                ballot,
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
                    block.signature = Some(BlockSignature { ballot, signature });
                    self.append(&block).map_err(store_err)?;
                    self.release(chain, index);
                    self.metrics.record_round(started.elapsed());
                    self.metrics.blocks_signed.fetch_add(1, Ordering::Relaxed);
                    info!(chain = %chain.to_hex()[..16], index, attempt, ms = started.elapsed().as_millis() as u64, "block appended");
                    // Answer once every live witness has the block, so that a client reading
                    // from any of them next sees it.
                    let commit = Request::Commit { block: block.clone() };
                    self.broadcast(&roster, &commit, true).await;
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
                            self.broadcast(&newcomers, &commit, true).await;
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
    pub(super) fn presumed_down(&self, roster: &Roster, threshold: usize, me: usize) -> Mask {
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
    pub(super) fn note_reachability(&self, roster: &Roster, tree: &Tree, unreachable: &[u32]) {
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
    pub(super) fn wait_for_children(&self, tree: &Tree, member: usize) -> Duration {
        let below = tree.depth().saturating_sub(tree.depth_of(member).unwrap_or(0)).max(1);
        self.config.peer_timeout() * below as u32
    }

    pub(super) async fn ask_children(
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

    pub(super) async fn abort_children(
        self: &Arc<Self>,
        roster: &Arc<Roster>,
        tree: &Tree,
        me: usize,
        session: SessionId,
    ) {
        let children = tree.children(me);
        self.ask_children(roster, &children, Request::Abort { session }, self.config.peer_timeout()).await;
    }

    pub(super) async fn on_announce(
        self: &Arc<Self>,
        caller: PublicKey,
        from: SocketAddr,
        announce: Announce,
    ) -> Reply {
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
        let session =
            Session::new(roster.clone(), announce.session, BlockSignature::message(&id, announce.ballot).to_vec());
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

    pub(super) async fn on_challenge(
        self: &Arc<Self>,
        caller: PublicKey,
        session_id: SessionId,
        challenge: Challenge,
    ) -> Reply {
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
    pub(super) fn on_abort(self: &Arc<Self>, caller: PublicKey, session: SessionId) -> Reply {
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

    pub(super) async fn on_commit(self: &Arc<Self>, caller: PublicKey, from: SocketAddr, block: Block) -> Reply {
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
