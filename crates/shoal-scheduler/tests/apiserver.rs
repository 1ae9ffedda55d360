//! The scheduler against Shoal's real apiserver and store on loopback: pods are bound
//! through the `binding` subresource, unschedulable pods get `PodScheduled=False`, a new
//! node lets a waiting pod in, a high-priority pod preempts a lower one, and RuntimeClasses
//! steer pods.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shoal_apiserver::testing::TestApiServer;
use tokio_util::sync::CancellationToken;

async fn wait_until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add_node(
    nodes: &Api<Node>,
    name: &str,
    cpu: &str,
    labels: serde_json::Value,
) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let status = json!({"status": {
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}]
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

fn pod(name: &str, cpu: &str, extra: serde_json::Value) -> anyhow::Result<Pod> {
    let mut value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}
    });
    if let (Some(spec), Some(extra)) = (value["spec"].as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    Ok(serde_json::from_value(value)?)
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_pods_reports_unschedulable_and_retries_on_new_nodes() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "shoal_scheduler=debug,warn".into()),
        )
        .with_test_writer()
        .try_init();
    let server = TestApiServer::start().await?;
    let client = server.client();
    let shutdown = CancellationToken::new();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    add_node(&nodes, "a", "2", json!({"disk": "ssd"})).await?;
    add_node(&nodes, "b", "2", json!({})).await?;

    let scheduler = tokio::spawn(shoal_scheduler::run(
        shoal_scheduler::Config::default(),
        client.clone(),
        shutdown.clone(),
    ));
    for i in 0..4 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("p{i}"), "500m", json!({}))?,
        )
        .await?;
    }
    pods.create(
        &PostParams::default(),
        &pod("ssd", "100m", json!({"nodeSelector": {"disk": "ssd"}}))?,
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("other", "100m", json!({"schedulerName": "someone-else"}))?,
    )
    .await?;
    wait_until("five pods bound", || async {
        let list = pods.list(&ListParams::default()).await?;
        Ok(list.items.iter().filter(|p| node_of(p).is_some()).count() == 5)
    })
    .await?;
    let list = pods.list(&ListParams::default()).await?;
    let on = |node: &str| {
        list.items
            .iter()
            .filter(|p| node_of(p).as_deref() == Some(node))
            .count()
    };
    assert_eq!(
        (on("a"), on("b")),
        (3, 2),
        "least allocated spreads the pods"
    );
    assert_eq!(node_of(&pods.get("ssd").await?).as_deref(), Some("a"));
    assert_eq!(node_of(&pods.get("other").await?), None);

    pods.create(&PostParams::default(), &pod("big", "3", json!({}))?)
        .await?;
    wait_until("unschedulable condition", || async {
        let big = pods.get("big").await?;
        let condition = big
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        Ok(condition.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref()
                    == Some(
                        "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.",
                    )
        }))
    })
    .await?;
    add_node(&nodes, "c", "8", json!({})).await?;
    wait_until("big pod bound to the new node", || async {
        Ok(node_of(&pods.get("big").await?).as_deref() == Some("c"))
    })
    .await?;

    shutdown.cancel();
    scheduler.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_many_pods() -> anyhow::Result<()> {
    const PODS: usize = 500;
    let server = TestApiServer::start().await?;
    let client = server.client();
    let shutdown = CancellationToken::new();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        add_node(&nodes, &format!("n{i:02}"), "64", json!({})).await?;
    }
    let created = futures::future::join_all((0..PODS).map(|i| {
        let pods = pods.clone();
        async move {
            let p = pod(&format!("p{i:04}"), "100m", json!({}))?;
            pods.create(&PostParams::default(), &p).await?;
            anyhow::Ok(())
        }
    }))
    .await;
    for result in created {
        result?;
    }
    let started = std::time::Instant::now();
    let scheduler = tokio::spawn(shoal_scheduler::run(
        shoal_scheduler::Config::default(),
        client.clone(),
        shutdown.clone(),
    ));
    wait_until("all pods bound", || async {
        let list = pods.list(&ListParams::default()).await?;
        Ok(list.items.iter().filter(|p| node_of(p).is_some()).count() == PODS)
    })
    .await?;
    let elapsed = started.elapsed();
    println!(
        "bound {PODS} pods in {elapsed:?} ({:.0} pods/s, debug build, shared machine)",
        PODS as f64 / elapsed.as_secs_f64()
    );
    let list = pods.list(&ListParams::default()).await?;
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for p in &list.items {
        *per_node.entry(node_of(p).unwrap_or_default()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 20);
    assert!(per_node.values().all(|n| *n == PODS / 20), "{per_node:?}");
    shutdown.cancel();
    scheduler.await??;
    Ok(())
}

fn scheduled_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
        .message
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preempts_lower_priority_pods_and_follows_runtime_classes() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let client = server.client();
    let shutdown = CancellationToken::new();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    add_node(
        &nodes,
        "a",
        "2",
        json!({"runtime.shoal.dev/wasmtime": "true"}),
    )
    .await?;
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    classes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": "high"}, "value": 1000
            }))?,
        )
        .await?;
    // Priority admission resolves the class name, and refuses an unknown one.
    let refused = pods
        .create(
            &PostParams::default(),
            &pod("nope", "1", json!({"priorityClassName": "nope"}))?,
        )
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403);
            assert_eq!(
                status.message,
                "pods \"nope\" is forbidden: no PriorityClass with name nope was found"
            );
        }
        other => bail!("an unknown PriorityClass must be refused, got {other:?}"),
    }

    let scheduler = tokio::spawn(shoal_scheduler::run(
        shoal_scheduler::Config::default(),
        client.clone(),
        shutdown.clone(),
    ));
    for name in ["low1", "low2"] {
        pods.create(
            &PostParams::default(),
            &pod(name, "1", json!({"terminationGracePeriodSeconds": 0}))?,
        )
        .await?;
    }
    wait_until("both low pods bound", || async {
        let list = pods.list(&ListParams::default()).await?;
        Ok(list.items.iter().filter(|p| node_of(p).is_some()).count() == 2)
    })
    .await?;
    let vip = pods
        .create(
            &PostParams::default(),
            &pod("vip", "1", json!({"priorityClassName": "high"}))?,
        )
        .await?;
    let spec = vip.spec.clone().unwrap_or_default();
    assert_eq!(spec.priority, Some(1000));
    assert_eq!(
        spec.preemption_policy.as_deref(),
        Some("PreemptLowerPriority")
    );
    wait_until(
        "the high-priority pod bound in a victim's place",
        || async {
            let vip = pods.get("vip").await?;
            let left = pods.list(&ListParams::default()).await?.items.len();
            Ok(node_of(&vip).as_deref() == Some("a") && left == 2)
        },
    )
    .await?;
    let vip = pods.get("vip").await?;
    assert_eq!(
        vip.status.and_then(|s| s.nominated_node_name).as_deref(),
        Some("a"),
        "the preemptor was nominated to the node"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), "default");
    let uid = vip.metadata.uid.unwrap_or_default();
    wait_until("a Preempted event on the victim", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.iter().any(|e| {
            e.reason.as_deref() == Some("Preempted")
                && e.message.as_deref()
                    == Some(format!("Preempted by pod {uid} on node a").as_str())
        }))
    })
    .await?;

    // An equal-priority pod preempts nobody and says why.
    pods.create(&PostParams::default(), &pod("peer", "1", json!({}))?)
        .await?;
    wait_until("the peer reported unschedulable", || async {
        Ok(scheduled_message(&pods.get("peer").await?).as_deref()
            == Some("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."))
    })
    .await?;

    // RuntimeClasses: the default wasmtime class lands on the node offering it; an unknown
    // class and a handler no node offers stay Pending with the reason.
    pods.create(
        &PostParams::default(),
        &pod("wasm", "0", json!({"runtimeClassName": "wasmtime"}))?,
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("container", "0", json!({"runtimeClassName": "runc"}))?,
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod("ghost", "0", json!({"runtimeClassName": "gvisor"}))?,
    )
    .await?;
    wait_until("the wasm pod bound", || async {
        Ok(node_of(&pods.get("wasm").await?).as_deref() == Some("a"))
    })
    .await?;
    wait_until("the runc pod held", || async {
        Ok(scheduled_message(&pods.get("container").await?).as_deref()
            == Some("0/1 nodes are available: 1 node(s) didn't offer runtime handler runc. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."))
    })
    .await?;
    wait_until("the unknown class held", || async {
        Ok(scheduled_message(&pods.get("ghost").await?).as_deref()
            == Some("0/1 nodes are available: runtimeclass.node.k8s.io \"gvisor\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."))
    })
    .await?;

    shutdown.cancel();
    scheduler.await??;
    Ok(())
}
