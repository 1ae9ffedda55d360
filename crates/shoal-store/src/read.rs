//! The read barrier: makes a local read linearizable (read index, see `cluster.rs`).
//!
//! Reads queue for a round; one task runs rounds one after another, and every read queued
//! before a round started is released when that round's read index has been applied here. So
//! a thousand concurrent reads cost one quorum round trip, as etcd's linearizable read loop.

use std::sync::Arc;

use openraft::error::RaftError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::StoreError;
use crate::cluster::{Core, Leader};
use crate::network::{CallError, ForwardError};
use crate::peer::leader_check;

type Waiter = oneshot::Sender<Result<(), StoreError>>;

/// Hands reads to the barrier task.
pub struct ReadBarrier {
    tx: mpsc::Sender<Waiter>,
    core: Arc<Core>,
}

impl ReadBarrier {
    pub(crate) fn spawn(core: Arc<Core>) -> (ReadBarrier, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16_384);
        let handle = tokio::spawn(run(Arc::clone(&core), rx));
        (ReadBarrier { tx, core }, handle)
    }

    /// Returns once a read on this member sees every write committed before the call.
    pub async fn wait(&self) -> Result<(), StoreError> {
        if self.core.alone() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("store is shut down".into())
}

async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = round(&core).await;
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

fn read_timeout(core: &Core) -> StoreError {
    StoreError::Timeout(format!(
        "no read index within {:?}: the leader cannot confirm it still leads",
        core.timing.read_timeout
    ))
}

/// One read-index round: learn the index, then wait until it is applied here.
async fn round(core: &Core) -> Result<(), StoreError> {
    let deadline = Instant::now() + core.timing.read_timeout;
    let mut leaderless_since: Option<Instant> = None;
    let index = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(read_timeout(core));
        }
        let retry = match core.leader() {
            Leader::Me => {
                leaderless_since = None;
                match leader_check(&core.raft, core.id, core.timing.quorum_grace) {
                    Err(ForwardError::NoQuorum { millis }) => {
                        return Err(StoreError::Unavailable(format!(
                            "the leader has not heard from a quorum of members for {millis} ms"
                        )));
                    }
                    Err(e) => e.to_string(),
                    Ok(()) => {
                        let limit = remaining.min(core.timing.attempt);
                        match tokio::time::timeout(limit, core.raft.get_read_log_id()).await {
                            Err(_) => "confirming leadership took too long".to_string(),
                            Ok(Ok((read, _))) => break read.map_or(0, |l| l.index),
                            Ok(Err(RaftError::APIError(e))) => e.to_string(),
                            Ok(Err(e)) => return Err(StoreError::Unavailable(e.to_string())),
                        }
                    }
                }
            }
            Leader::Other(leader) => {
                leaderless_since = None;
                let limit = remaining.min(core.timing.attempt);
                match core.network.read_index(&leader, limit).await {
                    Ok(Ok(index)) => break index,
                    Ok(Err(ForwardError::NoQuorum { millis })) => {
                        return Err(StoreError::Unavailable(format!(
                            "the leader has not heard from a quorum of members for {millis} ms"
                        )));
                    }
                    Ok(Err(e)) => e.to_string(),
                    // A silent leader may be on its way out: ask again (maybe a new one).
                    Err(e @ (CallError::Timeout { .. } | CallError::Unreachable { .. })) => {
                        e.to_string()
                    }
                    Err(e) => return Err(StoreError::Unavailable(e.to_string())),
                }
            }
            Leader::Unknown => {
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                if let Some(e) = core.no_leader(since) {
                    return Err(e);
                }
                "no leader".to_string()
            }
        };
        tracing::debug!(reason = %retry, "asking for a read index again");
        core.state_change(std::time::Duration::from_millis(50))
            .await;
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    core.raft
        .wait(Some(remaining))
        .applied_index_at_least(Some(index), "read index")
        .await
        .map(|_| ())
        .map_err(|_| read_timeout(core))
}
