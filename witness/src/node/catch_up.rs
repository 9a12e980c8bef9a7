//! Catching up and learning chains from peers: who may make this node fetch what, and every
//! block checked from the genesis before anything is written (SPEC §10.5).

use super::*;

impl Node {
    pub(super) async fn call(
        &self,
        member: &Member,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        self.pool.call(&member.address, &member.key, request, timeout).await
    }

    /// Who may send a round or replication message about block `index` of `chain`, checked
    /// before anything else this node does for it; then what it takes to get there. For a
    /// chain this node serves, the caller must be a member of the committee at its head or a
    /// witness it knows ([`Node::is_known_witness`]: its committee may have changed since);
    /// it then catches up from the caller, every block checked and written as it comes
    /// (blocks of a chain it serves, each signed by that chain's committee). For a chain it
    /// lacks, only a witness it knows is heard: the chain is fetched from the genesis and
    /// checked without writing anything, and written only if this node is in the committee
    /// at `index − 1` (or in the one `appointing` appoints, checked: a committed block that
    /// brings it in). Either way the caller must be in the committee at `index − 1`.
    pub(super) async fn admit_peer(
        &self,
        caller: &PublicKey,
        from: SocketAddr,
        chain: ChainId,
        index: u64,
        appointing: Option<&Block>,
    ) -> Result<Arc<ChainState>, ErrorReply> {
        let Some(before) = index.checked_sub(1) else {
            return Err(err(ErrorCode::BadRequest, "block 0 is a genesis: it is created, not announced or committed"));
        };
        let known = self.store.head(&chain).map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        match known {
            Some(record) => {
                let head = self.head(&chain)?;
                if head.committee.roster().index_of(caller).is_none() && !self.is_known_witness(caller) {
                    return Err(self.forbidden(format!("key {caller} is not a member of this chain's committee")));
                }
                if record.index < before {
                    let source = self.source_for(caller, from, &chain);
                    self.catch_up(chain, before, &source).await?;
                }
            }
            None => {
                if !self.is_known_witness(caller) {
                    return Err(self.forbidden(format!(
                        "chain {chain} is not served here, and key {caller} is no witness this node knows to learn it from"
                    )));
                }
                let source = self.source_for(caller, from, &chain);
                self.learn_chain(chain, before, &source, caller, appointing).await?;
            }
        }
        let head = self.head(&chain)?;
        self.authorize(caller, head.committee.roster())?;
        Ok(head)
    }

    /// One page of blocks of `chain` from `next` as `source` serves them.
    pub(super) async fn fetch_blocks(
        &self,
        chain: ChainId,
        next: u64,
        source: &Member,
    ) -> Result<Vec<Block>, ErrorReply> {
        let timeout = self.config.peer_timeout() * 4;
        let request = Request::GetBlocks { chain, from: next, count: MAX_BLOCKS_PER_ANSWER };
        match self.call(source, &request, timeout).await {
            Ok(Response::Blocks(blocks)) if !blocks.is_empty() && blocks.len() <= MAX_BLOCKS_PER_ANSWER as usize => {
                Ok(blocks)
            }
            Ok(_) => {
                Err(err(ErrorCode::Unavailable, format!("{} has no block {next} to catch up from", source.address)))
            }
            Err(e) => Err(err(ErrorCode::Unavailable, format!("catching up from {}: {e}", source.address))),
        }
    }

    /// The chain rules, kind rules and deterministic payload rules of a block after `head`,
    /// as this node checks every block it catches up on (the clock and the timeline's
    /// heads are those of the moment it was made, so they are not checked again).
    /// `earlier` gives the id and kind of the chain's blocks up to `head`.
    pub(super) fn check_caught_up(
        &self,
        chain_kind: u16,
        head: &ChainState,
        block: &Block,
        earlier: impl Fn(u64) -> Option<(BlockId, u16)>,
    ) -> Result<(), ErrorReply> {
        // Any manifest time: the committee checked it against its clocks then, and a node
        // configured with a narrower skew must not refuse what the cothority signed.
        let window = chainiac_release::TimeWindow { skew_ms: u64::MAX, delay_ms: u64::MAX };
        rules::check_rules(chain_kind, head, block, window, None)
            .and_then(|()| rules::check_named_release(block, earlier))
            .map_err(|reason| err(ErrorCode::Refused, format!("block {} caught up: {reason}", block.header.index)))
    }

    /// The id and kind of `chain`'s stored blocks, by index.
    pub(super) fn stored<'a>(&'a self, chain: &'a ChainId) -> impl Fn(u64) -> Option<(BlockId, u16)> + 'a {
        move |index| {
            let block = self.store.block(chain, index).ok().flatten()?;
            Some((block.id(), block.header.kind))
        }
    }

    /// Fetches, checks and appends blocks from `source` until the chain's head (a chain this
    /// node serves) is at least `index`.
    pub(super) async fn catch_up(&self, chain: ChainId, index: u64, source: &Member) -> Result<(), ErrorReply> {
        let chain_kind = self.chain_kind(&chain)?;
        check_catch_up_length(self.head(&chain)?.index(), index)?;
        loop {
            let head = self.head(&chain)?;
            if head.index() >= index {
                return Ok(());
            }
            let next = head.index() + 1;
            let blocks = self.fetch_blocks(chain, next, source).await?;
            for block in blocks {
                let head = self.head(&chain)?;
                if block.header.index != head.index() + 1 {
                    if block.header.index <= head.index() {
                        continue; // raced a commit
                    }
                    return Err(err(ErrorCode::Refused, format!("{} served blocks out of order", source.address)));
                }
                self.check_caught_up(chain_kind, &head, &block, self.stored(&chain))?;
                match self.append(&block) {
                    Ok(_) => {}
                    Err(StoreError::Conflict { .. }) => {} // raced a commit
                    Err(e) => return Err(store_err(e)),
                }
            }
            // A page of blocks this node had already (or none it could use) is no progress.
            if self.head(&chain)?.index() < next {
                return Err(err(ErrorCode::Refused, format!("{} served no block {next}", source.address)));
            }
            info!(chain = %chain.to_hex()[..16], from = next, "caught up blocks from {}", source.address);
        }
    }

    /// Learns a chain this node lacks, up to block `index`, from `source`: a first pass
    /// fetches and checks every block from the genesis (genesis rules, chain rules and
    /// signatures, kind and payload rules) keeping only their ids; only if the caller and
    /// this node belong (see [`Node::admit_peer`]) does a second pass fetch and append them.
    pub(super) async fn learn_chain(
        &self,
        chain: ChainId,
        index: u64,
        source: &Member,
        caller: &PublicKey,
        appointing: Option<&Block>,
    ) -> Result<(), ErrorReply> {
        let genesis = self.fetch_blocks(chain, 0, source).await?.swap_remove(0);
        if genesis.header.index != 0 || genesis.id() != chain {
            return Err(err(ErrorCode::Refused, "the genesis served does not match the chain id"));
        }
        let mut state = ChainState::genesis(&genesis)
            .map_err(|e| err(ErrorCode::Refused, format!("genesis served: {e}")))?
            .into_inner();
        rules::check_genesis(&genesis).map_err(|reason| err(ErrorCode::Refused, reason))?;
        let chain_kind = genesis.header.kind;
        // A timeline makes its committee witnesses this node knows: only the operator's
        // configured peers bring one.
        if chain_kind == KIND_TIMELINE && !self.is_configured_peer(caller) {
            return Err(self.forbidden(format!("timeline {chain} is learned only from a configured peer")));
        }
        check_catch_up_length(0, index)?;
        let mut ids = vec![chain];
        let mut kinds = vec![chain_kind];
        while state.index() < index {
            let blocks = self.fetch_blocks(chain, state.index() + 1, source).await?;
            let before = state.index();
            for block in blocks.iter().take_while(|b| b.header.index <= index) {
                let link = |i: u64| ids.get(i as usize).copied();
                let next = state.extend(block, link).map_err(|e| {
                    err(ErrorCode::Refused, format!("{} served a chain that does not verify: {e}", source.address))
                })?;
                let earlier = |i: u64| Some((*ids.get(i as usize)?, *kinds.get(i as usize)?));
                self.check_caught_up(chain_kind, &state, block, earlier)?;
                ids.push(next.id);
                kinds.push(block.header.kind);
                state = next.into_inner();
            }
            if state.index() == before {
                return Err(err(ErrorCode::Refused, format!("{} served no block {}", source.address, before + 1)));
            }
        }
        let me = self.key.public_key();
        let mut member = state.committee.roster().index_of(&me).is_some();
        if let Some(block) =
            appointing.filter(|b| b.committee.as_ref().is_some_and(|a| a.committee.roster().index_of(&me).is_some()))
        {
            member |= state.extend(block, |i| ids.get(i as usize).copied()).is_ok();
        }
        if state.committee.roster().index_of(caller).is_none() {
            return Err(self.forbidden(format!("key {caller} is not a member of chain {chain}'s committee")));
        }
        if !member {
            return Err(err(ErrorCode::Forbidden, format!("this witness is not in chain {chain}'s committee")));
        }
        match self.append(&genesis) {
            Ok(_) | Err(StoreError::ChainExists(_)) => {}
            Err(e) => return Err(store_err(e)),
        }
        // The second pass writes exactly the blocks the first checked (a source serving
        // another branch now is refused), each verified again as it is appended.
        loop {
            let head = self.head(&chain)?;
            if head.index() >= index {
                return Ok(());
            }
            let blocks = self.fetch_blocks(chain, head.index() + 1, source).await?;
            let mut progressed = false;
            for block in blocks.iter().take_while(|b| b.header.index <= index) {
                let head = self.head(&chain)?;
                let expected = usize::try_from(block.header.index).ok().and_then(|i| ids.get(i));
                if block.header.index != head.index() + 1 || expected != Some(&block.id()) {
                    return Err(err(
                        ErrorCode::Refused,
                        format!("{} served block {} unlike the first time", source.address, block.header.index),
                    ));
                }
                self.check_caught_up(chain_kind, &head, block, self.stored(&chain))?;
                match self.append(block) {
                    Ok(_) => progressed = true,
                    Err(StoreError::Conflict { .. }) => {} // raced a commit of the same chain
                    Err(e) => return Err(store_err(e)),
                }
            }
            if !progressed && self.head(&chain)?.index() < index {
                return Err(err(ErrorCode::Refused, format!("{} stopped serving the chain", source.address)));
            }
        }
    }

    /// Where to catch up from: the caller, at the address its connection comes from (a
    /// node's endpoint sends from the address it listens on). Whatever it serves is checked
    /// block by block from the genesis, and the caller must then be in the committee.
    pub(super) fn source_for(&self, caller: &PublicKey, from: SocketAddr, chain: &ChainId) -> Member {
        if let Ok(head) = self.head(chain) {
            if let Some(i) = head.committee.roster().index_of(caller) {
                return head.committee.roster().members()[i].clone();
            }
        }
        Member {
            key: *caller,
            proof_of_possession: chainiac_cosi::ProofOfPossession([0; 64]),
            address: from.to_string(),
        }
    }
}
