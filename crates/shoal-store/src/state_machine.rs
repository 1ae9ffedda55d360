//! The state machine on disk (`state.redb`): keys with their revisions, the watch history
//! (revision -> event), the outcomes of recently applied writes (write id -> outcome) and the
//! raft bookkeeping (last applied log id, membership, removed members, revision counter,
//! compaction point), all changed together in one transaction per applied batch.
//!
//! Most applies commit with `Durability::None`; one every `FLUSH_BYTES` of applied data or
//! `FLUSH_INTERVAL` commits durably (two-phase), which both bounds the replay after a crash and
//! lets redb reuse the pages that non-durable commits freed (without it the file grows with
//! every write). A crash loses only non-durable applies, and openraft replays them from the log
//! on restart, giving the same revisions again. Building a snapshot first makes everything
//! applied durable, and openraft purges the log only up to a snapshot, so purged log never runs
//! ahead of durable state.
//!
//! History: an update's event names the value it replaced by revision rather than repeating
//! it (`StoredEvent::PutAfter`). When compaction drops the event a retained update refers to,
//! that event moves to the kept table (key -> event), one per key at most, until the update
//! referring to it is compacted in turn; an update written when its predecessor was already
//! compacted carries the value inline.
//!
//! Write ids: every applied write's outcome is remembered under its id until the watch history
//! older than the id's ticket is compacted; a write applied again with the same id gets its
//! first outcome back. Snapshots are files (see `snapshot.rs`).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition};

use crate::codec::{
    StoredEvent, decode_event, decode_outcome, decode_record, encode_event, encode_outcome,
    encode_put_after, encode_record,
};
use crate::events::EventRing;
use crate::metrics::StoreMetrics;
use crate::raft::{Member, Op, Outcome, Request, Response, TypeConfig, Write};
use crate::snapshot::{self, SnapshotHeader};
use crate::{DiskError, KeyValue, WatchEvent};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
pub(crate) const OPS: TableDefinition<u128, &[u8]> = TableDefinition::new("ops");
/// Compacted put events still named by a retained update, by key.
pub(crate) const KEPT: TableDefinition<&str, &[u8]> = TableDefinition::new("kept");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const APPLIED_KEY: &str = "applied";
const MEMBERSHIP_KEY: &str = "membership";
const REVISION_KEY: &str = "revision";
const COMPACTED_KEY: &str = "compacted";
const REMOVED_KEY: &str = "removed";

/// History is trimmed in steps of this many revisions past the retention, so that the apply
/// path does not delete one event per write.
const COMPACT_STEP: u64 = 1024;
/// Applied bytes after which an apply commits durably.
const FLUSH_BYTES: usize = 4 << 20;
/// Time after which an apply commits durably.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Page cache of the state file.
const CACHE_BYTES: usize = 32 << 20;

/// Opens a redb file that must be intact: every page checksum is verified on open, and a file
/// whose newest commit is damaged is refused instead of being rolled back.
pub(crate) fn open_database(path: &Path) -> Result<Database, DiskError> {
    let mut builder = Database::builder();
    builder
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true);
    builder.create(path).map_err(|e| DiskError::Open {
        path: path.to_owned(),
        source: e.into(),
    })
}

/// What the state machine and the `Store` handle share.
pub struct Shared {
    pub db: Database,
    pub path: PathBuf,
    /// Revision of the last applied write, updated after its transaction committed.
    pub revision: Arc<AtomicU64>,
    compacted: AtomicU64,
    pub events: EventRing,
    /// Revisions of history to keep at least.
    pub retain: u64,
    /// Members removed from the cluster: their requests are refused.
    removed: RwLock<BTreeSet<u64>>,
    pub metrics: StoreMetrics,
    snapshots: SnapshotFiles,
}

struct SnapshotFiles {
    dir: PathBuf,
    current: Mutex<Option<(SnapshotMeta<u64, Member>, PathBuf)>>,
    /// Files handed out by `begin_receiving_snapshot`, by (device, inode).
    incoming: Mutex<HashMap<(u64, u64), PathBuf>>,
    seq: AtomicU64,
    /// Told the size of each snapshot that becomes current.
    trigger: Arc<crate::log_store::SnapshotTrigger>,
}

impl SnapshotFiles {
    fn set_current(&self, meta: &SnapshotMeta<u64, Member>, path: &Path) {
        if let Ok(m) = std::fs::metadata(path) {
            self.trigger.snapshot_written(m.len());
        }
        *lock(&self.current) = Some((meta.clone(), path.to_owned()));
    }
}

/// openraft's state machine; owned by its state machine worker.
pub struct StateMachine {
    shared: Arc<Shared>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    revision: u64,
    compacted: u64,
    removed: BTreeSet<u64>,
    unflushed: usize,
    last_flush: Instant,
}

/// Builds a snapshot from the read transaction taken when it was asked for, right after the
/// state machine was flushed; if that flush failed, building fails with its error.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    /// The durable state to snapshot, taken by the first `build_snapshot`.
    txn: Option<Result<ReadTransaction, Box<StorageError<u64>>>>,
    seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Flushes every applied transaction to disk, then opens a read transaction on that state.
///
/// A flush failure is a state machine write error: a snapshot over non-durable applies would let
/// openraft purge log entries that a crash then loses.
fn durable_read(shared: &Shared) -> Result<ReadTransaction, Box<StorageError<u64>>> {
    shared.flush().map_err(|e| {
        tracing::warn!(error = %e, "flushing state machine for snapshot failed");
        Box::new(sm_write_err(e))
    })?;
    shared.db.begin_read().map_err(|e| Box::new(sm_read_err(e)))
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn snapshot_err(meta: Option<&SnapshotMeta<u64, Member>>, e: DiskError) -> StorageError<u64> {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::new(&e)).into()
}

fn get_json<T: serde::de::DeserializeOwned>(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, DiskError> {
    match meta.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn put_json<T: serde::Serialize>(
    meta: &mut Table<'_, &'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), DiskError> {
    meta.insert(key, serde_json::to_vec(value)?.as_slice())?;
    Ok(())
}

/// The applied state recorded in the meta table.
struct Applied {
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, Member>,
    revision: u64,
    compacted: u64,
    removed: BTreeSet<u64>,
}

fn read_applied(txn: &ReadTransaction) -> Result<Applied, DiskError> {
    let meta = txn.open_table(META)?;
    Ok(Applied {
        applied: get_json::<Option<LogId<u64>>>(&meta, APPLIED_KEY)?.flatten(),
        membership: get_json(&meta, MEMBERSHIP_KEY)?.unwrap_or_default(),
        revision: get_json(&meta, REVISION_KEY)?.unwrap_or(0u64),
        compacted: get_json(&meta, COMPACTED_KEY)?.unwrap_or(0u64),
        removed: get_json(&meta, REMOVED_KEY)?.unwrap_or_default(),
    })
}

impl StateMachine {
    /// Opens (or creates) the state machine file at `path`; snapshots live in `path`'s
    /// directory under `snapshots/`. The in-memory event ring holds at most `ring_bytes`.
    pub fn open(
        path: &Path,
        retain: u64,
        ring_bytes: usize,
        metrics: StoreMetrics,
        trigger: Arc<crate::log_store::SnapshotTrigger>,
    ) -> Result<StateMachine, DiskError> {
        let db = open_database(path)?;
        let txn = db.begin_write()?;
        txn.open_table(KV)?;
        txn.open_table(HISTORY)?;
        txn.open_table(OPS)?;
        txn.open_table(KEPT)?;
        txn.open_table(META)?;
        txn.commit()?;
        let state = read_applied(&db.begin_read()?)?;
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("snapshots"), |p| p.join("snapshots"));
        std::fs::create_dir_all(&dir)?;
        let current = snapshot::newest(&dir).map(|(h, p)| (h.meta, p));
        snapshot::clean(&dir, current.as_ref().map(|(_, p)| p.as_path()), true);
        let snapshots = SnapshotFiles {
            dir,
            current: Mutex::new(None),
            incoming: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            trigger,
        };
        if let Some((meta, path)) = &current {
            snapshots.set_current(meta, path);
        }
        Ok(StateMachine {
            shared: Arc::new(Shared {
                db,
                path: path.to_owned(),
                revision: Arc::new(AtomicU64::new(state.revision)),
                compacted: AtomicU64::new(state.compacted),
                events: EventRing::new(ring_bytes, state.revision),
                retain,
                removed: RwLock::new(state.removed.clone()),
                metrics,
                snapshots,
            }),
            applied: state.applied,
            membership: state.membership,
            revision: state.revision,
            compacted: state.compacted,
            removed: state.removed,
            unflushed: 0,
            last_flush: Instant::now(),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub(crate) fn apply_batch(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, DiskError> {
        let mut responses = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut txn = self.shared.db.begin_write()?;
        let durable = self.unflushed >= FLUSH_BYTES || self.last_flush.elapsed() >= FLUSH_INTERVAL;
        if durable {
            txn.set_durability(redb::Durability::Immediate)?;
            txn.set_two_phase_commit(true);
        } else {
            txn.set_durability(redb::Durability::None)?;
        }
        let mut st = ApplyState {
            revision: self.revision,
            compacted: self.compacted,
            bytes: 0,
        };
        let mut applied = self.applied;
        let mut membership = self.membership.clone();
        let mut removed = self.removed.clone();
        {
            let mut t = Tables {
                kv: txn.open_table(KV)?,
                history: txn.open_table(HISTORY)?,
                kept: txn.open_table(KEPT)?,
                ops: txn.open_table(OPS)?,
            };
            for entry in entries {
                applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Membership(m) => {
                        let before: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
                        let after: BTreeSet<u64> = m.nodes().map(|(id, _)| *id).collect();
                        removed.extend(before.difference(&after));
                        membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Empty
                    }
                    EntryPayload::Normal(Request::Ops(ops)) => {
                        let mut outcomes = Vec::with_capacity(ops.len());
                        for op in ops {
                            outcomes.push(apply_op(&mut t, &mut st, op, &mut events)?);
                        }
                        Response::Ops(outcomes)
                    }
                    EntryPayload::Normal(Request::Compact { keep }) => {
                        let upto = st.revision.saturating_sub(keep);
                        compact(&mut t, &mut st, upto)?;
                        Response::Compacted {
                            compacted: st.compacted,
                        }
                    }
                };
                responses.push(response);
            }
            // Keep at least `retain` revisions of history; trim in steps.
            let step = self.shared.retain.clamp(1, COMPACT_STEP);
            if st.revision.saturating_sub(st.compacted) >= self.shared.retain + step {
                let upto = st.revision - self.shared.retain;
                compact(&mut t, &mut st, upto)?;
            }
            let mut meta = txn.open_table(META)?;
            put_json(&mut meta, APPLIED_KEY, &applied)?;
            if membership != self.membership {
                put_json(&mut meta, MEMBERSHIP_KEY, &membership)?;
            }
            if removed != self.removed {
                put_json(&mut meta, REMOVED_KEY, &removed)?;
            }
            put_json(&mut meta, REVISION_KEY, &st.revision)?;
            put_json(&mut meta, COMPACTED_KEY, &st.compacted)?;
        }
        let started = Instant::now();
        txn.commit()?;
        if durable {
            self.shared
                .metrics
                .backend_commit
                .observe(started.elapsed().as_secs_f64());
            self.unflushed = 0;
            self.last_flush = Instant::now();
        } else {
            self.unflushed += st.bytes;
        }
        self.revision = st.revision;
        self.compacted = st.compacted;
        self.applied = applied;
        self.membership = membership;
        if removed != self.removed {
            *self
                .shared
                .removed
                .write()
                .unwrap_or_else(PoisonError::into_inner) = removed.clone();
            self.removed = removed;
        }
        self.shared.revision.store(st.revision, Ordering::Release);
        self.shared.compacted.store(st.compacted, Ordering::Release);
        self.shared.events.push(events);
        Ok(responses)
    }
}

/// The tables one request touches.
struct Tables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    history: Table<'t, u64, &'static [u8]>,
    kept: Table<'t, &'static str, &'static [u8]>,
    ops: Table<'t, u128, &'static [u8]>,
}

struct ApplyState {
    revision: u64,
    compacted: u64,
    /// Bytes written by this batch.
    bytes: usize,
}

fn current(
    kv: &Table<'_, &'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, DiskError> {
    match kv.get(key)? {
        Some(raw) => Ok(Some(
            decode_record(key, raw.value()).map_err(|e| DiskError::corrupt_key(key, e))?,
        )),
        None => Ok(None),
    }
}

/// Drops history up to `upto` and the write ids ticketed up to it. For each key with events
/// in the dropped range, its kept event (named only by the first of them) goes, and its last
/// event there is kept if it is a put and the key changed after `upto`: the change is then a
/// retained update that names it, or a delete (which carries its value itself; the kept event
/// then waits, unneeded, until that delete is compacted).
fn compact(t: &mut Tables<'_>, st: &mut ApplyState, upto: u64) -> Result<(), DiskError> {
    if upto <= st.compacted {
        return Ok(());
    }
    // Each key's last event in the range, and whether it is a put.
    let mut last: HashMap<String, (u64, bool)> = HashMap::new();
    for item in t.history.range(st.compacted + 1..=upto)? {
        let (rev, raw) = item?;
        let rev = rev.value();
        let event = decode_event(raw.value())
            .map_err(|e| DiskError::corrupt_key(&format!("history/{rev}"), e))?;
        let (key, put) = match &event {
            StoredEvent::Full(WatchEvent::Put { kv, .. }) | StoredEvent::PutAfter { kv, .. } => {
                (&kv.key, true)
            }
            StoredEvent::Full(WatchEvent::Delete { prev, .. }) => (&prev.key, false),
        };
        last.insert(key.clone(), (rev, put));
    }
    for (key, (rev, put)) in last {
        t.kept.remove(key.as_str())?;
        if !put {
            continue;
        }
        let named = current(&t.kv, &key)?.is_none_or(|now| now.mod_revision > upto);
        if named {
            let raw = t
                .history
                .get(rev)?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| DiskError::missing(&format!("history/{rev}")))?;
            t.kept.insert(key.as_str(), raw.as_slice())?;
        }
    }
    t.history.retain_in(..=upto, |_, _| false)?;
    t.ops
        .retain_in(..(u128::from(upto + 1) << 64), |_, _| false)?;
    st.compacted = upto;
    Ok(())
}

/// Applies one write once: a write whose id was applied before gets its first outcome, a
/// write whose id may have been forgotten is refused.
fn apply_op(
    t: &mut Tables<'_>,
    st: &mut ApplyState,
    op: Op,
    events: &mut Vec<WatchEvent>,
) -> Result<Outcome, DiskError> {
    if op.id.ticket <= st.compacted {
        return Ok(Outcome::Expired);
    }
    let id = op.id.key();
    if let Some(raw) = t.ops.get(id)? {
        let remembered =
            decode_outcome(raw.value()).map_err(|e| DiskError::corrupt_key("ops", e))?;
        return match remembered {
            Ok(outcome) => Ok(outcome),
            Err(revision) => {
                // A delete: its removed value is the history event at its revision.
                let Some(raw) = t.history.get(revision)? else {
                    return Ok(Outcome::Expired);
                };
                match decode_event(raw.value()).map_err(|e| DiskError::corrupt_key("history", e))? {
                    StoredEvent::Full(WatchEvent::Delete { prev, revision }) => {
                        Ok(Outcome::Deleted { prev, revision })
                    }
                    _ => Ok(Outcome::Expired),
                }
            }
        };
    }
    let outcome = apply_write(t, st, op.write, events)?;
    t.ops.insert(id, encode_outcome(&outcome).as_slice())?;
    Ok(outcome)
}

/// Applies one write: checks its condition, bumps the revision on success and records the
/// event. A failed condition changes nothing and takes no revision.
fn apply_write(
    t: &mut Tables<'_>,
    st: &mut ApplyState,
    write: Write,
    events: &mut Vec<WatchEvent>,
) -> Result<Outcome, DiskError> {
    let (outcome, event) = match write {
        // A put is an update of what is there, or a create.
        Write::Put { key, value } => {
            let write = if t.kv.get(key.as_str())?.is_some() {
                Write::Update {
                    key,
                    value,
                    expected: None,
                }
            } else {
                Write::Create { key, value }
            };
            return apply_write(t, st, write, events);
        }
        Write::Create { key, value } => {
            if t.kv.get(key.as_str())?.is_some() {
                return Ok(Outcome::AlreadyExists);
            }
            st.revision += 1;
            let rev = st.revision;
            st.bytes += key.len() + value.len();
            t.kv.insert(
                key.as_str(),
                encode_record(&key, rev, rev, &value).as_slice(),
            )?;
            let kv = KeyValue {
                key,
                value,
                create_revision: rev,
                mod_revision: rev,
            };
            (
                Outcome::Written {
                    create_revision: rev,
                    mod_revision: rev,
                },
                WatchEvent::Put { kv, prev: None },
            )
        }
        Write::Update {
            key,
            value,
            expected,
        } => {
            let Some(prev) = current(&t.kv, &key)? else {
                return Ok(Outcome::NotFound);
            };
            if let Some(expected) = expected
                && expected != prev.mod_revision
            {
                return Ok(Outcome::Conflict {
                    current: prev.mod_revision,
                });
            }
            st.revision += 1;
            let rev = st.revision;
            st.bytes += key.len() + value.len();
            t.kv.insert(
                key.as_str(),
                encode_record(&key, prev.create_revision, rev, &value).as_slice(),
            )?;
            let kv = KeyValue {
                key,
                value,
                create_revision: prev.create_revision,
                mod_revision: rev,
            };
            (
                Outcome::Written {
                    create_revision: prev.create_revision,
                    mod_revision: rev,
                },
                WatchEvent::Put {
                    kv,
                    prev: Some(prev),
                },
            )
        }
        Write::Delete { key, expected } => {
            let Some(prev) = current(&t.kv, &key)? else {
                return Ok(Outcome::NotFound);
            };
            if let Some(expected) = expected
                && expected != prev.mod_revision
            {
                return Ok(Outcome::Conflict {
                    current: prev.mod_revision,
                });
            }
            st.revision += 1;
            st.bytes += key.len();
            t.kv.remove(key.as_str())?;
            (
                Outcome::Deleted {
                    prev: prev.clone(),
                    revision: st.revision,
                },
                WatchEvent::Delete {
                    prev,
                    revision: st.revision,
                },
            )
        }
    };
    let stored = match &event {
        // The replaced value is the event at its revision, still in history.
        WatchEvent::Put {
            kv,
            prev: Some(prev),
        } if prev.mod_revision > st.compacted => encode_put_after(kv, prev.mod_revision),
        _ => encode_event(&event),
    };
    t.history.insert(st.revision, stored.as_slice())?;
    events.push(event);
    Ok(outcome)
}

impl Shared {
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, DiskError> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        match kv.get(key)? {
            Some(raw) => Ok(Some(
                decode_record(key, raw.value()).map_err(|e| self.corrupt(key, e))?,
            )),
            None => Ok(None),
        }
    }

    fn corrupt(&self, key: &str, e: crate::codec::CorruptRecord) -> DiskError {
        tracing::error!(file = %self.path.display(), key, error = %e, "corrupt record");
        DiskError::CorruptKey {
            file: self.path.clone(),
            key: key.to_owned(),
            source: e,
        }
    }

    /// Keys under `prefix` and the revision they were read at, from one read transaction.
    pub fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), DiskError> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        let meta = txn.open_table(META)?;
        let revision = get_json(&meta, REVISION_KEY)?.unwrap_or(0u64);
        let mut items = Vec::new();
        for item in kv.range(prefix..)? {
            let (k, v) = item?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            items.push(decode_record(key, v.value()).map_err(|e| self.corrupt(key, e))?);
        }
        Ok((items, revision))
    }

    /// The first revision compacted away is `compacted() + 1`'s predecessor: watching from
    /// before `compacted()` is refused.
    pub fn compacted(&self) -> u64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Members removed from the cluster.
    pub fn removed(&self) -> BTreeSet<u64> {
        self.removed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Up to `max` retained events with revision > `after` (only those under `prefix` are
    /// returned, all `max` are examined) and the highest revision examined; or `Err(oldest)`
    /// when `after` is older than the retained history.
    #[allow(clippy::type_complexity)]
    pub fn history_page(
        &self,
        prefix: &str,
        after: u64,
        max: usize,
    ) -> Result<Result<(Vec<WatchEvent>, u64), u64>, DiskError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let compacted: u64 = get_json(&meta, COMPACTED_KEY)?.unwrap_or(0);
        if after < compacted {
            return Ok(Err(compacted + 1));
        }
        let history = txn.open_table(HISTORY)?;
        let kept = txn.open_table(KEPT)?;
        let mut events = Vec::new();
        let mut scanned = after;
        for item in history.range(after.saturating_add(1)..)?.take(max) {
            let (rev, v) = item?;
            scanned = rev.value();
            let event = decode_event(v.value())
                .map_err(|e| self.corrupt(&format!("history/{scanned}"), e))?;
            let key = match &event {
                StoredEvent::Full(e) => event_key(e),
                StoredEvent::PutAfter { kv, .. } => &kv.key,
            };
            if !key.starts_with(prefix) {
                continue;
            }
            events.push(match event {
                StoredEvent::Full(e) => e,
                StoredEvent::PutAfter { kv, prev_revision } => {
                    let prev = self.replaced(&history, &kept, &kv.key, prev_revision, compacted)?;
                    WatchEvent::Put {
                        kv,
                        prev: Some(prev),
                    }
                }
            });
        }
        Ok(Ok((events, scanned)))
    }

    /// The value of `key` at `revision`, which an update replaced: the put there, in history
    /// or (compacted) in the kept table.
    fn replaced(
        &self,
        history: &impl ReadableTable<u64, &'static [u8]>,
        kept: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
        revision: u64,
        compacted: u64,
    ) -> Result<KeyValue, DiskError> {
        let (what, raw) = if revision > compacted {
            (format!("history/{revision}"), history.get(revision)?)
        } else {
            (format!("kept/{key}"), kept.get(key)?)
        };
        let found = match raw {
            Some(raw) => decode_event(raw.value()).map_err(|e| self.corrupt(&what, e))?,
            None => return Err(DiskError::missing(&what)),
        };
        match found {
            StoredEvent::Full(WatchEvent::Put { kv, .. }) | StoredEvent::PutAfter { kv, .. }
                if kv.key == key && kv.mod_revision == revision =>
            {
                Ok(kv)
            }
            _ => Err(self.corrupt(
                &what,
                crate::codec::CorruptRecord("not the put an update replaced"),
            )),
        }
    }

    /// Makes every applied transaction durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.set_two_phase_commit(true);
        let started = Instant::now();
        txn.commit()?;
        self.metrics
            .backend_commit
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

pub fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put { kv, .. } => &kv.key,
        WatchEvent::Delete { prev, .. } => &prev.key,
    }
}

fn snapshot_id(applied: Option<LogId<u64>>, seq: u64) -> String {
    match applied {
        Some(l) => format!(
            "{}-{}-{}-{seq}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("none-{seq}"),
    }
}

fn open_snapshot(path: &Path) -> Result<Box<tokio::fs::File>, DiskError> {
    Ok(Box::new(tokio::fs::File::from_std(std::fs::File::open(
        path,
    )?)))
}

fn file_key(file: &std::fs::File) -> std::io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Writes the snapshot of `txn` into `files`, makes it current and removes older ones.
fn build(
    shared: &Shared,
    txn: ReadTransaction,
    seq: u64,
) -> Result<(SnapshotMeta<u64, Member>, PathBuf), DiskError> {
    let state = read_applied(&txn)?;
    let meta = SnapshotMeta {
        last_log_id: state.applied,
        last_membership: state.membership,
        snapshot_id: snapshot_id(state.applied, seq),
    };
    let header = SnapshotHeader {
        meta: meta.clone(),
        revision: state.revision,
        compacted: state.compacted,
        removed: state.removed,
    };
    let files = &shared.snapshots;
    let path = snapshot::path_of(&files.dir, &meta.snapshot_id);
    let partial = path.with_extension("partial");
    snapshot::write(&txn, &header, &partial)?;
    std::fs::rename(&partial, &path)?;
    sync_dir(&files.dir)?;
    files.set_current(&meta, &path);
    snapshot::clean(&files.dir, Some(&path), false);
    Ok((meta, path))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let txn = match self.txn.take() {
            Some(taken) => taken.map_err(|e| *e)?,
            None => durable_read(&self.shared).map_err(|e| *e)?,
        };
        let shared = Arc::clone(&self.shared);
        let seq = self.seq;
        let built = tokio::task::spawn_blocking(move || build(&shared, txn, seq))
            .await
            .map_err(|e| sm_read_err(DiskError::Io(std::io::Error::other(e.to_string()))))?;
        let (meta, path) = built.map_err(|e| snapshot_err(None, e))?;
        tracing::debug!(snapshot = %meta.snapshot_id, path = %path.display(), "built snapshot");
        let snapshot = open_snapshot(&path).map_err(|e| snapshot_err(Some(&meta), e))?;
        Ok(Snapshot { meta, snapshot })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, Member>), StorageError<u64>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_batch(entries.into_iter().collect())
            .map_err(sm_write_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The snapshot covers what is applied now; make it durable first so the log openraft
        // purges after this snapshot is never needed again.
        // A failed flush is carried into the builder, whose `build_snapshot` then fails
        // instead of snapshotting state a crash could lose.
        let txn = durable_read(&self.shared);
        if txn.is_ok() {
            self.unflushed = 0;
            self.last_flush = Instant::now();
        }
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
            txn: Some(txn),
            seq: self.shared.snapshots.seq.fetch_add(1, Ordering::AcqRel) + 1,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let files = &self.shared.snapshots;
        let seq = files.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let path = files.dir.join(format!("incoming-{seq}.partial"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| Ok((file_key(&f)?, f)))
            .map_err(|e| snapshot_err(None, DiskError::Io(e)))?;
        lock(&files.incoming).insert(file.0, path);
        Ok(Box::new(tokio::fs::File::from_std(file.1)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, Member>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        let file = snapshot.into_std().await;
        let shared = Arc::clone(&self.shared);
        let target = meta.clone();
        let installed = tokio::task::spawn_blocking(move || install(&shared, &target, file))
            .await
            .map_err(|e| {
                snapshot_err(
                    Some(meta),
                    DiskError::Io(std::io::Error::other(e.to_string())),
                )
            })?
            .map_err(|e| snapshot_err(Some(meta), e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.revision = installed.revision;
        self.compacted = installed.compacted;
        self.removed = installed.removed.clone();
        self.unflushed = 0;
        self.last_flush = Instant::now();
        *self
            .shared
            .removed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = installed.removed;
        self.shared
            .revision
            .store(installed.revision, Ordering::Release);
        self.shared
            .compacted
            .store(installed.compacted, Ordering::Release);
        self.shared.events.reset(installed.revision);
        tracing::info!(snapshot = %meta.snapshot_id, revision = installed.revision, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = lock(&self.shared.snapshots.current).clone();
        let Some((meta, path)) = current else {
            return Ok(None);
        };
        let snapshot = open_snapshot(&path).map_err(|e| snapshot_err(Some(&meta), e))?;
        Ok(Some(Snapshot { meta, snapshot }))
    }
}

/// Replaces all state with the snapshot in `path`: one durable transaction, committed only if
/// the whole file checks out.
fn load_into(
    shared: &Shared,
    meta: &SnapshotMeta<u64, Member>,
    path: &Path,
) -> Result<SnapshotHeader, DiskError> {
    let mut txn = shared.db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate)?;
    txn.set_two_phase_commit(true);
    let header = snapshot::load(std::fs::File::open(path)?, &txn)?;
    {
        let mut m = txn.open_table(META)?;
        put_json(&mut m, APPLIED_KEY, &meta.last_log_id)?;
        put_json(&mut m, MEMBERSHIP_KEY, &meta.last_membership)?;
        put_json(&mut m, REVISION_KEY, &header.revision)?;
        put_json(&mut m, COMPACTED_KEY, &header.compacted)?;
        put_json(&mut m, REMOVED_KEY, &header.removed)?;
    }
    txn.commit()?;
    Ok(header)
}

/// Replaces all state with the snapshot in `file` and keeps the file as the current snapshot.
fn install(
    shared: &Shared,
    meta: &SnapshotMeta<u64, Member>,
    mut file: std::fs::File,
) -> Result<SnapshotHeader, DiskError> {
    use std::io::{Seek, SeekFrom};
    let files = &shared.snapshots;
    let path = snapshot::path_of(&files.dir, &meta.snapshot_id);
    let source = match lock(&files.incoming).remove(&file_key(&file)?) {
        // Received into a file of ours: install from it, then keep it.
        Some(received) => {
            file.sync_all()?;
            received
        }
        // Somebody else's file: copy it in first.
        None => {
            file.seek(SeekFrom::Start(0))?;
            let partial = path.with_extension("partial");
            let mut out = std::fs::File::create(&partial)?;
            std::io::copy(&mut file, &mut out)?;
            out.sync_all()?;
            partial
        }
    };
    let loaded = load_into(shared, meta, &source);
    if loaded.is_err() {
        // A damaged or short file never becomes a snapshot of ours.
        let _ = std::fs::remove_file(&source);
    }
    let header = loaded?;
    std::fs::rename(&source, &path)?;
    sync_dir(&files.dir)?;
    files.set_current(meta, &path);
    snapshot::clean(&files.dir, Some(&path), false);
    Ok(header)
}

#[cfg(test)]
mod tests;
