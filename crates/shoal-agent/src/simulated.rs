//! Simulated nodes, as KWOK makes them: Node objects that register with the labels and
//! status of a real agent, heartbeat their Leases, and take the pods bound to them by
//! reporting them Running (and finishing their deletion) without running anything. For
//! capacity planning and for measuring the control plane at a scale one machine cannot run.
//!
//! One process carries thousands of nodes: registration and lease renewals go out with
//! bounded concurrency, renewals spread evenly over the renew interval, and one watch of
//! all pods serves every simulated node. Stopping the process stops the heartbeats, which is
//! how a test makes nodes fail.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::NodeResources;
use crate::lease::{LEASE_NAMESPACE, desired_lease, renew_interval};
use crate::node::{NodeFacts, SystemInfo, node_labels, node_status};

/// What the simulated nodes look like.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many nodes.
    pub count: usize,
    /// Node names are this prefix and a five-digit index (`sim-00042`).
    pub prefix: String,
    /// What each node offers.
    pub resources: NodeResources,
    /// Nodes are spread over this many zones (`topology.kubernetes.io/zone=zone-N`).
    pub zones: usize,
    /// Extra labels on every node.
    pub labels: BTreeMap<String, String>,
    /// `leaseDurationSeconds` of the node Leases (renewed every quarter of it).
    pub lease_duration_seconds: i32,
    /// Report bound pods Running and finish their deletion (off: nodes only, as
    /// kube-scheduler's scheduler_perf uses nodes without kubelets).
    pub run_pods: bool,
}

/// Why the simulator stopped.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Registering a node failed.
    #[error("registering simulated nodes: {0}")]
    Api(#[from] kube::Error),
    /// The pod watch ended, which kube's watcher never does on its own.
    #[error("the pod watch ended")]
    WatchEnded,
}

/// Requests in flight at once, per kind of work.
const CONCURRENCY: usize = 64;

/// Registers the nodes, then heartbeats and (with `run_pods`) serves pods until `shutdown`.
pub async fn run(
    client: kube::Client,
    config: SimConfig,
    shutdown: CancellationToken,
) -> Result<(), SimError> {
    let names: Vec<String> = (0..config.count)
        .map(|i| format!("{}{i:05}", config.prefix))
        .collect();
    let started = std::time::Instant::now();
    let shared = Arc::new(config.clone());
    let uids: Vec<(String, String)> = futures::stream::iter(names.clone().into_iter().enumerate())
        .map(|(i, name)| {
            let (client, config) = (client.clone(), shared.clone());
            async move { register(&client, &config, i, &name).await }
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    info!(
        nodes = uids.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "simulated nodes registered"
    );
    let names: Arc<HashSet<String>> = Arc::new(names.into_iter().collect());
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        uids,
        config.lease_duration_seconds,
        shutdown.clone(),
    ));
    if config.run_pods {
        tokio::select! {
            () = shutdown.cancelled() => {}
            result = serve_pods(client, names) => result?,
        }
    } else {
        shutdown.cancelled().await;
    }
    heartbeat.abort();
    Ok(())
}

/// Creates (or takes over) one Node, writes its status and its Lease; returns (name, uid).
async fn register(
    client: &kube::Client,
    config: &SimConfig,
    index: usize,
    name: &str,
) -> Result<(String, String), SimError> {
    let mut labels = BTreeMap::from([
        (
            "topology.kubernetes.io/zone".to_owned(),
            format!("zone-{}", index % config.zones.max(1)),
        ),
        ("shoal.dev/simulated".to_owned(), "true".to_owned()),
    ]);
    labels.extend(config.labels.clone());
    let facts = NodeFacts {
        name: name.to_owned(),
        labels,
        capacity: config.resources,
        host_ip: node_ip(index),
        port: 10250,
        handlers: vec!["wasmtime".into()],
        system: SystemInfo {
            os: "linux".into(),
            arch: "amd64".into(),
            os_image: "Shoal simulated node".into(),
            ..SystemInfo::default()
        },
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(node_labels(&facts)),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    let uid = match nodes.create(&PostParams::default(), &node).await {
        Ok(created) => created.metadata.uid,
        Err(kube::Error::Api(status)) if status.code == 409 => nodes.get(name).await?.metadata.uid,
        Err(error) => return Err(error.into()),
    }
    .unwrap_or_default();
    let now = Timestamp::now();
    let status = json!({"status": node_status(&facts, now, now)});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    renew(client, name, &uid, config.lease_duration_seconds).await?;
    Ok((name.to_owned(), uid))
}

async fn renew(
    client: &kube::Client,
    node: &str,
    uid: &str,
    duration_seconds: i32,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = Timestamp::now();
    // A merge patch of the renew time needs no read first: the simulator owns these Leases.
    let patch = json!({"spec": {"renewTime": MicroTime(now), "holderIdentity": node}});
    match leases
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let lease = desired_lease(node, uid, None, duration_seconds, now);
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(drop)
        }
        Err(error) => Err(error),
    }
}

/// Renews every lease once per renew interval, spread evenly over it in 100 ms slices.
async fn heartbeat(
    client: kube::Client,
    nodes: Vec<(String, String)>,
    duration_seconds: i32,
    shutdown: CancellationToken,
) {
    const SLICE: Duration = Duration::from_millis(100);
    let interval = renew_interval(duration_seconds);
    let slices = (interval.as_millis() / SLICE.as_millis()).max(1) as usize;
    let per_slice = nodes.len().div_ceil(slices).max(1);
    let mut ticker = tokio::time::interval(SLICE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let batch: Vec<(String, String)> = nodes
            .iter()
            .cycle()
            .skip(next)
            .take(per_slice.min(nodes.len()))
            .cloned()
            .collect();
        next = (next + batch.len()) % nodes.len().max(1);
        futures::stream::iter(batch)
            .for_each_concurrent(CONCURRENCY, |(name, uid)| {
                let client = client.clone();
                async move {
                    if let Err(error) = renew(&client, &name, &uid, duration_seconds).await {
                        warn!(node = %name, %error, "lease renewal failed");
                    }
                }
            })
            .await;
    }
}

/// Watches all pods; those bound to a simulated node are reported Running, and deleted ones
/// are removed (the kubelet's final delete).
async fn serve_pods(client: kube::Client, names: Arc<HashSet<String>>) -> Result<(), SimError> {
    let pods =
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff();
    let mut pods = std::pin::pin!(pods);
    let permits = Arc::new(Semaphore::new(CONCURRENCY * 4));
    let mut started = 0u64;
    while let Some(event) = pods.next().await {
        let pod = match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
            Ok(_) => continue,
            Err(error) => {
                warn!(%error, "pod watch failed");
                continue;
            }
        };
        let ours = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| names.contains(n));
        if !ours {
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let work = if pod.metadata.deletion_timestamp.is_some() {
            Work::Remove
        } else if matches!(phase, Some("Running" | "Succeeded" | "Failed")) {
            continue;
        } else {
            started += 1;
            Work::Start(running_status(&pod, started))
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Err(SimError::WatchEnded);
        };
        let client = client.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = work.apply(client, &pod).await {
                warn!(pod = ?pod.metadata.name, %error, "simulated pod update failed");
            }
        });
    }
    Err(SimError::WatchEnded)
}

enum Work {
    Start(Value),
    Remove,
}

impl Work {
    async fn apply(self, client: kube::Client, pod: &Pod) -> Result<(), kube::Error> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let result = match self {
            Work::Start(status) => api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map(drop),
            Work::Remove => {
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                api.delete(name, &params).await.map(drop)
            }
        };
        match result {
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            other => other,
        }
    }
}

/// The status a kubelet writes once every container of `pod` started.
fn running_status(pod: &Pod, serial: u64) -> Value {
    let now = Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or(Timestamp::now())
        .to_string();
    let ip = format!(
        "10.{}.{}.{}",
        128 + (serial >> 16) % 64,
        (serial >> 8) & 0xff,
        serial & 0xff
    );
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": "",
                "containerID": format!("sim://{}/{}", pod.metadata.uid.as_deref().unwrap_or_default(), c.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
    json!({"status": {
        "phase": "Running",
        "hostIP": pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).map(node_ip_of).unwrap_or_default(),
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": now,
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "containerStatuses": containers,
    }})
}

/// The made-up address of the simulated node numbered `index` (10.64.0.1 onwards).
fn node_ip(index: usize) -> String {
    let n = index + 1;
    format!(
        "10.{}.{}.{}",
        64 + (n >> 16) % 64,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// [`node_ip`] of a node by name (its trailing digits).
fn node_ip_of(node: &str) -> String {
    let index = node
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    node_ip(index)
}
