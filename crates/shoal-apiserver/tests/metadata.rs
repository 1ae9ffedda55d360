//! Metadata-only reads (`Accept: application/json;as=PartialObjectMetadata[List]`), as
//! controllers' metadata clients make them, through kube's own metadata API against a real
//! server: get, list with pages, watch, and a write's response.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use shoal_apiserver::testing::TestApiServer;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "meta"}},
        "data": {"big": "x".repeat(4096)},
    }))
    .expect("config map")
}

#[tokio::test]
async fn metadata_clients_get_partial_object_metadata() {
    let server = TestApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &config_map(name))
            .await
            .expect("create");
    }

    let one = api.get_metadata("a").await.expect("get metadata");
    let types = one.types.expect("types");
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("meta.k8s.io/v1", "PartialObjectMetadata")
    );
    assert_eq!(one.metadata.name.as_deref(), Some("a"));
    assert!(one.metadata.uid.is_some());

    // Pages of metadata, each item without its data.
    let first = api
        .list_metadata(&ListParams::default().labels("app=meta").limit(2))
        .await
        .expect("list metadata");
    assert_eq!(first.items.len(), 2);
    assert_eq!(first.types.kind, "PartialObjectMetadataList");
    let token = first.metadata.continue_.clone().expect("continue");
    let rest = api
        .list_metadata(
            &ListParams::default()
                .labels("app=meta")
                .continue_token(&token),
        )
        .await
        .expect("second page");
    let names: Vec<String> = first
        .items
        .iter()
        .chain(&rest.items)
        .filter_map(|m| m.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);

    // The raw body carries no data: metadata is all that is sent.
    let raw = server
        .client()
        .request_text(
            http::Request::get("/api/v1/namespaces/default/configmaps")
                .header(
                    "accept",
                    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                )
                .body(Vec::new())
                .expect("request"),
        )
        .await
        .expect("raw list");
    assert!(!raw.contains("xxxx"), "data leaked into a metadata list");
    assert!(raw.contains("\"kind\":\"PartialObjectMetadata\""));

    // A watch from the list's revision sees a change as metadata.
    let rv = rest.metadata.resource_version.clone().expect("rv");
    let mut events = api
        .watch_metadata(&WatchParams::default().labels("app=meta"), &rv)
        .await
        .expect("watch")
        .boxed();
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"seen": "yes"}}})),
    )
    .await
    .expect("patch");
    let event = loop {
        match events.try_next().await.expect("event").expect("open") {
            WatchEvent::Bookmark(_) => continue,
            other => break other,
        }
    };
    match event {
        WatchEvent::Modified(m) => {
            assert_eq!(m.metadata.name.as_deref(), Some("b"));
            assert_eq!(
                m.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("seen"))
                    .map(String::as_str),
                Some("yes")
            );
            assert_eq!(
                m.types.map(|t| t.kind).as_deref(),
                Some("PartialObjectMetadata")
            );
        }
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // A write asked for metadata answers with metadata.
    let patched = api
        .patch_metadata(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"extra": "1"}}})),
        )
        .await
        .expect("patch metadata");
    assert_eq!(
        patched.types.map(|t| t.kind).as_deref(),
        Some("PartialObjectMetadata")
    );
    let full = api.get("c").await.expect("get");
    assert_eq!(full.data.expect("data kept")["big"].len(), 4096);
    server.shutdown().await.expect("shutdown");
}
