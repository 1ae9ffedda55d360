//! Shoal's revisioned key-value store: openraft over redb, replacing etcd.
//!
//! A store is one member of a raft cluster of one, three or five voters. Each member keeps the
//! raft log in `DIR/raft-log.redb`, the state machine (keys, watch history, outcomes of recent
//! writes, revision counter) in `DIR/state.redb`, snapshots in `DIR/snapshots/`, and who it is
//! (cluster id, member id) in `DIR/identity.json`. Members talk over HTTP/2 with mutual TLS on
//! their member port (`network.rs`, `peer.rs`).
//!
//! Writes: a write is acknowledged only once a quorum has its log entry fsynced and this member
//! applied it; on a follower it is forwarded to the leader. Concurrent writes share one entry
//! and one fsync per member (`propose.rs`, `log_store.rs`). Every successful write takes the
//! next revision; failed conditions are decided when the entry is applied and take none. A
//! write retried after a lost answer is never applied twice (write ids, `raft.rs`).
//!
//! Reads are linearizable by read index on whichever member serves them (`read.rs`); watches
//! are served by every member from its own history. History and remembered write ids are
//! compacted automatically, keeping at least `StoreConfig::history_retain` revisions. Snapshots
//! stream to and from files; a snapshot is taken whenever the log grew by
//! `StoreConfig::snapshot_log_bytes` (or half the last snapshot, if more), and the log is
//! truncated behind it down to `StoreConfig::log_keep_bytes`, so disk use stays bounded.
//!
//! Knows nothing of Kubernetes; only the apiserver (and the CLI that wires it) use it.

mod cluster;
mod codec;
mod events;
mod log_store;
pub mod metrics;
mod network;
mod peer;
mod propose;
mod raft;
mod read;
mod snapshot;
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
use openraft::storage::RaftLogStorage;
use openraft::{Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch as tokio_watch;
use tokio_util::sync::CancellationToken;

pub use crate::codec::CorruptRecord;
pub use crate::metrics::StoreMetrics;
pub use crate::peer::MEMBERS_GROUP;
pub use crate::raft::Member;
use crate::raft::{Outcome, Request, Response, TypeConfig, Write};

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

/// What a progress watch ([`Store::watch_progress`]) yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A change under the prefix.
    Event(WatchEvent),
    /// Every change under the prefix up to this revision has been yielded.
    Progress(u64),
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

#[derive(Debug, Clone, thiserror::Error)]
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
    /// No leader, no quorum, disk failure or shut down: the request was not served and may be
    /// retried later. Details are in the message.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write was not committed, or a read index not confirmed, within the store's timeout
    /// (a stalled disk, a lost quorum). A write's outcome is unknown: it may still be applied,
    /// once.
    #[error("store timeout: {0}")]
    Timeout(String),
    /// Data on disk failed its checksum or could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// This member's data dir cannot be used (another cluster's, a removed member's, an older
    /// format).
    #[error("{0}")]
    Refused(String),
}

/// Tuning of a store; `StoreConfig::default()` is what `Store::open` uses.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Revisions of watch history kept at least (older ones are compacted on apply).
    pub history_retain: u64,
    /// Also compact history older than this (the leader proposes it, as etcd's periodic
    /// auto-compaction); `None` keeps revisions by count only.
    pub history_age: Option<Duration>,
    /// Bytes of recent watch events kept in memory (older ones are read from disk).
    pub event_ring_bytes: usize,
    /// Log entries between state machine snapshots (after which the log is purged).
    pub snapshot_every: u64,
    /// Log bytes appended since the last purge after which a snapshot is taken (or half the
    /// last snapshot's size, if that is more).
    pub snapshot_log_bytes: usize,
    /// At most this many log entries are kept behind the last snapshot when the log is
    /// purged (for followers that lag a little to catch up without a snapshot)...
    pub logs_to_keep: u64,
    /// ...and at most this many bytes of them: one entry can carry a batch of many writes.
    pub log_keep_bytes: usize,
    /// How long `start` waits for a leader and (alone) for its log to be replayed.
    pub open_timeout: Duration,
    /// How long a write waits to be committed before it fails with `StoreError::Timeout`.
    pub write_timeout: Duration,
    /// How long a read waits for its read index before it fails with `StoreError::Timeout`.
    pub read_timeout: Duration,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range: a follower that heard nothing from the leader for a
    /// random time in it starts an election.
    pub election_timeout: (Duration, Duration),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_retain: 10_000,
            history_age: None,
            event_ring_bytes: 16 << 20,
            snapshot_every: 20_000,
            snapshot_log_bytes: 8 << 20,
            logs_to_keep: 1000,
            log_keep_bytes: 2 << 20,
            open_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
        }
    }
}

/// Failures of the disk layer, before they become `StoreError` (or an openraft storage
/// error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiskError {
    #[error("opening {path}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("redb")]
    Redb(#[from] redb::Error),
    #[error("encoding")]
    Json(#[from] serde_json::Error),
    #[error("{what}")]
    Corrupt { what: String, source: CorruptRecord },
    #[error("{file}: key {key:?}")]
    CorruptKey {
        file: PathBuf,
        key: String,
        source: CorruptRecord,
    },
    #[error("io")]
    Io(#[from] std::io::Error),
}

impl DiskError {
    pub(crate) fn corrupt_key(what: &str, source: CorruptRecord) -> DiskError {
        DiskError::Corrupt {
            what: what.to_owned(),
            source,
        }
    }

    /// A record that another one names is not there.
    pub(crate) fn missing(what: &str) -> DiskError {
        DiskError::corrupt_key(
            what,
            CorruptRecord("missing, yet a retained record names it"),
        )
    }
}

impl From<CorruptRecord> for DiskError {
    fn from(source: CorruptRecord) -> DiskError {
        DiskError::Corrupt {
            what: "record".into(),
            source,
        }
    }
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
        match &e {
            DiskError::Corrupt { .. } | DiskError::CorruptKey { .. } => {
                StoreError::Corrupt(error_chain(&e))
            }
            DiskError::Open {
                source: redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_),
                ..
            } => StoreError::Corrupt(error_chain(&e)),
            DiskError::Open {
                path,
                source: redb::Error::DatabaseAlreadyOpen,
            } => StoreError::Refused(format!(
                "{} is in use by another process (is another shoal running on this data dir?)",
                path.display()
            )),
            _ => StoreError::Unavailable(error_chain(&e)),
        }
    }
}

/// `e` and its sources, joined.
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

/// Who a data dir belongs to: `DIR/identity.json`, written once when the member is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub cluster_id: String,
    /// Random, never reused: a removed member's id stays refused.
    pub member_id: u64,
}

const IDENTITY_FILE: &str = "identity.json";

impl Identity {
    /// A new member of a new cluster.
    pub fn generate() -> Identity {
        Identity {
            cluster_id: format!("{:032x}", rand::random::<u128>()),
            member_id: rand::random::<u64>() | 1,
        }
    }

    /// A new member of `cluster_id`.
    pub fn joining(cluster_id: &str) -> Identity {
        Identity {
            cluster_id: cluster_id.to_owned(),
            member_id: rand::random::<u64>() | 1,
        }
    }

    /// The identity of the data dir `dir`, if it has one. A dir with store files but no
    /// identity was made by an older Shoal and is refused.
    pub fn load(dir: &Path) -> Result<Option<Identity>, StoreError> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if dir.join("raft-log.redb").exists() {
                    return Err(StoreError::Refused(format!(
                        "{} holds a store without {IDENTITY_FILE}: it was made by an older Shoal \
                         that this one cannot read; move it away to start afresh",
                        dir.display()
                    )));
                }
                Ok(None)
            }
            Err(e) => Err(StoreError::Unavailable(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes this identity into `dir` (durably).
    pub fn save(&self, dir: &Path) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let tmp = dir.join("identity.json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, dir.join(IDENTITY_FILE)).map_err(io)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }
}

/// The member port: where this member listens for the others, and its TLS.
pub struct PeerTransport {
    pub listener: tokio::net::TcpListener,
    /// Must verify client certificates against the cluster CA.
    pub server_tls: Arc<rustls::ServerConfig>,
    /// Must present this member's certificate (group [`MEMBERS_GROUP`]).
    pub client_tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("listener", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// How a member starts.
#[derive(Debug)]
pub struct MemberOptions {
    pub identity: Identity,
    /// How the others reach this member (name and addresses recorded in the membership).
    pub member: Member,
    /// `None`: this member runs alone, without a member port.
    pub peer: Option<PeerTransport>,
    /// Start a new cluster with this member as its only voter when its log is empty. Without
    /// it, a member with an empty log waits to be added by the cluster's leader.
    pub initialize: bool,
}

/// One member as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub member: Member,
    pub voter: bool,
    pub leader: bool,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    identity: Identity,
    raft: Raft<TypeConfig>,
    core: Arc<cluster::Core>,
    /// Taken by `shutdown`, so the file closes once the state machine worker has stopped.
    sm: RwLock<Option<Arc<state_machine::Shared>>>,
    revision: Arc<AtomicU64>,
    closed: AtomicBool,
    log_writer: Mutex<Option<JoinHandle<()>>>,
    proposer: Arc<propose::Proposer>,
    reads: read::ReadBarrier,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    cancel: CancellationToken,
    fatal: tokio_watch::Receiver<Option<String>>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field(
                "member",
                &format_args!("{:x}", self.inner.identity.member_id),
            )
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
        self.cancel.cancel();
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
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
    /// Opens (or creates) a store under `dir` that runs alone (no member port), replaying its
    /// log. For tests and tools; a server uses [`Store::start`].
    pub async fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreConfig::default()).await
    }

    /// `open` with explicit tuning.
    pub async fn open_with(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let identity = match Identity::load(dir)? {
            Some(identity) => identity,
            None => {
                let identity = Identity::generate();
                identity.save(dir)?;
                identity
            }
        };
        let options = MemberOptions {
            identity,
            member: Member {
                name: "local".into(),
                ..Member::default()
            },
            peer: None,
            initialize: true,
        };
        Store::start(dir, config, options).await
    }

    /// Starts this member over `dir`. The identity must be the dir's own (or the dir new: it
    /// is then saved). With `options.initialize` and an empty log, a new one-member cluster
    /// starts; an initialized member waits (up to `open_timeout`) for a leader, and when alone
    /// until its log is replayed. A member that was removed from its cluster is refused.
    pub async fn start(
        dir: &Path,
        config: StoreConfig,
        options: MemberOptions,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| unavailable("creating store directory", e))?;
        let identity = options.identity;
        match Identity::load(dir)? {
            Some(found) if found != identity => {
                return Err(StoreError::Refused(format!(
                    "{} belongs to member {:x} of cluster {}, not member {:x} of cluster {}",
                    dir.display(),
                    found.member_id,
                    found.cluster_id,
                    identity.member_id,
                    identity.cluster_id
                )));
            }
            Some(_) => {}
            None => identity.save(dir)?,
        }
        let metrics = StoreMetrics::default();
        let wants_snapshot = Arc::new(tokio::sync::Notify::new());
        let trigger = Arc::new(log_store::SnapshotTrigger::new(config.snapshot_log_bytes));
        let (mut log_store, log_writer) = log_store::LogStore::open(
            &dir.join("raft-log.redb"),
            Arc::clone(&trigger),
            Arc::clone(&wants_snapshot),
            metrics.clone(),
        )?;
        let log_reader = log_store.get_log_reader().await;
        let sm = state_machine::StateMachine::open(
            &dir.join("state.redb"),
            config.history_retain,
            config.event_ring_bytes,
            metrics.clone(),
            trigger,
        )?;
        let shared = sm.shared();
        if shared.removed().contains(&identity.member_id) {
            return Err(StoreError::Refused(format!(
                "member {:x} was removed from cluster {}: its data dir {} cannot rejoin; \
                 remove the directory to join as a new member",
                identity.member_id,
                identity.cluster_id,
                dir.display()
            )));
        }
        let (fatal_tx, fatal) = tokio_watch::channel(None);
        let network = network::Network::new(
            options.peer.as_ref().map(|p| Arc::clone(&p.client_tls)),
            identity.cluster_id.clone(),
            identity.member_id,
            fatal_tx,
        );
        let (min, max) = config.election_timeout;
        let raft_config = openraft::Config {
            cluster_name: identity.cluster_id.clone(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: min.as_millis() as u64,
            election_timeout_max: max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            // openraft's own purge keeps a number of entries; `purge_behind_snapshots` purges
            // by bytes instead (an entry can carry a batch of many writes).
            max_in_snapshot_log_to_keep: u64::MAX,
            max_payload_entries: 32,
            install_snapshot_timeout: 600_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| unavailable("raft config", e))?;
        let raft = Raft::new(
            identity.member_id,
            Arc::new(raft_config),
            network.clone(),
            log_store,
            sm,
        )
        .await
        .map_err(|e| unavailable("starting raft", e))?;
        let core = Arc::new(cluster::Core {
            raft: raft.clone(),
            network,
            id: identity.member_id,
            revision: Arc::clone(&shared.revision),
            timing: cluster::Timing {
                write_timeout: config.write_timeout,
                read_timeout: config.read_timeout,
                quorum_grace: max,
                leader_wait: max * 3,
                attempt: max * 2,
            },
            metrics: metrics.clone(),
        });
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let (proposer, proposer_task) = propose::Proposer::spawn(Arc::clone(&core));
        let proposer = Arc::new(proposer);
        tasks.push(proposer_task);
        if let Some(peer) = options.peer {
            let state = Arc::new(peer::PeerState {
                raft: raft.clone(),
                proposer: Arc::clone(&proposer),
                shared: Arc::clone(&shared),
                cluster_id: identity.cluster_id.clone(),
                id: identity.member_id,
                quorum_grace: core.timing.quorum_grace,
            });
            let app = peer::router(state);
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = shoal_tls::serve(peer.listener, peer.server_tls, app, cancel).await
                {
                    tracing::error!(error = %e, "member port stopped");
                }
            }));
        }
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| unavailable("starting raft", e))?;
        if !initialized && options.initialize {
            let members = BTreeMap::from([(identity.member_id, options.member.clone())]);
            raft.initialize(members)
                .await
                .map_err(|e| unavailable("initializing raft", e))?;
            tracing::info!(dir = %dir.display(), cluster = %identity.cluster_id, "initialized a new cluster");
        }
        if initialized || options.initialize {
            // Serve nothing until a leader is known; alone, until the log is replayed too: a
            // write acknowledged before a restart must be readable after it.
            let alone = core.alone();
            let waiter = raft.wait(Some(config.open_timeout));
            let ready = waiter.metrics(
                |m| {
                    m.current_leader.is_some()
                        && (!alone
                            || (m.state == ServerState::Leader
                                && m.last_applied.map(|l| l.index) == m.last_log_index))
                },
                "a leader, and alone the log applied",
            );
            // A peer may tell us meanwhile that we were removed or belong elsewhere.
            let mut refused = fatal.clone();
            let refusal = async move {
                loop {
                    if let Some(reason) = refused.borrow_and_update().clone() {
                        return reason;
                    }
                    if refused.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            let outcome = tokio::select! {
                ready = ready => ready.map(|_| ()).map_err(|e| unavailable("waiting for a raft leader", e)),
                reason = refusal => Err(StoreError::Refused(format!(
                    "{reason}: {} cannot serve with this data dir",
                    dir.display()
                ))),
            };
            if let Err(e) = outcome {
                cancel.cancel();
                for task in &tasks {
                    task.abort();
                }
                let _ = raft.shutdown().await;
                return Err(e);
            }
        }
        let (reads, reads_task) = read::ReadBarrier::spawn(Arc::clone(&core));
        tasks.push(reads_task);
        tasks.push(tokio::spawn(trigger_snapshots(
            raft.clone(),
            wants_snapshot,
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(purge_behind_snapshots(
            raft.clone(),
            log_reader,
            (config.log_keep_bytes, config.logs_to_keep),
            cancel.clone(),
        )));
        if let Some(age) = config.history_age {
            tasks.push(tokio::spawn(compact_by_age(
                raft.clone(),
                Arc::clone(&shared.revision),
                age,
                cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(follow_metrics(
            raft.clone(),
            Arc::downgrade(&shared),
            dir.to_owned(),
            metrics.clone(),
            cancel.clone(),
        )));
        let revision = Arc::clone(&shared.revision);
        tracing::info!(
            dir = %dir.display(),
            member = %format_args!("{:x}", identity.member_id),
            revision = revision.load(Ordering::Acquire),
            "opened store"
        );
        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                identity,
                raft,
                core,
                sm: RwLock::new(Some(shared)),
                revision,
                closed: AtomicBool::new(false),
                log_writer: Mutex::new(Some(log_writer)),
                proposer,
                reads,
                tasks: Mutex::new(tasks),
                cancel,
                fatal,
                metrics,
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

    async fn propose(&self, write: Write) -> Result<Outcome, StoreError> {
        self.shared()?;
        self.inner.proposer.propose(write).await
    }

    /// This member's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The revision of the last write applied on this member.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::Acquire)
    }

    /// The current revision, read linearizably: every write acknowledged anywhere before the
    /// call is at or below it.
    pub async fn consistent_revision(&self) -> Result<u64, StoreError> {
        self.inner.reads.wait().await?;
        Ok(self.revision())
    }

    /// Reads `key` (linearizable).
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.reads.wait().await?;
        Ok(self.shared()?.get(key)?)
    }

    /// All keys starting with `prefix`, in key order, read at one revision (linearizable).
    pub async fn list(&self, prefix: &str) -> Result<ListResult, StoreError> {
        self.inner.reads.wait().await?;
        let (items, revision) = self.shared()?.list(prefix)?;
        Ok(ListResult { items, revision })
    }

    /// Writes `key` only if absent. Returns the stored pair.
    pub async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue, StoreError> {
        self.write_value(key, value, None, |key, value| Write::Create { key, value })
            .await
    }

    /// Overwrites an existing `key`; with `expected` set, only if its `mod_revision` matches.
    pub async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<KeyValue, StoreError> {
        self.write_value(key, value, expected, |key, value| Write::Update {
            key,
            value,
            expected,
        })
        .await
    }

    /// Proposes the write `make` builds from `key` and `value`; the stored pair, or why not.
    async fn write_value(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<u64>,
        make: impl FnOnce(String, Bytes) -> Write,
    ) -> Result<KeyValue, StoreError> {
        check_size(&value)?;
        let value = Bytes::from(value);
        match self.propose(make(key.to_owned(), value.clone())).await? {
            Outcome::Written {
                create_revision,
                mod_revision,
            } => Ok(KeyValue {
                key: key.to_owned(),
                value,
                create_revision,
                mod_revision,
            }),
            Outcome::AlreadyExists => Err(StoreError::AlreadyExists(key.to_owned())),
            other => Err(condition_failed(key, expected, other)),
        }
    }

    /// Deletes `key`; with `expected` set, only if its `mod_revision` matches. Returns the
    /// deleted pair and the revision of the deletion.
    pub async fn delete(
        &self,
        key: &str,
        expected: Option<u64>,
    ) -> Result<(KeyValue, u64), StoreError> {
        let write = Write::Delete {
            key: key.to_owned(),
            expected,
        };
        match self.propose(write).await? {
            Outcome::Deleted { prev, revision } => Ok((prev, revision)),
            other => Err(condition_failed(key, expected, other)),
        }
    }

    /// Drops watch history so that at least the last `keep` revisions remain; returns the
    /// newest compacted revision (watching from before it gets `Compacted`). The store also
    /// compacts by itself, keeping `StoreConfig::history_retain` revisions.
    pub async fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        self.shared()?;
        let write = self.inner.raft.client_write(Request::Compact { keep });
        match tokio::time::timeout(self.inner.core.timing.write_timeout, write).await {
            Ok(Ok(r)) => match r.data {
                Response::Compacted { compacted } => Ok(compacted),
                other => Err(StoreError::Unavailable(format!(
                    "unexpected apply response {other:?}"
                ))),
            },
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("compact: {e}"))),
            Err(_) => Err(StoreError::Timeout("compact timed out".into())),
        }
    }

    /// Events for keys under `prefix` with revision > `after`, retained history first, then
    /// live. `Compacted` if `after` is older than what is retained.
    pub fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        watch::watch(&self.shared()?, prefix, after)
    }

    /// Like [`Store::watch`], and also reports progress whenever the stream has caught up
    /// with the newest revision (etcd's progress notifications): a cache fed by it knows the
    /// revision it reflects even when nothing under its prefix changes.
    pub fn watch_progress(
        &self,
        prefix: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<WatchItem, StoreError>>, StoreError> {
        watch::watch_progress(&self.shared()?, prefix, after)
    }

    /// The members of the cluster, as this member last learned them.
    pub fn members(&self) -> Vec<MemberStatus> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, member)| MemberStatus {
                id: *id,
                member: member.clone(),
                voter: voters.contains(id),
                leader: m.current_leader == Some(*id),
            })
            .collect()
    }

    /// Adds member `id` (a learner first, until it caught up, then a voter). Sent to the
    /// leader from any member; waits until done.
    pub async fn add_member(&self, id: u64, member: Member) -> Result<(), StoreError> {
        self.change_membership(network::MembershipChange::Add { id, member })
            .await
    }

    /// Removes member `id`; it is then refused by the others for good.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        self.change_membership(network::MembershipChange::Remove { id })
            .await
    }

    async fn change_membership(&self, change: network::MembershipChange) -> Result<(), StoreError> {
        self.shared()?;
        let core = &self.inner.core;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            let answer = match core.leader() {
                cluster::Leader::Me => {
                    peer::change_membership(&core.raft, core.id, change.clone()).await
                }
                cluster::Leader::Other(leader) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match core
                        .network
                        .change_membership(&leader, &change, remaining)
                        .await
                    {
                        Ok(answer) => answer,
                        Err(e) => Err(network::ForwardError::Failed(e.to_string())),
                    }
                }
                cluster::Leader::Unknown => Err(network::ForwardError::NotLeader {
                    me: core.id,
                    leader: None,
                }),
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(
                    network::ForwardError::NotLeader { .. } | network::ForwardError::Lost { .. },
                ) if tokio::time::Instant::now() < deadline => {
                    core.state_change(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
        }
    }

    /// Waits until this member is a voter of its cluster and knows the leader (after it was
    /// added by `add_member` on another member).
    pub async fn wait_voter(&self, timeout: Duration) -> Result<(), StoreError> {
        let me = self.inner.identity.member_id;
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.membership_config
                            .membership()
                            .voter_ids()
                            .any(|v| v == me)
                },
                "this member a voter",
            )
            .await
            .map(|_| ())
            .map_err(|e| unavailable("waiting to become a voter", e))
    }

    /// Whether this member leads.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().current_leader == Some(self.inner.identity.member_id)
    }

    /// Resolves when this member can no longer serve: a peer said it was removed from the
    /// cluster or belongs to another one. Carries the reason.
    pub async fn fatal(&self) -> String {
        let mut rx = self.inner.fatal.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "store stopped".into();
            }
        }
    }

    /// The store's metrics (etcd's names), to register with a Prometheus registry.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.inner.metrics
    }

    /// Bytes the data dir's store files take.
    pub fn disk_size(&self) -> u64 {
        dir_size(&self.inner.dir)
    }

    /// Stops raft and flushes; further calls fail with `Unavailable`. Once it returns, the
    /// files under the store's directory are closed and it can be opened again. (Dropping the
    /// last handle without `shutdown` stops raft in the background; reopening the same
    /// directory in the same process then needs `shutdown` first.)
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.cancel.cancel();
        let result = self
            .inner
            .raft
            .shutdown()
            .await
            .map_err(|e| unavailable("stopping raft", e));
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        for task in tasks {
            // Writes still queued are answered `Unavailable` when their reply is dropped.
            task.abort();
            let _ = task.await;
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

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Takes a snapshot whenever the log store says the log grew by `snapshot_log_bytes`.
async fn trigger_snapshots(
    raft: Raft<TypeConfig>,
    wants: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wants.notified() => {}
        }
        tracing::debug!("raft log past its byte budget: taking a snapshot");
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// After each snapshot, purges the log behind it down to `keep` (bytes, entries). openraft
/// defers a purge while a replication to a follower still reads those entries; a follower
/// that needs purged entries gets a snapshot.
async fn purge_behind_snapshots(
    raft: Raft<TypeConfig>,
    log: log_store::LogReader,
    (keep_bytes, keep_entries): (usize, u64),
    cancel: CancellationToken,
) {
    let mut rx = raft.metrics();
    let mut done: Option<u64> = None;
    loop {
        let snapshot = rx.borrow_and_update().snapshot.map(|s| s.index);
        if let Some(snapshot) = snapshot.filter(|s| Some(*s) != done) {
            let log = log.clone();
            let point = tokio::task::spawn_blocking(move || {
                log.purge_point(snapshot, keep_bytes, keep_entries)
            })
            .await;
            match point {
                Ok(Ok(Some(upto))) => {
                    if raft.trigger().purge_log(upto).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "reading the raft log to purge it"),
                Err(_) => return,
            }
            done = Some(snapshot);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// On the leader, compacts history older than `age`: samples the revision every tenth of
/// `age` (at most a minute) and compacts up to the newest sample older than `age`.
async fn compact_by_age(
    raft: Raft<TypeConfig>,
    revision: Arc<AtomicU64>,
    age: Duration,
    cancel: CancellationToken,
) {
    let every = (age / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut samples: std::collections::VecDeque<(tokio::time::Instant, u64)> =
        std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let current = revision.load(Ordering::Acquire);
        samples.push_back((now, current));
        let mut upto = None;
        while let Some((at, rev)) = samples.front().copied() {
            if now.duration_since(at) < age {
                break;
            }
            upto = Some(rev);
            samples.pop_front();
        }
        let metrics = raft.metrics().borrow().clone();
        if let Some(upto) = upto
            && metrics.current_leader == Some(metrics.id)
        {
            let keep = current.saturating_sub(upto);
            if let Err(e) = raft.client_write(Request::Compact { keep }).await {
                tracing::debug!(error = %e, "periodic compaction failed");
            }
        }
    }
}

/// Keeps the leader and progress gauges in step with raft, and the size gauge with the disk.
async fn follow_metrics(
    raft: Raft<TypeConfig>,
    shared: Weak<state_machine::Shared>,
    dir: PathBuf,
    metrics: StoreMetrics,
    cancel: CancellationToken,
) {
    let mut rx = raft.metrics();
    let mut last_leader = None;
    let mut size_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        {
            let m = rx.borrow_and_update();
            metrics
                .has_leader
                .set(i64::from(m.current_leader.is_some()));
            metrics
                .is_leader
                .set(i64::from(m.current_leader == Some(m.id)));
            if m.current_leader.is_some() && m.current_leader != last_leader {
                if last_leader.is_some() {
                    metrics.leader_changes.inc();
                }
                if let Some(leader) = m.current_leader {
                    tracing::info!(
                        leader = %format_args!("{leader:x}"),
                        term = m.current_term,
                        me = m.current_leader == Some(m.id),
                        "raft leader"
                    );
                }
                last_leader = m.current_leader;
            }
            let applied = m.last_applied.map_or(0, |l| l.index);
            metrics.proposals_applied.set(applied);
            metrics.proposals_committed.set(applied);
        }
        if let Some(shared) = shared.upgrade() {
            metrics
                .current_revision
                .set(shared.revision.load(Ordering::Acquire));
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            _ = size_tick.tick() => {
                let dir = dir.clone();
                if let Ok(size) = tokio::task::spawn_blocking(move || dir_size(&dir)).await {
                    metrics.db_total_size.set(size);
                }
            }
        }
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

fn condition_failed(key: &str, expected: Option<u64>, outcome: Outcome) -> StoreError {
    match outcome {
        Outcome::NotFound => StoreError::NotFound(key.to_owned()),
        Outcome::AlreadyExists => StoreError::AlreadyExists(key.to_owned()),
        Outcome::Conflict { current } => StoreError::Conflict {
            key: key.to_owned(),
            expected: expected.unwrap_or_default(),
            current,
        },
        Outcome::Expired => StoreError::Unavailable(
            "the write waited too long to be applied and was refused; retry it".into(),
        ),
        other => StoreError::Unavailable(format!("unexpected write outcome {other:?}")),
    }
}

#[cfg(test)]
mod tests;
