//! Multi-member fixture: three (or more) real stores in one process, each on its own data dir
//! and its own loopback member port with mutual TLS from a test CA. Members are stopped and
//! started again on the same dir to stand for crashes and restarts; the process boundary and
//! network partitions are exercised by the end-to-end tests with real processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use shoal_store::{
    Identity, MEMBERS_GROUP, Member, MemberOptions, PeerTransport, Store, StoreConfig, StoreError,
    WatchEvent,
};
use shoal_tls::CertificateAuthority;

const DEADLINE: Duration = Duration::from_secs(60);

/// Logs to the test output, filtered by `SHOAL_LOG` (default: warnings).
fn log() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn fast() -> StoreConfig {
    log();
    StoreConfig {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
        write_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(3),
        open_timeout: Duration::from_secs(30),
        ..StoreConfig::default()
    }
}

struct Fixture {
    ca: CertificateAuthority,
    cluster_id: String,
    _tmp: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    config: StoreConfig,
}

struct Node {
    dir: PathBuf,
    identity: Identity,
    member: Member,
    store: Option<Store>,
}

impl Fixture {
    fn new(config: StoreConfig) -> Fixture {
        let ca = CertificateAuthority::generate("test-ca").expect("ca");
        let cluster_id = Identity::generate().cluster_id;
        Fixture {
            ca,
            cluster_id,
            _tmp: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            config,
        }
    }

    /// Creates member `n` (not started) with a fixed port.
    fn add(&mut self, n: u64) -> u64 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let identity = Identity {
            cluster_id: self.cluster_id.clone(),
            member_id: n,
        };
        let node = Node {
            dir: self._tmp.path().join(format!("m{n}")),
            identity,
            member: Member {
                name: format!("m{n}"),
                raft_addr: format!("127.0.0.1:{port}"),
                api_url: format!("https://127.0.0.1:{}", port + 10_000),
            },
            store: None,
        };
        self.nodes.insert(n, node);
        n
    }

    async fn transport(&self, node: &Node) -> PeerTransport {
        let issued = self
            .ca
            .issue_server(
                &format!("shoal:member:{:x}", node.identity.member_id),
                &[MEMBERS_GROUP],
                &["127.0.0.1".to_string()],
            )
            .expect("member certificate");
        // The port may be briefly taken after a restart: retry the bind.
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(&node.member.raft_addr).await {
                Ok(l) => break l,
                Err(e) if attempts < 100 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("binding {}: {e}", node.member.raft_addr),
            }
        };
        PeerTransport {
            listener,
            server_tls: shoal_tls::server_config(self.ca.cert_pem(), &issued, true)
                .expect("server tls"),
            client_tls: shoal_tls::client_config(self.ca.cert_pem(), Some(&issued))
                .expect("client tls"),
        }
    }

    async fn start(&mut self, n: u64, initialize: bool) -> Result<Store, StoreError> {
        let node = &self.nodes[&n];
        let peer = self.transport(node).await;
        let options = MemberOptions {
            identity: node.identity.clone(),
            member: node.member.clone(),
            peer: Some(peer),
            initialize,
        };
        let store = Store::start(&node.dir, self.config.clone(), options).await?;
        self.nodes.get_mut(&n).expect("node").store = Some(store.clone());
        Ok(store)
    }

    fn store(&self, n: u64) -> Store {
        self.nodes[&n].store.clone().expect("started")
    }

    /// Starts member 1 as a new cluster and adds the others as voters.
    async fn cluster(&mut self, n: u64) {
        for i in 1..=n {
            self.add(i);
        }
        self.start(1, true).await.expect("first member");
        for i in 2..=n {
            self.start(i, false).await.expect("joining member");
            let member = self.nodes[&i].member.clone();
            self.store(1)
                .add_member(i, member)
                .await
                .expect("add member");
            self.store(i).wait_voter(DEADLINE).await.expect("voter");
        }
    }

    async fn stop(&mut self, n: u64) {
        if let Some(store) = self.nodes.get_mut(&n).and_then(|node| node.store.take()) {
            store.shutdown().await.expect("shutdown");
        }
    }

    async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for (id, node) in &self.nodes {
                if node.store.as_ref().is_some_and(Store::is_leader) {
                    return *id;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_replicate_forward_writes_and_read_linearizably() {
    let mut f = Fixture::new(fast());
    f.cluster(3).await;
    let leader = f.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let (a, b) = (f.store(followers[0]), f.store(followers[1]));

    // A watch on one follower, a write on the other: forwarded to the leader, never refused.
    let mut events = b.watch("/k/", b.revision()).expect("watch");
    let kv = a
        .create("/k/one", b"1".to_vec())
        .await
        .expect("write on a follower");
    // The other follower reads it at once: reads are linearizable on every member.
    let seen = b.get("/k/one").await.expect("read").expect("present");
    assert_eq!(seen, kv);
    let event = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event");
    assert_eq!(event.revision(), kv.mod_revision);

    // Conditions are decided by the one history: a stale update from a follower conflicts.
    f.store(leader)
        .update("/k/one", b"2".to_vec(), Some(kv.mod_revision))
        .await
        .expect("update on the leader");
    assert!(matches!(
        b.update("/k/one", b"3".to_vec(), Some(kv.mod_revision))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // Every member lists the same keys at the same revision.
    let lists = [1, 2, 3].map(|i| f.store(i));
    let mut revisions = Vec::new();
    for s in &lists {
        let l = s.list("/k/").await.expect("list");
        assert_eq!(l.items.len(), 1);
        assert_eq!(&l.items[0].value[..], b"2");
        revisions.push(l.items[0].mod_revision);
    }
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "{revisions:?}");
    let members = a.members();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.voter));
    assert_eq!(members.iter().filter(|m| m.leader).count(), 1);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_no_acknowledged_write_is_lost() {
    let mut f = Fixture::new(fast());
    f.cluster(3).await;
    let old = f.leader().await;
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != old).collect();

    // Writers on both followers keep writing while the leader goes away.
    let mut writers = tokio::task::JoinSet::new();
    for (w, id) in survivors.iter().enumerate() {
        let store = f.store(*id);
        writers.spawn(async move {
            let mut acked = Vec::new();
            for i in 0..300 {
                let key = format!("/w/{w}/{i}");
                if store.create(&key, vec![b'x'; 64]).await.is_ok() {
                    acked.push(key);
                }
            }
            acked
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.stop(old).await;
    let mut acked = Vec::new();
    while let Some(done) = writers.join_next().await {
        acked.extend(done.expect("writer"));
    }
    let new = f.leader().await;
    assert_ne!(new, old);
    // Writes succeed again under the new leader, on both survivors.
    for id in &survivors {
        f.store(*id)
            .create(&format!("/after/{id}"), Vec::new())
            .await
            .expect("write after failover");
    }
    assert!(
        acked.len() > 300,
        "only {} writes acknowledged",
        acked.len()
    );
    // The old leader comes back on its dir and catches up; nothing acknowledged is missing
    // anywhere.
    f.start(old, false).await.expect("restart the old leader");
    for id in 1..=3 {
        let store = f.store(id);
        let present: std::collections::HashSet<String> = store
            .list("/w/")
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        let missing: Vec<_> = acked.iter().filter(|k| !present.contains(*k)).collect();
        assert!(missing.is_empty(), "member {id} lost {missing:?}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_after_the_log_was_purged_catches_up_from_a_streamed_snapshot() {
    let mut f = Fixture::new(StoreConfig {
        snapshot_every: 20,
        logs_to_keep: 5,
        // Compacts to the last 50 revisions every 50.
        history_retain: 50,
        ..fast()
    });
    f.cluster(1).await;
    let first = f.store(1);
    for i in 0..400 {
        first
            .create(&format!("/k/{i:03}"), vec![b'v'; 200])
            .await
            .expect("create");
    }
    // `/kept` is created at 420 and updated at 470; compaction reaches 450 at 500, so the
    // update's replaced value survives only in the kept table, which the snapshot carries.
    let mut x = 0;
    let mut filler = |n: usize| {
        let first = first.clone();
        let from = x;
        x += n;
        async move {
            for i in from..from + n {
                first
                    .create(&format!("/x/{i:03}"), Vec::new())
                    .await
                    .expect("create");
            }
        }
    };
    filler(19).await;
    first.create("/kept", b"v1".to_vec()).await.expect("create");
    filler(49).await;
    first
        .update("/kept", b"v2".to_vec(), None)
        .await
        .expect("update");
    filler(30).await;
    assert_eq!(first.revision(), 500);
    f.add(2);
    let joiner = f.start(2, false).await.expect("joiner");
    let member = f.nodes[&2].member.clone();
    first.add_member(2, member).await.expect("add");
    joiner.wait_voter(DEADLINE).await.expect("voter");
    let got = joiner.list("/k/").await.expect("list");
    assert_eq!(got.items.len(), 400);
    assert_eq!(got.revision, first.revision());
    // It got there through a snapshot file (its log never held the early entries).
    let snapshots: Vec<_> = std::fs::read_dir(f.nodes[&2].dir.join("snapshots"))
        .expect("snapshots dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(snapshots.len(), 1);
    // History came with it: a watch on the joiner from an old revision replays.
    let mut stream = joiner.watch("", got.revision - 3).expect("watch");
    let e = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("event");
    assert_eq!(e.revision(), got.revision - 2);
    let mut stream = joiner
        .watch("/kept", 450)
        .expect("watch from the compaction point");
    match tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("event")
    {
        WatchEvent::Put {
            kv,
            prev: Some(prev),
        } => {
            assert_eq!((kv.mod_revision, &kv.value[..]), (470, &b"v2"[..]));
            assert_eq!((prev.mod_revision, &prev.value[..]), (420, &b"v1"[..]));
        }
        other => panic!("expected the update with its replaced value, got {other:?}"),
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_refused_and_cannot_rejoin_with_its_dir() {
    let mut f = Fixture::new(fast());
    f.cluster(3).await;
    let leader = f.leader().await;
    let victim = (1..=3).find(|i| *i != leader).expect("a follower");
    f.store(leader)
        .remove_member(victim)
        .await
        .expect("remove member");
    assert_eq!(f.store(leader).members().len(), 2);
    f.store(leader)
        .create("/after-removal", Vec::new())
        .await
        .expect("two members still have a quorum");
    f.stop(victim).await;
    // Started again on its data dir, it is refused: at start if it learned of its removal,
    // or by the first peer it calls.
    match f.start(victim, false).await {
        Err(StoreError::Refused(message)) => assert!(message.contains("removed"), "{message}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(store) => {
            let reason = tokio::time::timeout(DEADLINE, store.fatal())
                .await
                .expect("refused in time");
            assert!(reason.contains("removed"), "{reason}");
        }
    }
    // The cluster was not disturbed by it.
    f.store(leader)
        .create("/still-fine", Vec::new())
        .await
        .expect("write");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_quorum_refuses_writes_and_reads_instead_of_hanging() {
    let mut f = Fixture::new(fast());
    f.cluster(3).await;
    let leader = f.leader().await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    f.store(leader)
        .create("/before", Vec::new())
        .await
        .expect("write");
    for id in others {
        f.stop(id).await;
    }
    let alone = f.store(leader);
    let write = alone.create("/lost-quorum", Vec::new()).await;
    assert!(
        matches!(
            write,
            Err(StoreError::Unavailable(_)) | Err(StoreError::Timeout(_))
        ),
        "{write:?}"
    );
    let read = alone.get("/before").await;
    assert!(
        matches!(
            read,
            Err(StoreError::Unavailable(_)) | Err(StoreError::Timeout(_))
        ),
        "{read:?}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_members_stopped_at_once_come_back_with_all_data() {
    let mut f = Fixture::new(fast());
    f.cluster(3).await;
    let mut acked = Vec::new();
    for i in 0..100 {
        let store = f.store(1 + (i % 3));
        let key = format!("/k/{i}");
        store.create(&key, vec![b'v'; 10]).await.expect("create");
        acked.push(key);
    }
    for id in 1..=3 {
        f.stop(id).await;
    }
    // Restart all three concurrently: each waits for a leader, which needs the others.
    let mut starts = Vec::new();
    let nodes: Vec<(u64, PathBuf, Identity, Member)> = f
        .nodes
        .iter()
        .map(|(id, n)| (*id, n.dir.clone(), n.identity.clone(), n.member.clone()))
        .collect();
    for (id, dir, identity, member) in nodes {
        let peer = f.transport(&f.nodes[&id]).await;
        let config = f.config.clone();
        starts.push(tokio::spawn(async move {
            let options = MemberOptions {
                identity,
                member,
                peer: Some(peer),
                initialize: false,
            };
            (id, Store::start(&dir, config, options).await)
        }));
    }
    for start in starts {
        let (id, store) = start.await.expect("start task");
        f.nodes.get_mut(&id).expect("node").store = Some(store.expect("restart"));
    }
    for id in 1..=3 {
        let list = f.store(id).list("/k/").await.expect("list");
        assert_eq!(list.items.len(), acked.len(), "member {id}");
    }
    f.shutdown().await;
}
