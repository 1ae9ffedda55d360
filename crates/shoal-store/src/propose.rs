//! Group commit in front of raft: concurrent writes are gathered into one `Request::Batch`
//! log entry.
//!
//! openraft 0.9's core waits for each append's fsync before it takes the next entry, so one
//! entry per write would cap the store at one write per fsync. Here a single task drains
//! whatever writes are queued, proposes them as one entry, and answers each caller with its
//! own response; while a batch is being made durable the next one accumulates. At most
//! `MAX_IN_FLIGHT` batches are with raft at once. It does not reorder a caller's writes: a
//! caller waits for each answer before its next write.
//!
//! A caller waits at most the configured write timeout (a stalled disk must not hang every
//! writer forever); a write that timed out may still be applied later.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::StoreError;
use crate::raft::{Request, Response, TypeConfig};

/// Batches handed to raft and not yet answered.
const MAX_IN_FLIGHT: usize = 2;
/// Most requests in one entry.
const MAX_OPS: usize = 4096;
/// Most value bytes in one entry (a single larger value still goes alone).
const MAX_BYTES: usize = 8 << 20;

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Response, StoreError>>,
}

/// Submits writes to the batching task.
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
    timeout: Duration,
}

impl Proposer {
    /// Starts the batching task; it ends when the `Proposer` is dropped (or is aborted).
    /// Each `propose` waits at most `timeout` for its answer.
    pub fn spawn(raft: Raft<TypeConfig>, timeout: Duration) -> (Proposer, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(raft, rx));
        (Proposer { tx, timeout }, handle)
    }

    /// Proposes `request` and waits until it is durable and applied, or the write timeout
    /// passed (`StoreError::Timeout`: the write may still be applied later).
    pub async fn propose(&self, request: Request) -> Result<Response, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { request, reply })
            .map_err(|_| stopped())?;
        await_reply(rx, self.timeout).await
    }
}

/// The answer on `rx`, or `Timeout` once `timeout` passed.
async fn await_reply(
    rx: oneshot::Receiver<Result<Response, StoreError>>,
    timeout: Duration,
) -> Result<Response, StoreError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(answer) => answer.map_err(|_| stopped())?,
        Err(_) => {
            tracing::warn!(
                timeout_ms = timeout.as_millis() as u64,
                "write not durable within the timeout"
            );
            Err(StoreError::Timeout(format!(
                "write timed out after {timeout:?} waiting to be made durable; it may still be applied"
            )))
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("store is shut down".into())
}

fn size(request: &Request) -> usize {
    match request {
        Request::Create { key, value } | Request::Update { key, value, .. } => {
            key.len() + value.len()
        }
        Request::Delete { key, .. } => key.len(),
        Request::Compact { .. } | Request::Batch(_) => 0,
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<Pending>) {
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
        let mut bytes = size(&first.request);
        let mut batch = vec![first];
        while batch.len() < MAX_OPS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += size(&p.request);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tasks.spawn(async move {
            submit(&raft, batch).await;
            drop(slot);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn submit(raft: &Raft<TypeConfig>, mut batch: Vec<Pending>) {
    if batch.len() == 1
        && let Some(p) = batch.pop()
    {
        let result = raft
            .client_write(p.request)
            .await
            .map(|r| r.data)
            .map_err(|e| StoreError::Unavailable(format!("raft write: {e}")));
        let _ = p.reply.send(result);
        return;
    }
    let (requests, replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.reply)).unzip();
    let n = replies.len();
    tracing::trace!(requests = n, "proposing batch");
    match raft.client_write(Request::Batch(requests)).await {
        Ok(r) => match r.data {
            Response::Batch(responses) if responses.len() == n => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    let _ = reply.send(Ok(response));
                }
            }
            other => {
                let message = format!("unexpected batch response {other:?}");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        },
        Err(e) => {
            let message = format!("raft write: {e}");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_whose_answer_never_comes_times_out() {
        let (_reply, rx) = oneshot::channel();
        let result = await_reply(rx, Duration::from_millis(20)).await;
        assert!(
            matches!(&result, Err(StoreError::Timeout(m)) if m.contains("write timed out")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn an_answer_within_the_timeout_is_returned() {
        let (reply, rx) = oneshot::channel();
        let _ = reply.send(Ok(Response::Empty));
        assert!(await_reply(rx, Duration::from_secs(60)).await.is_ok());

        let (reply, rx) = oneshot::channel::<Result<Response, StoreError>>();
        drop(reply);
        assert!(matches!(
            await_reply(rx, Duration::from_secs(60)).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
