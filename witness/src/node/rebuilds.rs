//! Late attestations (SPEC §11.8): rebuilders' `SubmitRebuild`, the rebuilds blocks (kind 6)
//! that carry their signed attestations, and the summary blocks (kind 7) clients read.

use super::*;
use chainiac_release::{
    Attestation, RebuildSummary, Rebuilds, ReleasePayload, KIND_REBUILDS, KIND_REBUILD_SUMMARY, KIND_RELEASE,
};

/// The rebuilds blocks a chain holds, by release: kept per (chain, release) once read.
pub(super) type RebuildEvidence = HashMap<(ChainId, u64), Vec<Attestation>>;

/// How many attestations one rebuilder key may submit to this witness per hour.
const REBUILD_WINDOW_MS: u64 = 3_600_000;

impl Node {
    /// The release block at `index` of `chain`, if it is one.
    fn release_at(&self, chain: &ChainId, index: u64) -> Option<ReleasePayload> {
        let block = self.store.block(chain, index).ok().flatten()?;
        (block.header.kind == KIND_RELEASE).then(|| ReleasePayload::from_bytes(&block.payload).ok()).flatten()
    }

    /// Every attestation the chain's rebuilds blocks hold about release `release`, in chain
    /// order (read from the chain once, then kept up to date by [`Node::note_rebuilds`]).
    pub(super) fn rebuild_evidence(&self, chain: &ChainId, release: u64) -> Vec<Attestation> {
        blocking(|| {
            let mut evidence = self.rebuild_evidence.lock().expect("lock");
            if let Some(known) = evidence.get(&(*chain, release)) {
                return known.clone();
            }
            let head = self.store.head(chain).ok().flatten().map_or(0, |h| h.index);
            let mut found = Vec::new();
            for index in release + 1..=head {
                if let Ok(Some(block)) = self.store.block(chain, index) {
                    if block.header.kind == KIND_REBUILDS {
                        if let Ok(rebuilds) = Rebuilds::from_bytes(&block.payload) {
                            if rebuilds.release == release {
                                found.extend(rebuilds.attestations);
                            }
                        }
                    }
                }
            }
            evidence.insert((*chain, release), found.clone());
            found
        })
    }

    /// After a rebuilds block is appended: its attestations join the evidence kept.
    pub(super) fn note_rebuilds(&self, block: &Block) {
        let (Some(chain), Ok(rebuilds)) = (block.header.chain, Rebuilds::from_bytes(&block.payload)) else { return };
        if let Some(known) = self.rebuild_evidence.lock().expect("lock").get_mut(&(chain, rebuilds.release)) {
            known.extend(rebuilds.attestations);
        }
    }

    /// The summary a summary block about `release` must hold now: every attestation on the
    /// chain about it.
    fn expected_summary(&self, chain: &ChainId, release: u64) -> Result<RebuildSummary, ErrorReply> {
        let payload = self
            .release_at(chain, release)
            .ok_or_else(|| err(ErrorCode::Refused, chainiac_release::ReleaseError::NotARelease(release).to_string()))?;
        Ok(RebuildSummary::of(release, payload.manifest.id(), &self.rebuild_evidence(chain, release)))
    }

    /// The rules of kinds 6 and 7 that read the chain (the release named, what is recorded
    /// of it): checked before voting, not for blocks caught up on (their committee did).
    pub(super) fn check_rebuild_block(&self, head: &ChainState, block: &Block) -> Result<(), ErrorReply> {
        let refused = |e: chainiac_release::ReleaseError| err(ErrorCode::Refused, e.to_string());
        match block.header.kind {
            KIND_REBUILDS => {
                let rebuilds = Rebuilds::from_bytes(&block.payload)
                    .map_err(|e| refused(chainiac_release::ReleaseError::DecodeRebuilds(e)))?;
                let release = (rebuilds.release <= head.index())
                    .then(|| self.release_at(&head.chain, rebuilds.release))
                    .flatten();
                let recorded: Vec<_> = self
                    .rebuild_evidence(&head.chain, rebuilds.release)
                    .iter()
                    .map(chainiac_release::RebuildRecord::of)
                    .collect();
                chainiac_release::check_rebuilds(&rebuilds, release.as_ref(), &recorded).map_err(refused)
            }
            KIND_REBUILD_SUMMARY => {
                let summary = RebuildSummary::from_bytes(&block.payload)
                    .map_err(|e| refused(chainiac_release::ReleaseError::DecodeRebuildSummary(e)))?;
                if summary.release > head.index() {
                    return Err(refused(chainiac_release::ReleaseError::NotARelease(summary.release)));
                }
                let expected = self.expected_summary(&head.chain, summary.release)?;
                chainiac_release::check_rebuild_summary(&block.payload, &expected).map(|_| ()).map_err(refused)
            }
            _ => Ok(()),
        }
    }

    /// A rebuilder's attestation about a release of `chain` (anyone may send one):
    /// signed, within the key's hourly allowance, checked as a rebuilds block would be, then appended in a
    /// rebuilds block followed by the release's new summary, which is the answer. An
    /// attestation already on the chain whose summary a crash kept from being appended gets
    /// that summary now; otherwise a second one is refused.
    pub(super) async fn submit_rebuild(self: &Arc<Self>, chain: ChainId, attestation: Attestation) -> Reply {
        if self.chain_kind(&chain)? != KIND_RELEASE {
            return Err(err(ErrorCode::Refused, format!("chain {chain} is not a release chain")));
        }
        let rebuilder = attestation.body.verifier;
        if !attestation.verify() {
            let refusal = chainiac_release::ReleaseError::BadRebuildSignature { key: rebuilder.to_string() };
            return Err(err(ErrorCode::Refused, refusal.to_string()));
        }
        // Every signed submission counts, taken or not: each costs this witness a lookup.
        self.take_rebuild_allowance(&rebuilder)?;
        let manifest = attestation.body.manifest;
        let unknown = || err(ErrorCode::Refused, format!("chain {chain} has no release with manifest {manifest}"));
        let release = self.release_index(&chain, &manifest).ok_or_else(unknown)?;
        let payload = self.release_at(&chain, release).ok_or_else(unknown)?;
        let evidence = self.rebuild_evidence(&chain, release);
        if evidence.iter().any(|a| a.body.verifier == rebuilder) {
            if self.summarized(&chain, release).is_some_and(|s| s.records.iter().any(|r| r.rebuilder == rebuilder)) {
                return Err(err(
                    ErrorCode::Refused,
                    chainiac_release::ReleaseError::DuplicateRebuild { key: rebuilder.to_string(), release }
                        .to_string(),
                ));
            }
            return self.append_summary(chain, release).await.map(|block| Response::Appended { block });
        }
        let rebuilds = Rebuilds { release, attestations: vec![attestation] };
        let recorded: Vec<_> = evidence.iter().map(chainiac_release::RebuildRecord::of).collect();
        chainiac_release::check_rebuilds(&rebuilds, Some(&payload), &recorded)
            .map_err(|e| err(ErrorCode::Refused, e.to_string()))?;
        let proposal = Proposal { kind: KIND_REBUILDS, payload: rebuilds.to_bytes(), ..Proposal::default() };
        self.lead(chain, proposal).await?;
        self.append_summary(chain, release).await.map(|block| Response::Appended { block })
    }

    /// Appends the summary of `release` as the chain now holds it. Another rebuilds block
    /// appended in between makes the summary stale (members refuse it): computed again.
    async fn append_summary(self: &Arc<Self>, chain: ChainId, release: u64) -> Result<Block, ErrorReply> {
        let mut last = None;
        for _ in 0..3 {
            let summary = self.expected_summary(&chain, release)?;
            let proposal = Proposal { kind: KIND_REBUILD_SUMMARY, payload: summary.to_bytes(), ..Proposal::default() };
            match self.lead(chain, proposal).await {
                Ok(block) => return Ok(block),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// The newest summary block about `release` on `chain`, walking down from the head to the
    /// release (the blocks after a release are few: its rebuilds and summaries, yanks).
    fn summarized(&self, chain: &ChainId, release: u64) -> Option<RebuildSummary> {
        let head = self.store.head(chain).ok().flatten()?.index;
        blocking(|| {
            (release + 1..=head).rev().find_map(|index| {
                let block = self.store.block(chain, index).ok().flatten()?;
                if block.header.kind != KIND_REBUILD_SUMMARY {
                    return None;
                }
                RebuildSummary::from_bytes(&block.payload).ok().filter(|s| s.release == release)
            })
        })
    }

    /// Counts one attestation against `rebuilder`'s hourly allowance on this witness
    /// (`rebuilds_per_hour`), refusing it past the limit.
    fn take_rebuild_allowance(&self, rebuilder: &PublicKey) -> Result<(), ErrorReply> {
        let now = now_ms();
        let mut allowances = self.rebuild_allowances.lock().expect("lock");
        allowances.retain(|_, (start, _)| now.saturating_sub(*start) < REBUILD_WINDOW_MS);
        let (_, used) = allowances.entry(*rebuilder).or_insert((now, 0));
        if *used >= self.config.rebuilds_per_hour {
            return Err(err(
                ErrorCode::Refused,
                format!(
                    "rebuilder {rebuilder} sent {used} attestations here within the hour, the most this witness takes \
                     (rebuilds_per_hour); try later"
                ),
            ));
        }
        *used += 1;
        Ok(())
    }

    /// `GetRebuilds`: the signed attestations behind release `release`'s records, for
    /// clients and auditors to check against a summary's digests.
    pub(super) fn rebuilds(&self, chain: &ChainId, release: u64) -> Reply {
        self.chain_kind(chain)?;
        Ok(Response::Rebuilds(self.rebuild_evidence(chain, release)))
    }
}
