//! A whole cothority in one process: every member's state machines, driven round by round,
//! with every message encoded to its wire bytes and decoded again on arrival.
//!
//! This is a simulation (no sockets, no clocks): tests use it to check the protocol with
//! faulty members, and benchmarks to measure its CPU cost at scale. Timeouts are modelled
//! by members that never answer; the driver closes each phase once everyone alive spoke.

use crate::keys::SecretKey;
use crate::mask::Mask;
use crate::protocol::{
    commit, Aggregator, Fault, Leader, ProtocolError, Response, RoundError, Session, SessionId, SignerNonces, Tree,
};
use crate::roster::Roster;
use crate::signature::Signature;
use curve25519_dalek::scalar::Scalar;
use rand_core::CryptoRngCore;
use serde::{de::DeserializeOwned, Serialize};
use std::sync::Arc;

/// How a simulated member behaves in every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    /// Never answers (down, or partitioned away).
    Offline,
    /// Commits, then never sends its response.
    SilentAfterCommit,
    /// Commits, then sends a partial signature off by one.
    WrongResponse,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub threshold: usize,
    /// Children per inner node; `usize::MAX` (or anything `>= n - 1`) for a star.
    pub branching: usize,
    pub leader: usize,
    /// Attempts before giving up (each restart excludes the members the last one blamed).
    pub max_attempts: usize,
}

/// What a successful run produced and cost.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub signature: Signature,
    pub attempts: usize,
    /// Members left out of the tree by restarts.
    pub excluded: Vec<usize>,
    /// Every fault named by an aggregator, over all attempts.
    pub faults: Vec<Fault>,
    /// Messages and wire bytes over all attempts (announcements not counted).
    pub messages: usize,
    pub bytes: usize,
    /// Depth of the tree in the last attempt: a round takes `2 · depth` link round trips.
    pub depth: usize,
}

struct Wire {
    messages: usize,
    bytes: usize,
}

impl Wire {
    /// Encodes and decodes `message`, as a network hop would.
    fn carry<T: Serialize + DeserializeOwned>(&mut self, message: &T) -> T {
        let bytes = postcard::to_allocvec(message).expect("protocol messages serialize");
        self.messages += 1;
        self.bytes += bytes.len();
        postcard::from_bytes(&bytes).expect("what was just encoded decodes")
    }
}

/// Runs the protocol until it yields a signature or `max_attempts` attempts failed.
/// `keys[i]` is the secret of roster member `i`.
pub fn run(
    roster: &Arc<Roster>,
    keys: &[SecretKey],
    message: &[u8],
    behaviours: &[Behaviour],
    config: &Config,
    rng: &mut impl CryptoRngCore,
) -> Result<Outcome, RoundError> {
    assert_eq!(keys.len(), roster.len(), "one key per member");
    assert_eq!(behaviours.len(), roster.len(), "one behaviour per member");
    let n = roster.len();
    let mut excluded = Mask::empty(n);
    let mut all_faults = Vec::new();
    let mut wire = Wire { messages: 0, bytes: 0 };
    let mut last_error = None;
    for attempt in 1..=config.max_attempts.max(1) {
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        let session = Session::new(roster.clone(), SessionId(id), message);
        let tree = Tree::new(n, config.leader, config.branching, &excluded);
        let may_restart = attempt < config.max_attempts;
        match run_attempt(&session, &tree, keys, behaviours, config.threshold, may_restart, &mut wire, rng) {
            Ok(Attempt::Hidden { unreachable }) => {
                for u in unreachable {
                    excluded.insert(u as usize);
                }
            }
            Ok(Attempt::Signed(signature)) => {
                return Ok(Outcome {
                    signature,
                    attempts: attempt,
                    excluded: excluded.iter().collect(),
                    faults: all_faults,
                    messages: wire.messages,
                    bytes: wire.bytes,
                    depth: tree.depth(),
                })
            }
            Err(RoundError::Faults { faults }) => {
                for f in &faults {
                    excluded.insert(f.member as usize);
                }
                all_faults.extend_from_slice(&faults);
                last_error = Some(RoundError::Faults { faults });
            }
            Err(RoundError::BelowThreshold { present, threshold, unreachable }) => {
                let before = excluded.count();
                for &u in &unreachable {
                    excluded.insert(u as usize);
                }
                let error = RoundError::BelowThreshold { present, threshold, unreachable };
                // Excluding the unreachable can only help if some of them were inner nodes
                // that took live members down with them; otherwise give up now.
                if excluded.count() == before || n - excluded.count() < threshold {
                    return Err(error);
                }
                last_error = Some(error);
            }
            Err(other) => return Err(other),
        }
    }
    Err(last_error.expect("at least one attempt ran"))
}

fn aggregator_of<'a>(
    leader: &'a mut Leader,
    aggregators: &'a mut [Option<Aggregator>],
    member: usize,
) -> Option<&'a mut Aggregator> {
    if member == leader.aggregator().member() {
        Some(leader.aggregator())
    } else {
        aggregators[member].as_mut()
    }
}

enum Attempt {
    Signed(Signature),
    /// Unreachable inner nodes hid live members; worth a restart without them.
    Hidden {
        unreachable: Vec<u32>,
    },
}

#[allow(clippy::too_many_arguments)]
fn run_attempt(
    session: &Session,
    tree: &Tree,
    keys: &[SecretKey],
    behaviours: &[Behaviour],
    threshold: usize,
    may_restart: bool,
    wire: &mut Wire,
    rng: &mut impl CryptoRngCore,
) -> Result<Attempt, RoundError> {
    let n = session.roster().len();
    let leader_member = tree.leader();
    let mut leader = Leader::new(session.clone(), tree, threshold)?;
    let mut aggregators: Vec<Option<Aggregator>> = (0..n)
        .map(|m| {
            (m != leader_member && tree.contains(m) && !tree.children(m).is_empty())
                .then(|| Aggregator::new(session.clone(), tree, m))
        })
        .collect();
    let alive = |m: usize| m == leader_member || behaviours[m] != Behaviour::Offline;
    let mut nonces: Vec<Option<SignerNonces>> = (0..n).map(|_| None).collect();

    // Commitment phase, leaves first.
    let order: Vec<usize> = tree.members_top_down().collect();
    for &m in order.iter().rev() {
        if !alive(m) {
            continue;
        }
        let (own_nonces, own) = commit(session, m, &keys[m], rng)?;
        nonces[m] = Some(own_nonces);
        let outgoing = match aggregator_of(&mut leader, &mut aggregators, m) {
            Some(aggregator) => {
                aggregator.receive_commitment(m, &own)?;
                if m == leader_member {
                    continue;
                }
                aggregator.commitment()
            }
            None => Some(own),
        };
        let parent = tree.parent(m).expect("only the leader has no parent");
        if let (Some(commitment), true) = (outgoing, alive(parent)) {
            let delivered = wire.carry(&commitment);
            aggregator_of(&mut leader, &mut aggregators, parent)
                .expect("a parent aggregates")
                .receive_commitment(m, &delivered)?;
        }
    }
    let challenge = leader.challenge()?;
    let hidden = leader.unreachable().iter().any(|&u| !tree.children(u as usize).is_empty());
    if hidden && may_restart {
        return Ok(Attempt::Hidden { unreachable: leader.unreachable().to_vec() });
    }
    let in_round = crate::mask::Mask::from_bytes(&challenge.mask.0, n)
        .map_err(|error| ProtocolError::Mask { from: leader_member, error })?;

    // Challenge goes down to every inner node in the round.
    for &m in &order {
        if m == leader_member || !in_round.contains(m) {
            continue;
        }
        let delivered = wire.carry(&challenge);
        if let Some(aggregator) = aggregators[m].as_mut() {
            aggregator.receive_challenge(&delivered)?;
        }
    }

    // Responses, leaves first.
    for &m in order.iter().rev() {
        if !in_round.contains(m) {
            continue;
        }
        let own = match behaviours[m] {
            Behaviour::SilentAfterCommit if m != leader_member => None,
            behaviour => {
                let response =
                    nonces[m].take().expect("members in the round committed").respond(session, &keys[m], &challenge)?;
                match (behaviour, response) {
                    (Behaviour::WrongResponse, Response::Signed { s }) if m != leader_member => {
                        let s = Scalar::from_bytes_mod_order(s) + Scalar::ONE;
                        Some(Response::Signed { s: s.to_bytes() })
                    }
                    (_, response) => Some(response),
                }
            }
        };
        let outgoing = match aggregator_of(&mut leader, &mut aggregators, m) {
            Some(aggregator) => {
                if let Some(own) = &own {
                    aggregator.receive_response(m, own)?;
                }
                if m == leader_member {
                    continue;
                }
                Some(aggregator.response())
            }
            None => own,
        };
        let parent = tree.parent(m).expect("only the leader has no parent");
        if let Some(response) = outgoing {
            let delivered = wire.carry(&response);
            aggregator_of(&mut leader, &mut aggregators, parent)
                .expect("a parent aggregates")
                .receive_response(m, &delivered)?;
        }
    }
    leader.finish().map(Attempt::Signed)
}

/// The signature a round would produce, computed alone by whoever holds the secret of every
/// signer in `mask`: `R = [r]B`, `s = r + c·Σ a_i`. For building long test chains and
/// benchmarks quickly; a real cothority never has the secrets in one place.
pub fn sign_with_all_keys(
    roster: &Roster,
    keys: &[SecretKey],
    mask: &Mask,
    message: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Signature {
    assert_eq!(keys.len(), roster.len(), "one key per member");
    let summed: Scalar = mask.iter().map(|i| keys[i].scalar()).sum();
    let mut wide = [0u8; 64];
    rng.fill_bytes(&mut wide);
    let r = Scalar::from_bytes_mod_order_wide(&wide);
    let big_r = (&r * curve25519_dalek::constants::ED25519_BASEPOINT_TABLE).compress().to_bytes();
    let aggregate = roster.aggregate_of(mask).compress().to_bytes();
    let c = crate::signature::challenge(&big_r, &aggregate, message);
    Signature { r: big_r, s: (r + c * summed).to_bytes(), mask: mask.as_bytes().to_vec() }
}
