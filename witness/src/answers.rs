//! Answers to the batched queries (SPEC §10.3: `GetProofs`, `GetLinkedProofs`,
//! `GetTimelineChanges`) as plain functions over any [`Store`]. The node serves them from
//! RocksDB; the bench calls the same functions over its in-memory store, so what it
//! measures is what a witness sends, limits and paging included.

use chainiac_proto::message::{
    ErrorCode, ErrorReply, LinkedQuery, ProofQuery, MAX_CHANGE_BLOCKS, MAX_HELD_APPOINTMENTS, MAX_PROOF_QUERIES,
    MAX_WATCHED_PREFIXES, PROOFS_RESPONSE_BUDGET,
};
use chainiac_proto::FrameClass;
use chainiac_skipchain::store::{self, Store, StoreError};
use chainiac_skipchain::timeline::{
    changes_cost, changes_page, changes_page_full, ChainPrefix, ChangeList, HeadSet, TimelineChanges, TimelineEntry,
};
use chainiac_skipchain::{ChainId, LinkedProof, Proof};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

fn err(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

/// The answers of a batched proof request, in order: `prove` makes each (with the hashes of
/// the committees it carries), leaving out every committee the request names as held or an
/// earlier answer carried. Once the answer holds [`PROOFS_RESPONSE_BUDGET`] bytes, or the
/// next proof would overflow one response frame, the rest are `Busy` ("ask again"); a
/// first proof too large for a frame alone is `Refused`.
fn answer_each<Q, P: serde::Serialize>(
    queries: &[Q],
    held_appointments: Vec<[u8; 32]>,
    mut prove: impl FnMut(&Q, &HashSet<[u8; 32]>) -> Result<(P, Vec<[u8; 32]>), ErrorReply>,
) -> Result<Vec<Result<P, ErrorReply>>, ErrorReply> {
    if queries.is_empty() || queries.len() > MAX_PROOF_QUERIES {
        let n = queries.len();
        return Err(err(ErrorCode::BadRequest, format!("asks for {n} proofs; 1 to {MAX_PROOF_QUERIES} allowed")));
    }
    if held_appointments.len() > MAX_HELD_APPOINTMENTS {
        let n = held_appointments.len();
        return Err(err(ErrorCode::BadRequest, format!("names {n} held committees; at most {MAX_HELD_APPOINTMENTS}")));
    }
    let mut held: HashSet<[u8; 32]> = held_appointments.into_iter().collect();
    let mut size = 0usize;
    let answers = queries
        .iter()
        .map(|query| {
            if size >= PROOFS_RESPONSE_BUDGET {
                return Err(err(ErrorCode::Busy, "this answer is full; ask for this chain again"));
            }
            let (proof, carried) = prove(query, &held)?;
            // The answer must fit one response frame whatever the chains hold. Measured
            // without encoding: the answer is encoded once, when it is sent.
            let len = postcard::experimental::serialized_size(&proof).expect("proofs serialize");
            let room = FrameClass::Response.limit() - (1 << 20);
            if size + len > room {
                return Err(if size > 0 {
                    err(ErrorCode::Busy, "this answer is full; ask for this chain again")
                } else {
                    err(
                        ErrorCode::Refused,
                        format!("the proof is {len} bytes, over one answer; ask for a nearer block"),
                    )
                });
            }
            held.extend(carried);
            size += len;
            Ok(proof)
        })
        .collect();
    Ok(answers)
}

pub fn store_err<E: std::error::Error>(e: StoreError<E>) -> ErrorReply {
    match e {
        StoreError::Block(b) => err(ErrorCode::Refused, b.to_string()),
        StoreError::UnknownChain(c) => err(ErrorCode::NotFound, format!("chain {c} is not served here")),
        StoreError::NoSuchBlock { .. } => err(ErrorCode::NotFound, e.to_string()),
        StoreError::Conflict { .. } => err(ErrorCode::Conflict, e.to_string()),
        StoreError::WrongDirection { .. } | StoreError::ChainExists(_) => err(ErrorCode::BadRequest, e.to_string()),
        StoreError::Backend(_) | StoreError::Corrupt(_) => err(ErrorCode::Internal, e.to_string()),
    }
}

/// The index of a chain's head: one record read, no block decoded (a batched answer needs
/// it for every chain it names).
pub fn head_index<S: Store>(store: &S, chain: &ChainId) -> Result<u64, ErrorReply> {
    let record = store.head(chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    record.map(|r| r.index).ok_or_else(|| err(ErrorCode::NotFound, format!("chain {chain} is not served here")))
}

/// A `GetProofs` answer: forward proofs for many chains; each appointment travels at most
/// once (and not at all if the client holds it), and the answer stops growing at the byte
/// budget.
pub fn proofs<S: Store>(
    store: &S,
    queries: &[ProofQuery],
    with_payload: bool,
    held_appointments: Vec<[u8; 32]>,
) -> Result<Vec<Result<Proof, ErrorReply>>, ErrorReply> {
    answer_each(queries, held_appointments, |query, held| {
        let to = match query.to {
            Some(to) => to,
            None => head_index(store, &query.chain)?,
        };
        // No payload for a chain that did not move: the client has it already.
        let proof = store::prove(store, &query.chain, query.from, to, with_payload && to > query.from)
            .map_err(store_err)?
            .without_appointments(|hash| held.contains(hash));
        let carried = proof.steps.iter().filter_map(|step| step.committee.as_ref().map(|a| a.digest())).collect();
        Ok((proof, carried))
    })
}

/// A `GetLinkedProofs` answer: per chain, the headers from the head the client's timeline
/// block records down to the client's block, then a forward proof past it to the head.
pub fn linked_proofs<S: Store>(
    store: &S,
    queries: &[LinkedQuery],
    with_payload: bool,
    held_appointments: Vec<[u8; 32]>,
) -> Result<Vec<Result<LinkedProof, ErrorReply>>, ErrorReply> {
    answer_each(queries, held_appointments, |query, held| {
        let to = head_index(store, &query.chain)?;
        let moved = to > query.from;
        let summarized =
            if moved && with_payload { summarized_release(store, &query.chain, query.recorded) } else { None };
        let held_here = |hash: &[u8; 32]| held.contains(hash);
        let (chain, from, recorded, payload) = (&query.chain, query.from, query.recorded, with_payload && moved);
        let proof = match summarized {
            // The summary names its release's block: the links start there (SPEC §7.5).
            Some((release, Some(id))) => {
                store::prove_linked_named(store, chain, from, recorded, to, payload, (release, id), held_here)
            }
            through => {
                let through = through.map(|(release, _)| release);
                store::prove_linked_through(store, chain, from, recorded, to, payload, through, held_here)
            }
        }
        .map_err(store_err)?;
        let beyond = proof.beyond.clone().without_appointments(|hash| held.contains(hash));
        let proof = LinkedProof { beyond, ..proof };
        let carried = proof
            .appointments
            .iter()
            .chain(proof.beyond.steps.iter().filter_map(|step| step.committee.as_ref()))
            .map(|a| a.digest())
            .collect();
        Ok((proof, carried))
    })
}

/// The release a rebuild summary at block `index` of `chain` is about, if that block is one
/// (SPEC §11.8), and the release's block id when it names it (kinds 9, 8): a client that
/// skipped the release needs it with the summary, so the links start at it (named) or go
/// through it, and carry its payload.
fn summarized_release<S: Store>(
    store: &S,
    chain: &ChainId,
    index: u64,
) -> Option<(u64, Option<chainiac_skipchain::BlockId>)> {
    let block = store.block(chain, index).ok().flatten()?;
    let (summary, named) = chainiac_release::RebuildSummary::from_block(block.header.kind, &block.payload).ok()?;
    Some((summary.release, named))
}

/// The requests' own limits on a `GetTimelineChanges`, checked before anything is read.
pub fn check_changes_request(watched: &[ChainPrefix], held_appointments: &[[u8; 32]]) -> Result<(), ErrorReply> {
    if held_appointments.len() > MAX_HELD_APPOINTMENTS {
        return Err(err(ErrorCode::BadRequest, format!("more than {MAX_HELD_APPOINTMENTS} held committees")));
    }
    if watched.len() > MAX_WATCHED_PREFIXES {
        return Err(err(ErrorCode::BadRequest, format!("more than {MAX_WATCHED_PREFIXES} watched prefixes")));
    }
    Ok(())
}

/// A `GetTimelineChanges` answer: the blocks of `timeline` after `from` with their change
/// lists (`lists`, by block index, up to `head`, the newest block whose list is in place),
/// up to [`MAX_CHANGE_BLOCKS`] or the response budget, proven block by block. `NotFound`
/// when a list before `head` is missing within that page; refused when all the lists since
/// `from` would take more than `max_bytes` (not 0).
#[allow(clippy::too_many_arguments)]
pub fn timeline_changes<S: Store>(
    store: &S,
    timeline: &ChainId,
    from: u64,
    head: u64,
    lists: &BTreeMap<u64, Arc<ChangeList>>,
    watched: &HashSet<ChainPrefix>,
    everyone: &HeadSet,
    held_appointments: Vec<[u8; 32]>,
    max_bytes: u64,
) -> Result<TimelineChanges, ErrorReply> {
    // The offer is weighed against the prefixes alone (one length per list, however large
    // the request): the opened leaves are the client's own moves.
    let size: u64 = lists.range(from + 1..).map(|(_, list)| changes_cost(list.len(), 0)).sum();
    if max_bytes > 0 && size > max_bytes {
        return Err(chainiac_proto::changes_too_large(from, size, max_bytes));
    }
    let budget = PROOFS_RESPONSE_BUDGET as u64;
    let cost = |k: u64| lists.get(&k).map(|list| changes_cost(list.len(), list.opened(watched)));
    let page = changes_page(from, head, cost, MAX_CHANGE_BLOCKS, budget);
    let to = from + page.len() as u64;
    // Lists that stop short of the head for want of one would show the client an old block
    // as the newest: it is told, and asks another member or takes inclusion proofs.
    if to < head && !changes_page_full(&page, MAX_CHANGE_BLOCKS, budget) {
        return Err(err(
            ErrorCode::NotFound,
            format!("this witness holds no change list for block {} (its head is block {head})", to + 1),
        ));
    }
    let mut blocks = Vec::new();
    for k in (from + 1)..=to {
        let block = store
            .block(timeline, k)
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
            .ok_or_else(|| err(ErrorCode::Internal, "a listed block is not stored"))?;
        let entry = TimelineEntry::from_bytes(&block.payload)
            .map_err(|e| err(ErrorCode::Internal, format!("stored timeline entry: {e}")))?;
        let list = lists.get(&k).ok_or_else(|| err(ErrorCode::Internal, "a paged list is gone"))?;
        blocks.push((entry, &**list));
    }
    let held: HashSet<[u8; 32]> = held_appointments.into_iter().collect();
    let proof =
        store::prove_each(store, timeline, from, to).map_err(store_err)?.without_appointments(|h| held.contains(h));
    Ok(TimelineChanges::answer(proof, blocks, watched, everyone))
}
