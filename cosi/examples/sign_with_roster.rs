//! Signs a message with a roster of witnesses, some of them offline, over a tree, and checks
//! the result — the collective-signing core on its own.
//!
//! `cargo run --release -p chainiac-cosi --example sign_with_roster -- [members] [absent]`

use chainiac_cosi::simulation::{self, Behaviour, Config};
use chainiac_cosi::{verify, Mask, Member, Roster, SecretKey};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let members = args.first().copied().unwrap_or(64).max(1);
    let absent = args.get(1).copied().unwrap_or(2).min(members - 1);
    let mut rng = rand_core::OsRng;

    let started = Instant::now();
    let keys: Vec<SecretKey> = (0..members).map(|_| SecretKey::generate(&mut rng)).collect();
    let entries = keys.iter().enumerate().map(|(i, k)| Member::new(k, format!("witness-{i}.example:7441"))).collect();
    let roster = match Roster::new(entries) {
        Ok(roster) => Arc::new(roster),
        Err(e) => return fail(&format!("roster refused: {e}")),
    };
    println!("1. roster of {members} members built, every proof of possession checked ({:.1} ms)", ms(started));

    // Members 1..=absent are offline; the threshold is what the rest can meet.
    let mut behaviours = vec![Behaviour::Honest; members];
    for b in behaviours.iter_mut().skip(1).take(absent) {
        *b = Behaviour::Offline;
    }
    let threshold = members - absent;
    let branching = 32.min(members.max(2) - 1);
    let config = Config { threshold, branching, leader: 0, max_attempts: 2 + absent };
    let message = b"release hello-1.0: block 42 of chain 7";
    let started = Instant::now();
    let outcome = match simulation::run(&roster, &keys, message, &behaviours, &config, &mut rng) {
        Ok(outcome) => outcome,
        Err(e) => return fail(&format!("signing failed: {e}")),
    };
    println!(
        "2. signed by {} of {members} over a tree of branching {branching} and depth {}: {} attempt(s), {} messages, {} bytes ({:.1} ms)",
        members - absent,
        outcome.depth,
        outcome.attempts,
        outcome.messages,
        outcome.bytes,
        ms(started)
    );

    let started = Instant::now();
    if let Err(e) = verify(&roster, threshold, message, &outcome.signature) {
        return fail(&format!("the signature does not verify: {e}"));
    }
    println!(
        "3. verified under the roster with threshold {threshold}: {} bytes (R, s, mask) ({:.2} ms)",
        outcome.signature.to_bytes().len(),
        ms(started)
    );

    // What a plain Ed25519 verifier sees: the signers' summed key and the 64-byte R || s.
    let signers = Mask::from_bytes(&outcome.signature.mask, members).expect("a verified mask decodes");
    let ed25519 = ed25519_dalek::Signature::from_bytes(&outcome.signature.to_ed25519_bytes());
    let key = if absent == 0 {
        roster.aggregate_key().to_ed25519()
    } else {
        let present: Vec<Member> = signers.iter().map(|i| roster.members()[i].clone()).collect();
        Roster::new(present).expect("a subset of a valid roster is valid").aggregate_key().to_ed25519()
    };
    match key.verify_strict(message, &ed25519) {
        Ok(()) if absent == 0 => println!("4. ed25519-dalek verify_strict accepts it under the roster's aggregate key"),
        Ok(()) => {
            println!("4. ed25519-dalek verify_strict accepts it under the sum of the {} signers' keys", signers.count())
        }
        Err(e) => return fail(&format!("ed25519-dalek refuses it: {e}")),
    }
    ExitCode::SUCCESS
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
