//! Rounds: reservations, agreement states (votes and locks, SPEC §9.1, by the rules of
//! [`crate::agreement`]) and re-leading a locked block, leading a round over the tree, and
//! taking part in others' (announce, challenge, abort, commit).

use super::*;
use std::collections::BTreeMap;

impl Node {
    /// Holds `(chain, index)` for `id` for a while, so that concurrent leaders do not split
    /// the witnesses between two blocks before any response is given. `takeover`: the block
    /// is re-led with a complete certificate, so it replaces whatever is held (a reservation
    /// is only a way to settle racing leaders; the one a dead leader left would otherwise
    /// hold the index against its own recovery for a whole lease).
    pub(super) fn reserve(&self, chain: ChainId, index: u64, id: BlockId, takeover: bool) -> Result<(), ErrorReply> {
        let now = Instant::now();
        let mut reservations = self.reservations.lock().expect("lock");
        reservations.retain(|_, (_, until)| *until > now);
        match reservations.get(&(chain, index)) {
            Some((held, _)) if *held != id && !takeover => {
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

    /// This node's agreement state at `(chain, index)` (§9.1; the default when none).
    pub(super) fn index_state(&self, chain: &ChainId, index: u64) -> Result<IndexState, ErrorReply> {
        let db = self.store.db();
        let cf = db.cf_handle(CF_AGREEMENT).expect("agreement column family is opened at start");
        let internal = |e: String| err(ErrorCode::Internal, format!("agreement store: {e}"));
        match db.get_pinned_cf(cf, index_key(chain, index)).map_err(|e| internal(e.to_string()))? {
            None => Ok(IndexState::default()),
            Some(value) => chainiac_skipchain::decode_exact(&value).map_err(|e| internal(e.to_string())),
        }
    }

    /// Writes the agreement state at `(chain, index)`, synced. The caller holds
    /// `agreement_lock`, which `forget_index_states` takes too: no state is written at an
    /// index already filled (its earlier state may just have been dropped).
    fn store_index_state(&self, chain: &ChainId, index: u64, state: &IndexState) -> Result<(), ErrorReply> {
        let filled = self.store.head(chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        if filled.is_some_and(|head| head.index >= index) {
            return Err(err(ErrorCode::Conflict, format!("index {index} is filled; propose on the new head")));
        }
        let db = self.store.db();
        let cf = db.cf_handle(CF_AGREEMENT).expect("agreement column family is opened at start");
        let bytes = postcard::to_allocvec(state).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        db.put_cf_opt(cf, index_key(chain, index), bytes, &options)
            .map_err(|e| err(ErrorCode::Internal, format!("agreement store: {e}")))
    }

    /// Rule 1 of §9.1: votes for `block` at `ballot` if the agreement rules allow, storing
    /// the raised ballot (synced) before the vote leaves this node; a ballot too far above
    /// this node's raises it one step (`agreement::MAX_BALLOT_STEP`), stored too.
    pub(super) fn cast_vote(
        &self,
        head: &ChainState,
        block: &Block,
        ballot: u64,
        justification: Option<&Certificate>,
    ) -> Result<Vote, ErrorReply> {
        blocking(|| {
            let (chain, index, id) = (head.chain, block.header.index, block.id());
            let roster = head.committee.roster();
            let me = self.member_of(roster)?;
            let justification = justification.map(|c| checked_certificate(roster, head.committee.threshold(), &id, c));
            let _guard = self.agreement_lock.lock().expect("lock");
            let mut state = self.index_state(&chain, index)?;
            let mut durable = core_state(roster, &state);
            let voted = durable.vote(agreement_committee(&head.committee), &id, ballot, justification.as_ref());
            if let Err(refusal) = voted {
                if matches!(refusal, agreement::Refusal::TooFar { .. }) {
                    state.voted = durable.voted;
                    self.store_index_state(&chain, index, &state)?;
                }
                return Err(refused(index, refusal));
            }
            state.voted = durable.voted;
            self.store_index_state(&chain, index, &state)?;
            Ok(Vote::sign(&self.key, me as u32, &id, ballot))
        })
    }

    /// Rule 3 of §9.1: locks on `block` with `certificate` (stored, synced) before this
    /// node's partial signature over it at the certificate's ballot leaves.
    pub(super) fn take_lock(
        &self,
        head: &ChainState,
        block: &Block,
        certificate: &Certificate,
    ) -> Result<(), ErrorReply> {
        blocking(|| {
            let (chain, index, id) = (head.chain, block.header.index, block.id());
            let roster = head.committee.roster();
            let checked = checked_certificate(roster, head.committee.threshold(), &id, certificate);
            let _guard = self.agreement_lock.lock().expect("lock");
            let mut state = self.index_state(&chain, index)?;
            let mut durable = core_state(roster, &state);
            durable.lock(agreement_committee(&head.committee), &checked).map_err(|refusal| refused(index, refusal))?;
            state.voted = durable.voted;
            // Only the valid votes are kept, one per member.
            let mut votes: Vec<Vote> = Vec::with_capacity(checked.voters.len());
            for vote in &certificate.votes {
                if checked.voters.contains(&(vote.member as usize)) && !votes.iter().any(|v| v.member == vote.member) {
                    votes.push(*vote);
                }
            }
            let unsigned = Block { signature: None, ..block.clone() };
            state.lock = Some((unsigned, Certificate { ballot: certificate.ballot, votes }));
            self.store_index_state(&chain, index, &state)
        })
    }

    /// An agreement state ends when its index is filled: drops this chain's states up to
    /// `index`.
    pub(super) fn forget_index_states(&self, chain: &ChainId, index: u64) {
        let _guard = self.agreement_lock.lock().expect("lock");
        let db = self.store.db();
        let cf = db.cf_handle(CF_AGREEMENT).expect("agreement column family is opened at start");
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(cf, index_key(chain, 0), index_key(chain, index));
        batch.delete_cf(cf, index_key(chain, index));
        if let Err(e) = db.write(batch) {
            warn!(chain = %chain.to_hex()[..16], "could not drop filled agreement states: {e}");
        }
    }

    /// A `GetIndexState` from a member of the chain's committee: this node's agreement
    /// state at an unfilled index (the default at a filled one).
    pub(super) fn get_index_state(&self, caller: PublicKey, chain: ChainId, index: u64) -> Reply {
        let head = self.head(&chain)?;
        self.authorize(&caller, head.committee.roster())?;
        let state = if index <= head.index() { IndexState::default() } else { self.index_state(&chain, index)? };
        Ok(Response::IndexState(Box::new(state)))
    }

    /// Rule 4 of §9.1: the states of the members at the index after `head` (this node's
    /// own and every member's that answers; a reported lock counts only with a complete
    /// certificate for a block at that index), and what to lead: the block of the highest
    /// lock with its certificate, or none (then the caller's own block), at a ballot above
    /// every ballot reported.
    pub(super) async fn plan_index(
        self: &Arc<Self>,
        head: &ChainState,
    ) -> Result<(u64, Option<(Block, Certificate)>), ErrorReply> {
        let (chain, index) = (head.chain, head.index() + 1);
        let roster = Arc::new(head.committee.roster().clone());
        let me = self.member_of(&roster)?;
        let own = self.index_state(&chain, index)?;
        let mut reports: Vec<IndexState> = vec![own.clone()];
        // Members presumed down (they just missed a round) are asked only if the others are
        // too few: a dead peer then costs no timeout, and a slow one is not left out for good.
        let now = Instant::now();
        let down: HashSet<PublicKey> =
            self.down.lock().expect("lock").iter().filter(|(_, until)| **until > now).map(|(k, _)| *k).collect();
        let is_down = |i: usize| roster.member(i).is_some_and(|m| down.contains(&m.key));
        let up: Vec<usize> = (0..roster.len()).filter(|&i| i != me && !is_down(i)).collect();
        let presumed: Vec<usize> = (0..roster.len()).filter(|&i| i != me && is_down(i)).collect();
        for (pass, asked) in [up, presumed].into_iter().enumerate() {
            if pass > 0 && reports.len() >= head.committee.threshold() {
                break;
            }
            if asked.is_empty() {
                continue;
            }
            let request = Request::GetIndexState { chain, index };
            for (_, reply) in self.ask_children(&roster, &asked, request, self.config.peer_timeout()).await {
                if let Ok(Response::IndexState(mut state)) = reply {
                    let valid = state.lock.as_ref().is_some_and(|(block, certificate)| {
                        block.header.chain == Some(chain)
                            && block.header.index == index
                            && checked_certificate(&roster, head.committee.threshold(), &block.id(), certificate)
                                .is_complete(roster.len(), head.committee.threshold())
                    });
                    if !valid {
                        state.lock = None;
                    }
                    reports.push(*state);
                }
            }
        }
        let committee = agreement_committee(&head.committee);
        let durables: Vec<agreement::Durable<BlockId>> = reports.iter().map(|r| core_state(&roster, r)).collect();
        let Some(plan) = agreement::plan(committee, &durables, BlockId([0; 32]), own.voted) else {
            return Err(err(
                ErrorCode::Unavailable,
                format!("only {} of {} members reported their state at index {index}", reports.len(), roster.len()),
            ));
        };
        let locked = plan.justification.as_ref().and_then(|c| {
            reports
                .iter()
                .find_map(|r| r.lock.clone().filter(|(block, lock)| block.id() == c.block && lock.ballot == c.ballot))
        });
        Ok((plan.ballot, locked))
    }

    pub(super) fn chain_lock(&self, chain: ChainId) -> Arc<tokio::sync::Mutex<()>> {
        self.chain_locks.lock().expect("lock").entry(chain).or_default().clone()
    }

    /// Leads a round for the block `proposal` makes on top of the chain's head, appends the
    /// signed block and tells the other witnesses. Where members are locked on another block
    /// at that index (its leader died or withheld the signature), that block is re-led first
    /// and the proposal goes on the next index; a timeline proposal ends there (the
    /// timeline moved).
    pub async fn lead(self: &Arc<Self>, chain: ChainId, mut proposal: Proposal) -> Result<Block, ErrorReply> {
        let lock = self.chain_lock(chain);
        let _one_round_per_chain = lock.lock().await;
        // A timeline proposal that loses its index is not built again on the new head: its
        // entry records the heads and time of its own moment (a tick is done: the timeline
        // moved; a committee change is proposed again by its caller).
        let tick = proposal.kind == KIND_TIMELINE;
        for pass in 0..=MAX_ADOPTIONS {
            if pass > 0 {
                // Another leader is at this index: step back for a random while, as for
                // `Busy`, so that two leaders do not outbid each other's ballots forever.
                back_off().await;
            }
            let head = self.head(&chain)?;
            let index = head.index() + 1;
            // The fast path: this node's own block at the ballot after its own, no gathering
            // first. A node locked here signs nothing but its lock's block: that goes first.
            let own = self.index_state(&chain, index)?;
            let mut failure = None;
            if own.lock.is_none() {
                let block = self.own_block(&head, &mut proposal)?;
                match self.run_round(&head, block, next_ballot(own.voted)?, None).await {
                    // Too few voted or signed: members may be locked on a block whose leader
                    // died, or past this ballot (members deeper in the tree answer their
                    // parent, not this node, so any shortfall is a reason to ask).
                    Err(e) if matches!(e.code, ErrorCode::Promised | ErrorCode::Unavailable) => failure = Some(e),
                    // Another leader filled the index first: this proposal goes on the new head.
                    Err(e) if e.code == ErrorCode::Conflict && !tick => continue,
                    done => return done,
                }
            }
            // Too few members answer to plan: the round's own failure says more.
            let (ballot, locked) = match self.plan_index(&head).await {
                Ok(plan) => plan,
                Err(e) => return Err(failure.unwrap_or(e)),
            };
            let Some((block, certificate)) = locked else {
                // Nobody is locked: this node's block again, above every ballot reported —
                // after a random pause if another leader's ballot beat the first try.
                if failure.as_ref().is_some_and(|e| e.code == ErrorCode::Promised) {
                    back_off().await;
                }
                let block = self.own_block(&head, &mut proposal)?;
                match self.run_round(&head, block, ballot, None).await {
                    // Members moved past the ballot meanwhile (or a liar's ballot raised them
                    // a step): gather again.
                    Err(e) if e.code == ErrorCode::Promised => continue,
                    Err(e) if e.code == ErrorCode::Conflict && !tick => continue,
                    done => return done,
                }
            };
            self.check_to_sign(&head, &block, Some(&certificate))?;
            info!(chain = %chain.to_hex()[..16], index, ballot, "re-leading the locked block");
            let adopted = match self.run_round(&head, block, ballot, Some(certificate)).await {
                Err(e) if e.code == ErrorCode::Promised => continue,
                done => done?,
            };
            self.metrics.blocks_adopted.fetch_add(1, Ordering::Relaxed);
            let same = adopted.header.kind == proposal.kind
                && adopted.payload == proposal.payload
                && adopted.committee == proposal.committee
                && adopted.policy == proposal.policy;
            if same {
                return Ok(adopted); // a retried proposal whose first leader died after the locks
            }
            if proposal.kind == KIND_TIMELINE {
                if proposal.committee.is_some() {
                    return Err(err(
                        ErrorCode::Conflict,
                        format!("index {index} held a locked timeline block, now appended; propose the change again"),
                    ));
                }
                return Ok(adopted); // the timeline moved, which is what a tick asks
            }
        }
        Err(err(ErrorCode::Unavailable, "every index tried held another locked block; propose again"))
    }

    /// The block `proposal` makes on `head`, stamped now (timeline blocks keep their entry's
    /// time), checked by every rule.
    fn own_block(&self, head: &ChainState, proposal: &mut Proposal) -> Result<Block, ErrorReply> {
        if proposal.kind != KIND_TIMELINE {
            proposal.timestamp_ms = now_ms().max(head.header.timestamp_ms);
        }
        let block = head
            .propose(proposal.clone(), |i| self.store.block_id(&head.chain, i).ok().flatten())
            .map_err(|e| err(ErrorCode::Refused, e.to_string()))?;
        self.check_block(head, &block)?;
        Ok(block)
    }

    /// One round for `block` on top of `head` from ballot `first_ballot` (each attempt one
    /// ballot higher; faulty members left out), then the append and the commit to every
    /// member. `justification`: the certificate of a locked block being re-led.
    pub(super) async fn run_round(
        self: &Arc<Self>,
        head: &ChainState,
        mut block: Block,
        first_ballot: u64,
        justification: Option<Certificate>,
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
            self.reserve(chain, index, id, justification.is_some())?;
            let mut session_id = [0u8; 32];
            OsRng.fill_bytes(&mut session_id);
            let session_id = SessionId(session_id);
            // Each attempt is a ballot of its own: members vote at most once per ballot.
            let ballot = first_ballot.saturating_add(attempt as u64 - 1);
            let own_vote = match self.cast_vote(head, &block, ballot, justification.as_ref()) {
                Ok(vote) => vote,
                Err(e) => {
                    self.release(chain, index);
                    self.metrics.rounds_failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let mut votes: BTreeMap<u32, Vote> = BTreeMap::from([(own_vote.member, own_vote)]);
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
                justification: justification.clone(),
            };
            let wait = self.wait_for_children(&tree, me);
            let mut busy = false;
            let mut promised_elsewhere = 0;
            // Children that answered, if only with a refusal: up, whatever the round says.
            let mut answered: Vec<u32> = Vec::new();
            for (child, reply) in
                self.ask_children(&roster, &tree.children(me), Request::Announce(announce), wait).await
            {
                if matches!(reply, Err(CallError::Remote(_))) {
                    answered.push(child as u32);
                }
                match reply {
                    Ok(Response::Voted { commitment, votes: subtree }) => {
                        if let Err(e) = leader.aggregator().receive_commitment(child, &commitment) {
                            warn!(member = child, "bad commitment: {e}");
                        }
                        // Only votes of the child's subtree count, each checked, one a member;
                        // none is checked once the certificate is complete.
                        let below = tree.subtree(child);
                        for vote in subtree.into_iter().take(roster.len()) {
                            if votes.len() >= threshold {
                                break;
                            }
                            let member = vote.member as usize;
                            let valid = below.contains(member)
                                && !votes.contains_key(&vote.member)
                                && roster.member(member).is_some_and(|m| vote.verify(&m.key, &id, ballot));
                            if valid {
                                votes.insert(vote.member, vote);
                            }
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
                    let silent: Vec<u32> = unreachable.iter().copied().filter(|u| !answered.contains(u)).collect();
                    self.note_reachability(&roster, &tree, &silent);
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
                    if roster.len() - promised_elsewhere < threshold {
                        // So many members are locked elsewhere or past this ballot that this
                        // block cannot pass here: the caller gathers their states.
                        last_error = err(
                            ErrorCode::Promised,
                            format!("{promised_elsewhere} member(s) are locked on another block at index {index} or voted past ballot {ballot}"),
                        );
                        break;
                    }
                    if busy && attempt < MAX_ATTEMPTS {
                        // Another leader holds some witnesses for its block at this index:
                        // step back for a random while so that one of us wins.
                        self.release(chain, index);
                        back_off().await;
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
            if votes.len() < threshold {
                // Committed but not voted: a parent dropped its subtree's votes, or a member
                // committed without voting. Children whose subtree holds such a member are
                // left out of the next attempt, as a faulty member is.
                let committed = leader.aggregator().expected_responders();
                for child in withheld_votes(&tree, me, &committed, |m| votes.contains_key(&(m as u32))) {
                    warn!(member = child, "its subtree committed without its votes: left out of the next attempt");
                    excluded.insert(child);
                }
                last_error = err(
                    ErrorCode::Unavailable,
                    format!(
                        "only {} of {} members voted at ballot {ballot}, {threshold} must",
                        votes.len(),
                        roster.len()
                    ),
                );
                self.abort_children(&roster, &tree, me, session_id).await;
                continue;
            }
            let certificate = Certificate { ballot, votes: votes.into_values().collect() };
            if let Err(e) = self.take_lock(head, &block, &certificate) {
                self.abort_children(&roster, &tree, me, session_id).await;
                last_error = e;
                break;
            }
            let own = nonces.respond(&session, &self.key, &challenge).map_err(protocol_err)?;
            leader.aggregator().receive_response(me, &own).map_err(protocol_err)?;
            let responders: Vec<usize> =
                leader.aggregator().expected_responders().into_iter().filter(|&m| m != me).collect();
            let request = Request::Challenge { session: session_id, challenge, certificate };
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
        let justified = self.check_to_sign(&head, &announce.block, announce.justification.as_ref())?;
        let block = announce.block.clone();
        let id = block.id();
        // A member the rules keep from voting says so before it holds the index (a ballot
        // too far is left to `cast_vote`, which raises this member's ballot).
        let mut durable = core_state(&roster, &self.index_state(&chain, index)?);
        let justification =
            announce.justification.as_ref().map(|c| checked_certificate(&roster, head.committee.threshold(), &id, c));
        match durable.vote(agreement_committee(&head.committee), &id, announce.ballot, justification.as_ref()) {
            Ok(()) | Err(agreement::Refusal::TooFar { .. }) => {}
            Err(refusal) => return Err(refused(index, refusal)),
        }
        self.reserve(chain, index, id, justified)?;
        let vote = match self.cast_vote(&head, &block, announce.ballot, announce.justification.as_ref()) {
            Ok(vote) => vote,
            Err(refusal) => {
                // Not this block: its reservation would only hold the index against the one
                // this node may vote for.
                self.reservations.lock().expect("lock").retain(|k, (held, _)| *k != (chain, index) || *held != id);
                return Err(refusal);
            }
        };
        let mut votes = vec![vote];
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
                if let Ok(Response::Voted { commitment, votes: subtree }) = reply {
                    if let Err(e) = aggregator.receive_commitment(child, &commitment) {
                        warn!(member = child, "bad commitment: {e}");
                    }
                    // Passed up unchecked (the leader checks each), but only the child's
                    // subtree's, one a member: a liar below cannot crowd out the others.
                    let below = tree.subtree(child);
                    for vote in subtree.into_iter().take(roster.len()) {
                        let member = vote.member as usize;
                        if below.contains(member) && !votes.iter().any(|v| v.member == vote.member) {
                            votes.push(vote);
                        }
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
            RoundState {
                chain,
                block,
                ballot: announce.ballot,
                session,
                member: me,
                tree,
                nonces,
                aggregator,
                expires,
            },
        );
        Ok(Response::Voted { commitment, votes })
    }

    pub(super) async fn on_challenge(
        self: &Arc<Self>,
        caller: PublicKey,
        session_id: SessionId,
        challenge: Challenge,
        certificate: Certificate,
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
        let RoundState { chain, block, ballot, session, member: me, tree, nonces, mut aggregator, .. } = state;
        // The share leaves over `id || ballot` of this session: the lock must be at that ballot.
        if certificate.ballot != ballot {
            let (index, id) = (block.header.index, block.id());
            self.reservations.lock().expect("lock").retain(|k, (held, _)| *k != (chain, index) || *held != id);
            return Err(err(
                ErrorCode::BadRequest,
                format!("the certificate is for ballot {}, this round's is {ballot}", certificate.ballot),
            ));
        }
        let roster = session.roster().clone();
        let head = self.head(&chain)?;
        if head.index() + 1 != block.header.index {
            return Err(err(ErrorCode::Conflict, format!("chain moved to index {} during the round", head.index())));
        }
        if let Some(aggregator) = aggregator.as_mut() {
            aggregator.receive_challenge(&challenge).map_err(protocol_err)?;
        }
        self.take_lock(&head, &block, &certificate)?;
        let own = nonces.respond(&session, &self.key, &challenge).map_err(protocol_err)?;
        let Some(mut aggregator) = aggregator else {
            return Ok(Response::Signed(own));
        };
        aggregator.receive_response(me, &own).map_err(protocol_err)?;
        let responders: Vec<usize> = aggregator.expected_responders().into_iter().filter(|&m| m != me).collect();
        let wait = self.wait_for_children(&tree, me);
        let request = Request::Challenge { session: session_id, challenge, certificate };
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

/// A random pause of 50–450 ms: how racing leaders at one index settle on one of them.
async fn back_off() {
    tokio::time::sleep(Duration::from_millis(50 + OsRng.next_u32() as u64 % 400)).await;
}

/// The children of `me` in `tree` whose subtree holds a member that committed (`committed`)
/// without a valid vote: its parent dropped the votes, or it sent none. Votes ride in the
/// same answer as commitments, so an honest subtree never lands here.
fn withheld_votes(tree: &Tree, me: usize, committed: &[usize], voted: impl Fn(usize) -> bool) -> Vec<usize> {
    tree.children(me)
        .into_iter()
        .filter(|&child| {
            let below = tree.subtree(child);
            committed.iter().any(|&m| below.contains(m) && !voted(m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent that passes its subtree's commitments up but drops their votes is named, and
    /// so is a leaf that committed without voting; subtrees whose votes all arrived are not.
    #[test]
    fn children_whose_subtrees_lost_votes_are_named() {
        let tree = Tree::new(7, 0, 2, &Mask::empty(7));
        let children = tree.children(0);
        assert_eq!(children.len(), 2);
        let committed: Vec<usize> = (0..7).collect();
        assert_eq!(withheld_votes(&tree, 0, &committed, |_| true), Vec::<usize>::new());
        // Drop the votes of one grandchild: its subtree's root is named, the other is not.
        let lost = tree.children(children[1])[0];
        assert_eq!(withheld_votes(&tree, 0, &committed, |m| m != lost), vec![children[1]]);
        // A member that did not commit is not asked for a vote.
        let committed: Vec<usize> = committed.into_iter().filter(|&m| m != lost).collect();
        assert_eq!(withheld_votes(&tree, 0, &committed, |m| m != lost), Vec::<usize>::new());
    }
}
