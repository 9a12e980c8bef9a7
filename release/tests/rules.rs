//! Every rule a witness applies to releases and policy changes, accepting and refusing.

use chainiac_cosi::SecretKey;
use chainiac_release::model::{ArtifactMismatch, RootSignature};
use chainiac_release::*;
use chainiac_skipchain::block::policy_hash;
use chainiac_skipchain::BlockId;
use proptest::prelude::*;

struct Fixture {
    developers: Vec<SecretKey>,
    roots: Vec<SecretKey>,
    verifiers: Vec<SecretKey>,
    policy: Policy,
}

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn fixture() -> Fixture {
    let developers = vec![key(1), key(2), key(3)];
    let roots = vec![key(10), key(11)];
    let verifiers = vec![key(20), key(21), key(22)];
    let policy = Policy {
        project: "hello".into(),
        developers: developers.iter().map(SecretKey::public_key).collect(),
        release_threshold: 2,
        root_keys: roots.iter().map(SecretKey::public_key).collect(),
        root_threshold: 2,
        verifiers: verifiers
            .iter()
            .enumerate()
            .map(|(i, v)| VerifierEntry { key: v.public_key(), address: format!("127.0.0.1:{}", 9000 + i) })
            .collect(),
        verifier_threshold: 2,
        require_isolation: false,
        max_age_ms: 3_600_000,
        version: 0,
        yanked: Vec::new(),
    };
    Fixture { developers, roots, verifiers, policy }
}

const NOW: u64 = 1_800_000_000_000;

fn manifest(version: &str) -> Manifest {
    Manifest {
        project: "hello".into(),
        version: version.into(),
        source: SourceArchive { name: "hello-1.0.tar".into(), sha3: content_hash(b"source"), size: 6 },
        recipe: Recipe {
            argv: vec!["make".into()],
            env: vec![("CFLAGS".into(), "-O2".into())],
            workdir: "hello-1.0".into(),
        },
        artifacts: vec![Artifact { path: "hello-1.0/hello".into(), sha3: content_hash(b"binary"), size: 6 }],
        time_ms: NOW - 60_000,
    }
}

fn attest(verifier: &SecretKey, manifest: &Manifest, outcome: Outcome) -> Attestation {
    Attestation::sign(
        verifier,
        AttestationBody {
            verifier: verifier.public_key(),
            manifest: manifest.id(),
            outcome,
            environment: [9; 32],
            time_ms: NOW - 30_000,
            isolation: chainiac_release::BuildIsolation::Namespaces,
        },
    )
}

fn release(f: &Fixture, manifest: Manifest, signers: &[usize], reproducers: &[usize]) -> ReleasePayload {
    let id = manifest.id();
    ReleasePayload {
        developer_signatures: signers.iter().map(|&i| DeveloperSignature::sign(&f.developers[i], &id)).collect(),
        attestations: reproducers.iter().map(|&i| attest(&f.verifiers[i], &manifest, Outcome::Reproduced)).collect(),
        manifest,
    }
}

fn check(f: &Fixture, payload: &ReleasePayload) -> Result<ReleasePayload, ReleaseError> {
    check_release(&f.policy.to_bytes(), &payload.to_bytes(), NOW, TimeWindow::default(), |v| v == "0.9")
}

#[test]
fn a_release_meeting_every_rule_is_accepted() {
    let f = fixture();
    let payload = release(&f, manifest("1.0"), &[0, 2], &[0, 1]);
    assert_eq!(check(&f, &payload).unwrap(), payload);
}

#[test]
fn developer_rules() {
    let f = fixture();
    let payload = release(&f, manifest("1.0"), &[1], &[0, 1]);
    assert_eq!(check(&f, &payload).unwrap_err(), ReleaseError::DeveloperThreshold { valid: 1, threshold: 2 });
    // The same developer twice is refused by name (it would count once at best).
    let payload = release(&f, manifest("1.0"), &[1, 1], &[0, 1]);
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::DuplicateDeveloper { .. }));
    let mut payload = release(&f, manifest("1.0"), &[0, 1], &[0, 1]);
    payload.developer_signatures.push(DeveloperSignature::sign(&key(99), &payload.manifest.id()));
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::UnknownDeveloperKey { .. }));
    // A signature over another manifest.
    let mut payload = release(&f, manifest("1.0"), &[0], &[0, 1]);
    payload.developer_signatures.push(DeveloperSignature::sign(&f.developers[1], &manifest("1.1").id()));
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::BadDeveloperSignature { .. }));
}

#[test]
fn version_project_time_and_shape_rules() {
    let f = fixture();
    let payload = release(&f, manifest("0.9"), &[0, 1], &[0, 1]);
    assert_eq!(check(&f, &payload).unwrap_err(), ReleaseError::VersionExists("0.9".into()));
    let mut m = manifest("1.0");
    m.project = "other".into();
    assert!(matches!(check(&f, &release(&f, m, &[0, 1], &[0, 1])).unwrap_err(), ReleaseError::WrongProject { .. }));
    let mut m = manifest("1.0");
    m.time_ms = NOW + 3_600_000;
    assert!(matches!(check(&f, &release(&f, m, &[0, 1], &[0, 1])).unwrap_err(), ReleaseError::Time { .. }));
    let mut m = manifest("1.0");
    m.artifacts[0].path = "../../etc/passwd".into();
    assert!(matches!(check(&f, &release(&f, m, &[0, 1], &[0, 1])).unwrap_err(), ReleaseError::Manifest(_)));
    let mut m = manifest("1.0");
    m.artifacts.clear();
    assert!(matches!(check(&f, &release(&f, m, &[0, 1], &[0, 1])).unwrap_err(), ReleaseError::Manifest(_)));
}

#[test]
fn verifier_rules() {
    let f = fixture();
    let m = manifest("1.0");
    let mut payload = release(&f, m.clone(), &[0, 1], &[0]);
    let mismatch = Outcome::Mismatch {
        artifacts: vec![ArtifactMismatch {
            path: "hello-1.0/hello".into(),
            expected: content_hash(b"binary"),
            got: Some(content_hash(b"other")),
            got_size: Some(5),
        }],
    };
    payload.attestations.push(attest(&f.verifiers[1], &m, mismatch));
    payload.attestations.push(attest(&f.verifiers[2], &m, Outcome::Failed { reason: "time limit".into() }));
    match check(&f, &payload).unwrap_err() {
        ReleaseError::NotReproduced { reproduced: 1, threshold: 2, disagreements } => {
            assert!(disagreements.contains("hello-1.0/hello"), "{disagreements}");
            assert!(disagreements.contains("time limit"), "{disagreements}");
        }
        other => panic!("{other}"),
    }
    let mut payload = release(&f, m.clone(), &[0, 1], &[0]);
    payload.attestations.push(attest(&f.verifiers[1], &manifest("1.1"), Outcome::Reproduced));
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::AttestationForAnotherManifest { .. }));
    let mut payload = release(&f, m.clone(), &[0, 1], &[0, 1]);
    payload.attestations[1].body.environment[0] ^= 1;
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::BadAttestation { .. }));
    let mut payload = release(&f, m.clone(), &[0, 1], &[0, 1]);
    payload.attestations.push(attest(&key(77), &m, Outcome::Reproduced));
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::UnknownVerifier { .. }));
    // One verifier listed twice does not make two reproductions: refused, whatever else.
    let payload = release(&f, m.clone(), &[0, 1], &[0, 0]);
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::DuplicateAttestation { .. }));
    let payload = release(&f, m.clone(), &[0, 1], &[0, 1, 1]);
    assert!(matches!(check(&f, &payload).unwrap_err(), ReleaseError::DuplicateAttestation { .. }));
}

#[test]
fn policy_changes_need_the_root_threshold_and_rotate_developer_keys() {
    let f = fixture();
    let chain = [5u8; 32];
    let old = f.policy.to_bytes();
    let mut rotated = f.policy.clone();
    rotated.developers[0] = key(4).public_key(); // developer 1's key is replaced
    rotated.version = 1;
    let new = rotated.to_bytes();
    let (old_hash, new_hash) =
        (chainiac_skipchain::block::policy_hash(&old), chainiac_skipchain::block::policy_hash(&new));
    let sign = |k: &SecretKey, c: &[u8; 32]| RootSignature::sign(k, c, &old_hash, &new_hash);
    let change = PolicyChange { root_signatures: vec![sign(&f.roots[0], &chain), sign(&f.roots[1], &chain)] };
    assert_eq!(check_policy_change(&chain, &old, Some(&new), &change.to_bytes()).unwrap(), rotated);

    let one = PolicyChange { root_signatures: vec![sign(&f.roots[0], &chain)] };
    assert_eq!(
        check_policy_change(&chain, &old, Some(&new), &one.to_bytes()).unwrap_err(),
        ReleaseError::RootThreshold { valid: 1, threshold: 2 }
    );
    let replayed = PolicyChange { root_signatures: vec![sign(&f.roots[0], &[6; 32]), sign(&f.roots[1], &[6; 32])] };
    assert!(matches!(
        check_policy_change(&chain, &old, Some(&new), &replayed.to_bytes()).unwrap_err(),
        ReleaseError::BadRootSignature { .. }
    ));
    let stranger = PolicyChange { root_signatures: vec![sign(&f.roots[0], &chain), sign(&f.developers[0], &chain)] };
    assert!(matches!(
        check_policy_change(&chain, &old, Some(&new), &stranger.to_bytes()).unwrap_err(),
        ReleaseError::UnknownRootKey { .. }
    ));
    assert_eq!(
        check_policy_change(&chain, &old, None, &change.to_bytes()).unwrap_err(),
        ReleaseError::MissingNewPolicy
    );
    // The version must rise: the roots' own signatures over a change that keeps it are
    // refused, so a policy never comes back byte for byte ...
    let mut same_version = rotated.clone();
    same_version.version = f.policy.version;
    let same = same_version.to_bytes();
    let sign_same = |k: &SecretKey| RootSignature::sign(k, &chain, &old_hash, &policy_hash(&same));
    let change_same = PolicyChange { root_signatures: vec![sign_same(&f.roots[0]), sign_same(&f.roots[1])] };
    assert_eq!(
        check_policy_change(&chain, &old, Some(&same), &change_same.to_bytes()).unwrap_err(),
        ReleaseError::VersionNotRaised { old: 0, new: 0 }
    );
    // ... and signatures over an old transition cannot be replayed once the roots moved the
    // policy back: "back" is a new version, with a new hash.
    let mut back = f.policy.clone();
    back.version = 2;
    let back_bytes = back.to_bytes();
    assert_ne!(policy_hash(&back_bytes), old_hash);
    assert!(matches!(
        check_policy_change(&chain, &back_bytes, Some(&new), &change.to_bytes()).unwrap_err(),
        ReleaseError::VersionNotRaised { old: 2, new: 1 }
    ));

    // The clients' rule is the same check, and applies to release policies only.
    let rule = |old: &[u8], new: &[u8], payload: &[u8]| {
        chainiac_release::policy_rule(&chainiac_skipchain::BlockId(chain), old, new, payload)
    };
    assert!(rule(&old, &new, &change.to_bytes()).is_ok());
    assert!(rule(&old, &new, &one.to_bytes()).unwrap_err().contains("root signatures"));
    assert!(rule(&old, &new, &[]).unwrap_err().contains("does not decode"));
    assert!(rule(&old, &new, &replayed.to_bytes()).is_err(), "signed for another chain");
    assert!(rule(b"timeline", b"anything", &[]).is_ok(), "not a release policy: no rule");
    assert!(
        rule(b"raw", &new, &change.to_bytes()).unwrap_err().contains("cannot take one"),
        "a chain that is not a release chain never becomes one"
    );
    // A release-shaped policy with no root threshold (a raw genesis may name one, unchecked)
    // authorizes no change, with no signature or any.
    let mut degenerate = f.policy.clone();
    degenerate.root_threshold = 0;
    let error = rule(&degenerate.to_bytes(), &new, &PolicyChange { root_signatures: vec![] }.to_bytes()).unwrap_err();
    assert!(error.contains("authorizes no change"), "{error}");
    assert!(rule(&old, b"not a policy", &change.to_bytes()).is_err(), "a release policy stays one");

    // After the rotation the old key no longer counts and the new one does.
    let m = manifest("2.0");
    let id = m.id();
    let with_old = ReleasePayload {
        developer_signatures: vec![
            DeveloperSignature::sign(&f.developers[0], &id),
            DeveloperSignature::sign(&f.developers[1], &id),
        ],
        attestations: vec![
            attest(&f.verifiers[0], &m, Outcome::Reproduced),
            attest(&f.verifiers[1], &m, Outcome::Reproduced),
        ],
        manifest: m.clone(),
    };
    let refused = check_release(&new, &with_old.to_bytes(), NOW, TimeWindow::default(), |_| false).unwrap_err();
    assert!(matches!(refused, ReleaseError::UnknownDeveloperKey { .. }), "{refused}");
    let mut with_new = with_old.clone();
    with_new.developer_signatures[0] = DeveloperSignature::sign(&key(4), &id);
    check_release(&new, &with_new.to_bytes(), NOW, TimeWindow::default(), |_| false).unwrap();
}

/// A policy that counts only sandboxed builds (rule 6): a reproduction outside a sandbox
/// does not count, and the refusal says so; the same attestations pass a policy that
/// does not ask for it, and sandboxed ones pass either.
#[test]
fn a_policy_may_count_only_sandboxed_reproductions() {
    let f = fixture();
    let mut strict = f.policy.clone();
    strict.require_isolation = true;
    let m = manifest("1.0");
    let mut payload = release(&f, m.clone(), &[0, 2], &[0]);
    let mut body = attest(&f.verifiers[1], &m, Outcome::Reproduced).body;
    body.isolation = chainiac_release::BuildIsolation::None;
    payload.attestations.push(Attestation::sign(&f.verifiers[1], body));
    let check_under = |policy: &Policy, payload: &ReleasePayload| {
        check_release(&policy.to_bytes(), &payload.to_bytes(), NOW, TimeWindow::default(), |_| false)
    };
    check_under(&f.policy, &payload).unwrap();
    let refused = check_under(&strict, &payload).unwrap_err();
    assert!(matches!(refused, ReleaseError::NotReproduced { reproduced: 1, threshold: 2, .. }), "{refused}");
    assert!(refused.to_string().contains("outside a sandbox (isolation none)"), "{refused}");
    check_under(&strict, &release(&f, m, &[0, 2], &[0, 1])).unwrap();
    assert_ne!(strict.to_bytes(), f.policy.to_bytes(), "the policy's bytes carry it");
}

#[test]
fn invalid_policies_are_refused() {
    let f = fixture();
    let mut p = f.policy.clone();
    p.release_threshold = 4;
    assert!(matches!(p.check().unwrap_err(), PolicyError::Threshold { set: "developer", .. }));
    let mut p = f.policy.clone();
    p.root_keys.push(p.root_keys[0]);
    assert!(matches!(p.check().unwrap_err(), PolicyError::DuplicateKey { set: "root", .. }));
    let mut p = f.policy.clone();
    p.verifiers.clear();
    p.verifier_threshold = 0;
    p.check().unwrap();
    let mut bytes = f.policy.to_bytes();
    bytes.push(0);
    assert!(matches!(Policy::from_bytes(&bytes).unwrap_err(), PolicyError::Decode(_)));
}

/// The bad-hash tracker against a scripted history: three releases (verifier 2 fails
/// twice, is alone once; verifiers 0 and 1 always reproduce), then rebuilders: one
/// reproduces all three, one lies about two, one fails once; verifier 0 also rebuilds one
/// release as a rebuilder (a key in both roles has a line for each).
#[test]
fn the_tracker_counts_a_scripted_history() {
    let f = fixture();
    let (honest, liar, flaky) = (key(40), key(41), key(42));
    let odd = || Outcome::Failed { reason: "x".into() };
    let mut tracker = Tracker::default();
    for (n, version) in ["1.0", "1.1", "1.2"].into_iter().enumerate() {
        let m = manifest(version);
        let mut attestations =
            vec![attest(&f.verifiers[0], &m, Outcome::Reproduced), attest(&f.verifiers[1], &m, Outcome::Reproduced)];
        if n < 2 {
            attestations.push(attest(&f.verifiers[2], &m, odd()));
        }
        let payload = ReleasePayload { manifest: m, developer_signatures: vec![], attestations };
        tracker.release(n as u64 * 3 + 1, 1_000 + n as u64, &payload);
    }
    let rebuilt = |release: u64, who: &SecretKey, outcome: Outcome| {
        let m = manifest(["1.0", "1.1", "1.2"][(release / 3) as usize]);
        Rebuilds { release, attestations: vec![rebuild(who, &m, outcome)] }
    };
    let lie = || Outcome::Mismatch { artifacts: vec![] };
    for (time, release, who, outcome) in [
        (2_000, 1, &honest, Outcome::Reproduced),
        (2_001, 1, &liar, lie()),
        (2_002, 4, &honest, Outcome::Reproduced),
        (2_003, 4, &flaky, odd()),
        (2_004, 7, &liar, lie()),
        (2_005, 7, &honest, Outcome::Reproduced),
        (2_006, 7, &f.verifiers[0], Outcome::Reproduced),
    ] {
        tracker.rebuilds(time, &rebuilt(release, who, outcome));
    }
    let rows = |k: &SecretKey| tracker.records().into_iter().filter(|r| r.key == k.public_key()).collect::<Vec<_>>();
    let counts = |k: &SecretKey| {
        let r = &rows(k)[0];
        (r.role, r.attested, r.agreed, r.disagreed, r.first_seen_ms)
    };
    assert_eq!(counts(&f.verifiers[0]), (Role::Verifier, 3, 3, 0, 1_000));
    assert_eq!(counts(&f.verifiers[2]), (Role::Verifier, 2, 0, 2, 1_000));
    assert_eq!(counts(&honest), (Role::Rebuilder, 3, 3, 0, 2_000));
    assert_eq!(counts(&liar), (Role::Rebuilder, 2, 0, 2, 2_001));
    assert_eq!(counts(&flaky), (Role::Rebuilder, 1, 0, 1, 2_003));
    let both: Vec<_> = rows(&f.verifiers[0]).iter().map(|r| (r.role, r.attested, r.first_seen_ms)).collect();
    assert_eq!(both, vec![(Role::Verifier, 3, 1_000), (Role::Rebuilder, 1, 2_006)]);
    assert_eq!(tracker.records().len(), 7);
    let disputed: Vec<(u64, &str, usize)> =
        tracker.disputed().iter().map(|d| (d.release, d.version.as_str(), d.disagreeing.len())).collect();
    assert_eq!(disputed, vec![(1, "1.0", 2), (4, "1.1", 2), (7, "1.2", 1)]);
    assert_eq!(tracker.disputed()[2].disagreeing[0], (liar.public_key(), Verdict::Mismatch));
}

/// Pinned encodings and signatures: any change to the wire format or signed messages shows
/// here (values produced by this implementation and frozen; RFC 8032 vectors for the
/// signature primitive are in cosi/tests/rfc8032.rs).
#[test]
fn pinned_vectors() {
    let m = manifest("1.0");
    let id = m.id();
    let sig = DeveloperSignature::sign(&key(1), &id);
    assert_eq!(DeveloperSignature::message(&id)[..30], *b"\x1dchainiac/v1/release/developer");
    assert!(sig.verify(&id));
    let encoded = m.to_bytes();
    assert_eq!(&encoded[..6], b"\x05hello");
    assert_eq!(hex(&id.0), PINNED_MANIFEST_ID, "manifest id changed: the encoding or the tag changed");
    assert_eq!(hex(&sig.signature), PINNED_DEVELOPER_SIGNATURE);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const PINNED_MANIFEST_ID: &str = "e713e7928ba35e314c8bd2f09d0b3913d2beae3c8dcc9515e26aa23a939f2747";
const PINNED_DEVELOPER_SIGNATURE: &str =
    "494995858e1c323802f50ba8598a905f6d628c16d080532bbc5ccd2aa5eab70306755182a5c1edc7ad67a781fb7b9490f7b77e58361a67f52a592a41a6501404";

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No single changed byte in a release payload turns it into another acceptable release.
    #[test]
    fn changed_bytes_never_pass_as_another_release(position in any::<usize>(), bit in 0u8..8) {
        let f = fixture();
        let payload = release(&f, manifest("1.0"), &[0, 1], &[0, 1]);
        let mut bytes = payload.to_bytes();
        let position = position % bytes.len();
        bytes[position] ^= 1 << bit;
        let result = check_release(&f.policy.to_bytes(), &bytes, NOW, TimeWindow::default(), |v| v == "0.9");
        if let Ok(accepted) = result {
            // Only bytes that the signatures do not cover could change and still pass; there
            // must be none that changes what was released.
            prop_assert_eq!(accepted.manifest, payload.manifest);
            prop_assert!(false, "byte {} changed and the payload was still accepted", position);
        }
    }
}

/// The SOURCE_DATE_EPOCH builds see: the recipe's when it names one, else the manifest's
/// time; a value that is not canonical decimal seconds, or named twice, is refused by the
/// verifiers (a failed build) — but it is no chain rule: blocks appended before the rule
/// existed stay valid (found by review: a new chain rule without an activation point would
/// split old and new witnesses).
#[test]
fn source_date_epoch_comes_from_the_recipe_or_the_manifest_time() {
    let mut m = manifest("1.0");
    assert_eq!(m.source_date_epoch(), Ok((NOW - 60_000) / 1000));
    m.recipe.env.push((SOURCE_DATE_EPOCH.into(), "1416096000".into()));
    assert_eq!(m.source_date_epoch(), Ok(1_416_096_000));
    for good in ["0", "7"] {
        m.recipe.env.last_mut().unwrap().1 = good.into();
        assert_eq!(m.source_date_epoch(), Ok(good.parse().unwrap()));
    }
    for bad in ["", "+5", "-1", " 5", "5s", "0x10", "007", "18446744073709551616"] {
        m.recipe.env.last_mut().unwrap().1 = bad.into();
        let refused = m.source_date_epoch().unwrap_err();
        assert!(
            refused.contains("SOURCE_DATE_EPOCH") && refused.contains("not a number of seconds"),
            "{bad:?}: {refused}"
        );
        assert_eq!(rules::check_manifest(&m), Ok(()), "not a chain rule");
    }
    m.recipe.env.last_mut().unwrap().1 = "7".into();
    m.recipe.env.push((SOURCE_DATE_EPOCH.into(), "7".into()));
    assert!(m.source_date_epoch().unwrap_err().contains("twice"));
}

proptest! {
    /// A content hash fed in pieces is the content hash of the whole.
    #[test]
    fn a_streamed_content_hash_is_the_content_hash(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
        let cut = cut.min(bytes.len());
        let mut hasher = chainiac_release::ContentHasher::new();
        hasher.update(&bytes[..cut]);
        hasher.update(&bytes[cut..]);
        prop_assert_eq!(hasher.finish(), (content_hash(&bytes), bytes.len() as u64));
    }
}

const CHAIN: [u8; 32] = [5; 32];

fn a_yank(version: &str) -> Yank {
    Yank { version: version.into(), reason: "CVE-2026-0001: the build leaks keys".into(), time_ms: NOW - 1_000 }
}

/// The new policy and payload of `policy` yanking `yank`, signed by `signers`.
fn yank_block(policy: &Policy, yank: &Yank, signers: &[&SecretKey]) -> (Vec<u8>, Vec<u8>) {
    let old_hash = policy_hash(&policy.to_bytes());
    let signatures = signers.iter().map(|k| YankSignature::sign(k, &CHAIN, &old_hash, yank)).collect();
    (policy.with_yank(yank.clone()).to_bytes(), YankPayload { signatures }.to_bytes())
}

fn check_yank_of(policy: &Policy, new: &[u8], payload: &[u8]) -> Result<Yank, ReleaseError> {
    check_yank(&CHAIN, &policy.to_bytes(), Some(new), payload, NOW, TimeWindow::default(), |v| v == "1.0" || v == "1.1")
}

/// Who may yank, what: the developer threshold or the root threshold (never the two summed),
/// a released version not yanked before, within the time window, and nothing else changed.
#[test]
fn yanks_need_the_developer_or_root_threshold_and_change_nothing_else() {
    let f = fixture();
    let yank = a_yank("1.0");
    let (d, r) = (&f.developers, &f.roots);
    for signers in [vec![&d[0], &d[2]], vec![&r[0], &r[1]], vec![&d[0], &d[1], &r[0]]] {
        let (new, payload) = yank_block(&f.policy, &yank, &signers);
        assert_eq!(check_yank_of(&f.policy, &new, &payload), Ok(yank.clone()));
        let policy = Policy::from_bytes(&new).unwrap();
        assert_eq!(policy.yank_of("1.0"), Some(&yank));
        assert_eq!(policy.version, 1);
    }
    // One developer and one root key meet neither threshold of 2.
    let (new, payload) = yank_block(&f.policy, &yank, &[&d[0], &r[0]]);
    assert_eq!(
        check_yank_of(&f.policy, &new, &payload),
        Err(ReleaseError::YankThreshold { developers: 1, release_threshold: 2, roots: 1, root_threshold: 2 })
    );
    let (new, payload) = yank_block(&f.policy, &yank, &[&d[0], &f.verifiers[0]]);
    assert!(matches!(check_yank_of(&f.policy, &new, &payload), Err(ReleaseError::UnknownYankKey { .. })));
    let (new, payload) = yank_block(&f.policy, &yank, &[&d[0], &d[0]]);
    assert!(matches!(check_yank_of(&f.policy, &new, &payload), Err(ReleaseError::DuplicateYankSignature { .. })));
    // Signatures over another yank, another chain or another policy do not carry over.
    let other = Yank { reason: "another reason".into(), ..yank.clone() };
    let (_, payload_of_other) = yank_block(&f.policy, &other, &[&d[0], &d[1]]);
    let (new, _) = yank_block(&f.policy, &yank, &[]);
    assert!(matches!(check_yank_of(&f.policy, &new, &payload_of_other), Err(ReleaseError::BadYankSignature { .. })));
    let old_hash = policy_hash(&f.policy.to_bytes());
    let elsewhere = YankPayload {
        signatures: vec![
            YankSignature::sign(&d[0], &[6; 32], &old_hash, &yank),
            YankSignature::sign(&d[1], &[6; 32], &old_hash, &yank),
        ],
    };
    assert!(matches!(
        check_yank_of(&f.policy, &new, &elsewhere.to_bytes()),
        Err(ReleaseError::BadYankSignature { .. })
    ));
    // Only a released version, once, at about the block's time.
    let (new, payload) = yank_block(&f.policy, &a_yank("2.0"), &[&d[0], &d[1]]);
    assert_eq!(check_yank_of(&f.policy, &new, &payload), Err(ReleaseError::YankOfUnknownRelease("2.0".into())));
    let yanked = f.policy.with_yank(yank.clone());
    let (new, payload) = yank_block(&yanked, &Yank { reason: "again".into(), ..yank.clone() }, &[&d[0], &d[1]]);
    assert_eq!(check_yank_of(&yanked, &new, &payload), Err(ReleaseError::AlreadyYanked("1.0".into())));
    let late = Yank { time_ms: NOW + 3_600_000, ..yank.clone() };
    let (new, payload) = yank_block(&f.policy, &late, &[&d[0], &d[1]]);
    assert!(matches!(check_yank_of(&f.policy, &new, &payload), Err(ReleaseError::YankTime { .. })));
    let (new, payload) = yank_block(&f.policy, &Yank { reason: String::new(), ..yank.clone() }, &[&d[0], &d[1]]);
    assert!(matches!(check_yank_of(&f.policy, &new, &payload), Err(ReleaseError::BadYank { .. })));
    // A yank changes nothing else: developers cannot slip in a key, keep the version, or
    // drop an earlier yank.
    let (_, payload) = yank_block(&f.policy, &yank, &[&d[0], &d[1]]);
    let mut grabbed = f.policy.with_yank(yank.clone());
    grabbed.developers.push(key(4).public_key());
    assert_eq!(check_yank_of(&f.policy, &grabbed.to_bytes(), &payload), Err(ReleaseError::NotAYank));
    let mut kept = f.policy.with_yank(yank.clone());
    kept.version = 0;
    assert_eq!(check_yank_of(&f.policy, &kept.to_bytes(), &payload), Err(ReleaseError::NotAYank));
    let both = yanked.with_yank(a_yank("1.1"));
    let (_, payload) = yank_block(&f.policy, &a_yank("1.1"), &[&d[0], &d[1]]);
    let mut dropped = both.clone();
    dropped.yanked.remove(0);
    dropped.version = 1;
    assert_eq!(
        check_yank_of(&f.policy, &dropped.to_bytes(), &payload),
        Ok(a_yank("1.1")),
        "that is a yank of 1.1 from the original"
    );
    let (_, payload) = yank_block(&yanked, &a_yank("1.1"), &[&d[0], &d[1]]);
    assert_eq!(check_yank_of(&yanked, &dropped.to_bytes(), &payload), Err(ReleaseError::NotAYank));
    assert_eq!(
        check_yank(&CHAIN, &f.policy.to_bytes(), None, &payload, NOW, TimeWindow::default(), |_| true),
        Err(ReleaseError::NotAYank)
    );
}

/// Clients check every policy change a proof carries with `policy_rule`, which has no block
/// kinds: it takes a yank-shaped change with the developers' signatures, and root changes
/// as before; a replayed yank after the roots took it back is refused.
#[test]
fn clients_take_a_yank_by_its_shape_and_signatures() {
    let f = fixture();
    let rule = |old: &[u8], new: &[u8], payload: &[u8]| {
        chainiac_release::policy_rule(&chainiac_skipchain::BlockId(CHAIN), old, new, payload)
    };
    let yank = a_yank("1.0");
    let (d, r) = (&f.developers, &f.roots);
    let old = f.policy.to_bytes();
    let (new, payload) = yank_block(&f.policy, &yank, &[&d[0], &d[1]]);
    assert_eq!(rule(&old, &new, &payload), Ok(()));
    let (_, one) = yank_block(&f.policy, &yank, &[&d[0]]);
    let refused = rule(&old, &new, &one).unwrap_err();
    assert!(refused.contains("1 developer keys and 0 root keys signed the yank"), "{refused}");
    // A root-signed change may also yank (or do anything else).
    let roots = PolicyChange {
        root_signatures: r
            .iter()
            .map(|k| RootSignature::sign(k, &CHAIN, &policy_hash(&old), &policy_hash(&new)))
            .collect(),
    };
    assert_eq!(rule(&old, &new, &roots.to_bytes()), Ok(()));
    // Developers' yank signatures do not authorize any other change.
    let mut grabbed = f.policy.with_yank(yank.clone());
    grabbed.developers.push(key(4).public_key());
    assert!(rule(&old, &grabbed.to_bytes(), &payload).is_err());
    // The roots take the yank back (version 2), then someone replays the developers' yank:
    // it was signed over the policy of version 0, so it is refused.
    let mut unyanked = Policy::from_bytes(&new).unwrap();
    unyanked.yanked.clear();
    unyanked.version = 2;
    let replayed = unyanked.with_yank(yank.clone());
    assert!(rule(&unyanked.to_bytes(), &replayed.to_bytes(), &payload).unwrap_err().contains("not valid"));
}

/// The yank signature's message, pinned (SPEC §11.7).
#[test]
fn yank_signature_vector() {
    let yank = Yank { version: "1.0".into(), reason: "bad".into(), time_ms: 5 };
    let message = YankSignature::message(&[7; 32], &[8; 32], &yank);
    // Tag length and tag, chain, old policy hash, then the yank: "1.0", "bad", time 5.
    let tag = hex(b"chainiac/v1/release/yank");
    let expected = ["18", &tag, &"07".repeat(32), &"08".repeat(32), "03312e30", "03626164", "05"].concat();
    assert_eq!(hex(&message), expected);
    let signature = YankSignature::sign(&key(1), &[7; 32], &[8; 32], &yank);
    assert!(key(1).public_key().verify_ed25519(&message, &signature.signature));
    assert_eq!(hex(&signature.signature), PINNED_YANK_SIGNATURE);
}

const PINNED_YANK_SIGNATURE: &str =
    "30478f37640ab8925d4d5f4bd5b5c3fb6a8786f52a02ebaebcdfbb5a4224d4fe53b58fd44428593ffd84889f71ce6c8182b72e95ff2e489615b12e5cd15c9500";

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A yank passes exactly when the developers that signed reach the release threshold or
    /// the root keys that signed reach the root threshold: witnesses and clients agree.
    #[test]
    fn a_yank_passes_exactly_at_either_threshold(developers in proptest::collection::vec(any::<bool>(), 3), roots in proptest::collection::vec(any::<bool>(), 2)) {
        let f = fixture();
        let yank = a_yank("1.1");
        let signers: Vec<&SecretKey> = f.developers.iter().zip(&developers).chain(f.roots.iter().zip(&roots)).filter(|(_, s)| **s).map(|(k, _)| k).collect();
        let (new, payload) = yank_block(&f.policy, &yank, &signers);
        let count = |v: &[bool]| v.iter().filter(|s| **s).count();
        let enough = count(&developers) >= 2 || count(&roots) >= 2;
        prop_assert_eq!(check_yank_of(&f.policy, &new, &payload).is_ok(), enough);
        let rule = chainiac_release::policy_rule(&chainiac_skipchain::BlockId(CHAIN), &f.policy.to_bytes(), &new, &payload);
        prop_assert_eq!(rule.is_ok(), enough);
    }
}

/// A rebuilder's attestation about the release `release(&f, manifest("1.0"), …)` holds.
fn rebuild(rebuilder: &SecretKey, manifest: &Manifest, outcome: Outcome) -> Attestation {
    attest(rebuilder, manifest, outcome)
}

/// Late attestations (SPEC §11.8): signed, of bounded size, about the chain's newest
/// release, one per rebuilder and release (a policy verifier attests in release blocks,
/// not as a rebuilder), within the per-release limit.
#[test]
fn rebuilds_are_signed_about_the_newest_release_and_once_per_rebuilder() {
    let f = fixture();
    let m = manifest("1.0");
    let released = release(&f, m.clone(), &[0, 1], &[0, 1]);
    let (a, b) = (key(40), key(41));
    let verifiers: Vec<_> = f.policy.verifiers.iter().map(|v| v.key).collect();
    let block = |attestations: Vec<Attestation>| Rebuilds { release: 3, attestations };
    let check = |rebuilds: &Rebuilds, recorded: &[RebuildRecord]| {
        check_rebuilds_alone(rebuilds)
            .and_then(|()| check_rebuilds(rebuilds, Some((3, &released)), recorded, &verifiers))
    };
    let ok = block(vec![rebuild(&a, &m, Outcome::Reproduced), rebuild(&b, &m, Outcome::Failed { reason: "x".into() })]);
    assert_eq!(check(&ok, &[]), Ok(()));
    assert_eq!(check_rebuilds(&ok, None, &[], &verifiers), Err(ReleaseError::NotARelease(3)));
    assert_eq!(
        check_rebuilds(&ok, Some((5, &released)), &[], &verifiers),
        Err(ReleaseError::NotTheNewestRelease { release: 3, newest: 5 }),
        "an older release takes no rebuilds: a summary at the head is always about the newest"
    );
    assert_eq!(check(&block(vec![]), &[]), Err(ReleaseError::NoRebuilds));
    let other = block(vec![rebuild(&a, &manifest("1.1"), Outcome::Reproduced)]);
    assert!(matches!(check(&other, &[]), Err(ReleaseError::RebuildOfAnotherManifest { release: 3, .. })));
    let recorded = [RebuildRecord::of(&rebuild(&a, &m, Outcome::Reproduced))];
    assert!(matches!(check(&ok, &recorded), Err(ReleaseError::DuplicateRebuild { .. })));
    let twice = block(vec![rebuild(&a, &m, Outcome::Reproduced), rebuild(&a, &m, Outcome::Reproduced)]);
    assert!(matches!(check(&twice, &[]), Err(ReleaseError::DuplicateRebuild { .. })));
    // A verifier of the policy, whether or not it attested in the release block.
    for verifier in [&f.verifiers[0], &f.verifiers[2]] {
        let again = block(vec![rebuild(verifier, &m, Outcome::Reproduced)]);
        assert!(matches!(check(&again, &[]), Err(ReleaseError::RebuildByAVerifier { .. })));
    }
    let mut forged = rebuild(&b, &m, Outcome::Reproduced);
    forged.signature[5] ^= 1;
    assert!(matches!(check(&block(vec![forged]), &[]), Err(ReleaseError::BadRebuildSignature { .. })));
    // A failure's reason is the rebuilder's to fill: bounded, as every witness keeps it.
    let long = rebuild(&b, &m, Outcome::Failed { reason: "x".repeat(MAX_REBUILD_ATTESTATION_BYTES) });
    assert!(matches!(check(&block(vec![long]), &[]), Err(ReleaseError::RebuildTooLarge { .. })));
    let many: Vec<Attestation> =
        (0..=MAX_REBUILDS_PER_BLOCK as u8).map(|i| rebuild(&key(100 + i), &m, Outcome::Reproduced)).collect();
    assert!(matches!(check(&block(many), &[]), Err(ReleaseError::TooManyRebuilds { .. })));
    let full: Vec<RebuildRecord> = (0..MAX_REBUILDS_PER_RELEASE as u16)
        .map(|i| {
            let mut seed = [9u8; 32];
            seed[..2].copy_from_slice(&i.to_be_bytes());
            RebuildRecord::of(&rebuild(&SecretKey::from_seed(&seed), &m, Outcome::Reproduced))
        })
        .collect();
    assert_eq!(
        check(&block(vec![rebuild(&a, &m, Outcome::Reproduced)]), &full),
        Err(ReleaseError::TooManyRebuilds { release: 3, limit: MAX_REBUILDS_PER_RELEASE })
    );
}

/// A summary is exactly the chain's evidence, compacted: each record names the rebuilder
/// (whose one signed attestation of the release it stands for), its verdict and confinement.
#[test]
fn a_rebuild_summary_is_the_evidence_compacted() {
    let m = manifest("1.0");
    let evidence =
        [rebuild(&key(40), &m, Outcome::Reproduced), rebuild(&key(41), &m, Outcome::Failed { reason: "oom".into() })];
    let summary = RebuildSummary::of(3, m.id(), &evidence);
    assert_eq!(summary.records[1].verdict, Verdict::Failed);
    let block = BlockId([5; 32]);
    let check =
        |s: &RebuildSummary| check_rebuild_summary(KIND_REBUILD_SUMMARY, &s.to_block_bytes(block), &summary, block);
    assert_eq!(check(&summary), Ok(summary.clone()));
    let short = RebuildSummary::of(3, m.id(), &evidence[..1]);
    assert!(matches!(
        check(&short),
        Err(ReleaseError::WrongRebuildSummary { reason, .. }) if reason.contains("1 records, the chain holds 2")
    ));
    let mut altered = summary.clone();
    altered.records[1].verdict = Verdict::Reproduced;
    assert!(check(&altered).is_err());
    let other = RebuildSummary::of(2, m.id(), &evidence);
    assert!(check(&other).is_err());
    // Another block id for the release, or an older encoding (kinds 8 and 7), is refused.
    let elsewhere =
        check_rebuild_summary(KIND_REBUILD_SUMMARY, &summary.to_block_bytes(BlockId([6; 32])), &summary, block);
    assert!(matches!(elsewhere, Err(ReleaseError::WrongRebuildSummary { reason, .. }) if reason.contains("block id")));
    let keyed = KeyedRebuildSummary::of(3, m.id(), &evidence);
    let unnamed = check_rebuild_summary(KIND_REBUILD_SUMMARY_UNNAMED, &keyed.to_bytes(), &summary, block);
    assert!(matches!(unnamed, Err(ReleaseError::WrongRebuildSummary { reason, .. }) if reason.contains("kind 7")));

    // Pinned (SPEC §11.8), kind 9: u64 varint release, the release's block id, the manifest
    // id, `Listed` (0), then per record the rebuilder id, the verdict and the isolation
    // (variant indices): 18 bytes a record.
    let one = RebuildSummary::of(3, m.id(), &evidence);
    let key40 = key(40).public_key().to_bytes();
    let key41 = key(41).public_key().to_bytes();
    let (id40, id41) = (RebuilderId::of(&key(40).public_key()).0, RebuilderId::of(&key(41).public_key()).0);
    let named = [&[3u8][..], &[5; 32], &m.id().0, &[0, 2], &id40, &[0, 1], &id41, &[2, 1]].concat();
    assert_eq!(one.to_block_bytes(block), named);
    assert_eq!(postcard::to_allocvec(&one.records[0]).unwrap().len(), 18);
    assert_eq!(RebuildSummary::from_block(KIND_REBUILD_SUMMARY, &named), Ok((one.clone(), Some(block))));
    assert_eq!(chainiac_release::names_block(KIND_REBUILD_SUMMARY, &named), Some((3, block)));
    assert_eq!(one.record_of(&key(41).public_key()).map(|r| r.verdict), Some(Verdict::Failed));
    assert_eq!(one.record_of(&key(42).public_key()), None);

    // Kind 8 (2026-12-02): the same with each whole key, 34 bytes a record; kind 7 without
    // the release's block id. Both still read, as the same records.
    let keyed_named = [&[3u8][..], &[5; 32], &m.id().0, &[2], &key40, &[0, 1], &key41, &[2, 1]].concat();
    assert_eq!(RebuildSummary::from_block(KIND_REBUILD_SUMMARY_KEYED, &keyed_named), Ok((one.clone(), Some(block))));
    assert_eq!(chainiac_release::names_block(KIND_REBUILD_SUMMARY_KEYED, &keyed_named), Some((3, block)));
    let expected = [&[3u8][..], &m.id().0, &[2], &key40, &[0, 1], &key41, &[2, 1]].concat();
    assert_eq!(keyed.to_bytes(), expected);
    assert_eq!(RebuildSummary::from_block(KIND_REBUILD_SUMMARY_UNNAMED, &expected), Ok((one.clone(), None)));
    assert_eq!(chainiac_release::names_block(KIND_REBUILD_SUMMARY_UNNAMED, &expected), None);
    // Each kind takes only its encoding.
    for (kind, bytes) in [
        (KIND_REBUILD_SUMMARY, &expected),
        (KIND_REBUILD_SUMMARY, &keyed_named),
        (KIND_REBUILD_SUMMARY_KEYED, &named),
        (KIND_REBUILD_SUMMARY_KEYED, &expected),
        (KIND_REBUILD_SUMMARY_UNNAMED, &named),
        (KIND_REBUILD_SUMMARY_UNNAMED, &keyed_named),
    ] {
        assert!(RebuildSummary::from_block(kind, bytes).is_err(), "kind {kind} read another encoding");
    }

    // Summary blocks appended before records lost their evidence digest still read (signed
    // blocks stay as they are), as the same records.
    let old = chainiac_release::RebuildSummaryWithDigests {
        release: 3,
        manifest: m.id(),
        records: keyed
            .records
            .iter()
            .map(|r| chainiac_release::RebuildRecordWithDigest {
                rebuilder: r.rebuilder,
                verdict: r.verdict,
                isolation: r.isolation,
                evidence: [7; 16],
            })
            .collect(),
    };
    let old_bytes = postcard::to_allocvec(&old).unwrap();
    assert_eq!(old_bytes.len(), expected.len() + 2 * 16);
    assert_eq!(KeyedRebuildSummary::from_bytes(&old_bytes), Ok(keyed.clone()));
    assert_eq!(RebuildSummary::of_block(KIND_REBUILD_SUMMARY_UNNAMED, &old_bytes), Ok(one.clone()));
    let mut short = old_bytes.clone();
    short.pop();
    assert!(KeyedRebuildSummary::from_bytes(&short).is_err(), "neither encoding");
}

/// Past 32 records a summary holds their counts and Merkle root (SPEC §11.8): a block of
/// fixed size whatever the number of rebuilders, checked against the evidence as a listed
/// one is; the tree proves each rebuilder's record and each other id's absence.
#[test]
fn a_summary_of_many_records_commits_to_them() {
    let m = manifest("1.0");
    let evidence: Vec<Attestation> = (0..=MAX_LISTED_REBUILDS as u8)
        .map(|i| {
            let outcome = if i % 5 == 0 { Outcome::Mismatch { artifacts: vec![] } } else { Outcome::Reproduced };
            rebuild(&key(100 + i), &m, outcome)
        })
        .collect();
    let listed = RebuildSummary::of(3, m.id(), &evidence[..MAX_LISTED_REBUILDS]);
    assert_eq!((listed.records.len(), listed.committed), (MAX_LISTED_REBUILDS, None));
    let summary = RebuildSummary::of(3, m.id(), &evidence);
    let committed = summary.committed.expect("33 records are committed");
    assert!(summary.records.is_empty());
    assert_eq!(summary.count(), 33);
    assert_eq!(committed.tally, Tally { reproduced_sandboxed: 26, reproduced_unconfined: 0, mismatch: 7, failed: 0 });
    // Pinned: `Committed` (1), the four counts (varints), the root.
    let block = BlockId([5; 32]);
    let bytes = summary.to_block_bytes(block);
    assert_eq!(bytes, [&[3u8][..], &[5; 32], &m.id().0, &[1, 26, 0, 7, 0], &committed.root].concat());
    assert_eq!(RebuildSummary::from_block(KIND_REBUILD_SUMMARY, &bytes), Ok((summary.clone(), Some(block))));
    assert_eq!(check_rebuild_summary(KIND_REBUILD_SUMMARY, &bytes, &summary, block), Ok(summary.clone()));
    // The records listed instead, or another root, are refused.
    let as_listed = RebuildSummary {
        committed: None,
        absent: Vec::new(),
        records: evidence.iter().map(RebuildRecord::of).collect(),
        ..summary.clone()
    };
    assert!(check_rebuild_summary(KIND_REBUILD_SUMMARY, &as_listed.to_block_bytes(block), &summary, block).is_err());
    // Clients and witnesses alike refuse, on decoding: 33 listed, 32 committed, or more
    // rebuilders than a release takes.
    let refused = |s: &RebuildSummary| RebuildSummary::from_block(KIND_REBUILD_SUMMARY, &s.to_block_bytes(block));
    assert!(refused(&as_listed).unwrap_err().contains("listed only up to 32"));
    let records: Vec<RebuildRecord> = evidence.iter().map(RebuildRecord::of).collect();
    let few = RebuildSummary { committed: Some(CommittedRecords::of(&records[..32])), ..summary.clone() };
    assert!(refused(&few).unwrap_err().contains("committed past that"));
    let mut too_many = summary.clone();
    too_many.committed.as_mut().unwrap().tally.reproduced_sandboxed = MAX_REBUILDS_PER_RELEASE as u32;
    assert!(refused(&too_many).unwrap_err().contains("more than the 4096"));
    let mut other_root = summary.clone();
    other_root.committed.as_mut().unwrap().root[0] ^= 1;
    assert!(check_rebuild_summary(KIND_REBUILD_SUMMARY, &other_root.to_block_bytes(block), &summary, block).is_err());
    // Each rebuilder's record is proven, and an id that attested nothing is proven absent.
    let tree = chainiac_release::RecordsTree::new(&records);
    assert_eq!(tree.commitment(), committed);
    for record in &records {
        let proof = tree.prove(&record.rebuilder);
        assert_eq!(committed.check(&record.rebuilder, &proof), Ok(Some(*record)));
    }
    let stranger = RebuilderId::of(&key(7).public_key());
    let proof = tree.prove(&stranger);
    assert!(matches!(proof, RecordProof::Absent { .. }));
    assert_eq!(committed.check(&stranger, &proof), Ok(None));
}

/// Found by review of 16-byte rebuilder ids: a summary names a rebuilder by an id, so a key
/// whose id is already recorded for the release is refused, in one block or after another,
/// as the same key would be, and the records stay one per id. The id is a hash of the key,
/// not its first bytes: `−A`, which anyone holding `A` can sign with, shares those (the
/// sign is in the last byte) and has another id.
#[test]
fn a_key_whose_rebuilder_id_is_recorded_is_refused_and_a_negated_key_is_another_rebuilder() {
    let f = fixture();
    let m = manifest("1.0");
    let released = release(&f, m.clone(), &[0, 1], &[0, 1]);
    let first = rebuild(&key(50), &m, Outcome::Reproduced);
    let second = rebuild(&key(51), &m, Outcome::Reproduced);
    let one = |attestations: Vec<Attestation>, recorded: &[RebuildRecord]| {
        check_rebuilds(&Rebuilds { release: 3, attestations }, Some((3, &released)), recorded, &[])
    };
    // A record with `second`'s id (finding another key with it is a 2^64 search at best).
    let mut taken = RebuildRecord::of(&first);
    taken.rebuilder = RebuilderId::of(&second.body.verifier);
    assert!(matches!(one(vec![second.clone()], &[taken]), Err(ReleaseError::DuplicateRebuild { .. })));
    assert_eq!(one(vec![second.clone()], &[RebuildRecord::of(&first)]), Ok(()));
    assert_eq!(one(vec![first.clone(), second.clone()], &[]), Ok(()));

    // −A: the same first 31 bytes, the sign bit flipped; a valid key of its own id.
    let a = first.body.verifier;
    let mut bytes = a.to_bytes();
    bytes[31] ^= 0x80;
    let negated = chainiac_cosi::PublicKey::from_bytes(&bytes).expect("−A is a point");
    assert_ne!(RebuilderId::of(&negated), RebuilderId::of(&a));
    // Pinned: SHA3-256(tagged("chainiac/v1/release/rebuilder-id") || key), first 16 bytes.
    let digest = chainiac_cosi::hash::sha3_256("chainiac/v1/release/rebuilder-id", &[a.as_bytes()]);
    assert_eq!(RebuilderId::of(&a).0[..], digest[..16]);
}

/// Found by review: clients must refuse what witnesses refuse, or a colluding committee
/// could put in force a policy no client can read (and so no yank it lists). A yank past
/// the cap is refused by both; so is a yank whose new policy is encoded non-canonically
/// (the signatures do not cover its bytes, so a relay could choose another block id).
#[test]
fn clients_refuse_a_yank_past_the_cap_or_in_non_canonical_bytes() {
    let f = fixture();
    let (d, rule) = (&f.developers, |old: &[u8], new: &[u8], payload: &[u8]| {
        chainiac_release::policy_rule(&chainiac_skipchain::BlockId(CHAIN), old, new, payload)
    });
    let mut full = f.policy.clone();
    full.yanked = (0..MAX_YANKED).map(|i| a_yank(&format!("0.{i}"))).collect();
    assert_eq!(Policy::from_bytes(&full.to_bytes()).map(|_| ()), Ok(()));
    let (new, payload) = yank_block(&full, &a_yank("1.0"), &[&d[0], &d[1]]);
    let refused = rule(&full.to_bytes(), &new, &payload).unwrap_err();
    assert!(refused.contains("the most it takes"), "{refused}");
    assert!(matches!(check_yank_of(&full, &new, &payload), Err(ReleaseError::BadYank { .. })));

    // The version 1 as a two-byte varint (`81 00`) instead of `01`: same policy, other bytes.
    let (new, payload) = yank_block(&f.policy, &a_yank("1.0"), &[&d[0], &d[1]]);
    let canonical = Policy::from_bytes(&new).unwrap();
    let tail = postcard::to_allocvec(&canonical.yanked).unwrap();
    let at = new.len() - tail.len() - 1;
    assert_eq!(new[at], 1, "the version precedes the yanks");
    let mut other = new[..at].to_vec();
    other.extend_from_slice(&[0x81, 0x00]);
    other.extend_from_slice(&tail);
    assert_eq!(Policy::from_bytes(&other).unwrap(), canonical, "postcard reads both");
    assert!(rule(&f.policy.to_bytes(), &other, &payload).is_err());
    assert_eq!(check_yank_of(&f.policy, &other, &payload), Err(ReleaseError::NotAYank));
    assert_eq!(rule(&f.policy.to_bytes(), &new, &payload), Ok(()));
}
