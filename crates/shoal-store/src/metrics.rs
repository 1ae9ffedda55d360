//! The store's metrics, under etcd's names where the meaning is the same, so dashboards and
//! alerts written for etcd work on Shoal unchanged.
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `etcd_disk_wal_fsync_duration_seconds` | histogram | one durable commit of the raft log (a batch of appends) |
//! | `etcd_disk_backend_commit_duration_seconds` | histogram | one durable commit of the state machine |
//! | `etcd_server_has_leader` | gauge | 1 when this member knows a leader |
//! | `etcd_server_is_leader` | gauge | 1 on the leader |
//! | `etcd_server_leader_changes_seen_total` | counter | leader changes this member saw |
//! | `etcd_server_proposals_committed_total` | gauge | index of the last committed (applied) entry |
//! | `etcd_server_proposals_applied_total` | gauge | same, applied to the state machine |
//! | `etcd_server_proposals_failed_total` | counter | writes that failed (no leader, timeout, lost quorum) |
//! | `etcd_mvcc_db_total_size_in_bytes` | gauge | bytes of the data dir's files (log, state, snapshots) |
//! | `etcd_debugging_mvcc_current_revision` | gauge | the store revision |

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The store's metrics; cheap to clone (every field is a shared handle).
#[derive(Clone)]
pub struct StoreMetrics {
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub leader_changes: Counter,
    pub proposals_committed: Gauge<u64, AtomicU64>,
    pub proposals_applied: Gauge<u64, AtomicU64>,
    pub proposals_failed: Counter,
    pub db_total_size: Gauge<u64, AtomicU64>,
    pub current_revision: Gauge<u64, AtomicU64>,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreMetrics").finish_non_exhaustive()
    }
}

fn disk_histogram() -> Histogram {
    // etcd's buckets: 1 ms doubling to about 8 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            wal_fsync: disk_histogram(),
            backend_commit: disk_histogram(),
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_failed: Counter::default(),
            db_total_size: Gauge::default(),
            current_revision: Gauge::default(),
        }
    }
}

impl StoreMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by the raft log",
            self.wal_fsync.clone(),
        );
        registry.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of durable commits of the state machine",
            self.backend_commit.clone(),
        );
        registry.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not",
            self.has_leader.clone(),
        );
        registry.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise",
            self.is_leader.clone(),
        );
        registry.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen",
            self.leader_changes.clone(),
        );
        registry.register(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed",
            self.proposals_committed.clone(),
        );
        registry.register(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied",
            self.proposals_applied.clone(),
        );
        registry.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen",
            self.proposals_failed.clone(),
        );
        registry.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes",
            self.db_total_size.clone(),
        );
        registry.register(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store",
            self.current_revision.clone(),
        );
    }
}
