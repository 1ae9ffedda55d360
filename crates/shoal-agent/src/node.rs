//! The Node object of this agent: registration (create, or update labels if present) and the
//! periodic status update through `nodes/status`.
//!
//! The status is computed by a plain function ([`node_status`]); this module does not evict pods
//! nor compute pressure conditions (they are always `False`).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeRuntimeHandler,
    NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::NodeResources;
use crate::backoff::BackoffPolicy;

/// What the kubelet reports as its version.
pub const KUBELET_VERSION: &str = "v1.35.0-shoal";
/// What the node reports as its container runtime.
pub const RUNTIME_VERSION: &str = "wasmtime://48.0.8";

/// How often the node status is written.
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Facts about this node that do not change while the agent runs.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: NodeResources,
    pub host_ip: String,
    pub port: u16,
    pub handlers: Vec<String>,
    pub system: SystemInfo,
}

/// Host details for `nodeInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SystemInfo {
    pub os: String,
    pub arch: String,
    pub os_image: String,
    pub kernel_version: String,
    pub machine_id: String,
    pub boot_id: String,
}

/// The Kubernetes (GOARCH) name of the host architecture.
pub(crate) fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

impl SystemInfo {
    /// Reads the host's details (best effort: missing files give empty strings).
    pub(crate) fn detect() -> SystemInfo {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        SystemInfo {
            os: std::env::consts::OS.to_owned(),
            arch: go_arch(std::env::consts::ARCH).to_owned(),
            os_image,
            kernel_version: read("/proc/sys/kernel/osrelease"),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// The labels the node registers with: the configured ones plus hostname, os, arch,
/// `shoal.dev/wasm`, and `runtime.shoal.dev/HANDLER=true` for each runtime handler it offers
/// (what RuntimeClasses' `scheduling.nodeSelector` and the scheduler read).
pub(crate) fn node_labels(facts: &NodeFacts) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), facts.name.clone()),
        ("kubernetes.io/os".to_owned(), facts.system.os.clone()),
        ("kubernetes.io/arch".to_owned(), facts.system.arch.clone()),
        ("beta.kubernetes.io/os".to_owned(), facts.system.os.clone()),
        (
            "beta.kubernetes.io/arch".to_owned(),
            facts.system.arch.clone(),
        ),
        ("shoal.dev/wasm".to_owned(), "true".to_owned()),
    ]);
    for handler in &facts.handlers {
        labels.insert(
            format!(
                "{}{handler}",
                shoal_api::node_selector::RUNTIME_LABEL_PREFIX
            ),
            "true".to_owned(),
        );
    }
    labels.extend(facts.labels.clone());
    labels
}

/// `2`, `1500m`: a cpu quantity from millicores.
pub(crate) fn cpu_quantity(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// `16Ki`-style memory quantity when it divides evenly, bytes otherwise.
pub(crate) fn memory_quantity(bytes: u64) -> Quantity {
    if bytes.is_multiple_of(1024) {
        Quantity(format!("{}Ki", bytes / 1024))
    } else {
        Quantity(bytes.to_string())
    }
}

/// The node status to write. `since` is when the agent came up (conditions' transition time).
pub(crate) fn node_status(facts: &NodeFacts, since: Timestamp, now: Timestamp) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_owned(), cpu_quantity(facts.capacity.cpu_millis)),
        (
            "memory".to_owned(),
            memory_quantity(facts.capacity.memory_bytes),
        ),
        ("pods".to_owned(), Quantity(facts.capacity.pods.to_string())),
    ]);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| NodeCondition {
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
        message: Some(message.to_owned()),
        reason: Some(reason.to_owned()),
        status: status.to_owned(),
        type_: kind.to_owned(),
    };
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                address: facts.host_ip.clone(),
                type_: "InternalIP".to_owned(),
            },
            NodeAddress {
                address: facts.name.clone(),
                type_: "Hostname".to_owned(),
            },
        ]),
        allocatable: Some(resources.clone()),
        capacity: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "shoal agent is posting ready status",
            ),
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(facts.port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: facts.system.arch.clone(),
            boot_id: facts.system.boot_id.clone(),
            container_runtime_version: RUNTIME_VERSION.to_owned(),
            kernel_version: facts.system.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            machine_id: facts.system.machine_id.clone(),
            operating_system: facts.system.os.clone(),
            os_image: facts.system.os_image.clone(),
            swap: None,
            system_uuid: facts.system.machine_id.clone(),
        }),
        runtime_handlers: Some(
            facts
                .handlers
                .iter()
                .map(|h| NodeRuntimeHandler {
                    features: None,
                    name: Some(h.clone()),
                })
                .collect(),
        ),
        ..NodeStatus::default()
    }
}

/// Creates the Node, or merges our labels into it if it exists. Returns its uid.
async fn register(
    api: &Api<Node>,
    facts: &NodeFacts,
    status: &NodeStatus,
) -> Result<String, kube::Error> {
    let labels = node_labels(facts);
    let node = match api.get_opt(&facts.name).await? {
        Some(existing) => {
            let patch = serde_json::json!({ "metadata": { "labels": labels } });
            let missing = labels
                .iter()
                .any(|(k, v)| existing.metadata.labels.as_ref().and_then(|l| l.get(k)) != Some(v));
            if missing {
                api.patch(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?
            } else {
                existing
            }
        }
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(facts.name.clone()),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                spec: None,
                status: Some(status.clone()),
            };
            match api.create(&PostParams::default(), &node).await {
                Ok(node) => node,
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(&facts.name).await?,
                Err(error) => return Err(error),
            }
        }
    };
    Ok(node.metadata.uid.unwrap_or_default())
}

async fn write_status(api: &Api<Node>, name: &str, status: &NodeStatus) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Registers the node, publishes its uid on `uid_tx`, then writes its status every
/// [`STATUS_INTERVAL`], re-registering if the Node was deleted. Retries with back-off while
/// the API server is away.
pub(crate) async fn run(
    client: kube::Client,
    facts: NodeFacts,
    uid_tx: watch::Sender<Option<String>>,
    api_backoff: BackoffPolicy,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let since = Timestamp::now();
    let mut registered = false;
    let mut retry = crate::ApiRetry::new(api_backoff);
    loop {
        let status = node_status(&facts, since, Timestamp::now());
        let result = if registered {
            write_status(&api, &facts.name, &status).await
        } else {
            match register(&api, &facts, &status).await {
                Ok(uid) => {
                    info!(node = %facts.name, %uid, "registered node");
                    uid_tx.send_replace(Some(uid));
                    registered = true;
                    write_status(&api, &facts.name, &status).await
                }
                Err(error) => Err(error),
            }
        };
        let outcome = match result {
            Ok(()) => {
                retry.reset();
                Ok(STATUS_INTERVAL)
            }
            Err(error) => {
                if matches!(&error, kube::Error::Api(s) if s.code == 404) {
                    registered = false;
                }
                Err(error)
            }
        };
        if !retry
            .wait(outcome, &facts.name, "cannot update node", &shutdown)
            .await
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn status_and_labels() {
        let facts = NodeFacts {
            name: "n1".into(),
            labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
            capacity: NodeResources {
                cpu_millis: 2000,
                memory_bytes: 8 << 30,
                pods: 110,
            },
            host_ip: "127.0.0.1".into(),
            port: 10250,
            handlers: vec!["wasmtime".into()],
            system: SystemInfo {
                os: "linux".into(),
                arch: "amd64".into(),
                os_image: "Debian".into(),
                kernel_version: "6.1".into(),
                machine_id: "m".into(),
                boot_id: "b".into(),
            },
        };
        let t: Timestamp = "2026-11-23T19:00:00Z".parse().expect("ts");
        let status = node_status(&facts, t, t);
        let json = serde_json::to_value(&status).expect("json");
        expect![[r#"{"cpu":"2","memory":"8388608Ki","pods":"110"}"#]]
            .assert_eq(&json["capacity"].to_string());
        expect![[r#"{"kubeletEndpoint":{"Port":10250}}"#]]
            .assert_eq(&json["daemonEndpoints"].to_string());
        expect![[
            r#"[{"address":"127.0.0.1","type":"InternalIP"},{"address":"n1","type":"Hostname"}]"#
        ]]
        .assert_eq(&json["addresses"].to_string());
        expect![[r#"{"lastHeartbeatTime":"2026-11-23T19:00:00Z","lastTransitionTime":"2026-11-23T19:00:00Z","message":"shoal agent is posting ready status","reason":"KubeletReady","status":"True","type":"Ready"}"#]]
            .assert_eq(&json["conditions"][3].to_string());
        expect![[r#"[{"name":"wasmtime"}]"#]].assert_eq(&json["runtimeHandlers"].to_string());
        assert_eq!(json["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(json["nodeInfo"]["containerRuntimeVersion"], RUNTIME_VERSION);
        expect![[r#"{"beta.kubernetes.io/arch":"amd64","beta.kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","kubernetes.io/hostname":"n1","kubernetes.io/os":"linux","runtime.shoal.dev/wasmtime":"true","shoal.dev/wasm":"true","zone":"a"}"#]]
            .assert_eq(&serde_json::to_string(&node_labels(&facts)).expect("json"));
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_quantity(1500).0, "1500m");
        assert_eq!(cpu_quantity(4000).0, "4");
        assert_eq!(memory_quantity(1 << 20).0, "1024Ki");
        assert_eq!(memory_quantity(1000).0, "1000");
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }
}
