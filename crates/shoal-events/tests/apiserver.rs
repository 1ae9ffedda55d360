//! The recorder against Shoal's real apiserver and store: aggregation into `count`, the spam
//! filter's budget per object, and cluster-scoped objects' events in `default`, found the way
//! `kubectl describe` looks for them (field selectors on the involved object).

use std::time::Duration;

use anyhow::bail;
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, ListParams};
use shoal_apiserver::testing::TestApiServer;
use shoal_events::{Options, Recorder, Source};
use tokio_util::sync::CancellationToken;

async fn events_about(api: &Api<Event>, name: &str, want: usize) -> anyhow::Result<Vec<Event>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        let events = api.list(&params).await?.items;
        let total: i32 = events.iter().map(|e| e.count.unwrap_or(1)).sum();
        if usize::try_from(total)? >= want {
            return Ok(events);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out: {total} of {want} events about {name}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_aggregated_rate_limited_and_found_by_object() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let client = server.client();
    let shutdown = CancellationToken::new();
    let source = Source {
        component: "kubelet".into(),
        host: Some("n1".into()),
    };
    let options = Options {
        burst: 5,
        ..Options::default()
    };
    let recorder = Recorder::start(client.clone(), source, options, shutdown.clone());
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some("default".into()),
        name: Some("web".into()),
        uid: Some("uid-web".into()),
        ..ObjectReference::default()
    };
    for _ in 0..3 {
        recorder.warning(&pod, "BackOff", "Back-off restarting failed container");
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let found = events_about(&events, "web", 3).await?;
    assert_eq!(
        found.len(),
        1,
        "three equal events are one Event: {found:?}"
    );
    let event = &found[0];
    assert_eq!(event.count, Some(3));
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("BackOff"));
    let from = event.source.as_ref().and_then(|s| s.host.as_deref());
    assert_eq!(from, Some("n1"));

    // Two more fit the budget of 5; the rest are dropped.
    for i in 0..10 {
        recorder.normal(&pod, "Started", format!("Started container {i}"));
    }
    let found = events_about(&events, "web", 5).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = events_about(&events, "web", 5).await?;
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(
        after.len(),
        3,
        "events beyond the budget were written: {after:?}"
    );

    // A Node's events live in `default`.
    let node = ObjectReference {
        kind: Some("Node".into()),
        name: Some("n1".into()),
        uid: Some("n1".into()),
        ..ObjectReference::default()
    };
    recorder.normal(&node, "NodeNotReady", "Node n1 status is now: NodeNotReady");
    let found = events_about(&events, "n1", 1).await?;
    assert_eq!(found[0].involved_object.kind.as_deref(), Some("Node"));
    shutdown.cancel();
    Ok(())
}
