//! Scenario 4: a timeline block over 15,000 and 886,000 project chains: building the
//! Merkle tree over their heads, cosigning the block (real protocol, 16 simulated
//! witnesses), and the inclusion proof a client downloads per project.

use crate::report::{percentile, Plot, Report, Series};
use chainiac_cosi::simulation::{self, Behaviour, Config};
use chainiac_cosi::{hash, Member, Roster, SecretKey};
use chainiac_skipchain::timeline::{HeadLeaf, HeadSet, InclusionProof, TimelineEntry};
use chainiac_skipchain::BlockId;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn run(sizes: &[usize], report: &mut Report) -> anyhow::Result<()> {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let keys: Vec<SecretKey> = (0..16).map(|_| SecretKey::generate(&mut rng)).collect();
    let roster = Arc::new(Roster::new(keys.iter().map(|k| Member::new(k, "")).collect())?);
    let mut rows = Vec::new();
    let (mut build_points, mut size_points) = (Vec::new(), Vec::new());
    for &n in sizes {
        let leaves: Vec<HeadLeaf> = (0..n as u64)
            .map(|i| {
                let chain = BlockId(hash::sha3_256("chainiac-bench/chain", &[&i.to_be_bytes()]));
                HeadLeaf { chain, index: rng.next_u64() % 500, id: BlockId(hash::sha3_256("id", &[&chain.0])) }
            })
            .collect();
        let probes: Vec<BlockId> = (0..200).map(|_| leaves[rng.next_u64() as usize % n].chain).collect();
        let started = Instant::now();
        let set = HeadSet::new(leaves);
        let root = set.root();
        let build = started.elapsed();
        let entry = TimelineEntry { time_ms: 1, chains: n as u64, root, changes: None };
        let config = Config { threshold: 11, branching: usize::MAX, leader: 0, max_attempts: 1 };
        let started = Instant::now();
        simulation::run(&roster, &keys, &entry.to_bytes(), &[Behaviour::Honest; 16], &config, &mut rng)
            .map_err(|e| anyhow::anyhow!("cosigning failed: {e}"))?;
        let cosign = started.elapsed();
        let (mut prove, mut check): (Vec<Duration>, Vec<Duration>) = (vec![], vec![]);
        let mut size = 0;
        for chain in &probes {
            let t = Instant::now();
            let proof = set.prove(chain).expect("present");
            prove.push(t.elapsed());
            let wire = postcard::to_allocvec(&proof)?;
            size = size.max(wire.len());
            let t = Instant::now();
            let decoded: InclusionProof = postcard::from_bytes(&wire)?;
            decoded.verify(&entry)?;
            check.push(t.elapsed());
        }
        build_points.push((n as f64, build.as_secs_f64() * 1e3));
        size_points.push((n as f64, size as f64));
        prove.sort();
        check.sort();
        rows.push(vec![
            n.to_string(),
            format!("{:.0}", build.as_secs_f64() * 1e3),
            format!("{:.1}", cosign.as_secs_f64() * 1e3),
            size.to_string(),
            format!("{:.3}", percentile(&prove, 0.5)),
            format!("{:.3}", percentile(&check, 0.5)),
        ]);
    }
    report.text("One timeline block: the tree over every chain's head (sort, leaf and node hashes), then one cosigning round by 16 simulated witnesses. Proofs: 200 random chains, medians.\n");
    report.table(
        &["chains", "tree build, ms", "cosign, ms", "inclusion proof, bytes (max)", "prove, ms", "verify, ms"],
        &rows,
    );
    report.plot(&Plot {
        file: "timeline.svg",
        title: "Timeline tree over every chain's head",
        x_label: "chains",
        y_label: "tree build ms / inclusion proof bytes",
        log_x: true,
        log_y: true,
        series: vec![
            Series { name: "tree build, ms".into(), points: build_points },
            Series { name: "inclusion proof, bytes".into(), points: size_points },
        ],
    })
}
