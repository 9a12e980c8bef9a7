//! Trust that grows after a release (SPEC §11.8): what the policy's verifiers and later
//! rebuilders said of a release, and the level a client reads from it.

use chainiac_cosi::PublicKey;
use chainiac_release::{BuildIsolation, Outcome, RebuildSummary, RebuilderId, ReleasePayload, Verdict};
use serde::{Deserialize, Serialize};

/// A level and how many rebuilders it takes, as `--min-level` names it: `policy`,
/// `rebuilt`, `trusted`, or with a count above 1 `rebuilt:N`, `trusted:N`.
pub fn level_bar(level: Level, count: usize) -> String {
    match count {
        0 | 1 => level.name().to_string(),
        n => format!("{}:{n}", level.name()),
    }
}

/// How far a release's reproductions reach, lowest first. Every release on a chain is at
/// least `Policy`: the witnesses appended it only once the policy's verifiers reproduced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub enum Level {
    /// The project's policy was met: its verifier threshold reproduced the build.
    #[default]
    Policy,
    /// And a rebuilder outside the policy reproduced it.
    Rebuilt,
    /// And a rebuilder this client trusts (`--trust-rebuilders`) reproduced it.
    Trusted,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Policy => "policy",
            Level::Rebuilt => "rebuilt",
            Level::Trusted => "trusted",
        }
    }

    pub fn parse(name: &str) -> Option<Level> {
        [Level::Policy, Level::Rebuilt, Level::Trusted].into_iter().find(|l| l.name() == name)
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who said what of one release, as one client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseLevel {
    pub version: String,
    pub level: Level,
    /// The policy's verifiers that reproduced it (in the release block).
    pub verifiers: Vec<PublicKey>,
    /// Rebuilders this client trusts that reproduced it.
    pub trusted_rebuilders: Vec<PublicKey>,
    /// How many other rebuilders reproduced it.
    pub other_rebuilders: usize,
    /// Verifiers and rebuilders that got other bytes or could not build it: a disagreement
    /// with the release is either an error or poisoning, and must stand out.
    pub disagreements: Vec<(Attester, Verdict)>,
    /// Rebuilders that disagreed whom a summary committing to its records counts without
    /// naming (those the client asked about are in `disagreements`).
    pub other_disagreements: u64,
}

/// Who attested a release, as the client knows it: a verifier of the policy by its key (the
/// release block holds its attestation), a rebuilder by the id its summary records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attester {
    Verifier(PublicKey),
    Rebuilder(RebuilderId),
}

impl Attester {
    pub fn role(&self) -> &'static str {
        match self {
            Attester::Verifier(_) => "verifier",
            Attester::Rebuilder(_) => "rebuilder",
        }
    }
}

impl std::fmt::Display for Attester {
    /// The key or the id in hex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attester::Verifier(key) => key.fmt(f),
            Attester::Rebuilder(id) => id.fmt(f),
        }
    }
}

impl ReleaseLevel {
    /// Reads `release` with what rebuilders said of it (`rebuilds`, if it is about this
    /// release), counting only sandboxed builds when `require_isolation`.
    pub fn of(
        release: &ReleasePayload,
        rebuilds: Option<&RebuildSummary>,
        trusted: &[PublicKey],
        require_isolation: bool,
    ) -> ReleaseLevel {
        let counts = |isolation: BuildIsolation| !require_isolation || isolation == BuildIsolation::Namespaces;
        let mut level = ReleaseLevel {
            version: release.manifest.version.clone(),
            level: Level::Policy,
            verifiers: Vec::new(),
            trusted_rebuilders: Vec::new(),
            other_rebuilders: 0,
            disagreements: Vec::new(),
            other_disagreements: 0,
        };
        for attestation in &release.attestations {
            match &attestation.body.outcome {
                Outcome::Reproduced if counts(attestation.body.isolation) => {
                    level.verifiers.push(attestation.body.verifier)
                }
                Outcome::Reproduced => {}
                other => level.disagreements.push((Attester::Verifier(attestation.body.verifier), Verdict::of(other))),
            }
        }
        let id = release.manifest.id();
        let rebuilds = rebuilds.filter(|s| s.manifest == id);
        // One rebuilder counts once, whatever a summary holds (witnesses refuse a second
        // attestation by one id, but a colluding committee need not).
        let mut counted = std::collections::HashSet::new();
        let records = rebuilds.map(|s| s.records.as_slice()).unwrap_or_default();
        for record in records.iter().filter(|r| counted.insert(r.rebuilder)) {
            match record.verdict {
                Verdict::Reproduced if !counts(record.isolation) => {}
                Verdict::Reproduced => match trusted.iter().find(|key| record.rebuilder.names(key)) {
                    Some(key) => level.trusted_rebuilders.push(*key),
                    None => level.other_rebuilders += 1,
                },
                verdict => level.disagreements.push((Attester::Rebuilder(record.rebuilder), verdict)),
            }
        }
        // A summary committing to its records counts the rest: the records held are those
        // proven for the keys asked about, the others' reproductions and disagreements
        // counted, unnamed.
        if let Some(committed) = rebuilds.and_then(|s| s.committed) {
            let named_reproductions = (level.trusted_rebuilders.len() + level.other_rebuilders) as u64;
            let named_disagreements =
                level.disagreements.iter().filter(|(who, _)| matches!(who, Attester::Rebuilder(_))).count();
            let others = committed.tally.reproduced(require_isolation).saturating_sub(named_reproductions);
            level.other_rebuilders =
                level.other_rebuilders.saturating_add(usize::try_from(others).unwrap_or(usize::MAX));
            level.other_disagreements = committed.tally.disagreements().saturating_sub(named_disagreements as u64);
        }
        level.level = if !level.trusted_rebuilders.is_empty() {
            Level::Trusted
        } else if level.other_rebuilders > 0 {
            Level::Rebuilt
        } else {
            Level::Policy
        };
        level
    }

    /// What is missing for `wanted` reached by at least `count` rebuilders (0 counts as 1:
    /// `rebuilt` by so many rebuilders outside the policy, trusted or not; `trusted` by so
    /// many this client trusts), if the release is below it.
    pub fn missing(&self, wanted: Level, count: usize) -> Option<String> {
        let count = count.max(1);
        let (have, who) = match wanted {
            Level::Policy => return None,
            Level::Rebuilt => (self.trusted_rebuilders.len() + self.other_rebuilders, "outside the policy"),
            Level::Trusted => (self.trusted_rebuilders.len(), "this client trusts"),
        };
        match (have, count) {
            (have, count) if have >= count => None,
            (0, 1) => Some(format!("no rebuilder {who} has reproduced it yet")),
            (have, count) => Some(format!("{have} rebuilder(s) {who} reproduced it, {count} wanted")),
        }
    }

    /// One line for people: "level rebuilt: 2 verifiers, 0 trusted and 3 other rebuilders
    /// reproduced it; DISAGREED: …".
    pub fn describe(&self) -> String {
        let mut text = format!(
            "level {}: {} verifiers, {} trusted and {} other rebuilders reproduced it",
            self.level,
            self.verifiers.len(),
            self.trusted_rebuilders.len(),
            self.other_rebuilders
        );
        if !self.disagreements.is_empty() || self.other_disagreements > 0 {
            let mut who: Vec<String> =
                self.disagreements.iter().map(|(who, verdict)| format!("{} {}", short(who), verdict.name())).collect();
            if self.other_disagreements > 0 {
                who.push(format!("{} other rebuilder(s)", self.other_disagreements));
            }
            text += &format!("; DISAGREED: {}", who.join(", "));
        }
        text
    }
}

fn short(who: &Attester) -> String {
    who.to_string()[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainiac_cosi::SecretKey;
    use chainiac_release::{
        Artifact, Attestation, AttestationBody, Manifest, RebuildRecord, Recipe, SourceArchive, Verdict,
    };
    use proptest::prelude::*;

    fn key(i: u8) -> SecretKey {
        SecretKey::from_seed(&[i; 32])
    }

    fn release() -> ReleasePayload {
        let manifest = Manifest {
            project: "hello".into(),
            version: "1.0".into(),
            source: SourceArchive { name: "hello-1.0.tar".into(), sha3: [1; 32], size: 1 },
            recipe: Recipe { argv: vec!["make".into()], env: vec![], workdir: ".".into() },
            artifacts: vec![Artifact { path: "hello".into(), sha3: [2; 32], size: 1 }],
            time_ms: 1,
        };
        ReleasePayload { manifest, developer_signatures: vec![], attestations: vec![] }
    }

    fn attestation(
        rebuilder: u8,
        outcome: Outcome,
        isolation: BuildIsolation,
        release: &ReleasePayload,
    ) -> Attestation {
        let key = key(rebuilder);
        let body = AttestationBody {
            verifier: key.public_key(),
            manifest: release.manifest.id(),
            outcome,
            environment: [0; 32],
            time_ms: 1,
            isolation,
        };
        Attestation::sign(&key, body)
    }

    proptest! {
        /// The level is `trusted` exactly when a trusted rebuilder reproduced the release,
        /// else `rebuilt` exactly when another did; disagreements never lift it, and a
        /// summary about another release counts for nothing. With `require_isolation` only
        /// sandboxed reproductions count.
        #[test]
        fn the_level_follows_who_reproduced_it(
            rebuilds in proptest::collection::vec((0u8..6, 0u8..3, any::<bool>()), 0..8),
            trusted in proptest::collection::vec(0u8..6, 0..3),
            require_isolation in any::<bool>(),
            about_another in any::<bool>(),
        ) {
            let release = release();
            let trusted: Vec<PublicKey> = trusted.iter().map(|i| key(100 + i).public_key()).collect();
            let mut seen = std::collections::HashSet::new();
            let attestations: Vec<Attestation> = rebuilds
                .iter()
                .filter(|(who, _, _)| seen.insert(*who))
                .map(|(who, verdict, sandboxed)| {
                    let outcome = match verdict {
                        0 => Outcome::Reproduced,
                        1 => Outcome::Mismatch { artifacts: vec![] },
                        _ => Outcome::Failed { reason: "x".into() },
                    };
                    let isolation = if *sandboxed { BuildIsolation::Namespaces } else { BuildIsolation::None };
                    attestation(100 + who, outcome, isolation, &release)
                })
                .collect();
            let manifest = if about_another { chainiac_release::ManifestId([9; 32]) } else { release.manifest.id() };
            let summary = RebuildSummary::of(1, manifest, &attestations);
            let level = ReleaseLevel::of(&release, Some(&summary), &trusted, require_isolation);
            let records: Vec<RebuildRecord> = if about_another { vec![] } else { summary.records.clone() };
            let counts = |r: &RebuildRecord| r.verdict == Verdict::Reproduced && (!require_isolation || r.isolation == BuildIsolation::Namespaces);
            let is_trusted = |r: &RebuildRecord| trusted.iter().any(|k| r.rebuilder.names(k));
            let by_trusted = records.iter().any(|r| counts(r) && is_trusted(r));
            let by_anyone = records.iter().any(counts);
            let expected = if by_trusted { Level::Trusted } else if by_anyone { Level::Rebuilt } else { Level::Policy };
            prop_assert_eq!(level.level, expected);
            prop_assert_eq!(level.disagreements.len(), records.iter().filter(|r| r.verdict != Verdict::Reproduced).count());
            prop_assert_eq!(level.missing(Level::Policy, 1), None);
            prop_assert_eq!(level.missing(expected, 1), None);
            // A count asks for that many distinct rebuilders of the class.
            let reproduced: Vec<&RebuildRecord> = records.iter().filter(|r| counts(r)).collect();
            let trusted_n = reproduced.iter().filter(|r| is_trusted(r)).count();
            prop_assert_eq!(level.trusted_rebuilders.len(), trusted_n);
            prop_assert!(level.trusted_rebuilders.iter().all(|k| trusted.contains(k)));
            for count in 0..4 {
                prop_assert_eq!(level.missing(Level::Rebuilt, count).is_none(), reproduced.len() >= count.max(1));
                prop_assert_eq!(level.missing(Level::Trusted, count).is_none(), trusted_n >= count.max(1));
            }
        }
    }
}
