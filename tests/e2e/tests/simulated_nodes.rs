//! `shoal simulate` against `shoal up`: simulated nodes register Ready with their zone and
//! runtime labels, heartbeat their Leases and report their pods Running; killing one
//! simulator process is a lost group of machines: its nodes go Unknown, and a Deployment's
//! pods come back on the other simulator's nodes within grace + toleration + 10 s. Each
//! simulated pod spreads by zone, so the scheduler's topology spread is exercised too.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shoal_e2e::{Cluster, shoal_bin, wait_until};

const LONG: Duration = Duration::from_secs(120);
const GRACE: Duration = Duration::from_secs(4);
const TOLERATION: Duration = Duration::from_secs(3);

fn simulate(cluster: &Cluster, log: &std::path::Path, prefix: &str, nodes: usize) -> Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(shoal_bin())
        .arg("simulate")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .args(["--nodes", &nodes.to_string(), "--prefix", prefix])
        .args(["--cpu", "4", "--memory", "8Gi", "--zones", "2"])
        .args(["--node-lease-duration-seconds", "2"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting shoal simulate")
}

fn nodes(cluster: &Cluster) -> Result<Vec<Value>> {
    let list: Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "nodes",
        "-l",
        "shoal.dev/simulated=true",
        "-o",
        "json",
    ])?)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn ready(node: &Value) -> String {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn deployment() -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sim", "namespace": "default"},
        "spec": {"replicas": 6, "selector": {"matchLabels": {"app": "sim"}},
            "template": {"metadata": {"labels": {"app": "sim"}},
                "spec": {
                    "nodeSelector": {"shoal.dev/simulated": "true"},
                    "topologySpreadConstraints": [{"maxSkew": 1,
                        "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": "sim"}}}],
                    "containers": [{"name": "app", "image": "127.0.0.1:1/not-pulled:v1",
                        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}}]}}}
    })
    .to_string()
}

#[test]
fn simulated_nodes_run_pods_and_their_loss_moves_them() -> Result<()> {
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start_fast_failover(&data.path().join("server"), GRACE, TOLERATION)?;
    let mut kept = simulate(&cluster, &data.path().join("a.log"), "a-", 4)?;
    let mut lost = simulate(&cluster, &data.path().join("b.log"), "b-", 2)?;
    let registered = wait_until("six simulated nodes Ready", LONG, || {
        let nodes = nodes(&cluster)?;
        Ok((nodes.len() == 6 && nodes.iter().all(|n| ready(n) == "True")).then_some(nodes))
    })?;
    for node in &registered {
        let labels = &node["metadata"]["labels"];
        ensure!(
            labels["runtime.shoal.dev/wasmtime"] == "true"
                && labels["topology.kubernetes.io/zone"]
                    .as_str()
                    .is_some_and(|z| z.starts_with("zone-")),
            "labels of a simulated node: {labels}"
        );
    }

    // Pods on the simulator that will be lost first: the kept one is cordoned meanwhile.
    for node in ["a-00000", "a-00001", "a-00002", "a-00003"] {
        cluster.kubectl(&["cordon", node])?;
    }
    let out = cluster.apply(&deployment())?;
    ensure!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cluster = &cluster;
    let running = |prefix: &'static str, count: usize| {
        move || -> Result<Option<Vec<Value>>> {
            let pods = cluster.pods(Some("app=sim"))?;
            let on: Vec<Value> = pods
                .into_iter()
                .filter(|p| {
                    p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["phase"] == "Running"
                        && p["spec"]["nodeName"]
                            .as_str()
                            .is_some_and(|n| n.starts_with(prefix))
                })
                .collect();
            Ok((on.len() == count).then_some(on))
        }
    };
    // Two nodes of 4 CPUs take the six pods of 500m, three per zone.
    let first = wait_until("six pods Running on the b- nodes", LONG, running("b-", 6))?;
    for pod in &first {
        ensure!(
            !pod["status"]["podIP"].is_null()
                && pod["status"]["containerStatuses"][0]["ready"] == true,
            "a simulated pod reports its IP and ready container: {}",
            pod["status"]
        );
    }
    for node in ["a-00000", "a-00001", "a-00002", "a-00003"] {
        cluster.kubectl(&["uncordon", node])?;
    }

    lost.kill()?;
    lost.wait()?;
    let since = Instant::now();
    wait_until(
        "six pods Running on the a- nodes",
        GRACE + TOLERATION + Duration::from_secs(10),
        running("a-", 6),
    )
    .with_context(|| cluster.log_tail())?;
    println!(
        "pods back on the a- nodes {:?} after the b- simulator died",
        since.elapsed()
    );
    let after = nodes(cluster)?;
    for node in &after {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let expected = if name.starts_with("b-") {
            "Unknown"
        } else {
            "True"
        };
        ensure!(
            ready(node) == expected,
            "{name} is {} not {expected}",
            ready(node)
        );
    }
    // Spread by zone holds on the new nodes too: three pods in each.
    let placed = running("a-", 6)()?.unwrap_or_default();
    let zone_of = |pod: &Value| {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        after
            .iter()
            .find(|n| n["metadata"]["name"] == node)
            .map(|n| n["metadata"]["labels"]["topology.kubernetes.io/zone"].clone())
    };
    let zone0 = placed
        .iter()
        .filter(|p| zone_of(p) == Some(json!("zone-0")))
        .count();
    ensure!(zone0 == 3, "pods per zone: {zone0} in zone-0 of 6");
    kept.kill()?;
    kept.wait()?;
    Ok(())
}
