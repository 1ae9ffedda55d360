//! The scheduling decision with the default profile: [`schedule`] and [`schedule_sampled`]
//! run [`Framework::default`] (see `framework.rs` for the cycle and `plugins/` for the
//! policy). The tests here are tables of nodes and pods through the whole default profile.

pub use shoal_api::taints::tolerates;

use crate::framework::Framework;
pub use crate::framework::{FitError, Placement, Sampling};
use crate::snapshot::Snapshot;
use k8s_openapi::api::core::v1::Pod;

/// Chooses a node for `pod` among all nodes with the default profile. A pod whose
/// `spec.nodeName` is already set is returned as is.
pub fn schedule(snapshot: &Snapshot, pod: &Pod) -> Result<String, FitError> {
    schedule_sampled(snapshot, pod, &Sampling::default()).map(|d| d.node)
}

/// [`schedule`] examining only part of the cluster (see [`Sampling`]). When no node fits,
/// every node has been examined, so the [`FitError`] is complete.
pub fn schedule_sampled(
    snapshot: &Snapshot,
    pod: &Pod,
    sampling: &Sampling,
) -> Result<Placement, FitError> {
    DEFAULT.with(|framework| framework.schedule(snapshot, pod, sampling))
}

thread_local! {
    static DEFAULT: Framework = Framework::default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Framework;
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

    fn snapshot_of(nodes: &[Node], bound_pods: &[Pod]) -> Snapshot {
        let mut snapshot = Snapshot::new();
        for n in nodes {
            snapshot.upsert_node(n);
        }
        for p in bound_pods {
            snapshot.upsert_pod(p);
        }
        snapshot
    }

    fn labelled(name: &str, labels: Value, extra: Value) -> Pod {
        let mut p = pod(name, extra);
        p.metadata.labels = serde_json::from_value(labels).ok();
        p
    }

    fn zoned(name: &str, zone: &str) -> Node {
        node(
            name,
            "4",
            "8Gi",
            json!({"metadata": {"labels": {"zone": zone}}}),
        )
    }

    #[test]
    fn host_ports_conflict_on_protocol_port_and_address() {
        let with_port = |name: &str, port: Value| {
            pod(
                name,
                json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": [port]}]}}),
            )
        };
        let nodes = [
            node("a", "2", "4Gi", json!({})),
            node("b", "2", "4Gi", json!({})),
        ];
        let taken = [bound(
            with_port("old", json!({"containerPort": 80, "hostPort": 8080})),
            "a",
        )];
        check(
            &nodes,
            &taken,
            &with_port("p", json!({"containerPort": 80, "hostPort": 8080})),
            expect!["b"],
        );
        // Another protocol, or no host port, does not conflict (and a goes first by name
        // only when scores tie: here b is emptier).
        check(
            &nodes[..1],
            &taken,
            &with_port(
                "p",
                json!({"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}),
            ),
            expect!["a"],
        );
        check(
            &nodes[..1],
            &taken,
            &with_port(
                "p",
                json!({"containerPort": 80, "hostPort": 8080, "hostIP": "10.0.0.1"}),
            ),
            expect![
                "error: 0/1 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
            ],
        );
    }

    #[test]
    fn topology_spread_keeps_skew_and_names_missing_labels() {
        let spread = |name: &str, when: &str| {
            labelled(
                name,
                json!({"app": "web"}),
                json!({"spec": {"topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": when,
                    "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            )
        };
        let nodes = [zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")];
        let existing = [
            bound(labelled("w1", json!({"app": "web"}), json!({})), "a1"),
            bound(labelled("w2", json!({"app": "web"}), json!({})), "b1"),
            bound(labelled("w3", json!({"app": "web"}), json!({})), "a2"),
            // Another app does not count.
            bound(labelled("x", json!({"app": "db"}), json!({})), "b1"),
        ];
        // Zone a holds 2, zone b 1: a third in a would make the skew 2.
        check(
            &nodes,
            &existing,
            &spread("p", "DoNotSchedule"),
            expect!["b1"],
        );
        let full_b = [
            existing[0].clone(),
            existing[2].clone(),
            bound(labelled("w4", json!({"app": "web"}), json!({})), "b1"),
            bound(labelled("w5", json!({"app": "web"}), json!({})), "b1"),
        ];
        check(
            &[zoned("a1", "a"), zoned("b1", "b")],
            &full_b,
            &spread("p", "DoNotSchedule"),
            expect!["a1"],
        );
        let unlabelled = node("n", "4", "8Gi", json!({}));
        check(
            std::slice::from_ref(&unlabelled),
            &[],
            &spread("p", "DoNotSchedule"),
            expect![
                "error: 0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label)."
            ],
        );
        // ScheduleAnyway only ranks: the emptier zone wins, the full one still fits.
        check(
            &nodes,
            &existing,
            &spread("p", "ScheduleAnyway"),
            expect!["b1"],
        );
        check(
            &[unlabelled],
            &[],
            &spread("p", "ScheduleAnyway"),
            expect!["n"],
        );
    }

    #[test]
    fn topology_spread_rejects_when_every_domain_would_skew() {
        let constrained = labelled(
            "p",
            json!({"app": "web"}),
            json!({"spec": {"topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
        );
        // Only zone a is feasible for the pod (b lacks room), and a is already 2 ahead of b.
        let nodes = [
            zoned("a1", "a"),
            node(
                "b1",
                "100m",
                "8Gi",
                json!({"metadata": {"labels": {"zone": "b"}}}),
            ),
        ];
        let existing = [
            bound(labelled("w1", json!({"app": "web"}), json!({})), "a1"),
            bound(labelled("w2", json!({"app": "web"}), json!({})), "a1"),
        ];
        let mut p = constrained;
        p.spec.as_mut().expect("spec").containers[0].resources =
            serde_json::from_value(json!({"requests": {"cpu": "500m"}})).ok();
        check(
            &nodes,
            &existing,
            &p,
            expect![
                "error: 0/2 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match pod topology spread constraints."
            ],
        );
    }

    fn anti(name: &str, app: &str, against: &str, key: &str) -> Pod {
        labelled(
            name,
            json!({"app": app}),
            json!({"spec": {"affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "topologyKey": key,
                    "labelSelector": {"matchLabels": {"app": against}}}]}}}}),
        )
    }

    #[test]
    fn pod_anti_affinity_of_the_pod_and_of_existing_pods() {
        let nodes = [
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ];
        let host = "kubernetes.io/hostname";
        let web_on_a = [bound(labelled("w", json!({"app": "web"}), json!({})), "a")];
        check(
            &nodes,
            &web_on_a,
            &anti("p", "web", "web", host),
            expect!["b"],
        );
        check(
            &nodes[..1],
            &web_on_a,
            &anti("p", "web", "web", host),
            expect![
                "error: 0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules."
            ],
        );
        // An existing pod that refuses web pods beside it keeps them off its node, although
        // a would score better (b is fuller).
        let guard = [
            bound(anti("g", "guard", "web", host), "a"),
            bound(requesting("big", "2", "4Gi"), "b"),
        ];
        check(
            &nodes,
            &guard,
            &labelled("p", json!({"app": "web"}), json!({})),
            expect!["b"],
        );
        check(
            &nodes[..1],
            &guard[..1],
            &labelled("p", json!({"app": "web"}), json!({})),
            expect![
                "error: 0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules."
            ],
        );
        // A pod of another namespace is not selected by a term without namespaces.
        let mut elsewhere = labelled("p", json!({"app": "web"}), json!({}));
        elsewhere.metadata.namespace = Some("other".into());
        check(&nodes[..1], &guard[..1], &elsewhere, expect!["a"]);
    }

    #[test]
    fn pod_affinity_follows_the_group_and_lets_the_first_in() {
        let with_cache = |name: &str| {
            labelled(
                name,
                json!({"app": "cache"}),
                json!({"spec": {"affinity": {"podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [{
                        "topologyKey": "zone",
                        "labelSelector": {"matchLabels": {"app": "cache"}}}]}}}}),
            )
        };
        let nodes = [zoned("a1", "a"), zoned("b1", "b"), zoned("b2", "b")];
        // The first of the group (it selects itself) goes anywhere.
        check(&nodes, &[], &with_cache("first"), expect!["a1"]);
        let cache_on_b2 = [bound(
            labelled("c", json!({"app": "cache"}), json!({})),
            "b2",
        )];
        check(&nodes, &cache_on_b2, &with_cache("p"), expect!["b1"]);
        // A pod that does not select itself cannot start a group.
        let follower = labelled(
            "f",
            json!({"app": "web"}),
            json!({"spec": {"affinity": {"podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{
                    "topologyKey": "zone",
                    "labelSelector": {"matchLabels": {"app": "cache"}}}]}}}}),
        );
        check(
            &nodes,
            &[],
            &follower,
            expect!["error: 0/3 nodes are available: 3 node(s) didn't match pod affinity rules."],
        );
    }

    #[test]
    fn preferred_terms_rank_nodes() {
        let nodes = [zoned("a1", "a"), zoned("b1", "b")];
        let prefer_b = pod(
            "p",
            json!({"spec": {"affinity": {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 10,
                    "preference": {"matchExpressions": [
                        {"key": "zone", "operator": "In", "values": ["b"]}]}}]}}}}),
        );
        check(&nodes, &[], &prefer_b, expect!["b1"]);
        let near_db = labelled(
            "p",
            json!({"app": "web"}),
            json!({"spec": {"affinity": {"podAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 50,
                    "podAffinityTerm": {"topologyKey": "zone",
                        "labelSelector": {"matchLabels": {"app": "db"}}}}]}}}}),
        );
        let db_on_b = [bound(labelled("db", json!({"app": "db"}), json!({})), "b1")];
        check(&nodes, &db_on_b, &near_db, expect!["b1"]);
        let soft_taint = [
            node(
                "a",
                "4",
                "8Gi",
                json!({"spec": {"taints": [{"key": "k", "effect": "PreferNoSchedule"}]}}),
            ),
            node("b", "4", "8Gi", json!({})),
        ];
        check(&soft_taint, &[], &pod("p", json!({})), expect!["b"]);
    }

    #[test]
    fn most_allocated_packs_where_least_allocated_spreads() {
        let nodes = [
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ];
        let existing = [bound(requesting("old", "2", "4Gi"), "a")];
        let snapshot = snapshot_of(&nodes, &existing);
        let p = requesting("p", "1", "1Gi");
        let pick = |strategy| {
            Framework::new(&crate::framework::Profile {
                scoring_strategy: strategy,
            })
            .schedule(&snapshot, &p, &Sampling::default())
            .map(|placed| placed.node)
        };
        assert_eq!(pick(crate::ScoringStrategy::LeastAllocated), Ok("b".into()));
        assert_eq!(pick(crate::ScoringStrategy::MostAllocated), Ok("a".into()));
    }

    #[test]
    fn image_locality_prefers_nodes_holding_big_images() {
        let with_image = |name: &str, image: &str| {
            node(
                name,
                "4",
                "8Gi",
                json!({"status": {"images": [{"names": [image], "sizeBytes": 500_000_000}]}}),
            )
        };
        let nodes = [
            node("a", "4", "8Gi", json!({})),
            with_image("b", "127.0.0.1:5000/app:latest"),
        ];
        let p = pod(
            "p",
            json!({"spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/app"}]}}),
        );
        check(&nodes, &[], &p, expect!["b"]);
    }

    #[test]
    fn runtime_class_needs_a_known_class_and_a_node_offering_its_handler() {
        let wasm = node(
            "wasm",
            "4",
            "8Gi",
            json!({"metadata": {"labels": {"runtime.shoal.dev/wasmtime": "true"}}}),
        );
        let both = node(
            "both",
            "4",
            "8Gi",
            json!({"status": {"runtimeHandlers": [{"name": "runc"}, {"name": "wasmtime"}]}}),
        );
        let mut snapshot = snapshot_of(&[wasm, both], &[]);
        let class = |name: &str, handler: &str| -> k8s_openapi::api::node::v1::RuntimeClass {
            serde_json::from_value(json!({"metadata": {"name": name}, "handler": handler}))
                .expect("class")
        };
        snapshot.upsert_runtime_class(&class("wasmtime", "wasmtime"));
        snapshot.upsert_runtime_class(&class("runc", "runc"));
        let asking = |class: &str| pod("p", json!({"spec": {"runtimeClassName": class}}));
        check_in(&snapshot, &asking("runc"), expect!["both"]);
        check_in(&snapshot, &asking("wasmtime"), expect!["both"]);
        check_in(
            &snapshot,
            &asking("gvisor"),
            expect![[
                r#"error: 0/2 nodes are available: runtimeclass.node.k8s.io "gvisor" not found."#
            ]],
        );
        snapshot.upsert_runtime_class(&class("gvisor", "runsc"));
        check_in(
            &snapshot,
            &asking("gvisor"),
            expect![
                "error: 0/2 nodes are available: 2 node(s) didn't offer runtime handler runsc."
            ],
        );
    }

    fn with_priority(mut p: Pod, priority: i32) -> Pod {
        if let Some(spec) = p.spec.as_mut() {
            spec.priority = Some(priority);
        }
        p
    }

    fn preempt_for(snapshot: &Snapshot, p: &Pod) -> String {
        let framework = Framework::default();
        let mut fit = framework
            .schedule(snapshot, p, &Sampling::default())
            .expect_err("the pod must not fit as is");
        match crate::preemption::preempt(&framework, snapshot, p, &fit) {
            Ok(preemption) => {
                let victims: Vec<&str> =
                    preemption.victims.iter().map(|v| v.key.as_str()).collect();
                format!("{} <- {}", preemption.node, victims.join(" "))
            }
            Err(message) => {
                fit.post_filter_message = Some(message);
                format!("error: {fit}")
            }
        }
    }

    #[test]
    fn preemption_takes_the_fewest_least_important_victims() {
        let nodes = [
            node("a", "2", "8Gi", json!({})),
            node("b", "2", "8Gi", json!({})),
        ];
        let running = [
            bound(with_priority(requesting("a-low", "1", "1Gi"), 1), "a"),
            bound(with_priority(requesting("a-mid", "1", "1Gi"), 50), "a"),
            bound(with_priority(requesting("b-mid1", "1", "1Gi"), 50), "b"),
            bound(with_priority(requesting("b-mid2", "1", "1Gi"), 50), "b"),
        ];
        let snapshot = snapshot_of(&nodes, &running);
        // One CPU is enough: on a, only the lowest-priority pod goes.
        expect!["a <- default/a-low"].assert_eq(&preempt_for(
            &snapshot,
            &with_priority(requesting("p", "1", "1Gi"), 100),
        ));
        // Two CPUs: a costs a-mid (50) and a-low, b two pods of 50; a's lower sum wins.
        expect!["a <- default/a-mid default/a-low"].assert_eq(&preempt_for(
            &snapshot,
            &with_priority(requesting("p", "2", "1Gi"), 100),
        ));
        // Nobody below priority 1: nothing to take.
        expect!["error: 0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."]
            .assert_eq(&preempt_for(&snapshot, &with_priority(requesting("p", "1", "1Gi"), 1)));
        let mut never = with_priority(requesting("p", "1", "1Gi"), 100);
        never.spec.as_mut().expect("spec").preemption_policy = Some("Never".into());
        expect!["error: 0/2 nodes are available: 2 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."]
            .assert_eq(&preempt_for(&snapshot, &never));
    }

    #[test]
    fn preemption_is_not_tried_where_it_cannot_help_and_respects_budgets() {
        let nodes = [
            node("a", "2", "8Gi", json!({})),
            node(
                "t",
                "8",
                "8Gi",
                json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}),
            ),
        ];
        let running = [
            bound(
                with_priority(labelled("guarded", json!({"app": "db"}), json!({})), 1),
                "a",
            ),
            bound(with_priority(requesting("filler", "2", "1Gi"), 1), "a"),
        ];
        let mut snapshot = snapshot_of(&nodes, &running);
        let p = with_priority(requesting("p", "1", "1Gi"), 100);
        expect!["a <- default/filler"].assert_eq(&preempt_for(&snapshot, &p));
        let budget: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_json::from_value(
            json!({"metadata": {"name": "db", "namespace": "default"},
                   "spec": {"selector": {"matchLabels": {"app": "db"}}},
                   "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}}),
        )
        .expect("pdb");
        snapshot.upsert_pdb(&budget);
        // Two nodes hold only guarded pods: the one whose victim breaks no budget wins.
        let two = [
            node("a", "1", "8Gi", json!({})),
            node("b", "1", "8Gi", json!({})),
        ];
        let guarded = [
            bound(
                with_priority(
                    labelled(
                        "db",
                        json!({"app": "db"}),
                        json!({"spec": {"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "1"}}}]}}),
                    ),
                    1,
                ),
                "a",
            ),
            bound(with_priority(requesting("free", "1", "1Gi"), 1), "b"),
        ];
        let mut snapshot = snapshot_of(&two, &guarded);
        snapshot.upsert_pdb(&budget);
        expect!["b <- default/free"].assert_eq(&preempt_for(&snapshot, &p));
        let only_tainted = snapshot_of(&nodes[1..], &[]);
        let p_big = with_priority(requesting("p", "1", "1Gi"), 100);
        expect!["error: 0/1 nodes are available: 1 node(s) had untolerated taint {k: }. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."]
            .assert_eq(&preempt_for(&only_tainted, &p_big));
    }

    #[test]
    fn nominated_pods_keep_their_room_from_lower_priority_pods() {
        let nodes = [node("a", "2", "8Gi", json!({}))];
        let mut snapshot = snapshot_of(&nodes, &[]);
        let high = with_priority(requesting("high", "2", "1Gi"), 100);
        snapshot.nominate(&high, "a");
        check_in(
            &snapshot,
            &with_priority(requesting("low", "1", "1Gi"), 1),
            expect!["error: 0/1 nodes are available: 1 Insufficient cpu."],
        );
        check_in(
            &snapshot,
            &with_priority(requesting("peer", "1", "1Gi"), 100),
            expect!["error: 0/1 nodes are available: 1 Insufficient cpu."],
        );
        check_in(
            &snapshot,
            &with_priority(requesting("higher", "1", "1Gi"), 1000),
            expect!["a"],
        );
        check_in(&snapshot, &high, expect!["a"]);
    }

    fn check_in(snapshot: &Snapshot, p: &Pod, expect: Expect) {
        let actual = match schedule(snapshot, p) {
            Ok(node) => node,
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&actual);
    }

    #[test]
    fn preemption_leaves_room_for_a_higher_nominated_pod() {
        // x (priority 1, 2 CPUs) runs on a 4-CPU node where `high` (100, 2 CPUs) is
        // nominated: evicting x cannot make room for `mid` (50, 3 CPUs) beside `high`.
        let nodes = [node("a", "4", "8Gi", json!({}))];
        let mut snapshot = snapshot_of(
            &nodes,
            &[bound(with_priority(requesting("x", "2", "1Gi"), 1), "a")],
        );
        snapshot.nominate(&with_priority(requesting("high", "2", "1Gi"), 100), "a");
        expect!["error: 0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."]
            .assert_eq(&preempt_for(&snapshot, &with_priority(requesting("mid", "3", "1Gi"), 50)));
        // With 1 CPU, mid fits beside high once x goes.
        expect!["a <- default/x"].assert_eq(&preempt_for(
            &snapshot,
            &with_priority(requesting("mid", "2", "1Gi"), 50),
        ));
    }

    #[test]
    fn a_nominated_pod_goes_to_its_node_when_it_fits() {
        // b would score higher (emptier), but the pod was nominated to a.
        let nodes = [
            node("a", "4", "8Gi", json!({})),
            node("b", "8", "16Gi", json!({})),
        ];
        let snapshot = snapshot_of(&nodes, &[]);
        let mut p = requesting("p", "1", "1Gi");
        p.status = serde_json::from_value(json!({"nominatedNodeName": "a"})).ok();
        check_in(&snapshot, &p, expect!["a"]);
        p.status = serde_json::from_value(json!({"nominatedNodeName": "gone"})).ok();
        check_in(&snapshot, &p, expect!["b"]);
    }

    #[test]
    fn sidecars_add_to_the_pod_and_to_later_init_containers() {
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
            "initContainers": [
                {"name": "sidecar", "image": "i", "restartPolicy": "Always",
                 "resources": {"requests": {"cpu": "300m"}}},
                {"name": "init", "image": "i", "resources": {"requests": {"cpu": "1"}}}
            ],
            "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "500m"}}}]
        }))
        .expect("spec");
        // Running: 500m + the 300m sidecar; init phase: 1 + 300m. The peak wins.
        assert_eq!(crate::pod_requests(&spec).requests.cpu_millis, 1_300);
    }

    #[test]
    fn hostile_quantities_do_not_overflow() {
        let huge = |name: &str| {
            pod(
                name,
                json!({"spec": {"containers": [
                    {"name": "a", "image": "i", "resources": {"requests": {"cpu": "9223372036854775", "memory": "7Ei"}}},
                    {"name": "b", "image": "i", "resources": {"requests": {"cpu": "9223372036854775", "memory": "7Ei"}}}
                ]}}),
            )
        };
        let nodes = [node("a", "4", "8Gi", json!({}))];
        check(
            &nodes,
            &[bound(huge("old"), "a")],
            &huge("p"),
            expect!["error: 0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."],
        );
    }

    #[test]
    fn an_empty_spread_selector_counts_no_pod() {
        let p = labelled(
            "p",
            json!({"app": "web"}),
            json!({"spec": {"topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {}}]}}),
        );
        let nodes = [zoned("a1", "a"), zoned("b1", "b")];
        let existing = [
            bound(labelled("w1", json!({"app": "web"}), json!({})), "a1"),
            bound(labelled("w2", json!({"app": "web"}), json!({})), "a1"),
        ];
        // Least allocated would pick b1; with the empty selector nothing is filtered out, so
        // a1 stays feasible: pin the pod there to see it.
        let mut pinned = p.clone();
        pinned.spec.as_mut().expect("spec").node_selector =
            Some([("zone".to_owned(), "a".to_owned())].into());
        check(&nodes, &existing, &pinned, expect!["a1"]);
    }
}
