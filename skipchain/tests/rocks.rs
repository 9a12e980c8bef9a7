//! The RocksDB store on disk: durability across reopen, crash consistency under SIGKILL,
//! many chains in one store.

mod common;

use chainiac_skipchain::rocks::RocksStore;
use chainiac_skipchain::store::{self, Store};
use chainiac_skipchain::{ChainId, ChainParams, ChainState};
use common::TestChain;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn params() -> ChainParams {
    ChainParams::new(4, 10).unwrap()
}

/// Reads every block of `chain` from the store and re-validates the whole chain from its
/// genesis, signatures included. Returns the head index.
fn revalidate(store: &RocksStore, chain: &ChainId) -> u64 {
    let head = store.head(chain).unwrap().expect("chain present").index;
    let genesis = store.block(chain, 0).unwrap().unwrap();
    let mut state = ChainState::genesis(&genesis).unwrap().into_inner();
    for index in 1..=head {
        let block =
            store.block(chain, index).unwrap().unwrap_or_else(|| panic!("block {index} missing below head {head}"));
        state = state.extend(&block, |i| store.block_id(chain, i).unwrap()).unwrap().into_inner();
        assert_eq!(store.locate(&state.id).unwrap(), Some((*chain, index)));
    }
    assert!(store.block(chain, head + 1).unwrap().is_none(), "nothing beyond the head");
    assert_eq!(store::head_state(store, chain).unwrap().into_inner(), state);
    head
}

#[test]
fn ten_thousand_synced_appends_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (chain_id, genesis_state, head_id) = {
        let mut chain = TestChain::new(RocksStore::open(dir.path()).unwrap(), params(), 4, 1);
        for i in 0..10_000u64 {
            chain.push(None, i % 2_500 == 1_000, (i % 3) as usize);
        }
        (chain.chain, chain.genesis_state(), chain.head().id)
    };
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.chains().unwrap(), vec![chain_id]);
    assert_eq!(revalidate(&store, &chain_id), 10_000);
    assert_eq!(store.checkpoints(&chain_id, 0, 10_001).unwrap(), vec![1_001, 3_501, 6_001, 8_501]);
    let proof = store::prove(&store, &chain_id, 0, 10_000, true).unwrap();
    let reached = proof.verify(&genesis_state, &common::policy_rule).unwrap();
    assert_eq!(reached.state.id, head_id);
    assert_eq!(reached.checkpoints, vec![1_001, 3_501, 6_001, 8_501]);
}

#[test]
fn many_chains_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    let mut chains: Vec<TestChain<RocksStore>> =
        (0..3).map(|seed| TestChain::new(store.clone(), params(), 3 + seed as usize, 100 + seed)).collect();
    for round in 0..60 {
        for (k, chain) in chains.iter_mut().enumerate() {
            if round % (k + 1) == 0 {
                chain.push(None, round == 30, 0);
            }
        }
    }
    let expected: Vec<(ChainId, u64)> = chains.iter().map(|c| (c.chain, c.head().index())).collect();
    drop(chains);
    drop(store);
    let store = RocksStore::open(dir.path()).unwrap();
    let mut found = store.chains().unwrap();
    found.sort();
    let mut ids: Vec<ChainId> = expected.iter().map(|e| e.0).collect();
    ids.sort();
    assert_eq!(found, ids);
    // Pages of any size, after any chain, give the same chains in id order as the default
    // (filtering) implementation would.
    for limit in 1..=4 {
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store.chains_after(after.as_ref(), limit).unwrap();
            assert!(page.len() <= limit);
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            paged.extend(page);
        }
        assert_eq!(paged, ids, "pages of {limit}");
    }
    assert_eq!(store.chains_after(Some(&ids[0]), 10).unwrap(), ids[1..].to_vec(), "after excludes its chain");
    for (chain, head) in expected {
        assert_eq!(revalidate(&store, &chain), head);
        // A block id of one chain is never found in another.
        let id = store.block_id(&chain, head).unwrap().unwrap();
        assert_eq!(store.locate(&id).unwrap(), Some((chain, head)));
    }
}

const CHILD_DIR: &str = "CHAINIAC_CRASH_CHILD_DIR";

/// Run as a child by `a_killed_appender_reopens_to_a_consistent_prefix`: appends forever,
/// printing `ACK <index>` after each append returned. Without the variable it does nothing.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let store = RocksStore::open(std::path::Path::new(&dir)).unwrap();
    let mut chain = TestChain::open_or_create(store, params(), 4, 7);
    loop {
        let index = chain.push(None, false, 1);
        println!("ACK {index}");
    }
}

#[test]
fn a_killed_appender_reopens_to_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = 0;
    for (cycle, acks_before_kill) in [37usize, 111, 5, 240].into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(index) = line.strip_prefix("ACK ") {
                acknowledged = index.parse().unwrap();
                seen += 1;
                if seen == acks_before_kill {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let chain = store.chains().unwrap()[0];
        let head = revalidate(&store, &chain);
        assert!(head >= acknowledged, "cycle {cycle}: head {head} lost acknowledged block {acknowledged}");
        acknowledged = head;
    }
}

/// A store opened by an older version with a column family nobody names any more still
/// opens (RocksDB refuses a store opened without all its families), chains intact.
#[test]
fn a_store_with_a_family_no_longer_named_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let chain = {
        let store = RocksStore::open_with(dir.path(), &["promises"], true).unwrap();
        let mut chain = TestChain::new(store, params(), 4, 7);
        chain.push(None, false, 0);
        chain.chain
    };
    let store = RocksStore::open_with(dir.path(), &["agreement"], true).unwrap();
    assert_eq!(revalidate(&store, &chain), 1);
    assert!(store.db().cf_handle("agreement").is_some());
}
