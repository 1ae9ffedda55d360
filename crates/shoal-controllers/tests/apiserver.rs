//! The controllers against Shoal's real apiserver and store on loopback: a Deployment is
//! rolled out, updated and deleted, with a stand-in for the node agent marking pods ready.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "shoal_controllers=debug,warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh apiserver, a client for it and the shutdown token of the components under test.
async fn start() -> anyhow::Result<(TestApiServer, kube::Client, CancellationToken)> {
    init_tracing();
    let server = TestApiServer::start().await?;
    let client = server.client();
    Ok((server, client, CancellationToken::new()))
}

/// Creates a namespaced CustomResourceDefinition `plural.group` (v1, any fields) and returns
/// its resource.
async fn create_crd(
    client: &kube::Client,
    group: &str,
    plural: &str,
    kind: &str,
) -> anyhow::Result<kube::api::ApiResource> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
        ),
    );
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}")},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))?;
    crds.create(&PostParams::default(), &crd).await?;
    Ok(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, "v1", kind),
        plural,
    ))
}

/// Every controller with its default configuration, until `shutdown`.
fn spawn_controllers(
    client: &kube::Client,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<Result<(), shoal_controllers::Error>> {
    tokio::spawn(shoal_controllers::run(
        shoal_controllers::Config::default(),
        client.clone(),
        shutdown.clone(),
    ))
}

/// Marks every live pod Running and Ready, as a node agent would.
async fn fake_agent(pods: Api<Pod>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for pod in list.items {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready || pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let patch = json!({"status": {"phase": "Running", "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
                let name = pod.metadata.name.unwrap_or_default();
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn deployment(image: &str) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
        }
    }))?)
}

async fn rollout_done(deployments: &Api<Deployment>, revision: &str) -> anyhow::Result<bool> {
    let d = deployments.get("web").await?;
    let status = d.status.clone().unwrap_or_default();
    let annotations = d.metadata.annotations.clone().unwrap_or_default();
    Ok(status.observed_generation >= d.metadata.generation
        && status.updated_replicas == Some(3)
        && status.replicas == Some(3)
        && status.available_replicas == Some(3)
        && annotations
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str)
            == Some(revision))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_updates_and_is_collected() -> anyhow::Result<()> {
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    tokio::spawn(fake_agent(pods.clone(), shutdown.clone()));

    deployments
        .create(&PostParams::default(), &deployment("v1")?)
        .await
        .context("creating deployment")?;
    wait_until("first rollout", || rollout_done(&deployments, "1")).await?;
    let live = pods.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(live.items.len(), 3);
    for pod in &live.items {
        let owner = pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|o| o.first())
            .context("owner")?;
        assert_eq!(owner.kind, "ReplicaSet");
        assert!(
            pod.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key("pod-template-hash"))
        );
    }

    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "v2"}]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_until("second rollout", || rollout_done(&deployments, "2")).await?;
    let sets = replicasets.list(&ListParams::default()).await?;
    let mut replicas: Vec<(String, i32)> = sets
        .items
        .iter()
        .map(|rs| {
            (
                rs.metadata
                    .annotations
                    .clone()
                    .unwrap_or_default()
                    .get("deployment.kubernetes.io/revision")
                    .cloned()
                    .unwrap_or_default(),
                rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1),
            )
        })
        .collect();
    replicas.sort();
    assert_eq!(replicas, [("1".to_owned(), 0), ("2".to_owned(), 3)]);

    // Scaling the ReplicaSet's pods away: the ReplicaSet replaces a deleted pod.
    let victim = pods
        .list(&ListParams::default().labels("app=web"))
        .await?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .and_then(|p| p.metadata.name)
        .context("a pod")?;
    pods.delete(&victim, &DeleteParams::default()).await?;
    wait_until("replacement pod", || async {
        let live = pods.list(&ListParams::default().labels("app=web")).await?;
        Ok(live
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count()
            == 3
            && live
                .items
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(victim.as_str())))
    })
    .await?;

    deployments
        .delete("web", &DeleteParams::background())
        .await?;
    wait_until("replicasets and pods collected", || async {
        let sets = replicasets.list(&ListParams::default()).await?;
        let live = pods.list(&ListParams::default()).await?;
        Ok(sets.items.is_empty() && live.items.is_empty())
    })
    .await?;

    shutdown.cancel();
    controllers.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_deletion_waits_for_dependents() -> anyhow::Result<()> {
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let rs: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "fg", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "fg"}},
            "template": {"metadata": {"labels": {"app": "fg"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))?;
    replicasets.create(&PostParams::default(), &rs).await?;
    wait_until("two pods", || async {
        Ok(pods
            .list(&ListParams::default().labels("app=fg"))
            .await?
            .items
            .len()
            == 2)
    })
    .await?;
    // The pods are held by a finalizer, so the owner must wait for them visibly.
    let hold = json!({"metadata": {"finalizers": ["test.shoal.dev/hold"]}});
    let held: Vec<String> = pods
        .list(&ListParams::default().labels("app=fg"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    for name in &held {
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&hold))
            .await?;
    }
    replicasets
        .delete("fg", &DeleteParams::foreground())
        .await?;
    wait_until("the dependents to be deleting", || async {
        let live = pods.list(&ListParams::default().labels("app=fg")).await?;
        Ok(live.items.len() == 2
            && live
                .items
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_some()))
    })
    .await?;
    let owner = replicasets
        .get_opt("fg")
        .await?
        .context("the owner went before its dependents")?;
    assert!(owner.metadata.deletion_timestamp.is_some());
    assert!(
        owner
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeletion".to_owned())
    );
    let release = json!({"metadata": {"finalizers": null}});
    for name in &held {
        pods.patch(name, &PatchParams::default(), &Patch::Merge(&release))
            .await?;
    }
    wait_until("replicaset and pods gone", || async {
        let sets = replicasets.list(&ListParams::default()).await?;
        let live = pods.list(&ListParams::default().labels("app=fg")).await?;
        Ok(sets.items.is_empty() && live.items.is_empty())
    })
    .await?;

    // Orphan: the pods stay, without the owner reference.
    replicasets.create(&PostParams::default(), &rs).await?;
    wait_until("two pods again", || async {
        Ok(pods
            .list(&ListParams::default().labels("app=fg"))
            .await?
            .items
            .len()
            == 2)
    })
    .await?;
    replicasets.delete("fg", &DeleteParams::orphan()).await?;
    wait_until("orphaned pods", || async {
        let sets = replicasets.list(&ListParams::default()).await?;
        let live = pods.list(&ListParams::default().labels("app=fg")).await?;
        Ok(sets.items.is_empty()
            && live.items.len() == 2
            && live.items.iter().all(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(|o| o.is_empty())
            }))
    })
    .await?;

    shutdown.cancel();
    controllers.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account_back() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    for namespace in ["default", "kube-system", "team"] {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        wait_until(&format!("the default account of {namespace}"), || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?.is_some()) }
        })
        .await?;
    }
    // Deleted, it comes back (a new object: another uid).
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team");
    let first = accounts.get("default").await?.metadata.uid;
    accounts.delete("default", &DeleteParams::default()).await?;
    wait_until("the default account back", || {
        let accounts = accounts.clone();
        let first = first.clone();
        async move {
            Ok(accounts
                .get_opt("default")
                .await?
                .is_some_and(|sa| sa.metadata.uid != first))
        }
    })
    .await?;
    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// The collector follows every kind, custom resources included (found through discovery
/// once their CRD exists), and resolves owners by scope: a ConfigMap owned by a ConfigMap, by
/// a Node (cluster-scoped) and by a custom resource are collected when their owners go; a
/// custom resource deleted in the foreground waits for its dependent; a cluster-scoped
/// object naming a namespaced owner (unresolvable, as upstream) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_follows_every_kind_and_custom_resources() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume};
    use kube::api::DynamicObject;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let owned_by = |api_version: &str, kind: &str, name: &str, uid: &str, child: &str| {
        serde_json::from_value::<ConfigMap>(json!({
            "metadata": {"name": child, "ownerReferences": [{
                "apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
                "blockOwnerDeletion": true}]},
        }))
    };
    let gone = |name: &'static str| {
        let config_maps = config_maps.clone();
        async move { Ok(config_maps.get_opt(name).await?.is_none()) }
    };

    // Built-in kinds the collector did not follow before: a ConfigMap owning a ConfigMap,
    // and a PersistentVolume (cluster-scoped) naming the same namespaced owner.
    let parent: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "parent"}}))?;
    let parent = config_maps.create(&PostParams::default(), &parent).await?;
    let parent_uid = parent.metadata.uid.clone().context("uid")?;
    config_maps
        .create(
            &PostParams::default(),
            &owned_by("v1", "ConfigMap", "parent", &parent_uid, "child")?,
        )
        .await?;
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "pv-unresolvable", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent_uid}]},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/tmp/pv"}},
    }))?;
    volumes.create(&PostParams::default(), &volume).await?;
    config_maps
        .delete("parent", &DeleteParams::background())
        .await?;
    wait_until("the ConfigMap owned by a ConfigMap collected", || {
        gone("child")
    })
    .await?;

    // A cluster-scoped owner of a namespaced dependent.
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "gc-node"}}))?;
    let node = nodes.create(&PostParams::default(), &node).await?;
    config_maps
        .create(
            &PostParams::default(),
            &owned_by(
                "v1",
                "Node",
                "gc-node",
                node.metadata.uid.as_deref().context("uid")?,
                "node-child",
            )?,
        )
        .await?;
    nodes.delete("gc-node", &DeleteParams::background()).await?;
    wait_until("the ConfigMap owned by a Node collected", || {
        gone("node-child")
    })
    .await?;
    assert!(
        volumes.get_opt("pv-unresolvable").await?.is_some(),
        "a cluster-scoped object with a namespaced owner must be left alone"
    );

    // A CRD made while the collector runs; a ConfigMap owned by one of its objects.
    let gadget_resource = create_crd(&client, "gc.shoal.dev", "gadgets", "Gadget").await?;
    let gadgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &gadget_resource);
    let gadget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gc.shoal.dev/v1", "kind": "Gadget", "metadata": {"name": "g"}}))?;
    wait_until("the Gadget kind served", || async {
        match gadgets.create(&PostParams::default(), &gadget).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let gadget_uid = gadgets.get("g").await?.metadata.uid.context("uid")?;
    config_maps
        .create(
            &PostParams::default(),
            &owned_by(
                "gc.shoal.dev/v1",
                "Gadget",
                "g",
                &gadget_uid,
                "gadget-child",
            )?,
        )
        .await?;
    // Foreground: the Gadget waits (its finalizer removed only after the dependent goes).
    gadgets.delete("g", &DeleteParams::foreground()).await?;
    wait_until("the Gadget and its dependent gone", || async {
        Ok(gadgets.get_opt("g").await?.is_none()
            && config_maps.get_opt("gadget-child").await?.is_none())
    })
    .await?;

    // Orphan on a custom resource: the dependent stays, without the reference.
    gadgets.create(&PostParams::default(), &gadget).await?;
    let gadget_uid = gadgets.get("g").await?.metadata.uid.context("uid")?;
    config_maps
        .create(
            &PostParams::default(),
            &owned_by("gc.shoal.dev/v1", "Gadget", "g", &gadget_uid, "kept")?,
        )
        .await?;
    gadgets.delete("g", &DeleteParams::orphan()).await?;
    wait_until("the Gadget gone, its dependent orphaned", || async {
        let kept = config_maps.get_opt("kept").await?;
        Ok(gadgets.get_opt("g").await?.is_none()
            && kept.is_some_and(|c| {
                c.metadata
                    .owner_references
                    .as_ref()
                    .is_none_or(|o| o.is_empty())
            }))
    })
    .await?;

    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// Writes a node's Lease renewal and its Ready heartbeat, as its agent would, until `stop`.
async fn heartbeat(
    client: kube::Client,
    node: &str,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Node;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(client);
    while !stop.is_cancelled() {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}});
        leases
            .patch(
                node,
                &PatchParams::apply("test-agent").force(),
                &Patch::Apply(&lease),
            )
            .await?;
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "reason": "KubeletReady", "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
        nodes
            .patch_status(node, &PatchParams::default(), &Patch::Strategic(&status))
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

fn taint_keys(node: &k8s_openapi::api::core::v1::Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect()
}

/// A node whose heartbeats stop is marked Unknown and tainted; its pods leave as their
/// tolerations say (at once, after the admission's default seconds, never) while the node
/// that still heartbeats is left alone; when it comes back its taints go; when it is deleted
/// its remaining pods are collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_nodes_are_tainted_and_their_pods_evicted_then_collected() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    init_tracing();
    let shutdown = CancellationToken::new();
    let server = TestApiServer::start_with(shoal_apiserver::Config {
        admission: shoal_api::strategy::Admission {
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 2,
        },
        ..shoal_apiserver::Config::default()
    })
    .await?;
    let client = server.client();
    let config = shoal_controllers::Config {
        node_lifecycle_options: shoal_controllers::node_lifecycle::Options {
            monitor_period: Duration::from_millis(200),
            grace_period: Duration::from_secs(2),
            eviction_rate: 10.0,
            ..Default::default()
        },
        pod_gc_options: shoal_controllers::podgc::Options {
            period: Duration::from_millis(200),
            orphan_quarantine: Duration::from_millis(500),
            ..Default::default()
        },
        ..shoal_controllers::Config::default()
    };
    let controllers = tokio::spawn(shoal_controllers::run(
        config,
        client.clone(),
        shutdown.clone(),
    ));

    let nodes: Api<Node> = Api::all(client.clone());
    for name in ["n1", "n2"] {
        let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
        nodes
            .create(&PostParams::default(), &serde_json::from_value(node)?)
            .await?;
    }
    let n1_alive = CancellationToken::new();
    let n2_alive = CancellationToken::new();
    let beats = [
        tokio::spawn(heartbeat(client.clone(), "n1", n1_alive.clone())),
        tokio::spawn(heartbeat(client.clone(), "n2", n2_alive.clone())),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let unreachable = |seconds: Option<i64>| {
        json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": seconds}])
    };
    for (name, node, tolerations) in [
        ("defaulted", "n1", json!(null)),
        ("intolerant", "n1", unreachable(Some(0))),
        ("forever", "n1", unreachable(None)),
        ("elsewhere", "n2", json!(null)),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "tolerations": tolerations,
                     "containers": [{"name": "c", "image": "x"}]}});
        pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await?;
        let status = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    let defaulted = pods.get("defaulted").await?;
    let seconds: Vec<Option<i64>> = defaulted
        .spec
        .and_then(|s| s.tolerations)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.toleration_seconds)
        .collect();
    assert_eq!(
        seconds,
        [Some(300), Some(2)],
        "the configured default tolerations"
    );
    // Both nodes are healthy: nothing happens to them for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["n1", "n2"] {
        let node = nodes.get(name).await?;
        assert_eq!(
            taint_keys(&node),
            Vec::<String>::new(),
            "{name} was tainted while alive"
        );
    }
    assert!(
        pods.get("intolerant")
            .await?
            .metadata
            .deletion_timestamp
            .is_none()
    );

    n1_alive.cancel();
    wait_until("n1 to be Unknown and tainted", || async {
        let node = nodes.get("n1").await?;
        let unknown = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Ready" && c.status == "Unknown")
            });
        let keys = taint_keys(&node);
        Ok(unknown
            && keys.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_owned())
            && keys.contains(&"node.kubernetes.io/unreachable:NoExecute".to_owned()))
    })
    .await?;
    let deleting = |name: &'static str| {
        let pods = pods.clone();
        async move {
            let pod = pods.get(name).await?;
            let targeted = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "DisruptionTarget"
                            && c.reason.as_deref() == Some("DeletionByTaintManager")
                    })
                });
            anyhow::Ok(pod.metadata.deletion_timestamp.is_some() && targeted)
        }
    };
    wait_until("the intolerant pod to be evicted", || {
        deleting("intolerant")
    })
    .await?;
    wait_until("the defaulted pod to be evicted", || deleting("defaulted")).await?;
    // Not before its 2 s: its deletion (now + the 30 s grace) against the taint's start.
    let tainted_at = nodes
        .get("n1")
        .await?
        .spec
        .and_then(|s| s.taints)
        .into_iter()
        .flatten()
        .find(|t| t.effect == "NoExecute")
        .and_then(|t| t.time_added)
        .context("NoExecute taint with its time")?
        .0;
    let deleted_at = pods
        .get("defaulted")
        .await?
        .metadata
        .deletion_timestamp
        .context("deletion time")?
        .0;
    let waited = deleted_at.duration_since(tainted_at).as_secs() - 30;
    assert!(
        waited >= 1,
        "evicted {waited} s after the taint, before its toleration ran out"
    );
    // Ready False while its node is silent, but it stays.
    wait_until(
        "the pod that tolerates for ever to be marked not ready",
        || async {
            let pod = pods.get("forever").await?;
            let not_ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "False"));
            Ok(not_ready && pod.metadata.deletion_timestamp.is_none())
        },
    )
    .await?;
    let elsewhere = pods.get("elsewhere").await?;
    assert!(elsewhere.metadata.deletion_timestamp.is_none());
    assert!(taint_keys(&nodes.get("n2").await?).is_empty());

    // n1 comes back: its taints go.
    let n1_again = CancellationToken::new();
    let beat = tokio::spawn(heartbeat(client.clone(), "n1", n1_again.clone()));
    wait_until("n1 untainted", || async {
        Ok(taint_keys(&nodes.get("n1").await?).is_empty())
    })
    .await?;
    n1_again.cancel();
    beat.await??;

    // n1 is deleted: the pods still bound to it are collected, terminating or not.
    nodes.delete("n1", &DeleteParams::default()).await?;
    wait_until("n1's pods collected", || async {
        let left: Vec<String> = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        Ok(left == ["elsewhere"])
    })
    .await?;

    n2_alive.cancel();
    for beat in beats {
        beat.await??;
    }
    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// Deleting a namespace deletes everything in it, custom resources included; what a finalizer
/// holds is reported as remaining and the namespace waits for it, then goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_empties_every_kind_then_the_namespace() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::DynamicObject;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let thing_resource = create_crd(&client, "ns.shoal.dev", "things", "Thing").await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "doomed"}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let things: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "doomed", &thing_resource);
    let thing: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "ns.shoal.dev/v1", "kind": "Thing", "metadata": {"name": "t"}}))?;
    wait_until("the Thing kind served", || async {
        match things.create(&PostParams::default(), &thing).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    for (name, finalizers) in [
        ("plain", json!(null)),
        ("held", json!(["test.shoal.dev/hold"])),
    ] {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name, "finalizers": finalizers}}))?;
        config_maps.create(&PostParams::default(), &cm).await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await?;
    wait_until(
        "everything but the held ConfigMap gone, and reported",
        || async {
            let ns = namespaces.get("doomed").await?;
            let remaining = ns
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "NamespaceContentRemaining")
                .and_then(|c| c.message)
                .unwrap_or_default();
            let left: Vec<String> = config_maps
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .collect();
            Ok(things.get_opt("t").await?.is_none()
                && pods.get_opt("p").await?.is_none()
                && left == ["held"]
                && remaining == "Some resources are remaining: configmaps has 1 resource instances")
        },
    )
    .await?;
    let release = json!({"metadata": {"finalizers": null}});
    config_maps
        .patch("held", &PatchParams::default(), &Patch::Merge(&release))
        .await?;
    wait_until("the namespace gone", || async {
        Ok(namespaces.get_opt("doomed").await?.is_none())
    })
    .await?;
    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// Finishes every live pod as its name says (`ok-*` Succeeded, `run-*` never, others
/// Failed), as an agent would once its containers exit.
async fn finishing_agent(pods: Api<Pod>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for pod in list.items {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if name.starts_with("run-") {
                    continue;
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                let outcome = if name.starts_with("ok-") {
                    "Succeeded"
                } else {
                    "Failed"
                };
                if phase == Some(outcome) {
                    continue;
                }
                let patch = json!({"status": {"phase": outcome}});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Jobs run their pods to completion with durable counts (every tracking finalizer released),
/// stop at their backoff limit, and go after their TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_expire() -> anyhow::Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let agent = tokio::spawn(finishing_agent(pods.clone(), shutdown.clone()));
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let job = |name: &str, extra: serde_json::Value| -> anyhow::Result<Job> {
        let mut spec = json!({"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "i"}]}}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        Ok(serde_json::from_value(
            json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name}, "spec": spec}),
        )?)
    };
    jobs.create(
        &PostParams::default(),
        &job("ok", json!({"completions": 3, "parallelism": 2}))?,
    )
    .await?;
    jobs.create(
        &PostParams::default(),
        &job("bad", json!({"backoffLimit": 0}))?,
    )
    .await?;
    let condition = |job: &Job, kind: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == kind && c.status == "True"))
            .and_then(|c| c.reason.clone())
    };
    wait_until("the ok Job complete", || async {
        let job = jobs.get("ok").await?;
        let status = job.status.clone().unwrap_or_default();
        Ok(
            condition(&job, "Complete").as_deref() == Some("CompletionsReached")
                && status.succeeded == Some(3)
                && status.completion_time.is_some(),
        )
    })
    .await?;
    wait_until("the bad Job failed", || async {
        let job = jobs.get("bad").await?;
        Ok(
            condition(&job, "Failed").as_deref() == Some("BackoffLimitExceeded")
                && job.status.and_then(|s| s.failed) == Some(1),
        )
    })
    .await?;
    let ok_pods = pods
        .list(&ListParams::default().labels("job-name=ok"))
        .await?;
    assert_eq!(ok_pods.items.len(), 3, "exactly completions pods ran");
    wait_until("every tracking finalizer released", || async {
        Ok(pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .all(|p| {
                p.metadata
                    .finalizers
                    .as_ref()
                    .is_none_or(|f| !f.iter().any(|f| f == "batch.kubernetes.io/job-tracking"))
            }))
    })
    .await?;

    // A Job deleted with its pods orphaned lets go of them (no finalizer left behind).
    jobs.create(&PostParams::default(), &job("run", json!({}))?)
        .await?;
    wait_until("the run Job's pod", || async {
        Ok(!pods
            .list(&ListParams::default().labels("job-name=run"))
            .await?
            .items
            .is_empty())
    })
    .await?;
    jobs.delete("run", &DeleteParams::orphan()).await?;
    wait_until("the orphaned pod released", || async {
        let left = pods
            .list(&ListParams::default().labels("job-name=run"))
            .await?;
        Ok(left.items.len() == 1
            && left.items.iter().all(|p| {
                p.metadata.finalizers.as_ref().is_none_or(Vec::is_empty)
                    && p.metadata
                        .owner_references
                        .as_ref()
                        .is_none_or(Vec::is_empty)
            }))
    })
    .await?;

    // A TTL after finishing deletes the Job, and the collector its pods.
    let patch = json!({"spec": {"ttlSecondsAfterFinished": 1}});
    jobs.patch("ok", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_until("the ok Job and its pods gone", || async {
        let left = pods
            .list(&ListParams::default().labels("job-name=ok"))
            .await?;
        Ok(jobs.get_opt("ok").await?.is_none() && left.items.is_empty())
    })
    .await?;
    shutdown.cancel();
    agent.await?;
    controllers.await??;
    Ok(())
}

/// A CronJob's schedule passes while the controllers are down: on their return only the most
/// recent missed run is made, and only if it is within `startingDeadlineSeconds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_cron_runs_are_handled_per_starting_deadline() -> anyhow::Result<()> {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let (_server, client, shutdown) = start().await?;
    let cronjobs: Api<CronJob> = Api::namespaced(client.clone(), "default");
    // Yearly at New Year, UTC: the runs of 2025 and 2026 were missed (the last one ran at
    // New Year 2024).
    for (name, deadline) in [("yearly", None), ("punctual", Some(300))] {
        let cj: CronJob = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"schedule": "0 0 1 1 *", "timeZone": "Etc/UTC",
                "startingDeadlineSeconds": deadline,
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "i"}]}}}}}
        }))?;
        cronjobs.create(&PostParams::default(), &cj).await?;
        let status = json!({"status": {"lastScheduleTime": "2024-01-01T00:00:00Z"}});
        cronjobs
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    // An invalid schedule or zone is refused, naming the field.
    let bad: CronJob = serde_json::from_value(json!({
        "metadata": {"name": "bad"},
        "spec": {"schedule": "0 0 1 1 *", "timeZone": "Mars/Olympus",
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "i"}]}}}}}
    }))?;
    match cronjobs.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            assert!(s.message.contains("spec.timeZone"), "{}", s.message);
        }
        other => bail!("invalid time zone accepted: {other:?}"),
    }
    let mut long = bad.clone();
    long.metadata.name = Some("n".repeat(53));
    if let Some(spec) = long.spec.as_mut() {
        spec.time_zone = None;
    }
    match cronjobs.create(&PostParams::default(), &long).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            assert!(s.message.contains("metadata.name"), "{}", s.message);
        }
        other => bail!("a name its Jobs cannot carry was accepted: {other:?}"),
    }

    let controllers = spawn_controllers(&client, &shutdown);
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let new_year: k8s_openapi::jiff::Timestamp = "2026-01-01T00:00:00Z".parse()?;
    let expected = format!("yearly-{}", new_year.as_second() / 60);
    wait_until("the most recent missed run made", || async {
        let cj = cronjobs.get("yearly").await?;
        let scheduled = cj.status.and_then(|s| s.last_schedule_time).map(|t| t.0);
        Ok(jobs.get_opt(&expected).await?.is_some() && scheduled == Some(new_year))
    })
    .await?;
    let made: Vec<String> = jobs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert_eq!(
        made,
        [expected],
        "one run for the missed times, none past its deadline"
    );
    let punctual = cronjobs.get("punctual").await?;
    let scheduled = punctual
        .status
        .and_then(|s| s.last_schedule_time)
        .map(|t| t.0);
    assert_eq!(scheduled, Some("2024-01-01T00:00:00Z".parse()?));
    shutdown.cancel();
    controllers.await??;
    Ok(())
}
