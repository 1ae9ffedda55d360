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
    fake_agent_where(pods, shutdown, |_| true).await;
}

/// Marks the live pods `starts` accepts Running and Ready; the others stay Pending.
async fn fake_agent_where(pods: Api<Pod>, shutdown: CancellationToken, starts: fn(&Pod) -> bool) {
    while !shutdown.is_cancelled() {
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for pod in list.items.into_iter().filter(starts) {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready || pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let name = pod.metadata.name.unwrap_or_default();
                // A distinct address per pod, as a node's pod network would give.
                let n = name
                    .bytes()
                    .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
                let ip = format!(
                    "10.{}.{}.{}",
                    (n >> 16) & 0xff,
                    (n >> 8) & 0xff,
                    (n & 0xfe) + 1
                );
                let patch = json!({"status": {"phase": "Running", "podIP": ip, "conditions": [
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
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
                // Pods of `fatal-` Jobs exit with 42, the others with 1 or 0.
                let code = match outcome {
                    "Succeeded" => 0,
                    _ if name.starts_with("fatal-") => 42,
                    _ => 1,
                };
                let patch = json!({"status": {"phase": outcome, "containerStatuses": [
                    {"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                     "state": {"terminated": {"exitCode": code}}}]}});
                let _ = pods
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A pod failure policy fails its Job at the first pod exiting with a listed code, without
/// waiting for the backoff limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_failure_policy_fails_the_job_at_once() -> anyhow::Result<()> {
    use k8s_openapi::api::batch::v1::Job;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let jobs: Api<Job> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    tokio::spawn(finishing_agent(pods.clone(), shutdown.clone()));
    let job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "fatal", "namespace": "default"},
        "spec": {"backoffLimit": 6,
            "podFailurePolicy": {"rules": [{"action": "FailJob",
                "onExitCodes": {"operator": "In", "values": [42]}}]},
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "i"}]}}}
    }))?;
    jobs.create(&PostParams::default(), &job).await?;
    wait_until("failed by the policy", || async {
        let status = jobs.get("fatal").await?.status.unwrap_or_default();
        Ok(status.conditions.unwrap_or_default().iter().any(|c| {
            c.type_ == "Failed"
                && c.status == "True"
                && c.reason.as_deref() == Some("PodFailurePolicy")
        }) && status.failed == Some(1))
    })
    .await?;
    shutdown.cancel();
    controllers.await??;
    Ok(())
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

/// Records the names of pods in `namespace` in the order their deletions are seen.
fn record_deletions(
    client: &kube::Client,
    shutdown: &CancellationToken,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let record = std::sync::Arc::clone(&seen);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher::watcher(pods, watcher::Config::default()));
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                () = stop.cancelled() => None,
            };
            let Some(event) = event else { break };
            if let Ok(Event::Delete(pod)) = event {
                let mut names = record.lock().unwrap_or_else(|e| e.into_inner());
                names.push(pod.metadata.name.unwrap_or_default());
            }
        }
    });
    seen
}

fn revision_label(pod: &Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .cloned()
        .unwrap_or_default()
}

/// A StatefulSet makes its pods in order, each with its name, hostname and claim; rolls a new
/// template from the highest ordinal down; records revisions, and a rollback renumbers the
/// old one instead of copying it; scales down from the top, keeping the claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_orders_pods_updates_from_the_top_and_keeps_history() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let set: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": 3, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "c", "image": "db:1"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}]}
    }))?;
    sets.create(&PostParams::default(), &set).await?;
    wait_until("db-0 and its claim", || async {
        Ok(pods.get_opt("db-0").await?.is_some() && claims.get_opt("data-db-0").await?.is_some())
    })
    .await?;
    // Nothing marks db-0 ready yet: db-1 must wait for it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pods.get_opt("db-1").await?.is_none(),
        "db-1 made before db-0 was ready"
    );
    tokio::spawn(fake_agent(pods.clone(), shutdown.clone()));
    let ready = |want: i32| {
        let sets = sets.clone();
        async move {
            let s = sets.get("db").await?;
            let status = s.status.unwrap_or_default();
            Ok::<_, anyhow::Error>(
                status.observed_generation >= s.metadata.generation
                    && status.ready_replicas == Some(want)
                    && status.replicas == want
                    && status.updated_replicas == Some(want)
                    && status.current_revision == status.update_revision,
            )
        }
    };
    wait_until("three ready replicas", || ready(3)).await?;
    for ordinal in 0..3 {
        let pod = pods.get(&format!("db-{ordinal}")).await?;
        let spec = pod.spec.context("spec")?;
        assert_eq!(
            spec.hostname.as_deref(),
            Some(format!("db-{ordinal}").as_str())
        );
        assert_eq!(spec.subdomain.as_deref(), Some("db"));
        let claim = spec
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find_map(|v| v.persistent_volume_claim)
            .context("claim volume")?;
        assert_eq!(claim.claim_name, format!("data-db-{ordinal}"));
        assert!(claims.get_opt(&claim.claim_name).await?.is_some());
    }
    let first = sets.get("db").await?.status.unwrap_or_default();
    let first_revision = first.update_revision.clone().context("revision")?;

    let deletions = record_deletions(&client, &shutdown);
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "db:2"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_until("rolled to db:2", || async {
        let s = sets.get("db").await?.status.unwrap_or_default();
        Ok(ready(3).await? && s.update_revision.as_deref() != Some(first_revision.as_str()))
    })
    .await?;
    let order = deletions.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(order, ["db-2", "db-1", "db-0"]);
    let second = sets.get("db").await?.status.unwrap_or_default();
    for pod in pods
        .list(&ListParams::default().labels("app=db"))
        .await?
        .items
    {
        assert_eq!(Some(revision_label(&pod)), second.update_revision);
    }
    let numbers = |list: Vec<ControllerRevision>| {
        let mut v: Vec<(String, i64)> = list
            .into_iter()
            .map(|r| (r.metadata.name.unwrap_or_default(), r.revision))
            .collect();
        v.sort_by_key(|(_, n)| *n);
        v
    };
    let history = numbers(revisions.list(&ListParams::default()).await?.items);
    assert_eq!(
        history,
        [
            (first_revision.clone(), 1),
            (second.update_revision.clone().context("revision")?, 2)
        ]
    );

    // Back to db:1: the first revision is renumbered, not copied.
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "db:1"}]}}}});
    sets.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_until("rolled back", || async {
        let s = sets.get("db").await?.status.unwrap_or_default();
        Ok(ready(3).await? && s.update_revision.as_deref() == Some(first_revision.as_str()))
    })
    .await?;
    let history = numbers(revisions.list(&ListParams::default()).await?.items);
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[1], (first_revision.clone(), 3));

    // Scale to 1: db-2 then db-1 go; claims stay (whenScaled defaults to Retain).
    deletions.lock().unwrap_or_else(|e| e.into_inner()).clear();
    sets.patch(
        "db",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 1}})),
    )
    .await?;
    wait_until("scaled to one", || ready(1)).await?;
    let order = deletions.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(order, ["db-2", "db-1"]);
    assert_eq!(claims.list(&ListParams::default()).await?.items.len(), 3);

    // Deleted with --cascade=orphan and made again (how volumeClaimTemplates are changed):
    // the new set adopts the pod and the revisions, and replaces nothing.
    let kept = pods.get("db-0").await?.metadata.uid;
    sets.delete("db", &DeleteParams::orphan()).await?;
    wait_until("set gone, pod orphaned", || async {
        let pod = pods.get("db-0").await?;
        Ok(sets.get_opt("db").await?.is_none()
            && pod.metadata.owner_references.unwrap_or_default().is_empty())
    })
    .await?;
    let mut again = set.clone();
    if let Some(spec) = again.spec.as_mut() {
        spec.replicas = Some(1);
    }
    let again = sets.create(&PostParams::default(), &again).await?;
    wait_until("adopted", || async {
        let status = sets.get("db").await?.status.unwrap_or_default();
        let history = revisions.list(&ListParams::default()).await?.items;
        Ok(ready(1).await?
            && status.update_revision.as_deref() == Some(first_revision.as_str())
            && history.len() == 2
            && history.iter().all(|r| {
                r.metadata.owner_references.as_ref().is_some_and(|o| {
                    o.iter()
                        .any(|o| Some(&o.uid) == again.metadata.uid.as_ref())
                })
            }))
    })
    .await?;
    assert_eq!(
        pods.get("db-0").await?.metadata.uid,
        kept,
        "db-0 was replaced"
    );

    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// A DaemonSet runs one pod per eligible node, follows nodes as they come and as taints
/// change, rolls a new template with surge (new pod first, old one after), and goes with its
/// pods and revisions when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_and_rolls_with_surge() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
    use k8s_openapi::api::core::v1::Node;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let nodes: Api<Node> = Api::all(client.clone());
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), "default");
    let node = |name: &str| -> anyhow::Result<Node> {
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"role": "worker"}}}),
        )?)
    };
    for name in ["n1", "n2"] {
        nodes.create(&PostParams::default(), &node(name)?).await?;
    }
    tokio::spawn(fake_agent(pods.clone(), shutdown.clone()));
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "updateStrategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"nodeSelector": {"role": "worker"},
                    "containers": [{"name": "c", "image": "agent:1"}]}}}
    }))?;
    sets.create(&PostParams::default(), &ds).await?;
    // Node -> revision label of its live pods.
    let placement = || async {
        let mut map: Vec<(String, String)> = pods
            .list(&ListParams::default().labels("app=agent"))
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                let affinity = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.affinity.as_ref())
                    .and_then(|a| a.node_affinity.as_ref())
                    .and_then(|n| {
                        n.required_during_scheduling_ignored_during_execution
                            .as_ref()
                    })
                    .map(|s| {
                        s.node_selector_terms[0]
                            .match_fields
                            .clone()
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                let node = affinity
                    .first()
                    .and_then(|r| r.values.as_ref())
                    .and_then(|v| v.first().cloned())
                    .unwrap_or_default();
                (node, revision_label(p))
            })
            .collect();
        map.sort();
        Ok::<_, anyhow::Error>(map)
    };
    let on_nodes = |want: &'static [&'static str]| async move {
        let nodes: Vec<String> = placement().await?.into_iter().map(|(n, _)| n).collect();
        Ok::<_, anyhow::Error>(nodes == want)
    };
    wait_until("a pod on n1 and n2", || on_nodes(&["n1", "n2"])).await?;
    wait_until("status counts both", || async {
        let s = sets.get("agent").await?.status.unwrap_or_default();
        Ok(s.desired_number_scheduled == 2 && s.number_ready == 2 && s.number_available == Some(2))
    })
    .await?;

    // A new node gets a pod; one that no longer matches, or gains a NoExecute taint, loses it.
    nodes.create(&PostParams::default(), &node("n3")?).await?;
    wait_until("a pod on n3", || on_nodes(&["n1", "n2", "n3"])).await?;
    nodes
        .patch(
            "n2",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}]}}),
            ),
        )
        .await?;
    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"role": "edge"}}})),
        )
        .await?;
    wait_until("only n1 left", || on_nodes(&["n1"])).await?;

    // Roll to agent:2 with surge: the new pod comes up beside the old, then the old goes.
    nodes
        .patch(
            "n3",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"role": "worker"}}})),
        )
        .await?;
    wait_until("n3 back", || on_nodes(&["n1", "n3"])).await?;
    let deletions = record_deletions(&client, &shutdown);
    let before: Vec<String> = pods
        .list(&ListParams::default().labels("app=agent"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:2"}]}}}});
    sets.patch("agent", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_until("rolled to agent:2", || async {
        let s = sets.get("agent").await?;
        let status = s.status.clone().unwrap_or_default();
        let placed = placement().await?;
        Ok(status.observed_generation >= s.metadata.generation
            && status.updated_number_scheduled == Some(2)
            && status.number_available == Some(2)
            && placed.len() == 2
            && placed[0].1 == placed[1].1)
    })
    .await?;
    let mut gone = deletions.lock().unwrap_or_else(|e| e.into_inner()).clone();
    gone.sort();
    let mut before = before;
    before.sort();
    assert_eq!(gone, before, "exactly the old pods were deleted");
    let history = revisions.list(&ListParams::default()).await?.items;
    let mut numbers: Vec<i64> = history.iter().map(|r| r.revision).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2]);

    sets.delete("agent", &DeleteParams::background()).await?;
    wait_until("pods and revisions collected", || async {
        Ok(pods.list(&ListParams::default()).await?.items.is_empty()
            && revisions
                .list(&ListParams::default())
                .await?
                .items
                .is_empty())
    })
    .await?;
    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// PodDisruptionBudget status follows the pods and their Deployment's scale: a budget of
/// `maxUnavailable: 1` over three ready replicas allows one disruption, and none once the
/// Deployment wants more than are ready; a budget over pods of a controller without a scale
/// says SyncFailed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruption_budgets_report_what_may_go() -> anyhow::Result<()> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let agent_stop = CancellationToken::new();
    tokio::spawn(fake_agent(pods.clone(), agent_stop.clone()));
    deployments
        .create(&PostParams::default(), &deployment("v1")?)
        .await?;
    wait_until("rollout", || rollout_done(&deployments, "1")).await?;
    let budget = |name: &str, spec: serde_json::Value| -> anyhow::Result<PodDisruptionBudget> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }))?)
    };
    budgets
        .create(
            &PostParams::default(),
            &budget(
                "web",
                json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}),
            )?,
        )
        .await?;
    let status_is = |name: &'static str, want: (i32, i32, i32, i32, &'static str)| {
        let budgets = budgets.clone();
        async move {
            let s = budgets.get(name).await?.status.unwrap_or_default();
            let reason = s
                .conditions
                .as_ref()
                .and_then(|c| c.first())
                .map(|c| c.reason.clone())
                .unwrap_or_default();
            Ok::<_, anyhow::Error>(
                (
                    s.expected_pods,
                    s.current_healthy,
                    s.desired_healthy,
                    s.disruptions_allowed,
                    reason.as_str(),
                ) == want,
            )
        }
    };
    wait_until("one disruption allowed", || {
        status_is("web", (3, 3, 2, 1, "SufficientPods"))
    })
    .await?;
    // Scale to 5 with no agent marking the new pods ready: 4 must be healthy, 3 are.
    agent_stop.cancel();
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 5}})),
        )
        .await?;
    wait_until("no disruption allowed", || {
        status_is("web", (5, 3, 4, 0, "InsufficientPods"))
    })
    .await?;
    // A pod whose controller has no scale under a percentage: the budget cannot be judged.
    let holders: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), "default");
    let holder = holders
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "holder"}}))?,
        )
        .await?;
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "held", "labels": {"app": "job"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "holder",
                "uid": holder.metadata.uid, "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        )?,
    )
    .await?;
    budgets
        .create(
            &PostParams::default(),
            &budget(
                "job",
                json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "job"}}}),
            )?,
        )
        .await?;
    wait_until("sync failed", || {
        status_is("job", (0, 0, 0, 0, "SyncFailed"))
    })
    .await?;
    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// A Service's Endpoints and EndpointSlices follow its ready pods as they come and go, and
/// go with the Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_slices_follow_ready_pods() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    tokio::spawn(fake_agent(pods.clone(), shutdown.clone()));
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))?;
    services.create(&PostParams::default(), &svc).await?;
    deployments
        .create(&PostParams::default(), &deployment("v1")?)
        .await?;
    let addresses = |want: usize| {
        let endpoints = endpoints.clone();
        let slices = slices.clone();
        let pods = pods.clone();
        async move {
            let Some(ep) = endpoints.get_opt("web").await? else {
                return Ok(false);
            };
            let mut ips: Vec<String> = ep
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.ip.clone())
                .collect();
            ips.sort();
            let ports: Vec<i32> = ep
                .subsets
                .iter()
                .flatten()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| p.port)
                .collect();
            let mut ready_ips: Vec<String> = pods
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()))
                .collect();
            ready_ips.sort();
            let mut slice_ips: Vec<String> = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await?
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.clone())
                .collect();
            slice_ips.sort();
            Ok::<_, anyhow::Error>(
                ips.len() == want && ips == ready_ips && slice_ips == ips && ports == [8080],
            )
        }
    };
    wait_until("three addresses", || addresses(3)).await?;
    // Deleted by someone else: put back.
    endpoints.delete("web", &DeleteParams::default()).await?;
    wait_until("endpoints back", || addresses(3)).await?;
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 1}})),
        )
        .await?;
    wait_until("one address", || addresses(1)).await?;
    // A pod whose labels leave the selector leaves the Endpoints. A bare pod: no ReplicaSet
    // makes a replacement whose own event would refresh the Service anyway.
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "bare", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        )?,
    )
    .await?;
    wait_until("the bare pod listed", || addresses(2)).await?;
    let leaver_ip = pods
        .get("bare")
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("ip")?;
    pods.patch(
        "bare",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"labels": {"app": "elsewhere"}}})),
    )
    .await?;
    wait_until("the relabelled pod gone from the endpoints", || async {
        let listed = endpoints
            .get("web")
            .await?
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .any(|a| a.ip == leaver_ip);
        Ok(!listed && addresses(1).await?)
    })
    .await?;
    services.delete("web", &DeleteParams::default()).await?;
    wait_until("endpoints and slices gone", || async {
        Ok(endpoints.get_opt("web").await?.is_none()
            && slices.list(&ListParams::default()).await?.items.is_empty())
    })
    .await?;
    shutdown.cancel();
    controllers.await??;
    Ok(())
}

/// A rollout whose new pods never become ready runs out of its progress deadline; scaling the
/// Deployment in the middle of it resizes both ReplicaSets in proportion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_rollout_exceeds_its_deadline_and_scales_proportionally() -> anyhow::Result<()> {
    let (_server, client, shutdown) = start().await?;
    let controllers = spawn_controllers(&client, &shutdown);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // Only v1 pods ever start.
    tokio::spawn(fake_agent_where(pods.clone(), shutdown.clone(), |pod| {
        pod.spec.as_ref().is_some_and(|s| {
            s.containers
                .iter()
                .all(|c| c.image.as_deref() == Some("v1"))
        })
    }));
    let mut d = deployment("v1")?;
    d.spec.as_mut().context("spec")?.progress_deadline_seconds = Some(2);
    deployments.create(&PostParams::default(), &d).await?;
    wait_until("rollout", || rollout_done(&deployments, "1")).await?;
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "v2"}]}}}});
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let progressing = || async {
        let d = deployments.get("web").await?;
        Ok::<_, anyhow::Error>(
            d.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Progressing")
                .map(|c| (c.status, c.reason.unwrap_or_default())),
        )
    };
    wait_until("deadline exceeded", || async {
        Ok(progressing().await?
            == Some(("False".to_owned(), "ProgressDeadlineExceeded".to_owned())))
    })
    .await?;
    // 3 old (ready) + 1 new (stuck), maxSurge 1: scaling to 6 allows 7, the 3 more shared
    // 2 to the old set and 1 to the new.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 6}})),
        )
        .await?;
    wait_until("proportional sizes", || async {
        let mut sizes: Vec<(String, i32)> = replicasets
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|rs| {
                let image = rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .and_then(|t| t.spec.as_ref())
                    .and_then(|s| s.containers[0].image.clone())
                    .unwrap_or_default();
                (image, rs.spec.and_then(|s| s.replicas).unwrap_or(-1))
            })
            .collect();
        sizes.sort();
        Ok(sizes == [("v1".to_owned(), 5), ("v2".to_owned(), 2)])
    })
    .await?;
    shutdown.cancel();
    controllers.await??;
    Ok(())
}
