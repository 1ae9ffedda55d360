//! The DaemonSet controller: one pod per eligible node, following nodes as they come, go and
//! change, rolled to a new template with `maxUnavailable`/`maxSurge`, its templates recorded
//! as ControllerRevisions (kube-controller-manager's `daemon` package is the model).
//!
//! A node is eligible when it matches the template's `nodeSelector` and required node
//! affinity, offers the RuntimeClass's runtime (Shoal: Wasm-only nodes get no container
//! daemons and the reverse), and every `NoSchedule`/`NoExecute` taint is tolerated once the
//! daemon tolerations are added (not-ready, unreachable, pressure, unschedulable). A pod may
//! stay on a node that has since gained only `NoSchedule` taints. Pods are not bound here:
//! each gets a required node affinity for its node (`matchFields metadata.name In [node]`)
//! and the scheduler binds it, so resources and ports are checked as for every pod.
//!
//! [`plan`] is the whole decision as a plain function; [`reconcile`] carries it out. A
//! failed daemon pod is deleted and replaced with a per-node backoff (1 s doubling to
//! 15 min), so a pod its node rejects cannot hot-loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
    Toleration,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::time::Instant;
use tracing::info;

use crate::Error;
use crate::history::{self, CONTROLLER_REVISION_HASH};
use crate::pods::{claim, controller_of, controller_ref, delete_pods, is_available, is_ready};
use crate::replicaset::{BURST_REPLICAS, Expectations, finish, requeue_after_error};

/// The (deprecated, still written) label with the DaemonSet generation a pod was made from.
pub const POD_TEMPLATE_GENERATION: &str = "pod-template-generation";
const PARALLEL_WRITES: usize = 32;
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// Upstream's daemon tolerations: a daemon pod stays through node trouble and may land on a
/// cordoned or pressured node (`network-unavailable` only with host networking).
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut tolerations = spec.tolerations.clone().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let present = tolerations.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.effect.as_deref() == Some(effect)
                && t.operator.as_deref() == Some("Exists")
                && t.toleration_seconds.is_none()
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Toleration::default()
            });
        }
    };
    add(shoal_api::taints::NOT_READY, "NoExecute");
    add(shoal_api::taints::UNREACHABLE, "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add(shoal_api::taints::UNSCHEDULABLE, "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    tolerations
}

/// What a RuntimeClass asks of a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeNeed {
    /// The handler the node must offer.
    pub handler: String,
    /// `scheduling.nodeSelector`.
    pub node_selector: BTreeMap<String, String>,
}

impl RuntimeNeed {
    /// The need of `class`.
    pub fn of(class: &RuntimeClass) -> Self {
        RuntimeNeed {
            handler: class.handler.clone(),
            node_selector: class
                .scheduling
                .as_ref()
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default(),
        }
    }

    fn offered_by(&self, node: &Node) -> bool {
        let labels = node.metadata.labels.as_ref();
        let label = format!(
            "{}{}",
            shoal_api::node_selector::RUNTIME_LABEL_PREFIX,
            self.handler
        );
        let by_label = labels.and_then(|l| l.get(&label)).map(String::as_str) == Some("true");
        let by_status = node
            .status
            .as_ref()
            .and_then(|s| s.runtime_handlers.as_ref())
            .is_some_and(|h| h.iter().any(|h| h.name.as_deref() == Some(&self.handler)));
        (by_label || by_status)
            && self
                .node_selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }
}

/// Upstream's `NodeShouldRunDaemonPod`: whether a daemon pod should be created on `node`,
/// and whether one already there may stay. `spec` already holds the daemon tolerations.
pub fn eligibility(spec: &PodSpec, node: &Node, runtime: Option<&RuntimeNeed>) -> (bool, bool) {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let fits_name = spec
        .node_name
        .as_deref()
        .is_none_or(|n| n.is_empty() || n == name);
    let no_labels = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    if !fits_name
        || !shoal_api::node_selector::matches(spec, name, labels)
        || runtime.is_some_and(|r| !r.offered_by(node))
    {
        return (false, false);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let untolerated = |effect: &str| {
        node.spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| {
                !tolerations
                    .iter()
                    .any(|tol| shoal_api::taints::tolerates(tol, t))
            })
    };
    if untolerated("NoExecute") {
        return (false, false);
    }
    if untolerated("NoSchedule") {
        return (false, true);
    }
    (true, true)
}

/// The node a daemon pod is for: its `nodeName`, else the single node its required node
/// affinity names by `metadata.name` (upstream's `GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<&str> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(name);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_deref())
        .filter(|v| v.len() == 1)
        .map(|v| v[0].as_str())
}

/// What of each node decides where daemons run (name, labels, taints, runtime handlers), so
/// that a node change that moves none of it (a heartbeat, a status update) does not wake every
/// DaemonSet.
#[derive(Debug, Default)]
pub struct NodePlacement {
    seen: HashMap<String, String>,
}

impl NodePlacement {
    /// Whether `change` may change where daemons run.
    pub fn changed(&mut self, change: &crate::informer::Change<Node>) -> bool {
        match change {
            crate::informer::Change::Synced => false,
            crate::informer::Change::Deleted(node) => {
                self.seen
                    .remove(node.metadata.name.as_deref().unwrap_or_default());
                true
            }
            crate::informer::Change::Applied(node) => {
                let print = serde_json::to_string(&(
                    &node.metadata.labels,
                    node.spec.as_ref().map(|s| (&s.taints, s.unschedulable)),
                    node.status.as_ref().map(|s| &s.runtime_handlers),
                ))
                .unwrap_or_default();
                let name = node.metadata.name.clone().unwrap_or_default();
                self.seen.insert(name, print.clone()).as_ref() != Some(&print)
            }
        }
    }
}

/// What one reconcile should do for a DaemonSet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphan pods matching the selector to claim (names).
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector, to let go (names).
    pub release: Vec<String>,
    /// Nodes to create a pod on.
    pub create_on: Vec<String>,
    /// Pods to delete (names).
    pub delete: Vec<String>,
    /// Failed pods among `delete`, with their node (for events and the backoff).
    pub failed: Vec<(String, String)>,
    /// The status the DaemonSet should have.
    pub status: DaemonSetStatus,
    /// When to look again although nothing changed (a backoff ends, a pod becomes available).
    pub requeue_after: Option<Duration>,
}

/// What [`plan`] reads besides the DaemonSet.
pub struct Input<'a> {
    /// Every node.
    pub nodes: &'a [&'a Node],
    /// The pods of the DaemonSet's namespace.
    pub pods: &'a [&'a Pod],
    /// The hash of the update revision.
    pub hash: &'a str,
    /// What the template's RuntimeClass asks of a node (none without a class, or when the
    /// class does not exist: then the scheduler says so on each pod).
    pub runtime: Option<&'a RuntimeNeed>,
    /// Now.
    pub now: Timestamp,
    /// False while creations or deletions are not yet in the pod store: only the status.
    pub manage: bool,
    /// How long the failed-pod backoff of a node still runs, if it does.
    pub backoff: &'a dyn Fn(&str) -> Option<Duration>,
}

fn creation_key(pod: &Pod) -> (i64, String) {
    (
        pod.metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn is_failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

fn hash_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(CONTROLLER_REVISION_HASH)
        .map(String::as_str)
}

/// Counts `value` of `total` (a percentage rounds up, as upstream does for both fields).
fn scaled(value: Option<&IntOrString>, total: i32, default: i32) -> i32 {
    match value {
        None => default,
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map_or(default, |p| {
                i32::try_from((p.max(0) * i64::from(total) + 99) / 100).unwrap_or(i32::MAX)
            }),
    }
}

/// Computes what to do for `ds` (upstream's `manage`, then `rollingUpdate` when manage has
/// nothing to do, then `updateDaemonSetStatus`).
pub fn plan(ds: &DaemonSet, input: &Input<'_>) -> Plan {
    let mut out = Plan::default();
    let spec = ds.spec.as_ref();
    let uid = ds.metadata.uid.as_deref().unwrap_or_default();
    let selector = spec
        .and_then(|s| shoal_api::selector::LabelSelector::from_api(&s.selector).ok())
        .filter(|s| !s.is_empty());
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let no_labels = BTreeMap::new();
    // Owned pods by target node.
    let mut by_node: HashMap<&str, Vec<&Pod>> = HashMap::new();
    for pod in input.pods {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
        let matching = selector.as_ref().is_some_and(|s| s.matches(labels));
        let owned = match controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => {
                if !matching && !deleting && pod.metadata.deletion_timestamp.is_none() {
                    out.release.push(name_of(pod));
                    false
                } else {
                    true
                }
            }
            Some(_) => false,
            None => {
                let adopt = matching && !deleting && pod.metadata.deletion_timestamp.is_none();
                if adopt {
                    out.adopt.push(name_of(pod));
                }
                adopt
            }
        };
        if owned && let Some(node) = target_node(pod) {
            by_node.entry(node).or_default().push(pod);
        }
    }
    for pods in by_node.values_mut() {
        pods.sort_by_cached_key(|p| creation_key(p));
    }
    let mut template_spec = spec
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    template_spec.tolerations = Some(daemon_tolerations(&template_spec));
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let available = |p: &Pod| is_available(p, min_ready, input.now);
    let update = spec.and_then(|s| s.update_strategy.as_ref());
    let rolling = update
        .and_then(|u| u.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    let rolling_params = update.and_then(|u| u.rolling_update.as_ref());
    let max_surge_set = rolling_params
        .and_then(|r| r.max_surge.as_ref())
        .is_some_and(|s| *s != IntOrString::Int(0) && *s != IntOrString::String("0%".into()));
    let allows_surge = rolling && max_surge_set;

    let mut nodes: Vec<&Node> = input.nodes.to_vec();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let eligible: Vec<(&str, bool, bool)> = nodes
        .iter()
        .map(|n| {
            let (run, stay) = eligibility(&template_spec, n, input.runtime);
            (n.metadata.name.as_deref().unwrap_or_default(), run, stay)
        })
        .collect();
    let desired = eligible.iter().filter(|(_, run, _)| *run).count();
    let desired = i32::try_from(desired).unwrap_or(i32::MAX);

    // manage: podsShouldBeOnNode for every node.
    let mut requeue: Option<Duration> = None;
    let mut soonest = |d: Duration| {
        requeue = Some(requeue.map_or(d, |r| r.min(d)));
    };
    if input.manage && !deleting {
        for (node, run, stay) in &eligible {
            let pods = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
            if *run && pods.is_empty() {
                out.create_on.push((*node).to_owned());
            } else if *stay {
                let mut running: Vec<&Pod> = Vec::new();
                for pod in pods
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                {
                    if is_failed(pod) {
                        match (input.backoff)(node) {
                            Some(wait) => soonest(wait),
                            None => {
                                out.failed.push((name_of(pod), (*node).to_owned()));
                                out.delete.push(name_of(pod));
                            }
                        }
                    } else {
                        running.push(pod);
                    }
                }
                if !allows_surge {
                    // One pod per node: the oldest stays.
                    out.delete
                        .extend(running.iter().skip(1).map(|p| name_of(p)));
                } else {
                    // Two only while a new pod is not ready and the old one is.
                    let mut oldest_new: Option<&Pod> = None;
                    let mut oldest_old: Option<&Pod> = None;
                    for pod in running {
                        let slot = if hash_label(pod) == Some(input.hash) {
                            &mut oldest_new
                        } else {
                            &mut oldest_old
                        };
                        if slot.is_none() {
                            *slot = Some(pod);
                        } else {
                            out.delete.push(name_of(pod));
                        }
                    }
                    if let (Some(new), Some(old)) = (oldest_new, oldest_old)
                        && (!is_ready(old) || available(new))
                    {
                        out.delete.push(name_of(old));
                    }
                }
            } else {
                out.delete.extend(
                    pods.iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .map(|p| name_of(p)),
                );
            }
        }
        out.create_on.truncate(BURST_REPLICAS);
        out.delete.truncate(BURST_REPLICAS);
        let quiet = out.create_on.is_empty() && out.delete.is_empty();
        // Pods aimed at nodes that are gone and never bound would wait forever.
        let known: HashSet<&str> = eligible.iter().map(|(node, _, _)| *node).collect();
        for (node, pods) in &by_node {
            if !known.contains(node) {
                out.delete.extend(
                    pods.iter()
                        .filter(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && p.spec
                                    .as_ref()
                                    .and_then(|s| s.node_name.as_deref())
                                    .is_none_or(str::is_empty)
                        })
                        .map(|p| name_of(p)),
                );
            }
        }
        let quiet = quiet && out.delete.is_empty();
        if quiet && rolling {
            rolling_update(
                &mut out,
                &eligible,
                &by_node,
                input,
                desired,
                rolling_params,
                &available,
                allows_surge,
            );
        }
    }
    if let Some(wait) = requeue {
        out.requeue_after = Some(wait);
    }

    // Status.
    let mut status = DaemonSetStatus {
        desired_number_scheduled: desired,
        // Upstream raises it only once expectations are met: a status of a generation not yet
        // acted on must not look observed to `kubectl rollout status`.
        observed_generation: if input.manage {
            ds.metadata.generation
        } else {
            ds.status.as_ref().and_then(|s| s.observed_generation)
        },
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..DaemonSetStatus::default()
    };
    let (mut ready, mut avail, mut updated) = (0, 0, 0);
    let mut waiting_for_available = false;
    for (node, run, _) in &eligible {
        let pods = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
        let scheduled = !pods.is_empty();
        if *run {
            if scheduled {
                status.current_number_scheduled += 1;
                let first = pods[0];
                if is_ready(first) {
                    ready += 1;
                    if available(first) {
                        avail += 1;
                    } else {
                        waiting_for_available = true;
                    }
                }
                // The oldest pod decides, as upstream: a node whose old pod is still
                // there (surging, or terminating) is not updated yet.
                if hash_label(first) == Some(input.hash) {
                    updated += 1;
                }
            }
        } else if scheduled {
            status.number_misscheduled += 1;
        }
    }
    status.number_ready = ready;
    status.number_available = Some(avail);
    status.number_unavailable = Some(desired - avail);
    status.updated_number_scheduled = Some(updated);
    out.status = status;
    if waiting_for_available && out.requeue_after.is_none() {
        out.requeue_after = Some(Duration::from_secs(1));
    }
    out
}

/// Upstream's `findUpdatedPodsOnNode`: the one new and the one old pod not being deleted,
/// or `None` when there are more of either (manage cleans that up first).
fn updated_pods_on<'a>(pods: &[&'a Pod], hash: &str) -> Option<(Option<&'a Pod>, Option<&'a Pod>)> {
    let mut new = None;
    let mut old = None;
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let slot = if hash_label(pod) == Some(hash) {
            &mut new
        } else {
            &mut old
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(*pod);
    }
    Some((new, old))
}

#[allow(clippy::too_many_arguments)]
fn rolling_update(
    out: &mut Plan,
    eligible: &[(&str, bool, bool)],
    by_node: &HashMap<&str, Vec<&Pod>>,
    input: &Input<'_>,
    desired: i32,
    params: Option<&k8s_openapi::api::apps::v1::RollingUpdateDaemonSet>,
    available: &dyn Fn(&Pod) -> bool,
    allows_surge: bool,
) {
    let max_surge = if allows_surge {
        scaled(params.and_then(|p| p.max_surge.as_ref()), desired, 0)
    } else {
        0
    };
    let mut max_unavailable = scaled(params.and_then(|p| p.max_unavailable.as_ref()), desired, 1);
    if max_surge == 0 && max_unavailable == 0 {
        max_unavailable = 1;
    }
    // Nodes that should run the pod, and nodes that have daemon pods anyway.
    let nodes = eligible
        .iter()
        .filter(|(node, run, _)| *run || by_node.contains_key(node))
        .map(|(node, run, _)| (*node, *run));
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace = Vec::new();
        let mut candidates = Vec::new();
        for (node, _) in nodes {
            let pods = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
            match updated_pods_on(pods, input.hash) {
                None | Some((None, None) | (Some(_), Some(_))) => unavailable += 1,
                Some((Some(new), None)) => {
                    if !available(new) {
                        unavailable += 1;
                    }
                }
                Some((None, Some(old))) => {
                    if !available(old) {
                        // Replaced at once, and counted as unavailable.
                        replace.push(name_of(old));
                        unavailable += 1;
                    } else if unavailable < max_unavailable {
                        candidates.push(name_of(old));
                    }
                }
            }
        }
        let room = usize::try_from((max_unavailable - unavailable).max(0)).unwrap_or(0);
        out.delete.extend(replace);
        out.delete.extend(candidates.into_iter().take(room));
    } else {
        let mut surged = 0;
        let mut allowed = Vec::new();
        let mut candidates = Vec::new();
        for (node, run) in nodes {
            let pods = by_node.get(node).map(Vec::as_slice).unwrap_or_default();
            match updated_pods_on(pods, input.hash) {
                None => surged += 1,
                Some((_, None)) => {}
                // A node that may keep its pod but gets no new one is no surge target.
                Some((None, Some(_))) if !run => {}
                Some((None, Some(old))) => {
                    if !available(old) {
                        allowed.push(node.to_owned());
                    } else if surged < max_surge {
                        candidates.push(node.to_owned());
                    }
                }
                Some((Some(new), Some(old))) => {
                    if available(new) {
                        out.delete.push(name_of(old));
                    } else {
                        surged += 1;
                    }
                }
            }
        }
        let room = usize::try_from((max_surge - surged).max(0)).unwrap_or(0);
        out.create_on.extend(allowed);
        out.create_on.extend(candidates.into_iter().take(room));
    }
}

/// The pod the DaemonSet runs on `node`: its template with the daemon tolerations, the
/// revision hash and generation labels, a required affinity for exactly that node, and a
/// controller reference.
pub fn pod_for_node(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(CONTROLLER_REVISION_HASH.into(), hash.into());
    if let Some(generation) = ds.metadata.generation {
        labels.insert(POD_TEMPLATE_GENERATION.into(), generation.to_string());
    }
    let mut spec = template.spec.unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(&spec));
    let mut affinity = spec.affinity.take().unwrap_or_default();
    affinity.node_affinity = Some(NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.into()]),
                }]),
                match_expressions: None,
            }],
        }),
        ..affinity.node_affinity.unwrap_or_default()
    });
    spec.affinity = Some(affinity);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                ds.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref("apps/v1", "DaemonSet", &ds.metadata)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn status_changed(old: Option<&DaemonSetStatus>, new: &DaemonSetStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    let norm = |v: Option<i32>| v.unwrap_or(0);
    old.desired_number_scheduled != new.desired_number_scheduled
        || old.current_number_scheduled != new.current_number_scheduled
        || old.number_misscheduled != new.number_misscheduled
        || old.number_ready != new.number_ready
        || norm(old.number_available) != norm(new.number_available)
        || norm(old.number_unavailable) != norm(new.number_unavailable)
        || norm(old.updated_number_scheduled) != norm(new.updated_number_scheduled)
        || old.observed_generation != new.observed_generation
}

/// Per DaemonSet and node, when a failed pod may next be replaced.
#[derive(Debug, Default)]
pub struct Backoff {
    entries: Mutex<HashMap<String, (Instant, Duration)>>,
}

impl Backoff {
    fn key(uid: &str, node: &str) -> String {
        format!("{uid}/{node}")
    }

    /// The time left before `node`'s next replacement, if any.
    pub fn remaining(&self, uid: &str, node: &str) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (last, delay) = entries.get(&Self::key(uid, node))?;
        let until = *last + *delay;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Records a replacement: the next waits twice as long (reset after 2x the maximum of
    /// quiet).
    pub fn next(&self, uid: &str, node: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let entry = entries
            .entry(Self::key(uid, node))
            .or_insert((now, Duration::ZERO));
        let stale = now.duration_since(entry.0) > 2 * BACKOFF_MAX;
        entry.1 = if entry.1.is_zero() || stale {
            BACKOFF_INITIAL
        } else {
            (entry.1 * 2).min(BACKOFF_MAX)
        };
        entry.0 = now;
    }

    /// Drops every entry of DaemonSet `uid`.
    pub fn forget(&self, uid: &str) {
        let prefix = format!("{uid}/");
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !k.starts_with(&prefix));
    }
}

/// What the DaemonSet reconciler shares across calls.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All pods.
    pub pods: Store<Pod>,
    /// All nodes.
    pub nodes: Store<Node>,
    /// All ControllerRevisions.
    pub revisions: Store<ControllerRevision>,
    /// All RuntimeClasses.
    pub runtime_classes: Store<RuntimeClass>,
    /// Outstanding creations and deletions.
    pub expectations: Expectations,
    /// Failed-pod backoff.
    pub backoff: Backoff,
    /// Events as `daemonset-controller`.
    pub events: shoal_events::Recorder,
}

/// Brings one DaemonSet's pods, revisions and status in line with its spec and the nodes.
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = ds.metadata.namespace.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    if ds.metadata.deletion_timestamp.is_some() {
        ctx.backoff.forget(&uid);
        return Ok(Action::await_change());
    }
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let owner = history::Owner {
        api_version: "apps/v1",
        kind: "DaemonSet",
        meta: &ds.metadata,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
    };
    let selector = ds
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let Some(history) = history::sync_owner(
        &ctx.client,
        &ctx.revisions,
        &api,
        &owner,
        &selector,
        &template,
    )
    .await?
    else {
        return Ok(Action::requeue(Duration::from_millis(100)));
    };
    let owned = history.owned();
    let revision = &history.update;
    let hash = revision
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONTROLLER_REVISION_HASH).cloned())
        .unwrap_or_default();

    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let settled = ctx.expectations.satisfied(&uid, &pods);
    let nodes = ctx.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
    let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let runtime = template
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
        .and_then(|class| ctx.runtime_classes.get(&ObjectRef::new(class)))
        .map(|c| RuntimeNeed::of(&c));
    let backoff = |node: &str| ctx.backoff.remaining(&uid, node);
    let plan = plan(
        &ds,
        &Input {
            nodes: &node_refs,
            pods: &pod_refs,
            hash: &hash,
            runtime: runtime.as_ref(),
            now: Timestamp::now(),
            manage: settled,
            backoff: &backoff,
        },
    );

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    claim(
        &pod_api,
        &pods,
        &plan.adopt,
        &plan.release,
        &controller_ref("apps/v1", "DaemonSet", &ds.metadata),
    )
    .await?;
    let ds_ref = shoal_events::reference(ds.as_ref());
    for (pod, node) in &plan.failed {
        ctx.backoff.next(&uid, node);
        ctx.events.warning(
            &ds_ref,
            "FailedDaemonPod",
            format!(
                "Found failed daemon pod {namespace}/{pod} on node {node}, will try to kill it"
            ),
        );
    }
    let mut first_error = None;
    if !plan.delete.is_empty() {
        let mut deleted = Vec::new();
        for (pod_name, result) in delete_pods(&pod_api, &pods, &plan.delete).await {
            match result {
                Ok(()) => {
                    ctx.events.normal(
                        &ds_ref,
                        "SuccessfulDelete",
                        format!("Deleted pod: {pod_name}"),
                    );
                    deleted.push(pod_name);
                }
                Err(error) => {
                    ctx.events.warning(
                        &ds_ref,
                        "FailedDelete",
                        format!("Error deleting pod {pod_name}: {error}"),
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        info!(daemonset = %name, count = deleted.len(), "deleted daemon pods");
        ctx.expectations.expect(&uid, Vec::new(), deleted);
    }
    if !plan.create_on.is_empty() {
        let pods_to_create: Vec<(String, Pod)> = plan
            .create_on
            .iter()
            .map(|node| (node.clone(), pod_for_node(&ds, node, &hash)))
            .collect();
        let results: Vec<(String, Result<Pod, kube::Error>)> = stream::iter(pods_to_create)
            .map(|(node, pod)| {
                let api = pod_api.clone();
                async move {
                    let result = api.create(&PostParams::default(), &pod).await;
                    (node, result)
                }
            })
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        let mut created = Vec::new();
        for (node, result) in results {
            match result {
                Ok(pod) => {
                    let pod_name = pod.metadata.name.unwrap_or_default();
                    ctx.events.normal(
                        &ds_ref,
                        "SuccessfulCreate",
                        format!("Created pod: {pod_name}"),
                    );
                    created.push(pod_name);
                }
                Err(error) => {
                    ctx.events.warning(
                        &ds_ref,
                        "FailedCreate",
                        format!("Error creating pod on node {node}: {error}"),
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        info!(daemonset = %name, count = created.len(), "created daemon pods");
        ctx.expectations.expect(&uid, created, Vec::new());
    }

    // History: keep the update revision, those pods still run, and `revisionHistoryLimit`.
    let revision_name = revision.metadata.name.clone().unwrap_or_default();
    let live_hashes: HashSet<&str> = pods
        .iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .filter_map(|p| hash_label(p))
        .collect();
    let mut live: HashSet<&str> = owned
        .iter()
        .filter(|r| {
            r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CONTROLLER_REVISION_HASH))
                .is_some_and(|h| live_hashes.contains(h.as_str()))
        })
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    live.insert(&revision_name);
    let limit = ds.spec.as_ref().and_then(|s| s.revision_history_limit);
    history::trim(&ctx.client, &namespace, &owned, &live, limit).await?;

    let status = status_changed(ds.status.as_ref(), &plan.status).then(|| json!(plan.status));
    finish(
        &api,
        &name,
        status,
        first_error,
        settled,
        plan.requeue_after,
    )
    .await
}

/// Drops what the controller remembers of a deleted DaemonSet (its reconcile never runs again
/// to do it).
pub fn forget(ctx: &Context, ds: &DaemonSet) {
    if let Some(uid) = ds.metadata.uid.as_deref() {
        ctx.backoff.forget(uid);
        ctx.expectations.forget(uid);
    }
}

/// Requeues a failed reconcile.
pub fn error_policy(ds: Arc<DaemonSet>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_after_error("daemonset", &ds.metadata, error, &ctx.expectations)
}

#[cfg(test)]
mod tests;
