//! `cargo xtask bench busy`: does a node full of busy guests slow the control plane beside it
//! (issue 8, item 3)? On a release `shoal up`, the API's latency (GET and merge-PATCH of a
//! ConfigMap, 500 sequential requests each, the PATCHes fsynced by the store) is measured idle,
//! then with a 100-replica Deployment of guests that busy-loop without a CPU limit, while the
//! process's CPU use and the node's Ready condition are recorded. Prints the figures and writes
//! `target/bench/busy.json`. Never asserts on time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use shoal_e2e::{Cluster, GuestTarget, Registry, test_guest, wait_until};

use crate::store::rss_kib;

const REQUESTS: usize = 500;
const GUESTS: usize = 100;

/// utime + stime of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn summary(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e3
    };
    json!({"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)})
}

/// GETs then merge-PATCHes of one ConfigMap; the process's cores used meanwhile.
async fn latencies(client: &kube::Client, pid: u32) -> Result<Value> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let ticks = cpu_ticks(pid).unwrap_or(0);
    let started = Instant::now();
    let mut gets = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        api.get("probe").await?;
        gets.push(t.elapsed());
    }
    let mut patches = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let t = Instant::now();
        let patch = json!({"data": {"i": i.to_string()}});
        api.patch("probe", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        patches.push(t.elapsed());
    }
    let cores =
        (cpu_ticks(pid).unwrap_or(0) - ticks) as f64 / 100.0 / started.elapsed().as_secs_f64();
    Ok(json!({
        "get": summary(gets),
        "patch": summary(patches),
        "process_cores_used": cores,
        "rss_mib": rss_kib(pid).unwrap_or(0) as f64 / 1024.0,
    }))
}

async fn node_ready(client: &kube::Client) -> Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    Ok(nodes
        .list(&Default::default())
        .await?
        .items
        .iter()
        .all(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }))
}

pub fn run(bin: &std::path::Path, out: &std::path::Path, machine: Value) -> Result<()> {
    shoal_e2e::use_shoal_bin(bin.to_path_buf());
    let wasm = test_guest(GuestTarget::P2);
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start(data.path())?;
    let image = registry.reference("busy", "v1");
    cluster.push(&wasm, &image)?;
    let pid = cluster.pid().context("shoal up is not running")?;
    let runtime = crate::store::runtime()?;
    let client = runtime.block_on(crate::client(&cluster))?;
    runtime.block_on(async {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "probe"}}))?;
        api.create(&PostParams::default(), &cm).await?;
        anyhow::Ok(())
    })?;

    let idle = runtime.block_on(latencies(&client, pid))?;
    println!("idle:            {idle}");

    let manifest = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "busy"},
        "spec": {
            "replicas": GUESTS,
            "selector": {"matchLabels": {"app": "busy"}},
            "template": {
                "metadata": {"labels": {"app": "busy"}},
                "spec": {"containers": [{
                    "name": "spin", "image": image, "imagePullPolicy": "IfNotPresent",
                    "command": ["testguest", "loop"]
                }]}
            }
        }
    });
    crate::apply(&cluster.kubeconfig(), &manifest.to_string())?;
    wait_until(
        &format!("{GUESTS} busy guests running"),
        Duration::from_secs(300),
        || {
            let pods = cluster.pods(Some("app=busy"))?;
            Ok((shoal_e2e::running(&pods) == GUESTS).then_some(()))
        },
    )?;
    // Let them spin a while before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let busy = runtime.block_on(latencies(&client, pid))?;
    let ready = runtime.block_on(node_ready(&client))?;
    println!("{GUESTS} busy guests: {busy}");
    println!("node Ready while they spin: {ready}");

    let report = json!({
        "machine": machine,
        "requests_each": REQUESTS,
        "busy_guests": GUESTS,
        "idle": idle,
        "busy": busy,
        "node_ready_while_busy": ready,
    });
    std::fs::create_dir_all(out)?;
    let path = out.join("busy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
