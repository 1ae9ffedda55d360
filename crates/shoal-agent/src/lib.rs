//! `shoal-agent`, the node agent (kubelet) of Shoal.
//!
//! [`run`] registers the Node and keeps its status fresh (`node.rs`), renews the node Lease
//! (`lease.rs`), runs the pods bound to the node through the CRI-shaped
//! [`shoal_runtime::Runtime`] (`pods.rs`: one sandbox per pod, containers created, started,
//! waited on through the runtime's events (`runtime.rs`) and restarted; the pure parts in
//! `spec.rs`, `status.rs` and `backoff.rs`, volumes opened in `volumes.rs`), and serves the
//! container logs the runtime writes over HTTP for the API server's `pods/log` proxy
//! (`logs.rs`).
//!
//! The agent reaches the cluster only through the Kubernetes API and runtimes only through the
//! trait. It keeps its pods running while the API server is away and resumes the pods bound to
//! it when it restarts. Not done yet: probes, init containers, ephemeral containers, projected
//! and persistent volumes, refreshing ConfigMap/Secret volumes, image garbage collection,
//! eviction.

pub mod backoff;
mod lease;
pub mod logs;
mod node;
mod pods;
mod runtime;
pub mod simulated;
pub mod spec;
pub mod status;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod volumes;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use lease::{LEASE_DURATION_SECONDS, LEASE_NAMESPACE};
pub use node::{KUBELET_VERSION, RUNTIME_VERSION};

/// Resources the node offers (reported as both capacity and allocatable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeResources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Maximum number of pods (Kubernetes' default is 110).
    pub pods: u32,
}

impl NodeResources {
    /// The host's cores and memory (from `/proc/meminfo`, 0 if unreadable), 110 pods.
    pub fn detect() -> NodeResources {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        NodeResources {
            cpu_millis: cores * 1000,
            memory_bytes: memory_kib * 1024,
            pods: 110,
        }
    }
}

/// Configuration of the node agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Node's name (also its `kubernetes.io/hostname` label and lease name).
    pub node_name: String,
    /// Where container logs (`pods/<ns>_<pod>_<uid>/...`) and emptyDir volumes
    /// (`pods/<uid>/volumes/<name>`) live.
    pub data_dir: PathBuf,
    /// Address of the logs endpoint (`127.0.0.1:10250`, or port 0 for any); its IP becomes the
    /// node's InternalIP unless `node_ip` is given (127.0.0.1 when unspecified).
    pub listen: SocketAddr,
    /// The node's InternalIP, where the apiserver reaches the logs endpoint.
    pub node_ip: Option<IpAddr>,
    pub capacity: NodeResources,
    /// Extra labels of the Node, on top of the well-known ones.
    pub labels: BTreeMap<String, String>,
    /// Serve the logs endpoint over HTTPS with this configuration, which must require client
    /// certificates of the cluster CA; only the apiserver's ([`logs::AUTHORIZED_USERS`]) and
    /// administrators' (`system:masters`) are then served. `None`: plain HTTP, for clusters
    /// without TLS (loopback only).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `leaseDurationSeconds` of the node's heartbeat Lease, renewed every quarter of it
    /// ([`LEASE_DURATION_SECONDS`] by default). Keep it at most the control plane's node
    /// monitor grace period.
    pub lease_duration_seconds: i32,
}

/// Errors that stop the agent. Everything that touches the API server is retried instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create data directory {0}")]
    DataDir(String, #[source] std::io::Error),
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("logs server failed")]
    Serve(#[source] std::io::Error),
    #[error("no container runtime given")]
    NoRuntime,
}

/// Runs the node agent until `shutdown` is cancelled. On shutdown the agent's containers are
/// dropped (killed) without touching their recorded status: the next agent resumes the pods.
pub async fn run(
    config: Config,
    client: kube::Client,
    runtimes: Vec<Arc<dyn shoal_runtime::Runtime>>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    run_with(
        config,
        client,
        runtimes,
        pods::Timing::default(),
        shutdown,
        None,
    )
    .await
}

/// [`run`] with tunable delays; `bound` receives the logs server's address once listening.
pub(crate) async fn run_with(
    config: Config,
    client: kube::Client,
    runtimes: Vec<Arc<dyn shoal_runtime::Runtime>>,
    timing: pods::Timing,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), Error> {
    if runtimes.is_empty() {
        return Err(Error::NoRuntime);
    }
    let pods_dir = config.data_dir.join("pods");
    std::fs::create_dir_all(&pods_dir)
        .map_err(|e| Error::DataDir(pods_dir.display().to_string(), e))?;
    // Canonical, so that hostPath volumes can be checked against it.
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| Error::DataDir(config.data_dir.display().to_string(), e))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::Bind(config.listen, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Bind(config.listen, e))?;
    if let Some(bound) = bound {
        let _ = bound.send(local);
    }
    let host_ip = match (config.node_ip, local.ip()) {
        (Some(ip), _) => ip,
        (None, ip) if ip.is_unspecified() || ip.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (None, ip) => ip,
    }
    .to_string();
    info!(node = %config.node_name, addr = %local, "node agent listening");

    let logs = logs::LogStore::new(pods_dir.clone());
    let tasks_shutdown = shutdown.child_token();
    let mut tasks: JoinSet<()> = JoinSet::new();

    let server_shutdown = tasks_shutdown.clone();
    let app = logs::router(Arc::clone(&logs));
    let tls = config.tls.clone();
    let mut server = tokio::spawn(async move {
        match tls {
            Some(tls) => {
                let app = app.layer(axum::middleware::from_fn(logs::authorize));
                shoal_tls::serve(listener, tls, app, server_shutdown).await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(server_shutdown.cancelled_owned())
                    .await
            }
        }
    });

    let (uid_tx, uid_rx) = tokio::sync::watch::channel(None);
    let facts = node::NodeFacts {
        name: config.node_name.clone(),
        labels: config.labels.clone(),
        capacity: config.capacity,
        host_ip: host_ip.clone(),
        port: local.port(),
        handlers: runtimes.iter().map(|r| r.handler().to_owned()).collect(),
        system: node::SystemInfo::detect(),
    };
    tasks.spawn(node::run(
        client.clone(),
        facts,
        uid_tx,
        timing.api,
        tasks_shutdown.clone(),
    ));
    tasks.spawn(lease::run(
        client.clone(),
        config.node_name.clone(),
        uid_rx,
        timing.api,
        config.lease_duration_seconds,
        tasks_shutdown.clone(),
    ));
    let events = shoal_events::Recorder::start(
        client.clone(),
        shoal_events::Source {
            component: "kubelet".to_owned(),
            host: Some(config.node_name.clone()),
        },
        shoal_events::Options::default(),
        tasks_shutdown.clone(),
    );
    let ctx = Arc::new(pods::PodsContext {
        events,
        client,
        node_name: config.node_name.clone(),
        host_ip,
        runtimes: runtimes
            .into_iter()
            .map(|r| runtime::NodeRuntime::start(r, tasks_shutdown.clone()))
            .collect(),
        logs,
        data_dir,
        pods_dir,
        timing,
    });
    tasks.spawn(pods::run(ctx, tasks_shutdown.clone()));

    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        served = &mut server => match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::Serve(error)),
            Err(error) => Err(Error::Serve(std::io::Error::other(error))),
        },
    };
    tasks_shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            warn!(%error, "agent task panicked");
        }
    }
    // Followers end when their containers do; give the server a moment, then drop it.
    if !server.is_finished() {
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(2));
        tokio::select! {
            _ = &mut server => {}
            _ = deadline => server.abort(),
        }
    }
    info!(node = %config.node_name, "node agent stopped");
    result
}

/// The back-off of a loop that keeps something up to date through the API server (the node
/// status, the node lease).
pub(crate) struct ApiRetry {
    policy: backoff::BackoffPolicy,
    /// The last delay used since the last success.
    delay: Option<std::time::Duration>,
}

impl ApiRetry {
    pub(crate) fn new(policy: backoff::BackoffPolicy) -> ApiRetry {
        ApiRetry {
            policy,
            delay: None,
        }
    }

    /// Starts the back-off over (after a success).
    pub(crate) fn reset(&mut self) {
        self.delay = None;
    }

    /// Waits before the next attempt and says whether to go on. `outcome` is `Ok(wait)` to wait
    /// that long with the back-off left as it is, or the error of a failed call: it is logged
    /// with `what` failed and the wait is the next back-off delay. Returns false when
    /// `shutdown` comes first.
    pub(crate) async fn wait(
        &mut self,
        outcome: Result<std::time::Duration, kube::Error>,
        node: &str,
        what: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let wait = match outcome {
            Ok(wait) => wait,
            Err(error) => {
                let next = self.policy.next(self.delay);
                self.delay = Some(next);
                warn!(node = %node, %error, retry_in = ?next, "{what}");
                next
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

#[cfg(test)]
mod tests;
