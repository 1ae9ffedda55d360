//! The scheduling decision: filter the snapshot's nodes for a pod, then pick the least
//! allocated one.
//!
//! Pure and synchronous: no IO, no clock, no randomness. Ties go to the node whose name
//! sorts first, so the same snapshot and pod always give the same answer. Filters, in
//! Kubernetes' order: node readiness, `spec.unschedulable`, taints, `nodeSelector` and
//! required node affinity, resources. Preemption, pod affinity, topology spread and host
//! ports are not implemented.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};

pub use shoal_api::taints::tolerates;

use crate::snapshot::{NodeEntry, NodeInfo, Resources, Snapshot, pod_requests};

/// No node can take the pod. The Display form is the Kubernetes message written to the
/// pod's `PodScheduled` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitError {
    /// Nodes considered.
    pub num_nodes: usize,
    /// Why nodes were rejected, with how many nodes gave each reason (a node can give
    /// several resource reasons).
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str("0/0 nodes are available: no nodes available to schedule pods.");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.num_nodes,
            parts.join(", ")
        )
    }
}

impl std::error::Error for FitError {}

const NOT_READY: &str = "node(s) were not ready";
const UNSCHEDULABLE: &str = "node(s) were unschedulable";
const SELECTOR_MISMATCH: &str = "node(s) didn't match Pod's node affinity/selector";

/// Chooses a node for `pod` among all nodes. A pod whose `spec.nodeName` is already set is
/// returned as is.
pub fn schedule(snapshot: &Snapshot, pod: &Pod) -> Result<String, FitError> {
    schedule_sampled(snapshot, pod, &Sampling::default()).map(|d| d.node)
}

/// How much of the cluster one decision examines, as Kubernetes'
/// `percentageOfNodesToScore`: start after a node name (rotating through the cluster) and
/// stop once enough feasible nodes were found. The default examines every node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sampling {
    /// Start with the first node whose name sorts after this one (wrapping around).
    pub start_after: Option<String>,
    /// Stop after this many feasible nodes.
    pub max_feasible: Option<usize>,
}

impl Sampling {
    /// Kubernetes' adaptive number of feasible nodes to find in a cluster of `nodes`:
    /// all below 100 nodes, otherwise `50 - nodes/125` percent (at least 5 %, at least 100).
    pub fn adaptive(nodes: usize, start_after: Option<String>) -> Self {
        let max_feasible = (nodes >= 100).then(|| {
            let percentage = 50usize.saturating_sub(nodes / 125).max(5);
            (nodes * percentage / 100).max(100)
        });
        Sampling {
            start_after,
            max_feasible,
        }
    }
}

/// A placement and where the scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The chosen node.
    pub node: String,
    /// The last node examined: where the next sampled decision should start after.
    pub last_examined: Option<String>,
}

/// [`schedule`] examining only part of the cluster (see [`Sampling`]). When no node fits,
/// every node has been examined, so the [`FitError`] is complete.
pub fn schedule_sampled(
    snapshot: &Snapshot,
    pod: &Pod,
    sampling: &Sampling,
) -> Result<Placement, FitError> {
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Ok(Placement {
            node: node.to_owned(),
            last_examined: sampling.start_after.clone(),
        });
    }
    let wanted = pod_requests(spec);
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let mut num_nodes = 0;
    let mut feasible = 0;
    let mut last_examined = None;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(u64, &str)> = None;
    for (name, entry) in snapshot.nodes_after(sampling.start_after.as_deref()) {
        let Some(info) = &entry.info else {
            continue;
        };
        if sampling.max_feasible.is_some_and(|max| feasible >= max) {
            break;
        }
        num_nodes += 1;
        last_examined = Some(name);
        let mut reject = |reason: &str| match reasons.get_mut(reason) {
            Some(count) => *count += 1,
            None => {
                reasons.insert(reason.to_owned(), 1);
            }
        };
        if !info.ready {
            reject(NOT_READY);
            continue;
        }
        if info.unschedulable && !tolerates_unschedulable(tolerations) {
            reject(UNSCHEDULABLE);
            continue;
        }
        if let Some(taint) = info
            .taints
            .iter()
            .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
        {
            reject(&format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or_default()
            ));
            continue;
        }
        if !matches_node_selector(spec, name, info) {
            reject(SELECTOR_MISMATCH);
            continue;
        }
        if !fits(&wanted.requests, entry, info, &mut reject) {
            continue;
        }
        feasible += 1;
        let score = least_allocated(&wanted.scoring, entry, info);
        // Equal scores go to the name that sorts first, wherever the scan started.
        if best.is_none_or(|(s, n)| score > s || (score == s && name < n)) {
            best = Some((score, name));
        }
    }
    match best {
        Some((_, name)) => Ok(Placement {
            node: name.to_owned(),
            last_examined: last_examined.map(str::to_owned),
        }),
        None => Err(FitError { num_nodes, reasons }),
    }
}

fn tolerates_unschedulable(tolerations: &[Toleration]) -> bool {
    let taint = Taint {
        key: shoal_api::taints::UNSCHEDULABLE.into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    };
    tolerations.iter().any(|t| tolerates(t, &taint))
}

fn matches_node_selector(spec: &PodSpec, node_name: &str, info: &NodeInfo) -> bool {
    if let Some(selector) = &spec.node_selector
        && !selector
            .iter()
            .all(|(k, v)| info.labels.get(k).is_some_and(|have| have == v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| matches_term(term, node_name, info)),
    }
}

fn matches_term(term: &NodeSelectorTerm, node_name: &str, info: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| matches_requirement(r, info.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node_name);
            matches_requirement(r, value)
        })
}

fn matches_requirement(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

fn fits(
    wanted: &Resources,
    entry: &NodeEntry,
    info: &NodeInfo,
    reject: &mut impl FnMut(&str),
) -> bool {
    let free = |allocatable: i64, requested: i64| allocatable.saturating_sub(requested);
    let mut ok = true;
    if wanted.pods > free(info.allocatable.pods, entry.requested.pods) {
        reject("Too many pods");
        ok = false;
    }
    if wanted.cpu_millis > 0
        && wanted.cpu_millis > free(info.allocatable.cpu_millis, entry.requested.cpu_millis)
    {
        reject("Insufficient cpu");
        ok = false;
    }
    if wanted.memory_bytes > 0
        && wanted.memory_bytes > free(info.allocatable.memory_bytes, entry.requested.memory_bytes)
    {
        reject("Insufficient memory");
        ok = false;
    }
    ok
}

/// Score in millionths: the mean of the free CPU and memory fractions after placing.
fn least_allocated(wanted: &Resources, entry: &NodeEntry, info: &NodeInfo) -> u64 {
    let fraction = |capacity: i64, used: i64| -> u64 {
        if capacity <= 0 || used >= capacity {
            return 0;
        }
        let free = i128::from(capacity - used);
        u64::try_from(free * 1_000_000 / i128::from(capacity)).unwrap_or(0)
    };
    let cpu = fraction(
        info.allocatable.cpu_millis,
        entry.scoring.cpu_millis.saturating_add(wanted.cpu_millis),
    );
    let memory = fraction(
        info.allocatable.memory_bytes,
        entry
            .scoring
            .memory_bytes
            .saturating_add(wanted.memory_bytes),
    );
    (cpu + memory) / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use k8s_openapi::api::core::v1::Node;
    use serde_json::{Value, json};

    fn node(name: &str, cpu: &str, memory: &str, extra: Value) -> Node {
        let mut value = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        merge(&mut value, extra);
        serde_json::from_value(value).expect("test node")
    }

    fn pod(name: &str, extra: Value) -> Pod {
        let mut value = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        });
        merge(&mut value, extra);
        serde_json::from_value(value).expect("test pod")
    }

    fn requesting(name: &str, cpu: &str, memory: &str) -> Pod {
        pod(
            name,
            json!({"spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}),
        )
    }

    fn bound(mut p: Pod, node: &str) -> Pod {
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = Some(node.into());
        }
        p
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn check(nodes: &[Node], bound_pods: &[Pod], pod: &Pod, expect: Expect) {
        let mut snapshot = Snapshot::new();
        for n in nodes {
            snapshot.upsert_node(n);
        }
        for p in bound_pods {
            snapshot.upsert_pod(p);
        }
        let actual = match schedule(&snapshot, pod) {
            Ok(node) => node,
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn fits_on_the_only_node() {
        check(
            &[node("a", "2", "4Gi", json!({}))],
            &[],
            &requesting("p", "500m", "1Gi"),
            expect!["a"],
        );
    }

    #[test]
    fn no_nodes() {
        check(
            &[],
            &[],
            &pod("p", json!({})),
            expect!["error: 0/0 nodes are available: no nodes available to schedule pods."],
        );
    }

    #[test]
    fn insufficient_cpu_and_memory() {
        check(
            &[
                node("a", "1", "4Gi", json!({})),
                node("b", "4", "1Gi", json!({})),
                node("c", "500m", "512Mi", json!({})),
            ],
            &[],
            &requesting("p", "2", "2Gi"),
            expect!["error: 0/3 nodes are available: 2 Insufficient cpu, 2 Insufficient memory."],
        );
    }

    #[test]
    fn bound_pods_use_capacity_and_terminated_ones_do_not() {
        let nodes = [node("a", "1", "4Gi", json!({}))];
        let running = bound(requesting("old", "800m", "1Gi"), "a");
        check(
            &nodes,
            std::slice::from_ref(&running),
            &requesting("p", "500m", "1Gi"),
            expect!["error: 0/1 nodes are available: 1 Insufficient cpu."],
        );
        let mut finished = running;
        finished.status =
            Some(serde_json::from_value(json!({"phase": "Succeeded"})).expect("status"));
        check(
            &nodes,
            &[finished],
            &requesting("p", "500m", "1Gi"),
            expect!["a"],
        );
    }

    #[test]
    fn limits_stand_in_for_missing_requests() {
        let p = pod(
            "p",
            json!({"spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"cpu": "3"}}}]}}),
        );
        check(
            &[node("a", "2", "4Gi", json!({}))],
            &[],
            &p,
            expect!["error: 0/1 nodes are available: 1 Insufficient cpu."],
        );
    }

    #[test]
    fn too_many_pods() {
        let n = node(
            "a",
            "2",
            "4Gi",
            json!({"status": {"allocatable": {"pods": "1"}}}),
        );
        check(
            &[n],
            &[bound(pod("old", json!({})), "a")],
            &pod("p", json!({})),
            expect!["error: 0/1 nodes are available: 1 Too many pods."],
        );
    }

    #[test]
    fn node_selector() {
        let nodes = [
            node("a", "2", "4Gi", json!({})),
            node(
                "b",
                "2",
                "4Gi",
                json!({"metadata": {"labels": {"disk": "ssd"}}}),
            ),
            node("c", "2", "4Gi", json!({})),
        ];
        check(
            &nodes,
            &[],
            &pod("p", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
            expect!["b"],
        );
        check(
            &nodes,
            &[],
            &pod("p", json!({"spec": {"nodeSelector": {"disk": "hdd"}}})),
            expect![
                "error: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
            ],
        );
    }

    #[test]
    fn required_node_affinity() {
        let nodes = [
            node(
                "a",
                "2",
                "4Gi",
                json!({"metadata": {"labels": {"zone": "1"}}}),
            ),
            node(
                "b",
                "2",
                "4Gi",
                json!({"metadata": {"labels": {"zone": "2"}}}),
            ),
        ];
        let affinity = |op: &str, values: Value| {
            pod(
                "p",
                json!({"spec": {"affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": op, "values": values}]}
                ]}}}}}),
            )
        };
        check(&nodes, &[], &affinity("In", json!(["2"])), expect!["b"]);
        check(&nodes, &[], &affinity("NotIn", json!(["1"])), expect!["b"]);
        check(&nodes, &[], &affinity("Gt", json!(["1"])), expect!["b"]);
        check(
            &nodes,
            &[],
            &affinity("In", json!(["3"])),
            expect![
                "error: 0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
            ],
        );
    }

    #[test]
    fn taints_and_tolerations() {
        let nodes = [
            node(
                "a",
                "2",
                "4Gi",
                json!({"spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]}}),
            ),
            node(
                "b",
                "2",
                "4Gi",
                json!({"spec": {"taints": [{"key": "edge", "effect": "NoExecute"}]}}),
            ),
            node(
                "c",
                "2",
                "4Gi",
                json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}),
            ),
        ];
        check(&nodes, &[], &pod("p", json!({})), expect!["c"]);
        let only_c_fails = [nodes[0].clone(), nodes[1].clone()];
        check(
            &only_c_fails,
            &[],
            &pod("p", json!({})),
            expect![
                "error: 0/2 nodes are available: 1 node(s) had untolerated taint {edge: }, 1 node(s) had untolerated taint {gpu: yes}."
            ],
        );
        let tolerations = |t: Value| pod("p", json!({"spec": {"tolerations": t}}));
        check(
            &only_c_fails,
            &[],
            &tolerations(
                json!([{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}]),
            ),
            expect!["a"],
        );
        check(
            &only_c_fails,
            &[],
            &tolerations(json!([{"key": "gpu", "value": "no"}])),
            expect![
                "error: 0/2 nodes are available: 1 node(s) had untolerated taint {edge: }, 1 node(s) had untolerated taint {gpu: yes}."
            ],
        );
        check(
            &only_c_fails,
            &[],
            &tolerations(json!([{"key": "edge", "operator": "Exists"}])),
            expect!["b"],
        );
        check(
            &only_c_fails,
            &[],
            &tolerations(json!([{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}])),
            expect![
                "error: 0/2 nodes are available: 1 node(s) had untolerated taint {edge: }, 1 node(s) had untolerated taint {gpu: yes}."
            ],
        );
        check(
            &only_c_fails,
            &[],
            &tolerations(json!([{"operator": "Exists"}])),
            expect!["a"],
        );
    }

    #[test]
    fn not_ready_and_unschedulable_nodes() {
        let nodes = [
            node(
                "a",
                "2",
                "4Gi",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            node("b", "2", "4Gi", json!({"spec": {"unschedulable": true}})),
            node("c", "2", "4Gi", json!({"status": {"conditions": []}})),
        ];
        check(
            &nodes,
            &[],
            &pod("p", json!({})),
            expect![
                "error: 0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) were not ready."
            ],
        );
        check(
            &nodes,
            &[],
            &pod(
                "p",
                json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}}),
            ),
            expect!["b"],
        );
    }

    #[test]
    fn least_allocated_wins_and_ties_go_by_name() {
        let nodes = [
            node("a", "2", "4Gi", json!({})),
            node("b", "2", "4Gi", json!({})),
            node("c", "4", "8Gi", json!({})),
        ];
        check(&nodes, &[], &requesting("p", "1", "1Gi"), expect!["c"]);
        let busy_c = bound(requesting("x", "3", "6Gi"), "c");
        check(
            &nodes,
            std::slice::from_ref(&busy_c),
            &requesting("p", "1", "1Gi"),
            expect!["a"],
        );
        let busy_a = bound(requesting("y", "1", "1Gi"), "a");
        check(
            &nodes,
            &[busy_c, busy_a],
            &requesting("p", "1", "1Gi"),
            expect!["b"],
        );
    }

    #[test]
    fn pods_without_requests_spread() {
        let nodes = [
            node("a", "2", "4Gi", json!({})),
            node("b", "2", "4Gi", json!({})),
        ];
        let mut snapshot = Snapshot::new();
        for n in &nodes {
            snapshot.upsert_node(n);
        }
        let mut placed = Vec::new();
        for i in 0..4 {
            let p = pod(&format!("p{i}"), json!({}));
            let chosen = schedule(&snapshot, &p).expect("fits");
            snapshot.assume_pod(&p, &chosen);
            placed.push(chosen);
        }
        assert_eq!(placed, ["a", "b", "a", "b"]);
    }

    #[test]
    fn node_name_already_set() {
        check(
            &[],
            &[],
            &bound(pod("p", json!({})), "elsewhere"),
            expect!["elsewhere"],
        );
    }

    #[test]
    fn assumptions_are_replaced_by_observed_bindings_and_forgotten_on_failure() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_node(&node("a", "1", "4Gi", json!({})));
        let p = requesting("p", "600m", "1Gi");
        snapshot.assume_pod(&p, "a");
        assert!(snapshot.is_assumed("default/p"));
        // The watch still shows the pod unbound: the assumption stays.
        assert!(!snapshot.upsert_pod(&p));
        assert!(snapshot.is_assumed("default/p"));
        assert!(schedule(&snapshot, &requesting("q", "600m", "1Gi")).is_err());
        snapshot.forget_pod("default/p");
        assert_eq!(
            schedule(&snapshot, &requesting("q", "600m", "1Gi")).as_deref(),
            Ok("a")
        );
        snapshot.assume_pod(&p, "a");
        snapshot.upsert_pod(&bound(p.clone(), "a"));
        assert!(!snapshot.is_assumed("default/p"));
        snapshot.forget_pod("default/p");
        assert_eq!(
            snapshot.node("a").map(|e| e.requested.cpu_millis),
            Some(600)
        );
        assert!(snapshot.remove_pod("default/p"));
        assert_eq!(snapshot.node("a").map(|e| e.requested.cpu_millis), Some(0));
    }

    #[test]
    fn many_pods_fill_many_nodes_without_overcommit() {
        let mut snapshot = Snapshot::new();
        for i in 0..100 {
            snapshot.upsert_node(&node(&format!("n{i:03}"), "4", "8Gi", json!({})));
        }
        let started = std::time::Instant::now();
        let mut placed = 0;
        let mut failed = None;
        for i in 0..2_000 {
            let p = requesting(&format!("p{i}"), "250m", "256Mi");
            match schedule(&snapshot, &p) {
                Ok(node) => {
                    snapshot.assume_pod(&p, &node);
                    placed += 1;
                }
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                }
            }
        }
        // 100 nodes x 16 pods of 250m each: the rest is refused.
        assert_eq!(placed, 1_600);
        assert_eq!(
            failed.as_deref(),
            Some("0/100 nodes are available: 100 Insufficient cpu.")
        );
        for (_, entry) in snapshot.nodes() {
            assert_eq!(entry.requested.cpu_millis, 4_000);
        }
        println!(
            "scheduled 2000 pods over 100 nodes in {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn sampling_stops_after_enough_feasible_nodes_and_rotates() {
        assert_eq!(Sampling::adaptive(50, None).max_feasible, None);
        assert_eq!(Sampling::adaptive(1_000, None).max_feasible, Some(420));
        assert_eq!(Sampling::adaptive(5_000, None).max_feasible, Some(500));
        let mut snapshot = Snapshot::new();
        for name in ["a", "b", "c", "d"] {
            snapshot.upsert_node(&node(name, "2", "4Gi", json!({})));
        }
        let p = pod("p", json!({}));
        let sampling = Sampling {
            start_after: Some("b".into()),
            max_feasible: Some(2),
        };
        let placed = schedule_sampled(&snapshot, &p, &sampling).expect("fits");
        assert_eq!(placed.node, "c");
        assert_eq!(placed.last_examined.as_deref(), Some("d"));
        let sampling = Sampling {
            start_after: Some("d".into()),
            max_feasible: Some(2),
        };
        let placed = schedule_sampled(&snapshot, &p, &sampling).expect("fits");
        assert_eq!(
            (placed.node.as_str(), placed.last_examined.as_deref()),
            ("a", Some("b"))
        );
    }
}
