//! The rules a witness applies before it cosigns a release or a policy change. Each refusal
//! names the rule that failed.

use crate::model::{
    ArtifactMismatch, BuildIsolation, Manifest, Outcome, Policy, PolicyError, RebuildSummary, RebuilderId, Rebuilds,
    ReleasePayload, Yank, YankSignature, MAX_REBUILDS_PER_BLOCK, MAX_REBUILDS_PER_RELEASE,
    MAX_REBUILD_ATTESTATION_BYTES, MAX_YANKED, MAX_YANK_REASON,
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
    #[error("a yank must carry the new policy: the old one with one yank added and its version raised by one")]
    NotAYank,
    #[error("yank of {0:?}: this chain has no such release")]
    YankOfUnknownRelease(String),
    #[error("release {0:?} is already yanked")]
    AlreadyYanked(String),
    #[error("yank of {version:?}: {reason}")]
    BadYank { version: String, reason: String },
    #[error("yank time {yank_ms} ms is outside [{earliest_ms}, {latest_ms}] around the block time")]
    YankTime { yank_ms: u64, earliest_ms: u64, latest_ms: u64 },
    #[error("yank payload does not decode: {0}")]
    DecodeYank(String),
    #[error("yank signed by {key}, which is neither a developer nor a root key of the policy in force")]
    UnknownYankKey { key: String },
    #[error("yank signature by {key} is not valid for this yank of this chain and policy")]
    BadYankSignature { key: String },
    #[error("key {key} signed the yank twice: each key signs once")]
    DuplicateYankSignature { key: String },
    #[error("{developers} developer keys and {roots} root keys signed the yank; it takes {release_threshold} developer keys or {root_threshold} root keys")]
    YankThreshold { developers: usize, release_threshold: u32, roots: usize, root_threshold: u32 },
    #[error("rebuilds payload does not decode: {0}")]
    DecodeRebuilds(String),
    #[error("block {0} of this chain is not a release")]
    NotARelease(u64),
    #[error("a rebuilds block carries at least one attestation")]
    NoRebuilds,
    #[error("rebuilder {key}'s attestation is about another manifest than release {release}'s")]
    RebuildOfAnotherManifest { key: String, release: u64 },
    #[error("rebuilder {key}'s attestation has an invalid signature")]
    BadRebuildSignature { key: String },
    #[error(
        "rebuilder {key} (or another key with its rebuilder id) already attested release {release}: one \
         attestation per rebuilder and release"
    )]
    DuplicateRebuild { key: String, release: u64 },
    #[error("release {release}: more than {limit} rebuild attestations")]
    TooManyRebuilds { release: u64, limit: usize },
    #[error("rebuilder {key}'s attestation is {size} bytes, more than the 4096 an attestation may take")]
    RebuildTooLarge { key: String, size: usize },
    #[error("{key} is a verifier of the policy: it attests in release blocks, not as a rebuilder")]
    RebuildByAVerifier { key: String },
    #[error("rebuilds are taken for the chain's newest release only (block {newest}), not block {release}")]
    NotTheNewestRelease { release: u64, newest: u64 },
    #[error("rebuild summary payload does not decode: {0}")]
    DecodeRebuildSummary(String),
    #[error("the rebuild summary of release {release} is not what the chain's rebuilds blocks hold ({reason})")]
    WrongRebuildSummary { release: u64, reason: String },
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
#[derive(serde::Serialize, serde::Deserialize, Clone, PartialEq, Eq)]
struct PolicyFields {
    project: String,
    developers: Vec<KeyBytes>,
    release_threshold: u32,
    root_keys: Vec<KeyBytes>,
    root_threshold: u32,
    verifiers: Vec<(KeyBytes, String)>,
    verifier_threshold: u32,
    require_isolation: bool,
    max_age_ms: u64,
    version: u64,
    yanked: Vec<Yank>,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Eq, Hash, Clone, Copy)]
struct KeyBytes(#[serde(with = "chainiac_cosi::bytes")] [u8; 32]);

/// A root signature's or a yank signature's bytes (the two payloads encode alike).
#[derive(serde::Deserialize)]
struct SignatureFields {
    key: KeyBytes,
    #[serde(with = "chainiac_cosi::bytes")]
    signature: [u8; 64],
}

fn decode_policies(old_bytes: &[u8], new_bytes: &[u8]) -> Result<(PolicyFields, PolicyFields), ReleaseError> {
    let decode = |e: chainiac_skipchain::DecodeError| PolicyError::Decode(e.to_string());
    let old = chainiac_skipchain::decode_exact(old_bytes).map_err(|e| ReleaseError::Policy(decode(e)))?;
    let new = chainiac_skipchain::decode_exact(new_bytes).map_err(|e| ReleaseError::NewPolicy(decode(e)))?;
    Ok((old, new))
}

/// The transition rules both witnesses and clients apply (one home): same project, a
/// higher version, and the old root threshold's distinct signatures over this chain and
/// these two policies. Only the root keys that signed are decoded.
fn check_transition(chain: &[u8; 32], old_bytes: &[u8], new_bytes: &[u8], payload: &[u8]) -> Result<(), ReleaseError> {
    let (old, new) = decode_policies(old_bytes, new_bytes)?;
    check_root_transition(chain, old_bytes, new_bytes, &old, &new, payload)
}

fn check_root_transition(
    chain: &[u8; 32],
    old_bytes: &[u8],
    new_bytes: &[u8],
    old: &PolicyFields,
    new: &PolicyFields,
    payload: &[u8],
) -> Result<(), ReleaseError> {
    if new.project != old.project {
        return Err(ReleaseError::ProjectRenamed { expected: old.project.clone(), got: new.project.clone() });
    }
    if new.version <= old.version {
        return Err(ReleaseError::VersionNotRaised { old: old.version, new: new.version });
    }
    // A degenerate old policy (no root threshold, or one its keys cannot meet) authorizes
    // nothing: checked here, where policies are read without `Policy::check`.
    if old.root_threshold == 0 || old.root_threshold as usize > old.root_keys.len() {
        return Err(ReleaseError::DegenerateRootThreshold { threshold: old.root_threshold, keys: old.root_keys.len() });
    }
    let change: Vec<SignatureFields> =
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

/// The yank `new` (encoded as `new_bytes`) adds to `old`, if `new` is exactly `old` with one
/// yank appended and the version raised by one, in canonical bytes: the only change
/// developers may make to a policy. (Yank signatures do not cover the new policy's bytes,
/// so a relay must not be able to re-encode them into another block id.)
fn added_yank<'a>(old: &PolicyFields, new: &'a PolicyFields, new_bytes: &[u8]) -> Option<&'a Yank> {
    let yank = new.yanked.last()?;
    let mut expected = old.clone();
    expected.version = old.version.checked_add(1)?;
    expected.yanked.push(yank.clone());
    let canonical = postcard::to_allocvec(new).ok()? == new_bytes;
    (expected == *new && canonical).then_some(yank)
}

/// A yank's own rules and its signatures: a new version, a well-formed yank, and the
/// old policy's release threshold of developer keys or its root threshold of root keys
/// (not the two summed), each key once, over this chain, the old policy and the yank.
fn check_yank_transition(
    chain: &[u8; 32],
    old_bytes: &[u8],
    old: &PolicyFields,
    yank: &Yank,
    payload: &[u8],
) -> Result<(), ReleaseError> {
    if old.yanked.iter().any(|y| y.version == yank.version) {
        return Err(ReleaseError::AlreadyYanked(yank.version.clone()));
    }
    let bad = |reason: &str| Err(ReleaseError::BadYank { version: yank.version.clone(), reason: reason.into() });
    if old.yanked.len() >= MAX_YANKED {
        return bad(&format!(
            "the policy already lists {MAX_YANKED} yanks, the most it takes (the root keys can drop old ones)"
        ));
    }
    if yank.version.is_empty() || yank.version.len() > 128 {
        return bad("a version is 1 to 128 bytes");
    }
    if yank.reason.is_empty() || yank.reason.len() > MAX_YANK_REASON {
        return bad("the reason must be 1 to 256 bytes");
    }
    let signatures: Vec<SignatureFields> =
        chainiac_skipchain::decode_exact(payload).map_err(|e| ReleaseError::DecodeYank(e.to_string()))?;
    let message = YankSignature::message(chain, &policy_hash(old_bytes), yank);
    let (mut developers, mut roots, mut signers) = (0, 0, HashSet::new());
    for signature in &signatures {
        let name = || hex(&signature.key.0);
        let (is_developer, is_root) = (old.developers.contains(&signature.key), old.root_keys.contains(&signature.key));
        if !is_developer && !is_root {
            return Err(ReleaseError::UnknownYankKey { key: name() });
        }
        if !signers.insert(signature.key) {
            return Err(ReleaseError::DuplicateYankSignature { key: name() });
        }
        let valid =
            PublicKey::from_bytes(&signature.key.0).is_ok_and(|key| key.verify_ed25519(&message, &signature.signature));
        if !valid {
            return Err(ReleaseError::BadYankSignature { key: name() });
        }
        developers += usize::from(is_developer);
        roots += usize::from(is_root);
    }
    // A threshold of 0 (a degenerate policy) authorizes nothing, as for root changes.
    let meets = |count: usize, threshold: u32| threshold > 0 && count >= threshold as usize;
    if !meets(developers, old.release_threshold) && !meets(roots, old.root_threshold) {
        return Err(ReleaseError::YankThreshold {
            developers,
            release_threshold: old.release_threshold,
            roots,
            root_threshold: old.root_threshold,
        });
    }
    Ok(())
}

/// Checks a yank block (SPEC §11.7) under the policy in force (`old_policy`): it carries
/// the new policy, which is the old one with one yank added and its version raised by one;
/// the yank names a release of this chain (`is_released`) not yanked before, within the
/// time window of the block; and the old policy's developer or root threshold signed it.
/// Returns the yank.
pub fn check_yank(
    chain: &[u8; 32],
    old_policy: &[u8],
    new_policy: Option<&[u8]>,
    payload: &[u8],
    block_time_ms: u64,
    window: TimeWindow,
    is_released: impl Fn(&str) -> bool,
) -> Result<Yank, ReleaseError> {
    Policy::from_bytes(old_policy).map_err(ReleaseError::Policy)?;
    let new_bytes = new_policy.ok_or(ReleaseError::NotAYank)?;
    let (old, new) = decode_policies(old_policy, new_bytes)?;
    let yank = added_yank(&old, &new, new_bytes).ok_or(ReleaseError::NotAYank)?;
    if old.yanked.iter().any(|y| y.version == yank.version) {
        return Err(ReleaseError::AlreadyYanked(yank.version.clone()));
    }
    if !is_released(&yank.version) {
        return Err(ReleaseError::YankOfUnknownRelease(yank.version.clone()));
    }
    let earliest_ms = block_time_ms.saturating_sub(window.delay_ms);
    let latest_ms = block_time_ms.saturating_add(window.skew_ms);
    if yank.time_ms < earliest_ms || yank.time_ms > latest_ms {
        return Err(ReleaseError::YankTime { yank_ms: yank.time_ms, earliest_ms, latest_ms });
    }
    check_yank_transition(chain, old_policy, &old, yank, payload)?;
    // Decoded strictly last: its keys are the old policy's, checked when it came in force.
    Policy::from_bytes(new_bytes).map_err(ReleaseError::NewPolicy)?;
    Ok(yank.clone())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The rule a client passes to every proof it checks ([`chainiac_skipchain::PolicyRule`]):
/// a change away from a release policy must meet the transition rules witnesses apply
/// (same project, a higher version, the old root threshold's signatures over this chain
/// and both policies), or be a yank (the old policy with one yank added and its version
/// raised by one) signed by the old policy's developer or root threshold (SPEC §11.7; a
/// proof's list of policies carries no block kinds, so the change itself says which). Chains whose policy is not a release policy (timelines, raw chains)
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
    let (old_fields, new_fields) = decode_policies(old, new).map_err(|e| e.to_string())?;
    let as_root_change = check_root_transition(&chain.0, old, new, &old_fields, &new_fields, payload);
    match (as_root_change, added_yank(&old_fields, &new_fields, new)) {
        (Ok(()), _) => Ok(()),
        (Err(root), Some(yank)) => check_yank_transition(&chain.0, old, &old_fields, yank, payload)
            .map_err(|as_yank| format!("{as_yank} (as a root-signed change: {root})")),
        (Err(root), None) => Err(root.to_string()),
    }
}

/// The rules of a rebuilds block (kind 6, SPEC §11.8) that need nothing but the block: at
/// least one and at most [`MAX_REBUILDS_PER_BLOCK`] attestations, each at most
/// [`MAX_REBUILD_ATTESTATION_BYTES`] encoded and validly signed, no key twice. Checked for
/// every block, those caught up on included.
pub fn check_rebuilds_alone(rebuilds: &Rebuilds) -> Result<(), ReleaseError> {
    if rebuilds.attestations.is_empty() {
        return Err(ReleaseError::NoRebuilds);
    }
    if rebuilds.attestations.len() > MAX_REBUILDS_PER_BLOCK {
        return Err(ReleaseError::TooManyRebuilds { release: rebuilds.release, limit: MAX_REBUILDS_PER_BLOCK });
    }
    let mut seen = HashSet::new();
    for attestation in &rebuilds.attestations {
        let key = attestation.body.verifier;
        let size = attestation.to_bytes().len();
        if size > MAX_REBUILD_ATTESTATION_BYTES {
            return Err(ReleaseError::RebuildTooLarge { key: key.to_string(), size });
        }
        // By whole key here, as witnesses of before checked it: blocks caught up on take this
        // check too. `check_rebuilds`, before voting, also refuses a shared id.
        if !seen.insert(key) {
            return Err(ReleaseError::DuplicateRebuild { key: key.to_string(), release: rebuilds.release });
        }
        if !attestation.verify() {
            return Err(ReleaseError::BadRebuildSignature { key: key.to_string() });
        }
    }
    Ok(())
}

/// The rules of a rebuilds block that read the chain, after [`check_rebuilds_alone`]: it
/// names the chain's newest release (`release`: that block's index and payload, if the
/// chain has a release), so a summary at a chain's head is always about its newest release
/// and cannot take a client back to an older one; each attestation is about that release's
/// manifest, by a key that is not one of the policy's verifiers (`policy_verifiers`; they
/// attest in the release block), did not attest it in the release block nor in an earlier
/// rebuilds block (`recorded`); and the release keeps at most
/// [`MAX_REBUILDS_PER_RELEASE`] rebuilders.
pub fn check_rebuilds(
    rebuilds: &Rebuilds,
    release: Option<(u64, &ReleasePayload)>,
    recorded: &[crate::model::RebuildRecord],
    policy_verifiers: &[PublicKey],
) -> Result<(), ReleaseError> {
    let index = rebuilds.release;
    let release = match release {
        Some((newest, release)) if newest == index => release,
        Some((newest, _)) => return Err(ReleaseError::NotTheNewestRelease { release: index, newest }),
        None => return Err(ReleaseError::NotARelease(index)),
    };
    if recorded.len() + rebuilds.attestations.len() > MAX_REBUILDS_PER_RELEASE {
        return Err(ReleaseError::TooManyRebuilds { release: index, limit: MAX_REBUILDS_PER_RELEASE });
    }
    let id = release.manifest.id();
    // By id: a summary names each rebuilder by its id, so two keys sharing one would be one.
    let mut seen: HashSet<RebuilderId> =
        release.attestations.iter().map(|a| RebuilderId::of(&a.body.verifier)).collect();
    seen.extend(recorded.iter().map(|r| r.rebuilder));
    for attestation in &rebuilds.attestations {
        let key = attestation.body.verifier;
        if attestation.body.manifest != id {
            return Err(ReleaseError::RebuildOfAnotherManifest { key: key.to_string(), release: index });
        }
        if policy_verifiers.contains(&key) {
            return Err(ReleaseError::RebuildByAVerifier { key: key.to_string() });
        }
        if !seen.insert(RebuilderId::of(&key)) {
            return Err(ReleaseError::DuplicateRebuild { key: key.to_string(), release: index });
        }
    }
    Ok(())
}

/// Checks a fresh rebuild summary block: of kind 9, `expected` — the summary over every
/// attestation the chain's rebuilds blocks hold about its release — with `release_block`,
/// the id of that release's block on the chain.
pub fn check_rebuild_summary(
    kind: u16,
    payload: &[u8],
    expected: &RebuildSummary,
    release_block: chainiac_skipchain::BlockId,
) -> Result<RebuildSummary, ReleaseError> {
    let (summary, named) = RebuildSummary::from_block(kind, payload).map_err(ReleaseError::DecodeRebuildSummary)?;
    let wrong = |reason: &str| ReleaseError::WrongRebuildSummary { release: summary.release, reason: reason.into() };
    if kind != crate::KIND_REBUILD_SUMMARY {
        return Err(wrong(&format!("a summary of kind {kind}, no longer appended (witnesses append kind 9)")));
    }
    if summary.release != expected.release || summary.manifest != expected.manifest {
        return Err(wrong("another release"));
    }
    if named != Some(release_block) {
        return Err(wrong("another block id for the release than the chain's"));
    }
    if summary.count() != expected.count() {
        return Err(wrong(&format!("{} records, the chain holds {}", summary.count(), expected.count())));
    }
    if summary != *expected {
        return Err(wrong("a record differs"));
    }
    // The same summary in other bytes (a varint written long) would be another block.
    if payload != expected.to_block_bytes(release_block) {
        return Err(wrong("not in its canonical bytes"));
    }
    Ok(summary)
}

/// Who attested a release: one of the policy's verifiers (in the release block) or a
/// rebuilder (after it, SPEC §11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Role {
    Verifier,
    Rebuilder,
}

/// One key's line in the bad-hash tracker of a chain, in one role: how often what it said
/// agreed. A key that attested in both roles (a rebuilder the policy later made a verifier)
/// has a line for each, since agreeing means something else in each.
/// A verifier agrees when it sides with the majority of the release block's attestations
/// (reproduced or not; a tie agrees with everyone); a rebuilder agrees when it reproduced
/// the release, which the policy's verifiers did (every release on a chain passed them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackRecord {
    pub key: PublicKey,
    pub role: Role,
    pub attested: u64,
    pub agreed: u64,
    pub disagreed: u64,
    /// The time of the block that first held one of its attestations.
    pub first_seen_ms: u64,
}

/// A release someone disagreed with: the flag clients and operators look for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disputed {
    /// The release block's index.
    pub release: u64,
    pub version: String,
    pub disagreeing: Vec<(PublicKey, crate::model::Verdict)>,
}

/// The bad-hash tracker over one chain's history, fed its release and rebuilds blocks in
/// chain order.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    records: std::collections::BTreeMap<(PublicKey, Role), TrackRecord>,
    disputed: Vec<Disputed>,
    versions: HashMap<u64, String>,
}

impl Tracker {
    fn note(&mut self, key: PublicKey, role: Role, agreed: bool, time_ms: u64) {
        let record = self.records.entry((key, role)).or_insert(TrackRecord {
            key,
            role,
            attested: 0,
            agreed: 0,
            disagreed: 0,
            first_seen_ms: time_ms,
        });
        record.attested += 1;
        if agreed {
            record.agreed += 1;
        } else {
            record.disagreed += 1;
        }
    }

    fn dispute(&mut self, release: u64, key: PublicKey, verdict: crate::model::Verdict) {
        let version = self.versions.get(&release).cloned().unwrap_or_default();
        match self.disputed.iter_mut().find(|d| d.release == release) {
            Some(disputed) => disputed.disagreeing.push((key, verdict)),
            None => self.disputed.push(Disputed { release, version, disagreeing: vec![(key, verdict)] }),
        }
    }

    /// The release block at `index` (block time `time_ms`).
    pub fn release(&mut self, index: u64, time_ms: u64, release: &ReleasePayload) {
        self.versions.insert(index, release.manifest.version.clone());
        let attestations = &release.attestations;
        let reproduced = attestations.iter().filter(|a| a.body.outcome == Outcome::Reproduced).count();
        let others = attestations.len() - reproduced;
        for a in attestations {
            let said_reproduced = a.body.outcome == Outcome::Reproduced;
            let with_majority = if said_reproduced { reproduced >= others } else { others >= reproduced };
            self.note(a.body.verifier, Role::Verifier, with_majority, time_ms);
            if !said_reproduced {
                self.dispute(index, a.body.verifier, crate::model::Verdict::of(&a.body.outcome));
            }
        }
    }

    /// A rebuilds block (block time `time_ms`).
    pub fn rebuilds(&mut self, time_ms: u64, rebuilds: &Rebuilds) {
        for a in &rebuilds.attestations {
            let reproduced = a.body.outcome == Outcome::Reproduced;
            self.note(a.body.verifier, Role::Rebuilder, reproduced, time_ms);
            if !reproduced {
                self.dispute(rebuilds.release, a.body.verifier, crate::model::Verdict::of(&a.body.outcome));
            }
        }
    }

    /// Every key's records, by key, then role.
    pub fn records(&self) -> Vec<TrackRecord> {
        self.records.values().cloned().collect()
    }

    /// The releases someone disagreed with, in chain order of the first disagreement.
    pub fn disputed(&self) -> &[Disputed] {
        &self.disputed
    }
}
