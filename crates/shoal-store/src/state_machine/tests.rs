use bytes::Bytes;
use openraft::{CommittedLeaderId, Membership};

use super::*;
use crate::raft::OpId;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn ops(index: u64, ops: Vec<Op>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Request::Ops(ops)),
    }
}

fn op(ticket: u64, nonce: u64, write: Write) -> Op {
    Op {
        id: OpId { ticket, nonce },
        write,
    }
}

fn create(key: &str) -> Write {
    Write::Create {
        key: key.into(),
        value: Bytes::from_static(b"v"),
    }
}

fn open(dir: &Path, name: &str) -> StateMachine {
    StateMachine::open(
        &dir.join(name),
        100,
        1 << 20,
        StoreMetrics::default(),
        Arc::new(crate::log_store::SnapshotTrigger::new(16 << 20)),
    )
    .expect("open")
}

fn outcomes(r: &Response) -> &[Outcome] {
    match r {
        Response::Ops(o) => o,
        other => panic!("not an ops response: {other:?}"),
    }
}

#[test]
fn a_batch_applies_in_order_and_failed_conditions_take_no_revision() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(dir.path(), "state.redb");
    let mut live = sm.shared().events.subscribe();
    let responses = sm
        .apply_batch(vec![
            ops(1, vec![op(1, 1, create("/a"))]),
            ops(
                2,
                vec![
                    op(1, 2, create("/a")),
                    op(1, 3, create("/b")),
                    op(
                        1,
                        4,
                        Write::Update {
                            key: "/a".into(),
                            value: Bytes::from_static(b"w"),
                            expected: Some(9),
                        },
                    ),
                    op(
                        1,
                        5,
                        Write::Delete {
                            key: "/a".into(),
                            expected: Some(1),
                        },
                    ),
                    op(
                        1,
                        6,
                        Write::Delete {
                            key: "/zzz".into(),
                            expected: None,
                        },
                    ),
                ],
            ),
        ])
        .expect("apply");
    assert_eq!(
        outcomes(&responses[0]),
        [Outcome::Written {
            create_revision: 1,
            mod_revision: 1
        }]
    );
    let inner = outcomes(&responses[1]);
    assert_eq!(inner[0], Outcome::AlreadyExists);
    assert_eq!(
        inner[1],
        Outcome::Written {
            create_revision: 2,
            mod_revision: 2
        }
    );
    assert_eq!(inner[2], Outcome::Conflict { current: 1 });
    assert!(matches!(&inner[3], Outcome::Deleted { revision: 3, prev } if prev.key == "/a"));
    assert_eq!(inner[4], Outcome::NotFound);
    assert_eq!(sm.shared.revision.load(Ordering::Acquire), 3);
    assert_eq!(sm.applied.map(|l| l.index), Some(2));
    // The ring was told, after the commit.
    assert_eq!(*live.borrow_and_update(), 3);
    let Ok((history, scanned)) = sm.shared.history_page("", 0, 100).expect("history") else {
        panic!("nothing compacted");
    };
    assert_eq!((history.len(), scanned), (3, 3));
}

#[test]
fn a_put_creates_then_overwrites_unconditionally() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(dir.path(), "state.redb");
    let put = |value: &'static [u8]| Write::Put {
        key: "/p".into(),
        value: Bytes::from_static(value),
    };
    let responses = sm
        .apply_batch(vec![ops(
            1,
            vec![op(1, 1, put(b"one")), op(1, 2, put(b"two"))],
        )])
        .expect("apply");
    assert_eq!(
        outcomes(&responses[0]),
        [
            Outcome::Written {
                create_revision: 1,
                mod_revision: 1
            },
            Outcome::Written {
                create_revision: 1,
                mod_revision: 2
            }
        ]
    );
    let kv = sm.shared.get("/p").expect("get").expect("present");
    assert_eq!(&kv.value[..], b"two");
}

#[test]
fn a_write_applied_again_with_its_id_gets_its_first_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(dir.path(), "state.redb");
    let first = op(1, 7, create("/a"));
    let delete = op(
        1,
        8,
        Write::Delete {
            key: "/a".into(),
            expected: None,
        },
    );
    let r = sm
        .apply_batch(vec![
            ops(1, vec![first.clone()]),
            ops(2, vec![delete.clone()]),
        ])
        .expect("apply");
    let created = outcomes(&r[0])[0].clone();
    let deleted = outcomes(&r[1])[0].clone();
    // The same ids again (a retry after a lost answer): nothing changes, same answers.
    let again = sm
        .apply_batch(vec![ops(3, vec![first, delete])])
        .expect("apply");
    assert_eq!(outcomes(&again[0]), [created, deleted]);
    assert_eq!(sm.shared.revision.load(Ordering::Acquire), 2);
    assert_eq!(sm.shared.get("/a").expect("get"), None);
    // A new id for the same create does apply.
    let r = sm
        .apply_batch(vec![ops(4, vec![op(1, 9, create("/a"))])])
        .expect("apply");
    assert!(matches!(
        outcomes(&r[0])[0],
        Outcome::Written {
            mod_revision: 3,
            ..
        }
    ));
}

#[test]
fn ids_older_than_the_compaction_point_are_refused_not_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(dir.path(), "state.redb");
    let writes: Vec<Op> = (0..10)
        .map(|i| op(1, i, create(&format!("/k/{i}"))))
        .collect();
    sm.apply_batch(vec![ops(1, writes)]).expect("apply");
    sm.apply_batch(vec![Entry {
        log_id: log_id(2),
        payload: EntryPayload::Normal(Request::Compact { keep: 3 }),
    }])
    .expect("compact");
    assert_eq!(sm.compacted, 7);
    // Ticketed before the compaction point: whether it ran before cannot be told.
    let r = sm
        .apply_batch(vec![ops(3, vec![op(7, 99, create("/late"))])])
        .expect("apply");
    assert_eq!(outcomes(&r[0]), [Outcome::Expired]);
    assert_eq!(sm.shared.get("/late").expect("get"), None);
    let r = sm
        .apply_batch(vec![ops(4, vec![op(8, 99, create("/late"))])])
        .expect("apply");
    assert!(matches!(outcomes(&r[0])[0], Outcome::Written { .. }));
}

#[test]
fn members_dropped_from_the_membership_are_remembered_as_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sm = open(dir.path(), "state.redb");
    let member = |n: &str| Member {
        name: n.into(),
        ..Member::default()
    };
    let config = |ids: &[u64]| Entry::<TypeConfig> {
        log_id: log_id(ids.len() as u64),
        payload: EntryPayload::Membership(Membership::new(
            vec![ids.iter().copied().collect()],
            ids.iter()
                .map(|id| (*id, member(&id.to_string())))
                .collect::<BTreeMap<_, _>>(),
        )),
    };
    sm.apply_batch(vec![config(&[1, 2, 3])]).expect("apply");
    assert!(sm.shared.removed().is_empty());
    let mut two = config(&[1, 3]);
    two.log_id = log_id(10);
    sm.apply_batch(vec![two]).expect("apply");
    assert_eq!(sm.shared.removed(), BTreeSet::from([2]));
    drop(sm);
    // It survives a restart.
    let sm = open(dir.path(), "state.redb");
    assert_eq!(sm.shared.removed(), BTreeSet::from([2]));
}

use std::collections::BTreeMap;

#[tokio::test]
async fn a_snapshot_file_installs_into_a_fresh_state_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&a_dir).expect("dir");
    std::fs::create_dir_all(&b_dir).expect("dir");
    let mut sm = open(&a_dir, "state.redb");
    sm.apply_batch(vec![
        ops(1, vec![op(1, 1, create("/a"))]),
        ops(2, vec![op(1, 2, create("/b"))]),
    ])
    .expect("apply");
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(2));

    let mut other = open(&b_dir, "state.redb");
    let mut incoming = other.begin_receiving_snapshot().await.expect("receive");
    let mut source = snapshot.snapshot;
    tokio::io::copy(&mut source, &mut incoming)
        .await
        .expect("copy");
    other
        .install_snapshot(&snapshot.meta, incoming)
        .await
        .expect("install");
    let (items, revision) = other.shared.list("/").expect("list");
    assert_eq!((items.len(), revision), (2, 2));
    // History and remembered ids came along: a retried write is still recognised.
    let Ok((history, _)) = other.shared.history_page("", 0, 10).expect("history") else {
        panic!("history was not carried");
    };
    assert_eq!(history.len(), 2);
    let r = other
        .apply_batch(vec![ops(3, vec![op(1, 1, create("/a"))])])
        .expect("apply");
    assert!(matches!(
        outcomes(&r[0])[0],
        Outcome::Written {
            mod_revision: 1,
            ..
        }
    ));
    // It is the current snapshot now, and the only file in its directory.
    let current = other.get_current_snapshot().await.expect("current");
    assert_eq!(current.map(|s| s.meta), Some(snapshot.meta));
    let files: Vec<_> = std::fs::read_dir(b_dir.join("snapshots"))
        .expect("dir")
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&a_dir).expect("dir");
    std::fs::create_dir_all(&b_dir).expect("dir");
    let mut sm = open(&a_dir, "state.redb");
    sm.apply_batch(vec![ops(
        1,
        (0..50)
            .map(|i| op(1, i, create(&format!("/k/{i}"))))
            .collect(),
    )])
    .expect("apply");
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let mut bytes = Vec::new();
    let mut source = snapshot.snapshot;
    tokio::io::AsyncReadExt::read_to_end(&mut source, &mut bytes)
        .await
        .expect("read");
    let mut other = open(&b_dir, "state.redb");
    other
        .apply_batch(vec![ops(1, vec![op(1, 1, create("/mine"))])])
        .expect("apply");
    for damage in [bytes.len() / 2, bytes.len() - 3] {
        let mut bad = bytes.clone();
        bad[damage] ^= 0x40;
        let mut incoming = other.begin_receiving_snapshot().await.expect("receive");
        tokio::io::AsyncWriteExt::write_all(&mut *incoming, &bad)
            .await
            .expect("write");
        assert!(
            other
                .install_snapshot(&snapshot.meta, incoming)
                .await
                .is_err(),
            "damage at {damage} was installed"
        );
        let (items, _) = other.shared.list("/").expect("list");
        assert_eq!(items.len(), 1, "the old state stays");
    }
    // Truncated.
    let mut incoming = other.begin_receiving_snapshot().await.expect("receive");
    tokio::io::AsyncWriteExt::write_all(&mut *incoming, &bytes[..bytes.len() / 3])
        .await
        .expect("write");
    assert!(
        other
            .install_snapshot(&snapshot.meta, incoming)
            .await
            .is_err()
    );
}
