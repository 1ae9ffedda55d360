use super::*;
use crate::test_support::merge;
use serde_json::{Value, json};

fn service(extra: Value) -> Service {
    let mut value = json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"team": "a"}},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 9000, "targetPort": 9001}]}
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("service")
}

fn pod(name: &str, ip: &str, ready: bool, extra: Value) -> Pod {
    let mut value = json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("pod")
}

#[test]
fn endpoints_group_ready_and_not_ready_by_resolved_ports() {
    let svc = service(json!({}));
    let a = pod("a", "10.0.0.2", true, json!({}));
    let b = pod("b", "10.0.0.1", false, json!({}));
    // No named port: serves only the numeric one.
    let c = pod(
        "c",
        "10.0.0.3",
        true,
        json!({"spec": {"containers": [{"name": "c", "image": "i", "ports": null}]}}),
    );
    let other = pod(
        "x",
        "10.0.0.9",
        true,
        json!({"metadata": {"labels": {"app": "db"}}}),
    );
    let no_ip = pod("y", "", true, json!({}));
    let done = pod(
        "z",
        "10.0.0.8",
        true,
        json!({"status": {"phase": "Succeeded"}}),
    );
    let going = pod(
        "t",
        "10.0.0.7",
        true,
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    let pods = [&a, &b, &c, &other, &no_ip, &done, &going];
    let found = backends(&svc, &pods);
    assert_eq!(
        found.iter().map(|b| b.ip.as_str()).collect::<Vec<_>>(),
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.7"]
    );
    let endpoints = endpoints_for(&svc, &found);
    expect_test::expect![[r#"{"apiVersion":"v1","kind":"Endpoints","metadata":{"labels":{"team":"a"},"name":"web","namespace":"default"},"subsets":[{"addresses":[{"ip":"10.0.0.3","nodeName":"n1","targetRef":{"kind":"Pod","name":"c","namespace":"default","uid":"uid-c"}}],"ports":[{"name":"admin","port":9001,"protocol":"TCP"}]},{"addresses":[{"ip":"10.0.0.2","nodeName":"n1","targetRef":{"kind":"Pod","name":"a","namespace":"default","uid":"uid-a"}}],"notReadyAddresses":[{"ip":"10.0.0.1","nodeName":"n1","targetRef":{"kind":"Pod","name":"b","namespace":"default","uid":"uid-b"}}],"ports":[{"name":"admin","port":9001,"protocol":"TCP"},{"name":"http","port":8080,"protocol":"TCP"}]}]}"#]]
        .assert_eq(&serde_json::to_string(&endpoints).expect("json"));
    // Publishing not-ready addresses: all ready, the terminating one included.
    let publish = service(json!({"spec": {"publishNotReadyAddresses": true}}));
    let endpoints = endpoints_for(&publish, &backends(&publish, &pods));
    let ready: usize = endpoints
        .subsets
        .iter()
        .flatten()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(ready, 4);
    // Without a selector nothing is managed.
    let manual = service(json!({"spec": {"selector": null}}));
    assert!(backends(&manual, &pods).is_empty());
}

#[test]
fn slices_hold_conditions_and_zones_and_reuse_existing_ones() {
    let svc =
        service(json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
    let pods: Vec<Pod> = (0..150)
        .map(|i| {
            pod(
                &format!("p{i:03}"),
                &format!("10.0.{}.{}", i / 200, i % 200 + 1),
                i % 2 == 0,
                json!({}),
            )
        })
        .collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    let found = backends(&svc, &refs);
    let zone = |node: &str| (node == "n1").then(|| "zone-a".to_owned());
    let plan = slices_for(&svc, &found, &zone, &[]);
    assert_eq!(plan.create.len(), 2);
    assert_eq!(plan.create[0].endpoints.len(), 100);
    assert_eq!(plan.create[1].endpoints.len(), 50);
    let first = &plan.create[0].endpoints[0];
    assert_eq!(first.zone.as_deref(), Some("zone-a"));
    assert_eq!(first.node_name.as_deref(), Some("n1"));
    let labels = plan.create[0].metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[SERVICE_NAME_LABEL], "web");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    // The same content again: nothing to write.
    let mut existing = plan.create.clone();
    for (i, slice) in existing.iter_mut().enumerate() {
        slice.metadata.name = Some(format!("web-{i}"));
        slice.metadata.generate_name = None;
    }
    let existing_refs: Vec<&EndpointSlice> = existing.iter().collect();
    let again = slices_for(&svc, &found, &zone, &existing_refs);
    assert_eq!(again, SlicePlan::default());
    // Fewer pods: the first slice is rewritten in place and the second one deleted.
    let few = &found[..10];
    let shrink = slices_for(&svc, few, &zone, &existing_refs);
    assert!(shrink.create.is_empty());
    assert_eq!(shrink.update.len(), 1);
    assert_eq!(shrink.update[0].metadata.name.as_deref(), Some("web-0"));
    assert_eq!(shrink.delete, ["web-1"]);
    // No pods: one empty slice stays.
    let empty = slices_for(&svc, &[], &zone, &existing_refs);
    assert_eq!(empty.update.len(), 1);
    assert!(empty.update[0].endpoints.is_empty());
    assert_eq!(empty.delete, ["web-1"]);
}

#[test]
fn terminating_endpoints_keep_serving_in_slices() {
    let svc = service(json!({"spec": {"ports": [{"port": 80}]}}));
    let going = pod(
        "t",
        "10.0.0.7",
        true,
        json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    let found = backends(&svc, &[&going]);
    let plan = slices_for(&svc, &found, &|_| None, &[]);
    let conditions = plan.create[0].endpoints[0]
        .conditions
        .clone()
        .expect("conditions");
    assert_eq!(
        (conditions.ready, conditions.serving, conditions.terminating),
        (Some(false), Some(true), Some(true))
    );
    // Endpoints leave it out.
    assert!(endpoints_for(&svc, &found).subsets.is_none());
}

#[test]
fn endpoints_are_truncated_at_a_thousand_and_say_so() {
    let svc = service(json!({"spec": {"ports": [{"port": 80}]}}));
    let pods: Vec<Pod> = (0..1001)
        .map(|i| {
            pod(
                &format!("p{i}"),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                true,
                json!({}),
            )
        })
        .collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    let found = backends(&svc, &refs);
    let endpoints = endpoints_for(&svc, &found);
    let addresses: usize = endpoints
        .subsets
        .iter()
        .flatten()
        .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(addresses, MAX_ENDPOINTS_ADDRESSES);
    assert_eq!(
        endpoints
            .metadata
            .annotations
            .as_ref()
            .map(|a| a[OVER_CAPACITY].as_str()),
        Some("truncated")
    );
    let slices = slices_for(&svc, &found, &|_| None, &[]);
    let total: usize = slices.create.iter().map(|s| s.endpoints.len()).sum();
    assert_eq!(total, 1001);
}

#[test]
fn app_protocol_and_headless_label_are_carried() {
    let svc = service(json!({"spec": {"clusterIP": "None",
        "ports": [{"name": "grpc", "port": 80, "targetPort": 8080, "appProtocol": "kubernetes.io/h2c"}]}}));
    let a = pod("a", "10.0.0.2", true, json!({}));
    let found = backends(&svc, &[&a]);
    let endpoints = endpoints_for(&svc, &found);
    let port = &endpoints.subsets.as_ref().expect("subsets")[0]
        .ports
        .as_ref()
        .expect("ports")[0];
    assert_eq!(port.app_protocol.as_deref(), Some("kubernetes.io/h2c"));
    assert!(
        endpoints
            .metadata
            .labels
            .as_ref()
            .expect("labels")
            .contains_key(HEADLESS_LABEL)
    );
    let plan = slices_for(&svc, &found, &|_| None, &[]);
    let slice = &plan.create[0];
    assert_eq!(
        slice.ports.as_ref().expect("ports")[0]
            .app_protocol
            .as_deref(),
        Some("kubernetes.io/h2c")
    );
    assert!(
        slice
            .metadata
            .labels
            .as_ref()
            .expect("labels")
            .contains_key(HEADLESS_LABEL)
    );
}
