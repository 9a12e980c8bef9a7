//! The rules a witness applies before it cosigns a release or a policy change. Each refusal
//! names the rule that failed.

use crate::model::{
    ArtifactMismatch, Attestation, BuildIsolation, Manifest, Outcome, Policy, PolicyError, ReleasePayload,
};
use chainiac_cosi::PublicKey;
use chainiac_skipchain::block::policy_hash;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release payload does not decode: {0}")]
    Decode(String),
    #[error("the policy in force: {0}")]
    Policy(PolicyError),
    #[error("manifest is for project {got:?}, this chain is {expected:?}")]
    WrongProject { expected: String, got: String },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("version {0} was already released on this chain")]
    VersionExists(String),
    #[error("manifest time {manifest_ms} ms is outside [{earliest_ms}, {latest_ms}] around the block time")]
    Time { manifest_ms: u64, earliest_ms: u64, latest_ms: u64 },
    #[error("developer signature by {key}, which is not a developer key of the policy in force")]
    UnknownDeveloperKey { key: String },
    #[error("developer signature by {key} is not valid for this manifest")]
    BadDeveloperSignature { key: String },
    #[error("developer {key} signed twice: each key signs once")]
    DuplicateDeveloper { key: String },
    #[error("verifier {key} attested twice: each verifier attests once")]
    DuplicateAttestation { key: String },
    #[error("root key {key} signed twice: each key signs once")]
    DuplicateRootSignature { key: String },
    #[error("{valid} distinct valid developer signatures; the policy requires {threshold}")]
    DeveloperThreshold { valid: usize, threshold: u32 },
    #[error("attestation by {key}, which is not a verifier of the policy in force")]
    UnknownVerifier { key: String },
    #[error("attestation by {key} has an invalid signature")]
    BadAttestation { key: String },
    #[error("attestation by {key} is about another manifest")]
    AttestationForAnotherManifest { key: String },
    #[error("{reproduced} verifiers reproduced the build; the policy requires {threshold} ({disagreements})")]
    NotReproduced { reproduced: usize, threshold: u32, disagreements: String },
    #[error("policy change payload does not decode: {0}")]
    DecodeChange(String),
    #[error("a policy change must carry the new policy")]
    MissingNewPolicy,
    #[error("the new policy: {0}")]
    NewPolicy(PolicyError),
    #[error("the new policy is for project {got:?}, this chain is {expected:?}")]
    ProjectRenamed { expected: String, got: String },
    #[error("root signature by {key}, which is not a root key of the policy in force")]
    UnknownRootKey { key: String },
    #[error("root signature by {key} is not valid for this change")]
    BadRootSignature { key: String },
    #[error("{valid} distinct valid root signatures; the policy requires {threshold}")]
    RootThreshold { valid: usize, threshold: u32 },
    #[error("the old policy's root threshold {threshold} of {keys} root keys authorizes no change")]
    DegenerateRootThreshold { threshold: u32, keys: usize },
    #[error("the new policy's version {new} does not follow the old one's {old}: each change raises it")]
    VersionNotRaised { old: u64, new: u64 },
}

/// How far a manifest's time may be from the block's: up to `skew_ms` ahead of it (clocks
/// differ) and up to `delay_ms` behind it (builds and signatures take time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub skew_ms: u64,
    pub delay_ms: u64,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow { skew_ms: 5 * 60_000, delay_ms: 24 * 3_600_000 }
    }
}

/// Checks a manifest's own shape: a version, a source, a recipe, and artifacts with safe,
/// distinct relative paths.
pub fn check_manifest(manifest: &Manifest) -> Result<(), ReleaseError> {
    let fail = |m: String| Err(ReleaseError::Manifest(m));
    if manifest.version.is_empty() || manifest.version.len() > 128 {
        return fail("version must be 1 to 128 bytes".into());
    }
    if manifest.recipe.argv.is_empty() {
        return fail("the build recipe has no command".into());
    }
    if manifest.artifacts.is_empty() {
        return fail("no expected artifacts".into());
    }
    let mut paths = HashSet::new();
    for path in std::iter::once(&manifest.recipe.workdir).chain(manifest.artifacts.iter().map(|a| &a.path)) {
        if !is_safe_relative(path) {
            return fail(format!("path {path:?} is not a plain relative path"));
        }
    }
    for artifact in &manifest.artifacts {
        if !paths.insert(&artifact.path) {
            return fail(format!("artifact {:?} is listed twice", artifact.path));
        }
    }
    Ok(())
}

/// A relative path with no `..`, no root, no empty or `.` components (`""` and `"."` for
/// the working directory itself are allowed).
pub fn is_safe_relative(path: &str) -> bool {
    if path.is_empty() || path == "." {
        return true;
    }
    !path.starts_with('/') && !path.contains('\0') && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Checks a release block's payload under the policy in force (its encoded bytes) and
/// returns the decoded payload. `is_released` says whether a version is already on the chain.
pub fn check_release(
    policy: &[u8],
    payload: &[u8],
    block_time_ms: u64,
    window: TimeWindow,
    is_released: impl Fn(&str) -> bool,
) -> Result<ReleasePayload, ReleaseError> {
    let policy = Policy::from_bytes(policy).map_err(ReleaseError::Policy)?;
    let release = ReleasePayload::from_bytes(payload).map_err(ReleaseError::Decode)?;
    let manifest = &release.manifest;
    if manifest.project != policy.project {
        return Err(ReleaseError::WrongProject { expected: policy.project, got: manifest.project.clone() });
    }
    check_manifest(manifest)?;
    if is_released(&manifest.version) {
        return Err(ReleaseError::VersionExists(manifest.version.clone()));
    }
    let earliest_ms = block_time_ms.saturating_sub(window.delay_ms);
    let latest_ms = block_time_ms.saturating_add(window.skew_ms);
    if manifest.time_ms < earliest_ms || manifest.time_ms > latest_ms {
        return Err(ReleaseError::Time { manifest_ms: manifest.time_ms, earliest_ms, latest_ms });
    }
    let id = manifest.id();
    let mut signers = HashSet::new();
    for signature in &release.developer_signatures {
        if !policy.developers.contains(&signature.key) {
            return Err(ReleaseError::UnknownDeveloperKey { key: signature.key.to_string() });
        }
        if !signers.insert(signature.key) {
            return Err(ReleaseError::DuplicateDeveloper { key: signature.key.to_string() });
        }
        if !signature.verify(&id) {
            return Err(ReleaseError::BadDeveloperSignature { key: signature.key.to_string() });
        }
    }
    if signers.len() < policy.release_threshold as usize {
        return Err(ReleaseError::DeveloperThreshold { valid: signers.len(), threshold: policy.release_threshold });
    }
    let mut reproduced = HashSet::new();
    let mut attested = HashSet::new();
    let mut disagreements = Vec::new();
    for attestation in &release.attestations {
        let key = attestation.body.verifier;
        if !policy.is_verifier(&key) {
            return Err(ReleaseError::UnknownVerifier { key: key.to_string() });
        }
        // One verifier, one say: a second attestation would count twice towards every
        // client's and policy's bar.
        if !attested.insert(key) {
            return Err(ReleaseError::DuplicateAttestation { key: key.to_string() });
        }
        if !attestation.verify() {
            return Err(ReleaseError::BadAttestation { key: key.to_string() });
        }
        if attestation.body.manifest != id {
            return Err(ReleaseError::AttestationForAnotherManifest { key: key.to_string() });
        }
        match &attestation.body.outcome {
            Outcome::Reproduced
                if policy.require_isolation && attestation.body.isolation != BuildIsolation::Namespaces =>
            {
                disagreements.push(format!(
                    "{} reproduced it outside a sandbox (isolation {}), and the policy counts only sandboxed builds",
                    short(&key),
                    attestation.body.isolation.name()
                ))
            }
            Outcome::Reproduced => {
                reproduced.insert(key);
            }
            Outcome::Mismatch { artifacts } => disagreements.push(format!(
                "{} got different {}",
                short(&key),
                artifacts.iter().map(|a| describe_mismatch(&release.manifest, a)).collect::<Vec<_>>().join(", ")
            )),
            Outcome::Failed { reason } => disagreements.push(format!("{} failed: {reason}", short(&key))),
        }
    }
    if reproduced.len() < policy.verifier_threshold as usize {
        let disagreements =
            if disagreements.is_empty() { "no other attestation".into() } else { disagreements.join("; ") };
        return Err(ReleaseError::NotReproduced {
            reproduced: reproduced.len(),
            threshold: policy.verifier_threshold,
            disagreements,
        });
    }
    Ok(release)
}

fn short(key: &PublicKey) -> String {
    key.to_string()[..16].to_string()
}

/// `path (sha3 <got>…, <n> bytes; the manifest's <expected>…, <m> bytes)`: what a release
/// manager compares across verifiers to tell one odd machine from an unreproducible build.
fn describe_mismatch(manifest: &Manifest, mismatch: &ArtifactMismatch) -> String {
    let expected_size = manifest.artifacts.iter().find(|a| a.path == mismatch.path).map(|a| a.size);
    let got = match (mismatch.got, mismatch.got_size) {
        (Some(hash), Some(size)) => format!("sha3 {}…, {size} bytes", hex::encode(&hash[..8])),
        (Some(hash), None) => format!("sha3 {}…", hex::encode(&hash[..8])),
        _ => "not built".to_string(),
    };
    let expected = match expected_size {
        Some(size) => format!("{}…, {size} bytes", hex::encode(&mismatch.expected[..8])),
        None => format!("{}…", hex::encode(&mismatch.expected[..8])),
    };
    format!("{} ({got}; the manifest's {expected})", mismatch.path)
}

/// Checks a policy-change block: it carries the new policy (`new_policy`), which is valid and
/// for the same project, with a higher version, and the payload holds at least the root
/// threshold of distinct valid signatures by root keys of the policy in force
/// (`old_policy`) over (chain, old policy hash, new policy hash). Returns the new policy.
pub fn check_policy_change(
    chain: &[u8; 32],
    old_policy: &[u8],
    new_policy: Option<&[u8]>,
    payload: &[u8],
) -> Result<Policy, ReleaseError> {
    Policy::from_bytes(old_policy).map_err(ReleaseError::Policy)?;
    let new_bytes = new_policy.ok_or(ReleaseError::MissingNewPolicy)?;
    let new = Policy::from_bytes(new_bytes).map_err(ReleaseError::NewPolicy)?;
    check_transition(chain, old_policy, new_bytes, payload)?;
    Ok(new)
}

/// A policy's fields as bytes, keys undecoded: what a transition's check reads (decoding
/// every key strictly costs a point decompression and a torsion check each, and a client
/// checks every policy change of every chain it follows).
#[derive(serde::Deserialize)]
struct PolicyFields {
    project: String,
    _developers: Vec<KeyBytes>,
    _release_threshold: u32,
    root_keys: Vec<KeyBytes>,
    root_threshold: u32,
    _verifiers: Vec<(KeyBytes, String)>,
    _verifier_threshold: u32,
    _require_isolation: bool,
    _max_age_ms: u64,
    version: u64,
}

#[derive(serde::Deserialize, PartialEq, Eq, Hash, Clone, Copy)]
struct KeyBytes(#[serde(with = "chainiac_cosi::bytes")] [u8; 32]);

#[derive(serde::Deserialize)]
struct RootSignatureFields {
    key: KeyBytes,
    #[serde(with = "chainiac_cosi::bytes")]
    signature: [u8; 64],
}

/// The transition rules both witnesses and clients apply (one home): same project, a
/// higher version, and the old root threshold's distinct signatures over this chain and
/// these two policies. Only the root keys that signed are decoded.
fn check_transition(chain: &[u8; 32], old_bytes: &[u8], new_bytes: &[u8], payload: &[u8]) -> Result<(), ReleaseError> {
    let decode = |e: chainiac_skipchain::DecodeError| PolicyError::Decode(e.to_string());
    let old: PolicyFields = chainiac_skipchain::decode_exact(old_bytes).map_err(|e| ReleaseError::Policy(decode(e)))?;
    let new: PolicyFields =
        chainiac_skipchain::decode_exact(new_bytes).map_err(|e| ReleaseError::NewPolicy(decode(e)))?;
    if new.project != old.project {
        return Err(ReleaseError::ProjectRenamed { expected: old.project, got: new.project });
    }
    if new.version <= old.version {
        return Err(ReleaseError::VersionNotRaised { old: old.version, new: new.version });
    }
    // A degenerate old policy (no root threshold, or one its keys cannot meet) authorizes
    // nothing: checked here, where policies are read without `Policy::check`.
    if old.root_threshold == 0 || old.root_threshold as usize > old.root_keys.len() {
        return Err(ReleaseError::DegenerateRootThreshold { threshold: old.root_threshold, keys: old.root_keys.len() });
    }
    let change: Vec<RootSignatureFields> =
        chainiac_skipchain::decode_exact(payload).map_err(|e| ReleaseError::DecodeChange(e.to_string()))?;
    let message = crate::model::RootSignature::message(chain, &policy_hash(old_bytes), &policy_hash(new_bytes));
    let mut signers = HashSet::new();
    for signature in &change {
        let name = || hex(&signature.key.0);
        if !old.root_keys.contains(&signature.key) {
            return Err(ReleaseError::UnknownRootKey { key: name() });
        }
        if !signers.insert(signature.key) {
            return Err(ReleaseError::DuplicateRootSignature { key: name() });
        }
        let valid =
            PublicKey::from_bytes(&signature.key.0).is_ok_and(|key| key.verify_ed25519(&message, &signature.signature));
        if !valid {
            return Err(ReleaseError::BadRootSignature { key: name() });
        }
    }
    if signers.len() < old.root_threshold as usize {
        return Err(ReleaseError::RootThreshold { valid: signers.len(), threshold: old.root_threshold });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The rule a client passes to every proof it checks ([`chainiac_skipchain::PolicyRule`]):
/// a change away from a release policy must meet the transition rules witnesses apply
/// (same project, a higher version, the old root threshold's signatures over this chain
/// and both policies). Chains whose policy is not a release policy (timelines, raw chains)
/// have no rule to apply, except that they never take a release policy: what a chain is
/// follows from its genesis, so a committee cannot turn a chain no root key governs into one
/// whose releases clients would check against keys of the committee's choice. The new
/// policy's keys are not decoded here: a client decodes a policy strictly when it checks a
/// release under it.
pub fn policy_rule(chain: &chainiac_skipchain::ChainId, old: &[u8], new: &[u8], payload: &[u8]) -> Result<(), String> {
    let is_release = |policy: &[u8]| chainiac_skipchain::decode_exact::<PolicyFields>(policy).is_ok();
    if !is_release(old) {
        if is_release(new) {
            return Err(
                "a chain whose policy is not a release policy cannot take one: its genesis decides what it is".into()
            );
        }
        return Ok(());
    }
    check_transition(&chain.0, old, new, payload).map_err(|e| e.to_string())
}

/// How often a verifier agreed with the majority of the verifiers that attested the same
/// releases: a verifier that keeps disagreeing is broken or compromised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agreement {
    pub agreed: u64,
    pub disagreed: u64,
}

/// Tallies agreement over a set of releases' attestations. For each release the majority
/// outcome (reproduced or not) is what most verifiers said; ties count as agreement for all.
pub fn tally_agreement<'a>(releases: impl IntoIterator<Item = &'a [Attestation]>) -> HashMap<PublicKey, Agreement> {
    let mut tally: HashMap<PublicKey, Agreement> = HashMap::new();
    for attestations in releases {
        let reproduced = attestations.iter().filter(|a| a.body.outcome == Outcome::Reproduced).count();
        let others = attestations.len() - reproduced;
        for a in attestations {
            let said_reproduced = a.body.outcome == Outcome::Reproduced;
            let entry = tally.entry(a.body.verifier).or_default();
            let with_majority = if said_reproduced { reproduced >= others } else { others >= reproduced };
            if with_majority {
                entry.agreed += 1;
            } else {
                entry.disagreed += 1;
            }
        }
    }
    tally
}
