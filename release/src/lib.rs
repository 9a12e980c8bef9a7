//! # chainiac-release
//!
//! What a release is and when witnesses may cosign one. [`model`] defines policies,
//! manifests, developer signatures and build attestations with their canonical encodings;
//! [`rules`] holds the checks a witness makes before cosigning a release or a policy change,
//! each refusal naming its rule. No I/O: a verifier daemon produces attestations, the
//! witness feeds the rules.

pub mod model;
pub mod records;
pub mod rules;

pub use model::{
    content_hash, is_rebuild_summary, names_block, Artifact, ArtifactMismatch, Attestation, AttestationBody,
    BuildIsolation, ContentHasher, DeveloperSignature, KeyedRebuildRecord, KeyedRebuildSummary, Manifest, ManifestId,
    Outcome, Policy, PolicyChange, PolicyError, RebuildRecord, RebuildRecordWithDigest, RebuildSummary,
    RebuildSummaryWithDigests, RebuilderId, Rebuilds, Recipe, ReleasePayload, RootSignature, SourceArchive, Verdict,
    VerifierEntry, Yank, YankPayload, YankSignature, KIND_POLICY_CHANGE, KIND_REBUILDS, KIND_REBUILD_SUMMARY,
    KIND_REBUILD_SUMMARY_KEYED, KIND_REBUILD_SUMMARY_UNNAMED, KIND_RELEASE, KIND_YANK, MAX_LISTED_REBUILDS,
    MAX_REBUILDS_PER_BLOCK, MAX_REBUILDS_PER_RELEASE, MAX_REBUILD_ATTESTATION_BYTES, MAX_YANKED, MAX_YANK_REASON,
    SOURCE_DATE_EPOCH,
};
pub use records::{CommittedRecords, RecordOpening, RecordProof, RecordProofError, RecordsTree, Tally};
pub use rules::{
    check_policy_change, check_rebuild_summary, check_rebuilds, check_rebuilds_alone, check_release, check_yank,
    policy_rule, Disputed, ReleaseError, Role, TimeWindow, TrackRecord, Tracker,
};
