//! `cargo xtask bench scheduler`: the scheduler figures of issue 7.
//!
//! - **Decision core** (in process, no IO): the default profile over a snapshot of 5,000
//!   nodes (4 CPUs, 32 GiB, 110 pods) deciding 50,000 pods (100m, 500 MiB), each decision
//!   assumed before the next as the driver does: pods/s and per-decision p50/p99. The same
//!   for 1,000 nodes in 3 zones and 10,000 pods that each carry a zone topology-spread
//!   constraint (DoNotSchedule) and a hostname pod anti-affinity against their group.
//! - **End to end** (upstream scheduler_perf's `SchedulingBasic` shape): a release
//!   `shoal server` (TLS, one member, store fsyncing), 5,000 nodes from `shoal simulate
//!   --nodes-only` (heartbeating their Leases, as scheduler_perf's nodes do not run pods),
//!   50,000 pods created through the API by 64 concurrent clients; a watch records when each
//!   pod is seen bound (every binding durable in the store before it is visible). Pods/s from
//!   the first create to the last binding, and per-pod create-to-bound p50/p99; RSS of the
//!   server. Then the spread + anti-affinity shape on 1,000 nodes with 10,000 pods.
//! - **Node-failure recovery**: 1,000 simulated nodes running pods (two `shoal simulate`
//!   processes: 900 and 100 nodes), 10 Deployments of 1,000 replicas Running; the 100-node
//!   simulator is killed; time until 10,000 pods run on the other nodes again, reported whole
//!   and without the configured grace period and toleration.
//!
//! Prints the figures and writes `target/bench/scheduler.json` (a part run alone replaces its
//! figures there and keeps the others). Never asserts on time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use shoal_scheduler::Snapshot;
use shoal_scheduler::framework::{Framework, Sampling};

use crate::store::{Proc, fresh_dir, percentile, rss_kib, runtime, start_shoal_with, wait_for};

const BASIC_NODES: usize = 5_000;
const BASIC_PODS: usize = 50_000;
const SPREAD_NODES: usize = 1_000;
const SPREAD_PODS: usize = 10_000;
const SPREAD_GROUPS: usize = 100;
const CREATE_CONCURRENCY: usize = 64;
const RECOVERY_NODES: (usize, usize) = (900, 100);
const RECOVERY_DEPLOYMENTS: usize = 10;
const RECOVERY_REPLICAS: usize = 1_000;
const GRACE_SECONDS: u64 = 10;
const TOLERATION_SECONDS: u64 = 5;

/// The pods of one shape.
#[derive(Clone, Copy)]
enum Shape {
    Basic,
    Spread,
}

fn node_json(name: &str, zone: usize) -> Value {
    json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{zone}"),
        }},
        "status": {
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn pod_json(shape: Shape, i: usize) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:05}"), "namespace": "bench",
                     "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/bench:v1",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}]},
    });
    if let Shape::Spread = shape {
        let group = format!("group-{}", i % SPREAD_GROUPS);
        pod["metadata"]["labels"] = json!({"app": "bench", "group": group});
        pod["spec"]["topologySpreadConstraints"] = json!([{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"group": group}}}]);
        pod["spec"]["affinity"] = json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [{
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"group": group}}}]}});
    }
    pod
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The decision core alone: `pods` decisions over `nodes` nodes, each assumed.
fn core(shape: Shape, nodes: usize, pods: usize) -> Result<Value> {
    let mut snapshot = Snapshot::new();
    for i in 0..nodes {
        let node: Node = serde_json::from_value(node_json(&format!("node-{i:05}"), i % 3))?;
        snapshot.upsert_node(&node);
    }
    let framework = Framework::default();
    let mut next_start = None;
    let mut samples = Vec::with_capacity(pods);
    let mut failed = 0;
    let started = Instant::now();
    for i in 0..pods {
        let pod: Pod = serde_json::from_value(pod_json(shape, i))?;
        let decided = Instant::now();
        let sampling = Sampling::adaptive(snapshot.node_count(), next_start.take());
        match framework.schedule(&snapshot, &pod, &sampling) {
            Ok(placement) => {
                snapshot.assume_pod(&pod, &placement.node);
                next_start = placement.last_examined;
            }
            Err(_) => failed += 1,
        }
        samples.push(decided.elapsed());
    }
    let elapsed = started.elapsed();
    samples.sort();
    Ok(json!({
        "nodes": nodes, "pods": pods, "unschedulable": failed,
        "seconds": elapsed.as_secs_f64(),
        "pods_per_second": pods as f64 / elapsed.as_secs_f64(),
        "p50_ms": percentile(&samples, 0.5), "p99_ms": percentile(&samples, 0.99),
        "max_ms": samples.last().copied().map(ms).unwrap_or(0.0),
    }))
}

async fn client_of(kubeconfig: &Path) -> Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

fn simulate(bin: &Path, dir: &Path, name: &str, args: &[&str]) -> Result<Proc> {
    let mut all: Vec<String> = vec![
        "simulate".into(),
        "--kubeconfig".into(),
        dir.join("shoal0/kubeconfig").display().to_string(),
        "--cpu".into(),
        "4".into(),
        "--memory".into(),
        "32Gi".into(),
        "--zones".into(),
        "3".into(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    Proc::start(bin, all, &dir.join(format!("{name}.log")))
}

async fn ready_nodes(client: &kube::Client) -> Result<usize> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count())
}

async fn wait_nodes(client: &kube::Client, want: usize) -> Result<Duration> {
    let started = Instant::now();
    while ready_nodes(client).await? < want {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{want} nodes did not become Ready");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(started.elapsed())
}

/// Pods created through the API and scheduled by `shoal server` onto simulated nodes.
async fn end_to_end(
    bin: &Path,
    out: &Path,
    shape: Shape,
    nodes: usize,
    pods: usize,
) -> Result<Value> {
    let name = match shape {
        Shape::Basic => "scheduler-basic",
        Shape::Spread => "scheduler-spread",
    };
    let dir = fresh_dir(out, name)?;
    let cluster = start_shoal_with(bin, &dir, 1, &[])?;
    let server_pid = cluster.system.procs[0].pid();
    let client = client_of(&dir.join("shoal0/kubeconfig")).await?;
    let count = nodes.to_string();
    let sim = simulate(bin, &dir, "simulate", &["--nodes", &count, "--nodes-only"])?;
    let registered = wait_nodes(&client, nodes).await?;
    println!(
        "  {nodes} simulated nodes Ready in {:.1} s",
        registered.as_secs_f64()
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;
    let rss_before = rss_kib(server_pid).unwrap_or(0);

    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let watch = {
        let bound = bound.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(Event::Apply(pod) | Event::InitApply(pod)) = event
                    && pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some()
                    && let Some(name) = pod.metadata.name
                {
                    let mut bound = bound.lock().unwrap_or_else(|e| e.into_inner());
                    bound.entry(name).or_insert_with(Instant::now);
                    if bound.len() >= pods {
                        return;
                    }
                }
            }
        })
    };
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    futures::stream::iter(0..pods)
        .map(|i| {
            let api = api.clone();
            let sent = sent.clone();
            async move {
                let pod: Pod = serde_json::from_value(pod_json(shape, i))?;
                let name = pod.metadata.name.clone().unwrap_or_default();
                sent.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name, Instant::now());
                api.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    let created = started.elapsed();
    tokio::time::timeout(Duration::from_secs(1800), watch)
        .await
        .context("pods not all bound within 30 minutes")??;
    let rss_after = rss_kib(server_pid).unwrap_or(0);
    let bound = bound.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sent = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last = bound.values().max().copied().unwrap_or(started);
    let mut latencies: Vec<Duration> = bound
        .iter()
        .filter_map(|(name, at)| Some(at.saturating_duration_since(*sent.get(name)?)))
        .collect();
    latencies.sort();
    let seconds = last.duration_since(started).as_secs_f64();
    drop(sim);
    drop(cluster);
    Ok(json!({
        "nodes": nodes, "pods": pods,
        "create_seconds": created.as_secs_f64(),
        "create_per_second": pods as f64 / created.as_secs_f64(),
        "seconds_to_last_binding": seconds,
        "pods_per_second": pods as f64 / seconds,
        "create_to_bound_p50_ms": percentile(&latencies, 0.5),
        "create_to_bound_p99_ms": percentile(&latencies, 0.99),
        "server_rss_mib_before": rss_before as f64 / 1024.0,
        "server_rss_mib_after": rss_after as f64 / 1024.0,
    }))
}

fn deployment(i: usize) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": format!("load-{i}"), "namespace": "bench"},
        "spec": {"replicas": RECOVERY_REPLICAS,
            "selector": {"matchLabels": {"app": format!("load-{i}")}},
            "template": {"metadata": {"labels": {"app": format!("load-{i}")}},
                "spec": {"containers": [{"name": "c", "image": "127.0.0.1:5000/bench:v1",
                    "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}}}]}}}
    })
}

/// Running, not deleting, on a node whose name starts with `prefix`.
fn running_on(pods: &HashMap<String, Pod>, prefix: &str) -> usize {
    pods.values()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(|n| n.starts_with(prefix))
        })
        .count()
}

async fn recovery(bin: &Path, out: &Path) -> Result<Value> {
    let dir = fresh_dir(out, "scheduler-recovery")?;
    let grace = format!("{GRACE_SECONDS}s");
    let toleration = TOLERATION_SECONDS.to_string();
    let extra: Vec<String> = [
        "--node-monitor-period",
        "1s",
        "--node-monitor-grace-period",
        &grace,
        "--default-unreachable-toleration-seconds",
        &toleration,
        "--default-not-ready-toleration-seconds",
        &toleration,
        // Upstream's 0.1 nodes/s per zone would spread 100 evictions over 1,000 s: the figure
        // is the control plane's work once eviction is allowed, so the limiter is opened.
        "--node-eviction-rate",
        "1000",
        "--secondary-node-eviction-rate",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cluster = start_shoal_with(bin, &dir, 1, &extra)?;
    let server_pid = cluster.system.procs[0].pid();
    let client = client_of(&dir.join("shoal0/kubeconfig")).await?;
    let lease = ["--node-lease-duration-seconds", "8"];
    let kept_count = RECOVERY_NODES.0.to_string();
    let lost_count = RECOVERY_NODES.1.to_string();
    let kept = simulate(
        bin,
        &dir,
        "simulate-kept",
        &[&["--nodes", &kept_count, "--prefix", "a-"][..], &lease[..]].concat(),
    )?;
    let lost = simulate(
        bin,
        &dir,
        "simulate-lost",
        &[&["--nodes", &lost_count, "--prefix", "b-"][..], &lease[..]].concat(),
    )?;
    wait_nodes(&client, RECOVERY_NODES.0 + RECOVERY_NODES.1).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "bench"}}))?,
        )
        .await?;

    let pods: Arc<Mutex<HashMap<String, Pod>>> = Arc::default();
    let api: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let _watch = {
        let pods = pods.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let mut pods = pods.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                        pods.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
                    }
                    Ok(Event::Delete(pod)) => {
                        pods.remove(pod.metadata.name.as_deref().unwrap_or_default());
                    }
                    _ => {}
                }
            }
        })
    };
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "bench");
    let started = Instant::now();
    for i in 0..RECOVERY_DEPLOYMENTS {
        deployments
            .create(
                &PostParams::default(),
                &serde_json::from_value(deployment(i))?,
            )
            .await?;
    }
    let total = RECOVERY_DEPLOYMENTS * RECOVERY_REPLICAS;
    let count = |prefix: &str| running_on(&pods.lock().unwrap_or_else(|e| e.into_inner()), prefix);
    wait_for("10,000 pods Running", Duration::from_secs(900), || {
        std::thread::sleep(Duration::from_millis(200));
        count("") == total
    })?;
    let to_running = started.elapsed();
    let on_lost = count("b-");
    println!(
        "  {total} pods Running in {:.1} s, {on_lost} of them on the nodes about to be lost",
        to_running.as_secs_f64()
    );
    let lost_at = Instant::now();
    // Killed: its nodes stop heartbeating, as machines that died.
    drop(lost);
    wait_for(
        "pods back on the kept nodes",
        Duration::from_secs(900),
        || {
            std::thread::sleep(Duration::from_millis(100));
            count("a-") == total
        },
    )?;
    let recovered = lost_at.elapsed();
    let excluded = Duration::from_secs(GRACE_SECONDS + TOLERATION_SECONDS);
    let rss = rss_kib(server_pid).unwrap_or(0);
    drop(kept);
    drop(cluster);
    Ok(json!({
        "nodes": RECOVERY_NODES.0 + RECOVERY_NODES.1, "lost_nodes": RECOVERY_NODES.1,
        "pods": total, "pods_on_lost_nodes": on_lost,
        "initial_seconds_to_running": to_running.as_secs_f64(),
        "grace_seconds": GRACE_SECONDS, "toleration_seconds": TOLERATION_SECONDS,
        "seconds_to_recovered": recovered.as_secs_f64(),
        "seconds_excluding_grace_and_toleration": recovered.saturating_sub(excluded).as_secs_f64(),
        "server_rss_mib": rss as f64 / 1024.0,
    }))
}

/// Runs the parts named in `parts` (`core`, `e2e`, `recovery`; all when empty).
pub fn run(bin: &Path, out: &Path, machine: Value, parts: &[&str]) -> Result<()> {
    let wanted = |part: &str| parts.is_empty() || parts.contains(&part);
    // Parts run on their own replace their figures in an earlier report and keep the rest.
    let file = out.join("scheduler.json");
    let mut report = std::fs::read(&file)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    report["machine"] = machine;
    if wanted("core") {
        println!("decision core, {BASIC_NODES} nodes, {BASIC_PODS} pods...");
        let figures = core(Shape::Basic, BASIC_NODES, BASIC_PODS)?;
        println!("  {figures}");
        report["core_basic"] = figures;
        println!(
            "decision core, {SPREAD_NODES} nodes, {SPREAD_PODS} pods with spread and anti-affinity..."
        );
        let figures = core(Shape::Spread, SPREAD_NODES, SPREAD_PODS)?;
        println!("  {figures}");
        report["core_spread"] = figures;
    }
    let rt = runtime()?;
    if wanted("e2e") {
        println!("end to end, {BASIC_NODES} simulated nodes, {BASIC_PODS} pods...");
        let figures = rt.block_on(end_to_end(bin, out, Shape::Basic, BASIC_NODES, BASIC_PODS))?;
        println!("  {figures}");
        report["end_to_end_basic"] = figures;
        println!(
            "end to end, {SPREAD_NODES} simulated nodes, {SPREAD_PODS} pods with spread and anti-affinity..."
        );
        let figures = rt.block_on(end_to_end(
            bin,
            out,
            Shape::Spread,
            SPREAD_NODES,
            SPREAD_PODS,
        ))?;
        println!("  {figures}");
        report["end_to_end_spread"] = figures;
    }
    if wanted("recovery") {
        println!("node-failure recovery...");
        let figures = rt.block_on(recovery(bin, out))?;
        println!("  {figures}");
        report["recovery"] = figures;
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(&file, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", file.display());
    Ok(())
}
