//! Scenario 5: what the verifier adds to a bare build of the same program on the same
//! machine: unpacking into a fresh directory, the clean environment and network namespace,
//! hashing, signing and storing the attestation and log.

use crate::report::{Plot, Report, Series};
use chainiac_cosi::SecretKey;
use chainiac_release::{content_hash, Artifact, Manifest, Outcome, Recipe, SourceArchive};
use chainiac_verifier::sandbox::{bubblewrap_works, Isolation, Limits};
use chainiac_verifier::{network_isolation_available, Settings, Verifier};
use std::time::{Duration, Instant};

const HELLO_C: &str = "#include <stdio.h>\nint main(void) { printf(\"hello, chainiac\\n\"); return 0; }\n";
const MAKEFILE: &str = "hello: hello.c\n\tgcc -O2 -ffile-prefix-map=$(CURDIR)=. -o hello hello.c\n";

fn archive() -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in [("hello-1.0/Makefile", MAKEFILE), ("hello-1.0/hello.c", HELLO_C)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, data.as_bytes())?;
    }
    Ok(builder.into_inner()?)
}

fn bare_build() -> anyhow::Result<(Duration, Vec<u8>)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("hello.c"), HELLO_C)?;
    std::fs::write(dir.path().join("Makefile"), MAKEFILE)?;
    let started = Instant::now();
    let status =
        std::process::Command::new("make").current_dir(dir.path()).stdout(std::process::Stdio::null()).status()?;
    let took = started.elapsed();
    anyhow::ensure!(status.success(), "the bare `make` failed: is gcc installed?");
    Ok((took, std::fs::read(dir.path().join("hello"))?))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let source = archive()?;
    let (_, binary) = bare_build()?;
    let dir = tempfile::tempdir()?;
    let isolate = network_isolation_available();
    // The verifier's default confinement where this machine has it.
    let isolation = if bubblewrap_works("bwrap".as_ref()).is_ok() { Isolation::Bubblewrap } else { Isolation::None };
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        limits: Limits::default(),
        concurrency: 1,
        isolation,
        bwrap: "bwrap".into(),
        isolate_network: isolate,
    };
    let verifier = Verifier::open(SecretKey::from_seed(&[1; 32]), settings)?;
    let (mut bare, mut verified) = (Vec::new(), Vec::new());
    for run in 0..runs {
        bare.push(bare_build()?.0);
        let manifest = Manifest {
            project: "hello".into(),
            version: format!("1.0.{run}"), // a new manifest each run: no stored attestation
            source: SourceArchive { name: "hello.tar".into(), sha3: content_hash(&source), size: source.len() as u64 },
            recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: "hello-1.0".into() },
            artifacts: vec![Artifact {
                path: "hello-1.0/hello".into(),
                sha3: content_hash(&binary),
                size: binary.len() as u64,
            }],
            time_ms: 1_700_000_000_000,
        };
        let started = Instant::now();
        let attestation = runtime.block_on(verifier.build(&manifest, &source))?;
        verified.push(started.elapsed());
        anyhow::ensure!(attestation.body.outcome == Outcome::Reproduced, "the verifier did not reproduce the build");
    }
    let points = |v: &[Duration]| v.iter().enumerate().map(|(i, d)| (i as f64 + 1.0, d.as_secs_f64() * 1e3)).collect();
    let series = vec![
        Series { name: "bare make".into(), points: points(&bare) },
        Series { name: "verifier build".into(), points: points(&verified) },
    ];
    let (b, v) = (median(bare), median(verified));
    let overhead = v.saturating_sub(b);
    let goal = b.as_secs_f64() * 0.05 + 0.2;
    report
        .text(&format!("{runs} runs each, medians; isolation: {}; network isolation: {isolate}.\n", isolation.name()));
    report.table(
        &["bare `make`, ms", "verifier build, ms", "overhead, ms", "overhead, %", "goal: < 5 % + 200 ms"],
        &[vec![
            format!("{:.1}", b.as_secs_f64() * 1e3),
            format!("{:.1}", v.as_secs_f64() * 1e3),
            format!("{:.1}", overhead.as_secs_f64() * 1e3),
            format!("{:.1}", overhead.as_secs_f64() / b.as_secs_f64() * 100.0),
            if overhead.as_secs_f64() <= goal { "met".into() } else { "missed".into() },
        ]],
    );
    report.plot(&Plot {
        file: "verification.svg",
        title: "Bare build and verifier build, per run",
        x_label: "run",
        y_label: "ms",
        log_x: false,
        log_y: false,
        series,
    })
}
