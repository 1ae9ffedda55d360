//! kube-rs (the client Shoal's own components use) against a served apiserver: typed CRUD,
//! status patches, server-side apply, deletion, and the runtime watcher.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use shoal_apiserver::testing::TestApiServer;

#[tokio::test]
async fn kube_rs_crud_status_apply_and_watch() {
    let server = TestApiServer::start().await.expect("apiserver");
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "a", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "example.com/app:1"}]},
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    assert!(
        pods.list(&ListParams::default().labels("app=db"))
            .await
            .expect("list")
            .items
            .is_empty()
    );

    // The runtime watcher sees a status change made through pods/status.
    let watch = watcher(pods.clone(), watcher::Config::default()).applied_objects();
    let mut watch = Box::pin(watch);
    let first = tokio::time::timeout(Duration::from_secs(10), watch.try_next())
        .await
        .expect("watcher delivers")
        .expect("no watch error")
        .expect("an object");
    assert_eq!(first.metadata.name.as_deref(), Some("a"));
    pods.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .expect("status patch");
    let running = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(p) = watch.next().await {
            let p = p.expect("no watch error");
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                return p;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("watcher sees Running");
    assert_eq!(running.metadata.name.as_deref(), Some("a"));

    // Server-side apply (approximated) creates, then updates.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let apply = PatchParams::apply("test").force();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "1"}});
    cms.patch("c", &apply, &Patch::Apply(&cm))
        .await
        .expect("apply creates");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "2"}});
    let applied = cms
        .patch("c", &apply, &Patch::Apply(&cm))
        .await
        .expect("apply updates");
    assert_eq!(
        applied.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("2")
    );

    // Cluster-scoped objects keep their status on create.
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]},
    }))
    .expect("node");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("node create");
    let got = nodes.get_status("n1").await.expect("node status");
    assert_eq!(
        got.status.and_then(|s| s.addresses).map(|a| a.len()),
        Some(1)
    );

    let deleted = pods
        .delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert!(deleted.is_left());
    assert!(pods.get_opt("a").await.expect("get").is_none());
    let missing = pods.get("a").await.expect_err("gone");
    match missing {
        kube::Error::Api(status) => assert_eq!(status.code, 404),
        other => panic!("unexpected {other}"),
    }

    let _ = server.shutdown().await;
}
