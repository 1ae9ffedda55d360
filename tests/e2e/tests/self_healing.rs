//! Self-healing with real processes: `shoal up` (control plane and node-1) and a second
//! `shoal agent` (node-2) on loopback. The agent is killed: its pods come back on node-1
//! within the grace period plus the toleration plus 10 s, and when the agent returns the
//! pods it ran, replaced meanwhile, are stopped and removed there, never Running twice; each
//! step is told by the Events `kubectl describe` shows. And `shoal up`, which runs the
//! controllers, is killed mid-rollout: the rollout completes within its surge.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_e2e::{Cluster, GuestTarget, Registry, free_port, hello_guest, shoal_bin, wait_until};

const LONG: Duration = Duration::from_secs(120);
const GRACE: Duration = Duration::from_secs(4);
const TOLERATION: Duration = Duration::from_secs(3);

fn start_agent(cluster: &Cluster, dir: &std::path::Path, port: u16) -> Result<Child> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))?;
    Command::new(shoal_bin())
        .arg("agent")
        .args(["--server", &format!("https://{}", cluster.api)])
        .arg("--token-file")
        .arg(cluster.data_dir.join("token"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--node-name", "node-2"])
        .args(["--agent-listen", &format!("127.0.0.1:{port}")])
        .args(["--node-lease-duration-seconds", "2"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting shoal agent")
}

fn node_ready(cluster: &Cluster, node: &str) -> Result<Option<String>> {
    let node: Value =
        serde_json::from_str(&cluster.kubectl(&["get", "node", node, "-o", "json"])?)?;
    Ok(node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_owned))
}

/// The app's pods as (name, node, phase, deleting).
fn placement(cluster: &Cluster) -> Result<Vec<(String, String, String, bool)>> {
    Ok(cluster
        .pods(Some("app=hello"))?
        .iter()
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
                s(&p["status"]["phase"]),
                !p["metadata"]["deletionTimestamp"].is_null(),
            )
        })
        .collect())
}

fn deployment(image: &str) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "hello"}},
            "template": {"metadata": {"labels": {"app": "hello"}},
                "spec": {"terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "hello", "image": image}]}}}
    })
    .to_string()
}

#[test]
fn pods_of_a_lost_node_come_back_elsewhere_and_are_stopped_when_it_returns() -> Result<()> {
    let wasm = hello_guest(GuestTarget::P2);
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start_fast_failover(&data.path().join("server"), GRACE, TOLERATION)?;
    let image = registry.reference("hello", "v1");
    cluster.push(&wasm, &image)?;

    let agent_dir = data.path().join("agent");
    let port = free_port();
    let mut agent = start_agent(&cluster, &agent_dir, port)?;
    wait_until("node-2 to be Ready", LONG, || {
        Ok(node_ready(&cluster, "node-2")
            .ok()
            .flatten()
            .filter(|s| s == "True"))
    })?;

    // Everything lands on node-2 while node-1 is cordoned.
    cluster.kubectl(&["cordon", "node-1"])?;
    let out = cluster.apply(&deployment(&image))?;
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = wait_until("two pods Running on node-2", LONG, || {
        let pods = placement(&cluster)?;
        let ok = pods.len() == 2
            && pods
                .iter()
                .all(|(_, node, phase, _)| node == "node-2" && phase == "Running");
        Ok(ok.then_some(pods))
    })?;
    cluster.kubectl(&["uncordon", "node-1"])?;

    // node-2's agent dies.
    agent.kill()?;
    agent.wait()?;
    let lost = Instant::now();
    let budget = GRACE + TOLERATION + Duration::from_secs(10);
    wait_until("two replacement pods Running on node-1", budget, || {
        let pods = placement(&cluster)?;
        let moved = pods
            .iter()
            .filter(|(_, node, phase, deleting)| {
                node == "node-1" && phase == "Running" && !deleting
            })
            .count();
        Ok((moved == 2).then_some(()))
    })
    .with_context(|| cluster.log_tail())?;
    println!(
        "pods back on node-1 {:?} after the agent died",
        lost.elapsed()
    );
    ensure!(
        node_ready(&cluster, "node-2")?.as_deref() == Some("Unknown"),
        "node-2 is not Unknown"
    );
    let node: Value =
        serde_json::from_str(&cluster.kubectl(&["get", "node", "node-2", "-o", "json"])?)?;
    let taints = node["spec"]["taints"].to_string();
    ensure!(
        taints.contains("node.kubernetes.io/unreachable") && taints.contains("NoExecute"),
        "node-2 taints: {taints}"
    );
    // The old pods wait, terminating, for their node; they no longer count as Ready.
    for (name, _, _, _) in &first {
        let pod: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "pod", name, "-o", "json"])?)?;
        ensure!(
            !pod["metadata"]["deletionTimestamp"].is_null(),
            "{name} was not evicted"
        );
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"].clone());
        ensure!(
            ready == Some(Value::from("False")),
            "{name} still Ready: {ready:?}"
        );
    }

    // What happened is told by Events, as kubectl describe and get events show them.
    let replacement = placement(&cluster)?
        .into_iter()
        .find(|(_, node, _, deleting)| node == "node-1" && !deleting)
        .map(|(name, _, _, _)| name)
        .context("a replacement pod")?;
    let described = wait_until("the replacement's events", LONG, || {
        let out = cluster.kubectl(&["describe", "pod", &replacement])?;
        // The image is on node-1 already: the kubelet says "already present", without Pulling.
        let complete = ["Scheduled", "Pulled", "Created", "Started"]
            .iter()
            .all(|reason| out.contains(reason));
        Ok(complete.then_some(out))
    })?;
    ensure!(
        described.contains(&format!(
            "Successfully assigned default/{replacement} to node-1"
        )),
        "describe pod: {described}"
    );
    let node_events = wait_until("node-2's NodeNotReady event", LONG, || {
        let out = cluster.kubectl(&["describe", "node", "node-2"])?;
        Ok(out.contains("NodeNotReady").then_some(out))
    })?;
    ensure!(
        node_events.contains("node-controller"),
        "describe node: {node_events}"
    );
    let evictions = cluster.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=TaintManagerEviction",
        "-o",
        "name",
    ])?;
    ensure!(
        evictions.lines().count() == 2,
        "eviction events: {evictions}"
    );
    let scaling = cluster.kubectl(&["describe", "deployment", "hello"])?;
    ensure!(
        scaling.contains("ScalingReplicaSet"),
        "describe deployment: {scaling}"
    );

    // node-2 comes back: it removes the pods replaced meanwhile and never runs them again.
    let before = std::fs::read_to_string(agent_dir.join("agent.log"))?.len();
    let mut agent = start_agent(&cluster, &agent_dir, port)?;
    wait_until("node-2's old pods removed", LONG, || {
        let pods = placement(&cluster)?;
        Ok(pods
            .iter()
            .all(|(_, node, _, _)| node == "node-1")
            .then_some(()))
    })?;
    let pods = placement(&cluster)?;
    ensure!(
        pods.len() == 2
            && pods
                .iter()
                .all(|(_, _, phase, deleting)| phase == "Running" && !deleting),
        "after node-2 returned: {pods:?}"
    );
    wait_until("node-2 Ready and untainted", LONG, || {
        let node: Value =
            serde_json::from_str(&cluster.kubectl(&["get", "node", "node-2", "-o", "json"])?)?;
        let ready = node_ready(&cluster, "node-2")?;
        let untainted = node["spec"]["taints"].as_array().is_none_or(Vec::is_empty);
        Ok((ready.as_deref() == Some("True") && untainted).then_some(()))
    })?;
    let log = std::fs::read_to_string(agent_dir.join("agent.log"))?;
    let log = log.get(before..).unwrap_or_default();
    for (name, _, _, _) in &first {
        ensure!(
            !log.lines()
                .any(|l| l.contains(name.as_str()) && l.contains("container started")),
            "{name} was started again"
        );
    }
    agent.kill()?;
    agent.wait()?;
    Ok(())
}

fn rolling(image: &str, greeting: &str) -> String {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "roll", "namespace": "default"},
        // Each new pod must stay ready 2 s before the next step: the rollout takes seconds,
        // so the kill lands in its middle.
        "spec": {"replicas": 4, "minReadySeconds": 2, "selector": {"matchLabels": {"app": "roll"}},
            "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": "roll"}},
                "spec": {"terminationGracePeriodSeconds": 2,
                    "containers": [{"name": "hello", "image": image,
                        "env": [{"name": "GREETING", "value": greeting}]}]}}}
    })
    .to_string()
}

/// Live (not terminating) pods of the app and how many carry `greeting`, read with kubectl.
fn live_pods(kubeconfig: &std::path::Path, greeting: &str) -> Result<(usize, usize)> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["get", "pods", "-l", "app=roll", "-o", "json"])
        .output()?;
    ensure!(out.status.success(), "kubectl get pods failed");
    let list: Value = serde_json::from_slice(&out.stdout)?;
    let live: Vec<&Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let new = live
        .iter()
        .filter(|p| p["spec"]["containers"][0]["env"][0]["value"] == greeting)
        .count();
    Ok((live.len(), new))
}

/// The process running the controllers is killed in the middle of a rollout and started
/// again: the rollout completes, its history holds both revisions, and at no moment sampled
/// (every 100 ms, through the kill) were more pods live than replicas + maxSurge.
#[test]
fn a_rollout_cut_by_a_crash_completes_within_max_surge() -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let wasm = hello_guest(GuestTarget::P2);
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let mut cluster = Cluster::start(data.path())?;
    let image = registry.reference("hello", "v1");
    cluster.push(&wasm, &image)?;
    let out = cluster.apply(&rolling(&image, "one"))?;
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.kubectl(&["rollout", "status", "deployment/roll", "--timeout=120s"])?;

    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, most, kubeconfig) = (Arc::clone(&stop), Arc::clone(&most), cluster.kubeconfig());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Errors while the control plane is down are expected: no sample then.
                if let Ok((live, _)) = live_pods(&kubeconfig, "two") {
                    most.fetch_max(live, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = cluster.apply(&rolling(&image, "two"))?;
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = wait_until("the rollout under way", LONG, || {
        let (_, new) = live_pods(&cluster.kubeconfig(), "two")?;
        Ok((new >= 1).then_some(new))
    })?;
    cluster.kill9()?;
    ensure!(new < 4, "the rollout was over before the kill");
    let cluster = cluster.restart()?;
    cluster
        .kubectl(&["rollout", "status", "deployment/roll", "--timeout=120s"])
        .with_context(|| cluster.log_tail())?;
    let done = wait_until("every live pod on the new template", LONG, || {
        let (live, new) = live_pods(&cluster.kubeconfig(), "two")?;
        Ok((live == 4 && new == 4).then_some(()))
    });
    stop.store(true, Ordering::Relaxed);
    sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    done?;
    let most = most.load(Ordering::Relaxed);
    ensure!(
        most <= 5,
        "{most} pods were live at once (replicas 4 + maxSurge 1)"
    );
    let (revisions, history) = cluster.rollout_history("deployment/roll")?;
    ensure!(revisions == ["1", "2"], "rollout history: {history}");
    Ok(())
}
