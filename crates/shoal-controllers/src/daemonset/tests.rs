use super::*;
use crate::test_support::merge;
use serde_json::{Value, json};

fn ds(strategy: Value) -> DaemonSet {
    serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid", "generation": 3},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": strategy,
            "template": {"metadata": {"labels": {"app": "agent"}},
                         "spec": {"containers": [{"name": "c", "image": "agent:2"}]}}
        }
    }))
    .expect("ds")
}

fn rolling(max_unavailable: Value, max_surge: Value) -> DaemonSet {
    ds(json!({"type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": max_unavailable, "maxSurge": max_surge}}))
}

fn node(name: &str, extra: Value) -> Node {
    let mut value = json!({"metadata": {"name": name, "labels": {"zone": "a"}}});
    merge(&mut value, extra);
    serde_json::from_value(value).expect("node")
}

fn pod(name: &str, node: &str, hash: &str, extra: Value) -> Pod {
    let mut value = json!({
        "metadata": {"name": name, "namespace": "kube-system",
            "labels": {"app": "agent", "controller-revision-hash": hash},
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                "uid": "ds-uid", "controller": true}]},
        "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": node},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("pod")
}

fn now() -> Timestamp {
    "2026-01-01T01:00:00Z".parse().expect("time")
}

fn run(ds: &DaemonSet, nodes: &[&Node], pods: &[&Pod]) -> Plan {
    plan(
        ds,
        &Input {
            nodes,
            pods,
            hash: "new",
            runtime: None,
            now: now(),
            manage: true,
            backoff: &|_| None,
        },
    )
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn one_pod_per_eligible_node_and_status() {
    let ds = rolling(json!(1), json!(0));
    let (a, b) = (node("a", json!({})), node("b", json!({})));
    let tainted = node(
        "c",
        json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
    );
    let cordoned = node(
        "d",
        json!({"spec": {"unschedulable": true, "taints": [
            {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}}),
    );
    let on_a = pod("agent-a", "a", "new", json!({}));
    let p = run(&ds, &[&a, &b, &tainted, &cordoned], &[&on_a]);
    // b and the cordoned d (daemons tolerate unschedulable); not c.
    assert_eq!(p.create_on, ["b", "d"]);
    assert!(p.delete.is_empty());
    assert_eq!(p.status.desired_number_scheduled, 3);
    assert_eq!(p.status.current_number_scheduled, 1);
    assert_eq!(p.status.number_ready, 1);
    assert_eq!(p.status.number_available, Some(1));
    assert_eq!(p.status.number_unavailable, Some(2));
    assert_eq!(p.status.updated_number_scheduled, Some(1));
    assert_eq!(p.status.observed_generation, Some(3));
}

#[test]
fn follows_node_selector_affinity_and_taints() {
    let mut ds = rolling(json!(1), json!(0));
    if let Some(spec) = ds.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.node_selector = Some([("zone".to_owned(), "a".to_owned())].into());
    }
    let other_zone = node("b", json!({"metadata": {"labels": {"zone": "b"}}}));
    let no_execute = node(
        "c",
        json!({"spec": {"taints": [{"key": "gpu", "effect": "NoExecute"}]}}),
    );
    let no_schedule = node(
        "d",
        json!({"spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}),
    );
    let on_b = pod("agent-b", "b", "new", json!({}));
    let on_c = pod("agent-c", "c", "new", json!({}));
    let on_d = pod("agent-d", "d", "new", json!({}));
    let p = run(
        &ds,
        &[&other_zone, &no_execute, &no_schedule],
        &[&on_b, &on_c, &on_d],
    );
    // A node that no longer matches, or has an untolerated NoExecute taint, loses its pod;
    // a NoSchedule taint lets the running pod stay but would not place a new one.
    assert_eq!(sorted(p.delete), ["agent-b", "agent-c"]);
    assert!(p.create_on.is_empty());
    assert_eq!(p.status.desired_number_scheduled, 0);
    assert_eq!(p.status.number_misscheduled, 3);
    // Unreachable and not-ready nodes keep their daemon pods (daemon tolerations).
    let unreachable = node(
        "e",
        json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
    );
    let on_e = pod("agent-e", "e", "new", json!({}));
    let p = run(&ds, &[&unreachable], &[&on_e]);
    assert!(p.delete.is_empty() && p.create_on.is_empty());
    assert_eq!(p.status.desired_number_scheduled, 1);
}

#[test]
fn runtime_class_limits_nodes() {
    let need = RuntimeNeed {
        handler: "wasmtime".into(),
        node_selector: BTreeMap::new(),
    };
    let wasm = node(
        "w",
        json!({"metadata": {"labels": {"runtime.shoal.dev/wasmtime": "true"}}}),
    );
    let containers = node(
        "c",
        json!({"metadata": {"labels": {"runtime.shoal.dev/runc": "true"}}}),
    );
    let ds = rolling(json!(1), json!(0));
    let p = plan(
        &ds,
        &Input {
            nodes: &[&wasm, &containers],
            pods: &[],
            hash: "new",
            runtime: Some(&need),
            now: now(),
            manage: true,
            backoff: &|_| None,
        },
    );
    assert_eq!(p.create_on, ["w"]);
}

#[test]
fn duplicate_and_failed_pods_are_removed_with_backoff() {
    let ds = rolling(json!(1), json!(0));
    let a = node("a", json!({}));
    let b = node("b", json!({}));
    let old = pod("agent-1", "a", "new", json!({}));
    let dup = pod(
        "agent-2",
        "a",
        "new",
        json!({"metadata": {"creationTimestamp": "2026-01-01T00:10:00Z"}}),
    );
    let failed = pod(
        "agent-3",
        "b",
        "new",
        json!({"status": {"phase": "Failed"}}),
    );
    let p = run(&ds, &[&a, &b], &[&old, &dup, &failed]);
    assert_eq!(sorted(p.delete), ["agent-2", "agent-3"]);
    assert_eq!(p.failed, [("agent-3".to_owned(), "b".to_owned())]);
    assert!(p.create_on.is_empty());
    let p = plan(
        &ds,
        &Input {
            nodes: &[&a, &b],
            pods: &[&old, &failed],
            hash: "new",
            runtime: None,
            now: now(),
            manage: true,
            backoff: &|node| (node == "b").then_some(Duration::from_secs(4)),
        },
    );
    assert!(p.delete.is_empty());
    assert_eq!(p.requeue_after, Some(Duration::from_secs(4)));
}

#[test]
fn rolling_update_without_surge_respects_max_unavailable() {
    let nodes: Vec<Node> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| node(n, json!({})))
        .collect();
    let node_refs: Vec<&Node> = nodes.iter().collect();
    let old: Vec<Pod> = ["a", "b", "c"]
        .iter()
        .map(|n| pod(&format!("old-{n}"), n, "old", json!({})))
        .collect();
    let unready_old = pod(
        "old-d",
        "d",
        "old",
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    let mut pods: Vec<&Pod> = old.iter().collect();
    pods.push(&unready_old);
    // The unready old pod goes at no cost, and it fills the one unavailable slot.
    let p = run(&rolling(json!(1), json!(0)), &node_refs, &pods);
    assert_eq!(p.delete, ["old-d"]);
    assert!(p.create_on.is_empty());
    // 50% of 4 = 2: one old pod beside the free replacement.
    let p = run(&rolling(json!("50%"), json!(0)), &node_refs, &pods);
    assert_eq!(p.delete, ["old-d", "old-a"]);
    // A new pod that is not yet ready takes the slot: nothing more goes.
    let fresh = pod(
        "new-d",
        "d",
        "new",
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    let mut pods: Vec<&Pod> = old.iter().collect();
    pods.push(&fresh);
    let p = run(&rolling(json!(1), json!(0)), &node_refs, &pods);
    assert!(p.delete.is_empty(), "{:?}", p.delete);
    assert_eq!(p.status.updated_number_scheduled, Some(1));
    // OnDelete never replaces on its own.
    let p = run(&ds(json!({"type": "OnDelete"})), &node_refs, &pods);
    assert!(p.delete.is_empty() && p.create_on.is_empty());
}

#[test]
fn rolling_update_with_surge_creates_first_then_deletes_the_old() {
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(n, json!({}))).collect();
    let node_refs: Vec<&Node> = nodes.iter().collect();
    let old: Vec<Pod> = ["a", "b", "c"]
        .iter()
        .map(|n| pod(&format!("old-{n}"), n, "old", json!({})))
        .collect();
    let pods: Vec<&Pod> = old.iter().collect();
    let ds = rolling(json!(0), json!(1));
    let p = run(&ds, &node_refs, &pods);
    assert_eq!(p.create_on, ["a"]);
    assert!(p.delete.is_empty());
    // The surged pod is not ready yet: both stay, and no other node surges.
    let waiting = pod(
        "new-a",
        "a",
        "new",
        json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
    );
    let mut with_new = pods.clone();
    with_new.push(&waiting);
    let p = run(&ds, &node_refs, &with_new);
    assert!(p.delete.is_empty() && p.create_on.is_empty(), "{p:?}");
    // Ready: the old pod on that node goes.
    let ready = pod("new-a", "a", "new", json!({}));
    let mut with_ready = pods.clone();
    with_ready.push(&ready);
    let p = run(&ds, &node_refs, &with_ready);
    assert_eq!(p.delete, ["old-a"]);
}

#[test]
fn adopts_orphans_and_finds_the_target_node_in_affinity() {
    let ds = rolling(json!(1), json!(0));
    let a = node("a", json!({}));
    let orphan = pod(
        "orphan",
        "a",
        "new",
        json!({"metadata": {"ownerReferences": null}}),
    );
    let p = run(&ds, &[&a], &[&orphan]);
    assert_eq!(p.adopt, ["orphan"]);
    assert!(p.create_on.is_empty());
    let unbound = pod_for_node(&ds, "a", "new");
    assert_eq!(target_node(&unbound), Some("a"));
    let p = run(&ds, &[&a], &[&unbound]);
    assert!(p.create_on.is_empty());
}

#[test]
fn daemon_pod_shape() {
    let pod = pod_for_node(&rolling(json!(1), json!(0)), "n1", "h1");
    expect_test::expect![[r#"{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"agent-","labels":{"app":"agent","controller-revision-hash":"h1","pod-template-generation":"3"},"namespace":"kube-system","ownerReferences":[{"apiVersion":"apps/v1","blockOwnerDeletion":true,"controller":true,"kind":"DaemonSet","name":"agent","uid":"ds-uid"}]},"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchFields":[{"key":"metadata.name","operator":"In","values":["n1"]}]}]}}},"containers":[{"image":"agent:2","name":"c"}],"tolerations":[{"effect":"NoExecute","key":"node.kubernetes.io/not-ready","operator":"Exists"},{"effect":"NoExecute","key":"node.kubernetes.io/unreachable","operator":"Exists"},{"effect":"NoSchedule","key":"node.kubernetes.io/disk-pressure","operator":"Exists"},{"effect":"NoSchedule","key":"node.kubernetes.io/memory-pressure","operator":"Exists"},{"effect":"NoSchedule","key":"node.kubernetes.io/pid-pressure","operator":"Exists"},{"effect":"NoSchedule","key":"node.kubernetes.io/unschedulable","operator":"Exists"}]}}"#]]
        .assert_eq(&serde_json::to_string(&pod).expect("json"));
}

#[test]
fn surge_skips_nodes_that_only_keep_their_pod_and_orphans_of_gone_nodes_go() {
    let ds = rolling(json!(0), json!(1));
    // Node a gained a NoSchedule taint: its old pod may stay, a new one could never land.
    let tainted = node(
        "a",
        json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoSchedule"}]}}),
    );
    let b = node("b", json!({}));
    let old_a = pod("old-a", "a", "old", json!({}));
    let old_b = pod("old-b", "b", "old", json!({}));
    let p = run(&ds, &[&tainted, &b], &[&old_a, &old_b]);
    assert_eq!(p.create_on, ["b"]);
    // An unbound daemon pod aimed at a node that no longer exists is deleted.
    let stray = pod_for_node(&ds, "gone", "new");
    let mut stray = stray;
    stray.metadata.name = Some("stray".into());
    let p = run(&ds, &[&b], &[&old_b, &stray]);
    assert_eq!(p.delete, ["stray"]);
}

#[test]
fn surged_old_pod_waits_for_the_new_one_to_be_available() {
    let mut ds = rolling(json!(0), json!(1));
    if let Some(spec) = ds.spec.as_mut() {
        spec.min_ready_seconds = Some(60);
    }
    let a = node("a", json!({}));
    let old = pod("old-a", "a", "old", json!({}));
    let fresh = pod(
        "new-a",
        "a",
        "new",
        json!({"metadata": {"creationTimestamp": "2026-01-01T00:59:00Z"},
            "status": {"conditions": [{"type": "Ready", "status": "True",
            "lastTransitionTime": "2026-01-01T00:59:30Z"}]}}),
    );
    // Ready for 30 s of the 60 required: both stay.
    let p = run(&ds, &[&a], &[&old, &fresh]);
    assert!(p.delete.is_empty(), "{:?}", p.delete);
}

#[test]
fn only_placement_changes_of_nodes_wake_daemonsets() {
    use crate::informer::Change;
    let mut placement = NodePlacement::default();
    let a = Arc::new(node("a", json!({})));
    assert!(placement.changed(&Change::Applied(Arc::clone(&a))));
    // A status heartbeat: nothing that decides placement moved.
    let beat = Arc::new(node(
        "a",
        json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    ));
    assert!(!placement.changed(&Change::Applied(beat)));
    let tainted = Arc::new(node(
        "a",
        json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}),
    ));
    assert!(placement.changed(&Change::Applied(tainted)));
    assert!(placement.changed(&Change::Deleted(a)));
    assert!(!placement.changed(&Change::Synced));
}

#[test]
fn observed_generation_waits_for_expectations() {
    let mut ds = rolling(json!(1), json!(0));
    ds.status = Some(
        serde_json::from_value(json!({"currentNumberScheduled": 0,
        "desiredNumberScheduled": 0, "numberMisscheduled": 0, "numberReady": 0,
        "observedGeneration": 2}))
        .expect("status"),
    );
    let a = node("a", json!({}));
    let pending = plan(
        &ds,
        &Input {
            nodes: &[&a],
            pods: &[],
            hash: "new",
            runtime: None,
            now: now(),
            manage: false,
            backoff: &|_| None,
        },
    );
    assert!(pending.create_on.is_empty());
    assert_eq!(pending.status.observed_generation, Some(2));
    assert_eq!(run(&ds, &[&a], &[]).status.observed_generation, Some(3));
}
