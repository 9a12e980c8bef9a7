//! Catching up on many chains at once.
//!
//! One update asks, per 1,024 followed chains, for the newest timeline block with a single
//! multi-leaf inclusion proof (`GetTimelineBatch`) and proves that timeline block forward
//! (every hop's signature: this is where the client walks roster changes, once for all
//! chains). Then, per 256 chains, one `GetLinkedProofs` to a member of the committee that
//! signed that block (then of the one in force now): for each chain, the headers linking the head the timeline records down to the
//! client's block (hashes only — the timeline's signature vouches for the head's id, since
//! a witness cosigns a timeline block only over heads it stored after checking them), the
//! committee and policy in force there, and a forward proof past it to the newest block.
//! With `every_hop` the client instead asks each chain's committee for forward proofs
//! (`GetProofs`), checked against each chain's own committees, landing on every checkpoint.
//! When every chain of the update was reconciled with the client's timeline block (the
//! state file records it per chain), the client first asks for the timeline's change lists
//! since that block (`GetTimelineChanges`, SPEC §8), capped at what the inclusion proofs
//! would cost: the lists show which chains moved (those get linked proofs as above) and that
//! the others did not, for ≈ 250 bytes a timeline block and 4 per head that moved in the
//! registry (its chain prefix; the client's own heads opened) instead of one inclusion
//! leaf per followed chain. A member whose lists do not verify is skipped like any
//! liar; if no member serves them within the cap, the update takes inclusion proofs.
//! Committees the client holds — its trusted states' and those the timeline proof brought
//! — are named by hash and left out of the answers, so a roster change costs the client one
//! committee, not one per followed chain. Every proof is verified before anything it
//! brought is trusted; each chain's result stands alone, and the state file is written
//! once, with the chains whose every check passed.

use crate::{Client, ClientError, TrustedChain, Update, UpdateResults};
use chainiac_proto::{
    CallError, ErrorCode, ErrorReply, LinkedQuery, ProofQuery, Request, Response, TimelineBatch, MAX_HELD_APPOINTMENTS,
    MAX_PROOF_QUERIES, MAX_TIMELINE_CHAINS,
};
use chainiac_release::{
    is_rebuild_summary, Policy, RebuildRecord, RebuildSummary, RebuilderId, ReleasePayload, TimeWindow, KIND_RELEASE,
};
use chainiac_skipchain::block::payload_hash;
use chainiac_skipchain::timeline::{chain_prefix, changes_page_full, inclusion_cost, HeadLeaf, TimelineEntry};
use chainiac_skipchain::{
    Appointments, BlockId, CatchUp, ChainId, ChainState, Committee, EarlierBlock, Proof, ProofError,
};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Appointments the client holds this update, by committee hash: each came checked with a
/// proof it verified (a roster change the timeline's proof walked, say), so answers may
/// leave it out. A trusted state's committee is not among them: it came without the
/// approvals a change into it would need.
type HeldCommittees = Appointments;

/// Holds every appointment a verified proof carried.
fn learn(held: &mut HeldCommittees, caught: &CatchUp) {
    for appointment in &caught.appointments {
        held.hold(appointment.clone());
    }
}

/// The committee hashes to name in a request.
fn named(held: &HeldCommittees) -> Vec<[u8; 32]> {
    held.newest(MAX_HELD_APPOINTMENTS)
}

/// What the timeline says about the chains of one update.
struct TimelineView {
    /// Each project chain's leaf, with the entry and index of the timeline block that holds
    /// it (through change lists: only the chains that moved).
    leaves: HashMap<ChainId, (HeadLeaf, TimelineEntry, u64)>,
    /// Chains the change lists show did not move since the client's timeline block (empty
    /// when inclusion proofs were used), with the newest entry.
    unmoved: HashSet<ChainId>,
    newest: Option<TimelineEntry>,
    /// The timeline's own update, saved whatever happens to the project chains.
    reached: ChainState,
    update: Update,
    /// Who to ask for linked proofs: the members of the committees that signed the timeline
    /// blocks the leaves come from (each signer recomputed the root over heads it holds),
    /// then those of the committee in force now (a roster change at the newest block brings
    /// members that may not hold the chains yet).
    holders: Vec<chainiac_cosi::Member>,
}

/// A chain caught up by a verified proof.
struct Caught {
    caught: CatchUp,
    hops: usize,
}

type Skipped = Vec<(String, String)>;

/// Chains asked of one list of members: the timeline's holders (linked proofs) or one
/// committee (forward proofs).
type ProofGroup = (Vec<chainiac_cosi::Member>, Vec<ChainId>);

/// What the proof rounds of an update found, by chain: the proofs kept, and the chains
/// whose timeline record conflicts with a signed block (the index).
#[derive(Default)]
struct Proven {
    caught: HashMap<ChainId, Caught>,
    forks: HashMap<ChainId, u64>,
}

/// Why a member's change lists were not taken.
enum Stop {
    /// They would cost more than inclusion proofs (the same at every member).
    Larger,
    /// This member failed or lied; another may serve them.
    Member,
}

fn answered(response: &Response) -> String {
    match response {
        Response::Error(reply) => format!("refused: {:?}: {}", reply.code, reply.message),
        other => format!("answered {}", other.name()),
    }
}

/// Checks a timeline batch for `chunk` before it costs more than a few comparisons: the
/// right timeline, not older than the trusted block, no more leaves than chains asked (at
/// most 64 hashes each: the tree is at most 64 levels deep), and a proof that holds under
/// its entry for the chains asked. Returns the leaves it proves. The entry itself is
/// checked later, against the proven block.
fn check_batch(batch: &TimelineBatch, trusted: &TrustedChain, chunk: &[ChainId]) -> Result<Vec<HeadLeaf>, String> {
    if batch.timeline != trusted.chain {
        return Err("answered for another timeline".into());
    }
    if batch.index < trusted.index() {
        return Err(format!("timeline block {} is older than the trusted {}", batch.index, trusted.index()));
    }
    let proof = &batch.inclusion;
    if proof.leaves.len() > chunk.len() || proof.hashes.len() > 64 * chunk.len() {
        return Err("the inclusion proof is larger than the chains asked for need".into());
    }
    proof.verify(&batch.entry, chunk).map_err(|e| e.to_string())
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
        // A trusted state's committee is the one its header names by hash (checked when the
        // state was verified and when the state file was read): group by it.
        let mut held = HeldCommittees::default();
        let committee_of: HashMap<ChainId, [u8; 32]> =
            self.state.chains.values().map(|trusted| (trusted.chain, trusted.header.committee_hash)).collect();
        let timeline = self.state.timeline;
        let projects: Vec<ChainId> =
            chains.iter().copied().filter(|c| Some(*c) != timeline && self.state.chains.contains_key(c)).collect();
        // Chains reconciled with the client's timeline block learn what moved from the
        // change lists when those are cheaper; otherwise inclusion proofs. Either way the
        // timeline's committee vouches for what moved (in both modes).
        let by_changes = match timeline {
            Some(t) => self.changes_view(t, &projects, &mut held).await,
            None => None,
        };
        let view = match (by_changes, timeline) {
            (Some(view), _) => Some(view),
            (None, Some(t)) if !projects.is_empty() || chains.contains(&t) => {
                Some(self.catch_up_timeline(t, &projects, &mut held).await?)
            }
            _ => None,
        };

        // What the timeline records for each chain: linked proofs go through it.
        let recorded: HashMap<ChainId, (u64, BlockId)> = view
            .as_ref()
            .map(|v| v.leaves.iter().map(|(chain, (leaf, _, _))| (*chain, (leaf.index, leaf.id))).collect())
            .unwrap_or_default();
        // Linked proofs (the default) are asked of the timeline's signers (each holds every
        // chain it recorded), then its current committee: one group (`None`), and a chain
        // whose own committee has long retired is still served. Forward proofs (`every_hop`,
        // `every_hop_chains`, or no timeline) are asked of each chain's committee: one
        // request per 256 chains sharing one. Chains the change lists show did not move
        // need no proof.
        let forward = |c: &ChainId| view.is_none() || self.every_hop || self.every_hop_chains.contains(c);
        let mut groups: BTreeMap<Option<[u8; 32]>, ProofGroup> = BTreeMap::new();
        if let Some(view) = &view {
            let linked: Vec<ChainId> =
                projects.iter().copied().filter(|c| !forward(c) && recorded.contains_key(c)).collect();
            groups.insert(None, (view.holders.clone(), linked));
        }
        let unmoved = view.as_ref().map(|v| &v.unmoved);
        for chain in projects.iter().filter(|c| forward(c) && !unmoved.is_some_and(|u| u.contains(*c))) {
            let committee = &self.state.chains[chain].committee;
            let entry = groups.entry(Some(committee_of[chain]));
            entry.or_insert_with(|| (committee.roster().members().to_vec(), Vec::new())).1.push(*chain);
        }
        let mut proven = Proven::default();
        let mut skipped_by_chain: HashMap<ChainId, Skipped> = HashMap::new();
        for (key, (members, group)) in &groups {
            for chunk in group.chunks(MAX_PROOF_QUERIES) {
                let how = if key.is_none() { Asked::Linked(&recorded) } else { Asked::Forward };
                let skipped = self.prove_chunk(chunk, members, how, &recorded, &mut held, &mut proven).await?;
                for chain in chunk {
                    skipped_by_chain.insert(*chain, skipped.clone());
                }
            }
        }

        let mut results = Vec::with_capacity(chains.len());
        // Fork evidence: the cothority signed two blocks at one index. Nothing it vouched
        // for in this update is taken, and the state stays as it was, so the next update
        // meets the same evidence.
        if let Some((&forked, _)) = proven.forks.iter().next() {
            for chain in chains {
                let result = match proven.forks.get(&chain) {
                    Some(&index) => {
                        let mut evidence = view.as_ref().map(|v| v.update.skipped.clone()).unwrap_or_default();
                        evidence.extend(skipped_by_chain.remove(&chain).unwrap_or_default());
                        Err(ClientError::Fork { chain, index, evidence })
                    }
                    None => Err(ClientError::Timeline(format!(
                        "not updated: the cothority signed a fork of chain {forked} in this update"
                    ))),
                };
                results.push((chain, result));
            }
            return Ok(results);
        }
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
            let result = match proven.caught.remove(&chain) {
                None if view.as_ref().is_some_and(|v| v.unmoved.contains(&chain)) => {
                    let view = view.as_ref().expect("checked");
                    self.unmoved(trusted, view, skipped).map(|update| (trusted.clone(), update))
                }
                None if view.is_some() && !recorded.contains_key(&chain) => Err(not_recorded(chain)),
                None => Err(ClientError::NoHonestWitness(skipped)),
                Some(reached) => self.check_reached(trusted, reached, view.as_ref(), skipped),
            };
            // Reconciled with the timeline block that recorded the chain (or showed it did
            // not move); a chain that failed is not, whatever it was before.
            match (&result, &view) {
                (Ok(_), Some(view)) => {
                    let block = view.leaves.get(&chain).map_or(view.reached.index(), |(_, _, index)| *index);
                    self.state.synced.insert(chain, block);
                }
                _ => {
                    self.state.synced.remove(&chain);
                }
            }
            if let Ok((state, _)) = &result {
                updated.push(state.clone());
            }
            results.push((chain, result.map(|(_, update)| update)));
        }
        // A summary at the head about a release the client skipped (the head moved past the
        // release and its rebuilds): that release is proven forward from the client's previous
        // block and checked. If it cannot be, the chain's update fails and its state stays.
        // A head past the client's block that is neither a release nor a summary (a
        // committee or policy change, a yank, a rebuilds block) may stand above a release the
        // client skipped: the newest one after its block is found walking down from the head
        // and checked the same way.
        // What each chain still needs, decided first, then asked for all at once (at most
        // `BELOW_IN_FLIGHT` chains in flight): a roster change appended to every chain right
        // after their releases costs one round trip, not one per chain.
        let mut work = Vec::new();
        for (i, state) in updated.iter().enumerate() {
            let old = &self.state.chains[&state.chain];
            // Only a summary reached at the head says anything here: one carried over from
            // the client's previous block (the head is a roster change, a yank) is about the
            // release it held, which a later release below the head may have replaced.
            let summary_at_head = is_rebuild_summary(state.header.kind) && state.index() > old.index();
            if summary_at_head {
                match state.rebuilds.clone() {
                    Some(summary) if release_manifest(state) != Some(summary.manifest) => {
                        work.push((i, Below::Named(summary)))
                    }
                    _ => {}
                }
                continue;
            }
            // With nothing between the two blocks (a roster change right after the client's
            // update, say: on every chain at once) there is nothing to walk.
            let moved_past = state.index() > old.index() + 1
                && state.header.kind != KIND_RELEASE
                && !is_rebuild_summary(state.header.kind)
                && Policy::from_bytes(&state.policy).is_ok();
            if moved_past {
                work.push((i, Below::Walk));
            }
        }
        let (this, states) = (&*self, &updated);
        let found: Vec<(usize, Result<Found, String>)> = futures_util::stream::iter(work)
            .map(|(i, below)| {
                let state = &states[i];
                let old = &this.state.chains[&state.chain];
                async move {
                    let found = match below {
                        Below::Named(summary) => this
                            .release_skipped(old, state, &summary)
                            .await
                            .map(|release| Found::Release(summary.release, Box::new(release), None))
                            .map_err(|e| format!("the release the rebuild summary at the head names: {e}")),
                        Below::Walk => match this.release_below_head(old, state).await {
                            Ok((Some((index, release)), rebuilds)) => {
                                Ok(Found::Release(index, Box::new(release), Some(rebuilds)))
                            }
                            Ok((None, summary)) => Ok(Found::Summary(summary)),
                            Err(e) => Err(format!("the newest release below the head: {e}")),
                        },
                    };
                    (i, found)
                }
            })
            .buffer_unordered(BELOW_IN_FLIGHT)
            .collect()
            .await;
        let mut unproven = Vec::new();
        for (i, found) in found {
            let state = &mut updated[i];
            match found {
                Ok(Found::Release(index, release, rebuilds)) => {
                    state.release = Some(*release);
                    state.release_index = Some(index);
                    // A walk's summary (or none) replaces what the client held; a summary at
                    // the head stays (it names this release).
                    if let Some(rebuilds) = rebuilds {
                        state.rebuilds = rebuilds;
                    }
                }
                // No release since the client's block, but a summary about the one it
                // holds: newer than any it had (the walk stops at its block).
                Ok(Found::Summary(Some(summary))) if release_manifest(state) == Some(summary.manifest) => {
                    state.release_index = Some(summary.release);
                    state.rebuilds = Some(summary);
                }
                Ok(Found::Summary(_)) => {}
                Err(e) => unproven.push((state.chain, e)),
            }
        }
        updated.retain(|state| !unproven.iter().any(|(chain, _)| *chain == state.chain));
        for (chain, e) in unproven {
            self.state.synced.remove(&chain);
            if let Some((_, result)) = results.iter_mut().find(|(c, _)| *c == chain) {
                *result = Err(ClientError::Release(e));
            }
        }
        self.prove_trusted_records(&mut updated, &mut results).await;
        // Each updated chain's newest release as this client reads it, and what it was before.
        for (chain, result) in results.iter_mut() {
            let (Ok(update), Some(state)) = (result, updated.iter().find(|s| s.chain == *chain)) else { continue };
            let Some(release) = &state.release else { continue };
            let level = self.level_of(release, state.rebuilds_of_release());
            let before = self.state.chains.get(chain).and_then(|old| {
                let old_release = old.release.as_ref().filter(|r| r.manifest.id() == release.manifest.id())?;
                Some(self.level_of(old_release, old.rebuilds_of_release()).level)
            });
            match before {
                Some(before) if before != level.level => update.level_was = Some(before),
                Some(_) => {}
                // A release new to this client that was not at the head (a summary named it).
                None if update.release.is_none() => {
                    let status = self.check_installable(*chain, &state.policy, release, state.rebuilds_of_release());
                    update.release = Some((release.manifest.version.clone(), status.map_err(|e| e.to_string())))
                }
                None => {}
            }
            update.level = Some(level);
        }
        // Chains that moved to the same committee share one copy of it again.
        let mut shared: HashMap<[u8; 32], Arc<Committee>> = HashMap::new();
        for mut state in updated {
            state.committee = shared.entry(state.header.committee_hash).or_insert(state.committee).clone();
            self.state.chains.insert(state.chain, state);
        }
        if let Some(view) = view {
            if let Some(entry) = &view.newest {
                self.state.timeline_chains = entry.chains;
            }
            let old = self.state.chains.get(&view.reached.chain).map_or(0, TrustedChain::index);
            if view.reached.index() >= old {
                self.state.chains.insert(view.reached.chain, TrustedChain::from_state(&view.reached, None));
            }
        }
        self.save()?;
        Ok(results)
    }

    /// For each chain of this update whose summary of its release commits to its records
    /// (SPEC §11.8): the records of the rebuilders this client trusts that it has not proven
    /// present or absent yet, proven against that summary's root (`GetRebuildRecords`, 64
    /// ids a request), into the summary held. What was proven of the same summary before is
    /// kept; a key not proven (no member answered) is asked about again at the next update. A
    /// member whose proofs do not check is skipped, and named in the update's `skipped`, as
    /// are all members when none answers (the summary then holds no record for those keys,
    /// and the level counts them among the others).
    async fn prove_trusted_records(&self, updated: &mut [TrustedChain], results: &mut UpdateResults) {
        let mut trusted: Vec<RebuilderId> = self.trust.trusted_rebuilders.iter().map(RebuilderId::of).collect();
        trusted.sort();
        trusted.dedup();
        if trusted.is_empty() {
            return;
        }
        // A summary taken again (the same block's, decoded anew) keeps what was proven of it.
        for state in updated.iter_mut() {
            let held = self.state.chains.get(&state.chain).and_then(|old| old.rebuilds.as_ref());
            if let (Some(summary), Some(held)) = (state.rebuilds.as_mut(), held) {
                if summary.committed.is_some() && *summary == summary.as_appended() && held.as_appended() == *summary {
                    summary.records = held.records.clone();
                    summary.absent = held.absent.clone();
                }
            }
        }
        let missing = |state: &TrustedChain| -> Vec<RebuilderId> {
            let Some(summary) = state.rebuilds_of_release().filter(|s| s.committed.is_some()) else {
                return Vec::new();
            };
            let proven =
                |id: &RebuilderId| summary.records.iter().any(|r| r.rebuilder == *id) || summary.absent.contains(id);
            trusted.iter().filter(|id| !proven(id)).copied().collect()
        };
        let wanted: Vec<(usize, Vec<RebuilderId>)> =
            updated.iter().enumerate().map(|(i, state)| (i, missing(state))).filter(|(_, m)| !m.is_empty()).collect();
        let (this, states) = (self, &*updated);
        type Proven = (usize, Vec<(RebuilderId, Option<RebuildRecord>)>, Vec<(String, String)>);
        let answers: Vec<Proven> = futures_util::stream::iter(wanted)
            .map(|(i, missing)| async move {
                let state = &states[i];
                let summary = state.rebuilds.as_ref().expect("filtered");
                let committed = summary.committed.expect("filtered");
                let (mut proven, mut lost) = (Vec::new(), Vec::new());
                for asked in missing.chunks(chainiac_proto::MAX_RECORD_QUERIES) {
                    let request = Request::GetRebuildRecords {
                        chain: state.chain,
                        release: summary.release,
                        count: summary.count(),
                        rebuilders: asked.to_vec(),
                    };
                    let mut skipped = Vec::new();
                    let answer = this
                        .ask(state, request, &mut skipped, |response| {
                            let Response::RebuildRecords(proofs) = response else {
                                return Err(format!("answered {}", response.name()));
                            };
                            if proofs.len() != asked.len() {
                                return Err(format!("{} proofs for {} rebuilders", proofs.len(), asked.len()));
                            }
                            let mut answers = Vec::new();
                            for (id, proof) in asked.iter().zip(&proofs) {
                                let record = committed.check(id, proof).map_err(|e| format!("rebuild records: {e}"))?;
                                answers.push((*id, record));
                            }
                            Ok(answers)
                        })
                        .await;
                    match answer {
                        Ok(records) => {
                            proven.extend(records);
                            lost.extend(skipped);
                        }
                        Err(ClientError::NoHonestWitness(skipped)) => lost.extend(skipped),
                        Err(e) => lost.push(("rebuild records".into(), e.to_string())),
                    }
                }
                (i, proven, lost)
            })
            .buffer_unordered(BELOW_IN_FLIGHT)
            .collect()
            .await;
        for (i, proven, lost) in answers {
            let state = &mut updated[i];
            if let Some(summary) = state.rebuilds.as_mut() {
                for (id, record) in proven {
                    match record {
                        Some(record) => summary.records.push(record),
                        None => summary.absent.push(id),
                    }
                }
            }
            if let Some((_, Ok(update))) = results.iter_mut().find(|(chain, _)| *chain == state.chain) {
                update.skipped.extend(lost);
            }
        }
    }

    /// The newest release block after `old`'s block and below the new head `head` (neither a
    /// release nor a summary), if any, and the newest summary above it (or, with no
    /// release, above `old`'s block): found walking down from the verified head (`GetBlocks`
    /// pages, each hash-linked to it). The release is checked as a head release: under the
    /// head's policy when the block names it (the walk brought the block, nothing more is
    /// asked), else as [`Client::release_skipped`] checks a release a summary names (forward
    /// from `old`, every policy change on the way).
    async fn release_below_head(
        &self,
        old: &TrustedChain,
        head: &TrustedChain,
    ) -> Result<(Option<(u64, ReleasePayload)>, Option<RebuildSummary>), ClientError> {
        let from = old.index();
        let mut summary: Option<RebuildSummary> = None;
        let found = self
            .newest_between(head, from, |block| {
                let index = block.header.index;
                if index <= from {
                    return Some(None);
                }
                if summary.is_none() {
                    summary = RebuildSummary::of_block(block.header.kind, &block.payload).ok();
                }
                let release =
                    (block.header.kind == KIND_RELEASE).then(|| ReleasePayload::from_bytes(&block.payload).ok());
                release.flatten().map(|r| Some((r.manifest.id(), block.clone())))
            })
            .await?;
        let Some((index, Some((manifest, block)))) = found else { return Ok((None, summary)) };
        let summary = summary.filter(|s| s.release == index && s.manifest == manifest);
        // Checked as a release a summary names (its manifest the one found by hash links).
        let named = summary.clone().unwrap_or(RebuildSummary {
            release: index,
            manifest,
            records: Vec::new(),
            committed: None,
            absent: Vec::new(),
        });
        let release = if block.header.policy_hash == head.header.policy_hash {
            let block = EarlierBlock { header: block.header, payload: Some(block.payload) };
            named_release(&head.policy, &block, &named).map_err(ClientError::Release)?
        } else {
            self.release_skipped(old, head, &named).await?
        };
        Ok((Some((index, release)), summary))
    }

    /// The release block a rebuild summary at the new head `head` names, which the client
    /// skipped, checked as a head release is (§11.5 under the policy in force there), its
    /// manifest the summary's. Down from the verified head by hash links (`GetBackwardProof`)
    /// when the policy in force there is the head's, the usual case; otherwise proven forward
    /// from the client's previous block `old` (`GetProof`: every policy change on the way).
    /// A summary about a release at or below `old`'s block (one an older client did not
    /// take) is checked under `old`'s policy when the head's is not in force there.
    async fn release_skipped(
        &self,
        old: &TrustedChain,
        head: &TrustedChain,
        summary: &RebuildSummary,
    ) -> Result<ReleasePayload, ClientError> {
        let chain = old.chain;
        let request = Request::GetBackwardProof { chain, from: head.index(), to: summary.release, with_payload: true };
        let verified_head = head.to_state();
        let mut skipped = Vec::new();
        let below = self
            .ask(head, request, &mut skipped, |response| {
                let Response::BackwardProof(proof) = response else {
                    return Err(format!("answered {}", response.name()));
                };
                let earlier = proof.verify(&verified_head).map_err(|e| e.to_string())?.into_inner();
                if earlier.header.index != summary.release || earlier.header.kind != KIND_RELEASE {
                    return Err(format!("block {} is no release", earlier.header.index));
                }
                Ok(earlier)
            })
            .await?;
        if below.header.policy_hash == head.header.policy_hash {
            return named_release(&head.policy, &below, summary).map_err(ClientError::Release);
        }
        // At or below the client's block (a release an older client did not take): under
        // the policy in force there, the client's own or one fetched by its hash (the release
        // block, hash-linked to the head, names it); no forward proof reaches below.
        if summary.release <= old.index() {
            if below.header.policy_hash == old.header.policy_hash {
                return named_release(&old.policy, &below, summary).map_err(ClientError::Release);
            }
            let policy = self.policy_by_hash(head, below.header.policy_hash, below.header.previous_checkpoint).await?;
            return named_release(&policy, &below, summary).map_err(ClientError::Release);
        }
        let request = Request::GetProof { chain, from: old.index(), to: Some(summary.release), with_payload: true };
        let start = old.to_state();
        let mut skipped = Vec::new();
        self.ask(old, request, &mut skipped, |response| {
            let Response::Proof(proof) = response else {
                return Err(format!("answered {}", response.name()));
            };
            let reached = proof.verify(&start, &chainiac_release::policy_rule).map_err(|e| e.to_string())?.into_inner();
            let header = &reached.state.header;
            if header.index != summary.release || header.kind != KIND_RELEASE {
                return Err(format!("block {} is no release", header.index));
            }
            let payload = reached.payload.as_deref().unwrap_or_default();
            let release = chainiac_release::check_release(
                &reached.state.policy,
                payload,
                header.timestamp_ms,
                TimeWindow::default(),
                |_| false,
            )
            .map_err(|e| e.to_string())?;
            if release.manifest.id() != summary.manifest {
                return Err("the release is not the one the summary names".into());
            }
            Ok(release)
        })
        .await
    }

    /// The policy of `head`'s chain whose hash is `hash`, in force at a block whose newest
    /// checkpoint before it is `checkpoint` (from a header proven down from `head`): taken
    /// from the checkpoint that put it in force, that one or, past checkpoints that changed
    /// only the committee, an earlier one. A member's block counts only if its policy
    /// bytes hash to `hash` (else the next member is asked); each step down follows the
    /// checkpoint's header proven from the verified head (`GetBackwardProof`), so no member
    /// can send the walk astray, only make it ask every member.
    async fn policy_by_hash(
        &self,
        head: &TrustedChain,
        hash: [u8; 32],
        mut checkpoint: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let chain = head.chain;
        let verified_head = head.to_state();
        loop {
            let mut skipped = Vec::new();
            let request = Request::GetBlock { chain, index: checkpoint };
            let carried = self
                .ask(head, request, &mut skipped, |response| match response {
                    Response::Block(Some(block)) if block.header.index == checkpoint => block
                        .policy
                        .filter(|p| chainiac_skipchain::block::policy_hash(p) == hash)
                        .ok_or_else(|| format!("block {checkpoint} carries no such policy")),
                    other => Err(format!("answered {} for block {checkpoint}", other.name())),
                })
                .await;
            if let Ok(policy) = carried {
                return Ok(policy);
            }
            if checkpoint == 0 {
                break;
            }
            // Not put in force there (a committee change, or every member withheld it): the
            // checkpoint before, from this one's header proven down from the head.
            let request = Request::GetBackwardProof { chain, from: head.index(), to: checkpoint, with_payload: false };
            let header = self
                .ask(head, request, &mut skipped, |response| {
                    let Response::BackwardProof(proof) = response else {
                        return Err(format!("answered {}", response.name()));
                    };
                    let earlier = proof.verify(&verified_head).map_err(|e| e.to_string())?.into_inner();
                    match earlier.header.index == checkpoint {
                        true => Ok(earlier.header),
                        false => Err(format!("proved block {}, not {checkpoint}", earlier.header.index)),
                    }
                })
                .await?;
            // No policy change lies between a checkpoint and the blocks after it up to the
            // next one: another policy here means the chain is not what its headers say.
            if header.policy_hash != hash || header.previous_checkpoint >= checkpoint {
                break;
            }
            checkpoint = header.previous_checkpoint;
        }
        Err(ClientError::Release(format!(
            "no checkpoint of {chain} found that put policy {} in force",
            BlockId(hash).to_hex()
        )))
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
        let mut release_index = trusted.release_index;
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
            let status = self.check_installable(head.chain, &head.policy, &checked, None).map_err(|e| e.to_string());
            release_status = Some((checked.manifest.version.clone(), status));
            release = Some(checked);
            release_index = Some(head.index());
        }
        let new_release =
            release.as_ref().map(|r| r.manifest.id()) != trusted.release.as_ref().map(|r| r.manifest.id());
        let mut updated = TrustedChain::from_state(&head, release);
        updated.release_index = release_index;
        // What rebuilders said carries over while the release does; a summary at the head
        // replaces it (one about a release the client skipped is resolved by the caller).
        updated.rebuilds = if new_release { None } else { trusted.rebuilds.clone() };
        if is_rebuild_summary(head.header.kind) && head.index() > from {
            let payload = caught.payload.clone().unwrap_or_default();
            let summary = RebuildSummary::of_block(head.header.kind, &payload)
                .map_err(|e| ClientError::Release(format!("rebuild summary at the head: {e}")))?;
            if summary.release >= head.index() {
                return Err(ClientError::Release(format!(
                    "the rebuild summary at block {} names block {} as its release",
                    head.index(),
                    summary.release
                )));
            }
            // Witnesses take rebuilds of a chain's newest release only. A summary about the
            // release held updates what rebuilders said of it; one about a later release the
            // client skipped brings that release (the caller proves it forward from `from`);
            // one about a release older than the one held is ignored: it never takes the client
            // back, nor fails the update (the chain's other news, a yank, still count). One
            // about a later release at or below the client's previous block is a release it
            // should have taken and did not (a state an older client left behind): taken too.
            // A state file from before release indices were kept holds a release at an index
            // it does not know: there a summary at or below its block stays ignored.
            let older = match (updated.release_index, &updated.release) {
                (Some(held), _) => summary.release < held,
                (None, Some(_)) => summary.release <= from,
                (None, None) => false,
            };
            if release_manifest(&updated) == Some(summary.manifest) {
                updated.release_index = Some(summary.release);
                updated.rebuilds = Some(summary);
            } else if older {
                tracing::warn!(chain = %head.chain, "ignored a rebuild summary about block {}", summary.release);
            } else {
                // A skipped release the witness sent with the links (through it, by hash from
                // the head), under the head's policy: checked here. Otherwise (no such link,
                // or a policy change since it) the caller asks for it (`release_skipped`).
                let linked = caught
                    .link_block
                    .as_ref()
                    .filter(|b| b.header.index == summary.release && b.header.policy_hash == head.header.policy_hash);
                if let Some(block) = linked {
                    let checked = named_release(&head.policy, block, &summary).map_err(|e| {
                        ClientError::Release(format!("the release the rebuild summary at the head names: {e}"))
                    })?;
                    updated.release = Some(checked);
                    updated.release_index = Some(summary.release);
                }
                updated.rebuilds = Some(summary);
            }
        }
        let (yanked, unyanked) = yank_changes(&trusted.policy, &updated.policy);
        let timeline_age_ms = match view {
            None => None,
            Some(view) => {
                let Some((leaf, entry, _)) = view.leaves.get(&head.chain) else {
                    return Err(not_recorded(head.chain));
                };
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
                Some(self.fresh_enough(&updated.policy, entry)?)
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
            yanked,
            unyanked,
            level: None,
            level_was: None,
            timeline_age_ms,
            change_lists: view.is_some_and(|v| v.update.change_lists),
        };
        Ok((updated, update))
    }

    /// The strictest freshness bound among `chains` (their policies' `max_age_ms`, the
    /// client's default for a chain without one): a timeline block older than it fails some
    /// chain of the update as stale.
    fn strictest_max_age(&self, chains: &[ChainId]) -> u64 {
        chains
            .iter()
            .filter_map(|c| self.state.chains.get(c))
            .map(|trusted| Policy::from_bytes(&trusted.policy).map(|p| p.max_age_ms).unwrap_or(self.default_max_age_ms))
            .min()
            .unwrap_or(self.default_max_age_ms)
    }

    /// The entry's age, if a chain under `policy` accepts it (freeze attacks).
    fn fresh_enough(&self, policy: &[u8], entry: &TimelineEntry) -> Result<u64, ClientError> {
        let max_age_ms = Policy::from_bytes(policy).map(|p| p.max_age_ms).unwrap_or(self.default_max_age_ms);
        let age_ms = crate::now_ms().saturating_sub(entry.time_ms);
        if age_ms > max_age_ms {
            return Err(ClientError::Stale { age_ms, max_age_ms });
        }
        Ok(age_ms)
    }

    /// A chain the change lists show did not move since its reconciled state: nothing new,
    /// as fresh as the newest entry.
    fn unmoved(&self, trusted: &TrustedChain, view: &TimelineView, skipped: Skipped) -> Result<Update, ClientError> {
        let entry = view.newest.as_ref().expect("change lists bring the newest entry");
        let timeline_age_ms = Some(self.fresh_enough(&trusted.policy, entry)?);
        Ok(Update {
            chain: trusted.chain,
            from: trusted.index(),
            to: trusted.index(),
            hops: 0,
            checkpoints: Vec::new(),
            release: None,
            skipped,
            yanked: Vec::new(),
            unyanked: Vec::new(),
            level: None,
            level_was: None,
            timeline_age_ms,
            change_lists: true,
        })
    }

    /// The timeline caught up through its change lists (SPEC §8), if every chain of
    /// `projects` is reconciled with the client's timeline block and a member of its
    /// committee serves the lists of every block since for fewer bytes than inclusion
    /// proofs of `projects` would take; None otherwise (the caller takes inclusion proofs).
    async fn changes_view(
        &self,
        timeline: ChainId,
        projects: &[ChainId],
        held: &mut HeldCommittees,
    ) -> Option<TimelineView> {
        let trusted = self.state.chains.get(&timeline)?;
        let at = trusted.index();
        let n = self.state.timeline_chains;
        if n == 0
            || projects.is_empty()
            || projects.len() > chainiac_proto::MAX_WATCHED_PREFIXES
            || !projects.iter().all(|c| self.state.synced.get(c) == Some(&at))
        {
            return None;
        }
        let max_bytes = inclusion_cost(projects.len() as u64, n, MAX_TIMELINE_CHAINS as u64);
        let mut skipped = Vec::new();
        for member in trusted.committee.roster().members() {
            match self.changes_from(member, trusted, projects, held, max_bytes).await {
                Ok((mut view, learned)) => {
                    *held = learned;
                    view.update.skipped = skipped;
                    return Some(view);
                }
                // Larger than inclusion proofs: so it is at every member.
                Err((_, Stop::Larger)) => return None,
                Err((why, Stop::Member)) => skipped.push((member.address.clone(), why)),
            }
        }
        None
    }

    /// One member's change lists since the client's timeline block, page by page, checked.
    async fn changes_from(
        &self,
        member: &chainiac_cosi::Member,
        trusted: &TrustedChain,
        projects: &[ChainId],
        held: &HeldCommittees,
        max_bytes: u64,
    ) -> Result<(TimelineView, HeldCommittees), (String, Stop)> {
        let timeline = trusted.chain;
        let pool = self.pool().map_err(|e| (e.to_string(), Stop::Member))?;
        let mut local = held.clone();
        let mut state = trusted.to_state();
        let (mut hops, mut checkpoints, mut newest, mut moved) = (0, Vec::new(), None, BTreeMap::new());
        let mut watched: Vec<_> = projects.iter().map(chain_prefix).collect();
        watched.sort_unstable();
        watched.dedup();
        loop {
            let request = Request::GetTimelineChanges {
                timeline,
                from: state.index(),
                watched: watched.clone(),
                held_appointments: named(&local),
                max_bytes,
            };
            let answer = match pool.call(&member.address, &member.key, &request, self.timeout).await {
                Ok(Response::TimelineChanges(answer)) => answer,
                Err(CallError::Remote(reply)) if reply.code == ErrorCode::Refused => {
                    return Err((format!("refused: {}", reply.message), Stop::Larger))
                }
                Ok(other) => return Err((format!("no change lists: {}", answered(&other)), Stop::Member)),
                Err(e) => return Err((format!("unavailable: {e}"), Stop::Member)),
            };
            let seen = answer
                .verify_with(&state, &local, projects, &chainiac_release::policy_rule)
                .map_err(|e| (format!("lied: change lists: {e}"), Stop::Member))?
                .into_inner();
            learn(&mut local, &seen.caught);
            hops += answer.proof.steps.len();
            checkpoints.extend(seen.caught.checkpoints);
            state = seen.caught.state;
            moved.extend(seen.moved);
            newest = seen.entry.or(newest);
            let costs = answer.page_costs(projects);
            let budget = chainiac_proto::PROOFS_RESPONSE_BUDGET as u64;
            if !changes_page_full(&costs, chainiac_proto::MAX_CHANGE_BLOCKS, budget) {
                break;
            }
        }
        // With no block since, there is no entry to show the timeline is alive. An honest
        // member's lists reach its head (it refuses otherwise); one that stops at a stale
        // block lags or withholds: the age bound then sends the client elsewhere.
        let Some(entry) = newest else {
            return Err(("no timeline block since the client's".into(), Stop::Member));
        };
        let age_ms = crate::now_ms().saturating_sub(entry.time_ms);
        let max_age_ms = self.strictest_max_age(projects);
        if age_ms > max_age_ms {
            return Err((
                format!("stale: its change lists stop at a block {age_ms} ms old, over the {max_age_ms} ms the chains allow"),
                Stop::Member,
            ));
        }
        let index = state.index();
        let leaves: HashMap<ChainId, (HeadLeaf, TimelineEntry, u64)> =
            projects.iter().filter_map(|c| moved.get(c).map(|leaf| (*c, (*leaf, entry.clone(), index)))).collect();
        let unmoved = projects.iter().copied().filter(|c| !leaves.contains_key(c)).collect();
        let mut holders: Vec<chainiac_cosi::Member> = Vec::new();
        for committee in [&*trusted.committee, &*state.committee] {
            for member in committee.roster().members() {
                if !holders.iter().any(|h| h.key == member.key) {
                    holders.push(member.clone());
                }
            }
        }
        let update = Update {
            chain: timeline,
            from: trusted.index(),
            to: index,
            hops,
            checkpoints,
            release: None,
            skipped: Vec::new(),
            yanked: Vec::new(),
            unyanked: Vec::new(),
            level: None,
            level_was: None,
            timeline_age_ms: Some(age_ms),
            change_lists: true,
        };
        Ok((TimelineView { leaves, unmoved, newest: Some(entry), reached: state, update, holders }, local))
    }

    /// The newest timeline block(s) holding `projects`, proven from the trusted timeline
    /// state, from the first member of the timeline's committee whose batches and proof all
    /// check (batches and proof come from one member, so a forged batch costs only that
    /// member). A member whose block records only some of the chains (a chain newer than
    /// its last timeline block) is kept as a fallback; the chains it lacks then fail alone.
    /// Every committee the accepted proof brings is added to `held`.
    async fn catch_up_timeline(
        &self,
        timeline: ChainId,
        projects: &[ChainId],
        held: &mut HeldCommittees,
    ) -> Result<TimelineView, ClientError> {
        let trusted = self.state.chains.get(&timeline).cloned().ok_or(ClientError::NotAnchored(timeline))?;
        let max_age_ms = self.strictest_max_age(projects);
        let mut skipped = Vec::new();
        // The first member whose block is fresh and records every chain is used; failing
        // that, the best: fresh before stale, then the most chains recorded. A member whose
        // newest block is older than the chains allow is stale (frozen, or lagging): the
        // next one may be fresh, and its block would fail every chain as stale.
        let mut best: Option<(TimelineView, HeldCommittees, bool)> = None;
        for member in trusted.committee.roster().members() {
            match self.timeline_from(member, &trusted, projects, held).await {
                Ok((view, learned)) => {
                    let recorded = view.leaves.len();
                    let age_ms = view.newest.as_ref().map(|e| crate::now_ms().saturating_sub(e.time_ms));
                    let fresh = age_ms.is_some_and(|age| age <= max_age_ms);
                    if fresh && recorded == projects.len() {
                        best = Some((view, learned, fresh));
                        break;
                    }
                    let why = match age_ms {
                        _ if fresh => format!("its timeline block records {recorded} of the {} chains asked", projects.len()),
                        Some(age) => format!("stale: its newest timeline block is {age} ms old, over the {max_age_ms} ms the chains allow"),
                        None => "stale: it serves no timeline block with an entry".into(),
                    };
                    skipped.push((member.address.clone(), why));
                    let better =
                        best.as_ref().is_none_or(|(b, _, b_fresh)| (fresh, recorded) > (*b_fresh, b.leaves.len()));
                    if better {
                        best = Some((view, learned, fresh));
                    }
                }
                Err(why) => skipped.push((member.address.clone(), why)),
            }
        }
        let best = best.map(|(view, learned, _)| (view, learned));
        let Some((mut view, learned)) = best else {
            return Err(ClientError::NoHonestWitness(skipped));
        };
        *held = learned;
        view.update.skipped = skipped;
        Ok(view)
    }

    /// One member's timeline batches for `projects` and the proof of the block(s) they
    /// name, checked; with the committees held after that proof. Errors say how it lied
    /// or failed.
    async fn timeline_from(
        &self,
        member: &chainiac_cosi::Member,
        trusted: &TrustedChain,
        projects: &[ChainId],
        held: &HeldCommittees,
    ) -> Result<(TimelineView, HeldCommittees), String> {
        let timeline = trusted.chain;
        let pool = self.pool().map_err(|e| e.to_string())?;
        let call = |request: Request| async move {
            pool.call(&member.address, &member.key, &request, self.timeout)
                .await
                .map_err(|e| format!("unavailable: {e}"))
        };
        let mut batches: Vec<TimelineBatch> = Vec::new();
        let mut leaves = HashMap::new();
        for chunk in projects.chunks(MAX_TIMELINE_CHAINS) {
            let request = Request::GetTimelineBatch { timeline: Some(timeline), chains: chunk.to_vec() };
            match call(request).await? {
                Response::TimelineBatch(batch) => {
                    let proven = check_batch(&batch, trusted, chunk).map_err(|e| format!("lied: {e}"))?;
                    leaves
                        .extend(proven.into_iter().map(|leaf| (leaf.chain, (leaf, batch.entry.clone(), batch.index))));
                    batches.push(batch);
                }
                // None of this chunk is recorded yet: those chains fail alone.
                Response::Error(reply) if reply.code == ErrorCode::NotFound => {}
                other => return Err(format!("lied: {}", answered(&other))),
            }
        }
        if batches.is_empty() && !projects.is_empty() {
            return Err("its timeline records none of the chains asked".into());
        }
        // Prove each timeline block the batches name, oldest first (batches for different
        // chunks may come from blocks made between them), or the head if none.
        let mut targets: Vec<Option<u64>> = batches.iter().map(|b| Some(b.index)).collect();
        targets.sort_unstable();
        targets.dedup();
        if targets.is_empty() {
            targets.push(None);
        }
        let mut local = held.clone();
        let mut state = trusted.to_state();
        let (mut hops, mut checkpoints, mut entry) = (0, Vec::new(), None);
        let mut signers: Vec<Committee> = Vec::new();
        for target in targets {
            // Every batch's entry is checked against the proven header's payload hash; the
            // payload itself is only asked for when no batch brought an entry.
            let query = ProofQuery { chain: timeline, from: state.index(), to: target };
            let with_payload = target.is_none();
            let request = Request::GetProofs { queries: vec![query], with_payload, held_appointments: named(&local) };
            let proof = single_proof(call(request).await?).map_err(|e| format!("lied: {e}"))?;
            let reached = proof
                .verify_with(&state, &local, &chainiac_release::policy_rule)
                .map_err(|e| format!("lied: {e}"))?
                .into_inner();
            let index = reached.state.index();
            if target.is_some_and(|t| index != t) {
                return Err(format!("lied: proved timeline block {index} instead of {target:?}"));
            }
            let at_index: Vec<&TimelineBatch> = batches.iter().filter(|b| b.index == index).collect();
            if at_index.iter().any(|b| payload_hash(&b.entry.to_bytes()) != reached.state.header.payload_hash) {
                return Err(format!("lied: a timeline entry differs from block {index}'s"));
            }
            entry = match (at_index.first(), &reached.payload) {
                (Some(batch), _) => Some(batch.entry.clone()),
                // The genesis holds no entry; a block that did not move brings no payload.
                (None, Some(payload)) if index > 0 => Some(
                    TimelineEntry::from_bytes(payload)
                        .map_err(|e| format!("lied: timeline block {index}'s entry: {e}"))?,
                ),
                (None, _) => None,
            };
            learn(&mut local, &reached);
            // The last step was signed by the committee the step before it names (or the
            // state it started from names): every committee named was held or carried.
            if let Some((_, before)) = proof.steps.split_last() {
                let named = before
                    .iter()
                    .fold(state.header.committee_hash, |hash, step| step.header.committee_hash.unwrap_or(hash));
                let signer = if named == state.header.committee_hash {
                    Some((*state.committee).clone())
                } else {
                    local.get(&named).map(|a| a.committee().clone())
                };
                signers.extend(signer);
            }
            hops += proof.steps.len();
            checkpoints.extend(reached.checkpoints);
            state = reached.state;
        }
        let update = Update {
            chain: timeline,
            from: trusted.index(),
            to: state.index(),
            hops,
            checkpoints,
            release: None,
            skipped: Vec::new(),
            yanked: Vec::new(),
            unyanked: Vec::new(),
            level: None,
            level_was: None,
            timeline_age_ms: entry.as_ref().map(|e| crate::now_ms().saturating_sub(e.time_ms)),
            change_lists: false,
        };
        let mut holders: Vec<chainiac_cosi::Member> = Vec::new();
        for committee in signers.iter().chain(std::iter::once(&*state.committee)) {
            for member in committee.roster().members() {
                if !holders.iter().any(|h| h.key == member.key) {
                    holders.push(member.clone());
                }
            }
        }
        let unmoved = HashSet::new();
        Ok((TimelineView { leaves, unmoved, newest: entry, reached: state, update, holders }, local))
    }

    /// Proofs for `chunk`, asked of `members` in turn until every chain has a
    /// verified proof reaching at least the head the timeline records for it (`recorded`),
    /// or none is left to ask. A proof that shows the timeline records another block at
    /// the client's index, or at the index a forward proof reaches, is fork evidence: the
    /// chain goes into `forks` and the proof is not kept. A witness whose proof stops short is skipped like a liar, so
    /// one freezing witness cannot stop an update; if every one stops short, the best such
    /// proof is kept and the timeline check refuses it as a freeze. Returns the witnesses
    /// skipped and why.
    async fn prove_chunk(
        &self,
        chunk: &[ChainId],
        members: &[chainiac_cosi::Member],
        how: Asked<'_>,
        recorded: &HashMap<ChainId, (u64, BlockId)>,
        held: &mut HeldCommittees,
        proven: &mut Proven,
    ) -> Result<Skipped, ClientError> {
        let pool = self.pool()?;
        let states: HashMap<ChainId, ChainState> =
            chunk.iter().map(|chain| (*chain, self.state.chains[chain].to_state())).collect();
        let mut pending: Vec<ChainId> = chunk.to_vec();
        let mut skipped = Vec::new();
        let mut short: HashMap<ChainId, Caught> = HashMap::new();
        for member in members {
            let mut asking = pending.clone();
            while !asking.is_empty() {
                let request = how.request(&asking, &states, named(held));
                let answers = match pool.call(&member.address, &member.key, &request, self.timeout).await {
                    Ok(response) => match how.check(response, &asking, &states, held) {
                        Ok(answers) => answers,
                        Err(other) => {
                            skipped.push((member.address.clone(), format!("lied: {other}")));
                            break;
                        }
                    },
                    Err(e) => {
                        skipped.push((member.address.clone(), format!("unavailable: {e}")));
                        break;
                    }
                };
                let mut busy = Vec::new();
                let mut lie = None;
                // Every proof that verifies is kept, even from a witness caught lying about
                // another chain: a proof stands on its signatures and hashes, not on who
                // sent it.
                for (chain, answer) in asking.iter().zip(answers) {
                    match answer {
                        Ok(Ok(reached))
                            if reached.caught.payload.is_none()
                                && reached.caught.state.index() > states[chain].index() =>
                        {
                            if lie.is_none() {
                                lie = Some(format!("lied: chain {chain}: left out the new head's payload"));
                            }
                        }
                        Ok(Ok(reached)) => {
                            let index = reached.caught.state.index();
                            match recorded.get(chain) {
                                // Both signed by the cothority, both at one index: a fork.
                                Some(&(head, id)) if head == index && reached.caught.state.id != id => {
                                    let why = format!(
                                        "chain {chain}: proved block {index} is not the block {index} the timeline records: a fork"
                                    );
                                    skipped.push((member.address.clone(), why));
                                    proven.forks.insert(*chain, index);
                                }
                                Some(&(head, _)) if head > index => {
                                    let why = format!(
                                        "chain {chain}: proved head {index}, the timeline records {head}: frozen or behind"
                                    );
                                    skipped.push((member.address.clone(), why));
                                    if short.get(chain).is_none_or(|s| s.caught.state.index() < index) {
                                        short.insert(*chain, reached);
                                    }
                                }
                                _ => {
                                    proven.caught.insert(*chain, reached);
                                }
                            }
                        }
                        // The timeline, not this member, shows the other block.
                        Ok(Err(ProofError::Fork { index })) => {
                            skipped.push((
                                member.address.clone(),
                                format!("chain {chain}: {}", ProofError::Fork { index }),
                            ));
                            proven.forks.insert(*chain, index);
                        }
                        Ok(Err(e)) if lie.is_none() => lie = Some(format!("lied: chain {chain}: {e}")),
                        Ok(Err(_)) => {}
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
            pending.retain(|chain| !proven.caught.contains_key(chain));
            if pending.is_empty() {
                break;
            }
        }
        for chain in pending {
            if let Some(reached) = short.remove(&chain) {
                proven.caught.insert(chain, reached);
            }
        }
        Ok(skipped)
    }
}

/// How a chunk's proofs are asked for: forward proofs checking every hop's signature, or
/// linked proofs through the heads a verified timeline block records.
#[derive(Clone, Copy)]
enum Asked<'a> {
    Forward,
    Linked(&'a HashMap<ChainId, (u64, BlockId)>),
}

/// One chain's answer: refused by the witness, or a proof that verified or did not.
type Answer = Result<Result<Caught, ProofError>, ErrorReply>;

impl Asked<'_> {
    fn request(&self, asking: &[ChainId], states: &HashMap<ChainId, ChainState>, held: Vec<[u8; 32]>) -> Request {
        match self {
            Asked::Forward => Request::GetProofs {
                queries: asking.iter().map(|c| ProofQuery { chain: *c, from: states[c].index(), to: None }).collect(),
                with_payload: true,
                held_appointments: held,
            },
            Asked::Linked(recorded) => Request::GetLinkedProofs {
                queries: asking
                    .iter()
                    .map(|c| LinkedQuery { chain: *c, from: states[c].index(), recorded: recorded[c].0 })
                    .collect(),
                with_payload: true,
                held_appointments: held,
            },
        }
    }

    /// Each chain's answer, its proof verified; every committee a verified proof brought is
    /// held afterwards. `Err` names an answer of the wrong kind or length.
    fn check(
        &self,
        response: Response,
        asking: &[ChainId],
        states: &HashMap<ChainId, ChainState>,
        held: &mut HeldCommittees,
    ) -> Result<Vec<Answer>, String> {
        match (self, response) {
            (Asked::Forward, Response::Proofs(answers)) if answers.len() == asking.len() => Ok(asking
                .iter()
                .zip(answers)
                .map(|(chain, answer)| {
                    answer.map(|proof| {
                        let reached =
                            proof.verify_with(&states[chain], held, &chainiac_release::policy_rule)?.into_inner();
                        learn(held, &reached);
                        Ok(Caught { caught: reached, hops: proof.steps.len() })
                    })
                })
                .collect()),
            (Asked::Linked(recorded), Response::LinkedProofs(answers)) if answers.len() == asking.len() => Ok(asking
                .iter()
                .zip(answers)
                .map(|(chain, answer)| {
                    answer.map(|proof| {
                        let reached = proof
                            .verify_named(
                                &states[chain],
                                recorded[chain],
                                held,
                                &chainiac_release::policy_rule,
                                &chainiac_release::names_block,
                            )?
                            .into_inner();
                        learn(held, &reached);
                        Ok(Caught { caught: reached, hops: proof.links.len() + proof.beyond.steps.len() })
                    })
                })
                .collect()),
            (_, other) => Err(answered(&other)),
        }
    }
}

fn not_recorded(chain: ChainId) -> ClientError {
    ClientError::Timeline(format!(
        "no witness's timeline block records chain {chain} yet (a new chain?): its freshness is unknown"
    ))
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

/// The yanks `new` lists that `old` does not, and the versions `old` yanked that `new` no
/// longer does (the root keys took them back): what an update reports. Both are the
/// chain's policies (a chain whose policy is not a release policy has none).
fn yank_changes(old: &[u8], new: &[u8]) -> (Vec<chainiac_release::Yank>, Vec<String>) {
    if old == new {
        return (Vec::new(), Vec::new());
    }
    let yanks = |bytes: &[u8]| Policy::from_bytes(bytes).map(|p| p.yanked).unwrap_or_default();
    let (before, after) = (yanks(old), yanks(new));
    let taken_back = before.iter().filter(|y| !after.iter().any(|a| a.version == y.version));
    let unyanked = taken_back.map(|y| y.version.clone()).collect();
    (after.into_iter().filter(|y| !before.contains(y)).collect(), unyanked)
}

/// How many chains' releases below their heads an update asks for at once.
const BELOW_IN_FLIGHT: usize = 16;

/// What an updated chain still needs from below its head.
enum Below {
    /// The release a summary at the head names (the client skipped it).
    Named(RebuildSummary),
    /// The newest release between the client's block and a head that is neither a release
    /// nor a summary, if any.
    Walk,
}

/// What was found below a head: a release (its index, payload and, from a walk, the summary
/// found with it or none), or, from a walk that found no release, the newest summary.
enum Found {
    Release(u64, Box<ReleasePayload>, Option<Option<RebuildSummary>>),
    Summary(Option<RebuildSummary>),
}

/// The release block a rebuild summary names (reached by hash links from a verified head
/// whose policy is in force there), checked as a head release under `policy`, its manifest
/// the summary's.
fn named_release(policy: &[u8], block: &EarlierBlock, summary: &RebuildSummary) -> Result<ReleasePayload, String> {
    if block.header.index != summary.release || block.header.kind != KIND_RELEASE {
        return Err(format!("block {} is no release", block.header.index));
    }
    let payload = block.payload.as_deref().unwrap_or_default();
    let release =
        chainiac_release::check_release(policy, payload, block.header.timestamp_ms, TimeWindow::default(), |_| false)
            .map_err(|e| e.to_string())?;
    if release.manifest.id() != summary.manifest {
        return Err("the release is not the one the summary names".into());
    }
    Ok(release)
}

fn release_manifest(chain: &TrustedChain) -> Option<chainiac_release::ManifestId> {
    chain.release.as_ref().map(|r| r.manifest.id())
}
