//! Rounds, the I/O half: agreement states on disk (votes and locks, SPEC §9.1, by the rules
//! of [`crate::agreement`]), the driver that carries out a [`LeaderRound`]'s actions
//! (head reads, gathering, the CoSi tree, appends, commits, catch-up), and taking part in
//! others' rounds (announce, challenge, abort, commit) through [`round::accept_announce`]
//! and [`round::accept_challenge`]. What to do next is decided in [`crate::round`].

use super::*;
use crate::round;
use std::collections::{BTreeMap, BTreeSet};

impl Node {
    /// Frees this node's reservations of the chain's indices up to `index`.
    pub(super) fn release(&self, chain: ChainId, index: u64) {
        self.reservations.lock().expect("lock").release(&chain, index);
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

    /// Rule 1 of §9.1 with the index's reservation ([`round::accept_announce`]): votes for
    /// `block` at `ballot` if the agreement rules allow and no other block holds the index
    /// here, storing the raised ballot (synced) before the vote leaves this node. The ballot
    /// must be `announcer`'s (whose vote the caller checked) and within this node's clock's
    /// frontier (rule 0). On `Ok` the index is held for the block for a lease.
    pub(super) fn vote_for(
        &self,
        head: &ChainState,
        block: &Block,
        ballot: u64,
        announcer: usize,
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
            let lease = Duration::from_millis(self.config.reservation_ms);
            let accepted = round::accept_announce(
                &mut durable,
                &mut self.reservations.lock().expect("lock"),
                Instant::now(),
                lease,
                &chain,
                index,
                agreement_committee(&head.committee),
                &id,
                ballot,
                announcer,
                crate::agreement::frontier(roster.len(), now_ms()),
                justification.as_ref(),
            );
            if durable.voted != state.voted {
                state.voted = durable.voted;
                if let Err(e) = self.store_index_state(&chain, index, &state) {
                    self.reservations.lock().expect("lock").release_block(&chain, index, &id);
                    return Err(e);
                }
            }
            accepted.map_err(|refusal| match refusal {
                round::AnnounceRefusal::Rules(refusal) => refused(index, refusal),
                round::AnnounceRefusal::Held(busy) => busy,
            })?;
            Ok(Vote::sign(&self.key, me as u32, &id, ballot))
        })
    }

    /// Rule 3 of §9.1 ([`round::accept_challenge`]): locks on `block` with `certificate`
    /// (stored, synced) before this node's partial signature over it at `session_ballot`,
    /// the ballot it voted at in the round, leaves.
    pub(super) fn take_lock(
        &self,
        head: &ChainState,
        block: &Block,
        session_ballot: u64,
        certificate: &Certificate,
    ) -> Result<(), ErrorReply> {
        blocking(|| {
            let (chain, index, id) = (head.chain, block.header.index, block.id());
            let roster = head.committee.roster();
            let checked = checked_certificate(roster, head.committee.threshold(), &id, certificate);
            let _guard = self.agreement_lock.lock().expect("lock");
            let mut state = self.index_state(&chain, index)?;
            let mut durable = core_state(roster, &state);
            round::accept_challenge(&mut durable, agreement_committee(&head.committee), session_ballot, &checked)
                .map_err(|refusal| match refusal {
                    round::ChallengeRefusal::Rules(refusal) => refused(index, refusal),
                    other => err(ErrorCode::BadRequest, other.to_string()),
                })?;
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
    /// state at an unfilled index (`Conflict` at a filled one: the asker missed the block).
    pub(super) fn get_index_state(&self, caller: PublicKey, chain: ChainId, index: u64) -> Reply {
        let head = self.head(&chain)?;
        self.authorize(&caller, head.committee.roster())?;
        if index <= head.index() {
            // The asker missed the block there: it catches up from this node (§9.1).
            return Err(err(
                ErrorCode::Conflict,
                format!("index {index} is filled; this chain is at {}", head.index()),
            ));
        }
        Ok(Response::IndexState(Box::new(self.index_state(&chain, index)?)))
    }

    /// Rule 4 of §9.1, the gathering half: the states at the index after `head` of the
    /// members `asked` that answer; a reported lock counts only with a complete certificate
    /// for a block at that index.
    /// Also returns the members that answered that the index is filled there.
    async fn gather_states(self: &Arc<Self>, head: &ChainState, asked: &[usize]) -> (Vec<IndexState>, Vec<usize>) {
        let (chain, index) = (head.chain, head.index() + 1);
        let roster = Arc::new(head.committee.roster().clone());
        let threshold = head.committee.threshold();
        let request = Request::GetIndexState { chain, index };
        let (mut reports, mut filled) = (Vec::with_capacity(asked.len()), Vec::new());
        for (member, reply) in self.ask_children(&roster, asked, request, self.config.peer_timeout()).await {
            if matches!(&reply, Err(CallError::Remote(e)) if e.code == ErrorCode::Conflict) {
                filled.push(member);
            }
            if let Ok(Response::IndexState(mut state)) = reply {
                let valid = state.lock.as_ref().is_some_and(|(block, certificate)| {
                    block.header.chain == Some(chain)
                        && block.header.index == index
                        && checked_certificate(&roster, threshold, &block.id(), certificate)
                            .is_complete(roster.len(), threshold)
                });
                if !valid {
                    state.lock = None;
                }
                reports.push(*state);
            }
        }
        (reports, filled)
    }

    pub(super) fn chain_lock(&self, chain: ChainId) -> Arc<tokio::sync::Mutex<()>> {
        self.chain_locks.lock().expect("lock").entry(chain).or_default().clone()
    }

    /// Leads a round for the block `proposal` makes on top of the chain's head, appends the
    /// signed block and tells the other witnesses. Where members are locked on another block
    /// at that index (its leader died or withheld the signature), that block is re-led first
    /// and the proposal goes on the next index; a timeline proposal ends there (the
    /// timeline moved). The decisions are [`round::LeaderRound`]'s; this carries them out.
    pub async fn lead(self: &Arc<Self>, chain: ChainId, proposal: Proposal) -> Result<Block, ErrorReply> {
        self.lead_on(chain, proposal, None).await
    }

    /// [`Node::lead`], for a proposal made for the head at `built_on` (a timeline entry: its
    /// time and change list are the head's successor's): if the head moved before this
    /// node holds the chain's round, it answers [`HEAD_MOVED`] at once, to be made again.
    pub(super) async fn lead_on(
        self: &Arc<Self>,
        chain: ChainId,
        mut proposal: Proposal,
        built_on: Option<u64>,
    ) -> Result<Block, ErrorReply> {
        let lock = self.chain_lock(chain);
        let _one_round_per_chain = lock.lock().await;
        if let Some(index) = built_on {
            if self.head(&chain)?.index() != index {
                return Err(err(ErrorCode::Conflict, HEAD_MOVED));
            }
        }
        // A timeline proposal that loses its index is not built again on the new head: its
        // entry records the heads and time of its own moment.
        let (mut machine, mut action) =
            LeaderRound::<BlockId>::new(self.config.branching as usize, proposal.kind == KIND_TIMELINE);
        let mut head = self.head(&chain)?;
        let first_head = head.index();
        // The locks this pass knows of (its own, and those members reported), to re-lead.
        let mut locks: Vec<(Block, Certificate)> = Vec::new();
        let mut block: Option<Block> = None;
        let mut attempt: Option<LedAttempt> = None;
        let mut started = Instant::now();
        loop {
            if action.abort {
                if let Some(a) = &attempt {
                    self.abort_children(&a.roster, &a.tree, a.me, a.session_id).await;
                }
            }
            if action.release {
                self.release(chain, head.index() + 1);
            }
            if action.round_failed {
                self.metrics.rounds_failed.fetch_add(1, Ordering::Relaxed);
            }
            if action.back_off {
                back_off().await;
            }
            let event = match action.step {
                Step::ReadHead => {
                    head = self.head(&chain)?;
                    let roster = head.committee.roster();
                    let me = self.member_of(roster)?;
                    let own = self.index_state(&chain, head.index() + 1)?;
                    locks = own.lock.iter().cloned().collect();
                    // Once the head moved during this proposal: is the new head the proposal
                    // itself (another leader re-led it from this node's locks)?
                    let mut proposal_appended = false;
                    for index in first_head + 1..=head.index() {
                        if let Ok(Some(appended)) = self.store.block(&chain, index) {
                            if is_proposal(&appended, &proposal) {
                                proposal_appended = true;
                                block = Some(appended);
                                break;
                            }
                        }
                    }
                    Event::Head {
                        index: head.index() + 1,
                        committee: agreement_committee(&head.committee),
                        me,
                        own: core_state(roster, &own),
                        presumed_down: self.down_members(roster),
                        hidden: self.hidden_members(roster),
                        proposal_appended,
                        frontier: crate::agreement::frontier(roster.len(), now_ms()),
                    }
                }
                Step::Gather { ask } => {
                    let (reports, filled) = self.gather_states(&head, &ask).await;
                    let own = self.index_state(&chain, head.index() + 1)?;
                    locks.extend(own.lock.iter().cloned());
                    locks.extend(reports.iter().filter_map(|r| r.lock.clone()));
                    let roster = head.committee.roster();
                    let reports = reports.iter().map(|r| core_state(roster, r)).collect();
                    let frontier = crate::agreement::frontier(roster.len(), now_ms());
                    Event::Gathered { own: core_state(roster, &own), reports, filled, frontier }
                }
                Step::Announce { proposed, ballot, attempt: number, excluded, at_frontier } => {
                    // Ballots pushed to the frontier: this node's next opens with the next
                    // epoch (at most two epochs away: plans count reports up to the frontier).
                    let members = head.committee.roster().len();
                    let wait = crate::agreement::opens_in_ms(ballot, members, now_ms());
                    if wait > 0 {
                        debug!(chain = %chain.to_hex()[..16], ballot, wait_ms = wait, "waiting for the ballot's epoch");
                        tokio::time::sleep(Duration::from_millis(wait.min(3 * crate::agreement::EPOCH_MS))).await;
                    }
                    let justification = match &proposed {
                        Proposed::Own => {
                            if number == 1 {
                                block = Some(self.own_block(&head, &mut proposal)?);
                            }
                            None
                        }
                        Proposed::Locked(wanted) => {
                            let found = locks.iter().find(|(b, c)| b.id() == wanted.block && c.ballot == wanted.ballot);
                            let (locked, certificate) = found.cloned().ok_or_else(|| {
                                err(ErrorCode::Internal, "the planned lock is not among those gathered")
                            })?;
                            if number == 1 {
                                info!(chain = %chain.to_hex()[..16], index = head.index() + 1, ballot, "re-leading the locked block");
                            }
                            block = Some(locked);
                            Some(certificate)
                        }
                    };
                    let current = block.as_ref().expect("set above");
                    if number == 1 {
                        started = Instant::now();
                        self.metrics.rounds_led.fetch_add(1, Ordering::Relaxed);
                        if !excluded.is_empty() {
                            self.metrics.peers_left_out.fetch_add(excluded.len() as u64, Ordering::Relaxed);
                        }
                    }
                    let checked = match &justification {
                        Some(certificate) => self.check_to_sign(&head, current, Some(certificate)).map(|_| ()),
                        None => Ok(()),
                    };
                    match checked {
                        Err(e) => Event::NotAnnounced(e),
                        Ok(()) => {
                            match self.announce(&head, current, ballot, justification, &excluded, at_frontier).await? {
                                Ok((mut led, outcome)) => {
                                    led.number = number;
                                    attempt = Some(led);
                                    Event::Announced(outcome)
                                }
                                Err(e) => Event::NotAnnounced(e),
                            }
                        }
                    }
                }
                Step::CatchUp { from } => {
                    let index = head.index() + 1;
                    let roster = head.committee.roster();
                    // From all of them at once, under one deadline: the first that serves the
                    // blocks ends it, and members that lie about the index cost this much per
                    // pass however many they are (one that answers `Conflict` first and then
                    // nothing cannot keep the honest ones from being asked).
                    let mut fetches = tokio::task::JoinSet::new();
                    for member in from.iter().filter_map(|&i| roster.member(i)).cloned() {
                        let node = self.clone();
                        fetches.spawn(async move {
                            let result = node.catch_up(chain, index, &member).await;
                            (member, result)
                        });
                    }
                    let first_served = async {
                        while let Some(done) = fetches.join_next().await {
                            match done {
                                Ok((_, Ok(()))) => break,
                                Ok((member, Err(e))) => {
                                    warn!(chain = %chain.to_hex()[..16], index, "{} said the index is filled, but: {}", member.address, e.message)
                                }
                                Err(_) => {}
                            }
                        }
                    };
                    let _ = tokio::time::timeout(self.config.peer_timeout() * 2, first_served).await;
                    drop(fetches); // the others stop at their next await; appends are whole
                    Event::CaughtUp { moved: self.head(&chain)?.index() >= index }
                }
                Step::Challenge { ballot, voters } => {
                    let led = attempt.as_mut().expect("a challenge follows an announce");
                    let current = block.as_ref().expect("a challenge follows an announce");
                    self.challenge(&head, current, led, ballot, &voters).await
                }
                Step::Append => {
                    let mut signed = block.take().expect("an append follows a signature");
                    let led = attempt.take().expect("an append follows a signature");
                    signed.signature = led.signature;
                    self.append(&signed).map_err(store_err)?;
                    self.release(chain, signed.header.index);
                    self.metrics.record_round(started.elapsed());
                    self.metrics.blocks_signed.fetch_add(1, Ordering::Relaxed);
                    info!(chain = %chain.to_hex()[..16], index = signed.header.index, attempts = led.number, ms = started.elapsed().as_millis() as u64, "block appended");
                    self.send_commit(&led.roster, &signed).await;
                    let is_proposal = is_proposal(&signed, &proposal);
                    if led.justified {
                        self.metrics.blocks_adopted.fetch_add(1, Ordering::Relaxed);
                    }
                    block = Some(signed);
                    Event::Appended { is_proposal }
                }
                Step::Done => return Ok(block.expect("done after an append")),
                Step::Adopted => {
                    // A committee change that an earlier attempt's locked block carried is
                    // on the chain all the same (a timeline's entry differs per attempt).
                    let same_change = block.as_ref().is_some_and(|b| b.committee == proposal.committee);
                    if proposal.committee.is_some() && !same_change {
                        return Err(err(
                            ErrorCode::Conflict,
                            format!(
                                "index {} held a locked timeline block, now appended; propose the change again",
                                head.index() + 1
                            ),
                        ));
                    }
                    return Ok(block.expect("adopted after an append"));
                }
                Step::Fail(e) => return Err(e),
            };
            action = machine.handle(event);
        }
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

    /// One attempt's announce: reserves the index, votes (stored), commits, and sends the
    /// announce down the tree rooted at this node without `excluded`. The outer error ends
    /// the proposal (no retry mends it); the inner one means the announce did not go out.
    /// `at_frontier`: a round against the clock (§9.1 rule 0): over a star, each phase
    /// waiting `agreement::FRONTIER_PHASE_MS` at most.
    async fn announce(
        self: &Arc<Self>,
        head: &ChainState,
        block: &Block,
        ballot: u64,
        justification: Option<Certificate>,
        excluded: &BTreeSet<usize>,
        at_frontier: bool,
    ) -> Result<Result<(LedAttempt, AnnounceOutcome), ErrorReply>, ErrorReply> {
        let chain = head.chain;
        let roster = Arc::new(head.committee.roster().clone());
        let me = self.member_of(&roster)?;
        let (id, index, threshold) = (block.id(), block.header.index, head.committee.threshold());
        if self.head(&chain)?.index() != head.index() {
            return Ok(Err(err(
                ErrorCode::Conflict,
                "the chain moved on while this block was proposed; propose again on the new head",
            )));
        }
        let own_vote = match self.vote_for(head, block, ballot, me, justification.as_ref()) {
            Ok(vote) => vote,
            Err(e) => {
                // Refused by the rules: an earlier attempt's reservation of this block goes
                // too, and only that (another leader's block may hold the index here).
                if e.code != ErrorCode::Busy {
                    self.reservations.lock().expect("lock").release_block(&chain, index, &id);
                    self.metrics.rounds_failed.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Err(e));
            }
        };
        let mut session_id = [0u8; 32];
        OsRng.fill_bytes(&mut session_id);
        let session_id = SessionId(session_id);
        let mut votes: BTreeMap<u32, Vote> = BTreeMap::from([(own_vote.member, own_vote)]);
        let session = Session::new(roster.clone(), session_id, BlockSignature::message(&id, ballot).to_vec());
        let mut mask = Mask::empty(roster.len());
        excluded.iter().for_each(|&i| mask.insert(i));
        let branching = if at_frontier { roster.len() as u32 } else { self.config.branching };
        let tree = Tree::new(roster.len(), me, branching as usize, &mask);
        let mut leader =
            Leader::new(session.clone(), &tree, threshold).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        let (nonces, own) = commit(&session, me, &self.key, &mut OsRng).map_err(protocol_err)?;
        leader.aggregator().receive_commitment(me, &own).map_err(protocol_err)?;
        let mut announce = Announce {
            block: block.clone(),
            session: session_id,
            leader: me as u32,
            branching,
            excluded: mask.as_bytes().to_vec(),
            ballot,
            justification: justification.clone(),
            leader_signature: [0; 64],
        };
        announce.sign(&self.key);
        let mut wait = self.wait_for_children(&tree, me);
        if at_frontier {
            wait = wait.min(Duration::from_millis(crate::agreement::FRONTIER_PHASE_MS));
        }
        // The last ballot of the frontier until after this round ends: nobody can be past it.
        let unbeatable = crate::agreement::unbeatable(ballot, roster.len(), now_ms());
        let (mut busy, mut promised_elsewhere, mut filled) = (false, Vec::new(), Vec::new());
        // Children that answered, if only with a refusal: up, whatever the round says.
        let mut answered: Vec<u32> = Vec::new();
        for (child, reply) in self.ask_children(&roster, &tree.children(me), Request::Announce(announce), wait).await {
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
                Err(CallError::Remote(reply)) if reply.code == ErrorCode::Promised => promised_elsewhere.push(child),
                Err(CallError::Remote(reply)) if reply.code == ErrorCode::Conflict => filled.push(child),
                Err(e) => debug!(member = child, "no commitment: {e}"),
            }
        }
        let (challenge, below_threshold) = match leader.challenge() {
            Ok(challenge) => {
                // Members that refused answered: up (a refusal is no sign of a dead peer).
                let silent: Vec<u32> = leader.unreachable().iter().copied().filter(|u| !answered.contains(u)).collect();
                self.note_reachability(&roster, &tree, &silent);
                (Some(challenge), None)
            }
            Err(RoundError::BelowThreshold { present, threshold, unreachable }) => {
                let silent: Vec<u32> = unreachable.iter().copied().filter(|u| !answered.contains(u)).collect();
                self.note_reachability(&roster, &tree, &silent);
                let error = err(
                    ErrorCode::Unavailable,
                    format!(
                        "only {present} of {} witnesses answered, {threshold} must sign; unreachable: {}",
                        roster.len(),
                        describe(&roster, &unreachable)
                    ),
                );
                (None, Some((unreachable.iter().map(|&u| u as usize).collect::<Vec<usize>>(), error)))
            }
            Err(e) => {
                self.abort_children(&roster, &tree, me, session_id).await;
                self.release(chain, index);
                self.metrics.rounds_failed.fetch_add(1, Ordering::Relaxed);
                return Err(err(ErrorCode::Internal, e.to_string()));
            }
        };
        // Every member whose commitment is in the aggregate, deep in the tree too (the
        // challenge's mask; short of the threshold, the tree's members less those reported
        // unreachable): a parent that passes up its children's commitments but drops their
        // votes is found by them (`round::withheld_votes`), and members silent below a
        // branch that answered are told apart from a dead branch.
        let committed: Vec<usize> = match (&challenge, &below_threshold) {
            (Some(c), _) => Mask::from_bytes(&c.mask.0, roster.len()).map(|m| m.iter().collect()).unwrap_or_default(),
            (None, Some((unreachable, _))) => {
                tree.members_top_down().filter(|member| !unreachable.contains(member)).collect()
            }
            (None, None) => vec![me],
        };
        if at_frontier && challenge.is_some() && votes.len() < threshold {
            // Committed without a valid vote, in a star (so no relay can frame it): it sent
            // none. Remembered only at the frontier, where one spoiled attempt costs an epoch;
            // in a tree a lying relay could drop an honest child's vote and have it blamed.
            let withheld: Vec<usize> =
                committed.iter().copied().filter(|m| !votes.contains_key(&(*m as u32))).collect();
            self.note_faulty(&roster, &withheld);
        }
        let outcome = AnnounceOutcome {
            below_threshold,
            committed,
            voters: votes.keys().map(|&m| m as usize).collect(),
            busy,
            promised_elsewhere,
            filled,
            presumed_down: self.down_members(&roster),
            unbeatable,
        };
        let led = LedAttempt {
            roster,
            me,
            tree,
            session_id,
            session,
            leader,
            nonces: Some(nonces),
            challenge,
            votes,
            justified: justification.is_some(),
            number: 0,
            signature: None,
            phase_wait: wait,
            at_frontier,
            unbeatable,
        };
        Ok(Ok((led, outcome)))
    }

    /// One attempt's challenge: this node locks on the voters' certificate (stored),
    /// responds, challenges the members that committed, and combines their responses.
    async fn challenge(
        self: &Arc<Self>,
        head: &ChainState,
        block: &Block,
        led: &mut LedAttempt,
        ballot: u64,
        voters: &BTreeSet<usize>,
    ) -> Event<BlockId> {
        let votes: Vec<Vote> = led.votes.values().filter(|v| voters.contains(&(v.member as usize))).copied().collect();
        let certificate = Certificate { ballot, votes };
        if let Err(e) = self.take_lock(head, block, ballot, &certificate) {
            return Event::LockRefused(e);
        }
        let (Some(challenge), Some(nonces)) = (led.challenge.take(), led.nonces.take()) else {
            return Event::Challenged(ChallengeOutcome::Broken(err(ErrorCode::Internal, "challenged twice")));
        };
        let own = match nonces.respond(&led.session, &self.key, &challenge) {
            Ok(own) => own,
            Err(e) => return Event::Challenged(ChallengeOutcome::Broken(protocol_err(e))),
        };
        if let Err(e) = led.leader.aggregator().receive_response(led.me, &own) {
            return Event::Challenged(ChallengeOutcome::Broken(protocol_err(e)));
        }
        let responders: Vec<usize> =
            led.leader.aggregator().expected_responders().into_iter().filter(|&m| m != led.me).collect();
        let request = Request::Challenge { session: led.session_id, challenge, certificate };
        let wait = led.phase_wait;
        // Refusals an honest member may give: moved past the ballot (`Promised`: a liar
        // pushed it while the round ran) — not at an unbeatable ballot, which no member can
        // have moved past: refusing that is a liar's way to spoil the one attempt nobody
        // outbids (the second attack review found it) — or the index filled there
        // (`Conflict`). Any other refusal, a wrong share or none is a fault.
        let (mut excused, mut filled): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
        for (child, reply) in self.ask_children(&led.roster, &responders, request, wait).await {
            if let Err(CallError::Remote(refusal)) = &reply {
                if (refusal.code == ErrorCode::Promised && !led.unbeatable) || refusal.code == ErrorCode::Conflict {
                    excused.push(child);
                }
                if refusal.code == ErrorCode::Conflict {
                    filled.push(child);
                }
            }
            match reply {
                Ok(Response::Signed(r)) => {
                    if let Err(e) = led.leader.aggregator().receive_response(child, &r) {
                        warn!(member = child, "bad response: {e}");
                    }
                }
                Ok(other) => warn!(member = child, "unexpected answer to challenge: {other:?}"),
                Err(e) => debug!(member = child, "no response: {e}"),
            }
        }
        match led.leader.finish() {
            Ok(signature) => {
                led.signature = Some(BlockSignature { ballot, signature });
                Event::Challenged(ChallengeOutcome::Signed)
            }
            Err(RoundError::Faults { faults }) => {
                for fault in &faults {
                    warn!(member = fault.member, address = %led.roster.member(fault.member as usize).map_or("?", |m| m.address.as_str()), "excluded from the restart: {fault}");
                }
                self.metrics.faults_named.fetch_add(faults.len() as u64, Ordering::Relaxed);
                // Members that refused as an honest member may are left out of the next attempt
                // only while the others reach the threshold (`ChallengeOutcome::Faults`).
                let (refused, named): (Vec<usize>, Vec<usize>) =
                    faults.iter().map(|f| f.member as usize).partition(|m| excused.contains(m));
                // Remembered only from a star at the frontier: in a tree a lying relay could
                // name an honest child.
                if led.at_frontier {
                    self.note_faulty(&led.roster, &named);
                }
                let error = err(
                    ErrorCode::Unavailable,
                    format!("round failed: {}", faults.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")),
                );
                Event::Challenged(ChallengeOutcome::Faults { members: named, refused, filled, error })
            }
            Err(e) => Event::Challenged(ChallengeOutcome::Broken(err(ErrorCode::Internal, e.to_string()))),
        }
    }

    /// Sends a signed block to every member (answering once every live one has it, so that a
    /// client reading from any of them next sees it), and to the members a committee change
    /// brings in (they learn the chain now rather than at their first round).
    async fn send_commit(self: &Arc<Self>, roster: &Roster, block: &Block) {
        let commit = Request::Commit { block: block.clone() };
        self.broadcast(roster, &commit, true).await;
        if let Some(next) = &block.committee {
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
    }

    /// The members of `roster` that missed a round this node led within [`PRESUMED_DOWN`].
    pub(super) fn down_members(&self, roster: &Roster) -> BTreeSet<usize> {
        let now = Instant::now();
        let mut down = self.down.lock().expect("lock");
        down.retain(|_, until| *until > now);
        let mut faulty = self.faulty.lock().expect("lock");
        faulty.retain(|_, until| *until > now);
        (0..roster.len())
            .filter(|&i| roster.member(i).is_some_and(|m| down.contains_key(&m.key) || faulty.contains_key(&m.key)))
            .collect()
    }

    /// Ballot epochs (§9.1 rule 0) need committee clocks within `CLOCK_MARGIN_MS`: a block
    /// stamped further ahead of this node's clock by its leader says one of the two clocks
    /// is off. Warned once a minute at most.
    fn warn_of_clock(&self, leader: usize, roster: &Roster, stamped_ms: u64) {
        let now = now_ms();
        let ahead = stamped_ms.saturating_sub(now);
        let last = self.metrics.clock_warned_ms.load(Ordering::Relaxed);
        if ahead > crate::agreement::CLOCK_MARGIN_MS && now.saturating_sub(last) > 60_000 {
            self.metrics.clock_warned_ms.store(now, Ordering::Relaxed);
            let address = roster.member(leader).map_or("?", |m| m.address.as_str());
            warn!(
                member = leader,
                %address,
                ahead_ms = ahead,
                "this member's clock is ahead of this witness's by more than {} ms; ballot epochs need committee clocks within that (SPEC §9.1): check NTP on both",
                crate::agreement::CLOCK_MARGIN_MS
            );
        }
    }

    /// Members a round this node led showed faulty (a wrong or missing partial signature,
    /// a commitment without a vote) are left out of its trees for [`SHOWN_FAULTY`] while the
    /// others reach the threshold, whatever later rounds' commitments say: a liar that
    /// commits and then spoils the signature would otherwise spoil one attempt in every run
    /// (at the frontier, the one its owner could not be outbid at).
    pub(super) fn note_faulty(&self, roster: &Roster, members: &[usize]) {
        let until = Instant::now() + SHOWN_FAULTY;
        let mut faulty = self.faulty.lock().expect("lock");
        for key in members.iter().filter_map(|&m| roster.member(m)).map(|m| m.key) {
            faulty.insert(key, until);
        }
    }

    /// After a round's commitments: members of the tree that did not commit are presumed
    /// down for a while, the others up; those silent below a parent that answered are
    /// also remembered as hidden ([`Node::hidden_members`]).
    pub(super) fn note_reachability(&self, roster: &Roster, tree: &Tree, unreachable: &[u32]) {
        let until = Instant::now() + PRESUMED_DOWN;
        let root = tree.members_top_down().next();
        let (mut down, mut hidden) = (self.down.lock().expect("lock"), self.hidden.lock().expect("lock"));
        for member in tree.members_top_down() {
            let Some(key) = roster.member(member).map(|m| m.key) else { continue };
            if unreachable.contains(&(member as u32)) {
                down.insert(key, until);
                let parent = tree.parent(member).filter(|&p| Some(p) != root);
                if parent.is_some_and(|p| !unreachable.contains(&(p as u32))) {
                    hidden.insert(key, until);
                }
            } else {
                down.remove(&key);
                hidden.remove(&key);
            }
        }
    }

    /// The members of `roster` presumed down that a gathering asks all the same: silent
    /// below an answering parent in a round this node led within [`PRESUMED_DOWN`], or shown
    /// faulty (they answered, wrongly: alive, and their states may be what the plan needs —
    /// the cluster simulation found an honest member shown faulty once, then pushed past
    /// every plan, never asked for its state while liars filled the gathering's quorum).
    pub(super) fn hidden_members(&self, roster: &Roster) -> BTreeSet<usize> {
        let now = Instant::now();
        let mut hidden = self.hidden.lock().expect("lock");
        hidden.retain(|_, until| *until > now);
        let faulty = self.faulty.lock().expect("lock");
        (0..roster.len())
            .filter(|&i| {
                roster
                    .member(i)
                    .is_some_and(|m| hidden.contains_key(&m.key) || faulty.get(&m.key).is_some_and(|u| *u > now))
            })
            .collect()
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
        // The leader signed the announce (§9.1 rule 0, §10.4): its ballot, session and tree
        // are its own, and no relay can re-shape them in its name.
        let leader_key = &roster.member(leader).expect("checked above").key;
        if !announce.verify(leader_key) {
            return Err(err(
                ErrorCode::BadRequest,
                format!("the announce is not signed by its leader, member {leader}, as it says"),
            ));
        }
        self.check_to_sign(&head, &announce.block, announce.justification.as_ref())?;
        self.warn_of_clock(leader, &roster, announce.block.header.timestamp_ms);
        let block = announce.block.clone();
        let id = block.id();
        let vote = self.vote_for(&head, &block, announce.ballot, leader, announce.justification.as_ref())?;
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
        // One session per ballot at an index: a re-sign's replaces the one whose signature
        // fell short (§9.1), so however often a ballot's owner announces it again, this node
        // holds one set of nonces for it.
        let ballot = announce.ballot;
        rounds.retain(|_, r| !(r.chain == chain && r.block.header.index == index && r.ballot == ballot));
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
        let roster = session.roster().clone();
        let head = self.head(&chain)?;
        if head.index() + 1 != block.header.index {
            return Err(err(ErrorCode::Conflict, format!("chain moved to index {} during the round", head.index())));
        }
        if let Some(aggregator) = aggregator.as_mut() {
            aggregator.receive_challenge(&challenge).map_err(protocol_err)?;
        }
        if let Err(refusal) = self.take_lock(&head, &block, ballot, &certificate) {
            // Not this block: its reservation would only hold the index against the one this
            // node may sign.
            self.reservations.lock().expect("lock").release_block(&chain, block.header.index, &block.id());
            return Err(refusal);
        }
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
        self.check_caught_up(self.chain_kind(&chain)?, &head, &block, self.stored(&chain))?;
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

/// Whether `block` is what `proposal` asks for (its time aside): a retried proposal whose
/// first leader died after the locks, or one another leader re-led, is done.
fn is_proposal(block: &Block, proposal: &Proposal) -> bool {
    block.header.kind == proposal.kind
        && block.payload == proposal.payload
        && block.committee == proposal.committee
        && block.policy == proposal.policy
}

/// A random pause of 50–450 ms: how racing leaders at one index settle on one of them.
async fn back_off() {
    tokio::time::sleep(Duration::from_millis(50 + OsRng.next_u32() as u64 % 400)).await;
}
