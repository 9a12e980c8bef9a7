//! Collective signing at scale, in one process (the protocol's CPU cost; no network), and
//! verification.
//!
//! `cargo bench -p chainiac-cosi --bench cosi`

use chainiac_cosi::simulation::{self, Behaviour, Config};
use chainiac_cosi::{verify, Member, Roster, SecretKey};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;

fn roster(members: usize) -> (Arc<Roster>, Vec<SecretKey>) {
    let mut rng = ChaCha20Rng::seed_from_u64(members as u64);
    let keys: Vec<SecretKey> = (0..members).map(|_| SecretKey::generate(&mut rng)).collect();
    let roster = Roster::new(keys.iter().map(|k| Member::new(k, "")).collect()).unwrap();
    (Arc::new(roster), keys)
}

fn full_round(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol/full_round");
    for members in [16usize, 128, 1024] {
        if members >= 128 {
            group.sample_size(10);
        }
        let (roster, keys) = roster(members);
        let behaviours = vec![Behaviour::Honest; members];
        for (shape, branching) in [("star", usize::MAX), ("tree32", 32)] {
            let config = Config { threshold: members, branching, leader: 0, max_attempts: 1 };
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            group.bench_with_input(BenchmarkId::new(shape, members), &members, |b, _| {
                b.iter(|| simulation::run(&roster, &keys, b"block id", &behaviours, &config, &mut rng).unwrap())
            });
        }
    }
    group.finish();
}

fn verification(c: &mut Criterion) {
    let members = 1024;
    let (roster, keys) = roster(members);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut group = c.benchmark_group("verify");
    for (name, absent) in [("1024_all_present", 0usize), ("1024_1pct_absent", 10)] {
        let mut behaviours = vec![Behaviour::Honest; members];
        for b in behaviours.iter_mut().skip(1).take(absent) {
            *b = Behaviour::Offline;
        }
        let config = Config { threshold: members - absent, branching: usize::MAX, leader: 0, max_attempts: 1 };
        let signature = simulation::run(&roster, &keys, b"block id", &behaviours, &config, &mut rng).unwrap().signature;
        group.bench_function(name, |b| b.iter(|| verify(&roster, members - absent, b"block id", &signature).unwrap()));
    }
    group.finish();
}

fn roster_decoding(c: &mut Criterion) {
    let (roster, _) = roster(1024);
    let bytes = roster.to_bytes();
    let mut group = c.benchmark_group("roster");
    group.sample_size(10);
    group.bench_function("decode_1024", |b| b.iter(|| postcard::from_bytes::<Roster>(&bytes).unwrap()));
    group.finish();
}

criterion_group!(benches, full_round, verification, roster_decoding);
criterion_main!(benches);
