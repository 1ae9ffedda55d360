//! The scheduler's view of the cluster: nodes, the pods bound to them (what they request,
//! their labels, host ports and affinity terms), pods nominated by preemption, RuntimeClasses
//! and PodDisruptionBudgets.
//!
//! The snapshot is plain data, updated incrementally from watch events and from the
//! scheduler's own assumed bindings, so that the next pod sees the previous decision without
//! re-listing anything. It knows nothing about the API or time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Node, Pod, PodAffinityTerm, PodSpec, Taint, WeightedPodAffinityTerm,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use shoal_api::selector::LabelSelector;

use crate::quantity;

/// CPU in millicores, memory in bytes, and a pod count. Wide enough that no sum of pods'
/// requests overflows (each request is an `i64` at most).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    /// Millicores.
    pub cpu_millis: i128,
    /// Bytes.
    pub memory_bytes: i128,
    /// Number of pods.
    pub pods: i128,
}

impl Resources {
    pub(crate) fn plus(&mut self, other: &Resources) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
        self.pods += other.pods;
    }

    pub(crate) fn minus(&mut self, other: &Resources) {
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
const DEFAULT_CPU_MILLIS: i128 = 100;
/// Memory the scorer assumes for a container that requests none.
const DEFAULT_MEMORY_BYTES: i128 = 200 * 1024 * 1024;

/// What a pod asks of a node: `requests` for fitting and `scoring` (with defaults for
/// unset requests) for ranking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
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
    let cpu = i128::from(
        lookup("cpu")
            .and_then(|q| quantity::cpu_millis(&q.0))
            .unwrap_or(0)
            .max(0),
    );
    let memory = i128::from(
        lookup("memory")
            .and_then(|q| quantity::whole_units(&q.0))
            .unwrap_or(0)
            .max(0),
    );
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

/// Computes what a pod spec requests of a node, as upstream's `PodRequests`: the
/// containers and the sidecars (init containers with `restartPolicy: Always`, which run
/// beside them) together, or the peak of the init phase if higher (each ordinary init
/// container with the sidecars started before it), plus the overhead.
pub fn pod_requests(spec: &PodSpec) -> PodRequests {
    let mut requests = Resources::default();
    let mut scoring = Resources::default();
    for container in &spec.containers {
        let (r, s) = container_requests(container);
        requests.plus(&r);
        scoring.plus(&s);
    }
    let (mut sidecars, mut sidecars_scoring) = (Resources::default(), Resources::default());
    let (mut peak, mut peak_scoring) = (Resources::default(), Resources::default());
    for container in spec.init_containers.iter().flatten() {
        let (r, s) = container_requests(container);
        if container.restart_policy.as_deref() == Some("Always") {
            sidecars.plus(&r);
            sidecars_scoring.plus(&s);
            peak.at_least(&sidecars);
            peak_scoring.at_least(&sidecars_scoring);
        } else {
            let (mut with, mut with_scoring) = (sidecars, sidecars_scoring);
            with.plus(&r);
            with_scoring.plus(&s);
            peak.at_least(&with);
            peak_scoring.at_least(&with_scoring);
        }
    }
    requests.plus(&sidecars);
    scoring.plus(&sidecars_scoring);
    requests.at_least(&peak);
    scoring.at_least(&peak_scoring);
    if let Some(overhead) = &spec.overhead {
        let extra = Resources {
            cpu_millis: i128::from(
                overhead
                    .get("cpu")
                    .and_then(|q| quantity::cpu_millis(&q.0))
                    .unwrap_or(0)
                    .max(0),
            ),
            memory_bytes: i128::from(
                overhead
                    .get("memory")
                    .and_then(|q| quantity::whole_units(&q.0))
                    .unwrap_or(0)
                    .max(0),
            ),
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
    /// Taints with effect `PreferNoSchedule` (the ones that score).
    pub soft_taints: Vec<Taint>,
    /// Ready condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// `status.allocatable`; a missing `pods` entry means no pod-count limit.
    pub allocatable: Resources,
    /// `status.images`: every name of every image the node holds, with its size in bytes.
    pub images: HashMap<String, i64>,
    /// Runtime handlers the node offers (`status.runtimeHandlers`, and the
    /// `runtime.shoal.dev/HANDLER=true` labels).
    pub runtime_handlers: Vec<String>,
}

/// The label prefix by which a node says it offers a runtime handler:
/// `runtime.shoal.dev/wasmtime=true`.
pub use shoal_api::node_selector::RUNTIME_LABEL_PREFIX;

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
                cpu_millis: i128::from(
                    a.get("cpu")
                        .and_then(|q| quantity::cpu_millis(&q.0))
                        .unwrap_or(0),
                ),
                memory_bytes: i128::from(
                    a.get("memory")
                        .and_then(|q| quantity::whole_units(&q.0))
                        .unwrap_or(0),
                ),
                pods: i128::from(
                    a.get("pods")
                        .and_then(|q| quantity::whole_units(&q.0))
                        .unwrap_or(i64::MAX),
                ),
            })
            .unwrap_or(Resources {
                pods: i128::from(i64::MAX),
                ..Resources::default()
            });
        let taints = spec.and_then(|s| s.taints.as_deref()).unwrap_or_default();
        let images = status
            .and_then(|s| s.images.as_deref())
            .unwrap_or_default()
            .iter()
            .flat_map(|image| {
                let size = image.size_bytes.unwrap_or(0);
                image
                    .names
                    .iter()
                    .flatten()
                    .map(move |name| (normalized_image(name), size))
            })
            .collect();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let mut runtime_handlers: Vec<String> = status
            .and_then(|s| s.runtime_handlers.as_deref())
            .unwrap_or_default()
            .iter()
            .filter_map(|h| h.name.clone())
            .chain(labels.iter().filter_map(|(k, v)| {
                k.strip_prefix(RUNTIME_LABEL_PREFIX)
                    .filter(|_| v == "true")
                    .map(str::to_owned)
            }))
            .collect();
        runtime_handlers.sort();
        runtime_handlers.dedup();
        NodeInfo {
            labels,
            taints: taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .cloned()
                .collect(),
            soft_taints: taints
                .iter()
                .filter(|t| t.effect == "PreferNoSchedule")
                .cloned()
                .collect(),
            ready,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            allocatable,
            images,
            runtime_handlers,
        }
    }
}

/// An image reference as the node and the pod name it: a reference without a tag or digest
/// means `:latest`, as Kubernetes' ImageLocality normalizes.
pub fn normalized_image(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// A host port a pod takes on its node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// `hostIP`, `0.0.0.0` when unset (every address).
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two ports cannot both be bound on one node.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || wildcard(&self.ip) || wildcard(&other.ip))
    }
}

/// One pod-affinity term with its selector parsed; `selector` is `None` when the term's
/// selector is missing or invalid (it matches no pod, as Kubernetes treats a nil selector).
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    /// Parsed `labelSelector` (with `matchLabelKeys` folded in).
    pub selector: Option<LabelSelector>,
    /// The namespaces the term looks in; empty with `all_namespaces` false means the pod's own.
    pub namespaces: HashSet<String>,
    /// An empty `namespaceSelector` (`{}`): every namespace.
    pub all_namespaces: bool,
    /// `topologyKey`.
    pub topology_key: String,
    /// The weight of a preferred term; 0 for required ones.
    pub weight: i32,
}

impl AffinityTerm {
    fn new(
        term: &PodAffinityTerm,
        weight: i32,
        pod_namespace: &str,
        pod_labels: &BTreeMap<String, String>,
    ) -> Self {
        let selector = term.label_selector.as_ref().and_then(|s| {
            let mut selector = LabelSelector::from_api(s).ok()?;
            // matchLabelKeys: the incoming pod's own values join the selector.
            for key in term.match_label_keys.iter().flatten() {
                if let Some(value) = pod_labels.get(key) {
                    selector
                        .requirements
                        .push(shoal_api::selector::Requirement {
                            key: key.clone(),
                            operator: shoal_api::selector::Operator::In,
                            values: vec![value.clone()],
                        });
                }
            }
            Some(selector)
        });
        let mut namespaces: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        let all_namespaces = term.namespace_selector.as_ref().is_some_and(|s| {
            s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
                && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
        });
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.insert(pod_namespace.to_owned());
        }
        AffinityTerm {
            selector,
            namespaces,
            all_namespaces,
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    /// Whether `pod` is one the term selects.
    pub fn matches(&self, pod: &PodInfo) -> bool {
        (self.all_namespaces || self.namespaces.contains(&pod.namespace))
            && self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(&pod.labels))
    }
}

/// A pod's inter-pod affinity terms, parsed once.
#[derive(Clone, Debug, Default)]
pub struct PodAffinity {
    /// Required affinity terms.
    pub required: Vec<AffinityTerm>,
    /// Required anti-affinity terms.
    pub required_anti: Vec<AffinityTerm>,
    /// Preferred affinity terms, with weights.
    pub preferred: Vec<AffinityTerm>,
    /// Preferred anti-affinity terms, with weights.
    pub preferred_anti: Vec<AffinityTerm>,
}

impl PodAffinity {
    /// Whether the pod has no term at all.
    pub fn is_empty(&self) -> bool {
        self.required.is_empty()
            && self.required_anti.is_empty()
            && self.preferred.is_empty()
            && self.preferred_anti.is_empty()
    }
}

/// What scheduling needs of a pod, extracted once per pod version.
#[derive(Clone, Debug, Default)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// `status.startTime` or `metadata.creationTimestamp`, as RFC 3339 text (sorts in time
    /// order for one format).
    pub start_time: String,
    /// What the pod requests.
    pub requests: PodRequests,
    /// Host ports of its containers.
    pub host_ports: Vec<HostPort>,
    /// Inter-pod affinity terms.
    pub affinity: PodAffinity,
    /// The pod is being deleted.
    pub terminating: bool,
    /// It is being deleted because the scheduler preempted it (`DisruptionTarget`, reason
    /// `PreemptionByScheduler`).
    pub preempted: bool,
}

impl PodInfo {
    /// Extracts the scheduling view of a pod.
    pub fn from_pod(pod: &Pod) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let host_ports = spec
            .map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten().filter(|c| {
                        // Sidecars (restartable init containers) keep their ports.
                        c.restart_policy.as_deref() == Some("Always")
                    }))
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter(|p| p.host_port.is_some_and(|h| h > 0))
                    .map(|p| HostPort {
                        ip: p
                            .host_ip
                            .clone()
                            .filter(|ip| !ip.is_empty())
                            .unwrap_or_else(|| "0.0.0.0".into()),
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        port: p.host_port.unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .map(|a| {
                let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
                    terms
                        .into_iter()
                        .flatten()
                        .map(|t| AffinityTerm::new(t, 0, &namespace, &labels))
                        .collect()
                };
                let preferred =
                    |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<AffinityTerm> {
                        terms
                            .into_iter()
                            .flatten()
                            .map(|w| {
                                AffinityTerm::new(
                                    &w.pod_affinity_term,
                                    w.weight,
                                    &namespace,
                                    &labels,
                                )
                            })
                            .collect()
                    };
                let pa = a.pod_affinity.as_ref();
                let anti = a.pod_anti_affinity.as_ref();
                PodAffinity {
                    required: required(pa.and_then(|p| {
                        p.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })),
                    required_anti: required(anti.and_then(|p| {
                        p.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })),
                    preferred: preferred(pa.and_then(|p| {
                        p.preferred_during_scheduling_ignored_during_execution
                            .as_ref()
                    })),
                    preferred_anti: preferred(anti.and_then(|p| {
                        p.preferred_during_scheduling_ignored_during_execution
                            .as_ref()
                    })),
                }
            })
            .unwrap_or_default();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(pod.metadata.creation_timestamp.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        PodInfo {
            key: pod_key(pod),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace,
            labels,
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            start_time,
            requests: spec.map(pod_requests).unwrap_or_default(),
            host_ports,
            affinity,
            terminating: pod.metadata.deletion_timestamp.is_some(),
            preempted: pod.metadata.deletion_timestamp.is_some()
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|conditions| {
                        conditions.iter().any(|c| {
                            c.type_ == "DisruptionTarget"
                                && c.status == "True"
                                && c.reason.as_deref() == Some("PreemptionByScheduler")
                        })
                    }),
        }
    }
}

/// A node known to the snapshot, or a name that pods are bound to before its Node arrived.
#[derive(Clone, Debug, Default)]
pub struct NodeEntry {
    /// `None` while the Node object is unknown (pods may be bound to it already).
    pub info: Option<Arc<NodeInfo>>,
    /// Sum of the requests of non-terminated pods bound or assumed to this node.
    pub requested: Resources,
    /// The same with scoring defaults.
    pub scoring: Resources,
    /// The pods bound or assumed here, by key.
    pub pods: BTreeMap<String, Arc<PodInfo>>,
    /// How many of them have inter-pod affinity terms of any kind.
    pub pods_with_affinity: usize,
}

impl NodeEntry {
    /// Accounts a pod on this node.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.plus(&pod.requests.requests);
        self.scoring.plus(&pod.requests.scoring);
        if !pod.affinity.is_empty() {
            self.pods_with_affinity += 1;
        }
        if let Some(old) = self.pods.insert(pod.key.clone(), pod) {
            self.unaccount(&old);
        }
    }

    /// Stops accounting a pod on this node.
    pub fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let old = self.pods.remove(key)?;
        self.unaccount(&old);
        Some(old)
    }

    fn unaccount(&mut self, pod: &PodInfo) {
        self.requested.minus(&pod.requests.requests);
        self.scoring.minus(&pod.requests.scoring);
        if !pod.affinity.is_empty() {
            self.pods_with_affinity -= 1;
        }
    }

    /// Host ports taken by the pods here.
    pub fn used_ports(&self) -> impl Iterator<Item = &HostPort> {
        self.pods.values().flat_map(|p| p.host_ports.iter())
    }
}

#[derive(Clone, Debug)]
struct BoundPod {
    node: String,
    info: Arc<PodInfo>,
    assumed: bool,
}

/// The scheduling view of a RuntimeClass.
#[derive(Clone, Debug, Default)]
pub struct RuntimeClassInfo {
    /// `handler`.
    pub handler: String,
    /// `scheduling.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
}

/// The scheduling view of a PodDisruptionBudget.
#[derive(Clone, Debug)]
pub struct PdbInfo {
    /// `metadata.namespace`.
    pub namespace: String,
    /// Parsed `spec.selector` (`None` selects nothing).
    pub selector: Option<LabelSelector>,
    /// `status.disruptionsAllowed`.
    pub disruptions_allowed: i32,
    /// `status.disruptedPods`: pods whose eviction was already counted.
    pub disrupted: HashSet<String>,
}

impl PdbInfo {
    /// Extracts the scheduling view of a PodDisruptionBudget.
    pub fn from_pdb(pdb: &PodDisruptionBudget) -> Self {
        PdbInfo {
            namespace: pdb.metadata.namespace.clone().unwrap_or_default(),
            selector: pdb
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| LabelSelector::from_api(s).ok()),
            disruptions_allowed: pdb
                .status
                .as_ref()
                .map(|s| s.disruptions_allowed)
                .unwrap_or(0),
            disrupted: pdb
                .status
                .as_ref()
                .and_then(|s| s.disrupted_pods.as_ref())
                .map(|pods| pods.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    /// Whether evicting `pod` spends this budget: it covers the pod and has not counted its
    /// disruption already.
    pub fn covers(&self, pod: &PodInfo) -> bool {
        let name = pod.key.rsplit('/').next().unwrap_or_default();
        self.namespace == pod.namespace
            && !self.disrupted.contains(name)
            && self
                .selector
                .as_ref()
                .is_some_and(|s| !s.is_empty() && s.matches(&pod.labels))
    }
}

/// Nodes plus the pods bound to them, and what else decisions read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    nodes: BTreeMap<String, NodeEntry>,
    node_count: usize,
    pods: HashMap<String, BoundPod>,
    /// Pods with inter-pod affinity terms, bound or assumed (key → node and pod).
    affinity_pods: HashMap<String, (String, Arc<PodInfo>)>,
    /// Unbound pods nominated to a node by preemption: key → (node, pod).
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
    /// Nominations per node, so nodes without any are skipped at once.
    nominated_per_node: HashMap<String, usize>,
    /// How many nodes hold each image (normalized name).
    image_nodes: HashMap<String, usize>,
    runtime_classes: HashMap<String, RuntimeClassInfo>,
    pdbs: BTreeMap<String, PdbInfo>,
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

/// The node a pending pod was nominated to by preemption, if any.
pub fn nominated_node(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
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

    /// The entry for one node, with the name as the snapshot holds it.
    pub fn node_entry(&self, name: &str) -> Option<(&str, &NodeEntry)> {
        self.nodes.get_key_value(name).map(|(k, v)| (k.as_str(), v))
    }

    /// Keys of the pods accounted for.
    pub fn pod_keys(&self) -> impl Iterator<Item = &String> {
        self.pods.keys()
    }

    /// Number of pods accounted for (bound or assumed, not terminated).
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Bound or assumed pods that have inter-pod affinity terms, with their nodes.
    pub fn pods_with_affinity(&self) -> impl Iterator<Item = (&str, &Arc<PodInfo>)> {
        self.affinity_pods
            .values()
            .map(|(node, pod)| (node.as_str(), pod))
    }

    /// How many nodes hold `image` (a normalized name).
    pub fn nodes_with_image(&self, image: &str) -> usize {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    /// A RuntimeClass by name.
    pub fn runtime_class(&self, name: &str) -> Option<&RuntimeClassInfo> {
        self.runtime_classes.get(name)
    }

    /// Adds or replaces a RuntimeClass.
    pub fn upsert_runtime_class(&mut self, class: &RuntimeClass) {
        let Some(name) = class.metadata.name.clone() else {
            return;
        };
        let info = RuntimeClassInfo {
            handler: class.handler.clone(),
            node_selector: class
                .scheduling
                .as_ref()
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
        };
        self.runtime_classes.insert(name, info);
    }

    /// Forgets a RuntimeClass.
    pub fn remove_runtime_class(&mut self, name: &str) {
        self.runtime_classes.remove(name);
    }

    /// Names of all known RuntimeClasses.
    pub fn runtime_class_names(&self) -> Vec<String> {
        self.runtime_classes.keys().cloned().collect()
    }

    /// The PodDisruptionBudgets.
    pub fn pdbs(&self) -> impl Iterator<Item = &PdbInfo> {
        self.pdbs.values()
    }

    /// Adds or replaces a PodDisruptionBudget.
    pub fn upsert_pdb(&mut self, pdb: &PodDisruptionBudget) {
        let key = format!(
            "{}/{}",
            pdb.metadata.namespace.as_deref().unwrap_or_default(),
            pdb.metadata.name.as_deref().unwrap_or_default()
        );
        self.pdbs.insert(key, PdbInfo::from_pdb(pdb));
    }

    /// Forgets a PodDisruptionBudget by `namespace/name`.
    pub fn remove_pdb(&mut self, key: &str) {
        self.pdbs.remove(key);
    }

    /// Keys of all known PodDisruptionBudgets.
    pub fn pdb_keys(&self) -> Vec<String> {
        self.pdbs.keys().cloned().collect()
    }

    /// Adds or replaces a Node.
    pub fn upsert_node(&mut self, node: &Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        let info = Arc::new(NodeInfo::from_node(node));
        for image in info.images.keys() {
            *self.image_nodes.entry(image.clone()).or_default() += 1;
        }
        let entry = self.nodes.entry(name.to_owned()).or_default();
        match entry.info.replace(info) {
            Some(old) => {
                for image in old.images.keys() {
                    forget_image(&mut self.image_nodes, image);
                }
            }
            None => self.node_count += 1,
        }
    }

    /// Forgets a Node; its bound pods stay accounted until they go.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(entry) = self.nodes.get_mut(name) {
            if let Some(old) = entry.info.take() {
                self.node_count -= 1;
                for image in old.images.keys() {
                    forget_image(&mut self.image_nodes, image);
                }
            }
            if entry.pods.is_empty() {
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
        self.affinity_pods.remove(key);
        if let Some(entry) = self.nodes.get_mut(&old.node) {
            entry.remove_pod(key);
            if entry.info.is_none() && entry.pods.is_empty() {
                self.nodes.remove(&old.node);
            }
        }
        Some(old)
    }

    fn set_nomination(&mut self, key: &str, nomination: Option<(String, Arc<PodInfo>)>) {
        let old = match nomination {
            Some((node, pod)) => {
                *self.nominated_per_node.entry(node.clone()).or_default() += 1;
                self.nominated.insert(key.to_owned(), (node, pod))
            }
            None => self.nominated.remove(key),
        };
        if let Some((node, _)) = old
            && let Some(count) = self.nominated_per_node.get_mut(&node)
        {
            *count -= 1;
            if *count == 0 {
                self.nominated_per_node.remove(&node);
            }
        }
    }

    /// Keys of the pods holding a nomination.
    pub fn nominated_keys(&self) -> impl Iterator<Item = &String> {
        self.nominated.keys()
    }

    fn account(&mut self, key: String, bound: BoundPod) {
        self.set_nomination(&key, None);
        if !bound.info.affinity.is_empty() {
            self.affinity_pods
                .insert(key.clone(), (bound.node.clone(), bound.info.clone()));
        }
        let entry = self.nodes.entry(bound.node.clone()).or_default();
        entry.add_pod(bound.info.clone());
        self.pods.insert(key, bound);
    }

    /// Applies a pod seen on the watch: bound, non-terminated pods are accounted on their
    /// node (replacing an assumption); an unbound pod with `status.nominatedNodeName` holds
    /// its nomination. Returns true when this freed or moved resources on some node, which
    /// may make a pending pod fit.
    pub fn upsert_pod(&mut self, pod: &Pod) -> bool {
        let key = pod_key(pod);
        let node = bound_node(pod).filter(|_| !is_terminated(pod));
        match node {
            Some(node) => {
                let info = PodInfo::from_pod(pod);
                let freed = match self.pods.get(&key) {
                    Some(old)
                        if old.node == node
                            && old.info.requests == info.requests
                            && old.info.labels == info.labels
                            && old.info.terminating == info.terminating
                            && old.info.preempted == info.preempted
                            && old.info.start_time == info.start_time
                            && !old.assumed =>
                    {
                        return false;
                    }
                    // A move, a change of requests or labels (spread and affinity count
                    // labels), or a start of deletion may let a waiting pod in.
                    Some(old) => {
                        old.node != node
                            || old.info.requests != info.requests
                            || old.info.labels != info.labels
                            || (info.terminating && !old.info.terminating)
                    }
                    None => false,
                };
                self.unaccount(&key);
                self.account(
                    key,
                    BoundPod {
                        node: node.to_owned(),
                        info: Arc::new(info),
                        assumed: false,
                    },
                );
                freed
            }
            None => {
                let nomination = nominated_node(pod)
                    .filter(|_| !is_terminated(pod) && pod.metadata.deletion_timestamp.is_none())
                    .map(|node| (node.to_owned(), Arc::new(PodInfo::from_pod(pod))));
                self.set_nomination(&key, nomination);
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
        self.set_nomination(key, None);
        self.unaccount(key).is_some()
    }

    /// Accounts a pod on `node` before the binding is observed, so the next decision sees it.
    pub fn assume_pod(&mut self, pod: &Pod, node: &str) {
        let key = pod_key(pod);
        self.unaccount(&key);
        self.account(
            key,
            BoundPod {
                node: node.to_owned(),
                info: Arc::new(PodInfo::from_pod(pod)),
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

    /// Records that preemption nominated `pod` to `node` (before the status write is seen).
    pub fn nominate(&mut self, pod: &Pod, node: &str) {
        let info = Arc::new(PodInfo::from_pod(pod));
        self.set_nomination(&pod_key(pod), Some((node.to_owned(), info)));
    }

    /// Drops a nomination.
    pub fn clear_nomination(&mut self, key: &str) {
        self.set_nomination(key, None);
    }

    /// Pods nominated to `node`, other than `except`, whose priority is at least `priority`:
    /// the ones a decision must leave room for.
    pub fn nominated_on<'a>(
        &'a self,
        node: &'a str,
        priority: i32,
        except: &'a str,
    ) -> impl Iterator<Item = &'a Arc<PodInfo>> + 'a {
        let any = self.nominated_per_node.contains_key(node);
        self.nominated
            .iter()
            .filter(move |_| any)
            .filter_map(move |(key, (n, pod))| {
                (n == node && key != except && pod.priority >= priority).then_some(pod)
            })
    }

    /// Whether any nomination exists (so decisions can skip looking).
    pub fn has_nominations(&self) -> bool {
        !self.nominated.is_empty()
    }

    /// The pods nominated to `node` with a priority below `priority`.
    pub fn lower_nominated(&self, node: &str, priority: i32) -> Vec<String> {
        self.nominated
            .iter()
            .filter(|(_, (n, pod))| n == node && pod.priority < priority)
            .map(|(key, _)| key.clone())
            .collect()
    }
}

fn forget_image(counts: &mut HashMap<String, usize>, image: &str) {
    if let Some(count) = counts.get_mut(image) {
        *count -= 1;
        if *count == 0 {
            counts.remove(image);
        }
    }
}
