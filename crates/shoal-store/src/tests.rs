//! Boundary tests of the store: semantics of each operation, watch, restart, and durability
//! across `kill -9` (a child process re-running this test binary in "writer" mode).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;

use super::*;

const DEADLINE: Duration = Duration::from_secs(20);

async fn open(dir: &Path) -> Store {
    Store::open(dir).await.expect("store opens")
}

async fn next_event(
    stream: &mut BoxStream<'static, Result<WatchEvent, StoreError>>,
) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("event before the deadline")
        .expect("stream still open")
}

fn key_rev(e: &WatchEvent) -> (String, u64, bool) {
    match e {
        WatchEvent::Put { kv, .. } => (kv.key.clone(), kv.mod_revision, true),
        WatchEvent::Delete { prev, revision } => (prev.key.clone(), *revision, false),
    }
}

#[tokio::test]
async fn create_get_update_delete_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    assert_eq!(store.revision(), 0);

    let a = store.create("/a", b"one".to_vec()).await.expect("create");
    assert_eq!((a.create_revision, a.mod_revision), (1, 1));
    assert_eq!(&a.value[..], b"one");
    assert!(matches!(
        store.create("/a", b"again".to_vec()).await,
        Err(StoreError::AlreadyExists(k)) if k == "/a"
    ));
    // Failed writes take no revision.
    assert_eq!(store.revision(), 1);
    assert_eq!(store.get("/a").await.expect("get"), Some(a.clone()));
    assert_eq!(store.get("/missing").await.expect("get"), None);

    let a2 = store
        .update("/a", b"two".to_vec(), Some(1))
        .await
        .expect("update");
    assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
    assert!(matches!(
        store.update("/a", b"stale".to_vec(), Some(1)).await,
        Err(StoreError::Conflict {
            expected: 1,
            current: 2,
            ..
        })
    ));
    assert!(matches!(
        store.update("/nope", b"x".to_vec(), None).await,
        Err(StoreError::NotFound(k)) if k == "/nope"
    ));
    let a3 = store
        .update("/a", b"three".to_vec(), None)
        .await
        .expect("unconditional update");
    assert_eq!(a3.mod_revision, 3);
    assert_eq!(store.revision(), 3);

    assert!(matches!(
        store.delete("/a", Some(2)).await,
        Err(StoreError::Conflict {
            expected: 2,
            current: 3,
            ..
        })
    ));
    let (prev, rev) = store.delete("/a", Some(3)).await.expect("delete");
    assert_eq!((prev, rev), (a3, 4));
    assert!(matches!(
        store.delete("/a", None).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.get("/a").await.expect("get"), None);

    // Re-created keys start a new life.
    let again = store.create("/a", Vec::new()).await.expect("re-create");
    assert_eq!((again.create_revision, again.mod_revision), (5, 5));

    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    assert!(matches!(
        store.create("/big", big.clone()).await,
        Err(StoreError::TooLarge { size, limit }) if size == MAX_VALUE_BYTES + 1 && limit == MAX_VALUE_BYTES
    ));
    assert!(matches!(
        store.update("/a", big, None).await,
        Err(StoreError::TooLarge { .. })
    ));
    let max = store
        .create("/max", vec![7u8; MAX_VALUE_BYTES])
        .await
        .expect("a value of exactly the limit is accepted");
    assert_eq!(max.value.len(), MAX_VALUE_BYTES);
    assert_eq!(store.revision(), 6);

    store.shutdown().await.expect("shutdown");
    assert!(matches!(
        store.get("/a").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.create("/b", Vec::new()).await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn list_by_prefix_with_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    for key in ["/pods/b", "/pods/a", "/nodes/n1", "/pods-other", "/pods/c"] {
        store
            .create(key, key.as_bytes().to_vec())
            .await
            .expect("create");
    }
    store.delete("/pods/c", None).await.expect("delete");
    let list = store.list("/pods/").await.expect("list");
    let keys: Vec<_> = list.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/pods/a", "/pods/b"]);
    assert_eq!(list.revision, 6);
    assert_eq!(list.items[0].mod_revision, 2);
    assert_eq!(store.list("").await.expect("list all").items.len(), 4);
    assert!(store.list("/none/").await.expect("list").items.is_empty());
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    store.create("/a/1", b"x".to_vec()).await.expect("create");
    store.create("/b/1", b"x".to_vec()).await.expect("create");
    store
        .update("/a/1", b"y".to_vec(), None)
        .await
        .expect("update");

    let mut all = store.watch("/a/", 0).expect("watch");
    let mut from_2 = store.watch("/a/", 2).expect("watch");
    let mut future = store.watch("", store.revision()).expect("watch");

    let e = next_event(&mut all).await.expect("event");
    assert_eq!(
        e,
        WatchEvent::Put {
            kv: KeyValue {
                key: "/a/1".into(),
                value: Bytes::from_static(b"x"),
                create_revision: 1,
                mod_revision: 1
            },
            prev: None
        }
    );
    let e = next_event(&mut all).await.expect("event");
    match &e {
        WatchEvent::Put { kv, prev } => {
            assert_eq!((kv.mod_revision, &kv.value[..]), (3, &b"y"[..]));
            assert_eq!(prev.as_ref().map(|p| p.mod_revision), Some(1));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        key_rev(&next_event(&mut from_2).await.expect("event")),
        ("/a/1".into(), 3, true)
    );

    // Live writes, in revision order, filtered by prefix.
    store.create("/b/2", b"x".to_vec()).await.expect("create");
    store.delete("/a/1", None).await.expect("delete");
    store.create("/a/2", b"z".to_vec()).await.expect("create");

    for stream in [&mut all, &mut from_2] {
        assert_eq!(
            key_rev(&next_event(stream).await.expect("event")),
            ("/a/1".into(), 5, false)
        );
        assert_eq!(
            key_rev(&next_event(stream).await.expect("event")),
            ("/a/2".into(), 6, true)
        );
    }
    let seen: Vec<_> = [
        next_event(&mut future).await,
        next_event(&mut future).await,
        next_event(&mut future).await,
    ]
    .into_iter()
    .map(|e| key_rev(&e.expect("event")))
    .collect();
    assert_eq!(
        seen,
        [
            ("/b/2".to_owned(), 4, true),
            ("/a/1".to_owned(), 5, false),
            ("/a/2".to_owned(), 6, true)
        ]
    );

    // A watch from a future revision sees only what comes after it.
    let mut later = store.watch("/a/", 7).expect("watch");
    store
        .update("/a/2", b"1".to_vec(), None)
        .await
        .expect("update");
    store
        .update("/a/2", b"2".to_vec(), None)
        .await
        .expect("update");
    assert_eq!(
        key_rev(&next_event(&mut later).await.expect("event")),
        ("/a/2".into(), 8, true)
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn concurrent_watch_sees_every_write_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    for i in 0..20 {
        store
            .create(&format!("/k/{i}"), Vec::new())
            .await
            .expect("create");
    }
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 20..200 {
                store
                    .create(&format!("/k/{i}"), Vec::new())
                    .await
                    .expect("create");
            }
        })
    };
    // Opened while writes are in flight: history and live overlap.
    let mut stream = store.watch("/k/", 5).expect("watch");
    for want in 6..=200 {
        let e = next_event(&mut stream).await.expect("event");
        assert_eq!(e.revision(), want);
    }
    writer.await.expect("writer");
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn watch_before_compaction_point_is_compacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    for i in 0..10 {
        store
            .create(&format!("/k/{i}"), Vec::new())
            .await
            .expect("create");
    }
    assert_eq!(store.compact(3).await.expect("compact"), 7);
    // Compaction takes no revision.
    assert_eq!(store.revision(), 10);
    assert!(matches!(
        store.watch("/k/", 6),
        Err(StoreError::Compacted {
            requested: 6,
            oldest: 8
        })
    ));
    let mut stream = store
        .watch("/k/", 7)
        .expect("watch at the compaction point");
    for want in 8..=10 {
        assert_eq!(
            next_event(&mut stream).await.expect("event").revision(),
            want
        );
    }
    // Compacting less than already compacted changes nothing.
    assert_eq!(store.compact(100).await.expect("compact"), 7);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn history_is_compacted_automatically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        history_retain: 5,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).await.expect("open");
    for i in 0..30 {
        store
            .create(&format!("/k/{i}"), Vec::new())
            .await
            .expect("create");
    }
    assert!(matches!(
        store.watch("", 0),
        Err(StoreError::Compacted { .. })
    ));
    let mut stream = store
        .watch("", 25)
        .expect("the last `retain` revisions are kept");
    assert_eq!(next_event(&mut stream).await.expect("event").revision(), 26);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_watcher_behind_the_memory_ring_reads_history_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A ring of one byte keeps only the newest event in memory.
    let config = StoreConfig {
        event_ring_bytes: 1,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).await.expect("open");
    let mut stream = store.watch("/k/", 0).expect("watch");
    for i in 0..50 {
        store
            .create(&format!("/k/{i}"), vec![b'v'; 100])
            .await
            .expect("create");
        store
            .create(&format!("/other/{i}"), Vec::new())
            .await
            .expect("create");
    }
    // Every event under the prefix, once, in order, though all but the last left memory.
    for i in 0..50u64 {
        let e = next_event(&mut stream).await.expect("event");
        assert_eq!(key_rev(&e), (format!("/k/{i}"), 2 * i + 1, true));
    }
    store.create("/k/live", Vec::new()).await.expect("create");
    assert_eq!(
        key_rev(&next_event(&mut stream).await.expect("event")),
        ("/k/live".into(), 101, true)
    );
    store.shutdown().await.expect("shutdown");
}

/// Rows in the kept table (compacted puts that retained updates name).
fn kept_len(store: &Store) -> u64 {
    let sm = store.inner.sm.read().expect("lock");
    let shared = sm.as_ref().expect("open");
    let txn = redb::ReadableDatabase::begin_read(&shared.db).expect("read");
    let kept = txn.open_table(state_machine::KEPT).expect("kept table");
    redb::ReadableTableMetadata::len(&kept).expect("len")
}

fn put_of(e: &WatchEvent) -> (&str, &[u8], Option<&[u8]>) {
    match e {
        WatchEvent::Put { kv, prev } => (&kv.key, &kv.value, prev.as_ref().map(|p| &p.value[..])),
        WatchEvent::Delete { .. } => panic!("a delete where a put was expected: {e:?}"),
    }
}

/// History stores an update with a reference to the value it replaced; replayed from disk,
/// after the replaced value's own event was compacted and across a restart, the update still
/// carries it, and the kept copies go once nothing names them.
#[tokio::test]
async fn updates_replayed_from_disk_carry_the_value_they_replaced_across_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    // History compacts to the last 5 revisions once 10 piled up; the ring holds one event.
    let config = StoreConfig {
        history_retain: 5,
        event_ring_bytes: 1,
        ..StoreConfig::default()
    };
    {
        let store = Store::open_with(dir.path(), config.clone())
            .await
            .expect("open");
        store.create("/a", b"a1".to_vec()).await.expect("rev 1");
        store.create("/b", b"b0".to_vec()).await.expect("rev 2");
        store.create("/c", b"c1".to_vec()).await.expect("rev 3");
        for (i, v) in ["b1", "b2", "b3"].iter().enumerate() {
            store
                .update("/b", v.as_bytes().to_vec(), None)
                .await
                .unwrap_or_else(|e| panic!("rev {}: {e}", 4 + i));
        }
        store
            .update("/a", b"a2".to_vec(), None)
            .await
            .expect("rev 7");
        store
            .update("/c", b"c2".to_vec(), None)
            .await
            .expect("rev 8");
        store.delete("/c", None).await.expect("rev 9");
        store.create("/c", b"c3".to_vec()).await.expect("rev 10");
        // Compacted up to 5: revisions 1, 3 and 5 are named by updates 7, 8 and 6.
        assert!(store.watch("", 4).is_err());
        assert_eq!(kept_len(&store), 3);
        store.shutdown().await.expect("shutdown");
    }
    let store = Store::open_with(dir.path(), config).await.expect("reopen");
    let mut stream = store.watch("", 5).expect("watch from the compaction point");
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next_event(&mut stream).await.expect("event"));
    }
    assert_eq!(put_of(&got[0]), ("/b", &b"b3"[..], Some(&b"b2"[..])));
    assert_eq!(put_of(&got[1]), ("/a", &b"a2"[..], Some(&b"a1"[..])));
    assert_eq!(put_of(&got[2]), ("/c", &b"c2"[..], Some(&b"c1"[..])));
    assert_eq!(key_rev(&got[3]), ("/c".into(), 9, false));
    assert_eq!(put_of(&got[4]), ("/c", &b"c3"[..], None));
    drop(stream);
    // Five more writes compact through 10: every update naming a kept event is gone.
    for i in 0..5 {
        store
            .create(&format!("/z/{i}"), Vec::new())
            .await
            .expect("create");
    }
    assert_eq!(kept_len(&store), 0);
    // An update whose predecessor was compacted when it was written carries it inline.
    store
        .update("/a", b"a3".to_vec(), None)
        .await
        .expect("rev 16");
    let mut stream = store.watch("/a", 10).expect("watch");
    let e = next_event(&mut stream).await.expect("event");
    assert_eq!(put_of(&e), ("/a", &b"a3"[..], Some(&b"a2"[..])));
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_watcher_overtaken_by_compaction_gets_compacted_then_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        event_ring_bytes: 1,
        history_retain: 5,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).await.expect("open");
    let mut stream = store.watch("", 0).expect("watch");
    for i in 0..40 {
        store
            .create(&format!("/k/{i}"), Vec::new())
            .await
            .expect("create");
    }
    // It never read anything: by now its next revision was compacted away.
    assert!(matches!(
        next_event(&mut stream).await,
        Err(StoreError::Compacted { requested: 0, .. })
    ));
    let end = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("ends");
    assert!(end.is_none());
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn data_and_history_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path()).await;
        store.create("/a", b"1".to_vec()).await.expect("create");
        store.create("/b", b"2".to_vec()).await.expect("create");
        store
            .update("/a", b"3".to_vec(), Some(1))
            .await
            .expect("update");
        store.delete("/b", None).await.expect("delete");
        store.shutdown().await.expect("shutdown");
    }
    let store = open(dir.path()).await;
    assert_eq!(store.revision(), 4);
    let a = store.get("/a").await.expect("get").expect("present");
    assert_eq!(
        (&a.value[..], a.create_revision, a.mod_revision),
        (&b"3"[..], 1, 3)
    );
    assert_eq!(store.get("/b").await.expect("get"), None);
    let mut stream = store.watch("", 0).expect("history after restart");
    let revs: Vec<_> = [
        next_event(&mut stream).await,
        next_event(&mut stream).await,
        next_event(&mut stream).await,
        next_event(&mut stream).await,
    ]
    .into_iter()
    .map(|e| key_rev(&e.expect("event")))
    .collect();
    assert_eq!(
        revs,
        [
            ("/a".to_owned(), 1, true),
            ("/b".to_owned(), 2, true),
            ("/a".to_owned(), 3, true),
            ("/b".to_owned(), 4, false)
        ]
    );
    // Revisions continue where they stopped.
    assert_eq!(
        store
            .create("/c", Vec::new())
            .await
            .expect("create")
            .mod_revision,
        5
    );
    assert_eq!(
        key_rev(&next_event(&mut stream).await.expect("event")),
        ("/c".into(), 5, true)
    );
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn survives_snapshots_and_log_purge_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        snapshot_every: 50,
        logs_to_keep: 10,
        ..StoreConfig::default()
    };
    {
        let store = Store::open_with(dir.path(), config.clone())
            .await
            .expect("open");
        for i in 0..300 {
            store
                .create(&format!("/k/{i:03}"), vec![1; 10])
                .await
                .expect("create");
        }
        store
            .inner
            .raft
            .wait(Some(DEADLINE))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= 100),
                "log purged after a snapshot",
            )
            .await
            .expect("log purged");
        store.shutdown().await.expect("shutdown");
    }
    let store = Store::open_with(dir.path(), config).await.expect("reopen");
    assert_eq!(store.revision(), 300);
    assert_eq!(store.list("/k/").await.expect("list").items.len(), 300);
    store.create("/k/new", Vec::new()).await.expect("create");
    assert_eq!(store.revision(), 301);
    store.shutdown().await.expect("shutdown");
}

/// The log's byte budget keeps asking for snapshots even when a snapshot purges nothing (the
/// log keeps `logs_to_keep` entries behind it), so the log is truncated by bytes, not only by
/// the entry-count policy.
#[tokio::test]
async fn the_log_byte_budget_triggers_snapshots_again_and_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        // The entry-count policy alone would never fire here.
        snapshot_every: 1_000_000,
        snapshot_log_bytes: 64 << 10,
        logs_to_keep: 100,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).await.expect("open");
    // Sequential 2 KiB updates: one entry each, a snapshot asked for every ~30 entries, and
    // the first snapshots purge nothing (fewer than 100 entries behind them).
    store.create("/k", vec![0; 2048]).await.expect("create");
    for i in 0..400u32 {
        store
            .update("/k", vec![(i % 251) as u8; 2048], None)
            .await
            .expect("update");
    }
    store
        .inner
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= 200),
            "log purged by the byte budget",
        )
        .await
        .expect("log purged by the byte budget");
    store.shutdown().await.expect("shutdown");
}

/// Behind a snapshot the log keeps at most `log_keep_bytes`, however few entries that is: one
/// entry can carry a batch of hundreds of writes, so a count alone does not bound the file.
#[tokio::test]
async fn the_log_behind_a_snapshot_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        snapshot_every: 100,
        // By count alone nothing would ever be purged in this test.
        logs_to_keep: 1_000_000,
        // About four of the entries written below.
        log_keep_bytes: 9 << 10,
        ..StoreConfig::default()
    };
    let store = Store::open_with(dir.path(), config).await.expect("open");
    store.create("/k", vec![0; 2048]).await.expect("create");
    for i in 0..250u32 {
        store
            .update("/k", vec![(i % 251) as u8; 2048], None)
            .await
            .expect("update");
    }
    let metrics = store
        .inner
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| match (m.snapshot, m.purged) {
                (Some(s), Some(p)) => s.index >= 150 && p.index + 10 >= s.index,
                _ => false,
            },
            "log purged to a few entries behind the snapshot",
        )
        .await
        .expect("log purged by bytes");
    let (snapshot, purged) = (
        metrics.snapshot.expect("snapshot").index,
        metrics.purged.expect("purged").index,
    );
    assert!(
        snapshot - purged <= 4,
        "{} entries of about 2 KiB kept behind the snapshot at {snapshot}, for a 9 KiB budget",
        snapshot - purged
    );
    store.shutdown().await.expect("shutdown");
}

/// Prints the latency of sequential writes and the rate of concurrent ones (no assertion on
/// time: figures depend on the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_latency_and_throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path()).await;
    let value = vec![b'x'; 1024];
    let mut latencies = Vec::new();
    for i in 0..300 {
        let start = Instant::now();
        store
            .create(&format!("/seq/{i}"), value.clone())
            .await
            .expect("create");
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    println!(
        "single writer, 1 KiB values: p50 {:?} p99 {:?} max {:?}",
        p(0.5),
        p(0.99),
        p(1.0)
    );

    let writers: i32 = std::env::var("SHOAL_STORE_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let per_writer = 6400 / writers;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = store.clone();
        let value = value.clone();
        tasks.spawn(async move {
            for i in 0..per_writer {
                store
                    .create(&format!("/par/{w}/{i}"), value.clone())
                    .await
                    .expect("create");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
    let elapsed = start.elapsed();
    println!(
        "{writers} concurrent writers: {} writes in {elapsed:?} = {:.0} writes/s",
        writers * per_writer,
        f64::from(writers * per_writer) / elapsed.as_secs_f64()
    );
    store.shutdown().await.expect("shutdown");
}

const WRITER_ENV: &str = "SHOAL_STORE_KILL9_WRITER_DIR";

/// The child process of `acknowledged_writes_survive_kill_9` (which runs it with
/// `--ignored`): writes keys from several tasks and prints each one once it is acknowledged.
#[test]
#[ignore = "helper process of acknowledged_writes_survive_kill_9, not a test by itself"]
fn kill_9_writer_child() {
    let dir = std::env::var(WRITER_ENV).expect("run by acknowledged_writes_survive_kill_9");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // Frequent snapshots and purges: a crash must never lose log the state machine had
        // not made durable.
        let config = StoreConfig {
            snapshot_every: 300,
            logs_to_keep: 20,
            ..StoreConfig::default()
        };
        let store = Store::open_with(Path::new(&dir), config)
            .await
            .expect("open");
        println!("ready");
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..8 {
            let store = store.clone();
            tasks.spawn(async move {
                // Bounded, in case the parent never kills us.
                for i in 0..100_000 {
                    let key = format!("/k/{w}/{i}");
                    store.create(&key, vec![b'v'; 100]).await.expect("create");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {key}").expect("stdout");
                    out.flush().expect("stdout");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "tests::kill_9_writer_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WRITER_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut acked = Vec::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child output");
        if let Some(key) = line.strip_prefix("acked ") {
            acked.push(key.to_owned());
        }
        if !killed && (acked.len() >= 2000 || Instant::now() > deadline) {
            // SIGKILL mid-stream; keep reading what it printed before dying.
            child.kill().expect("kill writer");
            killed = true;
        }
    }
    let status = child.wait().expect("wait writer");
    assert!(killed, "writer ended before it was killed: {status:?}");
    assert!(
        acked.len() >= 2000,
        "only {} writes acknowledged",
        acked.len()
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = open(dir.path()).await;
        let present = store.list("/k/").await.expect("list");
        let keys: std::collections::HashSet<_> =
            present.items.iter().map(|kv| kv.key.clone()).collect();
        let missing: Vec<_> = acked.iter().filter(|k| !keys.contains(*k)).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged writes lost, e.g. {:?}",
            missing.len(),
            missing.first()
        );
        // Revisions are dense: one per surviving write.
        assert_eq!(store.revision(), present.items.len() as u64);
        // The writer snapshotted and purged its log before it died.
        assert!(store.inner.raft.metrics().borrow().purged.is_some());
        println!(
            "{} acknowledged, {} present after kill -9",
            acked.len(),
            present.items.len()
        );
        store.shutdown().await.expect("shutdown");
    });
}

/// Builds fresh storage for openraft's conformance suite; the temp dir lives as long as it.
struct SuiteBuilder;

type SuiteStorage = (
    tempfile::TempDir,
    log_store::LogStore,
    state_machine::StateMachine,
);

impl
    openraft::testing::StoreBuilder<
        raft::TypeConfig,
        log_store::LogStore,
        state_machine::StateMachine,
        tempfile::TempDir,
    > for SuiteBuilder
{
    async fn build(&self) -> Result<SuiteStorage, openraft::StorageError<u64>> {
        let to_storage = |e: &dyn std::fmt::Display| {
            openraft::StorageError::from(openraft::StorageIOError::write(
                openraft::AnyError::error(e.to_string()),
            ))
        };
        let dir = tempfile::tempdir().map_err(|e| to_storage(&e))?;
        let (log, _writer) = log_store::LogStore::open(
            &dir.path().join("raft-log.redb"),
            Arc::new(log_store::SnapshotTrigger::new(16 << 20)),
            Arc::new(tokio::sync::Notify::new()),
            StoreMetrics::default(),
        )
        .map_err(|e| to_storage(&e))?;
        let sm = state_machine::StateMachine::open(
            &dir.path().join("state.redb"),
            10_000,
            1 << 20,
            StoreMetrics::default(),
            Arc::new(log_store::SnapshotTrigger::new(16 << 20)),
        )
        .map_err(|e| to_storage(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    openraft::testing::Suite::test_all(SuiteBuilder).expect("openraft storage suite passes");
}

/// Flips one byte at many places of each data file in turn and opens the store: it must either
/// refuse to start with an error naming the file, or start and serve exactly the data it had
/// (the byte was in free space). Never wrong data, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_data_file_is_refused_or_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pristine = dir.path().join("pristine");
    let mut want = std::collections::BTreeMap::new();
    {
        let store = open(&pristine).await;
        for i in 0..200 {
            let key = format!("/k/{i:03}");
            let value = format!("{i:0>1024}").into_bytes();
            store.create(&key, value.clone()).await.expect("create");
            want.insert(key, value);
        }
        store.shutdown().await.expect("shutdown");
    }
    let mut refused = 0;
    let mut harmless = 0;
    for file in ["raft-log.redb", "state.redb"] {
        let len = std::fs::metadata(pristine.join(file)).expect("file").len() as usize;
        // Every page of the file at a varying offset within it, plus the headers.
        let offsets: Vec<usize> = (0..len)
            .step_by(4096)
            .enumerate()
            .map(|(i, page)| page + (i * 577) % 4096)
            .chain([0, 1, 64, 300, 600])
            .filter(|o| *o < len)
            .collect();
        for offset in offsets {
            let copy = dir.path().join(format!("{file}-{offset}"));
            copy_dir(&pristine, &copy);
            let path = copy.join(file);
            let mut bytes = std::fs::read(&path).expect("read");
            bytes[offset] ^= 0x5a;
            std::fs::write(&path, bytes).expect("write");
            match Store::open(&copy).await {
                Err(e) => {
                    let message = e.to_string();
                    assert!(
                        message.contains(file),
                        "{file}@{offset}: the error does not name the file: {message}"
                    );
                    refused += 1;
                }
                Ok(store) => {
                    let list = store.list("/k/").await;
                    match list {
                        Ok(list) => {
                            let got: std::collections::BTreeMap<_, _> = list
                                .items
                                .into_iter()
                                .map(|kv| (kv.key, kv.value.to_vec()))
                                .collect();
                            assert_eq!(got, want, "{file}@{offset}: wrong data served");
                            harmless += 1;
                        }
                        Err(e) => {
                            let message = e.to_string();
                            assert!(
                                message.contains(file) && message.contains("key"),
                                "{file}@{offset}: {message}"
                            );
                            refused += 1;
                        }
                    }
                    store.shutdown().await.expect("shutdown");
                }
            }
            std::fs::remove_dir_all(&copy).expect("cleanup");
        }
    }
    println!("{refused} damaged copies refused, {harmless} flips in unused space");
    assert!(refused > 0);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// A file cut short (a disk that lost its tail) is refused at start, naming the file.
#[tokio::test]
async fn a_truncated_data_file_is_refused_at_start() {
    for file in ["raft-log.redb", "state.redb"] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path()).await;
            for i in 0..100 {
                store
                    .create(&format!("/k/{i}"), vec![b'v'; 1000])
                    .await
                    .expect("create");
            }
            store.shutdown().await.expect("shutdown");
        }
        let path = dir.path().join(file);
        let len = std::fs::metadata(&path).expect("file").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len / 2))
            .expect("truncate");
        let err = Store::open(dir.path()).await.expect_err("must refuse");
        assert!(err.to_string().contains(file), "{err}");
    }
}
