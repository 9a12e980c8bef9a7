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
//!    `B` from a ballot at or above its lock's. A member locked on exactly `(B, b)` (so it
//!    voted for `B` at `b`) votes for `B` at `b` again: the same vote, for a fresh signing
//!    session when the first one's signature fell short (a *re-sign*).
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
//! Which ballots a leader may use, and when ([`admit`], for liveness only: safety holds
//! whatever ballots are used): ballots come in epochs of `n`, one per member, and the order
//! of the members within an epoch rotates from one epoch to the next ([`owner`]). A member
//! votes at a ballot only when its owner announced it (the owner signs the announce) and
//! only up to the end of the epoch after the one its clock reads
//! ([`frontier`], epochs of [`EPOCH_MS`]). A liar can then push honest members no further
//! than its own ballot in the next epoch; the member owning the last ballot of that epoch
//! outbids every ballot anyone may use until the epoch after begins, and that member is
//! honest in `n − f` epochs of every `n`: Tendermint's rotating proposer, with rounds that
//! only time advances.
//!
//! Why two blocks never both get `t` partial signatures: if `X` got them at ballot `b`, `t`
//! members locked `(X, b)`. A certificate for `Y ≠ X` at `b` would need an honest member
//! to vote twice at `b`. Take the lowest ballot `b' > b` with a certificate for some
//! `Y ≠ X`: its `t` voters share more than `n/3` members with the `t` lockers, so an
//! honest locker voted for `Y` at `b'`; it was locked at `b` or later on `X` (any later
//! lock change needs a certificate for a non-`X` block between `b` and `b'`, and there is
//! none below `b'`), so it needed a certificate for `Y` at a ballot in `[b, b')` — none
//! exists. So no certificate for another block at `b` or after, and no honest member
//! releases a share for one. Re-signs change none of this: a re-sign vote goes only to a
//! block already certified at its ballot, so the first certificate at every ballot is made
//! of ordinary votes, and the argument runs over those.
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

/// Milliseconds per ballot epoch. The honest owner of the last ballot of the epoch after
/// the current one has the epoch less two clock margins (4 s) before anyone may outbid it:
/// a round at the frontier (two phases of at most [`FRONTIER_PHASE_MS`]) fits with room.
pub const EPOCH_MS: u64 = 6_000;

/// How far apart honest members' clocks may be for rule 0 to work as argued (SPEC §9.1): a
/// leader waits this long past its ballot's opening, for members whose clocks are behind.
pub const CLOCK_MARGIN_MS: u64 = 1_000;

/// How long a leader waits for each phase (announce, challenge) of a round at the
/// frontier, which runs over a star: members slower than this (or liars answering as late
/// as they may) are left out, so that no member can stretch the round past the time its
/// ballot is unbeaten.
pub const FRONTIER_PHASE_MS: u64 = 1_000;

/// The member that may announce `ballot` in a committee of `members`: ballot `e·n + s` is
/// slot `s` of epoch `e`, and slot `s` belongs to member `(s + e) mod n`, so every member
/// owns one ballot an epoch and the last slot rotates through all of them.
pub fn owner(ballot: Ballot, members: usize) -> usize {
    let n = members.max(1) as u64;
    ((ballot % n + (ballot / n) % n) % n) as usize
}

/// The highest ballot a member votes at while its clock reads `now_ms` (milliseconds since
/// the Unix epoch): the last of the epoch after the current one, so that members whose
/// clocks differ by less than an epoch accept one another's current ballots.
pub fn frontier(members: usize, now_ms: u64) -> Ballot {
    let n = members.max(1) as u64;
    (now_ms / EPOCH_MS).saturating_add(2).saturating_mul(n).saturating_sub(1)
}

/// The lowest ballot above `above` that `member` owns (`None`: past `Ballot::MAX`).
pub fn next_owned(above: Ballot, member: usize, members: usize) -> Option<Ballot> {
    let n = members.max(1) as u64;
    let m = member as u64 % n;
    let first = above.checked_add(1)?;
    let epoch = first / n;
    for e in [epoch, epoch.checked_add(1)?] {
        let slot = (m + n - e % n) % n;
        let ballot = e.checked_mul(n)?.checked_add(slot)?;
        if ballot >= first {
            return Some(ballot);
        }
    }
    None // unreachable: each epoch holds one ballot of every member
}

/// Whether `ballot` is of the current or the next epoch by the clock that gave `frontier`:
/// ballots there are in use only because someone pushed ballots to the present, and rounds
/// there run against the clock (a star, phases of [`FRONTIER_PHASE_MS`]; reservations do
/// not hold against them).
pub fn at_frontier(ballot: Ballot, members: usize, frontier: Ballot) -> bool {
    let n = members.max(1) as u64;
    (ballot / n).saturating_add(1) >= frontier / n
}

/// Whether a round at the frontier announced at `ballot` at `now_ms` (this leader's clock)
/// is *unbeatable* from its start to its end: `ballot` is the frontier's last now and still
/// will be for every honest clock (within [`CLOCK_MARGIN_MS`] of this one) when its two
/// phases of at most [`FRONTIER_PHASE_MS`] are over. No honest member can then be past it
/// during the round: refusing it is a fault, and a signature that falls short is signed
/// again at it (SPEC §9.1's re-sign). A round that could outlast the window is not.
pub fn unbeatable(ballot: Ballot, members: usize, now_ms: u64) -> bool {
    let end = now_ms.saturating_add(CLOCK_MARGIN_MS + 2 * FRONTIER_PHASE_MS);
    ballot == frontier(members, now_ms) && ballot == frontier(members, end)
}

/// How long, from `now_ms`, until `ballot` is within the [`frontier`] of members whose
/// clocks are up to [`CLOCK_MARGIN_MS`] behind (0: now; always so for the low ballots of
/// ordinary rounds).
pub fn opens_in_ms(ballot: Ballot, members: usize, now_ms: u64) -> u64 {
    let n = members.max(1) as u64;
    let opens = (ballot / n).saturating_sub(1).saturating_mul(EPOCH_MS).saturating_add(CLOCK_MARGIN_MS);
    opens.saturating_sub(now_ms)
}

/// Rule 0, for liveness: a member votes at `ballot` only if `announcer` owns it and it is
/// within `frontier` (the member's, from its clock). Checked before the rules of
/// [`Durable::vote`]; a refusal changes nothing.
pub fn admit(members: usize, ballot: Ballot, announcer: usize, frontier: Ballot) -> Result<(), Refusal> {
    let owner = owner(ballot, members);
    if owner != announcer {
        return Err(Refusal::NotOwner { ballot, owner, announcer });
    }
    if ballot > frontier {
        return Err(Refusal::Early { ballot, frontier });
    }
    Ok(())
}

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
    #[error("ballot {ballot} belongs to member {owner}, not to member {announcer}, which announced it")]
    NotOwner { ballot: Ballot, owner: usize, announcer: usize },
    #[error(
        "ballot {ballot} is beyond {frontier}, the last this member's clock allows now; retry when its epoch opens"
    )]
    Early { ballot: Ballot, frontier: Ballot },
}

/// The committee an index is agreed in: its size and threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committee {
    pub members: usize,
    pub threshold: usize,
}

impl<B: Clone + PartialEq> Durable<B> {
    /// Rule 1: whether this member votes for `block` at `ballot`, given the announce's
    /// `justification`; on `Ok` the caller stores the raised `voted` before answering.
    ///
    /// A re-sign — `ballot` is the one voted at, and the lock is on `block` at `ballot` —
    /// changes nothing and is a vote only for the block already certified at `ballot`: the
    /// first certificate of any block at a ballot is made of votes cast without re-signs
    /// (a re-sign needs a lock there, which needs a certificate there), and two such at one
    /// ballot would need an honest member to vote twice; so no other block can be
    /// certified at `ballot`, and a certified block gains nothing it did not have.
    pub fn vote(
        &mut self,
        committee: Committee,
        block: &B,
        ballot: Ballot,
        justification: Option<&Certificate<B>>,
    ) -> Result<(), Refusal> {
        if ballot == self.voted && self.is_locked_on(block, ballot) {
            return Ok(());
        }
        if ballot <= self.voted {
            return Err(Refusal::OldBallot { ballot, voted: self.voted });
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

    /// Whether this member is locked on `block` by a certificate of `ballot`.
    pub fn is_locked_on(&self, block: &B, ballot: Ballot) -> bool {
        self.lock.as_ref().is_some_and(|l| l.certificate.ballot == ballot && l.certificate.block == *block)
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
/// the leader's own when nobody reported a lock; the ballot: the lowest that `me` owns above
/// every ballot reported and above `at_least` (the leader's own). A report's ballot beyond
/// `frontier` (the leader's, from its clock) is not counted: no honest member votes there
/// unless its clock runs ahead (then the leader's ballot is refused and it tries again a
/// moment later), and counting a liar's would send the leader an epoch further at every
/// gathering. `None` when fewer than `t` reported.
pub fn plan<B: Clone>(
    committee: Committee,
    reports: &[Durable<B>],
    at_least: Ballot,
    me: usize,
    frontier: Ballot,
) -> Option<Plan<B>> {
    if reports.len() < committee.threshold {
        return None;
    }
    let highest = reports
        .iter()
        .filter_map(|r| r.lock.as_ref())
        .filter(|l| l.certificate.is_complete(committee.members, committee.threshold))
        .max_by_key(|l| l.certificate.ballot);
    let above = reports.iter().map(|r| r.voted).filter(|&v| v <= frontier).max().unwrap_or(0).max(at_least);
    // None only past `Ballot::MAX`: the leader's own vote then refuses it, nothing panics.
    let ballot = next_owned(above, me, committee.members).unwrap_or(Ballot::MAX);
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

    /// A re-sign: locked on `(1, 5)`, a member votes for block 1 at ballot 5 again (and
    /// locks again on another certificate of it), changing nothing; never for another block
    /// at 5, never at 5 once it voted past it, never unlocked.
    #[test]
    fn a_member_votes_again_only_for_the_block_it_is_locked_on_at_that_ballot() {
        let mut d = Durable::default();
        d.vote(C, &1, 5, None).unwrap();
        assert_eq!(d.vote(C, &1, 5, None), Err(Refusal::OldBallot { ballot: 5, voted: 5 }), "voted, not locked");
        d.lock(C, &cert(1, 5, &[0, 1, 2])).unwrap();
        let before = d.clone();
        d.vote(C, &1, 5, None).unwrap();
        assert_eq!(d, before, "a re-sign changes nothing");
        assert_eq!(d.vote(C, &2, 5, Some(&cert(2, 5, &[0, 1, 3]))), Err(Refusal::OldBallot { ballot: 5, voted: 5 }));
        assert_eq!(d.vote(C, &1, 4, None), Err(Refusal::OldBallot { ballot: 4, voted: 5 }));
        d.lock(C, &cert(1, 5, &[1, 2, 3])).unwrap();
        assert_eq!(d.lock.as_ref().map(|l| l.certificate.voters.len()), Some(3));
        d.vote(C, &1, 6, None).unwrap();
        assert_eq!(d.vote(C, &1, 5, None), Err(Refusal::OldBallot { ballot: 5, voted: 6 }), "moved on");
        let mut locked_lower = Durable { voted: 5, lock: Some(Lock { certificate: cert(1, 4, &[0, 1, 2]) }) };
        assert_eq!(locked_lower.vote(C, &1, 5, None), Err(Refusal::OldBallot { ballot: 5, voted: 5 }));
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

    #[test]
    fn each_member_owns_one_ballot_an_epoch_and_the_last_slot_rotates() {
        for n in 1..9usize {
            let mut last = std::collections::BTreeSet::new();
            for epoch in 0..(3 * n as u64) {
                let owners: std::collections::BTreeSet<usize> =
                    (0..n as u64).map(|s| owner(epoch * n as u64 + s, n)).collect();
                assert_eq!(owners.len(), n, "epoch {epoch} of {n}");
                last.insert(owner(epoch * n as u64 + n as u64 - 1, n));
            }
            assert_eq!(last.len(), n, "every member owns the last slot of some epoch");
        }
        // The top of the range has an owner too, and its neighbours in the epoch others.
        assert!(owner(Ballot::MAX, 7) < 7 && owner(Ballot::MAX, 7) != owner(Ballot::MAX - 1, 7));
    }

    /// Rule 0: the owner only, and not beyond the frontier; a refusal leaves no trace.
    #[test]
    fn only_a_ballots_owner_announces_it_and_not_before_its_epoch() {
        let frontier = frontier(4, 10 * EPOCH_MS + 1); // epoch 10: ballots up to epoch 11
        assert_eq!(frontier, 12 * 4 - 1);
        assert_eq!(admit(4, 47, owner(47, 4), frontier), Ok(()));
        assert_eq!(admit(4, 48, owner(48, 4), frontier), Err(Refusal::Early { ballot: 48, frontier: 47 }));
        let other = (owner(45, 4) + 1) % 4;
        assert_eq!(
            admit(4, 45, other, frontier),
            Err(Refusal::NotOwner { ballot: 45, owner: owner(45, 4), announcer: other })
        );
        assert_eq!(opens_in_ms(48, 4, 10 * EPOCH_MS + 1), EPOCH_MS + CLOCK_MARGIN_MS - 1);
        assert_eq!(opens_in_ms(47, 4, 10 * EPOCH_MS + 1), CLOCK_MARGIN_MS - 1, "for clocks behind");
        assert_eq!(opens_in_ms(47, 4, 10 * EPOCH_MS + CLOCK_MARGIN_MS), 0);
        assert_eq!(opens_in_ms(7, 4, 1_800_000_000_000), 0, "ordinary rounds never wait");
        assert_eq!(opens_in_ms(Ballot::MAX, 4, 0), Ballot::MAX);
    }

    /// A liar's report of a ballot no honest clock admits is not counted; one at the
    /// frontier (a member pushed there) sends the leader to its ballot of the next epoch,
    /// which it accepts itself once that epoch opens.
    #[test]
    fn a_liars_report_beyond_the_frontier_is_not_counted() {
        let now = 100 * EPOCH_MS;
        let top = frontier(4, now);
        let honest = Durable::<u8> { voted: 7, lock: None };
        let liar = Durable::<u8> { voted: Ballot::MAX, lock: None };
        let p = plan(C, &[liar, honest.clone(), honest.clone()], 5, 2, top).unwrap();
        assert_eq!(p.ballot, next_owned(7, 2, 4).unwrap(), "the liar's report changes nothing");
        let pushed = Durable::<u8> { voted: top, lock: None };
        let p = plan(C, &[pushed, honest.clone(), honest], 5, 2, top).unwrap();
        assert!(p.ballot > top && owner(p.ballot, 4) == 2, "{}", p.ballot);
        assert!(opens_in_ms(p.ballot, 4, now) <= EPOCH_MS + CLOCK_MARGIN_MS);
        let later = now + opens_in_ms(p.ballot, 4, now);
        assert_eq!(admit(4, p.ballot, 2, frontier(4, later)), Ok(()));
        let mut leader = Durable { voted: 5, lock: None };
        leader.vote(C, &1, p.ballot, None).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn next_owned_is_the_lowest_owned_ballot_above(above in 0u64..10_000, n in 1usize..9, m in 0usize..8) {
            let m = m % n;
            let expected = (above + 1..).find(|&b| owner(b, n) == m).unwrap();
            proptest::prop_assert_eq!(next_owned(above, m, n), Some(expected));
            proptest::prop_assert!(expected - above <= 2 * n as u64);
        }

        /// Liveness's core: while a clock reads epoch `E`, every ballot a liar may use is
        /// below the last ballot of epoch `E + 1`, which its (other) owner may use at once.
        #[test]
        fn no_one_outbids_the_last_slot_of_the_next_epoch(now in 0u64..1 << 50, n in 1usize..9, liar in 0usize..8) {
            let liar = liar % n;
            let top = frontier(n, now);
            let top_owner = owner(top, n);
            proptest::prop_assert_eq!(admit(n, top, top_owner, top), Ok(()));
            if liar != top_owner {
                let best = (top.saturating_sub(2 * n as u64)..=top).rev().find(|&b| owner(b, n) == liar).unwrap();
                proptest::prop_assert!(best < top);
                proptest::prop_assert!(admit(n, top + 1, liar, top).is_err());
            }
        }
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
        let p = plan(C, &[lower.clone(), locked.clone(), free.clone()], 0, 0, Ballot::MAX).unwrap();
        assert_eq!((p.block(1), p.ballot), (7, 10));
        assert_eq!(p.justification.unwrap().ballot, 4);
        assert_eq!(plan(C, &[free.clone(), free.clone(), free.clone()], 20, 0, Ballot::MAX).unwrap().block(1), 1);
        assert_eq!(plan(C, &[free.clone(), free], 0, 0, Ballot::MAX), None, "fewer than the threshold reported");
    }
}
