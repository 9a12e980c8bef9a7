//! What a policy, a release manifest, a developer signature and a build attestation are,
//! with their canonical encodings (postcard) and signed messages.

use chainiac_cosi::hash;
use chainiac_cosi::{PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

/// Manifest ids: `SHA3-256(tagged(TAG_MANIFEST) || encode(Manifest))`.
pub const TAG_MANIFEST: &str = "chainiac/v1/release/manifest";
/// A developer signs `tagged(TAG_DEVELOPER) || manifest id` (Ed25519, RFC 8032).
pub const TAG_DEVELOPER: &str = "chainiac/v1/release/developer";
/// A verifier signs `tagged(TAG_ATTESTATION) || encode(AttestationBody)`.
pub const TAG_ATTESTATION: &str = "chainiac/v1/release/attestation";
/// A root key signs `tagged(TAG_POLICY_CHANGE) || chain || old policy hash || new policy hash`.
pub const TAG_POLICY_CHANGE: &str = "chainiac/v1/release/policy-change";
/// Content hashes of source archives and artifacts: `SHA3-256(tagged(TAG_CONTENT) || bytes)`.
pub const TAG_CONTENT: &str = "chainiac/v1/release/content";
/// A developer or root key signs `tagged(TAG_YANK) || chain || old policy hash || encode(Yank)`.
pub const TAG_YANK: &str = "chainiac/v1/release/yank";

/// Block kinds of release chains (4 is the skipchain's committee change).
pub const KIND_RELEASE: u16 = 2;
pub const KIND_POLICY_CHANGE: u16 = 3;
pub const KIND_YANK: u16 = 5;
/// Rebuilders' signed attestations about a release, appended after it (SPEC §11.8).
pub const KIND_REBUILDS: u16 = 6;
/// What rebuilders said about a release so far, one compact record each (a rebuilder named
/// by [`RebuilderId`]), and the id of the release's block: what clients read
/// (`RebuildSummary::to_block_bytes`). A linked proof to such a block goes straight down to
/// that release (SPEC §7.5, §11.8).
pub const KIND_REBUILD_SUMMARY: u16 = 9;
/// Summaries appended on 2026-12-02 before records named rebuilders by [`RebuilderId`]:
/// each record with the rebuilder's whole key. Still read (and name their release), no
/// longer appended.
pub const KIND_REBUILD_SUMMARY_KEYED: u16 = 8;
/// Summaries appended before 2026-12-02, without their release's block id: still read,
/// no longer appended.
pub const KIND_REBUILD_SUMMARY_UNNAMED: u16 = 7;

/// Whether blocks of `kind` hold a rebuild summary (in any of its encodings: 9, 8, 7).
pub fn is_rebuild_summary(kind: u16) -> bool {
    matches!(kind, KIND_REBUILD_SUMMARY | KIND_REBUILD_SUMMARY_KEYED | KIND_REBUILD_SUMMARY_UNNAMED)
}

/// Which earlier block a release chain's block of `kind` names by its payload, for
/// [`chainiac_skipchain::LinkedProof::verify_named`]: a summary block names its release.
/// Witnesses store a summary (voted for or caught up on) only if that is the chain's
/// release block at that index.
pub fn names_block(kind: u16, payload: &[u8]) -> Option<(u64, chainiac_skipchain::BlockId)> {
    match RebuildSummary::from_block(kind, payload) {
        Ok((summary, Some(release_block))) => Some((summary.release, release_block)),
        _ => None,
    }
}

/// Most rebuilders one release takes: what Sybil keys must fill to keep others out. Each
/// witness keeps their attestations (at most 4 KiB each), and followers never pay for them
/// past [`MAX_LISTED_REBUILDS`] (auditors, who read the attestations, do).
pub const MAX_REBUILDS_PER_RELEASE: usize = 4096;
/// Most records a summary lists; past that it holds their counts and a Merkle root
/// ([`crate::records`]), and clients ask for the records of the rebuilders they trust.
pub const MAX_LISTED_REBUILDS: usize = 32;
/// Most attestations one rebuilds block holds (witnesses append one per submission).
pub const MAX_REBUILDS_PER_BLOCK: usize = 16;
/// The largest encoded attestation a rebuilds block takes: a failure's reason and a
/// mismatch's list are the rebuilder's to fill, and every witness keeps them.
pub const MAX_REBUILD_ATTESTATION_BYTES: usize = 4096;

/// Most releases a policy lists as yanked, and the longest reason: each yank is a policy
/// change that every proof crossing it carries whole, so a proof from the genesis carries
/// about `MAX_YANKED² / 2` yanks in the worst case (≈ 0.8 MB at 64 of ≈ 400 bytes; SPEC
/// §11.7).
pub const MAX_YANKED: usize = 64;
pub const MAX_YANK_REASON: usize = 256;

/// The SHA3-256 content hash of a file's bytes.
pub fn content_hash(bytes: &[u8]) -> [u8; 32] {
    hash::sha3_256(TAG_CONTENT, &[bytes])
}

/// [`content_hash`] of bytes fed in pieces (a download, hashed as it streams in).
pub struct ContentHasher {
    hash: hash::TaggedSha3,
    size: u64,
}

impl ContentHasher {
    pub fn new() -> Self {
        ContentHasher { hash: hash::TaggedSha3::new(TAG_CONTENT), size: 0 }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.size += bytes.len() as u64;
    }

    /// The content hash and the number of bytes fed.
    pub fn finish(self) -> ([u8; 32], u64) {
        (self.hash.finalize(), self.size)
    }
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// `tagged(tag) || parts...`: the message a key signs.
fn signed_message(tag: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut message = vec![tag.len() as u8];
    message.extend_from_slice(tag.as_bytes());
    for part in parts {
        message.extend_from_slice(part);
    }
    message
}

/// A project's rules: who may release, who may change the rules, who must reproduce builds,
/// and how stale a client may let its view get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The project's name; every manifest must carry it.
    pub project: String,
    pub developers: Vec<PublicKey>,
    pub release_threshold: u32,
    pub root_keys: Vec<PublicKey>,
    pub root_threshold: u32,
    pub verifiers: Vec<VerifierEntry>,
    pub verifier_threshold: u32,
    /// Only reproductions by builds confined in namespaces ([`BuildIsolation::Namespaces`])
    /// count towards `verifier_threshold` (SPEC §11.5 rule 6): witnesses enforce it, so a
    /// policy can rule out verifiers that build unconfined.
    pub require_isolation: bool,
    /// Clients refuse a timeline head older than this (freeze attacks).
    pub max_age_ms: u64,
    /// Grows with every change (0 at the genesis): a policy never comes back byte for byte,
    /// so root signatures over one transition cannot be replayed after the policy went back
    /// to an earlier one (SPEC §11.4).
    pub version: u64,
    /// Releases taken out of circulation, oldest first (SPEC §11.7). They live in the policy
    /// so that every client sees them: a proof lands on every policy change, and a client
    /// holds the policy in force at its head however many blocks it skipped.
    pub yanked: Vec<Yank>,
}

/// A release taken out of circulation: clients refuse to install it unless told to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Yank {
    pub version: String,
    /// Why, for the people whose installs refuse it (1 to [`MAX_YANK_REASON`] bytes).
    pub reason: String,
    /// When it was signed; witnesses take it within a day before the block (SPEC §11.7).
    pub time_ms: u64,
}

/// A build verifier the policy trusts, and where it takes build jobs (`host:port`; its
/// QUIC identity is pinned to `key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifierEntry {
    pub key: PublicKey,
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy has an empty project name")]
    NoProject,
    #[error("policy {set} threshold {threshold} is impossible with {keys} keys")]
    Threshold { set: &'static str, threshold: u32, keys: usize },
    #[error("policy lists key {key} twice among the {set}")]
    DuplicateKey { set: &'static str, key: String },
    #[error("policy's yank of {version:?}: {reason}")]
    BadYank { version: String, reason: String },
    #[error("policy does not decode: {0}")]
    Decode(String),
}

impl Policy {
    /// Whether `key` is one of the policy's build verifiers.
    pub fn is_verifier(&self, key: &PublicKey) -> bool {
        self.verifiers.iter().any(|v| &v.key == key)
    }

    /// Checks thresholds (1..=keys; the verifier threshold may be 0 only with no verifiers)
    /// and duplicate keys.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.project.is_empty() {
            return Err(PolicyError::NoProject);
        }
        let verifier_keys: Vec<PublicKey> = self.verifiers.iter().map(|v| v.key).collect();
        for (set, keys, threshold, may_be_zero) in [
            ("developer", &self.developers, self.release_threshold, false),
            ("root", &self.root_keys, self.root_threshold, false),
            ("verifier", &verifier_keys, self.verifier_threshold, self.verifiers.is_empty()),
        ] {
            if (threshold == 0 && !may_be_zero) || threshold as usize > keys.len() {
                return Err(PolicyError::Threshold { set, threshold, keys: keys.len() });
            }
            let mut seen = std::collections::HashSet::new();
            for key in keys {
                if !seen.insert(key) {
                    return Err(PolicyError::DuplicateKey { set, key: key.to_string() });
                }
            }
        }
        if self.yanked.len() > MAX_YANKED {
            let last = self.yanked.last().map(|y| y.version.clone()).unwrap_or_default();
            return Err(PolicyError::BadYank { version: last, reason: format!("more than {MAX_YANKED} yanks") });
        }
        let mut versions = std::collections::HashSet::new();
        for yank in &self.yanked {
            let bad = |reason: &str| Err(PolicyError::BadYank { version: yank.version.clone(), reason: reason.into() });
            if yank.version.is_empty() || yank.version.len() > 128 {
                return bad("a version is 1 to 128 bytes");
            }
            if yank.reason.is_empty() || yank.reason.len() > MAX_YANK_REASON {
                return bad("the reason must be 1 to 256 bytes");
            }
            if !versions.insert(&yank.version) {
                return bad("listed twice");
            }
        }
        Ok(())
    }

    /// The yank of `version`, if the policy lists one.
    pub fn yank_of(&self, version: &str) -> Option<&Yank> {
        self.yanked.iter().find(|y| y.version == version)
    }

    /// This policy with `yank` added and the version raised: the only policy a yank block
    /// may put in force after this one (SPEC §11.7).
    pub fn with_yank(&self, yank: Yank) -> Policy {
        let mut next = self.clone();
        next.version = self.version.saturating_add(1);
        next.yanked.push(yank);
        next
    }

    /// The canonical bytes a chain carries as its policy.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("policies serialize")
    }

    /// Decodes and checks a policy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PolicyError> {
        let (policy, rest): (Policy, _) =
            postcard::take_from_bytes(bytes).map_err(|e| PolicyError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PolicyError::Decode(format!("{} trailing bytes", rest.len())));
        }
        policy.check()?;
        Ok(policy)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceArchive {
    pub name: String,
    pub sha3: [u8; 32],
    pub size: u64,
}

/// How to build: run `argv` in `workdir` (relative to the unpacked source) with `env` added
/// to the verifier's clean, normalized environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
}

/// One file the build must produce, relative to the directory the source archive was
/// unpacked into.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub path: String,
    pub sha3: [u8; 32],
    pub size: u64,
}

/// What a release is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub project: String,
    pub version: String,
    pub source: SourceArchive,
    pub recipe: Recipe,
    pub artifacts: Vec<Artifact>,
    /// Release time, ms since the Unix epoch; builds see it as `SOURCE_DATE_EPOCH` (seconds).
    pub time_ms: u64,
}

/// The identifier developers and verifiers sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ManifestId(pub [u8; 32]);

impl std::fmt::Display for ManifestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("manifests serialize")
    }

    pub fn id(&self) -> ManifestId {
        ManifestId(hash::sha3_256(TAG_MANIFEST, &[&self.to_bytes()]))
    }

    /// The `SOURCE_DATE_EPOCH` builds of this release see: the recipe's, if it names one (a
    /// decimal number of seconds, canonical: no sign, no leading zero — `chainiac release
    /// prepare` records the newest time in the archive there), else `⌊time_ms / 1000⌋`.
    /// `Err` names a value that is not one, or a second one. Verifiers apply this (a
    /// `Failed` attestation), not the chain's rules: blocks the rules once accepted stay
    /// valid.
    pub fn source_date_epoch(&self) -> Result<u64, String> {
        let mut named = self.recipe.env.iter().filter(|(name, _)| name == SOURCE_DATE_EPOCH);
        let Some((_, value)) = named.next() else { return Ok(self.time_ms / 1000) };
        if named.next().is_some() {
            return Err(format!("the recipe sets {SOURCE_DATE_EPOCH} twice"));
        }
        let canonical = value.bytes().all(|b| b.is_ascii_digit()) && (value == "0" || !value.starts_with('0'));
        value
            .parse::<u64>()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| format!("the recipe's {SOURCE_DATE_EPOCH} {value:?} is not a number of seconds"))
    }
}

/// The variable reproducible builds take their timestamps from
/// (<https://reproducible-builds.org/specs/source-date-epoch/>).
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// A developer's Ed25519 signature on a manifest id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeveloperSignature {
    pub key: PublicKey,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

impl DeveloperSignature {
    pub fn message(manifest: &ManifestId) -> Vec<u8> {
        signed_message(TAG_DEVELOPER, &[&manifest.0])
    }

    /// Signs `manifest` with `key` (any Ed25519 key, an OpenSSH one included).
    pub fn sign(key: &SecretKey, manifest: &ManifestId) -> Self {
        DeveloperSignature { key: key.public_key(), signature: key.sign_ed25519(&Self::message(manifest)) }
    }

    pub fn verify(&self, manifest: &ManifestId) -> bool {
        self.key.verify_ed25519(&Self::message(manifest), &self.signature)
    }
}

/// A differing artifact: what the manifest expects and what the verifier got (`None`: the
/// build did not produce it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactMismatch {
    pub path: String,
    pub expected: [u8; 32],
    pub got: Option<[u8; 32]>,
    pub got_size: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every expected artifact came out bit for bit.
    Reproduced,
    /// The build ran; these artifacts differ.
    Mismatch { artifacts: Vec<ArtifactMismatch> },
    /// The build could not be run or did not finish; why.
    Failed { reason: String },
}

/// What a verifier signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationBody {
    pub verifier: PublicKey,
    pub manifest: ManifestId,
    pub outcome: Outcome,
    /// Digest of the verifier's build environment (toolchain versions, platform), so that
    /// disagreements can be traced to environments.
    pub environment: [u8; 32],
    pub time_ms: u64,
    /// How the build was confined: a client or a policy may count only sandboxed builds.
    pub isolation: BuildIsolation,
}

/// How the build behind an attestation was confined (SPEC §11.3, §11.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BuildIsolation {
    /// Unconfined: the build ran as the verifier's user and could read what it can.
    None,
    /// New user, mount, pid, network (loopback only), ipc and uts namespaces; the host's
    /// system directories read-only and nothing else of it visible (bubblewrap).
    Namespaces,
}

impl BuildIsolation {
    pub fn name(self) -> &'static str {
        match self {
            BuildIsolation::None => "none",
            BuildIsolation::Namespaces => "namespaces",
        }
    }
}

/// A build verifier's signed statement about one manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    pub body: AttestationBody,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

impl Attestation {
    pub fn message(body: &AttestationBody) -> Vec<u8> {
        signed_message(TAG_ATTESTATION, &[&postcard::to_allocvec(body).expect("bodies serialize")])
    }

    /// Signs `body` with the verifier's key (which must be `body.verifier`).
    pub fn sign(key: &SecretKey, body: AttestationBody) -> Self {
        debug_assert_eq!(key.public_key(), body.verifier);
        let signature = key.sign_ed25519(&Self::message(&body));
        Attestation { body, signature }
    }

    pub fn verify(&self) -> bool {
        self.body.verifier.verify_ed25519(&Self::message(&self.body), &self.signature)
    }
}

/// The payload of a release block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePayload {
    pub manifest: Manifest,
    pub developer_signatures: Vec<DeveloperSignature>,
    /// Every attestation collected, agreeing or not: disagreement stays on the record.
    pub attestations: Vec<Attestation>,
}

/// A root key's signature approving a policy change on one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSignature {
    pub key: PublicKey,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

/// The payload of a policy-change block (the new policy itself is the block's carried
/// policy; its hash is in the header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub root_signatures: Vec<RootSignature>,
}

impl RootSignature {
    pub fn message(chain: &[u8; 32], old_policy_hash: &[u8; 32], new_policy_hash: &[u8; 32]) -> Vec<u8> {
        signed_message(TAG_POLICY_CHANGE, &[chain, old_policy_hash, new_policy_hash])
    }

    pub fn sign(key: &SecretKey, chain: &[u8; 32], old: &[u8; 32], new: &[u8; 32]) -> Self {
        RootSignature { key: key.public_key(), signature: key.sign_ed25519(&Self::message(chain, old, new)) }
    }

    pub fn verify(&self, chain: &[u8; 32], old: &[u8; 32], new: &[u8; 32]) -> bool {
        self.key.verify_ed25519(&Self::message(chain, old, new), &self.signature)
    }
}

/// A developer's or root key's signature on a yank (SPEC §11.7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct YankSignature {
    pub key: PublicKey,
    #[serde(with = "chainiac_cosi::bytes")]
    pub signature: [u8; 64],
}

/// The payload of a yank block: the signatures (the new policy, with the yank, is the
/// block's carried policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct YankPayload {
    pub signatures: Vec<YankSignature>,
}

impl YankSignature {
    /// Binds the chain and the policy the yank is added to, so that a yank cannot be
    /// replayed on another chain, or on this one after the root keys took it back.
    pub fn message(chain: &[u8; 32], old_policy_hash: &[u8; 32], yank: &Yank) -> Vec<u8> {
        signed_message(TAG_YANK, &[chain, old_policy_hash, &postcard::to_allocvec(yank).expect("yanks serialize")])
    }

    pub fn sign(key: &SecretKey, chain: &[u8; 32], old_policy_hash: &[u8; 32], yank: &Yank) -> Self {
        YankSignature {
            key: key.public_key(),
            signature: key.sign_ed25519(&Self::message(chain, old_policy_hash, yank)),
        }
    }
}

/// What a rebuild came to, without the details (which the signed attestation keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Reproduced,
    Mismatch,
    Failed,
}

impl Verdict {
    pub fn of(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Reproduced => Verdict::Reproduced,
            Outcome::Mismatch { .. } => Verdict::Mismatch,
            Outcome::Failed { .. } => Verdict::Failed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Mismatch => "mismatch",
            Verdict::Failed => "failed",
        }
    }
}

/// The payload of a rebuilds block (kind 6): rebuilders' attestations about the release
/// block at index `release` of the same chain, each checked by every witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebuilds {
    pub release: u64,
    pub attestations: Vec<Attestation>,
}

/// What a rebuild summary block (kind 9; 8 and 7 before it) holds: one record per
/// attestation the chain's rebuilds blocks hold about release `release` (manifest
/// `manifest`), in chain order. A client reads this (18 bytes a rebuilder) instead of the
/// attestations (≈ 170 bytes). A record names its attestation by rebuilder (a key attests
/// a release once on a chain, and no two keys of a release share a [`RebuilderId`]), which
/// anyone can fetch from the rebuilds blocks and check against it.
///
/// Past [`MAX_LISTED_REBUILDS`] records the block holds `committed` instead: their counts
/// and Merkle root. Then `records` holds only records proven against that root, and
/// `absent` the ids proven to have none (what a client asked for: neither in a block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildSummary {
    pub release: u64,
    pub manifest: ManifestId,
    pub records: Vec<RebuildRecord>,
    pub committed: Option<crate::records::CommittedRecords>,
    pub absent: Vec<RebuilderId>,
}

/// A rebuilder as summaries name it: the first 16 bytes of `SHA3-256(tagged(TAG_REBUILDER_ID)
/// || key)`. Witnesses check each attestation's signature with the whole key, so a record
/// is only as good as that check; naming a given key's rebuilder takes another key with the
/// same id (a 2^128 search), and two keys of one's own with one id a 2^64 one, which
/// witnesses would refuse for one release anyway (`check_rebuilds`). A hash rather than the
/// key's first bytes: those are shared by `A` and `−A` (the sign is in the last byte), a
/// second key anyone can make of their own. Half the bytes of a key on every summary a
/// client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RebuilderId(#[serde(with = "chainiac_cosi::bytes")] pub [u8; 16]);

/// See [`RebuilderId`].
pub const TAG_REBUILDER_ID: &str = "chainiac/v1/release/rebuilder-id";

impl RebuilderId {
    pub fn of(key: &PublicKey) -> Self {
        let digest = hash::sha3_256(TAG_REBUILDER_ID, &[key.as_bytes()]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RebuilderId(id)
    }

    /// Whether `key` is the rebuilder this id names.
    pub fn names(&self, key: &PublicKey) -> bool {
        *self == RebuilderId::of(key)
    }
}

impl std::fmt::Display for RebuilderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildRecord {
    pub rebuilder: RebuilderId,
    pub verdict: Verdict,
    pub isolation: BuildIsolation,
}

impl RebuildRecord {
    pub fn of(attestation: &Attestation) -> Self {
        RebuildRecord {
            rebuilder: RebuilderId::of(&attestation.body.verifier),
            verdict: Verdict::of(&attestation.body.outcome),
            isolation: attestation.body.isolation,
        }
    }
}

impl RebuildSummary {
    /// The summary of release `release` (manifest `manifest`) over its attestations in
    /// chain order, as a summary block holds it: listed, or past [`MAX_LISTED_REBUILDS`]
    /// committed.
    pub fn of<'a>(release: u64, manifest: ManifestId, attestations: impl IntoIterator<Item = &'a Attestation>) -> Self {
        let records: Vec<RebuildRecord> = attestations.into_iter().map(RebuildRecord::of).collect();
        if records.len() > MAX_LISTED_REBUILDS {
            let committed = Some(crate::records::CommittedRecords::of(&records));
            return RebuildSummary { release, manifest, records: Vec::new(), committed, absent: Vec::new() };
        }
        RebuildSummary { release, manifest, records, committed: None, absent: Vec::new() }
    }

    /// How many rebuilders it records (listed or committed).
    pub fn count(&self) -> u64 {
        match &self.committed {
            Some(committed) => committed.tally.records(),
            None => self.records.len() as u64,
        }
    }

    /// The payload of a summary block (kind 9): `u64 release ‖ [32] release block id ‖ [32]
    /// manifest ‖ SummaryRecords`, `Listed(records)` with each record `[16] rebuilder id ‖
    /// verdict ‖ isolation`, or `Committed { tally, root }`.
    pub fn to_block_bytes(&self, release_block: chainiac_skipchain::BlockId) -> Vec<u8> {
        let records = match self.committed {
            Some(committed) => SummaryRecords::Committed(committed),
            None => SummaryRecords::Listed(self.records.clone()),
        };
        let named = NamedRebuildSummary { release: self.release, release_block, manifest: self.manifest, records };
        postcard::to_allocvec(&named).expect("payloads serialize")
    }

    /// The summary a block of `kind` holds, with the id of its release's block when the
    /// encoding names it (kinds 9 and 8; kind 7 as [`KeyedRebuildSummary::from_bytes`]).
    /// Records of the older encodings, with whole keys, are read as their ids. Refused, as
    /// witnesses refuse to store it: more than [`MAX_REBUILDS_PER_RELEASE`] rebuilders, or of
    /// kind 9 more than [`MAX_LISTED_REBUILDS`] listed or no more than that committed.
    pub fn from_block(kind: u16, payload: &[u8]) -> Result<(Self, Option<chainiac_skipchain::BlockId>), String> {
        let (summary, named) = Self::decode_block(kind, payload)?;
        let count = summary.count();
        if count > MAX_REBUILDS_PER_RELEASE as u64 {
            return Err(format!("{count} rebuilders, more than the {MAX_REBUILDS_PER_RELEASE} a release takes"));
        }
        if kind == KIND_REBUILD_SUMMARY && (summary.committed.is_some() != (count > MAX_LISTED_REBUILDS as u64)) {
            return Err(format!("{count} records, listed only up to {MAX_LISTED_REBUILDS} and committed past that"));
        }
        Ok((summary, named))
    }

    fn decode_block(kind: u16, payload: &[u8]) -> Result<(Self, Option<chainiac_skipchain::BlockId>), String> {
        match kind {
            KIND_REBUILD_SUMMARY => decode_exact::<NamedRebuildSummary>(payload).map(|named| {
                let NamedRebuildSummary { release, release_block, manifest, records } = named;
                let (records, committed) = match records {
                    SummaryRecords::Listed(records) => (records, None),
                    SummaryRecords::Committed(committed) => (Vec::new(), Some(committed)),
                };
                (RebuildSummary { release, manifest, records, committed, absent: Vec::new() }, Some(release_block))
            }),
            KIND_REBUILD_SUMMARY_KEYED => decode_exact::<NamedKeyedSummary>(payload).map(|named| {
                let NamedKeyedSummary { release, release_block, manifest, records } = named;
                (KeyedRebuildSummary { release, manifest, records }.into(), Some(release_block))
            }),
            KIND_REBUILD_SUMMARY_UNNAMED => {
                KeyedRebuildSummary::from_bytes(payload).map(|summary| (summary.into(), None))
            }
            _ => Err(format!("a block of kind {kind} holds no rebuild summary")),
        }
    }

    /// [`Self::from_block`] without the release's block id.
    pub fn of_block(kind: u16, payload: &[u8]) -> Result<Self, String> {
        Self::from_block(kind, payload).map(|(summary, _)| summary)
    }

    /// The record of `key`'s rebuild, if the summary holds one (of a committed summary:
    /// if it was proven).
    pub fn record_of(&self, key: &PublicKey) -> Option<&RebuildRecord> {
        let id = RebuilderId::of(key);
        self.records.iter().find(|r| r.rebuilder == id)
    }

    /// The block's form of this summary: without what was proven of a committed one.
    pub fn as_appended(&self) -> Self {
        let records = if self.committed.is_some() { Vec::new() } else { self.records.clone() };
        RebuildSummary { records, absent: Vec::new(), ..self.clone() }
    }
}

/// A summary block's payload (kind 9): the summary with its release's block id.
#[derive(Serialize, Deserialize)]
struct NamedRebuildSummary {
    release: u64,
    release_block: chainiac_skipchain::BlockId,
    manifest: ManifestId,
    records: SummaryRecords,
}

/// A kind-9 summary's records: listed, or past [`MAX_LISTED_REBUILDS`] committed.
#[derive(Serialize, Deserialize)]
enum SummaryRecords {
    Listed(Vec<RebuildRecord>),
    Committed(crate::records::CommittedRecords),
}

/// A kind-8 summary's payload (2026-12-02): records with whole keys.
#[derive(Serialize, Deserialize)]
struct NamedKeyedSummary {
    release: u64,
    release_block: chainiac_skipchain::BlockId,
    manifest: ManifestId,
    records: Vec<KeyedRebuildRecord>,
}

/// A rebuild summary with each rebuilder's whole key, as kind-7 summary blocks (in
/// `encode(KeyedRebuildSummary)`, or [`RebuildSummaryWithDigests`] before 2026-12-01) and
/// client state files from before 2026-12-02 hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedRebuildSummary {
    pub release: u64,
    pub manifest: ManifestId,
    pub records: Vec<KeyedRebuildRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedRebuildRecord {
    pub rebuilder: PublicKey,
    pub verdict: Verdict,
    pub isolation: BuildIsolation,
}

impl KeyedRebuildSummary {
    pub fn of<'a>(release: u64, manifest: ManifestId, attestations: impl IntoIterator<Item = &'a Attestation>) -> Self {
        let records = attestations
            .into_iter()
            .map(|a| KeyedRebuildRecord {
                rebuilder: a.body.verifier,
                verdict: Verdict::of(&a.body.outcome),
                isolation: a.body.isolation,
            })
            .collect();
        KeyedRebuildSummary { release, manifest, records }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("payloads serialize")
    }

    /// Decodes exactly one summary: in this encoding, or in that of the summary blocks
    /// appended before records lost their evidence digest (2026-12-01), read without the
    /// digests — signed blocks stay as they were appended. No payload is valid in both (the
    /// older leaves 16 bytes a record over; with no record the two are the same bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        decode_exact::<KeyedRebuildSummary>(bytes)
            .or_else(|e| decode_exact::<RebuildSummaryWithDigests>(bytes).map(Into::into).map_err(|_| e))
    }
}

impl From<KeyedRebuildSummary> for RebuildSummary {
    fn from(keyed: KeyedRebuildSummary) -> Self {
        let records = keyed
            .records
            .into_iter()
            .map(|r| RebuildRecord {
                rebuilder: RebuilderId::of(&r.rebuilder),
                verdict: r.verdict,
                isolation: r.isolation,
            })
            .collect();
        RebuildSummary {
            release: keyed.release,
            manifest: keyed.manifest,
            records,
            committed: None,
            absent: Vec::new(),
        }
    }
}

/// A rebuild summary as blocks and client state files before 2026-12-01 hold it: each
/// record with the first 16 bytes of its attestation's digest
/// (`SHA3-256(tagged("chainiac/v1/release/rebuild-evidence") || encode(Attestation))`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildSummaryWithDigests {
    pub release: u64,
    pub manifest: ManifestId,
    pub records: Vec<RebuildRecordWithDigest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildRecordWithDigest {
    pub rebuilder: PublicKey,
    pub verdict: Verdict,
    pub isolation: BuildIsolation,
    #[serde(with = "chainiac_cosi::bytes")]
    pub evidence: [u8; 16],
}

impl From<RebuildSummaryWithDigests> for KeyedRebuildSummary {
    fn from(old: RebuildSummaryWithDigests) -> Self {
        let records = old
            .records
            .into_iter()
            .map(|r| KeyedRebuildRecord { rebuilder: r.rebuilder, verdict: r.verdict, isolation: r.isolation })
            .collect();
        KeyedRebuildSummary { release: old.release, manifest: old.manifest, records }
    }
}

impl From<RebuildSummaryWithDigests> for RebuildSummary {
    fn from(old: RebuildSummaryWithDigests) -> Self {
        KeyedRebuildSummary::from(old).into()
    }
}

/// Exactly one `T` (no trailing bytes).
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}

macro_rules! payload_codec {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn to_bytes(&self) -> Vec<u8> {
                postcard::to_allocvec(self).expect("payloads serialize")
            }

            /// Decodes exactly one value (no trailing bytes).
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
                decode_exact(bytes)
            }
        }
    )*};
}
payload_codec!(ReleasePayload, PolicyChange, Attestation, YankPayload, Rebuilds);
