//! Rounds, sans I/O: what a leader does next at each step of getting one proposal into its
//! chain ([`LeaderRound`]), and what a member does with an announce and a challenge
//! ([`Reservations`], [`accept_announce`], [`accept_challenge`]). Like quinn-proto's
//! `Connection`, these know no network, disk, clock or cryptography: the node
//! (`node/rounds.rs`) reads the head, gathers states, runs the CoSi tree, stores votes and
//! locks and appends, feeding what happened back as an [`Event`] and carrying out the
//! [`Action`] it gets; the whole-cluster simulation (`tests/cluster.rs`) drives the same
//! machines under a seeded scheduler that drops, reorders and duplicates messages and
//! crashes members.
//!
//! A leader's path through one proposal (SPEC §9.1):
//! 1. *Pass.* Read the head; the proposal goes at the next index. Each pass after the first
//!    starts after a random pause (racing leaders settle).
//! 2. *Fast path.* Unlocked here: lead this node's own block at the ballot after its own,
//!    without gathering. Locked here: gather first (a locked node signs only its lock's block).
//! 3. *Gather.* Ask the members for their agreement states (the ones presumed down only if
//!    the others are too few), then [`agreement::plan`]: re-lead the highest lock with its
//!    certificate, or this node's own block, above every ballot reported.
//! 4. *Attempts.* Up to [`MAX_ATTEMPTS`] announces at consecutive ballots, leaving out
//!    members presumed down, members that did not commit (where they hide others), children
//!    whose subtree withheld votes, and members named by a failed signature; members that
//!    refused a challenge as an honest member may, only while the others reach the
//!    threshold. A signature that falls short at an unbeatable ballot is signed again at
//!    it (a re-sign, not counted as an attempt).
//! 5. *End.* A signed own block: done. A re-led block: the proposal goes on the next index
//!    (a timeline tick is done: the timeline moved). Members locked or voted elsewhere: next
//!    pass. Another leader filled the index: next pass, on the new head.

use crate::agreement::{self, Ballot, Certificate, Committee, Durable, Refusal};
use chainiac_cosi::protocol::Tree;
use chainiac_cosi::Mask;
use chainiac_proto::message::{ErrorCode, ErrorReply};
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Announces per gathered plan, each at the next ballot, before the leader gathers again.
pub const MAX_ATTEMPTS: usize = 3;
/// Passes per proposal: each index a re-led block fills moves the proposal one on.
pub const MAX_PASSES: usize = 5;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply { code, message: message.into() }
}

/// The block a leader announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proposed<B> {
    /// The proposal's own block, built on the head the pass read.
    Own,
    /// A block members are locked on, re-led with the certificate that justifies it.
    Locked(Certificate<B>),
}

/// What the announce of one attempt came to, as the node's CoSi leader saw it.
#[derive(Debug, Clone)]
pub struct AnnounceOutcome {
    /// `Some(why)` when too few members committed to challenge: the members whose
    /// commitment is missing, and the error that says so.
    pub below_threshold: Option<(Vec<usize>, ErrorReply)>,
    /// Members whose commitment is in the aggregate, anywhere in the tree (the challenge's
    /// mask).
    pub committed: Vec<usize>,
    /// Members with a valid vote at this attempt's ballot, this node included.
    pub voters: BTreeSet<usize>,
    /// Some child answered `Busy`: another leader holds it for its block at this index.
    pub busy: bool,
    /// Members that refused as locked elsewhere or past the ballot (`Promised`).
    pub promised_elsewhere: Vec<usize>,
    /// Children that answered that the index is filled (`Conflict`): this node missed the
    /// block there.
    pub filled: Vec<usize>,
    /// The members this node presumes down now that it has seen who answered: the next
    /// gathering and run leave them out (a dead member then costs one timeout, not one per
    /// step).
    pub presumed_down: BTreeSet<usize>,
    /// The ballot was the last of this node's frontier when it announced
    /// ([`agreement::frontier`]): no member can vote past it before the next epoch opens,
    /// so a signature that falls short is re-signed at it ([`Step::Announce`]).
    pub unbeatable: bool,
}

/// What the challenge of one attempt came to.
#[derive(Debug, Clone)]
pub enum ChallengeOutcome {
    /// The collective signature is complete.
    Signed,
    /// It is not. `members`: responses missing or wrong, or refusals no honest member
    /// gives (left out of the rest of the run). `refused`: refusals an honest member may
    /// give — `Promised` below an unbeatable ballot (a liar pushed it past the ballot while
    /// the round ran) or `Conflict` (the index filled there) — left out only while the
    /// others reach the threshold, those that refused most first, and asked again when
    /// too few answer without them: leaving honest refusers out spent the next attempt,
    /// sometimes the unbeatable one, on too few members, while never leaving a refuser
    /// out let a liar that refuses every challenge stall the index (an attack review).
    /// `filled`: those of `refused` that answered `Conflict` (the index is filled there):
    /// the leader catches up from them once a pass, and if its head does not move their
    /// word was false and they are faults.
    Faults { members: Vec<usize>, refused: Vec<usize>, filled: Vec<usize>, error: ErrorReply },
    /// It failed for a reason no retry mends.
    Broken(ErrorReply),
}

/// What happened, as the node feeds it to the machine.
#[derive(Debug, Clone)]
pub enum Event<B> {
    /// The head the pass reads: the index proposed at, the committee that signs there and
    /// this node's position in it, this node's own state there, and the members this node
    /// presumes down (they missed a recent round).
    /// `proposal_appended`: a block appended since the proposal began is the proposal's
    /// (the driver compares contents): another leader re-led it from this node's locks.
    Head {
        index: u64,
        committee: Committee,
        me: usize,
        own: Durable<B>,
        presumed_down: BTreeSet<usize>,
        /// Members presumed down that gatherings ask all the same: silent below a parent
        /// that answered, in a round this node led lately (their silence may be a refusal:
        /// a ballot pushed past its plans), or shown faulty (alive).
        hidden: BTreeSet<usize>,
        proposal_appended: bool,
        /// The highest ballot this node's clock admits now ([`agreement::frontier`]).
        frontier: Ballot,
    },
    /// This node's own state, read now (its own rounds and others' announces move it), and
    /// the states of the members that answered a [`Step::Gather`] (complete certificates
    /// only: the node checked each reported lock).
    /// `filled`: members that answered that the index is filled there (this node missed
    /// the block: it catches up, as after an announce). `frontier`: the highest ballot this
    /// node's clock admits now ([`agreement::frontier`]); reports count up to it.
    Gathered {
        own: Durable<B>,
        reports: Vec<Durable<B>>,
        filled: Vec<usize>,
        frontier: Ballot,
    },
    /// The announce did not go out: the chain moved, another block holds this node's
    /// reservation, or this node's own vote was refused (its reservation is released).
    NotAnnounced(ErrorReply),
    Announced(AnnounceOutcome),
    /// This node could not lock on the certificate it built.
    LockRefused(ErrorReply),
    /// The catch-up is over; `moved`: this node's head moved past the index.
    CaughtUp {
        moved: bool,
    },
    Challenged(ChallengeOutcome),
    /// The signed block is appended; `is_proposal`: it is the proposal's own (a re-led
    /// block may be the same proposal, retried after its first leader died).
    Appended {
        is_proposal: bool,
    },
}

/// What the node does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<B> {
    /// Read the chain's head and this node's state at the next index: [`Event::Head`].
    ReadHead,
    /// Read this node's state at the index and ask these members (perhaps none) for theirs:
    /// [`Event::Gathered`].
    Gather {
        ask: Vec<usize>,
    },
    /// Wait until `ballot` opens by this node's clock ([`agreement::opens_in_ms`]: at once
    /// unless a liar or a rival pushed ballots to the frontier), check the chain has not
    /// moved, vote and reserve the index ([`accept_announce`], the state stored), commit and
    /// announce over the tree rooted at this node without `excluded`, signed by this node
    /// (it owns `ballot`): [`Event::Announced`] (or [`Event::NotAnnounced`]).
    ///
    /// A *re-sign* is an announce at the ballot of the attempt before, of the same block:
    /// its challenge at the frontier's last ballot fell short (members named by the
    /// signature are now excluded), nobody can have outbid that ballot yet, and members
    /// locked on the block there vote for it again ([`Durable::vote`]) in a fresh session.
    /// The driver does nothing different: the members' and its own rules admit it.
    Announce {
        proposed: Proposed<B>,
        ballot: Ballot,
        attempt: usize,
        excluded: BTreeSet<usize>,
        /// A round at the frontier ([`agreement::at_frontier`]): over a star, each phase
        /// waiting [`agreement::FRONTIER_PHASE_MS`] at most.
        at_frontier: bool,
    },
    /// Catch up on the chain from these members (in turn, until one serves the blocks,
    /// within one overall deadline), which answered that the index is filled:
    /// [`Event::CaughtUp`]. Without it a leader that missed a commit would propose at a
    /// filled index for ever.
    CatchUp {
        from: Vec<usize>,
    },
    /// Lock on the certificate of these voters' votes for the announced block at `ballot`
    /// (stored), respond, and challenge the committed members: [`Event::Challenged`] (or
    /// [`Event::LockRefused`]).
    Challenge {
        ballot: Ballot,
        voters: BTreeSet<usize>,
    },
    /// Append the signed block, release the index and send it to every member:
    /// [`Event::Appended`].
    Append,
    /// Finished: the proposal's block is in the chain.
    Done,
    /// Finished: a block that was not the proposal filled the index, and a timeline tick
    /// asks no more (the timeline moved).
    Adopted,
    Fail(ErrorReply),
}

/// A [`Step`] and what to do first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action<B> {
    /// Abort the previous attempt's session down the tree.
    pub abort: bool,
    /// Release this node's reservations at the index.
    pub release: bool,
    /// Pause at random (50–450 ms) first.
    pub back_off: bool,
    /// A led round ended without a block (a metric).
    pub round_failed: bool,
    pub step: Step<B>,
}

impl<B> Action<B> {
    fn step(step: Step<B>) -> Self {
        Action { abort: false, release: false, back_off: false, round_failed: false, step }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    /// The first try of a pass, with no gathering.
    Fast,
    /// This node's block after gathering.
    Own,
    /// A locked block re-led.
    Locked,
}

#[derive(Debug)]
struct Run<B> {
    kind: RunKind,
    proposed: Proposed<B>,
    /// The ballot of the current attempt (of the first before it began).
    ballot: Ballot,
    attempt: usize,
    excluded: BTreeSet<usize>,
    /// The members of `excluded` left out only for being presumed down (none once they
    /// were asked again).
    presumed: BTreeSet<usize>,
    last_error: ErrorReply,
    /// The current attempt's ballot was the frontier's last when announced.
    unbeatable: bool,
    /// Attempts that were re-signs: they do not count against [`MAX_ATTEMPTS`].
    resigns: usize,
}

/// Where a leader goes on after a catch-up that found nothing.
#[derive(Debug)]
enum Resume<B> {
    Announced(Box<(Run<B>, AnnounceOutcome)>),
    /// A challenge some members refused as filled (a `ChallengeOutcome::Faults`): those
    /// members are faults if the head did not move.
    Challenged(Box<(Run<B>, ChallengeOutcome)>),
    Gathered {
        reports: Vec<Durable<B>>,
        asked_presumed: bool,
    },
}

#[derive(Debug)]
enum Phase<B> {
    ReadingHead,
    Gathering {
        reports: Vec<Durable<B>>,
        asked_presumed: bool,
    },
    Announcing(Run<B>),
    /// Catching up, with what to go on with if the head does not move.
    CatchingUp(Resume<B>),
    Challenging(Run<B>),
    Appending(RunKind),
    Finished,
}

/// One proposal's leader, from the first head read to a block in the chain (or a failure).
#[derive(Debug)]
pub struct LeaderRound<B> {
    committee: Committee,
    me: usize,
    branching: usize,
    /// A timeline tick: its block records its own moment, so it is not rebuilt on a new
    /// head, and a re-led block at its index is enough.
    tick: bool,
    pass: usize,
    index: u64,
    /// The highest ballot this node's clock admitted at the last head read or gathering.
    frontier: Ballot,
    own: Durable<B>,
    presumed_down: BTreeSet<usize>,
    /// The fast path's failure in this pass, if it failed.
    fast_failure: Option<ErrorReply>,
    /// This pass caught up once already (a liar's `Conflict` costs one try a pass).
    caught_up: bool,
    /// Why the last pass ended without the proposal's block, if a run failed.
    last_failure: Option<ErrorReply>,
    /// Members that were silent in an attempt though their parent committed: asked when
    /// gathering even if presumed down.
    hidden_silent: BTreeSet<usize>,
    /// Members that refused an announce as past its ballot or locked elsewhere: their
    /// states decide the next plan, so they are asked when gathering even if presumed down.
    past_ballot: BTreeSet<usize>,
    /// Challenges each member refused during this proposal ([`ChallengeOutcome::Faults`]).
    refusals: HashMap<usize, usize>,
    phase: Phase<B>,
}

impl<B: Clone + PartialEq + std::fmt::Debug> LeaderRound<B> {
    /// A leader over trees of `branching`; the first action is [`Step::ReadHead`].
    pub fn new(branching: usize, tick: bool) -> (Self, Action<B>) {
        let machine = LeaderRound {
            committee: Committee { members: 1, threshold: 1 },
            me: 0,
            branching: branching.max(1),
            tick,
            pass: 0,
            index: 0,
            frontier: Ballot::MAX,
            own: Durable::default(),
            presumed_down: BTreeSet::new(),
            fast_failure: None,
            caught_up: false,
            last_failure: None,
            hidden_silent: BTreeSet::new(),
            past_ballot: BTreeSet::new(),
            refusals: HashMap::new(),
            phase: Phase::ReadingHead,
        };
        (machine, Action::step(Step::ReadHead))
    }

    /// Whether the machine has finished (its last action was `Done`, `Adopted` or `Fail`).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Feeds what happened; returns what to do next. An event that does not fit the phase
    /// (a driver bug) fails the proposal rather than panicking.
    pub fn handle(&mut self, event: Event<B>) -> Action<B> {
        match (std::mem::replace(&mut self.phase, Phase::Finished), event) {
            (
                Phase::ReadingHead,
                Event::Head { index, committee, me, own, presumed_down, hidden, proposal_appended, frontier },
            ) => {
                self.committee = committee;
                self.me = me;
                self.frontier = frontier;
                self.hidden_silent.extend(hidden);
                self.on_head(index, own, presumed_down, proposal_appended)
            }
            (
                Phase::Gathering { mut reports, asked_presumed },
                Event::Gathered { own, reports: more, filled, frontier },
            ) => {
                reports.extend(more);
                self.own = own;
                self.frontier = frontier;
                // Only when too few reported: with `t` states the index is not filled for
                // the committee, and a liar's word would only cost a catch-up a pass.
                if !filled.is_empty() && !self.caught_up && 1 + reports.len() < self.committee.threshold {
                    self.caught_up = true;
                    self.phase = Phase::CatchingUp(Resume::Gathered { reports, asked_presumed });
                    return Action::step(Step::CatchUp { from: filled });
                }
                self.on_gathered(reports, asked_presumed)
            }
            (Phase::Announcing(run), Event::NotAnnounced(error)) => self.end_run(run.kind, error, false),
            (Phase::Announcing(run), Event::Announced(outcome)) => self.on_announced(run, outcome),
            (Phase::CatchingUp(_), Event::CaughtUp { moved: true }) => {
                // The index is filled: the proposal goes on the new head (a tick is over:
                // the timeline moved without it).
                let mut action = if self.tick {
                    let error = err(ErrorCode::Conflict, format!("index {} was filled meanwhile", self.index));
                    self.finish(Action::step(Step::Fail(error)))
                } else {
                    self.next_pass()
                };
                action.round_failed = true;
                action
            }
            (Phase::CatchingUp(Resume::Announced(resume)), Event::CaughtUp { moved: false }) => {
                let (run, outcome) = *resume;
                let mut action = self.on_announced(run, outcome);
                action.abort = false; // aborted before the catch-up
                action
            }
            (Phase::CatchingUp(Resume::Gathered { reports, asked_presumed }), Event::CaughtUp { moved: false }) => {
                self.on_gathered(reports, asked_presumed)
            }
            (Phase::CatchingUp(Resume::Challenged(resume)), Event::CaughtUp { moved: false }) => {
                let (run, outcome) = *resume;
                self.on_challenged(run, outcome)
            }
            (Phase::Challenging(run), Event::LockRefused(error)) => {
                let mut action = self.end_run(run.kind, error, true);
                action.abort = true;
                action
            }
            (Phase::Challenging(run), Event::Challenged(outcome)) => self.on_challenged(run, outcome),
            (Phase::Appending(kind), Event::Appended { is_proposal }) => self.on_appended(kind, is_proposal),
            (_, event) => self.finish(Action::step(Step::Fail(err(
                ErrorCode::Internal,
                format!("round driver: {event:?} does not fit the round's phase"),
            )))),
        }
    }

    fn finish(&mut self, action: Action<B>) -> Action<B> {
        self.phase = Phase::Finished;
        action
    }

    fn on_head(
        &mut self,
        index: u64,
        own: Durable<B>,
        presumed_down: BTreeSet<usize>,
        proposal_appended: bool,
    ) -> Action<B> {
        self.index = index;
        self.presumed_down = presumed_down;
        self.fast_failure = None;
        self.caught_up = false;
        if proposal_appended && self.pass > 0 {
            // The head moved during this proposal, to the proposal itself (another leader
            // re-led it from this node's locks): done, not appended twice.
            return self.finish(Action::step(Step::Done));
        }
        if own.lock.is_none() {
            match agreement::next_owned(own.voted, self.me, self.committee.members) {
                Some(ballot) => {
                    self.own = own;
                    self.start_run(RunKind::Fast, Proposed::Own, ballot)
                }
                None => self.finish(Action::step(Step::Fail(err(
                    ErrorCode::Refused,
                    "no ballot is left above this member's at the index",
                )))),
            }
        } else {
            self.own = own;
            self.gather()
        }
    }

    /// The first gathering of a pass: the members not presumed down (possibly none: the
    /// answer then brings this node's own state only).
    fn gather(&mut self) -> Action<B> {
        let n = self.committee.members;
        // Members silent deep in a tree whose branch answered may have refused (a refusal
        // stops at their parent) rather than be down: they are asked too, or the leader
        // would never learn that a liar pushed their ballot above its plans.
        let ask: Vec<usize> = (0..n)
            .filter(|&i| {
                i != self.me
                    && (!self.presumed_down.contains(&i)
                        || self.hidden_silent.contains(&i)
                        || self.past_ballot.contains(&i))
            })
            .collect();
        self.phase = Phase::Gathering { reports: Vec::new(), asked_presumed: false };
        Action::step(Step::Gather { ask })
    }

    /// Plans from this node's fresh state and the others' reports, after asking the members
    /// presumed down too if the others were too few.
    fn on_gathered(&mut self, reports: Vec<Durable<B>>, asked_presumed: bool) -> Action<B> {
        let n = self.committee.members;
        // Those asked already (silent below an answering branch) are not asked twice: a
        // report must count once.
        let presumed: Vec<usize> = self
            .presumed_down
            .iter()
            .copied()
            .filter(|&i| i != self.me && i < n && !self.hidden_silent.contains(&i) && !self.past_ballot.contains(&i))
            .collect();
        if !asked_presumed && 1 + reports.len() < self.committee.threshold && !presumed.is_empty() {
            self.phase = Phase::Gathering { reports, asked_presumed: true };
            return Action::step(Step::Gather { ask: presumed });
        }
        let mut all = Vec::with_capacity(1 + reports.len());
        all.push(self.own.clone());
        all.extend(reports);
        self.plan(all)
    }

    fn plan(&mut self, reports: Vec<Durable<B>>) -> Action<B> {
        let Some(plan) = agreement::plan(self.committee, &reports, self.own.voted, self.me, self.frontier) else {
            let error = self.fast_failure.take().unwrap_or_else(|| {
                err(
                    ErrorCode::Unavailable,
                    format!(
                        "only {} of {} members reported their state at index {}",
                        reports.len(),
                        self.committee.members,
                        self.index
                    ),
                )
            });
            return self.finish(Action::step(Step::Fail(error)));
        };
        match plan.justification {
            Some(certificate) => self.start_run(RunKind::Locked, Proposed::Locked(certificate), plan.ballot),
            None => {
                // Another leader's ballot beat the fast path: a random pause before trying
                // above it.
                let beaten = self.fast_failure.as_ref().is_some_and(|e| e.code == ErrorCode::Promised);
                let mut action = self.start_run(RunKind::Own, Proposed::Own, plan.ballot);
                action.back_off = beaten;
                action
            }
        }
    }

    fn start_run(&mut self, kind: RunKind, proposed: Proposed<B>, ballot: Ballot) -> Action<B> {
        // Members that missed a recent round, and those that refused this proposal's
        // challenges, are left out of the first attempt while the others can still reach the
        // threshold: a dead peer costs one timeout, not one a round.
        let (mut excluded, mut presumed) = (BTreeSet::new(), BTreeSet::new());
        self.leave_out(&mut excluded, &mut presumed, BTreeSet::new(), &BTreeSet::new());
        let run = Run {
            kind,
            proposed,
            ballot,
            attempt: 0,
            presumed,
            excluded,
            last_error: err(ErrorCode::Unavailable, "no attempt made"),
            unbeatable: false,
            resigns: 0,
        };
        self.next_attempt(run)
    }

    /// Leaves out of the next attempt, on top of `excluded` (faults the attempts showed),
    /// as many as the threshold allows of `soft` — members presumed down or that refused
    /// this proposal's challenges (as an honest member may), and members in `soft` besides —
    /// repeat refusers first, then single refusers, then members presumed down (a refusal
    /// is seen, a silence may be a lost message), and records them in `presumed` (asked
    /// again if the others fall short). Members in `first` go before all of those.
    fn leave_out(
        &self,
        excluded: &mut BTreeSet<usize>,
        presumed: &mut BTreeSet<usize>,
        soft: BTreeSet<usize>,
        first: &BTreeSet<usize>,
    ) {
        let (n, t) = (self.committee.members, self.committee.threshold);
        let refusals = |m: &usize| self.refusals.get(m).copied().unwrap_or(0);
        let before = soft.clone();
        let mut candidates: Vec<usize> = soft
            .into_iter()
            .chain(self.presumed_down.iter().copied())
            .chain(self.refusals.keys().copied())
            .filter(|&m| m != self.me && m < n && !excluded.contains(&m))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        // On a tie, those already left out stay out.
        candidates.sort_by_key(|m| {
            (
                !first.contains(m),
                std::cmp::Reverse(2 * refusals(m) + usize::from(self.presumed_down.contains(m))),
                !before.contains(m),
                *m,
            )
        });
        for member in candidates {
            if n.saturating_sub(excluded.len() + 1) < t {
                break;
            }
            excluded.insert(member);
            presumed.insert(member);
        }
    }

    /// The run's next attempt at this node's next ballot, or its end with its last error.
    fn next_attempt(&mut self, mut run: Run<B>) -> Action<B> {
        if run.attempt - run.resigns >= MAX_ATTEMPTS {
            let error = run.last_error.clone();
            return self.end_run(run.kind, error, true);
        }
        if run.attempt > 0 {
            let Some(ballot) = agreement::next_owned(run.ballot, self.me, self.committee.members) else {
                return self.end_run(run.kind, err(ErrorCode::Refused, "no ballot is left at the index"), true);
            };
            run.ballot = ballot;
        }
        run.attempt += 1;
        self.announce(run)
    }

    fn announce(&mut self, run: Run<B>) -> Action<B> {
        let step = Step::Announce {
            proposed: run.proposed.clone(),
            ballot: run.ballot,
            attempt: run.attempt,
            excluded: run.excluded.clone(),
            at_frontier: self.at_frontier(run.ballot),
        };
        self.phase = Phase::Announcing(run);
        Action::step(step)
    }

    /// A re-sign (SPEC §9.1): the same block at the same ballot, in a fresh session,
    /// without the members the failed signature named (already in `excluded`). At the
    /// frontier's last ballot one spoiled share would otherwise cost the whole window in
    /// which nobody can outbid this node: its next such ballot is `n` epochs away. Each
    /// re-sign follows a signature that named members now left out, so there are fewer
    /// than `n` in a run.
    fn resign(&mut self, mut run: Run<B>) -> Action<B> {
        run.attempt += 1;
        run.resigns += 1;
        self.announce(run)
    }

    fn at_frontier(&self, ballot: Ballot) -> bool {
        agreement::at_frontier(ballot, self.committee.members, self.frontier)
    }

    /// The tree of an attempt at `ballot` without `excluded`: a star at the frontier.
    fn tree(&self, ballot: Ballot, excluded: &BTreeSet<usize>) -> Tree {
        let mut mask = Mask::empty(self.committee.members);
        excluded.iter().for_each(|&i| mask.insert(i));
        let branching = if self.at_frontier(ballot) { self.committee.members } else { self.branching };
        Tree::new(self.committee.members, self.me, branching, &mask)
    }

    fn on_announced(&mut self, mut run: Run<B>, mut outcome: AnnounceOutcome) -> Action<B> {
        self.presumed_down = outcome.presumed_down.clone();
        self.past_ballot.extend(outcome.promised_elsewhere.iter().copied());
        run.unbeatable = outcome.unbeatable;
        let (n, t) = (self.committee.members, self.committee.threshold);
        let ballot = run.ballot;
        let short = outcome.below_threshold.is_some() || outcome.voters.len() < t;
        if short && !outcome.filled.is_empty() && !self.caught_up {
            self.caught_up = true;
            let from = std::mem::take(&mut outcome.filled);
            self.phase = Phase::CatchingUp(Resume::Announced(Box::new((run, outcome))));
            // The attempt is over whatever the catch-up finds: its members go free first.
            return Action { abort: true, release: true, ..Action::step(Step::CatchUp { from }) };
        }
        if let Some((unreachable, error)) = outcome.below_threshold {
            run.last_error = error;
            let last = run.attempt >= MAX_ATTEMPTS;
            let tree = self.tree(run.ballot, &run.excluded);
            let hidden = unreachable.iter().any(|&u| !tree.children(u).is_empty());
            let branches: BTreeSet<usize> = outcome.committed.iter().copied().collect();
            for &u in &unreachable {
                if tree.parent(u).is_some_and(|p| p != self.me && branches.contains(&p)) {
                    self.hidden_silent.insert(u);
                }
            }
            let mut action = if !run.presumed.is_empty() && !last {
                // Too few without the members presumed down: ask them too. Members left out
                // for what the attempts showed (faults, withheld votes) stay out: clearing
                // them too let a relay that drops its subtree's votes back into every other
                // attempt (the cluster simulation found it).
                for member in std::mem::take(&mut run.presumed) {
                    run.excluded.remove(&member);
                }
                self.next_attempt(run)
            } else if n.saturating_sub(outcome.promised_elsewhere.len()) < t {
                // So many members are locked elsewhere or past this ballot that this block
                // cannot pass here: gather their states.
                let error = err(
                    ErrorCode::Promised,
                    format!(
                        "{} member(s) are locked on another block at index {} or voted past ballot {ballot}",
                        outcome.promised_elsewhere.len(),
                        self.index
                    ),
                );
                self.end_run(run.kind, error, true)
            } else if outcome.busy && !last {
                // Another leader holds some members for its block at this index: step back
                // for a random while so that one of us wins.
                let mut action = self.next_attempt(run);
                action.release = true;
                action.back_off = true;
                action
            } else if hidden && !last {
                run.excluded.extend(unreachable);
                self.next_attempt(run)
            } else {
                let error = run.last_error.clone();
                self.end_run(run.kind, error, true)
            };
            action.abort = true;
            return action;
        }
        if outcome.voters.len() < t {
            // Committed but not voted: a parent dropped its subtree's votes, or a member
            // committed without voting. Children whose subtree holds such a member are left
            // out of the next attempt, as a faulty member is.
            let tree = self.tree(run.ballot, &run.excluded);
            run.excluded.extend(withheld_votes(&tree, self.me, &outcome.committed, |m| outcome.voters.contains(&m)));
            run.last_error = err(
                ErrorCode::Unavailable,
                format!("only {} of {n} members voted at ballot {ballot}, {t} must", outcome.voters.len()),
            );
            let mut action = self.next_attempt(run);
            action.abort = true;
            return action;
        }
        let step = Step::Challenge { ballot, voters: outcome.voters };
        self.phase = Phase::Challenging(run);
        Action::step(step)
    }

    fn on_challenged(&mut self, run: Run<B>, outcome: ChallengeOutcome) -> Action<B> {
        match outcome {
            ChallengeOutcome::Signed => {
                self.phase = Phase::Appending(run.kind);
                Action::step(Step::Append)
            }
            ChallengeOutcome::Faults { ref filled, .. } if !filled.is_empty() && !self.caught_up => {
                self.caught_up = true;
                let from = filled.clone();
                self.phase = Phase::CatchingUp(Resume::Challenged(Box::new((run, outcome))));
                Action::step(Step::CatchUp { from })
            }
            ChallengeOutcome::Faults { mut members, mut refused, filled, error } => {
                // Caught up this pass and the head did not move: a `Conflict` is false (or
                // the index was filled since, which the next attempt's announce shows).
                refused.retain(|m| !filled.contains(m));
                members.extend(filled);
                self.on_faults(run, members, refused, error)
            }
            ChallengeOutcome::Broken(error) => self.end_run(run.kind, error, true),
        }
    }

    /// A challenge that fell short: `members` faulty, `refused` soft (SPEC §9.1).
    fn on_faults(&mut self, mut run: Run<B>, members: Vec<usize>, refused: Vec<usize>, error: ErrorReply) -> Action<B> {
        let before = run.excluded.clone();
        for &member in &refused {
            *self.refusals.entry(member).or_default() += 1;
        }
        // Faults stay out; who else is left out is chosen again, refusers first.
        let soft = std::mem::take(&mut run.presumed);
        for member in &soft {
            run.excluded.remove(member);
        }
        run.excluded.extend(members.into_iter().filter(|&m| m != self.me));
        // At an unbeatable ballot those that just refused go out first (no honest member
        // can be past it): the re-sign asks the members left out earlier instead.
        let first: BTreeSet<usize> = if run.unbeatable { refused.iter().copied().collect() } else { BTreeSet::new() };
        self.leave_out(&mut run.excluded, &mut run.presumed, soft, &first);
        let named = !run.excluded.is_subset(&before);
        run.last_error = error;
        if run.unbeatable && named && run.resigns < self.committee.members {
            self.resign(run)
        } else {
            self.next_attempt(run)
        }
    }

    fn on_appended(&mut self, kind: RunKind, is_proposal: bool) -> Action<B> {
        match kind {
            RunKind::Fast | RunKind::Own => self.finish(Action::step(Step::Done)),
            RunKind::Locked if is_proposal => self.finish(Action::step(Step::Done)),
            RunKind::Locked if self.tick => self.finish(Action::step(Step::Adopted)),
            RunKind::Locked => {
                self.last_failure = None; // the pass filled its index, with another block
                self.next_pass()
            }
        }
    }

    /// A run that ended without a block. `counted`: the run announced (its reservation is
    /// released and it counts as a failed round).
    fn end_run(&mut self, kind: RunKind, error: ErrorReply, counted: bool) -> Action<B> {
        let code = error.code;
        let mut action = match kind {
            // Too few voted or signed: members may be locked on a block whose leader died,
            // or past this ballot (members deeper in the tree answer their parent, not this
            // node, so any shortfall is a reason to ask).
            RunKind::Fast if matches!(code, ErrorCode::Promised | ErrorCode::Unavailable) => {
                self.fast_failure = Some(error);
                self.gather()
            }
            // Members moved past the ballot meanwhile: gather again, in a new pass.
            RunKind::Own | RunKind::Locked if code == ErrorCode::Promised => {
                self.last_failure = Some(error);
                self.next_pass()
            }
            // Another leader filled the index first: this proposal goes on the new head.
            RunKind::Fast | RunKind::Own if code == ErrorCode::Conflict && !self.tick => {
                self.last_failure = Some(error);
                self.next_pass()
            }
            _ => self.finish(Action::step(Step::Fail(error))),
        };
        action.release |= counted;
        action.round_failed |= counted;
        action
    }

    fn next_pass(&mut self) -> Action<B> {
        self.pass += 1;
        if self.pass >= MAX_PASSES {
            // Say what stopped the last pass: members past the ballot (liars may be pushing
            // ballots, SPEC §9.1), another block at each index, or the chain moving on.
            let why = match self.last_failure.take() {
                Some(last) => format!("the last: {}", last.message),
                None => "each index tried took another, locked, block".to_owned(),
            };
            return self.finish(Action::step(Step::Fail(err(
                ErrorCode::Unavailable,
                format!("no block after {MAX_PASSES} passes ({why}); propose again"),
            ))));
        }
        self.phase = Phase::ReadingHead;
        Action { back_off: true, ..Action::step(Step::ReadHead) }
    }
}

/// The children of `me` in `tree` whose subtree holds a member that committed (`committed`)
/// without a valid vote: its parent dropped the votes, or it sent none. Votes ride in the
/// same answer as commitments, so an honest subtree never lands here.
pub fn withheld_votes(tree: &Tree, me: usize, committed: &[usize], voted: impl Fn(usize) -> bool) -> Vec<usize> {
    tree.children(me)
        .into_iter()
        .filter(|&child| {
            let below = tree.subtree(child);
            committed.iter().any(|&m| below.contains(m) && !voted(m))
        })
        .collect()
}

/// Which block holds each unfilled index at this member, until when: a member keeps
/// racing leaders from splitting it between two blocks before any response is given.
/// A reservation only helps liveness (the agreement rules alone keep two blocks from
/// both being signed), so each leader's holds at an index end one lease after its first
/// there, as long as the index is open: a liar that announces again and again holds an
/// index against honest leaders for one lease, not for as long as it keeps at it.
#[derive(Debug)]
pub struct Reservations<K, B> {
    held: HashMap<(K, u64), (B, Instant)>,
    /// When each leader first held each open index here (announces come for a chain's
    /// next index only, so the entries below the one announced are filled and dropped).
    first: HashMap<(K, u64, usize), Instant>,
}

impl<K, B> Default for Reservations<K, B> {
    fn default() -> Self {
        Reservations { held: HashMap::new(), first: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone, B: Clone + PartialEq> Reservations<K, B> {
    /// Holds `(chain, index)` for `block`, announced by `leader`, until `now + lease` but
    /// no later than one lease after `leader` first held the index here (after that the
    /// member votes without holding), unless another block holds it. `takeover`: the block
    /// is re-led with a complete certificate, so it replaces whatever is held (the hold a
    /// dead leader left would otherwise keep the index from its own recovery for a lease).
    #[allow(clippy::too_many_arguments)]
    pub fn reserve(
        &mut self,
        now: Instant,
        lease: Duration,
        chain: &K,
        index: u64,
        block: &B,
        leader: usize,
        takeover: bool,
    ) -> Result<(), ErrorReply> {
        self.held.retain(|_, (_, until)| *until > now);
        self.first.retain(|(c, i, _), _| c != chain || *i >= index);
        match self.held.get(&(chain.clone(), index)) {
            Some((held, _)) if held != block && !takeover => {
                Err(err(ErrorCode::Busy, format!("index {index} is held by another proposed block; retry shortly")))
            }
            _ => {
                let first = *self.first.entry((chain.clone(), index, leader)).or_insert(now);
                let until = (now + lease).min(first + lease);
                if until > now {
                    self.held.insert((chain.clone(), index), (block.clone(), until));
                } else {
                    self.held.remove(&(chain.clone(), index));
                }
                Ok(())
            }
        }
    }

    /// Frees the chain's indices up to `index` (filled, or given up by their leader).
    pub fn release(&mut self, chain: &K, index: u64) {
        self.held.retain(|(c, i), _| !(c == chain && *i <= index));
    }

    /// Frees `(chain, index)` if `block` holds it: this member will not sign that block
    /// there, so the reservation would only hold the index against one it may sign.
    pub fn release_block(&mut self, chain: &K, index: u64, block: &B) {
        if self.held.get(&(chain.clone(), index)).is_some_and(|(held, _)| held == block) {
            self.held.remove(&(chain.clone(), index));
        }
    }
}

/// Why a member does not vote for an announced block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceRefusal {
    /// The agreement rules refuse it.
    Rules(Refusal),
    /// Another block holds the index here (`Busy`).
    Held(ErrorReply),
}

/// What a member does with an announce of `block` at `ballot` by `announcer` (whose vote the
/// caller checked) at an unfilled index of `chain`, once the block passed every chain rule:
/// if `announcer` owns the ballot and it is within `frontier` (this member's, from its clock:
/// [`agreement::admit`]), it votes — `state` is raised and the caller stores it (synced)
/// before the vote leaves — and holds the index for the block for `lease`; or it refuses,
/// holding nothing and changing nothing. The rules are asked before the reservation is
/// taken, so that a leader told `Busy` cannot have raised this member's ballot past the
/// round that holds the index.
#[allow(clippy::too_many_arguments)]
pub fn accept_announce<K: Hash + Eq + Clone, B: Clone + PartialEq>(
    state: &mut Durable<B>,
    reservations: &mut Reservations<K, B>,
    now: Instant,
    lease: Duration,
    chain: &K,
    index: u64,
    committee: Committee,
    block: &B,
    ballot: Ballot,
    announcer: usize,
    frontier: Ballot,
    justification: Option<&Certificate<B>>,
) -> Result<(), AnnounceRefusal> {
    agreement::admit(committee.members, ballot, announcer, frontier).map_err(AnnounceRefusal::Rules)?;
    state.clone().vote(committee, block, ballot, justification).map_err(AnnounceRefusal::Rules)?;
    // A re-led lock, or a ballot of the epochs at the frontier (reached only when a liar
    // pushed ballots there; each leader owns one ballot an epoch there, so time, not holds,
    // settles races, and a liar's hold must not outlast an honest owner's epoch).
    let takeover = agreement::at_frontier(ballot, committee.members, frontier)
        || justification.is_some_and(|c| c.block == *block && c.is_complete(committee.members, committee.threshold));
    reservations.reserve(now, lease, chain, index, block, announcer, takeover).map_err(AnnounceRefusal::Held)?;
    state.vote(committee, block, ballot, justification).map_err(|refusal| {
        reservations.release_block(chain, index, block);
        AnnounceRefusal::Rules(refusal)
    })
}

/// Why a member does not lock at a challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeRefusal {
    #[error("the certificate is for ballot {certificate}, this round's is {session}")]
    OtherBallot { certificate: Ballot, session: Ballot },
    #[error(transparent)]
    Rules(Refusal),
}

/// What a member does with the certificate of a round it voted in at `session_ballot`:
/// locks on it — the caller stores `state` (synced) before its partial signature leaves —
/// or refuses. The share leaves over `id ‖ ballot` of this session, so the lock must be at
/// exactly that ballot.
pub fn accept_challenge<B: Clone + PartialEq>(
    state: &mut Durable<B>,
    committee: Committee,
    session_ballot: Ballot,
    certificate: &Certificate<B>,
) -> Result<(), ChallengeRefusal> {
    if certificate.ballot != session_ballot {
        return Err(ChallengeRefusal::OtherBallot { certificate: certificate.ballot, session: session_ballot });
    }
    state.lock(committee, certificate).map_err(ChallengeRefusal::Rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const C: Committee = Committee { members: 4, threshold: 3 };
    const FRONTIER: Ballot = 1_000;

    fn head(own: Durable<u8>, down: &[usize]) -> Event<u8> {
        Event::Head {
            index: 7,
            committee: C,
            me: 0,
            own,
            presumed_down: down.iter().copied().collect(),
            hidden: BTreeSet::new(),
            proposal_appended: false,
            frontier: FRONTIER,
        }
    }

    fn signed_outcome(voters: &[usize]) -> AnnounceOutcome {
        AnnounceOutcome {
            below_threshold: None,
            committed: vec![0, 1, 2, 3],
            voters: voters.iter().copied().collect(),
            busy: false,
            promised_elsewhere: Vec::new(),
            filled: Vec::new(),
            presumed_down: BTreeSet::new(),
            unbeatable: false,
        }
    }

    fn short(promised: usize, busy: bool) -> AnnounceOutcome {
        AnnounceOutcome {
            below_threshold: Some((vec![1, 2], err(ErrorCode::Unavailable, "too few"))),
            committed: vec![0, 3],
            voters: [0, 3].into_iter().collect(),
            busy,
            promised_elsewhere: (1..=promised).collect(),
            filled: Vec::new(),
            presumed_down: BTreeSet::new(),
            unbeatable: false,
        }
    }

    /// The fast path: no gathering, this node's next ballot after its own (ballot 7: member
    /// 0 of 4 owns ballots 0, 7, 10, 13, ...), then challenge, append, done.
    #[test]
    fn an_unlocked_leader_announces_at_once_and_finishes_after_the_append() {
        let (mut m, first) = LeaderRound::<u8>::new(8, false);
        assert_eq!(first.step, Step::ReadHead);
        let a = m.handle(head(Durable { voted: 4, lock: None }, &[]));
        assert_eq!(
            a.step,
            Step::Announce {
                proposed: Proposed::Own,
                ballot: 7,
                attempt: 1,
                excluded: BTreeSet::new(),
                at_frontier: false
            }
        );
        let a = m.handle(Event::Announced(signed_outcome(&[0, 1, 3])));
        assert_eq!(a.step, Step::Challenge { ballot: 7, voters: [0, 1, 3].into_iter().collect() });
        assert_eq!(m.handle(Event::Challenged(ChallengeOutcome::Signed)).step, Step::Append);
        assert_eq!(m.handle(Event::Appended { is_proposal: true }).step, Step::Done);
        assert!(m.is_finished());
    }

    /// Members locked elsewhere: the leader gathers (after a pause, for another leader's
    /// ballot beat it), re-leads the highest lock above every ballot, and its own proposal
    /// goes on in a new pass; a timeline tick stops at the re-led block.
    #[test]
    fn a_refused_fast_path_gathers_and_re_leads_the_highest_lock() {
        for tick in [false, true] {
            let (mut m, _) = LeaderRound::<u8>::new(8, tick);
            m.handle(head(Durable::default(), &[3]));
            let a = m.handle(Event::Announced(short(2, false)));
            assert!(matches!(a.step, Step::Announce { attempt: 2, .. }), "first without the member presumed down");
            let mut silent_three = short(2, false);
            silent_three.presumed_down = [3].into_iter().collect();
            let a = m.handle(Event::Announced(silent_three));
            assert!(a.abort && a.release && a.round_failed);
            assert_eq!(a.step, Step::Gather { ask: vec![1, 2] }, "the members not presumed down first");
            let lock = |block: u8, ballot: Ballot| {
                Some(agreement::Lock {
                    certificate: Certificate { block, ballot, voters: [0, 1, 2].into_iter().collect() },
                })
            };
            let reports = vec![Durable { voted: 6, lock: lock(9, 3) }, Durable { voted: 4, lock: lock(8, 4) }];
            let a = m.handle(Event::Gathered {
                own: Durable { voted: 2, lock: None },
                reports,
                filled: Vec::new(),
                frontier: FRONTIER,
            });
            let Step::Announce { proposed: Proposed::Locked(c), ballot, attempt: 1, excluded, .. } = a.step else {
                panic!("{a:?}")
            };
            assert_eq!((c.block, c.ballot, ballot), (8, 4, 7));
            assert_eq!(excluded, [3].into_iter().collect(), "the member presumed down is left out");
            m.handle(Event::Announced(signed_outcome(&[0, 1, 2])));
            m.handle(Event::Challenged(ChallengeOutcome::Signed));
            let a = m.handle(Event::Appended { is_proposal: false });
            if tick {
                assert_eq!(a.step, Step::Adopted);
            } else {
                assert_eq!((a.step, a.back_off), (Step::ReadHead, true), "the proposal goes on the next index");
            }
        }
    }

    /// Left out for being presumed down and too few without them: the next attempt asks
    /// everyone, at the next ballot. Committed without votes: the withholding child is left
    /// out. Faults named by the signature: left out.
    #[test]
    fn attempts_leave_out_whom_the_last_one_showed_faulty() {
        let (mut m, _) = LeaderRound::<u8>::new(1, false); // a chain: 0 → 1 → 2 → 3
        let a = m.handle(head(Durable::default(), &[3]));
        let Step::Announce { excluded, .. } = a.step else { panic!() };
        assert_eq!(excluded, [3].into_iter().collect());
        let a = m.handle(Event::Announced(short(0, false)));
        assert_eq!(
            a.step,
            Step::Announce {
                proposed: Proposed::Own,
                ballot: 10,
                attempt: 2,
                excluded: BTreeSet::new(),
                at_frontier: false
            }
        );
        let a = m.handle(Event::Announced(signed_outcome(&[0, 1])));
        assert!(a.abort);
        assert_eq!(
            a.step,
            Step::Announce {
                proposed: Proposed::Own,
                ballot: 13,
                attempt: 3,
                excluded: [1].into_iter().collect(),
                at_frontier: false
            },
            "member 2 committed without a vote: the subtree under child 1 is left out"
        );
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2])));
        let a = m.handle(Event::Challenged(ChallengeOutcome::Faults {
            members: vec![3],
            refused: vec![],
            filled: vec![],
            error: err(ErrorCode::Unavailable, "bad share"),
        }));
        assert!(a.round_failed, "three attempts were made");
        assert_eq!(a.step, Step::Gather { ask: vec![1, 2, 3] }, "a failed fast path gathers, from all that answered");
    }

    /// A signature that falls short at the frontier's last ballot is signed again at that
    /// ballot without the members it named (a re-sign, not counted as an attempt); one
    /// that falls short elsewhere, or names nobody new, moves to the next ballot.
    #[test]
    fn a_short_signature_at_the_frontiers_last_ballot_is_signed_again_there() {
        let announce = |ballot, attempt, excluded: &[usize]| Step::Announce {
            proposed: Proposed::Own,
            ballot,
            attempt,
            excluded: excluded.iter().copied().collect(),
            at_frontier: false,
        };
        let faults = |members: Vec<usize>| {
            Event::Challenged(ChallengeOutcome::Faults {
                members,
                refused: vec![],
                filled: vec![],
                error: err(ErrorCode::Unavailable, "bad share"),
            })
        };
        let unbeatable = |voters: &[usize], unbeatable| {
            let mut outcome = signed_outcome(voters);
            outcome.unbeatable = unbeatable;
            Event::Announced(outcome)
        };
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        assert_eq!(m.handle(head(Durable { voted: 4, lock: None }, &[])).step, announce(7, 1, &[]));
        assert!(matches!(m.handle(unbeatable(&[0, 1, 2, 3], true)).step, Step::Challenge { ballot: 7, .. }));
        assert_eq!(m.handle(faults(vec![3])).step, announce(7, 2, &[3]), "re-signed at 7 without 3");
        assert!(matches!(m.handle(unbeatable(&[0, 1, 2], true)).step, Step::Challenge { ballot: 7, .. }));
        assert_eq!(m.handle(faults(vec![3])).step, announce(10, 3, &[3]), "nobody new named: the next ballot");
        assert!(matches!(m.handle(unbeatable(&[0, 1, 2], true)).step, Step::Challenge { ballot: 10, .. }));
        assert_eq!(m.handle(faults(vec![2])).step, announce(10, 4, &[2, 3]));
        assert!(matches!(m.handle(unbeatable(&[0, 1, 3], false)).step, Step::Challenge { ballot: 10, .. }));
        let a = m.handle(faults(vec![1]));
        assert_eq!(a.step, announce(13, 5, &[1, 2, 3]), "not unbeatable: the next ballot; re-signs are not attempts");
        assert!(matches!(m.handle(unbeatable(&[0, 1, 2], false)).step, Step::Challenge { ballot: 13, .. }));
        assert_eq!(m.handle(Event::Challenged(ChallengeOutcome::Signed)).step, Step::Append);
        assert_eq!(m.handle(Event::Appended { is_proposal: true }).step, Step::Done);
    }

    /// Members that refused a challenge (as an honest member may: pushed past the ballot,
    /// or the index filled) are left out while the others reach the threshold, those that
    /// refused most first, and asked again when too few answer without them; a liar that
    /// refuses every challenge is left out of every attempt after its first refusal.
    #[test]
    fn refusers_are_left_out_while_the_others_reach_the_threshold() {
        let refusal = |refused: Vec<usize>| {
            Event::Challenged(ChallengeOutcome::Faults {
                members: vec![],
                refused,
                filled: vec![],
                error: err(ErrorCode::Unavailable, "refused"),
            })
        };
        let excluded_of = |a: &Action<u8>| match &a.step {
            Step::Announce { excluded, .. } => excluded.iter().copied().collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        m.handle(head(Durable::default(), &[]));
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2, 3])));
        let a = m.handle(refusal(vec![3]));
        assert_eq!(excluded_of(&a), vec![3], "the liar that refused is left out: 0, 1, 2 are three");
        let a = m.handle(Event::Announced(short(0, false)));
        assert_eq!(excluded_of(&a), Vec::<usize>::new(), "too few: the refuser is asked again");

        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        m.handle(head(Durable::default(), &[]));
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2, 3])));
        m.handle(refusal(vec![3]));
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2])));
        let a = m.handle(refusal(vec![2]));
        assert_eq!(excluded_of(&a), vec![3], "leaving 2 out too would leave two");

        // A member presumed down (1) and a refuser (3): the refuser goes, the silent one
        // is asked again.
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        let a = m.handle(head(Durable::default(), &[1]));
        assert_eq!(excluded_of(&a), vec![1]);
        m.handle(Event::Announced(signed_outcome(&[0, 2, 3])));
        let a = m.handle(refusal(vec![3]));
        assert_eq!(excluded_of(&a), vec![3], "a refusal is seen, a silence may be a lost message");

        // Two refusers, one place: one goes; then the one that refused twice takes its place.
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        m.handle(head(Durable::default(), &[]));
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2, 3])));
        let a = m.handle(refusal(vec![1, 2]));
        assert_eq!(excluded_of(&a), vec![1]);
        m.handle(Event::Announced(signed_outcome(&[0, 2, 3])));
        let a = m.handle(refusal(vec![2, 3]));
        assert_eq!(excluded_of(&a), vec![2], "2 refused twice, 1 once: 1 is asked again");
    }

    /// A `Conflict` at a challenge is checked: the leader catches up from whoever said it,
    /// and if its head did not move that member is a fault; a second one in the same pass
    /// is a fault at once.
    #[test]
    fn a_false_conflict_at_a_challenge_is_a_fault() {
        let conflict = |member: usize| {
            Event::Challenged(ChallengeOutcome::Faults {
                members: vec![],
                refused: vec![member],
                filled: vec![member],
                error: err(ErrorCode::Unavailable, "filled, it says"),
            })
        };
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        m.handle(head(Durable::default(), &[]));
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2, 3])));
        assert_eq!(m.handle(conflict(3)).step, Step::CatchUp { from: vec![3] });
        let a = m.handle(Event::CaughtUp { moved: false });
        let Step::Announce { excluded, attempt: 2, .. } = a.step else { panic!("{a:?}") };
        assert_eq!(excluded, [3].into_iter().collect());
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2])));
        let a = m.handle(conflict(2));
        assert!(matches!(a.step, Step::Announce { attempt: 3, .. }), "no second catch-up this pass: {a:?}");

        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        m.handle(head(Durable::default(), &[]));
        m.handle(Event::Announced(signed_outcome(&[0, 1, 2, 3])));
        m.handle(conflict(3));
        let a = m.handle(Event::CaughtUp { moved: true });
        assert_eq!(a.step, Step::ReadHead, "it was filled: the proposal goes on the new head");
    }

    /// Asking the members presumed down again does not let back in a member the attempts
    /// showed withholding votes.
    #[test]
    fn members_shown_faulty_stay_out_when_the_presumed_down_are_asked_again() {
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        let a = m.handle(head(Durable::default(), &[3]));
        assert!(matches!(a.step, Step::Announce { attempt: 1, .. }));
        let mut withheld = signed_outcome(&[0, 1]);
        withheld.committed = vec![0, 1, 2];
        let a = m.handle(Event::Announced(withheld));
        let Step::Announce { excluded, .. } = a.step else { panic!("{a:?}") };
        assert_eq!(excluded, [2, 3].into_iter().collect());
        let a = m.handle(Event::Announced(short(0, false)));
        let Step::Announce { excluded, attempt: 3, .. } = a.step else { panic!("{a:?}") };
        assert_eq!(excluded, [2].into_iter().collect(), "3 is asked again, 2 stays out");
    }

    /// A member silent below a branch that answered may have refused rather than died: the
    /// gathering asks it though it is presumed down; one below a silent branch is not asked.
    #[test]
    fn members_silent_below_an_answering_branch_are_asked_when_gathering() {
        let (mut m, _) = LeaderRound::<u8>::new(1, false); // a chain: 0 → 1 → 2 → 3
        m.handle(head(Durable::default(), &[]));
        let mut silent = short(0, false);
        silent.below_threshold = Some((vec![2, 3], err(ErrorCode::Unavailable, "too few")));
        silent.committed = vec![0, 1];
        silent.presumed_down = [2, 3].into_iter().collect();
        let a = m.handle(Event::Announced(silent.clone()));
        assert!(matches!(a.step, Step::Announce { attempt: 2, .. }), "2 hid 3: both left out, {a:?}");
        silent.below_threshold = Some((vec![], err(ErrorCode::Unavailable, "too few")));
        let a = m.handle(Event::Announced(silent));
        assert_eq!(a.step, Step::Gather { ask: vec![1, 2] }, "2 is asked, 3 is not");
    }

    #[test]
    fn busy_members_make_the_leader_step_back_and_an_event_out_of_phase_fails_cleanly() {
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        m.handle(head(Durable::default(), &[]));
        let a = m.handle(Event::Announced(short(0, true)));
        assert!(a.release && a.back_off && a.abort);
        assert!(matches!(a.step, Step::Announce { attempt: 2, .. }));
        let a = m.handle(Event::Appended { is_proposal: true });
        assert!(matches!(a.step, Step::Fail(ErrorReply { code: ErrorCode::Internal, .. })));
        assert!(m.is_finished());
    }

    #[derive(Debug, Clone)]
    enum Answer {
        Report { voted: Ballot, locked: Option<(u8, Ballot)> },
        Short { promised: usize, busy: bool },
        Signed { voters: usize, unbeatable: bool },
        NotAnnounced(u8),
        Faults { named: usize },
        Appended(bool),
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            (0..20u64, proptest::option::of((0..3u8, 0..20u64)))
                .prop_map(|(voted, locked)| Answer::Report { voted, locked }),
            (0..5usize, any::<bool>()).prop_map(|(promised, busy)| Answer::Short { promised, busy }),
            (0..5usize, any::<bool>()).prop_map(|(voters, unbeatable)| Answer::Signed { voters, unbeatable }),
            (0..3u8).prop_map(Answer::NotAnnounced),
            (0..4usize).prop_map(|named| Answer::Faults { named }),
            any::<bool>().prop_map(Answer::Appended),
        ]
    }

    proptest! {
        /// Whatever the members answer, a leader finishes within a bounded number of steps,
        /// every ballot it announces is above its own and above every ballot it was told
        /// of — but for a re-sign, at the ballot of an unbeatable attempt whose signature
        /// just fell short — and only a signed block is appended.
        #[test]
        fn a_leader_always_finishes_and_announces_above_every_ballot_it_knows(
            answers in proptest::collection::vec(answer(), 1..200),
            tick in any::<bool>(),
            own_voted in 0..10u64,
        ) {
            let (mut m, mut action) = LeaderRound::<u8>::new(8, tick);
            let mut known = own_voted;
            let mut steps = 0;
            let mut answers = answers.into_iter().cycle();
            let mut signed = false;
            // The last announce's ballot and whether its outcome said unbeatable; whether
            // its challenge then fell short.
            let mut last: Option<(Ballot, bool)> = None;
            let mut fell_short = false;
            while !m.is_finished() {
                steps += 1;
                prop_assert!(steps < 200, "no end in sight: {action:?}");
                let next = answers.next().expect("cycled");
                let event = match &action.step {
                    Step::ReadHead => {
                        known = own_voted;
                        head(Durable { voted: own_voted, lock: None }, &[])
                    }
                    Step::Gather { ask } => {
                        let reports: Vec<Durable<u8>> = (0..ask.len()).map(|i| match &next {
                            Answer::Report { voted, locked } => Durable {
                                voted: voted + i as u64,
                                lock: locked.map(|(block, ballot)| agreement::Lock {
                                    certificate: Certificate { block, ballot, voters: [0, 1, 2].into_iter().collect() },
                                }),
                            },
                            _ => Durable::default(),
                        }).collect();
                        known = known.max(reports.iter().map(|r| r.voted).filter(|&v| v <= FRONTIER).max().unwrap_or(0));
                        Event::Gathered {
                            own: Durable { voted: own_voted, lock: None },
                            reports,
                            filled: Vec::new(),
                            frontier: FRONTIER,
                        }
                    }
                    Step::Announce { ballot, .. } => {
                        if last.is_some_and(|(b, unbeatable)| b == *ballot && unbeatable) && fell_short {
                            // A re-sign.
                        } else {
                            prop_assert!(*ballot > own_voted);
                            prop_assert!(*ballot > known, "{} not above {}", ballot, known);
                        }
                        prop_assert_eq!(agreement::owner(*ballot, C.members), 0, "a ballot of its own");
                        let unbeatable = matches!(next, Answer::Signed { unbeatable: true, .. });
                        last = Some((*ballot, unbeatable));
                        fell_short = false;
                        match next {
                            Answer::Short { promised: 4, busy } => {
                                let mut outcome = short(0, busy);
                                outcome.filled = vec![1];
                                Event::Announced(outcome)
                            }
                            Answer::Short { promised, busy } => Event::Announced(short(promised, busy)),
                            Answer::Signed { voters, unbeatable } => {
                                let mut outcome = signed_outcome(&(0..voters).collect::<Vec<_>>());
                                outcome.unbeatable = unbeatable;
                                Event::Announced(outcome)
                            }
                            Answer::NotAnnounced(code) => Event::NotAnnounced(err(
                                [ErrorCode::Conflict, ErrorCode::Busy, ErrorCode::Promised][code as usize],
                                "no",
                            )),
                            _ => Event::Announced(signed_outcome(&[0, 1, 2, 3])),
                        }
                    }
                    Step::Challenge { voters, .. } => {
                        prop_assert!(voters.len() >= C.threshold);
                        match next {
                            Answer::Faults { named } => {
                                fell_short = true;
                                // Member 3 refuses now and then too, as past the ballot,
                                // and member 1 says the index is filled.
                                let refused = match named {
                                    0 => vec![3],
                                    1 => vec![1],
                                    _ => vec![],
                                };
                                let filled = if named == 1 { vec![1] } else { vec![] };
                                Event::Challenged(ChallengeOutcome::Faults {
                                    members: vec![named],
                                    refused,
                                    filled,
                                    error: err(ErrorCode::Unavailable, "bad"),
                                })
                            }
                            Answer::NotAnnounced(_) => Event::LockRefused(err(ErrorCode::Promised, "no")),
                            _ => {
                                signed = true;
                                Event::Challenged(ChallengeOutcome::Signed)
                            }
                        }
                    }
                    Step::CatchUp { from } => {
                        prop_assert_eq!(from, &vec![1]);
                        Event::CaughtUp { moved: matches!(next, Answer::Appended(true)) }
                    }
                    Step::Append => {
                        prop_assert!(signed, "an append without a signature");
                        signed = false;
                        match next {
                            Answer::Appended(is_proposal) => Event::Appended { is_proposal },
                            _ => Event::Appended { is_proposal: true },
                        }
                    }
                    Step::Done | Step::Adopted | Step::Fail(_) => unreachable!("finished"),
                };
                action = m.handle(event);
            }
            prop_assert!(matches!(action.step, Step::Done | Step::Adopted | Step::Fail(_)));
            if matches!(action.step, Step::Adopted) {
                prop_assert!(tick);
            }
        }
    }

    /// A proposal whose every pass ends with members past its ballot fails after
    /// `MAX_PASSES`, saying so (not that other blocks took the indices).
    #[test]
    fn a_proposal_out_of_passes_says_what_stopped_the_last() {
        let (mut m, _) = LeaderRound::<u8>::new(8, false);
        let mut action = m.handle(head(Durable::default(), &[]));
        for _ in 0..100 {
            action = match &action.step {
                Step::ReadHead => m.handle(head(Durable::default(), &[])),
                Step::Announce { .. } => m.handle(Event::Announced(short(2, false))),
                Step::Gather { .. } => m.handle(Event::Gathered {
                    own: Durable::default(),
                    reports: vec![Durable::default(); 3],
                    filled: Vec::new(),
                    frontier: FRONTIER,
                }),
                _ => break,
            };
        }
        let Step::Fail(error) = &action.step else { panic!("{action:?}") };
        assert!(error.message.starts_with(&format!("no block after {MAX_PASSES} passes")), "{}", error.message);
        assert!(error.message.contains("locked on another block"), "{}", error.message);
    }

    /// Rule 0 at the member, and reservations a liar cannot keep renewing: another member's
    /// ballot or one beyond the frontier is refused with nothing held or raised; a leader's
    /// holds at an index end a lease after its first there; a ballot at the frontier takes
    /// any hold over.
    #[test]
    fn a_member_admits_owners_only_and_a_liars_holds_expire() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(10);
        let mut held = Reservations::<u8, u8>::default();
        let mut state = Durable::<u8>::default();
        let accept = |state: &mut Durable<u8>, held: &mut Reservations<u8, u8>, at: u64, block, ballot, leader| {
            let frontier = agreement::frontier(4, 100 * agreement::EPOCH_MS);
            let now = t0 + Duration::from_secs(at);
            accept_announce(state, held, now, lease, &0, 7, C, &block, ballot, leader, frontier, None)
        };
        // Ballot 7 is member 0's (slot 3 of epoch 1), not member 3's.
        let not_owner = accept(&mut state, &mut held, 0, 1, 7, 3);
        assert!(matches!(not_owner, Err(AnnounceRefusal::Rules(Refusal::NotOwner { owner: 0, .. }))));
        let far = agreement::next_owned(agreement::frontier(4, 100 * agreement::EPOCH_MS), 3, 4).unwrap();
        assert!(matches!(
            accept(&mut state, &mut held, 0, 1, far, 3),
            Err(AnnounceRefusal::Rules(Refusal::Early { .. }))
        ));
        assert_eq!(state.voted, 0, "refusals change nothing");
        // The liar (member 3) holds the index for its block 9, announcing again and again.
        let mut ballot = 0;
        for at in 0..=10 {
            ballot = agreement::next_owned(ballot, 3, 4).unwrap();
            accept(&mut state, &mut held, at, 9, ballot, 3).unwrap();
            let honest = agreement::next_owned(ballot, 1, 4).unwrap();
            let busy = accept(&mut state.clone(), &mut held, at, 5, honest, 1);
            assert_eq!(matches!(busy, Err(AnnounceRefusal::Held(_))), at < 10, "second {at}");
        }
        // The honest block holds it now, and the liar is the one told `Busy`.
        let liar = accept(&mut state.clone(), &mut held, 10, 9, agreement::next_owned(ballot, 3, 4).unwrap(), 3);
        assert!(matches!(liar, Err(AnnounceRefusal::Held(_))));
        // Ballots at the frontier are not held against.
        let mut held = Reservations::<u8, u8>::default();
        let mut state = Durable::<u8>::default();
        let top = agreement::frontier(4, 100 * agreement::EPOCH_MS);
        let epoch_start = top + 1 - 4;
        accept(&mut state, &mut held, 0, 9, epoch_start, agreement::owner(epoch_start, 4)).unwrap();
        accept(&mut state, &mut held, 0, 5, top, agreement::owner(top, 4)).unwrap();
    }

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
