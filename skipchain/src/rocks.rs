//! The RocksDB block store: one column family per kind of record, one atomic write batch
//! per append, synced before `commit` returns.

use crate::block::{Block, BlockId, ChainId};
use crate::store::{Commit, HeadRecord, Store};
use rocksdb::{ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// `chain || index (u64 big-endian)` → encoded [`Block`].
pub const CF_BLOCKS: &str = "blocks";
/// `chain || index` → block id, for back links without decoding blocks.
pub const CF_BLOCK_IDS: &str = "block_ids";
/// block id → `chain || index`.
pub const CF_ID_INDEX: &str = "id_index";
/// chain → encoded [`HeadRecord`].
pub const CF_HEADS: &str = "heads";
/// `chain || index` → empty, for every checkpoint after the genesis.
pub const CF_CHECKPOINTS: &str = "checkpoints";

const CHAIN_CFS: [&str; 5] = [CF_BLOCKS, CF_BLOCK_IDS, CF_ID_INDEX, CF_HEADS, CF_CHECKPOINTS];

#[derive(Debug, thiserror::Error)]
pub enum RocksError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("record in column family {cf} does not decode: {error}")]
    Decode { cf: &'static str, error: crate::DecodeError },
    #[error("key in column family {cf} is malformed")]
    Key { cf: &'static str },
}

/// A RocksDB store. Cheap to clone (the database is shared).
#[derive(Clone)]
pub struct RocksStore {
    db: Arc<DB>,
    /// Serializes commits so the head check and the write are one step.
    commit_lock: Arc<Mutex<()>>,
    sync: bool,
}

impl RocksStore {
    /// Opens (creating if needed) the store at `path`, with synced writes.
    pub fn open(path: &Path) -> Result<Self, RocksError> {
        Self::open_with(path, &[], true)
    }

    /// Opens the store with `extra` column families for the caller's own records (the
    /// witness keeps its agreement states there) and `sync` deciding whether each commit is
    /// fsynced before it returns. Only benchmarks that build chains to read them turn `sync`
    /// off. Column families the store has and nobody names any more (an older version's)
    /// are opened too, and left alone: RocksDB refuses to open a store without them.
    pub fn open_with(path: &Path, extra: &[&str], sync: bool) -> Result<Self, RocksError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let mut names: Vec<String> = CHAIN_CFS.iter().chain(extra).map(|s| s.to_string()).collect();
        for existing in DB::list_cf(&options, path).unwrap_or_default() {
            if existing != "default" && !names.contains(&existing) {
                names.push(existing);
            }
        }
        let descriptors =
            names.iter().map(|name| ColumnFamilyDescriptor::new(name, Options::default())).collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&options, path, descriptors)?;
        Ok(RocksStore { db: Arc::new(db), commit_lock: Arc::new(Mutex::new(())), sync })
    }

    /// The database, for column families opened with [`RocksStore::open_with`].
    pub fn db(&self) -> &DB {
        &self.db
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column families are created at open")
    }

    pub fn write_options(&self) -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(self.sync);
        options
    }
}

fn block_key(chain: &ChainId, index: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&chain.0);
    key[32..].copy_from_slice(&index.to_be_bytes());
    key
}

fn split_key(key: &[u8], cf: &'static str) -> Result<(ChainId, u64), RocksError> {
    let key: &[u8; 40] = key.try_into().map_err(|_| RocksError::Key { cf })?;
    let chain = BlockId(key[..32].try_into().expect("32 bytes"));
    Ok((chain, u64::from_be_bytes(key[32..].try_into().expect("8 bytes"))))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], cf: &'static str) -> Result<T, RocksError> {
    crate::decode_exact(bytes).map_err(|error| RocksError::Decode { cf, error })
}

impl Store for RocksStore {
    type Error = RocksError;

    fn chains(&self) -> Result<Vec<ChainId>, RocksError> {
        let mut chains = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_HEADS), IteratorMode::Start) {
            let (key, _) = item?;
            let key: [u8; 32] = key.as_ref().try_into().map_err(|_| RocksError::Key { cf: CF_HEADS })?;
            chains.push(BlockId(key));
        }
        Ok(chains)
    }

    fn chains_after(&self, after: Option<&ChainId>, limit: usize) -> Result<Vec<ChainId>, RocksError> {
        let mode = match after {
            Some(after) => IteratorMode::From(&after.0, rocksdb::Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut chains = Vec::with_capacity(limit.min(4096));
        for item in self.db.iterator_cf(self.cf(CF_HEADS), mode) {
            let (key, _) = item?;
            let key: [u8; 32] = key.as_ref().try_into().map_err(|_| RocksError::Key { cf: CF_HEADS })?;
            if after.is_some_and(|a| a.0 == key) {
                continue;
            }
            if chains.len() == limit {
                break;
            }
            chains.push(BlockId(key));
        }
        Ok(chains)
    }

    fn heads(&self) -> Result<Vec<(ChainId, HeadRecord)>, RocksError> {
        let mut heads = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_HEADS), IteratorMode::Start) {
            let (key, value) = item?;
            let key: [u8; 32] = key.as_ref().try_into().map_err(|_| RocksError::Key { cf: CF_HEADS })?;
            heads.push((BlockId(key), decode(&value, CF_HEADS)?));
        }
        Ok(heads)
    }

    fn head(&self, chain: &ChainId) -> Result<Option<HeadRecord>, RocksError> {
        self.db.get_pinned_cf(self.cf(CF_HEADS), chain.0)?.map(|v| decode(&v, CF_HEADS)).transpose()
    }

    fn block(&self, chain: &ChainId, index: u64) -> Result<Option<Block>, RocksError> {
        self.db.get_pinned_cf(self.cf(CF_BLOCKS), block_key(chain, index))?.map(|v| decode(&v, CF_BLOCKS)).transpose()
    }

    fn block_id(&self, chain: &ChainId, index: u64) -> Result<Option<BlockId>, RocksError> {
        match self.db.get_pinned_cf(self.cf(CF_BLOCK_IDS), block_key(chain, index))? {
            None => Ok(None),
            Some(v) => {
                let id: [u8; 32] = v.as_ref().try_into().map_err(|_| RocksError::Key { cf: CF_BLOCK_IDS })?;
                Ok(Some(BlockId(id)))
            }
        }
    }

    fn locate(&self, id: &BlockId) -> Result<Option<(ChainId, u64)>, RocksError> {
        self.db.get_pinned_cf(self.cf(CF_ID_INDEX), id.0)?.map(|v| split_key(&v, CF_ID_INDEX)).transpose()
    }

    fn checkpoints(&self, chain: &ChainId, after: u64, before: u64) -> Result<Vec<u64>, RocksError> {
        let mut found = Vec::new();
        if after.saturating_add(1) >= before {
            return Ok(found);
        }
        let start = block_key(chain, after + 1);
        let iter = self.db.iterator_cf(self.cf(CF_CHECKPOINTS), IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (key, _) = item?;
            let (c, index) = split_key(&key, CF_CHECKPOINTS)?;
            if c != *chain || index >= before {
                break;
            }
            found.push(index);
        }
        Ok(found)
    }

    fn commit(&self, expected_head: Option<u64>, write: &Commit<'_>) -> Result<bool, RocksError> {
        let _guard = self.commit_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.head(&write.chain)?.map(|h| h.index) != expected_head {
            return Ok(false);
        }
        let key = block_key(&write.chain, write.head.index);
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_BLOCKS), key, write.block.to_bytes());
        batch.put_cf(self.cf(CF_BLOCK_IDS), key, write.id.0);
        batch.put_cf(self.cf(CF_ID_INDEX), write.id.0, key);
        batch.put_cf(self.cf(CF_HEADS), write.chain.0, postcard::to_allocvec(&write.head).expect("heads serialize"));
        if write.is_checkpoint && write.head.index > 0 {
            batch.put_cf(self.cf(CF_CHECKPOINTS), key, []);
        }
        self.db.write_opt(batch, &self.write_options())?;
        Ok(true)
    }
}
