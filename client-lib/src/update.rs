//! Catching up on many chains at once.
//!
//! One update asks, per 1,024 followed chains, for the newest timeline block with a single
//! multi-leaf inclusion proof (`GetTimelineBatch`), proves that timeline block, then asks,
//! per 256 chains that trust the same committee, for every forward proof in one request
//! (`GetProofs`). Committees the client holds — its trusted states' and those the timeline
//! proof brought — are named by hash and left out of the answer, so a roster change costs
//! the client one committee, not one per followed chain. Every proof is verified before
//! anything it brought is trusted; each chain's result stands alone, and the state file is
//! written once, with the chains whose every check passed.

use crate::{Client, ClientError, TrustedChain, Update, UpdateResults};
use chainiac_proto::{
    ErrorCode, ProofQuery, Request, Response, TimelineBatch, MAX_HELD_COMMITTEES, MAX_PROOF_QUERIES,
    MAX_TIMELINE_CHAINS,
};
use chainiac_release::{Policy, TimeWindow, KIND_RELEASE};
use chainiac_skipchain::block::payload_hash;
use chainiac_skipchain::timeline::{HeadLeaf, TimelineEntry};
use chainiac_skipchain::{CatchUp, ChainId, ChainState, Committee, Proof};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Committees the client holds, by hash, in the order it learned them.
#[derive(Default)]
struct HeldCommittees {
    order: Vec<[u8; 32]>,
    by_hash: HashMap<[u8; 32], Committee>,
}

impl HeldCommittees {
    fn add(&mut self, committee: &Committee) {
        let hash = committee.hash();
        if !self.by_hash.contains_key(&hash) {
            self.order.push(hash);
            self.by_hash.insert(hash, committee.clone());
        }
    }

    /// The hashes to name in a request: the newest ones, as many as a request may carry.
    fn newest(&self) -> Vec<[u8; 32]> {
        self.order.iter().rev().take(MAX_HELD_COMMITTEES).copied().collect()
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Committee> {
        self.by_hash.get(hash).cloned()
    }

    fn learn(&mut self, proof: &Proof) {
        for committee in proof.steps.iter().filter_map(|step| step.committee.as_ref()) {
            self.add(committee);
        }
    }
}

/// What the timeline says about the chains of one update.
struct TimelineView {
    /// Each project chain's leaf, with the entry of the timeline block that holds it.
    leaves: HashMap<ChainId, (HeadLeaf, TimelineEntry)>,
    /// The timeline's own update, saved whatever happens to the project chains.
    reached: ChainState,
    update: Update,
}

/// A chain caught up by a verified proof.
struct Caught {
    caught: CatchUp,
    hops: usize,
}

type Skipped = Vec<(String, String)>;

fn answered(response: &Response) -> String {
    match response {
        Response::Error(reply) => format!("refused: {:?}: {}", reply.code, reply.message),
        other => format!("answered {}", format!("{other:?}").chars().take(80).collect::<String>()),
    }
}

impl Client {
    /// Catches `chain` up from its trusted state to the head a witness proves, checks the
    /// timeline (if anchored), the release reached and the client's bar, and saves.
    pub async fn update(&mut self, chain: ChainId) -> Result<Update, ClientError> {
        let mut results = self.update_many(&[chain]).await?;
        results.pop().expect("one result per chain").1
    }

    /// [`Client::update`] for many chains with a handful of requests (see the module's
    /// documentation). Returns one result per distinct chain, in the order given; the
    /// outer error is for what fails them all (no network, the timeline unprovable).
    pub async fn update_many(&mut self, chains: &[ChainId]) -> Result<UpdateResults, ClientError> {
        let mut seen = HashSet::new();
        let chains: Vec<ChainId> = chains.iter().copied().filter(|c| seen.insert(*c)).collect();
        let mut held = HeldCommittees::default();
        for trusted in self.state.chains.values() {
            held.add(&trusted.committee);
        }
        let timeline = self.state.timeline;
        let projects: Vec<ChainId> =
            chains.iter().copied().filter(|c| Some(*c) != timeline && self.state.chains.contains_key(c)).collect();
        let view = match timeline {
            Some(t) if !projects.is_empty() || chains.contains(&t) => {
                Some(self.catch_up_timeline(t, &projects, &mut held).await?)
            }
            _ => None,
        };

        // Forward proofs, one request per 256 chains that trust the same committee.
        let mut groups: BTreeMap<[u8; 32], Vec<ChainId>> = BTreeMap::new();
        for chain in &projects {
            groups.entry(self.state.chains[chain].committee.hash()).or_default().push(*chain);
        }
        let mut caught: HashMap<ChainId, Caught> = HashMap::new();
        let mut skipped_by_chain: HashMap<ChainId, Skipped> = HashMap::new();
        let recorded: HashMap<ChainId, u64> = view
            .as_ref()
            .map(|v| v.leaves.iter().map(|(chain, (leaf, _))| (*chain, leaf.index)).collect())
            .unwrap_or_default();
        for group in groups.values() {
            for chunk in group.chunks(MAX_PROOF_QUERIES) {
                let skipped = self.prove_chunk(chunk, &recorded, &mut held, &mut caught).await?;
                for chain in chunk {
                    skipped_by_chain.insert(*chain, skipped.clone());
                }
            }
        }

        let mut results = Vec::with_capacity(chains.len());
        let mut updated = Vec::new();
        for chain in chains {
            if Some(chain) == timeline {
                let update = view.as_ref().map(|v| v.update.clone()).expect("made when the timeline is asked for");
                results.push((chain, Ok(update)));
                continue;
            }
            let Some(trusted) = self.state.chains.get(&chain) else {
                results.push((chain, Err(ClientError::NotAnchored(chain))));
                continue;
            };
            let mut skipped = view.as_ref().map(|v| v.update.skipped.clone()).unwrap_or_default();
            skipped.extend(skipped_by_chain.remove(&chain).unwrap_or_default());
            let result = match caught.remove(&chain) {
                None => Err(ClientError::NoHonestWitness(skipped)),
                Some(reached) => self.check_reached(trusted, reached, view.as_ref(), skipped),
            };
            if let Ok((state, _)) = &result {
                updated.push(state.clone());
            }
            results.push((chain, result.map(|(_, update)| update)));
        }
        for state in updated {
            self.state.chains.insert(state.chain, state);
        }
        if let Some(view) = view {
            let old = self.state.chains.get(&view.reached.chain).map_or(0, TrustedChain::index);
            if view.reached.index() >= old {
                self.state.chains.insert(view.reached.chain, TrustedChain::from_state(&view.reached, None));
            }
        }
        self.save()?;
        Ok(results)
    }

    /// The release checks and the timeline's word on one caught-up chain.
    fn check_reached(
        &self,
        trusted: &TrustedChain,
        reached: Caught,
        view: Option<&TimelineView>,
        skipped: Skipped,
    ) -> Result<(TrustedChain, Update), ClientError> {
        let Caught { caught, hops } = reached;
        let head = caught.state;
        let from = trusted.index();
        let mut release = trusted.release.clone();
        let mut release_status = None;
        if head.header.kind == KIND_RELEASE && head.index() > from {
            let payload = caught.payload.clone().unwrap_or_default();
            let checked = chainiac_release::check_release(
                &head.policy,
                &payload,
                head.header.timestamp_ms,
                TimeWindow::default(),
                |_| false,
            )
            .map_err(|e| ClientError::Release(e.to_string()))?;
            release_status = Some((checked.manifest.version.clone(), self.meets_bar(&checked)));
            release = Some(checked);
        }
        let updated = TrustedChain::from_state(&head, release);
        let timeline_age_ms = match view {
            None => None,
            Some(view) => {
                let (leaf, entry) = view.leaves.get(&head.chain).expect("every project chain has a leaf");
                if leaf.index > head.index() {
                    return Err(ClientError::Timeline(format!(
                        "the timeline records head {} but the witnesses proved only {}: a rollback or freeze",
                        leaf.index,
                        head.index()
                    )));
                }
                if leaf.index == head.index() && leaf.id != head.id {
                    return Err(ClientError::Timeline(
                        "the timeline records another block at the head's index: a fork".into(),
                    ));
                }
                let max_age_ms =
                    Policy::from_bytes(&updated.policy).map(|p| p.max_age_ms).unwrap_or(self.default_max_age_ms);
                let age_ms = crate::now_ms().saturating_sub(entry.time_ms);
                if age_ms > max_age_ms {
                    return Err(ClientError::Stale { age_ms, max_age_ms });
                }
                Some(age_ms)
            }
        };
        let update = Update {
            chain: head.chain,
            from,
            to: head.index(),
            hops,
            checkpoints: caught.checkpoints,
            release: release_status,
            skipped,
            timeline_age_ms,
        };
        Ok((updated, update))
    }

    /// The newest timeline block(s) holding `projects`, proven from the trusted timeline
    /// state; every committee the proof brings is added to `held`.
    async fn catch_up_timeline(
        &self,
        timeline: ChainId,
        projects: &[ChainId],
        held: &mut HeldCommittees,
    ) -> Result<TimelineView, ClientError> {
        let trusted = self.state.chains.get(&timeline).cloned().ok_or(ClientError::NotAnchored(timeline))?;
        let mut skipped = Vec::new();
        let mut batches: Vec<TimelineBatch> = Vec::new();
        for chunk in projects.chunks(MAX_TIMELINE_CHAINS) {
            let request = Request::GetTimelineBatch { timeline: Some(timeline), chains: chunk.to_vec() };
            let batch = self
                .ask(&trusted, request, &mut skipped, |response| match response {
                    Response::TimelineBatch(batch) => {
                        if batch.timeline != timeline {
                            return Err("answered for another timeline".into());
                        }
                        batch.inclusion.verify(&batch.entry).map_err(|e| e.to_string())?;
                        if let Some(missing) = chunk.iter().find(|c| batch.inclusion.leaf(c).is_none()) {
                            return Err(format!("timeline block {} does not hold chain {missing}", batch.index));
                        }
                        Ok(batch)
                    }
                    other => Err(answered(&other)),
                })
                .await?;
            batches.push(batch);
        }
        // Prove each timeline block the answers name, oldest first (answers to different
        // chunks may come from blocks made between them), or the head if none.
        let mut targets: Vec<Option<u64>> = batches.iter().map(|b| Some(b.index)).collect();
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            targets.push(None);
        }
        let mut state = trusted.to_state();
        let (mut hops, mut checkpoints, mut entries) = (0, Vec::new(), HashMap::new());
        for target in targets {
            // The batches' entries are checked against the proven header's payload hash; the
            // payload itself is only needed when no batch brought an entry.
            let query = ProofQuery { chain: timeline, from: state.index(), to: target };
            let with_payload = target.is_none();
            let request = Request::GetProofs { queries: vec![query], with_payload, held_committees: held.newest() };
            let (reached, proof, entry) = self
                .ask(&trusted, request, &mut skipped, |response| {
                    let proof = single_proof(response)?;
                    let reached = proof.verify_with(&state, |h| held.get(h)).map_err(|e| e.to_string())?.into_inner();
                    if target.is_some_and(|t| reached.state.index() != t) {
                        return Err(format!("proved block {} instead of {target:?}", reached.state.index()));
                    }
                    let entry = match batches.iter().find(|b| b.index == reached.state.index()) {
                        Some(batch) => {
                            if payload_hash(&batch.entry.to_bytes()) != reached.state.header.payload_hash {
                                return Err("the timeline entry differs from the proven block's".into());
                            }
                            batch.entry.clone()
                        }
                        None => TimelineEntry::from_bytes(reached.payload.as_deref().unwrap_or_default())
                            .map_err(|e| format!("the timeline block's entry: {e}"))?,
                    };
                    Ok((reached, proof, entry))
                })
                .await
                .map_err(|e| ClientError::Timeline(e.to_string()))?;
            held.learn(&proof);
            hops += proof.steps.len();
            checkpoints.extend(reached.checkpoints);
            entries.insert(reached.state.index(), entry);
            state = reached.state;
        }
        let mut leaves = HashMap::new();
        for batch in &batches {
            for (_, leaf) in &batch.inclusion.leaves {
                leaves.insert(leaf.chain, (*leaf, batch.entry.clone()));
            }
        }
        let timeline_age_ms = entries.get(&state.index()).map(|entry| crate::now_ms().saturating_sub(entry.time_ms));
        let update = Update {
            chain: timeline,
            from: trusted.index(),
            to: state.index(),
            hops,
            checkpoints,
            release: None,
            skipped,
            timeline_age_ms,
        };
        Ok(TimelineView { leaves, reached: state, update })
    }

    /// Forward proofs for `chunk` (chains trusting one committee), asked of that
    /// committee's members in turn until every chain has a verified proof reaching at least
    /// the head the timeline records for it (`recorded`), or none is left to ask. A witness
    /// whose proof stops short is skipped like a liar, so one freezing witness cannot stop an
    /// update; if every one stops short, the best such proof is kept and the timeline check
    /// refuses it as a freeze. Returns the witnesses skipped and why.
    async fn prove_chunk(
        &self,
        chunk: &[ChainId],
        recorded: &HashMap<ChainId, u64>,
        held: &mut HeldCommittees,
        caught: &mut HashMap<ChainId, Caught>,
    ) -> Result<Skipped, ClientError> {
        let pool = self.pool()?;
        let committee = self.state.chains[&chunk[0]].committee.clone();
        let states: HashMap<ChainId, ChainState> =
            chunk.iter().map(|chain| (*chain, self.state.chains[chain].to_state())).collect();
        let mut pending: Vec<ChainId> = chunk.to_vec();
        let mut skipped = Vec::new();
        let mut short: HashMap<ChainId, Caught> = HashMap::new();
        for member in committee.roster().members() {
            let mut asking = pending.clone();
            while !asking.is_empty() {
                let queries = asking
                    .iter()
                    .map(|chain| ProofQuery { chain: *chain, from: states[chain].index(), to: None })
                    .collect();
                let request = Request::GetProofs { queries, with_payload: true, held_committees: held.newest() };
                let answers = match pool.call(&member.address, &member.key, &request, self.timeout).await {
                    Ok(Response::Proofs(answers)) if answers.len() == asking.len() => answers,
                    Ok(other) => {
                        skipped.push((member.address.clone(), format!("lied: {}", answered(&other))));
                        break;
                    }
                    Err(e) => {
                        skipped.push((member.address.clone(), format!("unavailable: {e}")));
                        break;
                    }
                };
                let mut busy = Vec::new();
                let mut lie = None;
                // Every proof that verifies is kept, even from a witness caught lying about
                // another chain: a proof stands on its signatures, not on who sent it.
                for (chain, answer) in asking.iter().zip(answers) {
                    match answer {
                        Ok(proof) => match proof.verify_with(&states[chain], |h| held.get(h)) {
                            Ok(reached) => {
                                held.learn(&proof);
                                let reached = Caught { caught: reached.into_inner(), hops: proof.steps.len() };
                                let index = reached.caught.state.index();
                                match recorded.get(chain) {
                                    Some(&head) if head > index => {
                                        let why = format!(
                                            "chain {chain}: proved head {index}, the timeline records {head}: frozen or behind"
                                        );
                                        skipped.push((member.address.clone(), why));
                                        if short.get(chain).is_none_or(|s| s.caught.state.index() < index) {
                                            short.insert(*chain, reached);
                                        }
                                    }
                                    _ => {
                                        caught.insert(*chain, reached);
                                    }
                                }
                            }
                            Err(e) if lie.is_none() => lie = Some(format!("lied: chain {chain}: {e}")),
                            Err(_) => {}
                        },
                        Err(reply) if reply.code == ErrorCode::Busy => busy.push(*chain),
                        Err(reply) => {
                            skipped.push((member.address.clone(), format!("chain {chain}: {}", reply.message)))
                        }
                    }
                }
                if let Some(lie) = lie {
                    skipped.push((member.address.clone(), lie));
                    break;
                }
                // A full answer: ask the same witness for the rest, if it made progress.
                if busy.len() == asking.len() {
                    break;
                }
                asking = busy;
            }
            pending.retain(|chain| !caught.contains_key(chain));
            if pending.is_empty() {
                break;
            }
        }
        for chain in pending {
            if let Some(reached) = short.remove(&chain) {
                caught.insert(chain, reached);
            }
        }
        Ok(skipped)
    }
}

/// The one proof of a single-query `GetProofs` answer.
fn single_proof(response: Response) -> Result<Proof, String> {
    match response {
        Response::Proofs(mut answers) if answers.len() == 1 => {
            answers.pop().expect("one").map_err(|reply| format!("refused: {:?}: {}", reply.code, reply.message))
        }
        other => Err(answered(&other)),
    }
}
