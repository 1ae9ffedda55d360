//! The scheduler's view of the cluster: nodes and the resources requested by pods bound to
//! them.
//!
//! The snapshot is plain data, updated incrementally from watch events and from the
//! scheduler's own assumed bindings, so that the next pod sees the previous decision without
//! re-listing anything. It knows nothing about the API or time.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, Taint};

use crate::quantity;

/// CPU in millicores, memory in bytes, and a pod count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu_millis: i64,
    /// Bytes.
    pub memory_bytes: i64,
    /// Number of pods.
    pub pods: i64,
}

impl Resources {
    fn plus(&mut self, other: &Resources) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
        self.pods += other.pods;
    }

    fn minus(&mut self, other: &Resources) {
        self.cpu_millis -= other.cpu_millis;
        self.memory_bytes -= other.memory_bytes;
        self.pods -= other.pods;
    }

    fn at_least(&mut self, other: &Resources) {
        self.cpu_millis = self.cpu_millis.max(other.cpu_millis);
        self.memory_bytes = self.memory_bytes.max(other.memory_bytes);
        self.pods = self.pods.max(other.pods);
    }
}

/// CPU the scorer assumes for a container that requests none (as Kubernetes does), so that
/// pods without requests still spread across nodes.
const DEFAULT_CPU_MILLIS: i64 = 100;
/// Memory the scorer assumes for a container that requests none.
const DEFAULT_MEMORY_BYTES: i64 = 200 * 1024 * 1024;

/// What a pod asks of a node: `requests` for fitting and `scoring` (with defaults for
/// unset requests) for ranking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// Sum of the containers' requests (a request defaults to the limit when only the
    /// limit is set), at least the largest init container's, plus the pod overhead;
    /// `pods` is 1.
    pub requests: Resources,
    /// The same with per-container defaults for unset CPU and memory requests.
    pub scoring: Resources,
}

fn container_requests(container: &Container) -> (Resources, Resources) {
    let resources = container.resources.as_ref();
    let lookup = |name: &str| {
        resources
            .and_then(|r| r.requests.as_ref().and_then(|m| m.get(name)))
            .or_else(|| resources.and_then(|r| r.limits.as_ref().and_then(|m| m.get(name))))
    };
    let cpu = lookup("cpu")
        .and_then(|q| quantity::cpu_millis(&q.0))
        .unwrap_or(0)
        .max(0);
    let memory = lookup("memory")
        .and_then(|q| quantity::whole_units(&q.0))
        .unwrap_or(0)
        .max(0);
    let requests = Resources {
        cpu_millis: cpu,
        memory_bytes: memory,
        pods: 0,
    };
    let scoring = Resources {
        cpu_millis: if cpu == 0 { DEFAULT_CPU_MILLIS } else { cpu },
        memory_bytes: if memory == 0 {
            DEFAULT_MEMORY_BYTES
        } else {
            memory
        },
        pods: 0,
    };
    (requests, scoring)
}

/// Computes what a pod spec requests of a node.
pub fn pod_requests(spec: &PodSpec) -> PodRequests {
    let mut requests = Resources::default();
    let mut scoring = Resources::default();
    for container in &spec.containers {
        let (r, s) = container_requests(container);
        requests.plus(&r);
        scoring.plus(&s);
    }
    for container in spec.init_containers.iter().flatten() {
        let (r, s) = container_requests(container);
        requests.at_least(&r);
        scoring.at_least(&s);
    }
    if let Some(overhead) = &spec.overhead {
        let extra = Resources {
            cpu_millis: overhead
                .get("cpu")
                .and_then(|q| quantity::cpu_millis(&q.0))
                .unwrap_or(0),
            memory_bytes: overhead
                .get("memory")
                .and_then(|q| quantity::whole_units(&q.0))
                .unwrap_or(0),
            pods: 0,
        };
        requests.plus(&extra);
        scoring.plus(&extra);
    }
    requests.pods = 1;
    scoring.pods = 1;
    PodRequests { requests, scoring }
}

/// The parts of a Node that scheduling reads, extracted once per node update.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Taints with effect `NoSchedule` or `NoExecute` (the ones that filter).
    pub taints: Vec<Taint>,
    /// Ready condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// `status.allocatable`; a missing `pods` entry means no pod-count limit.
    pub allocatable: Resources,
}

impl NodeInfo {
    /// Extracts the scheduling view of a Node.
    pub fn from_node(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
        let allocatable = status
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .map(|a| Resources {
                cpu_millis: a
                    .get("cpu")
                    .and_then(|q| quantity::cpu_millis(&q.0))
                    .unwrap_or(0),
                memory_bytes: a
                    .get("memory")
                    .and_then(|q| quantity::whole_units(&q.0))
                    .unwrap_or(0),
                pods: a
                    .get("pods")
                    .and_then(|q| quantity::whole_units(&q.0))
                    .unwrap_or(i64::MAX),
            })
            .unwrap_or(Resources {
                pods: i64::MAX,
                ..Resources::default()
            });
        NodeInfo {
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .map(|taints| {
                    taints
                        .iter()
                        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            ready,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable,
        }
    }
}

/// A node known to the snapshot, or a name that pods are bound to before its Node arrived.
#[derive(Clone, Debug, Default)]
pub struct NodeEntry {
    /// `None` while the Node object is unknown (pods may be bound to it already).
    pub info: Option<NodeInfo>,
    /// Sum of the requests of non-terminated pods bound or assumed to this node.
    pub requested: Resources,
    /// The same with scoring defaults.
    pub scoring: Resources,
}

#[derive(Clone, Debug)]
struct BoundPod {
    node: String,
    requests: PodRequests,
    assumed: bool,
}

/// Nodes plus the resources bound pods use on them.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    nodes: BTreeMap<String, NodeEntry>,
    node_count: usize,
    pods: HashMap<String, BoundPod>,
}

/// `namespace/name`, the key the snapshot and the queue use for pods.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Whether a pod's phase means it no longer uses its node's resources.
pub fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The node a pod is bound to, if any.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Nodes in name order, including names only known from bound pods.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeEntry)> {
        self.nodes
            .iter()
            .map(|(name, entry)| (name.as_str(), entry))
    }

    /// Nodes in name order starting after `start` (wrapping around), or all from the first.
    pub fn nodes_after<'a>(
        &'a self,
        start: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a NodeEntry)> + 'a {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let (first, second) = match start {
            Some(s) => (
                self.nodes.range::<str, _>((Excluded(s), Unbounded)),
                self.nodes.range::<str, _>((Unbounded, Included(s))),
            ),
            None => (
                self.nodes.range::<str, _>((Unbounded, Unbounded)),
                self.nodes.range::<str, _>((Excluded(""), Included(""))),
            ),
        };
        first
            .chain(second)
            .map(|(name, entry)| (name.as_str(), entry))
    }

    /// Number of known Nodes.
    pub fn node_count(&self) -> usize {
        self.node_count
    }

    /// The entry for one node.
    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name)
    }

    /// Keys of the pods accounted for.
    pub fn pod_keys(&self) -> impl Iterator<Item = &String> {
        self.pods.keys()
    }

    /// Number of pods accounted for (bound or assumed, not terminated).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Adds or replaces a Node.
    pub fn upsert_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        let info = NodeInfo::from_node(node);
        match self.nodes.get_mut(name) {
            Some(entry) => {
                if entry.info.replace(info).is_none() {
                    self.node_count += 1;
                }
            }
            None => {
                self.node_count += 1;
                self.nodes.insert(
                    name.to_owned(),
                    NodeEntry {
                        info: Some(info),
                        ..NodeEntry::default()
                    },
                );
            }
        }
    }

    /// Forgets a Node; its bound pods stay accounted until they go.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(entry) = self.nodes.get_mut(name) {
            if entry.info.take().is_some() {
                self.node_count -= 1;
            }
            if entry.requested == Resources::default() {
                self.nodes.remove(name);
            }
        }
    }

    /// Names of all known Nodes (entries with node info).
    pub fn node_names(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, e)| e.info.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn unaccount(&mut self, key: &str) -> Option<BoundPod> {
        let old = self.pods.remove(key)?;
        if let Some(entry) = self.nodes.get_mut(&old.node) {
            entry.requested.minus(&old.requests.requests);
            entry.scoring.minus(&old.requests.scoring);
            if entry.info.is_none() && entry.requested == Resources::default() {
                self.nodes.remove(&old.node);
            }
        }
        Some(old)
    }

    fn account(&mut self, key: String, bound: BoundPod) {
        let entry = self.nodes.entry(bound.node.clone()).or_default();
        entry.requested.plus(&bound.requests.requests);
        entry.scoring.plus(&bound.requests.scoring);
        self.pods.insert(key, bound);
    }

    /// Applies a pod seen on the watch: bound, non-terminated pods are accounted on their
    /// node (replacing an assumption). Returns true when this freed or moved resources on
    /// some node, which may make a pending pod fit.
    pub fn upsert_pod(&mut self, pod: &Pod) -> bool {
        let key = pod_key(pod);
        let node = bound_node(pod).filter(|_| !is_terminated(pod));
        match node {
            Some(node) => {
                let requests = pod.spec.as_ref().map(pod_requests).unwrap_or_default();
                let freed = match self.pods.get(&key) {
                    Some(old) if old.node == node && old.requests == requests && !old.assumed => {
                        return false;
                    }
                    Some(old) => old.node != node || old.requests != requests,
                    None => false,
                };
                self.unaccount(&key);
                self.account(
                    key,
                    BoundPod {
                        node: node.to_owned(),
                        requests,
                        assumed: false,
                    },
                );
                freed
            }
            None => {
                // An unbound pod never releases an assumption here: the watch may show it
                // before the binding lands. `forget_pod` does that.
                match self.pods.get(&key) {
                    Some(old) if old.assumed && bound_node(pod).is_none() => false,
                    Some(_) => self.unaccount(&key).is_some(),
                    None => false,
                }
            }
        }
    }

    /// Forgets a deleted pod. Returns true when it held resources.
    pub fn remove_pod(&mut self, key: &str) -> bool {
        self.unaccount(key).is_some()
    }

    /// Accounts a pod on `node` before the binding is observed, so the next decision sees it.
    pub fn assume_pod(&mut self, pod: &Pod, node: &str) {
        let key = pod_key(pod);
        self.unaccount(&key);
        let requests = pod.spec.as_ref().map(pod_requests).unwrap_or_default();
        self.account(
            key,
            BoundPod {
                node: node.to_owned(),
                requests,
                assumed: true,
            },
        );
    }

    /// Drops an assumption (the binding failed). A binding already observed stays.
    pub fn forget_pod(&mut self, key: &str) {
        if self.pods.get(key).is_some_and(|p| p.assumed) {
            self.unaccount(key);
        }
    }

    /// Whether the pod is accounted as an assumption not yet observed.
    pub fn is_assumed(&self, key: &str) -> bool {
        self.pods.get(key).is_some_and(|p| p.assumed)
    }
}
