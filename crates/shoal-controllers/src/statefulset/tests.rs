use super::*;
use crate::test_support::merge;
use serde_json::{Value, json};

fn set(replicas: i32, extra: Value) -> StatefulSet {
    let mut value = json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "set-uid", "generation": 4},
        "spec": {
            "replicas": replicas,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "podManagementPolicy": "OrderedReady",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "web:2"}]}}
        }
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("set")
}

fn pod(ordinal: i32, revision: &str, extra: Value) -> Pod {
    let mut value = json!({
        "metadata": {"name": format!("web-{ordinal}"), "namespace": "default",
            "labels": {"app": "web", "controller-revision-hash": revision},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web",
                "uid": "set-uid", "controller": true}]},
        "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("pod")
}

fn unready() -> Value {
    json!({"status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}})
}

fn run(set: &StatefulSet, pods: &[&Pod]) -> Plan {
    plan(
        set,
        &Input {
            pods,
            current: "web-old",
            update: "web-new",
            now: "2026-01-01T01:00:00Z".parse().expect("time"),
            manage: true,
        },
    )
}

#[test]
fn ordinals_parse_strictly() {
    assert_eq!(ordinal_of("web", "web-0"), Some(0));
    assert_eq!(ordinal_of("web", "web-12"), Some(12));
    assert_eq!(ordinal_of("web", "web-01"), None);
    assert_eq!(ordinal_of("web", "web-"), None);
    assert_eq!(ordinal_of("web", "web-x"), None);
    assert_eq!(ordinal_of("web", "webs-0"), None);
    assert_eq!(ordinal_of("web", "web-0-1"), None);
}

#[test]
fn ordered_ready_creates_one_at_a_time() {
    let p = run(&set(3, json!({})), &[]);
    assert_eq!(p.create, [(0, Which::Update)]);
    let p0 = pod(0, "web-new", json!({}));
    let p = run(&set(3, json!({})), &[&p0]);
    assert_eq!(p.create, [(1, Which::Update)]);
    // web-0 not ready yet: wait.
    let pending = pod(0, "web-new", unready());
    let p = run(&set(3, json!({})), &[&pending]);
    assert!(p.create.is_empty());
    // Parallel: all at once, whatever the others' state.
    let parallel = set(3, json!({"spec": {"podManagementPolicy": "Parallel"}}));
    let p = run(&parallel, &[&pending]);
    assert_eq!(p.create, [(1, Which::Update), (2, Which::Update)]);
}

#[test]
fn scale_down_goes_from_the_highest_ordinal_one_at_a_time() {
    let pods: Vec<Pod> = (0..5).map(|o| pod(o, "web-new", json!({}))).collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    let p = run(&set(2, json!({})), &refs);
    assert_eq!(p.condemn, ["web-4"]);
    let parallel = set(2, json!({"spec": {"podManagementPolicy": "Parallel"}}));
    assert_eq!(run(&parallel, &refs).condemn, ["web-4", "web-3", "web-2"]);
    // web-4 terminating: wait for it.
    let mut going = pods.clone();
    going[4].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:59:00Z".parse().expect("time"),
        ));
    let refs: Vec<&Pod> = going.iter().collect();
    assert!(run(&set(2, json!({})), &refs).condemn.is_empty());
    // A wanted pod unhealthy: no scale down in order.
    let mut sick = pods.clone();
    sick[1] = pod(1, "web-new", unready());
    let refs: Vec<&Pod> = sick.iter().collect();
    assert!(run(&set(2, json!({})), &refs).condemn.is_empty());
}

#[test]
fn failed_pods_are_made_again() {
    let p0 = pod(0, "web-new", json!({"status": {"phase": "Failed"}}));
    let p = run(&set(2, json!({})), &[&p0]);
    assert_eq!(p.recreate, ["web-0"]);
    assert!(p.create.is_empty());
}

#[test]
fn rolling_update_goes_down_to_the_partition() {
    let old: Vec<Pod> = (0..3).map(|o| pod(o, "web-old", json!({}))).collect();
    let refs: Vec<&Pod> = old.iter().collect();
    let p = run(&set(3, json!({})), &refs);
    assert_eq!(p.update, ["web-2"]);
    assert_eq!(p.status.current_replicas, Some(3));
    assert_eq!(p.status.updated_replicas, Some(0));
    // web-2 is new but not ready: wait.
    let mut next = old.clone();
    next[2] = pod(2, "web-new", unready());
    let refs: Vec<&Pod> = next.iter().collect();
    assert!(run(&set(3, json!({})), &refs).update.is_empty());
    // Ready: web-1 next.
    next[2] = pod(2, "web-new", json!({}));
    let refs: Vec<&Pod> = next.iter().collect();
    assert_eq!(run(&set(3, json!({})), &refs).update, ["web-1"]);
    // Partition 2: only web-2 is replaced; a missing web-1 comes back at the current revision.
    let partitioned = set(
        3,
        json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 2}}}}),
    );
    let refs: Vec<&Pod> = next.iter().collect();
    assert!(run(&partitioned, &refs).update.is_empty());
    let refs: Vec<&Pod> = [&next[0], &next[2]].into();
    assert_eq!(run(&partitioned, &refs).create, [(1, Which::Current)]);
    // OnDelete replaces nothing, and makes missing pods from the update revision.
    let on_delete = set(
        3,
        json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}}),
    );
    let refs: Vec<&Pod> = [&old[0], &old[2]].into();
    let p = run(&on_delete, &refs);
    assert_eq!(p.create, [(1, Which::Update)]);
    let refs: Vec<&Pod> = old.iter().collect();
    assert!(run(&on_delete, &refs).update.is_empty());
}

#[test]
fn status_completes_the_rolling_update() {
    let new: Vec<Pod> = (0..2).map(|o| pod(o, "web-new", json!({}))).collect();
    let refs: Vec<&Pod> = new.iter().collect();
    let p = run(&set(2, json!({})), &refs);
    assert_eq!(p.status.replicas, 2);
    assert_eq!(p.status.ready_replicas, Some(2));
    assert_eq!(p.status.current_revision.as_deref(), Some("web-new"));
    assert_eq!(p.status.current_replicas, Some(2));
    assert_eq!(p.status.observed_generation, Some(4));
    let mixed = [pod(0, "web-old", json!({})), pod(1, "web-new", json!({}))];
    let refs: Vec<&Pod> = mixed.iter().collect();
    let p = run(&set(2, json!({})), &refs);
    assert_eq!(p.status.current_revision.as_deref(), Some("web-old"));
    assert_eq!(p.status.update_revision.as_deref(), Some("web-new"));
    assert_eq!(
        (p.status.current_replicas, p.status.updated_replicas),
        (Some(1), Some(1))
    );
}

#[test]
fn adopts_orphans_and_leaves_a_deleting_set_alone() {
    let mut orphan = pod(0, "web-new", json!({}));
    orphan.metadata.owner_references = None;
    let p = run(&set(1, json!({})), &[&orphan]);
    assert_eq!(p.adopt, ["web-0"]);
    assert!(p.create.is_empty());
    let deleting = set(
        1,
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    let p = run(&deleting, &[]);
    assert!(p.create.is_empty() && p.adopt.is_empty());
}

#[test]
fn pod_and_claims_have_stable_identity() {
    let set = set(
        1,
        json!({"spec": {
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": {"tier": "db"}},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
    );
    let template = set.spec.as_ref().expect("spec").template.clone();
    let pod = pod_for(&set, &template, 2, "web-abc");
    expect_test::expect![[r#"{"apiVersion":"v1","kind":"Pod","metadata":{"labels":{"app":"web","apps.kubernetes.io/pod-index":"2","controller-revision-hash":"web-abc","statefulset.kubernetes.io/pod-name":"web-2"},"name":"web-2","namespace":"default","ownerReferences":[{"apiVersion":"apps/v1","blockOwnerDeletion":true,"controller":true,"kind":"StatefulSet","name":"web","uid":"set-uid"}]},"spec":{"containers":[{"image":"web:2","name":"c"}],"hostname":"web-2","subdomain":"web","volumes":[{"name":"data","persistentVolumeClaim":{"claimName":"data-web-2"}}]}}"#]]
        .assert_eq(&serde_json::to_string(&pod).expect("json"));
    let claims = claims_for(&set, 2);
    expect_test::expect![[r#"[{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"labels":{"app":"web","tier":"db"},"name":"data-web-2","namespace":"default","ownerReferences":[{"apiVersion":"apps/v1","blockOwnerDeletion":true,"kind":"StatefulSet","name":"web","uid":"set-uid"}]},"spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}]"#]]
        .assert_eq(&serde_json::to_string(&claims).expect("json"));
}
