//! Skipchains at scale: 1,000,000-block chains with a 16-member committee — proof sizes, hop
//! counts and verification times for b = 2, 4, 8 — and append throughput to RocksDB.
//!
//! `cargo bench -p chainiac-skipchain --bench skipchain [-- --quick]`
//!
//! Blocks are signed with the locally summed secret of the 16-member test committee (what
//! one cosigning round would produce; see `chainiac_cosi::simulation::sign_with_all_keys`).
//! A real chain has one round per block.

use chainiac_cosi::simulation::sign_with_all_keys;
use chainiac_cosi::{Mask, Member, Roster, SecretKey};
use chainiac_skipchain::rocks::RocksStore;
use chainiac_skipchain::store::{self, MemoryStore, Store};
use chainiac_skipchain::BlockSignature;
use chainiac_skipchain::{genesis, ChainParams, ChainState, Committee, Proof, Proposal};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::time::{Duration, Instant};

const MEMBERS: usize = 16;
const THRESHOLD: u32 = 11;

struct Signer {
    committee: Committee,
    keys: Vec<SecretKey>,
    rng: ChaCha20Rng,
}

impl Signer {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(16);
        let keys: Vec<SecretKey> = (0..MEMBERS).map(|_| SecretKey::generate(&mut rng)).collect();
        let roster = Roster::new(keys.iter().map(|k| Member::new(k, "")).collect()).unwrap();
        Signer { committee: Committee::new(roster, THRESHOLD).unwrap(), keys, rng }
    }

    /// Signs with every member but one or two (as real rounds often miss someone).
    fn sign(&mut self, message: &[u8]) -> chainiac_cosi::Signature {
        let mut mask = Mask::full(MEMBERS);
        mask.remove(self.rng.next_u32() as usize % MEMBERS);
        sign_with_all_keys(self.committee.roster(), &self.keys, &mask, message, &mut self.rng)
    }
}

fn params_for(base: u8, blocks: u64) -> ChainParams {
    let mut h = 1u8;
    while (base as u64).pow(h as u32 - 1) < blocks {
        h += 1;
    }
    ChainParams::new(base, h + 1).unwrap()
}

/// Appends `blocks` blocks with a ~100-byte payload through the full validating path.
fn build<S: Store>(store: &S, signer: &mut Signer, params: ChainParams, blocks: u64) -> ChainState {
    let first = genesis(params, signer.committee.clone(), b"policy".to_vec(), 0, b"hello".to_vec(), 1_000);
    let mut head = store::append(store, &first).unwrap().into_inner();
    let chain = head.chain;
    for i in 1..=blocks {
        let payload = format!("release hello-{i}: manifest {:064x}", i * 7919).into_bytes();
        let proposal = Proposal { kind: 0, payload, timestamp_ms: 1_000 + i, ..Proposal::default() };
        let mut block = head.propose(proposal, |j| store.block_id(&chain, j).unwrap()).unwrap();
        block.signature =
            Some(BlockSignature { ballot: 0, signature: signer.sign(&BlockSignature::message(&block.id(), 0)) });
        let state = head.extend(&block, |j| store.block_id(&chain, j).unwrap()).unwrap();
        store::commit_verified(store, &state, &block, Some(head.index())).unwrap();
        head = state.into_inner();
    }
    ChainState::genesis(&first).unwrap().into_inner()
}

fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    times[((times.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn proofs(quick: bool) {
    let blocks: u64 = if quick { 20_000 } else { 1_000_000 };
    println!("### Catch-up proofs on a {blocks}-block chain, 16-member committee (threshold {THRESHOLD})\n");
    println!("Blocks signed with the locally summed secret of the 16-member test roster; a real chain has one cosigning round per block.\n");
    println!("| b | max height | build, s | from | to | hops | proof bytes | verify median ms | verify max ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for base in [2u8, 4, 8] {
        let mut signer = Signer::new();
        let params = params_for(base, blocks);
        let store = MemoryStore::new();
        let started = Instant::now();
        let genesis_state = build(&store, &mut signer, params, blocks);
        let built = started.elapsed().as_secs_f64();
        let chain = genesis_state.chain;
        let mut rng = ChaCha20Rng::seed_from_u64(base as u64);
        let middle = blocks / 3 + rng.next_u64() % (blocks / 3);
        // A client one month behind at one block per hour.
        let cases = [
            (0, blocks, "genesis", "head"),
            (blocks - 720, blocks, "head-720", "head"),
            (middle, blocks, "random", "head"),
        ];
        for (from, to, from_name, to_name) in cases {
            let trusted = if from == 0 {
                genesis_state.clone()
            } else {
                store::prove(&store, &chain, 0, from, false)
                    .unwrap()
                    .verify(&genesis_state, &chainiac_skipchain::any_policy)
                    .unwrap()
                    .into_inner()
                    .state
            };
            let proof = store::prove(&store, &chain, from, to, false).unwrap();
            let bytes = proof.to_bytes();
            let runs = if quick { 10 } else { 50 };
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                let reached =
                    Proof::from_bytes(&bytes).unwrap().verify(&trusted, &chainiac_skipchain::any_policy).unwrap();
                times.push(t.elapsed());
                assert_eq!(reached.state.index(), to);
            }
            let max = times.iter().max().unwrap().as_secs_f64() * 1e3;
            println!(
                "| {base} | {} | {built:.1} | {from_name} ({from}) | {to_name} ({to}) | {} | {} | {:.2} | {max:.2} |",
                params.max_height,
                proof.steps.len(),
                bytes.len(),
                percentile(&mut times, 0.5),
            );
        }
    }
    println!("\nGoals: genesis → head under 40 KB and under 5 ms.\n");
}

fn appends(quick: bool) {
    let blocks: u64 = if quick { 500 } else { 5_000 };
    println!("### Appends to RocksDB through the validating path (signature checked), {blocks} blocks\n");
    println!("| writes | blocks/s (append time only) | mean ms | p99 ms |");
    println!("|---|---|---|---|");
    for (label, sync) in [("synced (fsync per append)", true), ("unsynced (for comparison only)", false)] {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open_with(dir.path(), &[], sync).unwrap();
        let mut signer = Signer::new();
        let params = params_for(4, blocks);
        let first = genesis(params, signer.committee.clone(), b"policy".to_vec(), 0, vec![], 1_000);
        let mut head = store::append(&store, &first).unwrap().into_inner();
        let chain = head.chain;
        let mut times = Vec::with_capacity(blocks as usize);
        for i in 1..=blocks {
            let proposal = Proposal { kind: 0, payload: vec![7; 100], timestamp_ms: 1_000 + i, ..Proposal::default() };
            let mut block = head.propose(proposal, |j| store.block_id(&chain, j).unwrap()).unwrap();
            block.signature =
                Some(BlockSignature { ballot: 0, signature: signer.sign(&BlockSignature::message(&block.id(), 0)) });
            // What a witness does per block: full check against its cached head, one batch.
            let t = Instant::now();
            let state = head.extend(&block, |j| store.block_id(&chain, j).unwrap()).unwrap();
            store::commit_verified(&store, &state, &block, Some(head.index())).unwrap();
            times.push(t.elapsed());
            head = state.into_inner();
        }
        let appending = times.iter().sum::<Duration>().as_secs_f64();
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} |",
            blocks as f64 / appending,
            appending * 1e3 / blocks as f64,
            percentile(&mut times, 0.99)
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    proofs(quick);
    appends(quick);
}
