//! Which block kinds go on which kind of chain, and what a new chain must look like. The
//! payload rules themselves live with their data: releases in `chainiac-release`, timeline
//! entries in the node (they need the node's heads).

use chainiac_release::{
    Policy, TimeWindow, KIND_POLICY_CHANGE, KIND_REBUILDS, KIND_REBUILD_SUMMARY, KIND_REBUILD_SUMMARY_KEYED,
    KIND_REBUILD_SUMMARY_UNNAMED, KIND_RELEASE, KIND_YANK,
};
use chainiac_skipchain::authority::{check_quorum, KIND_COMMITTEE};
use chainiac_skipchain::timeline::KIND_TIMELINE;
use chainiac_skipchain::{Block, BlockId, ChainState};

/// Blocks of a test chain: any payload.
pub const KIND_RAW: u16 = 0;

/// Whether a block of `kind` may extend a chain whose genesis has `chain_kind`. Committee
/// changes go in their own blocks (`KIND_COMMITTEE`), except on a timeline, whose every
/// block carries an entry (its committee changes in a timeline block).
pub fn kind_allowed(chain_kind: u16, kind: u16) -> bool {
    match chain_kind {
        KIND_RAW => kind == KIND_RAW || kind == KIND_COMMITTEE,
        KIND_TIMELINE => kind == KIND_TIMELINE,
        KIND_RELEASE => matches!(
            kind,
            KIND_RELEASE
                | KIND_POLICY_CHANGE
                | KIND_YANK
                | KIND_COMMITTEE
                | KIND_REBUILDS
                | KIND_REBUILD_SUMMARY
                | KIND_REBUILD_SUMMARY_KEYED
                | KIND_REBUILD_SUMMARY_UNNAMED
        ),
        _ => false,
    }
}

/// What a block may carry besides its payload: a committee only in a committee-change block
/// (or a timeline block), which carries nothing else; a policy never with a committee.
pub fn check_carried(block: &Block) -> Result<(), String> {
    let kind = block.header.kind;
    match (kind, &block.committee, &block.policy) {
        (KIND_COMMITTEE, None, _) => Err("a committee-change block must carry the new committee".into()),
        (KIND_COMMITTEE, Some(_), Some(_)) => Err("a committee-change block cannot change the policy".into()),
        (KIND_COMMITTEE, Some(_), None) if !block.payload.is_empty() => {
            Err("a committee-change block carries no payload".into())
        }
        (KIND_TIMELINE, _, Some(_)) => Err("a timeline block cannot change the policy".into()),
        (KIND_COMMITTEE | KIND_TIMELINE, _, _) => Ok(()),
        (_, Some(_), _) => Err(format!("a block of kind {kind} cannot change the committee; use a committee change")),
        _ => Ok(()),
    }
}

/// The kind-specific checks of a genesis: its committee must be a Byzantine quorum (this
/// witnesses' votes and locks keep two blocks from both being signed at one index only if two
/// thresholds overlap in an honest member), and a release chain's policy a valid policy.
pub fn check_genesis(genesis: &Block) -> Result<(), String> {
    if let Some(appointment) = &genesis.committee {
        check_quorum(&appointment.committee).map_err(|e| format!("genesis committee: {e}"))?;
    }
    match genesis.header.kind {
        KIND_RAW | KIND_TIMELINE => Ok(()),
        KIND_RELEASE => {
            let policy = genesis.policy.as_deref().unwrap_or_default();
            Policy::from_bytes(policy).map(|_| ()).map_err(|e| format!("release chain genesis: {e}"))
        }
        other => Err(format!("chain kind {other} is not known to this witness")),
    }
}

/// A rebuild summary of kind 9 (or 8) names the chain's release block at its index, by id: the
/// name clients follow in linked proofs (SPEC §7.5), checked on every block a witness
/// stores — caught up on too, as the summary's contents are not (`earlier` gives the id and
/// kind of an earlier block of the chain).
pub fn check_named_release(block: &Block, earlier: impl Fn(u64) -> Option<(BlockId, u16)>) -> Result<(), String> {
    let Some((release, named)) = chainiac_release::names_block(block.header.kind, &block.payload) else {
        return Ok(());
    };
    match earlier(release) {
        // The genesis of a release chain has the release kind, but is no release.
        Some((id, KIND_RELEASE)) if release > 0 && release < block.header.index && id == named => Ok(()),
        _ => Err(format!(
            "a rebuild summary naming block {named} as release {release}, not the chain's release block there"
        )),
    }
}

/// The rules of the layers above the chain for `block` after `head` on a chain of
/// `chain_kind`, those that depend on nothing but the chain: its kind, what it carries, and
/// its payload (releases and policy changes; timeline entries need the node's heads and
/// are checked by the node). What a witness checks before it cosigns, and again for every
/// block it catches up on. `is_released` says whether a version is already on the chain;
/// None skips the rules that read the chain's history (a release's version is new, a yank
/// names a release of the chain): for blocks caught up on, the committee that signed them
/// checked those.
pub fn check_rules(
    chain_kind: u16,
    head: &ChainState,
    block: &Block,
    window: TimeWindow,
    is_released: Option<&dyn Fn(&str) -> bool>,
) -> Result<(), String> {
    let kind = block.header.kind;
    if !kind_allowed(chain_kind, kind) {
        return Err(format!("a block of kind {kind} cannot go on a chain of kind {chain_kind}"));
    }
    check_carried(block)?;
    if let (Some(new), false) = (&block.policy, matches!(kind, KIND_POLICY_CHANGE | KIND_YANK)) {
        // Policies on other chains: the clients' rule (a raw chain never takes a release policy).
        chainiac_release::policy_rule(&head.chain, &head.policy, new, &block.payload)?;
    }
    if block.policy.is_some()
        && (matches!(kind, KIND_RELEASE | KIND_REBUILDS) || chainiac_release::is_rebuild_summary(kind))
    {
        return Err(format!("a block of kind {kind} cannot change the policy; use a policy change"));
    }
    match kind {
        KIND_RELEASE => chainiac_release::check_release(
            &head.policy,
            &block.payload,
            block.header.timestamp_ms,
            window,
            |version| is_released.is_some_and(|f| f(version)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string()),
        KIND_POLICY_CHANGE => {
            chainiac_release::check_policy_change(&head.chain.0, &head.policy, block.policy.as_deref(), &block.payload)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        // What needs no history (caught-up blocks too); the node checks the rest.
        KIND_REBUILDS => chainiac_release::Rebuilds::from_bytes(&block.payload)
            .map_err(chainiac_release::ReleaseError::DecodeRebuilds)
            .and_then(|rebuilds| chainiac_release::check_rebuilds_alone(&rebuilds))
            .map_err(|e| e.to_string()),
        KIND_REBUILD_SUMMARY | KIND_REBUILD_SUMMARY_KEYED | KIND_REBUILD_SUMMARY_UNNAMED => {
            // Decoding refuses what clients refuse too: past 4,096 rebuilders, or a kind-9
            // summary listing past 32 or committing to 32 or fewer.
            chainiac_release::RebuildSummary::of_block(kind, &block.payload)
                .map(|_| ())
                .map_err(|e| chainiac_release::ReleaseError::DecodeRebuildSummary(e).to_string())
        }
        KIND_YANK => chainiac_release::check_yank(
            &head.chain.0,
            &head.policy,
            block.policy.as_deref(),
            &block.payload,
            block.header.timestamp_ms,
            window,
            |version| is_released.is_none_or(|f| f(version)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainiac_cosi::{Member, Roster, SecretKey};
    use chainiac_release::VerifierEntry;
    use chainiac_skipchain::{genesis, ChainParams, Committee, Proposal};

    /// A kind-9 (or 8) summary is stored only if it names the chain's release block at its index by
    /// its id (caught-up blocks included): anything else is refused, naming what it names.
    #[test]
    fn a_summary_names_the_chain_s_release_block() {
        let summary = |index: u64, release: u64, named: BlockId| {
            let mut block = Block {
                header: chainiac_skipchain::Header {
                    chain: Some(BlockId([1; 32])),
                    index,
                    height: 1,
                    back_links: vec![],
                    params: None,
                    kind: KIND_REBUILD_SUMMARY,
                    payload_hash: [0; 32],
                    committee_hash: [0; 32],
                    policy_hash: [0; 32],
                    previous_checkpoint: 0,
                    timestamp_ms: 0,
                },
                payload: vec![],
                committee: None,
                policy: None,
                signature: None,
            };
            let records = chainiac_release::RebuildSummary {
                release,
                manifest: chainiac_release::ManifestId([2; 32]),
                records: vec![],
                committed: None,
                absent: Vec::new(),
            };
            block.payload = records.to_block_bytes(named);
            block
        };
        let (release_id, yank_id) = (BlockId([5; 32]), BlockId([6; 32]));
        let earlier = |i: u64| match i {
            1 => Some((release_id, KIND_RELEASE)),
            2 => Some((yank_id, KIND_YANK)),
            _ => None,
        };
        assert_eq!(check_named_release(&summary(3, 1, release_id), earlier), Ok(()));
        let wrong_id = check_named_release(&summary(3, 1, BlockId([9; 32])), earlier).unwrap_err();
        assert!(wrong_id.contains("naming block 0909") && wrong_id.contains("as release 1"), "{wrong_id}");
        assert!(check_named_release(&summary(3, 2, yank_id), earlier).is_err(), "a yank is no release");
        assert!(check_named_release(&summary(3, 4, release_id), earlier).is_err(), "no block there");
        assert!(check_named_release(&summary(1, 1, release_id), earlier).is_err(), "not before itself");
        let genesis = |i: u64| (i == 0).then_some((BlockId([1; 32]), KIND_RELEASE));
        assert!(check_named_release(&summary(3, 0, BlockId([1; 32])), genesis).is_err(), "the genesis is no release");
        // Kind 8 names its release as kind 9 does; kind 7 names nothing.
        let keyed = |named: BlockId| {
            let mut block = summary(3, 1, named);
            block.header.kind = chainiac_release::KIND_REBUILD_SUMMARY_KEYED;
            block.payload = [&[1u8][..], &named.0, &[2; 32], &[0]].concat();
            block
        };
        assert_eq!(check_named_release(&keyed(release_id), earlier), Ok(()));
        assert!(check_named_release(&keyed(BlockId([9; 32])), earlier).is_err(), "kind 8 names its release too");
        let mut unnamed = summary(3, 1, BlockId([9; 32]));
        unnamed.header.kind = chainiac_release::KIND_REBUILD_SUMMARY_UNNAMED;
        assert_eq!(check_named_release(&unnamed, earlier), Ok(()));
    }

    /// A raw chain may change its opaque policy, but never to a release policy: a committee
    /// cannot make a chain no root key governs into one whose releases clients check
    /// against developer keys of its choice.
    #[test]
    fn a_raw_chain_never_takes_a_release_policy() {
        let key = SecretKey::from_seed(&[3; 32]);
        let committee = Committee::new(Roster::new(vec![Member::new(&key, "127.0.0.1:1")]).unwrap(), 1).unwrap();
        let first = genesis(ChainParams::DEFAULT, committee, b"raw".to_vec(), KIND_RAW, vec![], 1_000);
        let head = ChainState::genesis(&first).unwrap().into_inner();
        let release_policy = Policy {
            project: "hello".into(),
            developers: vec![key.public_key()],
            release_threshold: 1,
            root_keys: vec![key.public_key()],
            root_threshold: 1,
            verifiers: vec![VerifierEntry { key: key.public_key(), address: "127.0.0.1:2".into() }],
            verifier_threshold: 1,
            require_isolation: false,
            max_age_ms: 1,
            version: 1,
            yanked: Vec::new(),
        };
        let with_policy = |policy: Vec<u8>| {
            let proposal =
                Proposal { kind: KIND_RAW, policy: Some(policy), timestamp_ms: 2_000, ..Proposal::default() };
            head.propose(proposal, |_| Some(first.id())).unwrap()
        };
        let check = |block: &Block| check_rules(KIND_RAW, &head, block, TimeWindow::default(), None);
        assert_eq!(check(&with_policy(b"raw, second".to_vec())), Ok(()));
        let refused = check(&with_policy(release_policy.to_bytes())).unwrap_err();
        assert!(refused.contains("cannot take one"), "{refused}");
        // Nor does a raw chain take a yank block, whatever it carries.
        let yank = Proposal {
            kind: KIND_YANK,
            policy: Some(b"raw, third".to_vec()),
            timestamp_ms: 2_000,
            ..Proposal::default()
        };
        let refused = check(&head.propose(yank, |_| Some(first.id())).unwrap()).unwrap_err();
        assert!(refused.contains("kind 5 cannot go on a chain of kind 0"), "{refused}");
    }

    /// A yank block on a release chain must carry the new policy; a witness checking a block
    /// it catches up on (no history) takes the committee's word that the release exists,
    /// as it does for a release's new version.
    #[test]
    fn a_yank_block_carries_its_policy_and_names_a_release() {
        let developer = SecretKey::from_seed(&[4; 32]);
        let key = SecretKey::from_seed(&[3; 32]);
        let committee = Committee::new(Roster::new(vec![Member::new(&key, "127.0.0.1:1")]).unwrap(), 1).unwrap();
        let policy = Policy {
            project: "hello".into(),
            developers: vec![developer.public_key()],
            release_threshold: 1,
            root_keys: vec![key.public_key()],
            root_threshold: 1,
            verifiers: vec![],
            verifier_threshold: 0,
            require_isolation: false,
            max_age_ms: 1,
            version: 0,
            yanked: Vec::new(),
        };
        let first = genesis(ChainParams::DEFAULT, committee, policy.to_bytes(), KIND_RELEASE, vec![], 1_000);
        let head = ChainState::genesis(&first).unwrap().into_inner();
        let yank = chainiac_release::Yank { version: "1.0".into(), reason: "broken".into(), time_ms: 1_500 };
        let signature = chainiac_release::YankSignature::sign(
            &developer,
            &head.chain.0,
            &chainiac_skipchain::block::policy_hash(&head.policy),
            &yank,
        );
        let payload = chainiac_release::YankPayload { signatures: vec![signature] }.to_bytes();
        let block = |policy: Option<Vec<u8>>| {
            let proposal = Proposal {
                kind: KIND_YANK,
                payload: payload.clone(),
                policy,
                timestamp_ms: 2_000,
                ..Proposal::default()
            };
            head.propose(proposal, |_| Some(first.id())).unwrap()
        };
        let yanked = block(Some(policy.with_yank(yank.clone()).to_bytes()));
        let released = |v: &str| v == "1.0";
        let nothing = |_: &str| false;
        let check = |block: &Block, history: Option<&dyn Fn(&str) -> bool>| {
            check_rules(KIND_RELEASE, &head, block, TimeWindow::default(), history)
        };
        assert_eq!(check(&yanked, Some(&released)), Ok(()));
        assert!(check(&yanked, Some(&nothing)).unwrap_err().contains("no such release"));
        assert_eq!(check(&yanked, None), Ok(()), "caught up: the committee checked the release");
        assert!(check(&block(None), None).unwrap_err().contains("must carry the new policy"));
    }
}
