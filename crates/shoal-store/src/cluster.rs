//! What the write and read paths share: the raft handle, the network to the other members, and
//! where the leader is.
//!
//! Reads are linearizable by read index (not by leader lease, which would trust clocks): the
//! leader confirms with a quorum that it still leads and names the log index a read must see;
//! the member serving the read waits until it has applied that index, then reads locally. A
//! member that is the only voter reads locally at once. Many concurrent reads share one round.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use openraft::Raft;
use tokio::time::Instant;

use crate::StoreError;
use crate::metrics::StoreMetrics;
use crate::network::Network;
use crate::raft::{Member, TypeConfig};

/// Timing of the cluster paths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub write_timeout: Duration,
    pub read_timeout: Duration,
    /// How long a leader may go without a quorum's ack before it refuses writes and reads.
    pub quorum_grace: Duration,
    /// How long a request waits for a leader to be known before it fails.
    pub leader_wait: Duration,
    /// How long one attempt (a forward, a read index) may take before it is made again: a
    /// leader that went silent is given up on in about an election timeout, not the whole
    /// request timeout. Safe for writes, which carry their ids.
    pub attempt: Duration,
}

pub(crate) struct Core {
    pub raft: Raft<TypeConfig>,
    pub network: Network,
    pub id: u64,
    /// Revision of the last write applied here (write ids are ticketed with it).
    pub revision: Arc<AtomicU64>,
    pub timing: Timing,
    pub metrics: StoreMetrics,
}

/// Where writes and read indexes go.
pub(crate) enum Leader {
    Me,
    Other(Member),
    Unknown,
}

impl Core {
    pub fn leader(&self) -> Leader {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(id) if id == self.id => Leader::Me,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(member) => Leader::Other(member.clone()),
                None => Leader::Unknown,
            },
            None => Leader::Unknown,
        }
    }

    /// True when this member is the only voter (and so leads alone).
    pub fn alone(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let mut voters = m.membership_config.membership().voter_ids();
        voters.next() == Some(self.id) && voters.next().is_none()
    }

    /// Waits until the raft state changes (a leader appears, say), at most `limit`.
    pub async fn state_change(&self, limit: Duration) {
        let mut rx = self.raft.metrics();
        rx.borrow_and_update();
        let _ = tokio::time::timeout(limit, rx.changed()).await;
    }

    /// The error for a request that found no leader by `since + leader_wait`, or `None` to keep
    /// waiting.
    pub fn no_leader(&self, since: Instant) -> Option<StoreError> {
        (since.elapsed() >= self.timing.leader_wait).then(|| {
            StoreError::Unavailable(format!(
                "no leader: this member has not known a leader for {:?}",
                self.timing.leader_wait
            ))
        })
    }
}
