//! `cargo xtask bench api`: the apiserver's figures of issue 6 on a one-member `shoal server`
//! (TLS, admin client certificate, HTTP/2), client and server on the same two cores.
//!
//! - RSS with nothing stored, then with 10,000 pods (about 1.4 KiB of JSON each) stored.
//! - LIST of all 10,000 pods: p50/p99 of whole lists, and of complete paginated traversals
//!   (`limit=500`, following `continue`), with the RSS after them; `kubectl get pods -A` (Table
//!   output, 500 a page) timed the same way.
//! - Watch delivery: 1,000 concurrent watches of one namespace's ConfigMaps; one writer
//!   updates a ConfigMap 200 times, 20 ms apart, each write carrying its send time; every
//!   watcher records the delay from send to receipt of the chunk carrying the event (reading
//!   only the send time, not decoding the event). p50/p99/max over all receipts, and the
//!   server's RSS before and with the watchers open.
//! - Mutating requests at a steady 1,000 changes/s (merge patches of 1,000 ConfigMaps, sent on
//!   a fixed schedule whatever the answers' latency): p50/p99.
//!
//! Prints the figures and writes `target/bench/api.json`. Never asserts on time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::store::{
    Https, Load, Request, ShoalCluster, fresh_dir, load, percentile, rss_kib, runtime, start_shoal,
};

const PODS: usize = 10_000;
const LIST_RUNS: usize = 20;
const WATCHERS: usize = 1_000;
const WATCH_WRITES: usize = 200;
const RATE: u64 = 1_000;

/// A pod about the size of a Deployment's pod after defaulting (1.4 KiB of JSON).
fn pod(i: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("bench-{i:05}"),
            "labels": {"app": format!("app-{}", i % 100), "tier": "bench",
                       "pod-template-hash": "5d8f7c9b6"},
            "annotations": {"bench.shoal.dev/index": i.to_string()},
        },
        "spec": {
            "nodeName": format!("node-{}", i % 50),
            "containers": [{
                "name": "app",
                "image": "127.0.0.1:5000/hello:v1",
                "args": ["--listen", "0.0.0.0:8080", "--greeting", "hello from the benchmark"],
                "env": [{"name": "MODE", "value": "bench"}, {"name": "INDEX", "value": i.to_string()}],
                "ports": [{"containerPort": 8080, "name": "http"}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                              "limits": {"cpu": "100m", "memory": "64Mi"}},
            }],
        },
    })
}

async fn get(https: &Https, url: &str, accept: Option<&str>) -> Result<Bytes> {
    let mut req = http::Request::get(url);
    if let Some(accept) = accept {
        req = req.header(http::header::ACCEPT, accept);
    }
    let resp = https.request(req.body(Full::new(Bytes::new()))?).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    ensure!(
        status.is_success(),
        "GET {url}: {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    Ok(body)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(mut samples: Vec<Duration>) -> Value {
    samples.sort();
    json!({"runs": samples.len(), "p50_ms": percentile(&samples, 0.5),
           "p99_ms": percentile(&samples, 0.99),
           "max_ms": samples.last().copied().map(ms).unwrap_or(0.0)})
}

/// Whole LISTs of every pod; returns (samples, bytes of one answer).
async fn full_lists(https: &Https, api: &str) -> Result<(Vec<Duration>, usize)> {
    let mut samples = Vec::new();
    let mut size = 0;
    for _ in 0..LIST_RUNS {
        let started = Instant::now();
        let body = get(https, &format!("{api}/api/v1/pods"), None).await?;
        samples.push(started.elapsed());
        let list: Value = serde_json::from_slice(&body)?;
        let items = list["items"].as_array().map_or(0, Vec::len);
        ensure!(items == PODS, "a full list returned {items} pods");
        size = body.len();
    }
    Ok((samples, size))
}

/// What kubectl asks for (`kubectl get`): Table rows, object metadata included.
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

/// Complete traversals of every pod, 500 a page (`accept`: as JSON or as kubectl's Table).
/// Only the requests are timed, not the client's decoding of the pages.
async fn paged_lists(https: &Https, api: &str, accept: Option<&str>) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for _ in 0..LIST_RUNS {
        let mut spent = Duration::ZERO;
        let mut token: Option<String> = None;
        let mut items = 0;
        loop {
            let mut url = format!("{api}/api/v1/pods?limit=500");
            if let Some(t) = &token {
                url.push_str(&format!("&continue={t}"));
            }
            let started = Instant::now();
            let body = get(https, &url, accept).await?;
            spent += started.elapsed();
            let page: Value = serde_json::from_slice(&body)?;
            let list = if accept.is_some() { "rows" } else { "items" };
            items += page[list].as_array().map_or(0, Vec::len);
            token = page["metadata"]["continue"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        ensure!(items == PODS, "a paginated list returned {items} pods");
        samples.push(spent);
    }
    Ok(samples)
}

/// Opens `WATCHERS` watches, writes `WATCH_WRITES` times, returns every delivery delay.
async fn watch_delays(
    clients: &[Https],
    api: &str,
    pid: u32,
    rss: &mut Vec<(&'static str, u64)>,
) -> Result<Vec<Duration>> {
    let epoch = Instant::now();
    let ns_url = format!("{api}/api/v1/namespaces");
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "watch"}});
    post(&clients[0], &ns_url, &body).await?;
    let cm_url = format!("{api}/api/v1/namespaces/watch/configmaps");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "ticker"}, "data": {"sent": "0"}});
    post(&clients[0], &cm_url, &cm).await?;
    let list: Value = serde_json::from_slice(&get(&clients[0], &cm_url, None).await?)?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .context("list resourceVersion")?
        .to_string();
    rss.push(("before_watchers", rss_kib(pid).unwrap_or(0)));

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    let mut watchers = tokio::task::JoinSet::new();
    for w in 0..WATCHERS {
        let https = clients[w % clients.len()].clone();
        let url = format!("{cm_url}?watch=1&resourceVersion={rv}");
        let ready = ready_tx.clone();
        watchers.spawn(async move {
            let req = http::Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let resp = https.request(req).await?;
            ensure!(resp.status().is_success(), "watch: {}", resp.status());
            let _ = ready.send(()).await;
            let mut body = resp.into_body().into_data_stream();
            let mut buf = Vec::new();
            let mut delays = Vec::new();
            while delays.len() < WATCH_WRITES {
                let Some(chunk) = body.next().await else {
                    break;
                };
                buf.extend_from_slice(&chunk?);
                let now = epoch.elapsed();
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    // Only the send time is read (a full decode per receipt would make the
                    // 1,000 clients, on the server's two cores, the thing measured).
                    if let Some(sent) = sent_time(&line).filter(|s| *s > 0) {
                        delays.push(now.saturating_sub(Duration::from_nanos(sent)));
                    }
                }
            }
            anyhow::Ok(delays)
        });
    }
    drop(ready_tx);
    for _ in 0..WATCHERS {
        ready_rx.recv().await.context("a watcher failed to start")?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss.push(("with_watchers", rss_kib(pid).unwrap_or(0)));

    let patch_url = format!("{cm_url}/ticker");
    for _ in 0..WATCH_WRITES {
        let sent = epoch.elapsed().as_nanos() as u64;
        let body = json!({"data": {"sent": sent.to_string()}});
        let req = http::Request::patch(patch_url.clone())
            .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = clients[0].request(req).await?;
        ensure!(resp.status().is_success(), "patch: {}", resp.status());
        let _ = resp.into_body().collect().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut delays = Vec::new();
    let mut short = 0;
    while let Some(done) = watchers.join_next().await {
        let got = done??;
        if got.len() < WATCH_WRITES {
            short += 1;
        }
        delays.extend(got);
    }
    ensure!(
        short == 0,
        "{short} watchers saw fewer than {WATCH_WRITES} events"
    );
    Ok(delays)
}

/// The digits after `"sent":"` in a watch event line.
fn sent_time(line: &[u8]) -> Option<u64> {
    let marker = b"\"sent\":\"";
    let at = line.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let digits: Vec<u8> = line[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn post(https: &Https, url: &str, body: &Value) -> Result<()> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = https.request(req).await?;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    ensure!(
        status.is_success() || status == http::StatusCode::CONFLICT,
        "POST {url}: {status}: {}",
        String::from_utf8_lossy(&text)
    );
    Ok(())
}

/// Merge patches of 1,000 ConfigMaps sent on a fixed schedule of `RATE` a second.
async fn steady_changes(https: &[Https], api: &str, seconds: u64) -> Result<(Load, f64, f64)> {
    let url = format!("{api}/api/v1/namespaces/default/configmaps");
    let create: Request = {
        let url = url.clone();
        Arc::new(move |_, n| {
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": format!("steady-{n}")}, "data": {"v": "0"}});
            (url.clone(), body.to_string().into_bytes())
        })
    };
    let made = load(https, 1, Duration::ZERO, Some(1_000), create).await;
    ensure!(made.ops == 1_000, "created {} of 1000 ConfigMaps", made.ops);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / RATE));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..RATE * seconds {
        ticker.tick().await;
        let https = https[n as usize % https.len()].clone();
        let url = format!("{url}/steady-{}", n % 1_000);
        tasks.spawn(async move {
            let req = http::Request::patch(url)
                .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
                .body(Full::new(Bytes::from(format!(
                    "{{\"data\":{{\"v\":\"{n}\"}}}}"
                ))))
                .expect("request");
            let sent = Instant::now();
            match https.request(req).await {
                Ok(resp) if resp.status().is_success() => {
                    let _ = resp.into_body().collect().await;
                    Some(sent.elapsed())
                }
                _ => None,
            }
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Some(l)) => latencies.push(l),
            _ => errors += 1,
        }
    }
    latencies.sort();
    let p999 = percentile(&latencies, 0.999);
    let max = latencies.last().copied().map(ms).unwrap_or(0.0);
    let load = Load {
        ops: latencies.len() as u64,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    };
    Ok((load, p999, max))
}

fn kubectl_get_all(kubeconfig: &Path) -> Result<Vec<Duration>> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["get", "pods", "-A", "--no-headers"])
            .output()?;
        samples.push(started.elapsed());
        ensure!(
            out.status.success(),
            "kubectl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
        ensure!(lines == PODS, "kubectl listed {lines} pods");
    }
    Ok(samples)
}

pub fn run(bin: &Path, out: &Path, machine: Value) -> Result<()> {
    let dir = fresh_dir(out, "api")?;
    let rt = runtime()?;
    let ShoalCluster { system, api_urls } = start_shoal(bin, &dir, 1)?;
    let api = api_urls[0].clone();
    let pid = system.procs[0].pid();
    let https = system.client.clone();
    std::thread::sleep(Duration::from_secs(2));
    let mut rss: Vec<(&'static str, u64)> = vec![("empty", rss_kib(pid).unwrap_or(0))];

    let pods_url = format!("{api}/api/v1/namespaces/default/pods");
    let create: Request = Arc::new(move |client, n| {
        let i = n as usize * 64 + client;
        (pods_url.clone(), pod(i).to_string().into_bytes())
    });
    let seeded = rt.block_on(load(&https, 64, Duration::ZERO, Some(PODS as u64), create));
    ensure!(
        seeded.ops == PODS as u64,
        "created {} of {PODS} pods ({} errors)",
        seeded.ops,
        seeded.errors
    );
    println!("seeded {PODS} pods at {:.0}/s", seeded.rate());
    std::thread::sleep(Duration::from_secs(2));
    rss.push(("pods_stored", rss_kib(pid).unwrap_or(0)));

    let (full, size) = rt.block_on(full_lists(&https[0], &api))?;
    rss.push(("after_full_lists", rss_kib(pid).unwrap_or(0)));
    let paged = rt.block_on(paged_lists(&https[0], &api, None))?;
    rss.push(("after_paged_lists", rss_kib(pid).unwrap_or(0)));
    let tables = summary(rt.block_on(paged_lists(&https[0], &api, Some(TABLE)))?);
    let kubeconfig = system.dirs[0]
        .parent()
        .context("data dir")?
        .join("kubeconfig");
    let kubectl = kubectl_get_all(&kubeconfig)?;
    rss.push(("after_kubectl", rss_kib(pid).unwrap_or(0)));
    let full = summary(full);
    let paged = summary(paged);
    let kubectl = summary(kubectl);
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    println!(
        "LIST {PODS} pods ({:.1} MiB): whole p50 {:.1} ms p99 {:.1} ms; 500 a page p50 {:.1} ms p99 {:.1} ms; as Tables p50 {:.1} ms p99 {:.1} ms; kubectl get pods -A p50 {:.0} ms",
        size as f64 / 1048576.0,
        f(&full, "p50_ms"),
        f(&full, "p99_ms"),
        f(&paged, "p50_ms"),
        f(&paged, "p99_ms"),
        f(&tables, "p50_ms"),
        f(&tables, "p99_ms"),
        f(&kubectl, "p50_ms"),
    );

    let (steady, p999, max) = rt.block_on(steady_changes(&https, &api, 10))?;
    println!(
        "steady {RATE} changes/s: {:.0}/s done, p50 {:.2} ms p99 {:.2} ms p99.9 {p999:.1} ms max {max:.1} ms ({} errors)",
        steady.rate(),
        steady.p50_ms,
        steady.p99_ms,
        steady.errors
    );

    let delays = rt.block_on(watch_delays(&https, &api, pid, &mut rss))?;
    let receipts = delays.len();
    let watch = summary(delays);
    println!(
        "watch delivery, {WATCHERS} watchers x {WATCH_WRITES} writes ({receipts} receipts): p50 {:.2} ms p99 {:.2} ms max {:.1} ms",
        watch["p50_ms"].as_f64().unwrap_or(0.0),
        watch["p99_ms"].as_f64().unwrap_or(0.0),
        watch["max_ms"].as_f64().unwrap_or(0.0),
    );
    for (when, kib) in &rss {
        println!("RSS {when:<18} {:>7.1} MiB", *kib as f64 / 1024.0);
    }
    let report = json!({
        "machine": machine,
        "pods": PODS,
        "list_bytes": size,
        "list_full": full,
        "list_paged_500": paged,
        "list_paged_500_table": tables,
        "kubectl_get_pods_all": kubectl,
        "steady_changes": {"target_per_second": RATE, "result": steady.json(),
                           "p999_ms": p999, "max_ms": max},
        "watch": {"watchers": WATCHERS, "writes": WATCH_WRITES, "delivery": watch},
        "rss_kib": rss.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    let path = out.join("api.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
