//! Agreement on one index, sans I/O: the rules by which members vote, lock and release
//! their partial signatures so that two blocks never both gather a threshold and an index
//! whose leaders die — however the members split — still completes. No network, no disk,
//! no clock, no cryptography: the node verifies signatures and stores [`Durable`] before
//! acting on what these functions return; the simulation (`tests/agreement.rs`) drives
//! thousands of seeded clusters through them.
//!
//! The protocol (SPEC §9.1) is Tendermint's locking over ballots:
//! 1. *Vote.* A leader announces block `B` at ballot `b`. A member votes for it — durably
//!    raising its voted ballot to `b` — only if `b` is above every ballot it voted at, and,
//!    if it is locked on another block, only when the announce carries a certificate for
//!    `B` from a ballot at or above its lock's.
//! 2. *Certificate.* `t` votes for `B` at `b` (the committee's threshold, `3t > 2n`).
//! 3. *Lock.* Shown the certificate, a member durably locks on `(B, b)` and only then
//!    releases its partial signature over `B` — unless it already voted at a ballot above
//!    `b` (it moved on: a vote it cast there while unlocked need not respect the lock; the
//!    simulation found this case). A lock is replaced only by one at a higher ballot.
//! 4. *Re-lead.* A leader first gathers the [`Durable`] states of `t` members, re-leads the
//!    block of the highest-ballot lock among them (its certificate justifies it to members
//!    locked lower), or its own block if none is locked, at a ballot above every ballot
//!    they voted at.
//!
//! Why two blocks never both get `t` partial signatures: if `X` got them at ballot `b`, `t`
//! members locked `(X, b)`. A certificate for `Y ≠ X` at `b` would need an honest member
//! to vote twice at `b`. Take the lowest ballot `b' > b` with a certificate for some
//! `Y ≠ X`: its `t` voters share more than `n/3` members with the `t` lockers, so an
//! honest locker voted for `Y` at `b'`; it was locked at `b` or later on `X` (any later
//! lock change needs a certificate for a non-`X` block between `b` and `b'`, and there is
//! none below `b'`), so it needed a certificate for `Y` at a ballot in `[b, b')` — none
//! exists. So no certificate for another block at `b` or after, and no honest member
//! releases a share for one.
//!
//! **Precondition: a partial signature binds its ballot.** The argument counts shares of
//! one ballot. CoSi shares over the bare block id combine across sessions — a Byzantine
//! leader can sum members' commitments from different sessions into one challenge — so a
//! node may use these rules only because the collective signature covers `id ‖ ballot`
//! (`chainiac_skipchain::BlockSignature`, checked by every verifier). Without it, a member
//! locked low can share `X`, move to `Y` on a newer certificate and share `Y`, and `X`
//! completes from shares of several ballots: test
//! `shares_of_different_ballots_must_not_combine` replays the attack through these rules.
//! The simulation keys shares by ballot, i.e. it assumes the precondition.
//!
//! Why an index completes: once a leader gathers the states of the honest members and no
//! new ballot interferes, the highest lock among them has the highest certificate any
//! honest member is locked with, so every honest member votes for the re-led block
//! (locked lower: the certificate is newer; locked on it: same block; unlocked: free), a
//! certificate forms, and every honest member locks and signs.

use std::collections::BTreeSet;

/// A ballot number: a leader's attempt at an index. Higher is newer.
pub type Ballot = u64;

/// How far above its own ballot a member votes, and how far above its own a leader counts
/// a report. Without a bound one liar's announce at `Ballot::MAX` would leave no ballot
/// above it. A member shown a farther ballot refuses it and raises its own ballot by this
/// step instead (raising without a vote only makes it refuse more: safe), so that members a
/// liar pushed apart come within one step of each other as honest leaders keep trying.
pub const MAX_BALLOT_STEP: Ballot = 1 << 20;

/// `t` members' votes for one block at one ballot, as the node verified them (each vote is
/// a signature by that member over the block, the index and the ballot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate<B> {
    pub block: B,
    pub ballot: Ballot,
    /// Roster positions of the voters.
    pub voters: BTreeSet<usize>,
}

impl<B> Certificate<B> {
    /// Whether enough distinct members of a committee of `members` with threshold
    /// `threshold` voted.
    pub fn is_complete(&self, members: usize, threshold: usize) -> bool {
        self.voters.len() >= threshold && self.voters.iter().all(|&v| v < members)
    }
}

/// A lock: the block this member signs at the index, from the certificate that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock<B> {
    pub certificate: Certificate<B>,
}

/// What a member keeps on disk per unfilled index, and reports to a leader that gathers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable<B> {
    /// The highest ballot this member voted at (0: none).
    pub voted: Ballot,
    pub lock: Option<Lock<B>>,
}

impl<B> Default for Durable<B> {
    fn default() -> Self {
        Durable { voted: 0, lock: None }
    }
}

/// Why a member does not vote or lock. Each names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("ballot {ballot} is not above ballot {voted}, at which this member voted")]
    OldBallot { ballot: Ballot, voted: Ballot },
    #[error("locked at ballot {lock} on another block; the announce carries no certificate for this block from ballot {lock} or later")]
    Locked { lock: Ballot },
    #[error("the certificate has {voters} votes from this committee; {threshold} are needed")]
    Incomplete { voters: usize, threshold: usize },
    #[error("the certificate is for another block or ballot than the announce")]
    Mismatch,
    #[error("the certificate's ballot {ballot} is below this member's lock at {lock}")]
    OlderThanLock { ballot: Ballot, lock: Ballot },
    #[error("the certificate's ballot {ballot} is below ballot {voted}, at which this member already voted")]
    Superseded { ballot: Ballot, voted: Ballot },
    #[error(
        "ballot {ballot} is more than {MAX_BALLOT_STEP} above this member's; its ballot was raised to {raised_to}"
    )]
    TooFar { ballot: Ballot, raised_to: Ballot },
}

/// The committee an index is agreed in: its size and threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committee {
    pub members: usize,
    pub threshold: usize,
}

impl<B: Clone + PartialEq> Durable<B> {
    /// Rule 1: whether this member votes for `block` at `ballot`, given the announce's
    /// `justification`; on `Ok` the caller stores the raised `voted` before answering, and
    /// on [`Refusal::TooFar`] too (the ballot was raised by [`MAX_BALLOT_STEP`]).
    pub fn vote(
        &mut self,
        committee: Committee,
        block: &B,
        ballot: Ballot,
        justification: Option<&Certificate<B>>,
    ) -> Result<(), Refusal> {
        if ballot <= self.voted {
            return Err(Refusal::OldBallot { ballot, voted: self.voted });
        }
        // A complete certificate for the block shows `t` members (more than the faulty ones)
        // voted at its ballot: ballots a step above it are in honest use, and a member that
        // lagged reaches them at once instead of a step per announce.
        let certified = justification
            .filter(|c| c.block == *block && c.is_complete(committee.members, committee.threshold))
            .map_or(0, |c| c.ballot);
        let reach = self.voted.max(certified).saturating_add(MAX_BALLOT_STEP);
        if ballot > reach {
            self.voted = reach;
            return Err(Refusal::TooFar { ballot, raised_to: reach });
        }
        if let Some(lock) = &self.lock {
            if lock.certificate.block != *block {
                let lock_ballot = lock.certificate.ballot;
                let justified = justification.is_some_and(|c| {
                    c.block == *block
                        && c.ballot >= lock_ballot
                        && c.ballot < ballot
                        && c.is_complete(committee.members, committee.threshold)
                });
                if !justified {
                    return Err(Refusal::Locked { lock: lock_ballot });
                }
            }
        }
        self.voted = ballot;
        Ok(())
    }

    /// Rule 3: lock on the certificate's block (the one announced at its ballot) before
    /// releasing a partial signature over it; on `Ok` the caller stores the lock first.
    /// Never at a ballot below one this member already voted at: it moved on, and a vote
    /// it cast there while unlocked did not have to respect this lock.
    pub fn lock(&mut self, committee: Committee, certificate: &Certificate<B>) -> Result<(), Refusal> {
        if !certificate.is_complete(committee.members, committee.threshold) {
            return Err(Refusal::Incomplete { voters: certificate.voters.len(), threshold: committee.threshold });
        }
        if certificate.ballot < self.voted {
            return Err(Refusal::Superseded { ballot: certificate.ballot, voted: self.voted });
        }
        if let Some(lock) = &self.lock {
            if certificate.ballot < lock.certificate.ballot {
                return Err(Refusal::OlderThanLock { ballot: certificate.ballot, lock: lock.certificate.ballot });
            }
        }
        self.voted = certificate.ballot;
        self.lock = Some(Lock { certificate: certificate.clone() });
        Ok(())
    }
}

/// What a leader does at an index after gathering members' states (rule 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<B> {
    pub ballot: Ballot,
    /// The certificate of the locked block to re-lead, which justifies it; none: the
    /// leader's own block.
    pub justification: Option<Certificate<B>>,
}

impl<B: Clone> Plan<B> {
    /// The block the plan leads: the locked one, or `own`.
    pub fn block(&self, own: B) -> B {
        self.justification.as_ref().map_or(own, |c| c.block.clone())
    }
}

/// Rule 4: from the states of at least `t` members (`reports`), the block to lead and its
/// ballot: the block of the highest-ballot complete lock, justified by its certificate, or
/// the leader's own when nobody reported a lock; the ballot above every ballot reported and above
/// `at_least` (the leader's own), each report counted at most `MAX_BALLOT_STEP − 1` above
/// `at_least` so that the leader itself accepts the ballot (a liar's report cannot make it
/// refuse its own vote). `None` when fewer than `t` reported.
pub fn plan<B: Clone>(committee: Committee, reports: &[Durable<B>], at_least: Ballot) -> Option<Plan<B>> {
    if reports.len() < committee.threshold {
        return None;
    }
    let highest = reports
        .iter()
        .filter_map(|r| r.lock.as_ref())
        .filter(|l| l.certificate.is_complete(committee.members, committee.threshold))
        .max_by_key(|l| l.certificate.ballot);
    // A re-led lock's certificate extends the reach of every vote for it (rule 1).
    let certified = highest.map_or(0, |l| l.certificate.ballot);
    let cap = at_least.max(certified).saturating_add(MAX_BALLOT_STEP - 1);
    // Saturating: a member at `Ballot::MAX` refuses the ballot (`OldBallot`), nothing panics.
    let ballot = reports.iter().map(|r| r.voted.min(cap)).max().unwrap_or(0).max(at_least).saturating_add(1);
    Some(Plan { ballot, justification: highest.map(|lock| lock.certificate.clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Committee = Committee { members: 4, threshold: 3 };

    fn cert(block: u8, ballot: Ballot, voters: &[usize]) -> Certificate<u8> {
        Certificate { block, ballot, voters: voters.iter().copied().collect() }
    }

    #[test]
    fn a_member_votes_once_per_ballot_and_only_upwards() {
        let mut d = Durable::default();
        d.vote(C, &1, 1, None).unwrap();
        assert_eq!(d.vote(C, &2, 1, None), Err(Refusal::OldBallot { ballot: 1, voted: 1 }));
        d.vote(C, &2, 2, None).unwrap();
        assert_eq!(d.voted, 2);
    }

    #[test]
    fn a_locked_member_moves_only_on_a_newer_certificate() {
        let mut d = Durable::default();
        d.vote(C, &1, 1, None).unwrap();
        d.lock(C, &cert(1, 1, &[0, 1, 2])).unwrap();
        assert_eq!(d.vote(C, &2, 2, None), Err(Refusal::Locked { lock: 1 }));
        assert_eq!(d.vote(C, &2, 3, Some(&cert(2, 0, &[0, 1, 3]))), Err(Refusal::Locked { lock: 1 }), "older");
        assert_eq!(d.vote(C, &2, 4, Some(&cert(2, 3, &[0, 1]))), Err(Refusal::Locked { lock: 1 }), "incomplete");
        assert_eq!(d.vote(C, &2, 5, Some(&cert(3, 3, &[0, 1, 3]))), Err(Refusal::Locked { lock: 1 }), "another block");
        d.vote(C, &1, 6, None).unwrap(); // its own block, always
        d.vote(C, &2, 7, Some(&cert(2, 6, &[0, 1, 3]))).unwrap();
        assert_eq!(d.lock(C, &cert(2, 6, &[0, 1, 3])), Err(Refusal::Superseded { ballot: 6, voted: 7 }));
        d.lock(C, &cert(2, 7, &[0, 1, 3])).unwrap();
        assert_eq!(d.lock(C, &cert(1, 7, &[0, 1])), Err(Refusal::Incomplete { voters: 2, threshold: 3 }));
    }

    /// Why a node needs ballot-bound signatures before it uses these rules (found by an
    /// attack review): with n = 4, t = 3 and one Byzantine member Z that leads, honest M, N
    /// and K follow every rule, yet M and N lock `X` at different ballots (1 and 4) and sign
    /// it — shares a Byzantine leader can sum into one signature over a bare block id — and
    /// then M and K lock and sign `Y` at ballot 5. Per ballot, no block has `t` shares; over
    /// all ballots, both do.
    #[test]
    fn shares_of_different_ballots_must_not_combine() {
        let (x, y) = (1u8, 2u8);
        let (mut m, mut n, mut k) = (Durable::default(), Durable::default(), Durable::default());
        n.vote(C, &x, 1, None).unwrap();
        n.vote(C, &y, 3, None).unwrap();
        k.vote(C, &y, 3, None).unwrap();
        let y3 = cert(y, 3, &[1, 2, 3]); // N, K and Z
        n.vote(C, &x, 4, None).unwrap();
        k.vote(C, &x, 4, None).unwrap();
        m.vote(C, &x, 1, None).unwrap();
        // Z sums M's commitment of session X@1 and N's of session X@4 into one challenge.
        m.lock(C, &cert(x, 1, &[0, 1, 3])).unwrap(); // shares X
        n.lock(C, &cert(x, 4, &[1, 2, 3])).unwrap(); // shares X: with Z's, X is signed
        k.vote(C, &y, 5, None).unwrap();
        m.vote(C, &y, 5, Some(&y3)).unwrap(); // Y@3 is newer than M's lock at 1
        let y5 = cert(y, 5, &[0, 2, 3]);
        m.lock(C, &y5).unwrap(); // shares Y
        k.lock(C, &y5).unwrap(); // shares Y: with Z's, Y is signed too
    }

    /// A liar's ballot: a far announce is refused and raises the member one step only, and
    /// a far report does not carry a plan beyond the step the leader itself accepts.
    #[test]
    fn ballots_move_at_most_one_step_at_a_time() {
        let mut d = Durable::<u8>::default();
        assert_eq!(
            d.vote(C, &1, Ballot::MAX, None),
            Err(Refusal::TooFar { ballot: Ballot::MAX, raised_to: MAX_BALLOT_STEP })
        );
        assert_eq!(d.voted, MAX_BALLOT_STEP);
        d.vote(C, &1, 2 * MAX_BALLOT_STEP, None).unwrap();
        let liar = Durable::<u8> { voted: Ballot::MAX, lock: None };
        let honest = Durable { voted: 7, lock: None };
        let p = plan(C, &[liar, honest.clone(), honest], 5).unwrap();
        assert_eq!(p.ballot, 5 + MAX_BALLOT_STEP);
        let mut leader = Durable { voted: 5, lock: None };
        leader.vote(C, &1, p.ballot, None).unwrap();
    }

    /// A member a liar left behind by many steps reaches a ballot near a complete
    /// certificate's at once when the announce carries it; an incomplete one or one for
    /// another block does not extend its reach.
    #[test]
    fn a_certificate_extends_a_laggards_reach() {
        let far = 5 * MAX_BALLOT_STEP;
        let mut d = Durable::<u8>::default();
        assert!(matches!(d.vote(C, &1, far + 3, Some(&cert(1, far, &[0, 1]))), Err(Refusal::TooFar { .. })));
        assert!(matches!(d.vote(C, &1, far + 4, Some(&cert(2, far, &[0, 1, 2]))), Err(Refusal::TooFar { .. })));
        d.vote(C, &1, far + 5, Some(&cert(1, far, &[0, 1, 2]))).unwrap();
        let lagging = Durable { voted: 1, lock: None };
        let locked = Durable { voted: far + 2, lock: Some(Lock { certificate: cert(1, far, &[0, 1, 2]) }) };
        let p = plan(C, &[lagging.clone(), locked.clone(), locked], 1).unwrap();
        assert_eq!(p.ballot, far + 3, "the leader lagging too plans above the lockers");
        let mut leader = lagging;
        leader.vote(C, &1, p.ballot, p.justification.as_ref()).unwrap();
    }

    /// What the simulation found: a member that voted at ballot 2 while unlocked must not
    /// then lock at ballot 1 — else it holds a share at 1 and a vote at 2 that ignored it.
    #[test]
    fn a_member_that_moved_on_does_not_lock_an_older_ballot() {
        let mut d = Durable::default();
        d.vote(C, &1, 1, None).unwrap();
        d.vote(C, &2, 2, None).unwrap();
        assert_eq!(d.lock(C, &cert(1, 1, &[0, 1, 2])), Err(Refusal::Superseded { ballot: 1, voted: 2 }));
        let mut locked = Durable::default();
        locked.lock(C, &cert(1, 1, &[0, 1, 2])).unwrap();
        assert_eq!(locked.lock(C, &cert(2, 0, &[0, 1, 3])), Err(Refusal::Superseded { ballot: 0, voted: 1 }));
    }

    #[test]
    fn a_leader_re_leads_the_highest_lock_above_every_ballot() {
        let locked = Durable { voted: 5, lock: Some(Lock { certificate: cert(7, 4, &[0, 1, 2]) }) };
        let lower = Durable { voted: 3, lock: Some(Lock { certificate: cert(8, 2, &[0, 1, 3]) }) };
        let free = Durable { voted: 9, lock: None };
        let p = plan(C, &[lower.clone(), locked.clone(), free.clone()], 0).unwrap();
        assert_eq!((p.block(1), p.ballot), (7, 10));
        assert_eq!(p.justification.unwrap().ballot, 4);
        assert_eq!(plan(C, &[free.clone(), free.clone(), free.clone()], 20).unwrap().block(1), 1);
        assert_eq!(plan(C, &[free.clone(), free], 0), None, "fewer than the threshold reported");
    }
}
