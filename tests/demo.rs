//! The README's first command, end to end, and every subcommand's help.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_chainiac-under-test");

#[test]
fn the_demo_releases_verifies_and_cleans_up() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "cosigned at index 1",
        // The timeline's index at that moment depends on how many 500 ms ticks passed.
        "unapproved: refused by the node: Refused: block ",
        " changes the committee without authority: 0 of the outgoing committee's members approved",
        "approved: timeline and project changed at blocks",
        "cosigned at index 3",
        "policy change cosigned at index 4",
        "cosigned at index 5",
        "past checkpoint(s) [2, 4]",
        "hello 1.2 verified; a copy with one bit changed is refused: true",
        "still block 5, fresh from",
        // After the releases: a rebuilder skips the lying mirror and lifts 1.2 for a
        // client that trusts it; a liar stands out; a yank is refused; fetch falls through.
        "reproduced; queued at 127.0.0.1:",
        "level trusted: 2 verifiers, 1 trusted and 0 other rebuilders reproduced it (was policy)",
        "mismatch",
        "DISAGREED",
        "yank at block 10; update reports 1.1; verify: release 1.1 of chain",
        "is YANKED: CVE-2026-0042",
        "served wrong bytes for hello-1.2/hello",
        "of release 1.2, from http://",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }
    let folder = stdout.lines().next().unwrap().rsplit(' ').next().unwrap();
    assert!(!std::path::Path::new(folder).exists(), "the demo removed {folder}");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["demo", "--help"],
        vec!["witness", "--help"],
        vec!["witness", "init", "--help"],
        vec!["witness", "run", "--help"],
        vec!["witness", "status", "--help"],
        vec!["witness", "peers", "--help"],
        vec!["roster", "--help"],
        vec!["roster", "approve", "--help"],
        vec!["roster", "rotate", "--help"],
        vec!["verifier", "--help"],
        vec!["verifier", "init", "--help"],
        vec!["verifier", "run", "--help"],
        vec!["keygen", "--help"],
        vec!["anchor", "--help"],
        vec!["update", "--help"],
        vec!["verify", "--help"],
        vec!["bundle", "--help"],
        vec!["bundle", "export", "--help"],
        vec!["bundle", "verify", "--help"],
        vec!["project", "init", "--help"],
        vec!["release", "prepare", "--help"],
        vec!["release", "sign", "--help"],
        vec!["release", "submit", "--help"],
        vec!["project", "show", "--help"],
        vec!["policy", "rotate", "--help"],
        vec!["chain", "show", "--help"],
        vec!["rebuilder", "init", "--help"],
        vec!["rebuilder", "run", "--help"],
        vec!["rebuilder", "audit", "--help"],
        vec!["release", "yank", "--help"],
        vec!["fetch", "--help"],
        vec!["serve", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
    let out = Command::new(BIN).args(["witness", "run", "--config", "/nonexistent.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a missing config is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

#[test]
fn keygen_writes_a_private_key_file_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.key");
    let out = Command::new(BIN).args(["keygen", "--out", path.to_str().unwrap(), "--json"]).output().unwrap();
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["public_key"].as_str().unwrap().len(), 64);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = Command::new(BIN).args(["keygen", "--out", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(again.status.code(), Some(1), "an existing key is never overwritten");
}
