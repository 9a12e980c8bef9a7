//! Real builds: a reproducible C program rebuilt by two verifiers in different directories,
//! builds that embed randomness, fail, or run too long, and archives that try to escape.

use chainiac_cosi::SecretKey;
use chainiac_release::{content_hash, Artifact, Manifest, Outcome, Recipe, SourceArchive};
use chainiac_verifier::sandbox::{Isolation, Limits};
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
    // A root verifier's builds start as uid 65534, which must reach the job directories.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let settings = Settings {
        data_dir: dir.to_path_buf(),
        limits,
        concurrency: 2,
        isolation: Isolation::Bubblewrap,
        bwrap: "bwrap".into(),
        isolate_network: network_isolation_available(),
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
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
            // What the verifier built is kept for its operator to compare.
            let kept = dir.path().join("differing").join(hex::encode(m.id().0)).join("hello-1.0/stamp");
            let bytes = std::fs::read(&kept).unwrap();
            assert_eq!(Some(content_hash(&bytes)), artifacts[0].got);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Kept for `keep_differing`: a verifier that keeps them for no time drops the old
    // copies at its next mismatch and keeps the new one.
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        limits: Limits::default(),
        concurrency: 1,
        isolation: Isolation::Bubblewrap,
        bwrap: "bwrap".into(),
        isolate_network: false,
        keep_differing: Duration::ZERO,
    };
    let v = Verifier::open(SecretKey::from_seed(&[3; 32]), settings).unwrap();
    let mut next = m.clone();
    next.version = "1.1".into();
    assert!(matches!(v.build(&next, &source).await.unwrap().body.outcome, Outcome::Mismatch { .. }));
    let differing = dir.path().join("differing");
    assert!(!differing.join(hex::encode(m.id().0)).exists(), "the old copy is gone");
    assert!(differing.join(hex::encode(next.id().0)).join("hello-1.0/stamp").exists());
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
        // Killed as a memory or CPU limit kills: under bubblewrap, exit code 137.
        (source.clone(), vec!["sh", "-c", "kill -KILL $$"], "the build command"),
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
        // The archive's fault is kept; what the running build ran into (an exit code, a
        // kill, the time limit) may depend on the machine's load: it is signed but not
        // kept, only answered again from memory for a while (BUILD_AGAIN_AFTER), so that
        // replaying the request does not make the verifier build again and again.
        let builds = v.status().builds;
        let again = v.build(&m, &archive).await.unwrap();
        if i <= 2 {
            assert_eq!(v.attestation(&m.id()).unwrap(), None, "case {i}: not kept");
            assert_eq!((&again, v.status().builds), (&attestation, builds), "case {i}: answered from memory");
        } else {
            assert_eq!(v.attestation(&m.id()).unwrap(), Some(attestation.clone()), "case {i}: kept");
            assert_eq!((again, v.status().builds), (attestation, builds), "case {i}: answered from the store");
        }
    }
    let counters = v.status();
    assert_eq!((counters.not_kept, counters.failed, counters.running, counters.waiting), (3, 8, 0, 0), "{counters:?}");
    // Nothing escaped into the verifier's directory.
    assert!(!dir.path().join("evil").exists() && !dir.path().join("jobs/evil").exists());
    // A source that does not match the manifest is refused before anything runs, and
    // nothing is signed or kept: anyone could otherwise poison a manifest with wrong bytes.
    let mut m = manifest(&source, &["true"], artifact.clone());
    m.version = "tampered".into();
    let refused = v.build(&m, b"other bytes").await.unwrap_err();
    assert!(matches!(refused, chainiac_verifier::VerifierError::SourceMismatch), "{refused}");
    assert_eq!(v.attestation(&m.id()).unwrap(), None, "nothing kept");
    let attestation = v.build(&m, &source).await.unwrap();
    assert!(matches!(&attestation.body.outcome, Outcome::Mismatch { .. }), "the right bytes still build");
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
    assert!(log.lines().any(|l| l == "HOME=/home/build") && log.lines().any(|l| l == "TMPDIR=/tmp"), "{log}");
    assert!(log.trim_end().ends_with('1'), "only the loopback interface is visible:\n{log}");
}

/// The build as an attacker writes it: it reads the verifier's files, dials the host, writes
/// outside its tree, fills its tmpfs and leaves a process behind. None of it works, and the
/// build sits at the same path on every verifier.
#[tokio::test]
async fn a_hostile_build_sees_nothing_of_the_host_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("node.key");
    std::fs::write(&secret, "TOP-SECRET-KEY-MATERIAL").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let limits = Limits { tmpfs_bytes: 1 << 20, ..Limits::default() };
    let v = verifier(dir.path(), 6, limits);
    assert!(v.environment_description().contains("isolation=bubblewrap"), "{}", v.environment_description());
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    let script = format!(
        "cat {secret} && echo READ-THE-KEY; \
         ls {data} >/dev/null 2>&1 && echo SAW-THE-DATA-DIR; \
         bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo DIALED-THE-HOST; \
         touch /usr/evil /etc/evil 2>/dev/null && echo WROTE-THE-SYSTEM; \
         cat /etc/shadow 2>/dev/null && echo READ-SHADOW; \
         head -c 3000000 /dev/zero > $TMPDIR/big 2>/dev/null && echo FILLED-TMP; \
         setsid sleep 4242 & \
         echo PWD=$(pwd) UID=$(id -u); echo done",
        secret = secret.display(),
        data = dir.path().display(),
    );
    let m = manifest(
        &source,
        &["sh", "-c", &script],
        vec![Artifact { path: "hello-1.0/none".into(), sha3: [0; 32], size: 0 }],
    );
    let attestation = v.build(&m, &source).await.unwrap();
    assert!(matches!(attestation.body.outcome, Outcome::Mismatch { .. }), "{:?}", attestation.body.outcome);
    let log = String::from_utf8(v.log(&m.id()).unwrap().unwrap()).unwrap();
    assert!(log.contains("done"), "the script ran:\n{log}");
    for breach in [
        "TOP-SECRET",
        "READ-THE-KEY",
        "SAW-THE-DATA-DIR",
        "DIALED-THE-HOST",
        "WROTE-THE-SYSTEM",
        "READ-SHADOW",
        "FILLED-TMP",
    ] {
        assert!(!log.contains(breach), "{breach}:\n{log}");
    }
    assert!(log.contains("PWD=/build/hello-1.0/hello-1.0 UID=1000"), "the fixed build path:\n{log}");
    assert!(listener.accept().is_err(), "no connection reached the host");
    assert!(!Path::new("/usr/evil").exists() && !Path::new("/etc/evil").exists());
    // The pid namespace went with the build: its background process is gone.
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 4242"]).output().unwrap();
    assert!(left.stdout.is_empty(), "a build process outlived the build: {}", String::from_utf8_lossy(&left.stdout));
}

/// Fail closed: with bubblewrap selected and not working, the verifier does not start; it
/// builds unconfined only when told to, and says so in its environment.
#[test]
fn a_verifier_without_a_working_sandbox_refuses_to_start_unless_told_to_build_unconfined() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |isolation| Settings {
        data_dir: dir.path().to_path_buf(),
        limits: Limits::default(),
        concurrency: 1,
        isolation,
        bwrap: "/nonexistent/bwrap".into(),
        isolate_network: false,
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
    };
    let refused =
        Verifier::open(SecretKey::from_seed(&[7; 32]), settings(Isolation::Bubblewrap)).err().expect("refused");
    let message = refused.to_string();
    assert!(message.contains("/nonexistent/bwrap") && message.contains("isolation = \"none\""), "{message}");
    let unconfined = Verifier::open(SecretKey::from_seed(&[7; 32]), settings(Isolation::None)).unwrap();
    assert!(unconfined.environment_description().contains("isolation=none"));
}

/// A kept failure speaks for the environment that signed it: after the operator changes
/// the verifier (here: from unconfined with a small output limit to bubblewrap with the
/// default limits, each of which changes the environment digest) the same manifest is
/// built again, and a recipe that needed the change now reproduces. A kept success stays
/// kept.
#[tokio::test]
async fn a_failure_kept_in_another_build_environment_is_built_again() {
    let dir = tempfile::tempdir().unwrap();
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    // 2,000 bytes of output in files of 200: over a 1,000-byte output limit, a
    // deterministic failure (each file stays under the file-size limit).
    let writes_much =
        &["sh", "-c", "for i in 0 1 2 3 4 5 6 7 8 9; do head -c 200 /dev/zero > f$i; done; echo ok > out"][..];
    let artifacts = vec![Artifact { path: "hello-1.0/out".into(), sha3: content_hash(b"ok\n"), size: 3 }];
    let m = manifest(&source, writes_much, artifacts.clone());
    let mut plain = manifest(&source, &["sh", "-c", "echo ok > out"], artifacts);
    plain.version = "1.0-plain".into();
    let unconfined = Settings {
        data_dir: dir.path().to_path_buf(),
        limits: Limits { max_output_bytes: 1000, ..Limits::default() },
        concurrency: 1,
        isolation: Isolation::None,
        bwrap: "bwrap".into(),
        isolate_network: false,
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
    };
    {
        let v = Verifier::open(SecretKey::from_seed(&[8; 32]), unconfined).unwrap();
        let failed = v.build(&m, &source).await.unwrap();
        assert!(
            matches!(&failed.body.outcome, Outcome::Failed { reason } if reason.contains("more than the limit of 1000")),
            "{:?}",
            failed.body.outcome
        );
        assert_eq!(failed.body.isolation, chainiac_release::BuildIsolation::None, "the attestation says how");
        assert_eq!(v.attestation(&m.id()).unwrap(), Some(failed), "a failure of the recipe's own is kept");
        assert_eq!(v.build(&plain, &source).await.unwrap().body.outcome, Outcome::Reproduced);
    }
    let v = verifier(dir.path(), 8, Limits::default());
    let rebuilt = v.build(&m, &source).await.unwrap();
    assert_eq!(
        rebuilt.body.outcome,
        Outcome::Reproduced,
        "{}",
        String::from_utf8_lossy(&v.log(&m.id()).unwrap().unwrap())
    );
    assert_eq!(rebuilt.body.isolation, chainiac_release::BuildIsolation::Namespaces);
    assert_eq!(v.attestation(&m.id()).unwrap(), Some(rebuilt));
    let kept = v.build(&plain, &source).await.unwrap();
    assert_ne!(kept.body.environment, v.attestation(&m.id()).unwrap().unwrap().body.environment);
    assert_eq!(v.status().builds, 1, "the kept success was not built again");
}

/// Two requests for one manifest at once make one build, and both get its attestation: two
/// builds could sign two outcomes for one manifest (found by review). A request abandoned
/// mid-build (the server's deadline) leaves no counter raised and no job directory.
#[tokio::test]
async fn one_manifest_builds_once_at_a_time_and_abandoned_builds_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), 10, Limits::default());
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    let artifacts = vec![Artifact { path: "hello-1.0/out".into(), sha3: content_hash(b"ok\n"), size: 3 }];
    let m = manifest(&source, &["sh", "-c", "sleep 1; echo ok > out"], artifacts.clone());
    let (a, b) = tokio::join!(v.build(&m, &source), v.build(&m, &source));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.body.outcome, Outcome::Reproduced);
    assert_eq!(a, b, "one outcome for one manifest");
    let status = v.status();
    assert_eq!((status.builds, status.answered_from_store), (1, 1), "{status:?}");

    let mut slow = manifest(&source, &["sh", "-c", "sleep 30"], artifacts);
    slow.version = "1.0-slow".into();
    let abandoned = tokio::time::timeout(Duration::from_millis(500), v.build(&slow, &source)).await;
    assert!(abandoned.is_err(), "still building");
    let status = v.status();
    assert_eq!((status.running, status.waiting, status.builds), (0, 0, 2), "{status:?}");
    let jobs: Vec<_> = std::fs::read_dir(dir.path().join("jobs")).unwrap().collect();
    assert!(jobs.is_empty(), "the abandoned job's directory is gone: {jobs:?}");
}

/// A fork bomb runs into the process limit (here 64 processes of the build's user), fails,
/// is signed but not kept (a process limit is shared, so the failure may be the load's),
/// and the verifier goes on building. (A root verifier's builds run as uid 65534, so the
/// limit applies: the kernel does not apply RLIMIT_NPROC to root.)
#[tokio::test]
async fn a_fork_bomb_stops_at_the_process_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_processes: 64, time_limit: Duration::from_secs(30), ..Limits::default() };
    let v = verifier(dir.path(), 12, limits);
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    let artifacts = vec![Artifact { path: "hello-1.0/out".into(), sha3: content_hash(b"ok\n"), size: 3 }];
    let bomb = "i=0; while [ $i -lt 400 ]; do sleep 3 & i=$((i+1)); done; wait; echo ok > out";
    let m = manifest(&source, &["sh", "-c", bomb], artifacts.clone());
    let attestation = v.build(&m, &source).await.unwrap();
    let log = String::from_utf8_lossy(&v.log(&m.id()).unwrap().unwrap()).into_owned();
    assert!(matches!(&attestation.body.outcome, Outcome::Failed { .. }), "{:?}\n{log}", attestation.body.outcome);
    assert!(log.to_lowercase().contains("fork"), "the shell says it could not fork:\n{log}");
    if v.cgroups().is_some() {
        let Outcome::Failed { reason } = &attestation.body.outcome else { unreachable!() };
        assert!(reason.contains("reached its limit of 64 processes"), "the reason names the limit: {reason}");
    }
    assert_eq!(v.attestation(&m.id()).unwrap(), None, "not kept");
    let mut next = manifest(&source, &["sh", "-c", "echo ok > out"], artifacts);
    next.version = "1.1".into();
    assert_eq!(v.build(&next, &source).await.unwrap().body.outcome, Outcome::Reproduced, "the verifier goes on");
}

/// A verifier with 64 processes and 200 MiB a build, if it gives builds cgroups here (as
/// root; otherwise the test says it skips).
fn verifier_with_cgroups(dir: &Path, seed: u8) -> Option<std::sync::Arc<Verifier>> {
    let limits = Limits {
        max_processes: 64,
        max_memory_bytes: 200 << 20,
        time_limit: Duration::from_secs(60),
        ..Limits::default()
    };
    let v = verifier(dir, seed, limits);
    if v.cgroups().is_none() {
        println!("SKIPPED: no per-build cgroups here ({})", v.environment_description());
        return None;
    }
    Some(v)
}

/// Whole-build limits, where the verifier can make cgroups (as root, or in a delegated v2
/// subtree): two builds at once each start 40 processes under a limit of 64 — under the
/// shared per-user limit alone one of them failed — and a build of four processes of
/// 80 MiB each is stopped at a memory limit of 200 MiB that each process alone is under,
/// while two of them pass. Each build's group is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_build_is_held_to_its_own_process_and_memory_limits() {
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = verifier_with_cgroups(dir.path(), 13) else { return };
    let cgroups = v.cgroups().cloned().expect("checked");
    assert!(v.environment_description().contains(&format!("cgroups={}", cgroups.name())));
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    let artifacts = vec![Artifact { path: "hello-1.0/out".into(), sha3: content_hash(b"ok\n"), size: 3 }];
    let forty = "i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done; wait; echo ok > out";
    let (mut a, mut b) = (
        manifest(&source, &["sh", "-c", forty], artifacts.clone()),
        manifest(&source, &["sh", "-c", forty], artifacts.clone()),
    );
    a.version = "1.0-a".into();
    b.version = "1.0-b".into();
    let (first, second) = tokio::join!(v.build(&a, &source), v.build(&b, &source));
    for (m, attestation) in [(&a, first.unwrap()), (&b, second.unwrap())] {
        let log = String::from_utf8_lossy(&v.log(&m.id()).unwrap().unwrap_or_default()).into_owned();
        assert_eq!(attestation.body.outcome, Outcome::Reproduced, "{}: {log}", m.version);
    }

    let eat = |copies: usize| {
        let one = "dd if=/dev/zero of=/dev/null bs=80M count=30 2>/dev/null";
        let starts: String = (0..copies).map(|i| format!("{one} & p{i}=$!; ")).collect();
        let waits: Vec<String> = (0..copies).map(|i| format!("wait $p{i}")).collect();
        format!("{starts}{} && echo ok > out", waits.join(" && "))
    };
    let mut two = manifest(&source, &["sh", "-c", &eat(2)], artifacts.clone());
    two.version = "1.0-two".into();
    let attestation = v.build(&two, &source).await.unwrap();
    let log = String::from_utf8_lossy(&v.log(&two.id()).unwrap().unwrap_or_default()).into_owned();
    assert_eq!(attestation.body.outcome, Outcome::Reproduced, "160 MiB fit: {log}");
    let mut four = manifest(&source, &["sh", "-c", &eat(4)], artifacts);
    four.version = "1.0-four".into();
    let Outcome::Failed { reason } = v.build(&four, &source).await.unwrap().body.outcome else {
        panic!("320 MiB in one build passed a limit of 200 MiB")
    };
    assert!(reason.contains("its memory limit of 209715200 bytes"), "{reason}");
    // A job's group is named after its job: the manifest id's first 8 bytes, then a nonce
    // (other tests build beside this one).
    let ours: Vec<String> =
        [&a, &b, &two, &four].iter().map(|m| format!("chainiac-build-{}-", hex::encode(&m.id().0[..8]))).collect();
    for parent in cgroups.parents() {
        let left: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|name| ours.iter().any(|o| name.starts_with(o)))
            .collect();
        assert!(left.is_empty(), "groups left in {}: {left:?}", parent.display());
    }
}

/// An unconfined build (no pid namespace to end) still leaves nothing running: its process
/// group is killed when the build ends.
#[tokio::test]
async fn an_unconfined_build_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        data_dir: dir.path().to_path_buf(),
        limits: Limits::default(),
        concurrency: 1,
        isolation: Isolation::None,
        bwrap: "bwrap".into(),
        isolate_network: false,
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
    };
    let v = Verifier::open(SecretKey::from_seed(&[11; 32]), settings).unwrap();
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    let marker = format!("{}.5", 3000 + std::process::id() % 1000);
    let recipe = format!("sleep {marker} >/dev/null 2>&1 & echo ok > out");
    let artifacts = vec![Artifact { path: "hello-1.0/out".into(), sha3: content_hash(b"ok\n"), size: 3 }];
    let m = manifest(&source, &["sh", "-c", &recipe], artifacts);
    assert_eq!(v.build(&m, &source).await.unwrap().body.outcome, Outcome::Reproduced);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = std::process::Command::new("pgrep").args(["-f", &format!("sleep {marker}")]).output().unwrap();
    assert!(left.stdout.is_empty(), "still running: {}", String::from_utf8_lossy(&left.stdout));
}

/// The issue's release manager's case: GNU hello 2.10 from `../shared/data/sources`, built
/// by its own `./configure && make` (default `-g -O2`, no tricks) on two verifiers in
/// different directories. The same path inside the sandbox and the archive's file times
/// make the two binaries identical.
#[tokio::test]
async fn gnu_hello_reproduces_on_two_verifiers_as_its_makefile_builds_it() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/sources/hello-2.10.tar.gz");
    let Ok(source) = std::fs::read(&path) else {
        println!("SKIPPED: {} is not on this machine", path.display());
        return;
    };
    let mut m = manifest(
        &source,
        &["sh", "-c", "./configure --quiet && make --quiet"],
        vec![Artifact { path: "hello-2.10/hello".into(), sha3: [0; 32], size: 0 }],
    );
    m.version = "2.10".into();
    m.recipe.workdir = "hello-2.10".into();
    let limits = Limits { time_limit: Duration::from_secs(300), ..Limits::default() };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut got = Vec::new();
    for (dir, seed) in [(&a, 8), (&b, 9)] {
        let v = verifier(dir.path(), seed, limits.clone());
        let attestation = v.build(&m, &source).await.unwrap();
        let log = String::from_utf8_lossy(&v.log(&m.id()).unwrap().unwrap()).into_owned();
        match &attestation.body.outcome {
            Outcome::Mismatch { artifacts } => got.push((artifacts[0].got.expect("built"), artifacts[0].got_size)),
            other => panic!("the build should run to the end: {other:?}\n{log}"),
        }
        assert!(!log.contains("aclocal") || !log.contains("command not found"), "make did not regenerate:\n{log}");
    }
    assert_eq!(got[0], got[1], "both verifiers built the same bytes");

    // The same release repacked as .tar.xz, .tar.bz2 and .zip builds the same bytes: the
    // unpacked tree (times included) does not depend on the format. Built as `chainiac
    // release prepare --build` builds, which is the verifiers' build.
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&source[..]), &mut tar).unwrap();
    let tree = tempfile::tempdir().unwrap();
    chainiac_verifier::unpack::unpack(&source, tree.path(), &Limits::default()).unwrap();
    let repacks = [("tar.xz", xz(&tar)), ("tar.bz2", bz2(&tar)), ("zip", zip_of_tree(tree.path()))];
    let scratch = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let settings = Settings {
        data_dir: scratch.path().to_path_buf(),
        limits,
        concurrency: 1,
        isolation: Isolation::Bubblewrap,
        bwrap: "bwrap".into(),
        isolate_network: false,
        keep_differing: chainiac_verifier::DEFAULT_KEEP_DIFFERING,
    };
    for (format, archive) in repacks {
        let mut repacked = m.clone();
        repacked.source = SourceArchive {
            name: format!("hello-2.10.{format}"),
            sha3: content_hash(&archive),
            size: archive.len() as u64,
        };
        let built = chainiac_verifier::build_locally(&settings, &repacked, &archive).await.unwrap();
        let artifacts =
            built.result.unwrap_or_else(|e| panic!("{format}: {e}\n{}", String::from_utf8_lossy(&built.log)));
        assert_eq!((artifacts[0].sha3, Some(artifacts[0].size)), got[0], "{format} builds the same bytes");
    }
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::default()).unwrap();
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

fn bz2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    std::io::Write::write_all(&mut e, data).unwrap();
    e.finish().unwrap()
}

/// A zip of the files and directories under `root`, with their modes and times (zip keeps
/// local date and time fields; the unpacker reads them as UTC, and so they are written).
fn zip_of_tree(root: &Path) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let secs = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let options = zip::write::SimpleFileOptions::default()
                .last_modified_time(zip_time(secs))
                .unix_permissions(meta.permissions().mode() & 0o777);
            if meta.is_dir() {
                w.add_directory(format!("{name}/"), options).unwrap();
                stack.push(path);
            } else {
                w.start_file(name, options).unwrap();
                std::io::Write::write_all(&mut w, &std::fs::read(&path).unwrap()).unwrap();
            }
        }
    }
    w.finish().unwrap().into_inner()
}

/// Seconds since 1970 as zip's date and time fields, in UTC (days to civil date: Howard
/// Hinnant's algorithm).
fn zip_time(secs: u64) -> zip::DateTime {
    let (days, rest) = ((secs / 86_400) as i64 + 719_468, secs % 86_400);
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    let (hour, minute, second) = ((rest / 3600) as u8, (rest / 60 % 60) as u8, (rest % 60) as u8);
    zip::DateTime::from_date_and_time(year, month, day, hour, minute, second).unwrap()
}

/// The recipe's variables reach the build only, never the host-side programs that set the
/// sandbox up (found by review): `LD_PRELOAD=./evil.so` from the archive once ran as the
/// verifier, outside every namespace. Names that are not plain are refused.
#[tokio::test]
async fn recipe_variables_reach_only_the_build() {
    let work = tempfile::tempdir().unwrap();
    let marker = format!("/tmp/chainiac-preload-{}", std::process::id());
    let c = format!(
        "#include <stdio.h>\n__attribute__((constructor)) static void run(void) {{ FILE *f = fopen(\"{marker}\", \"a\"); if (f) {{ fputs(\"ran\\n\", f); fclose(f); }} }}\n"
    );
    std::fs::write(work.path().join("evil.c"), c).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o", "evil.so", "evil.c"])
        .current_dir(work.path())
        .status()
        .unwrap();
    assert!(built.success());
    let so = std::fs::read(work.path().join("evil.so")).unwrap();
    let source = tar_of(&[("hello-1.0/evil.so", &so, 0o755)]);
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(dir.path(), 10, Limits::default());
    let none = vec![Artifact { path: "hello-1.0/none".into(), sha3: [0; 32], size: 0 }];
    let mut m = manifest(&source, &["sh", "-c", "echo built"], none);
    for preload in ["./evil.so", "/build/hello-1.0/hello-1.0/evil.so"] {
        m.recipe.env = vec![("LD_PRELOAD".into(), preload.into())];
        m.version = format!("1.0-{}", preload.len());
        let _ = v.build(&m, &source).await.unwrap();
        assert!(!Path::new(&marker).exists(), "{preload}: the preload ran on the host");
    }
    m.recipe.env = vec![("LD_PRELOAD ./x".into(), "1".into())];
    m.version = "1.0-bad-name".into();
    let attestation = v.build(&m, &source).await.unwrap();
    match &attestation.body.outcome {
        Outcome::Failed { reason } => assert!(reason.contains("not a plain NAME=value"), "{reason}"),
        other => panic!("a variable name with a space must be refused, got {other:?}"),
    }
}

/// A hostile recipe tries to lift its own cgroup limits — a nested user, mount and cgroup
/// namespace and a fresh cgroupfs mount, then writes to `pids.max` and the memory limit —
/// forks past the process limit and leaves a `setsid` daemon behind. Nothing is raised (no
/// user namespace inside the sandbox; the limits sit on the group above the build's leaf,
/// whose files the build's user does not own), the limit stops the forks, and nothing
/// outlives the build. (From an attack review of the cgroups.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_build_cannot_lift_its_cgroup_limits() {
    let dir = tempfile::tempdir().unwrap();
    let Some(v) = verifier_with_cgroups(dir.path(), 14) else { return };
    let source = tar_of(&[("hello-1.0/f", b"1", 0o644)]);
    let artifacts = vec![Artifact { path: "hello-1.0/out".into(), sha3: content_hash(b"ok\n"), size: 3 }];
    let marker = format!("{}.25", 4000 + std::process::id() % 1000);
    let evil = format!(
        r#"
unshare -Urm -C sh -c '
 for c in pids memory; do mkdir -p /tmp/$c; mount -t cgroup -o $c none /tmp/$c && echo "mounted $c"; done
 echo max > /tmp/pids/pids.max && echo RAISED-PIDS
 echo -1 > /tmp/memory/memory.limit_in_bytes && echo RAISED-MEM
' 2>&1
setsid sh -c 'sleep {marker}' &
i=0; while [ $i -lt 100 ]; do sleep 5 & i=$((i+1)); done; wait; echo ok > out"#
    );
    let m = manifest(&source, &["sh", "-c", &evil], artifacts);
    let attestation = v.build(&m, &source).await.unwrap();
    let log = String::from_utf8_lossy(&v.log(&m.id()).unwrap().unwrap_or_default()).into_owned();
    assert!(!log.contains("RAISED"), "{log}");
    let Outcome::Failed { reason } = &attestation.body.outcome else { panic!("it passed the limit:\n{log}") };
    assert!(reason.contains("reached its limit of 64 processes"), "{reason}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = std::process::Command::new("pgrep").args(["-f", &format!("sleep {marker}")]).output().unwrap();
    assert!(left.stdout.is_empty(), "the daemon outlived the build: {}", String::from_utf8_lossy(&left.stdout));
}
