//! `cargo xtask bench apply|api|busy|http|scheduler|store`. `store` (in `store.rs`) measures the
//! store against etcd; `api`, `http` and `scheduler` live in their own modules;
//! `apply` is the apply-to-Running benchmark of issue 2, plus the idle RSS of `shoal up`. Builds the release binary and the example guest, starts Debian's
//! docker-registry and `shoal up`, warms the image cache with one pod, then five times applies
//! a 100-replica Deployment with kubectl and times until a watch has seen all 100 pods Running.
//! Prints the figures and writes them as JSON under `target/bench/`. Never asserts on time.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
mod api;
mod busy;
mod http;
mod scheduler;
mod store;

use shoal_e2e::{Cluster, GuestTarget, Registry, hello_guest, wait_until, workspace_root};

const RUNS: usize = 5;
const REPLICAS: usize = 100;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "apply"] => bench_apply(),
        ["bench", "store"] => {
            let root = workspace_root();
            let bin = release_shoal(&root)?;
            store::run(&bin, &root.join("target/bench"), machine())
        }
        ["bench", "busy"] => {
            let root = workspace_root();
            let bin = release_shoal(&root)?;
            busy::run(&bin, &root.join("target/bench"), machine())
        }
        ["bench", "http"] => {
            let root = workspace_root();
            let bins = release_bins(
                &root,
                &[("shoal-bench-peers", &["wasmtime-serve", "hyper-hello"])],
            )?;
            http::run(&bins, &root.join("target/bench"), machine())
        }
        ["bench", "api"] => {
            let root = workspace_root();
            let bin = release_shoal(&root)?;
            api::run(&bin, &root.join("target/bench"), machine())
        }
        ["bench", "scheduler", parts @ ..] => {
            let root = workspace_root();
            let bin = release_shoal(&root)?;
            scheduler::run(&bin, &root.join("target/bench"), machine(), parts)
        }
        ["bench", "store", "failover"] => {
            let root = workspace_root();
            let bin = release_shoal(&root)?;
            store::failover_only(&bin, &root.join("target/bench"))
        }
        ["bench", "store", "disk"] => {
            let root = workspace_root();
            let bin = release_shoal(&root)?;
            store::disk_only(&bin, &root.join("target/bench"), machine())
        }
        ["bench", "store", "writes", members] => {
            let members: usize = members.parse()?;
            let root = workspace_root();
            let bin = release_shoal(&root)?;
            store::writes_only(&bin, &root.join("target/bench"), machine(), members)
        }
        _ => bail!(
            "usage: cargo xtask bench apply|api|busy|http|scheduler [core|e2e|recovery]|store [failover|disk|writes MEMBERS]"
        ),
    }
}

/// Builds `target/release/shoal` and returns its path.
fn release_shoal(root: &Path) -> Result<std::path::PathBuf> {
    Ok(release_bins(root, &[])?.join("shoal"))
}

/// Builds `target/release/shoal` and the given (package, binaries) in one cargo invocation (so
/// that they share one feature resolution and one build of their common dependencies); returns
/// `target/release`.
fn release_bins(root: &Path, others: &[(&str, &[&str])]) -> Result<std::path::PathBuf> {
    // The cargo running us (`cargo xtask`), or the one on PATH when the xtask binary is run
    // directly: the rustup proxy, which pins the toolchain for every crate it compiles (a
    // toolchain path baked in at build time would not, and a dependency's own
    // rust-toolchain file would then pick another toolchain).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release", "-p", "shoal-cli", "--bin", "shoal"]);
    for (package, bins) in others {
        command.args(["-p", package]);
        for bin in *bins {
            command.args(["--bin", bin]);
        }
    }
    let status = command.current_dir(root).status()?;
    ensure!(status.success(), "release build failed");
    Ok(root.join("target/release"))
}

fn bench_apply() -> Result<()> {
    let root = workspace_root();
    shoal_e2e::use_shoal_bin(release_shoal(&root)?);
    let wasm = hello_guest(GuestTarget::P2);
    let registry = Registry::start();
    let data = tempfile::tempdir()?;
    let cluster = Cluster::start(data.path())?;
    let image = registry.reference("hello", "v1");
    cluster.push(&wasm, &image)?;

    // Idle RSS: no pods yet, give the process a moment to settle.
    std::thread::sleep(Duration::from_secs(3));
    let pid = cluster.pid().context("cluster is not running")?;
    let idle_rss_kib = store::rss_kib(pid).context("VmRSS not found")?;

    // Warm the image and compile caches.
    apply(&cluster.kubeconfig(), &manifest("warm", &image, 1))?;
    wait_until("the warm-up pod", Duration::from_secs(120), || {
        let pods = cluster.pods(Some("app=warm"))?;
        Ok((shoal_e2e::running(&pods) == 1).then_some(()))
    })?;

    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(client(&cluster))?;
    let mut samples = Vec::new();
    for run in 0..RUNS {
        let name = format!("bench-{run}");
        let elapsed = runtime.block_on(time_to_running(&client, &cluster, &name, &image))?;
        println!(
            "run {run}: {REPLICAS} pods Running in {:.1} ms",
            elapsed.as_secs_f64() * 1e3
        );
        samples.push(elapsed.as_secs_f64() * 1e3);
        cluster.kubectl(&["delete", "deployment", &name, "--wait=false"])?;
        wait_until("bench pods gone", Duration::from_secs(300), || {
            Ok(cluster
                .pods(Some(&format!("app={name}")))?
                .is_empty()
                .then_some(()))
        })?;
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let result = json!({
        "benchmark": "apply-100-replicas-to-running",
        "replicas": REPLICAS,
        "runs_ms": samples,
        "median_ms": median,
        "idle_rss_mib": idle_rss_kib as f64 / 1024.0,
        "machine": machine(),
    });
    println!("median apply-to-all-Running: {median:.1} ms over {RUNS} runs");
    println!(
        "idle RSS of shoal up: {:.1} MiB",
        idle_rss_kib as f64 / 1024.0
    );
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("apply.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn manifest(name: &str, image: &str, replicas: usize) -> String {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "hello", "image": image, "imagePullPolicy": "IfNotPresent"}]}
            }
        }
    })
    .to_string()
}

/// `kubectl apply -f -` of `manifest` against the cluster of `kubeconfig`.
fn apply(kubeconfig: &Path, manifest: &str) -> Result<()> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifest.as_bytes())?;
    ensure!(child.wait()?.success(), "kubectl apply failed");
    Ok(())
}

async fn client(cluster: &Cluster) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(cluster.kubeconfig())?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// From just before `kubectl apply` until a watch has seen every replica Running.
async fn time_to_running(
    client: &kube::Client,
    cluster: &Cluster,
    name: &str,
    image: &str,
) -> Result<Duration> {
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "default");
    let config = watcher::Config::default().labels(&format!("app={name}"));
    let mut events = watcher::watcher(pods, config).boxed();
    // Wait for the watch to be established (its initial list) before starting the clock.
    loop {
        match events.try_next().await? {
            Some(Event::InitDone) => break,
            Some(_) => continue,
            None => bail!("watch ended"),
        }
    }
    let started = Instant::now();
    let kubeconfig = cluster.kubeconfig();
    let manifest = manifest(name, image, REPLICAS);
    let apply = tokio::task::spawn_blocking(move || apply(&kubeconfig, &manifest));
    let mut running = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while running.len() < REPLICAS {
        let event = tokio::time::timeout_at(deadline, events.try_next())
            .await
            .context("timed out waiting for pods to run")??;
        let Some(event) = event else {
            bail!("watch ended")
        };
        if let Event::Apply(pod) | Event::InitApply(pod) = event {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase == Some("Running") {
                running.insert(name);
            } else {
                running.remove(&name);
            }
        }
    }
    let elapsed = started.elapsed();
    apply.await??;
    Ok(elapsed)
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_string))
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpu_model": model})
}
