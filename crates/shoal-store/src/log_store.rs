//! The raft log on disk (`raft-log.redb`): entries, vote, committed and purged log ids.
//!
//! `append` puts entries in an in-memory cache (so they are readable at once) and hands them to
//! one writer thread. The thread drains every queued operation, writes them in a single redb
//! transaction with `Durability::Immediate` and only then fires openraft's flush callbacks: many
//! concurrent client writes share one fsync, and no lock is held across it. Vote, truncate and
//! purge go through the same queue, so all log IO stays in order.
//!
//! The cache keeps the newest entries (those not yet durable and up to `CACHE_BYTES` of durable
//! ones, for the state machine and replication to read back without touching disk); older
//! entries are read from redb. It is bounded in bytes, not entries: one entry can carry
//! thousands of writes.
//!
//! Every commit is durable and two-phase, and the file's page checksums are verified on open,
//! so a damaged log is refused at start instead of being silently rolled back. The log also
//! counts the bytes appended since its last purge; past the `SnapshotTrigger`'s threshold it
//! asks the store for a snapshot, after which the store purges the log behind it
//! (`LogReader::purge_point`), which bounds the log in bytes: between snapshots by the
//! threshold, behind one by a byte budget.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::DiskError;
use crate::codec::{decode_entry, encode_entry};
use crate::metrics::StoreMetrics;
use crate::raft::TypeConfig;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "purged";

/// Bytes of durable entries kept in memory beyond those still waiting for their fsync.
const CACHE_BYTES: usize = 16 << 20;
/// Page cache of the log file.
const FILE_CACHE_BYTES: usize = 16 << 20;
/// Most operations written in one transaction.
const MAX_BATCH: usize = 4096;

type Done = oneshot::Sender<Result<(), String>>;

enum Op {
    Append {
        entries: Vec<Entry<TypeConfig>>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        since: u64,
        done: Done,
    },
    Purge {
        upto: LogId<u64>,
        done: Done,
    },
    SaveVote {
        vote: Vote<u64>,
        done: Done,
    },
    SaveCommitted {
        committed: Option<LogId<u64>>,
    },
}

struct Shared {
    db: Database,
    /// A contiguous run of the newest entries, by index, with their encoded sizes.
    cache: Mutex<Cache>,
    /// Bytes appended since the last purge or snapshot request.
    since_purge: AtomicUsize,
    trigger: Arc<SnapshotTrigger>,
    /// Fired each time `since_purge` passes the trigger's threshold.
    wants_snapshot: Arc<tokio::sync::Notify>,
    metrics: StoreMetrics,
}

/// How many log bytes call for a snapshot: `floor`, or half the last snapshot's size when that
/// is more. A small state keeps a small log; a large one is not rewritten after every few MiB
/// of log (snapshot writes stay under twice the log's).
pub struct SnapshotTrigger {
    floor: usize,
    last_snapshot: AtomicU64,
}

impl SnapshotTrigger {
    pub fn new(floor: usize) -> Self {
        SnapshotTrigger {
            floor,
            last_snapshot: AtomicU64::new(0),
        }
    }

    pub fn threshold(&self) -> usize {
        let half = self.last_snapshot.load(Ordering::Relaxed) / 2;
        self.floor.max(usize::try_from(half).unwrap_or(usize::MAX))
    }

    /// A snapshot of `bytes` became the current one.
    pub fn snapshot_written(&self, bytes: u64) {
        self.last_snapshot.store(bytes, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Cache {
    fn insert(&mut self, entry: Entry<TypeConfig>) {
        let size = entry_size(&entry);
        self.bytes += size;
        if let Some((_, old)) = self.entries.insert(entry.log_id.index, (entry, size)) {
            self.bytes -= old;
        }
    }

    /// Drops entries at `index` and above.
    fn truncate(&mut self, index: u64) {
        for (_, (_, size)) in self.entries.split_off(&index) {
            self.bytes -= size;
        }
    }

    /// Drops entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        let keep = self.entries.split_off(&(index + 1));
        for (_, (_, size)) in std::mem::replace(&mut self.entries, keep) {
            self.bytes -= size;
        }
    }
}

fn entry_size(entry: &Entry<TypeConfig>) -> usize {
    64 + match &entry.payload {
        openraft::EntryPayload::Normal(req) => crate::codec::request_size(req),
        _ => 256,
    }
}

/// openraft's log storage; owned by the raft core.
pub struct LogStore {
    shared: Arc<Shared>,
    ops: mpsc::Sender<Op>,
    last_purged: Option<LogId<u64>>,
    last_log: Option<LogId<u64>>,
}

/// Reads entries for openraft (apply, replication).
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl LogStore {
    /// Opens `path` and starts the writer thread; the thread ends when the store is dropped.
    /// Past `trigger`'s threshold appended since the last purge, `wants_snapshot` is notified.
    pub fn open(
        path: &Path,
        trigger: Arc<SnapshotTrigger>,
        wants_snapshot: Arc<tokio::sync::Notify>,
        metrics: StoreMetrics,
    ) -> Result<(LogStore, JoinHandle<()>), DiskError> {
        let mut builder = Database::builder();
        builder
            .set_cache_size(FILE_CACHE_BYTES)
            .set_check_integrity_on_open(true);
        let db = builder.create(path).map_err(|e| DiskError::Open {
            path: path.to_owned(),
            source: e.into(),
        })?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;

        let (last_purged, last_log) = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let last_purged: Option<LogId<u64>> = match meta.get(PURGED_KEY)? {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            };
            let log = txn.open_table(LOG)?;
            let last_log = match log.last()? {
                Some((_, v)) => Some(decode_entry(v.value())?.log_id),
                None => last_purged,
            };
            (last_purged, last_log)
        };

        let shared = Arc::new(Shared {
            db,
            cache: Mutex::new(Cache::default()),
            since_purge: AtomicUsize::new(0),
            trigger,
            wants_snapshot,
            metrics,
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("shoal-raft-log".into())
            .spawn(move || run_writer(&writer_shared, &rx))?;
        Ok((
            LogStore {
                shared,
                ops: tx,
                last_purged,
                last_log,
            },
            handle,
        ))
    }

    /// Queues `op` and waits for its transaction.
    async fn submit(
        &self,
        op: Op,
        done: oneshot::Receiver<Result<(), String>>,
    ) -> Result<(), Message> {
        self.ops
            .send(op)
            .map_err(|_| Message("raft log writer stopped".into()))?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Message(e)),
            Err(_) => Err(Message("raft log writer stopped".into())),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl Shared {
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, DiskError> {
        if start >= end {
            return Ok(Vec::new());
        }
        // Entries below the cache's first index are durable in redb: the cache only drops
        // entries after their transaction committed.
        let (cache_lo, cached): (u64, Vec<Entry<TypeConfig>>) = {
            let cache = lock(&self.cache);
            let lo = cache.entries.keys().next().copied().unwrap_or(u64::MAX);
            let from = start.max(lo);
            let cached = if from < end {
                cache
                    .entries
                    .range(from..end)
                    .map(|(_, (e, _))| e.clone())
                    .collect()
            } else {
                Vec::new()
            };
            (lo, cached)
        };
        let disk_end = end.min(cache_lo);
        let mut out = Vec::with_capacity(cached.len());
        if start < disk_end {
            let txn = self.db.begin_read()?;
            let log = txn.open_table(LOG)?;
            for item in log.range(start..disk_end)? {
                let (_, v) = item?;
                out.push(decode_entry(v.value())?);
            }
        }
        out.extend(cached);
        Ok(out)
    }
}

impl LogReader {
    /// The index to purge up to (inclusive) after a snapshot that covers the log up to
    /// `snapshot`, so that at most `keep_entries` entries and `keep_bytes` encoded bytes stay
    /// behind it (for followers that lag a little to catch up from the log rather than from a
    /// snapshot); `None` when everything behind it fits. Counted backwards from `snapshot`.
    pub(crate) fn purge_point(
        &self,
        snapshot: u64,
        keep_bytes: usize,
        keep_entries: u64,
    ) -> Result<Option<u64>, DiskError> {
        let txn = self.shared.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut kept_bytes = 0usize;
        for (kept, item) in (0u64..).zip(log.range(..=snapshot)?.rev()) {
            let (index, raw) = item?;
            let size = raw.value().len();
            if kept >= keep_entries || kept_bytes + size > keep_bytes {
                return Ok(Some(index.value()));
            }
            kept_bytes += size;
        }
        Ok(None)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let (start, end) = bounds(&range);
        self.shared.read_range(start, end).map_err(read_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let (start, end) = bounds(&range);
        self.shared.read_range(start, end).map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: self.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let (done, rx) = oneshot::channel();
        self.submit(Op::SaveVote { vote: *vote, done }, rx)
            .await
            .map_err(write_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        read_meta(&self.shared.db, VOTE_KEY).map_err(read_err)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Not waited for: openraft treats a lost committed id as "re-learn it from the log".
        self.ops
            .send(Op::SaveCommitted { committed })
            .map_err(|_| write_err(Message("raft log writer stopped".into())))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(
            read_meta::<Option<LogId<u64>>>(&self.shared.db, COMMITTED_KEY)
                .map_err(read_err)?
                .flatten(),
        )
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        self.last_log = Some(last.log_id);
        {
            let mut cache = lock(&self.shared.cache);
            let before = cache.bytes;
            for e in &entries {
                cache.insert(e.clone());
            }
            let added = cache.bytes.saturating_sub(before);
            let total = self.shared.since_purge.fetch_add(added, Ordering::AcqRel) + added;
            // Counting starts again at each request: a snapshot does not always purge (the
            // log keeps a budget of entries behind it), and waiting for a purge that never
            // comes would let the log grow until the entry-count policy fires.
            if total >= self.shared.trigger.threshold() {
                self.shared.since_purge.store(0, Ordering::Release);
                self.shared.wants_snapshot.notify_one();
            }
        }
        self.ops
            .send(Op::Append { entries, callback })
            .map_err(|_| write_err(Message("raft log writer stopped".into())))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        lock(&self.shared.cache).truncate(log_id.index);
        let (done, rx) = oneshot::channel();
        self.submit(
            Op::Truncate {
                since: log_id.index,
                done,
            },
            rx,
        )
        .await
        .map_err(write_err)?;
        // The entry before `log_id` is now the last one (or the purge point).
        self.last_log = match log_id.index.checked_sub(1) {
            Some(prev) => self
                .shared
                .read_range(prev, prev + 1)
                .map_err(read_err)?
                .pop()
                .map(|e| e.log_id)
                .or(self.last_purged),
            None => self.last_purged,
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        lock(&self.shared.cache).purge(log_id.index);
        self.shared.since_purge.store(0, Ordering::Release);
        let (done, rx) = oneshot::channel();
        self.submit(Op::Purge { upto: log_id, done }, rx)
            .await
            .map_err(write_err)?;
        self.last_purged = Some(log_id);
        if self.last_log < Some(log_id) {
            self.last_log = Some(log_id);
        }
        Ok(())
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, DiskError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    match meta.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

/// Writes `ops` in one durable transaction; returns the highest index appended.
fn write_batch(db: &Database, ops: &[Op]) -> Result<Option<u64>, DiskError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.set_two_phase_commit(true);
    let mut highest = None;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(META)?;
        for op in ops {
            match op {
                Op::Append { entries, .. } => {
                    for e in entries {
                        log.insert(e.log_id.index, encode_entry(e)?.as_slice())?;
                        highest = Some(e.log_id.index);
                    }
                }
                Op::Truncate { since, .. } => {
                    log.retain_in(*since.., |_, _| false)?;
                    if highest.is_some_and(|h| h >= *since) {
                        highest = since.checked_sub(1);
                    }
                }
                Op::Purge { upto, .. } => {
                    log.retain_in(..=upto.index, |_, _| false)?;
                    meta.insert(PURGED_KEY, serde_json::to_vec(upto)?.as_slice())?;
                }
                Op::SaveVote { vote, .. } => {
                    meta.insert(VOTE_KEY, serde_json::to_vec(vote)?.as_slice())?;
                }
                Op::SaveCommitted { committed } => {
                    meta.insert(COMMITTED_KEY, serde_json::to_vec(committed)?.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(highest)
}

fn run_writer(shared: &Shared, rx: &mpsc::Receiver<Op>) {
    let mut flushed_upto: u64 = 0;
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = write_batch(&shared.db, &ops);
        shared
            .metrics
            .wal_fsync
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(highest) => {
                for op in &ops {
                    if let Op::Truncate { since, .. } = op {
                        flushed_upto = flushed_upto.min(since.saturating_sub(1));
                    }
                }
                if let Some(h) = highest {
                    flushed_upto = flushed_upto.max(*h);
                }
                let mut cache = lock(&shared.cache);
                while cache.bytes > CACHE_BYTES {
                    match cache.entries.first_key_value() {
                        Some((&i, _)) if i <= flushed_upto => {
                            if let Some((_, (_, size))) = cache.entries.pop_first() {
                                cache.bytes -= size;
                            }
                        }
                        _ => break,
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "raft log write failed"),
        }
        for op in ops {
            let res = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            match op {
                Op::Append { callback, .. } => callback.log_io_completed(res.map_err(io_err)),
                Op::Truncate { done, .. } | Op::Purge { done, .. } | Op::SaveVote { done, .. } => {
                    let _ = done.send(res);
                }
                Op::SaveCommitted { .. } => {}
            }
        }
    }
    tracing::debug!("raft log writer stopped");
}
