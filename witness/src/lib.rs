//! # chainiac-witness
//!
//! The witness node. It stores chains in RocksDB, checks every proposed block completely,
//! votes and locks durably so that it never signs two blocks at one index, takes part in (and leads)
//! cosigning rounds over a tree of QUIC connections, and answers queries.
//!
//! - [`config`]: the TOML configuration; [`keyfile`]: the node key on disk.
//! - [`agreement`]: the rules of votes and locks at one index; [`round`]: what a round's
//!   leader and members do next, as state machines (both sans I/O).
//! - [`node`]: the node's state and what it does with each request.
//! - [`server`]: the QUIC accept loop.
//! - [`rules`]: payload rules per chain kind.

pub mod agreement;
pub mod answers;
pub mod config;
pub mod keyfile;
pub mod metrics;
pub mod node;
pub mod round;
pub mod rules;
pub mod server;

use chainiac_skipchain::rocks::RocksStore;
use std::sync::Arc;

pub use config::WitnessConfig;
pub use node::Node;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot open the store in {path}: {source}")]
    Store { path: String, source: chainiac_skipchain::rocks::RocksError },
    #[error(transparent)]
    Endpoint(#[from] chainiac_proto::endpoint::EndpointError),
}

/// A running witness: its node and its QUIC endpoint.
pub struct Witness {
    pub node: Arc<Node>,
    pub endpoint: quinn::Endpoint,
}

impl Witness {
    /// Opens the store and the endpoint and starts serving in the background.
    pub fn start(config: WitnessConfig) -> Result<Self, StartError> {
        let key = keyfile::read(&config.key_file)?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
        let families = [node::CF_AGREEMENT, node::CF_TIMELINE_HEADS, node::CF_REBUILD_BATCHES];
        let store = RocksStore::open_with(&config.data_dir, &families, true)
            .map_err(|source| StartError::Store { path: config.data_dir.display().to_string(), source })?;
        let endpoint = chainiac_proto::endpoint::server(&key, config.listen)?;
        let node = Node::new(key, config, store, endpoint.clone());
        tokio::spawn(server::serve(node.clone(), endpoint.clone()));
        tokio::spawn(node.clone().run_timeline());
        node.restore_rebuild_batches();
        Ok(Witness { node, endpoint })
    }

    /// Stops accepting, lets open streams finish briefly, and closes the store.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
