//! Shoal's revisioned key-value store: openraft over redb, replacing etcd.
//!
//! One raft member (node 1) whose log lives in `DIR/raft-log.redb` and whose state machine
//! (keys, watch history, revision counter) lives in `DIR/state.redb`. A write is acknowledged
//! only after its log entry was fsynced and the entry was applied, so it survives `kill -9` and
//! the writer's next read sees it. Every successful write takes the next revision; failed
//! conditions are decided when the entry is applied and take none. Reads are served from the
//! local state machine. Knows nothing of Kubernetes; only the apiserver uses it.
//!
//! Concurrent writes are grouped into one raft entry (`propose`), and the log writer groups
//! queued appends into one fsync (`log_store`): throughput grows with the number of writers
//! while no lock is held across an fsync. Watch history is kept in the state machine and
//! compacted on apply, keeping at least `StoreConfig::history_retain` revisions.
//!
//! Not done yet: more than one member (the network answers `Unreachable`), streaming
//! snapshots (a snapshot is a full in-memory copy of the keys).

mod codec;
mod log_store;
mod propose;
mod raft;
mod state_machine;
mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::codec::CorruptRecord;
use crate::raft::{NODE_ID, Network, Request, Response, TypeConfig};

/// Largest value the store accepts (1.5 MiB, as etcd's default request limit).
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// One key at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "codec::bytes_serde")]
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key: the object's `resourceVersion`.
    pub mod_revision: u64,
}

/// A consistent snapshot of a prefix.
#[derive(Debug, Clone)]
pub struct ListResult {
    pub items: Vec<KeyValue>,
    /// The store revision the snapshot was read at.
    pub revision: u64,
}

/// One change, as seen by a watcher, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created (`prev == None`) or updated.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A key was deleted at `revision`; `prev` is its last value.
    Delete { prev: KeyValue, revision: u64 },
}

impl WatchEvent {
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put { kv, .. } => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {0:?} already exists")]
    AlreadyExists(String),
    #[error("key {0:?} not found")]
    NotFound(String),
    /// `update`/`delete` with an expected revision that is no longer current.
    #[error("key {key:?} is at revision {current}, not {expected}")]
    Conflict {
        key: String,
        expected: u64,
        current: u64,
    },
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// The requested revision is older than the oldest retained one.
    #[error("revision {requested} has been compacted; oldest available is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    /// A watcher fell too far behind the live stream and must re-list.
    #[error("watch fell behind")]
    WatchLagged,
    /// Disk, raft or other internal failure; details are in the source.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write was not made durable within `StoreConfig::write_timeout` (e.g. a stalled disk).
    /// Its outcome is unknown: it may still be applied later.
    #[error("store timeout: {0}")]
    Timeout(String),
}

/// Tuning of a store; `StoreConfig::default()` is what `Store::open` uses.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Revisions of watch history kept at least (older ones are compacted on apply).
    pub history_retain: u64,
    /// Live events a watcher may fall behind before it gets `WatchLagged`.
    pub watch_buffer: usize,
    /// Log entries between state machine snapshots (after which the log is purged).
    pub snapshot_every: u64,
    /// Log entries kept behind the last snapshot when the log is purged.
    pub logs_to_keep: u64,
    /// How long `open` waits for the member to lead and replay its log.
    pub open_timeout: Duration,
    /// How long a write waits to be made durable and applied before it fails with
    /// `StoreError::Timeout`.
    pub write_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_retain: 10_000,
            watch_buffer: 16_384,
            snapshot_every: 20_000,
            logs_to_keep: 1000,
            open_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// Failures of the disk layer, before they become `StoreError::Unavailable` (or an openraft
/// storage error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiskError {
    #[error("redb")]
    Redb(#[from] redb::Error),
    #[error("encoding")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    #[error("io")]
    Io(#[from] std::io::Error),
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for DiskError {
            fn from(e: $t) -> Self {
                DiskError::Redb(e.into())
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<DiskError> for StoreError {
    fn from(e: DiskError) -> Self {
        StoreError::Unavailable(error_chain(&e))
    }
}

/// `e` and its sources, joined, for `Unavailable`'s message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    raft: Raft<TypeConfig>,
    /// Taken by `shutdown`, so the file closes once the state machine worker has stopped.
    sm: RwLock<Option<Arc<state_machine::Shared>>>,
    revision: Arc<AtomicU64>,
    closed: AtomicBool,
    log_writer: Mutex<Option<JoinHandle<()>>>,
    proposer: propose::Proposer,
    proposer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without `shutdown`: stop raft in the background if a runtime is still there.
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Some(task) = self
            .proposer_task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let raft = self.raft.clone();
            runtime.spawn(async move {
                if let Err(e) = raft.shutdown().await {
                    tracing::warn!(error = %e, "stopping raft of a dropped store failed");
                }
            });
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

impl Store {
    /// Opens (or creates) a one-member store under `dir`, replaying its log.
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreConfig::default()).await
    }

    /// `open` with explicit tuning.
    pub async fn open_with(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("creating store directory", e))?;
        let (log_store, log_writer) = log_store::LogStore::open(&dir.join("raft-log.redb"))?;
        let sm = state_machine::StateMachine::open(
            &dir.join("state.redb"),
            config.history_retain,
            config.watch_buffer,
        )?;
        let shared = sm.shared();
        let raft_config = openraft::Config {
            cluster_name: "shoal".into(),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.logs_to_keep,
            ..Default::default()
        }
        .validate()
        .map_err(|e| unavailable("raft config", e))?;
        let raft = Raft::new(NODE_ID, Arc::new(raft_config), Network, log_store, sm)
            .await
            .map_err(|e| unavailable("starting raft", e))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| unavailable("starting raft", e))?;
        if !initialized {
            let members = BTreeMap::from([(NODE_ID, BasicNode::default())]);
            raft.initialize(members)
                .await
                .map_err(|e| unavailable("initializing raft", e))?;
            tracing::info!(dir = %dir.display(), "initialized store");
        }
        // Serve nothing until this member leads and has applied everything in its log: a
        // write acknowledged before a restart must be readable after it.
        raft.wait(Some(config.open_timeout))
            .metrics(
                |m| {
                    m.state == ServerState::Leader
                        && m.last_log_index.is_some()
                        && m.last_applied.map(|l| l.index) == m.last_log_index
                },
                "leader with its log applied",
            )
            .await
            .map_err(|e| unavailable("waiting for raft leadership", e))?;
        let revision = Arc::clone(&shared.revision);
        let (proposer, proposer_task) =
            propose::Proposer::spawn(raft.clone(), config.write_timeout);
        tracing::info!(dir = %dir.display(), revision = revision.load(Ordering::Acquire), "opened store");
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                raft,
                sm: RwLock::new(Some(shared)),
                revision,
                closed: AtomicBool::new(false),
                log_writer: Mutex::new(Some(log_writer)),
                proposer,
                proposer_task: Mutex::new(Some(proposer_task)),
            }),
        })
    }

    fn shared(&self) -> Result<Arc<state_machine::Shared>, StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("store is shut down".into()));
        }
        self.inner
            .sm
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is shut down".into()))
    }

    async fn propose(&self, request: Request) -> Result<Response, StoreError> {
        self.shared()?;
        self.inner.proposer.propose(request).await
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.shared()?.get(key)?)
    }

    /// All keys starting with `prefix`, in key order, read at one revision.
    pub async fn list(&self, prefix: &str) -> Result<ListResult, StoreError> {
        let (items, revision) = self.shared()?.list(prefix)?;
        Ok(ListResult { items, revision })
    }

    /// Writes `key` only if absent. Returns the stored pair.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        check_size(&value)?;
        let request = Request::Create {
            key: key.to_owned(),
            value: Bytes::from(value),
        };
        match self.propose(request).await? {
            Response::Written(kv) => Ok(kv),
            Response::AlreadyExists => Err(StoreError::AlreadyExists(key.to_owned())),
            other => Err(unexpected(other)),
        }
    }

    /// Overwrites an existing `key`; with `expected` set, only if its `mod_revision` matches.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<KeyValue, StoreError> {
        check_size(&value)?;
        let request = Request::Update {
            key: key.to_owned(),
            value: Bytes::from(value),
            expected,
        };
        match self.propose(request).await? {
            Response::Written(kv) => Ok(kv),
            response => Err(condition_failed(key, expected, response)),
        }
    }

    /// Deletes `key`; with `expected` set, only if its `mod_revision` matches. Returns the
    /// deleted pair and the revision of the deletion.
    pub async fn delete(
        &self,
        key: &str,
        expected: Option<u64>,
    ) -> Result<(KeyValue, u64), StoreError> {
        let request = Request::Delete {
            key: key.to_owned(),
            expected,
        };
        match self.propose(request).await? {
            Response::Deleted { prev, revision } => Ok((prev, revision)),
            response => Err(condition_failed(key, expected, response)),
        }
    }

    /// Drops watch history so that at least the last `keep` revisions remain; returns the
    /// newest compacted revision (watching from before it gets `Compacted`). The store also
    /// compacts by itself, keeping `StoreConfig::history_retain` revisions.
    pub async fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        match self.propose(Request::Compact { keep }).await? {
            Response::Compacted { compacted } => Ok(compacted),
            other => Err(unexpected(other)),
        }
    }

    /// Events for keys under `prefix` with revision > `after`, retained history first, then
    /// live. `Compacted` if `after` is older than what is retained.
    pub fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        watch::watch(&*self.shared()?, prefix, after)
    }

    /// Stops raft and flushes; further calls fail with `Unavailable`. Once it returns, the
    /// files under the store's directory are closed and it can be opened again. (Dropping the
    /// last handle without `shutdown` stops raft in the background; reopening the same
    /// directory in the same process then needs `shutdown` first.)
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = self
            .inner
            .raft
            .shutdown()
            .await
            .map_err(|e| unavailable("stopping raft", e));
        let proposer = self
            .inner
            .proposer_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(proposer) = proposer {
            // Writes still queued are answered `Unavailable` when their reply is dropped.
            proposer.abort();
        }
        let shared = self
            .inner
            .sm
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(shared) = shared {
            // Everything applied becomes durable: the next open replays nothing.
            shared.flush()?;
            wait_released(Arc::downgrade(&shared), shared).await;
        }
        let writer = self
            .inner
            .log_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            // The writer ends once raft dropped the log store.
            let joined = tokio::task::spawn_blocking(move || writer.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::warn!("raft log writer ended abnormally");
            }
        }
        tracing::info!(dir = %self.inner.dir.display(), "store shut down");
        result
    }
}

/// Drops our reference to the state machine and waits (bounded) until openraft's worker has
/// dropped its own, so the database file is closed.
async fn wait_released(weak: Weak<state_machine::Shared>, shared: Arc<state_machine::Shared>) {
    drop(shared);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while weak.strong_count() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("state machine still referenced after shutdown");
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn check_size(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge {
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

fn condition_failed(key: &str, expected: Option<u64>, response: Response) -> StoreError {
    match response {
        Response::NotFound => StoreError::NotFound(key.to_owned()),
        Response::Conflict { current } => StoreError::Conflict {
            key: key.to_owned(),
            expected: expected.unwrap_or_default(),
            current,
        },
        other => unexpected(other),
    }
}

fn unexpected(response: Response) -> StoreError {
    StoreError::Unavailable(format!("unexpected apply response {response:?}"))
}

#[cfg(test)]
mod tests;
