//! The agent against the real `shoal-apiserver` (over a real `shoal-store` in a temp dir), with
//! the agent's fake runtime (`shoal_agent::testing`): registration, a pod run to completion,
//! logs through the `pods/log` proxy, graceful deletion. The real Wasm runtime behind the real
//! apiserver is covered by the end-to-end tests of `shoal-cli`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use shoal_agent::testing::FakeRuntime;
use shoal_apiserver::testing::TestApiServer;
use shoal_runtime::Runtime;
use tokio_util::sync::CancellationToken;

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn agent_config(apiserver: &TestApiServer) -> shoal_agent::Config {
    shoal_agent::Config {
        node_name: "n1".to_owned(),
        data_dir: apiserver.dir().join("agent"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        node_ip: None,
        capacity: shoal_agent::NodeResources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            pods: 110,
        },
        labels: BTreeMap::new(),
        tls: None,
        lease_duration_seconds: shoal_agent::LEASE_DURATION_SECONDS,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_pods_against_the_real_apiserver() {
    let apiserver = TestApiServer::start_with(shoal_apiserver::Config {
        bookmark_interval: Duration::from_secs(1),
        ..shoal_apiserver::Config::default()
    })
    .await
    .expect("apiserver");
    let client = apiserver.client();

    let runtime = Arc::new(FakeRuntime::default());
    let agent_shutdown = CancellationToken::new();
    let agent = tokio::spawn(shoal_agent::run(
        agent_config(&apiserver),
        client.clone(),
        vec![Arc::clone(&runtime) as Arc<dyn Runtime>],
        agent_shutdown.clone(),
    ));

    let nodes: Api<Node> = Api::all(client.clone());
    let node = eventually("node ready", || async {
        nodes.get_opt("n1").await.ok().flatten().filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
    })
    .await;
    assert_eq!(
        node.metadata.labels.as_ref().expect("labels")["shoal.dev/wasm"],
        "true"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    eventually("lease", || async {
        leases.get_opt("n1").await.ok().flatten()
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "settings"},
        "data": {"greeting": "hi", "color": "blue"}
    }))
    .expect("configmap");
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "once"},
        "spec": {"nodeName": "n1", "restartPolicy": "Never",
                 "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}],
                 "containers": [{"name": "main", "image": "fake/exit0", "args": ["a", "b"],
                                 "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}}],
                                 "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    eventually("pod succeeded", || async {
        pods.get("once")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
    })
    .await;
    let logs = pods
        .logs("once", &LogParams::default())
        .await
        .expect("logs through the apiserver");
    assert_eq!(
        logs,
        "argv=[\"main\", \"a\", \"b\"]\nenv=[(\"GREETING\", \"hi\")]\n\
         /etc/cfg: color=blue,greeting=hi\nmounts=1\n"
    );

    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "server"},
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "main", "image": "fake/run"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    eventually("pod running", || async {
        pods.get("server")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    pods.delete("server", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("pod gone", || async {
        matches!(pods.get_opt("server").await, Ok(None)).then_some(())
    })
    .await;
    let stops: Vec<String> = runtime
        .events()
        .into_iter()
        .filter(|e| e.starts_with("stop "))
        .collect();
    assert_eq!(stops, ["stop default/server/main grace=2s"]);

    agent_shutdown.cancel();
    agent
        .await
        .expect("agent task")
        .expect("agent stops cleanly");
    let _ = apiserver.shutdown().await;
}

/// A node that comes back finds its pod deleted while it was away (evicted and replaced
/// elsewhere): the pod is removed without its containers ever starting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_while_its_agent_was_away_is_not_started_again() {
    let apiserver = TestApiServer::start().await.expect("apiserver");
    let client = apiserver.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Several pods: a worker that did start them would race its own stop, and lose some.
    const PODS: usize = 20;
    for i in 0..PODS {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("evicted-{i}")},
            "spec": {"nodeName": "n1", "containers": [{"name": "main", "image": "fake/run"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create");
        pods.delete(&format!("evicted-{i}"), &DeleteParams::default())
            .await
            .expect("delete");
        let terminating = pods
            .get(&format!("evicted-{i}"))
            .await
            .expect("bound pods wait for their agent");
        assert!(terminating.metadata.deletion_timestamp.is_some());
    }

    let runtime = Arc::new(FakeRuntime::default());
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(shoal_agent::run(
        agent_config(&apiserver),
        client.clone(),
        vec![Arc::clone(&runtime) as Arc<dyn Runtime>],
        shutdown.clone(),
    ));
    eventually("the agent to remove the pods", || async {
        pods.list(&Default::default())
            .await
            .ok()
            .filter(|l| l.items.is_empty())
    })
    .await;
    let events = runtime.events();
    assert!(
        !events.iter().any(|e| e.starts_with("start ")),
        "containers started: {events:?}"
    );
    shutdown.cancel();
    agent.await.expect("agent task").expect("agent stops");
    let _ = apiserver.shutdown().await;
}
