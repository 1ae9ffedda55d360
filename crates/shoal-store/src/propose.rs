//! Group commit in front of raft, and the way a write reaches the leader.
//!
//! Concurrent writes are gathered into one `Request::Ops` log entry: a single task drains
//! whatever writes are queued, submits them as one entry, and answers each caller with its own
//! outcome; while a batch is being committed the next one accumulates. At most
//! `MAX_IN_FLIGHT` batches are out at once. It does not reorder a caller's writes: a caller
//! waits for each answer before its next write.
//!
//! On the leader a batch goes to raft directly; on a follower it is forwarded to the leader.
//! When the answer cannot be learned (the leader changed, a forward was lost) the batch is sent
//! again with the same write ids until the write timeout, and the state machine answers a
//! repeated id with its first outcome: a write is never applied twice. A leader that has not
//! heard from a quorum, or a member that has known no leader for a while, fails writes with
//! `Unavailable` at once rather than letting them wait out the timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::StoreError;
use crate::cluster::{Core, Leader};
use crate::network::{CallError, ForwardError};
use crate::peer::{leader_check, write_error};
use crate::raft::{Op, OpId, Outcome, Request, Response, Write};

/// Batches out at once.
const MAX_IN_FLIGHT: usize = 2;
/// Most writes in one entry.
const MAX_OPS: usize = 4096;
/// Most bytes in one entry (a single larger write still goes alone): keeps replication
/// messages and the log cache in bounds.
const MAX_BYTES: usize = 1 << 20;
/// Writes queued before callers wait for room.
const QUEUE: usize = 16_384;
/// Pause before sending a batch again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Submits writes to the batching task.
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
    core: Arc<Core>,
    nonce: AtomicU64,
}

impl Proposer {
    /// Starts the batching task; it ends when the `Proposer` is dropped (or is aborted).
    pub(crate) fn spawn(core: Arc<Core>) -> (Proposer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(run(Arc::clone(&core), rx));
        (
            Proposer {
                tx,
                core,
                nonce: AtomicU64::new(rand::random()),
            },
            handle,
        )
    }

    /// Proposes `write` and waits until it is committed by a quorum and applied here, or the
    /// write timeout passed (`StoreError::Timeout`: it may still be applied later, once).
    pub async fn propose(&self, write: Write) -> Result<Outcome, StoreError> {
        let id = OpId {
            ticket: self.core.revision.load(Ordering::Acquire) + 1,
            nonce: self.nonce.fetch_add(1, Ordering::Relaxed),
        };
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                op: Op { id, write },
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        let answer = rx.await.map_err(|_| stopped())?;
        if answer.is_err() {
            self.core.metrics.proposals_failed.inc();
        }
        answer
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("store is shut down".into())
}

async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = JoinSet::new();
    loop {
        // Take a slot first: while all are busy, writes pile up and form the next batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut bytes = first.op.write.size();
        let mut batch = vec![first];
        while batch.len() < MAX_OPS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.op.write.size();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let core = Arc::clone(&core);
        tasks.spawn(async move {
            let (ops, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.op, p.reply)).unzip();
            tracing::trace!(ops = ops.len(), "proposing batch");
            match submit(&core, ops).await {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// What one attempt at a batch gave.
enum Attempt {
    Done(Vec<Outcome>),
    /// The leader moved or could not be reached: send again.
    Retry(String),
    Fail(StoreError),
}

fn timeout_error(timeout: Duration) -> StoreError {
    StoreError::Timeout(format!(
        "write not committed within {timeout:?}; it may still be applied (once)"
    ))
}

fn no_quorum(millis: u64) -> StoreError {
    StoreError::Unavailable(format!(
        "the leader has not heard from a quorum of members for {millis} ms"
    ))
}

/// Commits `ops` through the leader, retrying with the same ids until the write timeout.
///
/// Once an attempt may have reached a leader without an answer, the batch's fate is unknown:
/// from then on a failure is reported as `Timeout` (it may still be applied, once), never as
/// `Unavailable`, which promises the write was not taken.
async fn submit(core: &Core, ops: Vec<Op>) -> Result<Vec<Outcome>, StoreError> {
    let outcome = submit_attempts(core, &ops).await;
    match outcome {
        Ok(outcomes) => Ok(outcomes),
        Err((e, false)) => Err(e),
        Err((StoreError::Unavailable(why), true)) => {
            tracing::debug!(reason = %why, "a write of unknown fate failed");
            Err(timeout_error(core.timing.write_timeout))
        }
        Err((e, true)) => Err(e),
    }
}

/// The attempts of `submit`; an error says whether an attempt's fate was left unknown.
async fn submit_attempts(core: &Core, ops: &[Op]) -> Result<Vec<Outcome>, (StoreError, bool)> {
    let started = Instant::now();
    let deadline = started + core.timing.write_timeout;
    let mut leaderless_since: Option<Instant> = None;
    let mut uncertain = false;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err((timeout_error(core.timing.write_timeout), true));
        }
        let attempt = match core.leader() {
            Leader::Me => {
                leaderless_since = None;
                local(
                    core,
                    ops,
                    remaining.min(core.timing.attempt),
                    &mut uncertain,
                )
                .await
            }
            Leader::Other(leader) => {
                leaderless_since = None;
                let limit = remaining.min(core.timing.attempt);
                match core.network.forward(&leader, ops, limit).await {
                    Ok(Ok(outcomes)) if outcomes.len() == ops.len() => Attempt::Done(outcomes),
                    Ok(Ok(_)) => Attempt::Fail(StoreError::Unavailable(
                        "the leader answered a different number of writes".into(),
                    )),
                    Ok(Err(e)) => {
                        uncertain |= matches!(e, ForwardError::Lost { .. });
                        forward_failed(e)
                    }
                    // Gone silent or unreachable: the leader may be changing. Sending again
                    // is safe: the ids make a repeated write answer its first outcome.
                    Err(e @ CallError::Timeout { .. }) => {
                        uncertain = true;
                        Attempt::Retry(e.to_string())
                    }
                    Err(e @ CallError::Unreachable { sent, .. }) => {
                        uncertain |= sent;
                        Attempt::Retry(e.to_string())
                    }
                    Err(e) => Attempt::Fail(StoreError::Unavailable(e.to_string())),
                }
            }
            Leader::Unknown => {
                let since = *leaderless_since.get_or_insert_with(Instant::now);
                if let Some(e) = core.no_leader(since) {
                    return Err((e, uncertain));
                }
                Attempt::Retry("no leader".into())
            }
        };
        match attempt {
            Attempt::Done(outcomes) => return Ok(outcomes),
            Attempt::Fail(e) => return Err((e, uncertain)),
            Attempt::Retry(why) => {
                tracing::debug!(reason = %why, "sending a write batch again");
                core.state_change(RETRY_PAUSE).await;
            }
        }
    }
}

fn forward_failed(e: ForwardError) -> Attempt {
    match e {
        ForwardError::NotLeader { .. } | ForwardError::Lost { .. } => Attempt::Retry(e.to_string()),
        ForwardError::NoQuorum { millis } => Attempt::Fail(no_quorum(millis)),
        ForwardError::Failed(m) => Attempt::Fail(StoreError::Unavailable(m)),
    }
}

async fn local(core: &Core, ops: &[Op], limit: Duration, uncertain: &mut bool) -> Attempt {
    if let Err(e) = leader_check(&core.raft, core.id, core.timing.quorum_grace) {
        return forward_failed(e);
    }
    let n = ops.len();
    let write = core.raft.client_write(Request::Ops(ops.to_vec()));
    match tokio::time::timeout(limit, write).await {
        // Appended but not committed in time: propose it again (same ids) or give up later.
        Err(_) => {
            *uncertain = true;
            Attempt::Retry("not committed within an attempt".into())
        }
        Ok(Ok(r)) => match r.data {
            Response::Ops(outcomes) if outcomes.len() == n => Attempt::Done(outcomes),
            other => Attempt::Fail(StoreError::Unavailable(format!(
                "unexpected apply response {other:?}"
            ))),
        },
        Ok(Err(e)) => {
            // Proposed: whatever went wrong, it may still commit.
            *uncertain = true;
            forward_failed(write_error(core.id, e))
        }
    }
}
