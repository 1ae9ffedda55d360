//! The agent's side of the runtime interface: one [`NodeRuntime`] per runtime, which routes the
//! runtime's container events to the pod workers waiting on them (the kubelet's evented PLEG),
//! and the orphan clean-up after a restart.
//!
//! A worker waits for its container to exit with [`NodeRuntime::wait_exited`]: it reads the
//! container's status, and sleeps until an event names the container (or the event stream lagged,
//! which wakes every waiter) or a relist period passes, then reads again. Reading the status
//! after every wake-up, rather than trusting the event, keeps it correct when events are lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use shoal_runtime::{
    ContainerState, ContainerStatus, PodSandboxFilter, Runtime, RuntimeError, labels,
};
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often a waiter reads its container's status without being woken, as the kubelet's
/// generic PLEG relists.
const RELIST_PERIOD: Duration = Duration::from_secs(1);

/// A runtime and the waiters on its containers.
pub(crate) struct NodeRuntime {
    pub runtime: Arc<dyn Runtime>,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

impl NodeRuntime {
    /// Wraps `runtime` and routes its events until `shutdown`.
    pub(crate) fn start(runtime: Arc<dyn Runtime>, shutdown: CancellationToken) -> Arc<Self> {
        let this = Arc::new(NodeRuntime {
            runtime,
            waiters: Mutex::default(),
        });
        let mut events = this.runtime.container_events();
        let router = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = events.recv() => event,
                };
                let Some(this) = router.upgrade() else { return };
                let waiters = this.waiters.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Ok(event) => {
                        if let Some(waiter) = waiters.get(&event.container_id) {
                            waiter.notify_one();
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        warn!(missed, "container events lagged, every waiter reads again");
                        for waiter in waiters.values() {
                            waiter.notify_one();
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        this
    }

    /// Resolves with the container's status once it has exited; `Err` if the runtime lost it.
    pub(crate) async fn wait_exited(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let waiter = Arc::clone(
            self.waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(id.to_owned())
                .or_default(),
        );
        let _registered = Unregister { runtime: self, id };
        loop {
            let status = self.runtime.container_status(id).await?;
            if status.state == ContainerState::Exited {
                return Ok(status);
            }
            let _ = tokio::time::timeout(RELIST_PERIOD, waiter.notified()).await;
        }
    }

    /// Stops and removes the sandboxes created before `before` whose pod is not in `live` (pods
    /// deleted while the agent was away).
    pub(crate) async fn remove_orphans(&self, live: &HashSet<String>, before: SystemTime) {
        let sandboxes = match self
            .runtime
            .list_pod_sandboxes(&PodSandboxFilter::default())
            .await
        {
            Ok(sandboxes) => sandboxes,
            Err(error) => {
                warn!(%error, "cannot list pod sandboxes");
                return;
            }
        };
        for sandbox in sandboxes {
            let uid = sandbox
                .labels
                .get(labels::POD_UID)
                .unwrap_or(&sandbox.metadata.uid);
            if live.contains(uid) || sandbox.created_at >= before {
                continue;
            }
            info!(
                sandbox = %sandbox.id,
                pod = %format!("{}/{}", sandbox.metadata.namespace, sandbox.metadata.name),
                %uid,
                "removing the sandbox of a pod no longer bound here"
            );
            if let Err(error) = self.runtime.remove_pod_sandbox(&sandbox.id).await {
                warn!(sandbox = %sandbox.id, %error, "cannot remove orphaned sandbox");
            }
        }
    }
}

struct Unregister<'a> {
    runtime: &'a NodeRuntime,
    id: &'a str,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.runtime
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.id);
    }
}
