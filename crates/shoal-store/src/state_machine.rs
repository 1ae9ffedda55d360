//! The state machine on disk (`state.redb`): keys with their revisions, the watch history
//! (revision -> event) and the raft bookkeeping (last applied log id, membership, revision
//! counter, compaction point), all changed together in one transaction per applied batch.
//!
//! Applies commit with `Durability::None`: a crash can lose the newest applied state, and on
//! restart openraft replays the log from the last applied id that did reach disk, giving the
//! same revisions again. Building a snapshot first makes everything applied durable (and fails
//! if that flush fails), and openraft purges the log only up to a snapshot, so purged log never
//! runs ahead of durable state. Live events go out on a broadcast channel after their transaction committed.
//!
//! Multi-member concerns (streaming large snapshots to followers) are not handled: snapshot
//! data is a full in-memory dump.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::broadcast;

use crate::codec::{
    Reader, Writer, decode_event, decode_record, encode_event, encode_record, record_mod_revision,
};
use crate::raft::{Request, Response, TypeConfig};
use crate::{DiskError, KeyValue, WatchEvent};

pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const APPLIED_KEY: &str = "applied";
const MEMBERSHIP_KEY: &str = "membership";
const REVISION_KEY: &str = "revision";
const COMPACTED_KEY: &str = "compacted";

/// History is trimmed in steps of this many revisions past the retention, so that the apply
/// path does not delete one event per write.
const COMPACT_STEP: u64 = 1024;

/// What the state machine and the `Store` handle share.
pub struct Shared {
    pub db: Database,
    /// Revision of the last applied write, updated after its transaction committed.
    pub revision: Arc<AtomicU64>,
    pub events: broadcast::Sender<Arc<WatchEvent>>,
    /// Revisions of history to keep at least.
    pub retain: u64,
    snapshot: Mutex<Option<StoredSnapshot>>,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// openraft's state machine; owned by its state machine worker.
pub struct StateMachine {
    shared: Arc<Shared>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    revision: u64,
    compacted: u64,
    snapshot_seq: u64,
}

/// Builds a snapshot from the read transaction taken when it was asked for, right after the
/// state machine was flushed; if that flush failed, building fails with its error.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    /// The durable state to snapshot, taken by the first `build_snapshot`.
    txn: Option<Result<ReadTransaction, Box<StorageError<u64>>>>,
    seq: u64,
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

impl StateMachine {
    /// Opens (or creates) the state machine file.
    pub fn open(
        path: &std::path::Path,
        retain: u64,
        channel: usize,
    ) -> Result<StateMachine, DiskError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(KV)?;
        txn.open_table(HISTORY)?;
        txn.open_table(META)?;
        txn.commit()?;
        let (applied, membership, revision, compacted) = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            (
                get_json::<Option<LogId<u64>>>(&meta, APPLIED_KEY)?.flatten(),
                get_json(&meta, MEMBERSHIP_KEY)?.unwrap_or_default(),
                get_json(&meta, REVISION_KEY)?.unwrap_or(0u64),
                get_json(&meta, COMPACTED_KEY)?.unwrap_or(0u64),
            )
        };
        let (events, _) = broadcast::channel(channel.max(1));
        Ok(StateMachine {
            shared: Arc::new(Shared {
                db,
                revision: Arc::new(AtomicU64::new(revision)),
                events,
                retain,
                snapshot: Mutex::new(None),
            }),
            applied,
            membership,
            revision,
            compacted,
            snapshot_seq: 0,
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    fn apply_batch(&mut self, entries: Vec<Entry<TypeConfig>>) -> Result<Vec<Response>, DiskError> {
        let mut responses = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut txn = self.shared.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        let mut applied = self.applied;
        let mut membership = self.membership.clone();
        {
            let mut kv = txn.open_table(KV)?;
            let mut history = txn.open_table(HISTORY)?;
            let mut meta = txn.open_table(META)?;
            for entry in entries {
                applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Empty,
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Empty
                    }
                    EntryPayload::Normal(req) => {
                        let mut tables = Tables {
                            kv: &mut kv,
                            history: &mut history,
                        };
                        apply_request(&mut tables, &mut revision, &mut compacted, req, &mut events)?
                    }
                };
                responses.push(response);
            }
            // Keep at least `retain` revisions of history; trim in steps.
            let step = self.shared.retain.clamp(1, COMPACT_STEP);
            if revision.saturating_sub(compacted) >= self.shared.retain + step {
                let upto = revision - self.shared.retain;
                history.retain_in(..=upto, |_, _| false)?;
                compacted = upto;
            }
            put_json(&mut meta, APPLIED_KEY, &applied)?;
            if membership != self.membership {
                put_json(&mut meta, MEMBERSHIP_KEY, &membership)?;
            }
            put_json(&mut meta, REVISION_KEY, &revision)?;
            put_json(&mut meta, COMPACTED_KEY, &compacted)?;
        }
        txn.commit()?;
        self.revision = revision;
        self.compacted = compacted;
        self.applied = applied;
        self.membership = membership;
        self.shared.revision.store(revision, Ordering::Release);
        for e in events {
            // No receiver is not an error: nobody watches.
            let _ = self.shared.events.send(Arc::new(e));
        }
        Ok(responses)
    }
}

/// The tables one request touches.
struct Tables<'a, 't> {
    kv: &'a mut Table<'t, &'static str, &'static [u8]>,
    history: &'a mut Table<'t, u64, &'static [u8]>,
}

fn current(
    kv: &Table<'_, &'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, DiskError> {
    match kv.get(key)? {
        Some(raw) => Ok(Some(decode_record(key, raw.value())?)),
        None => Ok(None),
    }
}

/// Applies one write: checks its condition, bumps `revision` on success and records the event.
/// A failed condition changes nothing and takes no revision.
fn apply_request(
    t: &mut Tables<'_, '_>,
    revision: &mut u64,
    compacted: &mut u64,
    req: Request,
    events: &mut Vec<WatchEvent>,
) -> Result<Response, DiskError> {
    let (response, event) = match req {
        Request::Create { key, value } => {
            if t.kv.get(key.as_str())?.is_some() {
                return Ok(Response::AlreadyExists);
            }
            *revision += 1;
            t.kv.insert(
                key.as_str(),
                encode_record(*revision, *revision, &value).as_slice(),
            )?;
            let kv = KeyValue {
                key,
                value,
                create_revision: *revision,
                mod_revision: *revision,
            };
            (
                Response::Written(kv.clone()),
                WatchEvent::Put { kv, prev: None },
            )
        }
        Request::Update {
            key,
            value,
            expected,
        } => {
            let Some(prev) = current(t.kv, &key)? else {
                return Ok(Response::NotFound);
            };
            if let Some(expected) = expected
                && expected != prev.mod_revision
            {
                return Ok(Response::Conflict {
                    current: prev.mod_revision,
                });
            }
            *revision += 1;
            t.kv.insert(
                key.as_str(),
                encode_record(prev.create_revision, *revision, &value).as_slice(),
            )?;
            let kv = KeyValue {
                key,
                value,
                create_revision: prev.create_revision,
                mod_revision: *revision,
            };
            (
                Response::Written(kv.clone()),
                WatchEvent::Put {
                    kv,
                    prev: Some(prev),
                },
            )
        }
        Request::Delete { key, expected } => {
            let Some(prev) = current(t.kv, &key)? else {
                return Ok(Response::NotFound);
            };
            if let Some(expected) = expected
                && expected != prev.mod_revision
            {
                return Ok(Response::Conflict {
                    current: prev.mod_revision,
                });
            }
            *revision += 1;
            t.kv.remove(key.as_str())?;
            (
                Response::Deleted {
                    prev: prev.clone(),
                    revision: *revision,
                },
                WatchEvent::Delete {
                    prev,
                    revision: *revision,
                },
            )
        }
        Request::Compact { keep } => {
            let upto = revision.saturating_sub(keep);
            if upto > *compacted {
                t.history.retain_in(..=upto, |_, _| false)?;
                *compacted = upto;
            }
            return Ok(Response::Compacted {
                compacted: *compacted,
            });
        }
        Request::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            for req in requests {
                responses.push(apply_request(t, revision, compacted, req, events)?);
            }
            return Ok(Response::Batch(responses));
        }
    };
    t.history
        .insert(*revision, encode_event(&event).as_slice())?;
    events.push(event);
    Ok(response)
}

impl Shared {
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, DiskError> {
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        match kv.get(key)? {
            Some(raw) => Ok(Some(decode_record(key, raw.value())?)),
            None => Ok(None),
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
            items.push(decode_record(key, v.value())?);
        }
        Ok((items, revision))
    }

    /// Retained events under `prefix` with revision > `after`, or `Err(oldest)` when `after`
    /// is older than the retained history. `oldest` is the first revision still retained.
    pub fn history(
        &self,
        prefix: &str,
        after: u64,
    ) -> Result<Result<Vec<WatchEvent>, u64>, DiskError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let compacted: u64 = get_json(&meta, COMPACTED_KEY)?.unwrap_or(0);
        if after < compacted {
            return Ok(Err(compacted + 1));
        }
        let history = txn.open_table(HISTORY)?;
        let mut events = Vec::new();
        for item in history.range(after.saturating_add(1)..)? {
            let (_, v) = item?;
            let event = decode_event(v.value())?;
            if event_key(&event).starts_with(prefix) {
                events.push(event);
            }
        }
        Ok(Ok(events))
    }

    /// Makes every applied transaction durable.
    pub fn flush(&self) -> Result<(), DiskError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }
}

pub fn event_key(event: &WatchEvent) -> &str {
    match event {
        WatchEvent::Put { kv, .. } => &kv.key,
        WatchEvent::Delete { prev, .. } => &prev.key,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A full copy of the state machine at one applied log id.
struct Dump {
    data: Vec<u8>,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// Snapshot data: the revision, then every key record.
fn dump(txn: &ReadTransaction) -> Result<Dump, DiskError> {
    let meta = txn.open_table(META)?;
    let applied = get_json::<Option<LogId<u64>>>(&meta, APPLIED_KEY)?.flatten();
    let membership = get_json(&meta, MEMBERSHIP_KEY)?.unwrap_or_default();
    let revision: u64 = get_json(&meta, REVISION_KEY)?.unwrap_or(0);
    let kv = txn.open_table(KV)?;
    let mut w = Writer::with_capacity(1024);
    w.u64(revision);
    for item in kv.iter()? {
        let (k, v) = item?;
        w.bytes(k.value().as_bytes());
        w.bytes(v.value());
    }
    Ok(Dump {
        data: w.0,
        applied,
        membership,
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let txn = match self.txn.take() {
            Some(taken) => taken.map_err(|e| *e)?,
            None => durable_read(&self.shared).map_err(|e| *e)?,
        };
        let Dump {
            data,
            applied,
            membership,
        } = dump(&txn).map_err(sm_read_err)?;
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.seq),
            None => format!("none-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id,
        };
        *lock(&self.shared.snapshot) = Some(StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        });
        tracing::debug!(snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
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
        self.snapshot_seq += 1;
        SnapshotBuilder {
            shared: Arc::clone(&self.shared),
            txn: Some(txn),
            seq: self.snapshot_seq,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let revision = self.install(meta, &data).map_err(|e| {
            StorageError::from(StorageIOError::write_snapshot(
                Some(meta.signature()),
                AnyError::new(&e),
            ))
        })?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.revision = revision;
        self.compacted = revision;
        self.shared.revision.store(revision, Ordering::Release);
        *lock(&self.shared.snapshot) = Some(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(lock(&self.shared.snapshot).clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

impl StateMachine {
    /// Replaces all state with the snapshot; history restarts after its revision.
    fn install(&self, meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> Result<u64, DiskError> {
        let mut r = Reader(data);
        let revision = r.u64()?;
        let mut txn = self.shared.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut kv = txn.open_table(KV)?;
            kv.retain(|_, _| false)?;
            while !r.0.is_empty() {
                let key = r.string()?;
                let record = r.bytes()?;
                record_mod_revision(record)?;
                kv.insert(key.as_str(), record)?;
            }
            let mut history = txn.open_table(HISTORY)?;
            history.retain(|_, _| false)?;
            let mut m = txn.open_table(META)?;
            put_json(&mut m, APPLIED_KEY, &meta.last_log_id)?;
            put_json(&mut m, MEMBERSHIP_KEY, &meta.last_membership)?;
            put_json(&mut m, REVISION_KEY, &revision)?;
            put_json(&mut m, COMPACTED_KEY, &revision)?;
        }
        txn.commit()?;
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::CommittedLeaderId;

    use super::*;

    fn normal(index: u64, req: Request) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(req),
        }
    }

    fn create(key: &str) -> Request {
        Request::Create {
            key: key.into(),
            value: Bytes::from_static(b"v"),
        }
    }

    #[tokio::test]
    async fn snapshot_builds_over_flushed_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(&dir.path().join("state.redb"), 100, 16).expect("open");
        sm.apply_batch(vec![normal(1, create("/a"))])
            .expect("apply");
        let mut builder = sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(1));
        assert!(lock(&sm.shared.snapshot).is_some());
    }

    #[tokio::test]
    async fn a_failed_flush_fails_the_snapshot_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(&dir.path().join("state.redb"), 100, 16).expect("open");
        sm.apply_batch(vec![normal(1, create("/a"))])
            .expect("apply");
        // What `get_snapshot_builder` hands over when `flush` fails.
        let mut builder = SnapshotBuilder {
            shared: sm.shared(),
            txn: Some(Err(Box::new(sm_write_err(DiskError::Io(
                std::io::Error::other("disk stalled"),
            ))))),
            seq: 1,
        };
        let Err(error) = builder.build_snapshot().await else {
            panic!("a snapshot over an unflushed state machine must fail");
        };
        let message = error.to_string();
        assert!(
            message.contains("Write") && message.contains("StateMachine"),
            "{message}"
        );
        assert!(
            lock(&sm.shared.snapshot).is_none(),
            "no snapshot may be recorded"
        );
    }

    #[test]
    fn batch_applies_in_order_and_failed_conditions_take_no_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(&dir.path().join("state.redb"), 100, 16).expect("open");
        let mut live = sm.shared().events.subscribe();
        let responses = sm
            .apply_batch(vec![
                normal(1, create("/a")),
                normal(
                    2,
                    Request::Batch(vec![
                        create("/a"),
                        create("/b"),
                        Request::Update {
                            key: "/a".into(),
                            value: Bytes::from_static(b"w"),
                            expected: Some(9),
                        },
                        Request::Delete {
                            key: "/a".into(),
                            expected: Some(1),
                        },
                        Request::Delete {
                            key: "/zzz".into(),
                            expected: None,
                        },
                    ]),
                ),
            ])
            .expect("apply");
        let Response::Batch(inner) = &responses[1] else {
            panic!("batch answers a batch: {responses:?}");
        };
        assert!(matches!(&responses[0], Response::Written(kv) if kv.mod_revision == 1));
        assert_eq!(inner[0], Response::AlreadyExists);
        assert!(matches!(&inner[1], Response::Written(kv) if kv.mod_revision == 2));
        assert_eq!(inner[2], Response::Conflict { current: 1 });
        assert!(matches!(&inner[3], Response::Deleted { revision: 3, .. }));
        assert_eq!(inner[4], Response::NotFound);
        assert_eq!(sm.shared.revision.load(Ordering::Acquire), 3);
        assert_eq!(sm.applied.map(|l| l.index), Some(2));

        // Events went out in revision order, after the commit.
        let revs: Vec<u64> = (0..3)
            .map(|_| live.try_recv().expect("event").revision())
            .collect();
        assert_eq!(revs, [1, 2, 3]);
        let Ok(history) = sm.shared.history("", 0).expect("history") else {
            panic!("nothing compacted");
        };
        assert_eq!(history.len(), 3);
    }

    #[test]
    fn snapshot_dump_installs_into_a_fresh_state_machine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(&dir.path().join("a.redb"), 100, 16).expect("open");
        sm.apply_batch(vec![normal(1, create("/a")), normal(2, create("/b"))])
            .expect("apply");
        let txn = sm.shared.db.begin_read().expect("read");
        let dump = dump(&txn).expect("dump");
        let meta = SnapshotMeta {
            last_log_id: dump.applied,
            last_membership: dump.membership,
            snapshot_id: "s".into(),
        };
        let other = StateMachine::open(&dir.path().join("b.redb"), 100, 16).expect("open");
        assert_eq!(other.install(&meta, &dump.data).expect("install"), 2);
        let (items, revision) = other.shared.list("/").expect("list");
        assert_eq!(revision, 2);
        assert_eq!(items.len(), 2);
        // History restarts after the snapshot.
        assert!(matches!(
            other.shared.history("", 0).expect("history"),
            Err(3)
        ));
    }
}
