//! Real builds: a reproducible C program rebuilt by two verifiers in different directories,
//! builds that embed randomness, fail, or run too long, and archives that try to escape.

use chainiac_cosi::SecretKey;
use chainiac_release::{content_hash, Artifact, Manifest, Outcome, Recipe, SourceArchive};
use chainiac_verifier::sandbox::Limits;
use chainiac_verifier::{network_isolation_available, Settings, Verifier};
use std::path::Path;
use std::time::Duration;

const HELLO_C: &str = "#include <stdio.h>\nint main(void) { printf(\"hello, chainiac\\n\"); return 0; }\n";
const MAKEFILE: &str = "hello: hello.c\n\tgcc -O2 -ffile-prefix-map=$(CURDIR)=. -o hello hello.c\n";

/// A tar with fixed metadata (mtime 0, uid 0, sorted), as a reproducible release would ship.
fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A tar whose one entry has a raw name and type the builder would refuse to write.
fn raw_tar(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(if kind == tar::EntryType::Regular { 4 } else { 0 });
    header.set_mode(0o644);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    let data: &[u8] = if kind == tar::EntryType::Regular { b"evil" } else { b"" };
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap()
}

/// Builds the program the way a release manager would, to know the expected artifact.
fn build_locally(dir: &Path) -> Vec<u8> {
    std::fs::write(dir.join("hello.c"), HELLO_C).unwrap();
    std::fs::write(dir.join("Makefile"), MAKEFILE).unwrap();
    let status = std::process::Command::new("make")
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(dir.join("hello")).unwrap()
}

fn manifest(source: &[u8], argv: &[&str], artifacts: Vec<Artifact>) -> Manifest {
    Manifest {
        project: "hello".into(),
        version: "1.0".into(),
        source: SourceArchive { name: "hello-1.0.tar".into(), sha3: content_hash(source), size: source.len() as u64 },
        recipe: Recipe { argv: argv.iter().map(|s| s.to_string()).collect(), env: vec![], workdir: "hello-1.0".into() },
        artifacts,
        time_ms: 1_700_000_000_000,
    }
}

fn verifier(dir: &Path, seed: u8, limits: Limits) -> std::sync::Arc<Verifier> {
    let settings = Settings {
        data_dir: dir.to_path_buf(),
        limits,
        concurrency: 2,
        isolate_network: network_isolation_available(),
    };
    Verifier::open(SecretKey::from_seed(&[seed; 32]), settings).unwrap()
}

fn hello_source() -> Vec<u8> {
    tar_of(&[("hello-1.0/Makefile", MAKEFILE.as_bytes(), 0o644), ("hello-1.0/hello.c", HELLO_C.as_bytes(), 0o644)])
}

#[tokio::test]
async fn two_verifiers_in_different_directories_reproduce_a_c_program() {
    let local = tempfile::tempdir().unwrap();
    let binary = build_locally(local.path());
    let source = hello_source();
    let m = manifest(
        &source,
        &["make"],
        vec![Artifact { path: "hello-1.0/hello".into(), sha3: content_hash(&binary), size: binary.len() as u64 }],
    );
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (va, vb) = (verifier(a.path(), 1, Limits::default()), verifier(b.path(), 2, Limits::default()));
    for v in [&va, &vb] {
        let attestation = v.build(&m, &source).await.unwrap();
        assert!(attestation.verify());
        assert_eq!(attestation.body.manifest, m.id());
        assert_eq!(
            attestation.body.outcome,
            Outcome::Reproduced,
            "log:\n{}",
            String::from_utf8_lossy(&v.log(&m.id()).unwrap().unwrap())
        );
    }
    // Asked again: the stored attestation, not a new build.
    let again = va.build(&m, &source).await.unwrap();
    assert_eq!(again, va.attestation(&m.id()).unwrap().unwrap());
}

#[tokio::test]
async fn a_build_that_embeds_the_time_is_a_mismatch_naming_the_artifact() {
    let source = tar_of(&[("hello-1.0/placeholder", b"x", 0o644)]);
    let expected = content_hash(b"whatever the release manager got\n");
    let m = manifest(
        &source,
        &["sh", "-c", "date +%s%N > stamp && head -c 16 /dev/urandom >> stamp"],
        vec![Artifact { path: "hello-1.0/stamp".into(), sha3: expected, size: 33 }],
    );
    let dir = tempfile::tempdir().unwrap();
    let attestation = verifier(dir.path(), 3, Limits::default()).build(&m, &source).await.unwrap();
    match attestation.body.outcome {
        Outcome::Mismatch { artifacts } => {
            assert_eq!(artifacts.len(), 1);
            assert_eq!(artifacts[0].path, "hello-1.0/stamp");
            assert_eq!(artifacts[0].expected, expected);
            assert!(artifacts[0].got.is_some_and(|g| g != expected));
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn failures_time_limits_and_escaping_archives_give_failed_attestations() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { time_limit: Duration::from_secs(2), ..Limits::default() };
    let v = verifier(dir.path(), 4, limits);
    let artifact = vec![Artifact { path: "out".into(), sha3: [0; 32], size: 0 }];
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    let cases: Vec<(Vec<u8>, Vec<&str>, &str)> = vec![
        (source.clone(), vec!["sh", "-c", "echo compiling; exit 3"], "the build command failed"),
        (source.clone(), vec!["sh", "-c", "sleep 30 & sleep 30"], "time limit"),
        (raw_tar("../evil", tar::EntryType::Regular, None), vec!["true"], "not a plain relative path"),
        (
            raw_tar("hello-1.0/link", tar::EntryType::Symlink, Some("/etc/passwd")),
            vec!["true"],
            "outside the source tree",
        ),
        (raw_tar("hello-1.0/up", tar::EntryType::Symlink, Some("../../x")), vec!["true"], "outside the source tree"),
        (raw_tar("hello-1.0/hard", tar::EntryType::Link, Some("hello-1.0/f")), vec!["true"], "hard link"),
        (b"this is not a tar archive at all, just words".to_vec(), vec!["true"], "not an archive this verifier reads"),
    ];
    for (i, (archive, argv, reason)) in cases.into_iter().enumerate() {
        let mut m = manifest(&archive, &argv, artifact.clone());
        m.version = format!("case-{i}");
        let started = std::time::Instant::now();
        let attestation = v.build(&m, &archive).await.unwrap();
        match &attestation.body.outcome {
            Outcome::Failed { reason: got } => assert!(got.contains(reason), "case {i}: {got:?} should say {reason:?}"),
            other => panic!("case {i}: expected a failure, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "case {i} took {:?}", started.elapsed());
        if i == 0 {
            let log = v.log(&m.id()).unwrap().unwrap();
            assert!(String::from_utf8_lossy(&log).contains("compiling"), "the build log is kept");
        }
    }
    // Nothing escaped into the verifier's directory.
    assert!(!dir.path().join("evil").exists() && !dir.path().join("jobs/evil").exists());
    // A source that does not match the manifest is refused before anything runs.
    let mut m = manifest(&source, &["true"], artifact.clone());
    m.version = "tampered".into();
    let attestation = v.build(&m, b"other bytes").await.unwrap();
    assert!(matches!(&attestation.body.outcome, Outcome::Failed { reason } if reason.contains("does not match")));
}

#[tokio::test]
async fn builds_see_only_the_normalized_environment_and_no_network() {
    std::env::set_var("CHAINIAC_SECRET_HOST_VARIABLE", "leak");
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    // The build prints what it sees; its log is kept with the attestation.
    let probe = manifest(
        &source,
        &["sh", "-c", "env | sort; echo UMASK=$(umask); grep -c : /proc/net/dev"],
        vec![Artifact { path: "hello-1.0/none".into(), sha3: [0; 32], size: 0 }],
    );
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), 5, Limits::default());
    let attestation = v.build(&probe, &source).await.unwrap();
    assert!(matches!(attestation.body.outcome, Outcome::Mismatch { .. }), "{:?}", attestation.body.outcome);
    let log = String::from_utf8(v.log(&probe.id()).unwrap().unwrap()).unwrap();
    for expected in ["TZ=UTC", "LC_ALL=C", "SOURCE_DATE_EPOCH=1700000000", "UMASK=0022"] {
        assert!(log.contains(expected), "{expected} missing from:\n{log}");
    }
    assert!(!log.contains("CHAINIAC_SECRET_HOST_VARIABLE"), "host environment leaked:\n{log}");
    assert!(log.lines().any(|l| l.starts_with("HOME=") && l.contains(&dir.path().display().to_string())));
    if network_isolation_available() {
        assert!(log.trim_end().ends_with('1'), "only the loopback interface is visible:\n{log}");
    }
}
