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

/// A verifier's settings with data in `dir`: default limits, one build at a time.
fn settings(dir: &std::path::Path, isolation: Isolation) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        limits: Limits::default(),
        concurrency: 1,
        isolation,
        bwrap: "bwrap".into(),
        isolate_network: network_isolation_available(),
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `runs` builds of a small C program each way, then `hello_runs` of GNU hello 2.10.
pub fn run(runs: usize, hello_runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let source = archive()?;
    let (_, binary) = bare_build()?;
    let dir = tempfile::tempdir()?;
    let isolate = network_isolation_available();
    // The verifier's default confinement where this machine has it.
    let isolation = if bubblewrap_works("bwrap".as_ref()).is_ok() { Isolation::Bubblewrap } else { Isolation::None };
    let verifier = Verifier::open(SecretKey::from_seed(&[1; 32]), settings(dir.path(), isolation))?;
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
    })?;
    gnu_hello(hello_runs, isolation, report)
}

/// A real upstream release: GNU hello 2.10's `./configure && make`, bare (unpacked with the
/// archive's times, in a temporary directory) against the verifier's path to a finished
/// build (`build_locally`: unpacking, the sandbox, hashing). Goal: under 5 % + 1 s.
fn gnu_hello(runs: usize, isolation: Isolation, report: &mut Report) -> anyhow::Result<()> {
    let tarball = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/sources/hello-2.10.tar.gz");
    let Ok(source) = std::fs::read(&tarball) else {
        report.text(&format!("GNU hello 2.10: skipped, {} is not on this machine.\n", tarball.display()));
        return Ok(());
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let command = "./configure --quiet && make --quiet";
    let manifest = Manifest {
        project: "hello".into(),
        version: "2.10".into(),
        source: SourceArchive {
            name: "hello-2.10.tar.gz".into(),
            sha3: content_hash(&source),
            size: source.len() as u64,
        },
        recipe: Recipe {
            argv: vec!["sh".into(), "-c".into(), command.into()],
            env: vec![],
            workdir: "hello-2.10".into(),
        },
        artifacts: vec![Artifact { path: "hello-2.10/hello".into(), sha3: [0; 32], size: 0 }],
        time_ms: 1_416_096_000_000,
    };
    let (mut bare, mut sandboxed) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = tempfile::tempdir()?;
        chainiac_verifier::unpack::unpack(&source, dir.path(), &Limits::default())?;
        let started = Instant::now();
        let status = std::process::Command::new("sh")
            .args(["-c", command])
            .current_dir(dir.path().join("hello-2.10"))
            .env("SOURCE_DATE_EPOCH", "1416096000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        bare.push(started.elapsed());
        anyhow::ensure!(status.success(), "the bare GNU hello build failed");

        let scratch = tempfile::tempdir()?;
        std::fs::set_permissions(scratch.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        let settings = settings(scratch.path(), isolation);
        let started = Instant::now();
        let built = runtime.block_on(chainiac_verifier::build_locally(&settings, &manifest, &source))?;
        sandboxed.push(started.elapsed());
        built.result.map_err(|e| anyhow::anyhow!("the sandboxed GNU hello build failed: {e}"))?;
    }
    let (b, s) = (median(bare), median(sandboxed));
    // Signed: on an idle machine the two are within noise of each other.
    let overhead = s.as_secs_f64() - b.as_secs_f64();
    let goal = b.as_secs_f64() * 0.05 + 1.0;
    report
        .text(&format!("GNU hello 2.10 (`{command}`), {runs} runs each, medians; isolation: {}.\n", isolation.name()));
    report.table(
        &["bare build, s", "verifier's build, s", "overhead, s", "overhead, %", "goal: < 5 % + 1 s"],
        &[vec![
            format!("{:.2}", b.as_secs_f64()),
            format!("{:.2}", s.as_secs_f64()),
            format!("{overhead:.2}"),
            format!("{:.1}", overhead / b.as_secs_f64() * 100.0),
            if overhead <= goal { "met".into() } else { "missed".into() },
        ]],
    );
    Ok(())
}
