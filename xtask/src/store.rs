//! `cargo xtask bench store`: Shoal's store against etcd 3.4 (Debian's `etcd-server`), side by
//! side on this machine and disk, with the same client on the same transport.
//!
//! What each side's request is: an HTTP/2 `POST /v3/kv/put` with the JSON body of etcd's gRPC
//! gateway (`{"key": base64, "value": base64}`) over TLS with a client certificate. etcd
//! answers it once the put is committed by a quorum (its WAL fsynced on a majority, default
//! durability); Shoal's member port answers it once the write is committed by a quorum (raft
//! log fsynced on a majority) and applied on the member that was asked. Clients spread their
//! requests over every member, so on a follower both forward to the leader.
//!
//! Figures: writes/s and p50/p99 latency of 1 KiB values at 1, 16 and 256 concurrent clients,
//! for 1 and 3 members; Shoal's RSS during and after the 256-client run; leader failover time
//! (median of 5 kills with a write load running); ConfigMap creates/s through the Kubernetes
//! API at 1, 16 and 256 clients on 3 members; and the data-dir size after 100,000 updates of
//! the same 1,000 keys of 1 KiB. Prints a table and writes `target/bench/store.json`. Never
//! asserts on time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shoal_e2e::free_port;
use shoal_tls::{CertificateAuthority, IssuedCertificate};

pub(crate) type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

const CLIENTS: [usize; 3] = [1, 16, 256];
/// HTTP/2 connections per member (streams are multiplexed on them).
const CONNECTIONS: usize = 4;
const VALUE: usize = 1024;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn https_client(ca_pem: &str, identity: &IssuedCertificate) -> Result<Https> {
    let mut tls = (*shoal_tls::client_config(ca_pem, Some(identity))?).clone();
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector))
}

/// The resident set of process `pid` in KiB; `None` once it is gone.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
}

/// A multi-threaded runtime of two workers, as many as this machine's cores.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// `out/name`, emptied: a data dir kept after the run (logs included), replaced by the next.
pub(crate) fn fresh_dir(out: &Path, name: &str) -> Result<PathBuf> {
    let dir = out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A process killed on drop.
pub(crate) struct Proc {
    child: Option<Child>,
    args: Vec<String>,
    program: PathBuf,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn start(program: &Path, args: Vec<String>, log: &Path) -> Result<Proc> {
        let mut p = Proc {
            child: None,
            args,
            program: program.to_owned(),
            log: log.to_owned(),
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(&self.program)
                .args(&self.args)
                .stdout(out.try_clone()?)
                .stderr(out)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", self.program.display()))?,
        );
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One system under test: its members' put URLs, processes and data dirs.
pub(crate) struct System {
    name: &'static str,
    pub(crate) put_urls: Vec<String>,
    pub(crate) procs: Vec<Proc>,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) client: Vec<Https>,
}

/// Outcome of one load.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Load {
    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    pub(crate) fn json(&self) -> Value {
        json!({"ops": self.ops, "errors": self.errors, "seconds": self.seconds,
               "writes_per_second": self.rate(), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms})
    }
}

pub(crate) fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// What a client sends: a URL and a body, given the client and the request number.
pub(crate) type Request = Arc<dyn Fn(usize, u64) -> (String, Vec<u8>) + Send + Sync>;

/// `clients` concurrent clients, each sending its next request once the previous one is
/// answered, for `duration` (or until `count` requests are answered in all).
pub(crate) async fn load(
    https: &[Https],
    clients: usize,
    duration: Duration,
    count: Option<u64>,
    request: Request,
) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let https = https[c % https.len()].clone();
        let stop = Arc::clone(&stop);
        let issued = Arc::clone(&issued);
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(count) = count
                    && issued.fetch_add(1, Ordering::Relaxed) >= count
                {
                    break;
                }
                let (url, body) = request(c, n);
                n += 1;
                let req = http::Request::post(url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid request");
                let sent = Instant::now();
                match https.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            latencies.push(sent.elapsed());
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    if count.is_none() {
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(Ok((l, e))) = tasks.join_next().await {
        latencies.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    Load {
        ops: latencies.len() as u64,
        errors,
        seconds,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    }
}

fn put_request(urls: Vec<String>, keys: u64) -> Request {
    let value = b64(&vec![b'v'; VALUE]);
    Arc::new(move |client, n| {
        let url = urls[(client + n as usize) % urls.len()].clone();
        let key = (client as u64 * 7919 + n * 104_729) % keys;
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{value}\"}}",
            b64(format!("/bench/{key:08}").as_bytes())
        );
        (url, body.into_bytes())
    })
}

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Puts once through every member until each answers.
fn wait_writable(rt: &tokio::runtime::Runtime, system: &System) -> Result<()> {
    for url in &system.put_urls {
        let request = put_request(vec![url.clone()], 1);
        wait_for(
            &format!("{} at {url}", system.name),
            Duration::from_secs(60),
            || {
                let r = rt.block_on(load(
                    &system.client,
                    1,
                    Duration::ZERO,
                    Some(1),
                    Arc::clone(&request),
                ));
                r.ops == 1
            },
        )?;
    }
    Ok(())
}

struct Tls {
    ca: CertificateAuthority,
}

impl Tls {
    fn new() -> Result<Tls> {
        Ok(Tls {
            ca: CertificateAuthority::generate("bench-ca")?,
        })
    }

    fn write(
        &self,
        dir: &Path,
        name: &str,
        cert: &IssuedCertificate,
    ) -> Result<(PathBuf, PathBuf)> {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &cert.cert_pem)?;
        std::fs::write(&k, &cert.key_pem)?;
        Ok((c, k))
    }
}

/// An etcd cluster of `n` members on loopback with TLS for clients and peers.
fn start_etcd(tls: &Tls, dir: &Path, n: usize, extra: &[&str]) -> Result<System> {
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, tls.ca.cert_pem())?;
    let member = tls
        .ca
        .issue_server("etcd", &[], &["127.0.0.1".into(), "localhost".into()])?;
    let (cert, key) = tls.write(dir, "etcd", &member)?;
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=https://127.0.0.1:{peer}"))
        .collect();
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let data = dir.join(format!("etcd{i}"));
        let mut args: Vec<String> = vec![
            format!("--name=e{i}"),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=https://127.0.0.1:{client}"),
            format!("--advertise-client-urls=https://127.0.0.1:{client}"),
            format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
            format!("--initial-cluster={}", initial.join(",")),
            "--initial-cluster-state=new".into(),
            format!("--cert-file={}", cert.display()),
            format!("--key-file={}", key.display()),
            format!("--trusted-ca-file={}", ca.display()),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={}", cert.display()),
            format!("--peer-key-file={}", key.display()),
            format!("--peer-trusted-ca-file={}", ca.display()),
            "--peer-client-cert-auth".into(),
            "--log-level=error".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        procs.push(Proc::start(
            Path::new("/usr/bin/etcd"),
            args,
            &dir.join(format!("etcd{i}.log")),
        )?);
        dirs.push(data);
    }
    let client_cert = tls.ca.issue_client("root", &[])?;
    let https: Vec<Https> = (0..CONNECTIONS * n)
        .map(|_| https_client(tls.ca.cert_pem(), &client_cert))
        .collect::<Result<_>>()?;
    Ok(System {
        name: "etcd",
        put_urls: ports
            .iter()
            .map(|(c, _)| format!("https://127.0.0.1:{c}/v3/kv/put"))
            .collect(),
        procs,
        dirs,
        client: https,
    })
}

/// `n` `shoal server` members on loopback; the first creates the cluster, the others join.
pub(crate) struct ShoalCluster {
    pub(crate) system: System,
    pub(crate) api_urls: Vec<String>,
}

pub(crate) fn start_shoal(bin: &Path, dir: &Path, n: usize) -> Result<ShoalCluster> {
    start_shoal_with(bin, dir, n, &[])
}

/// [`start_shoal`] with `extra` flags for every member.
pub(crate) fn start_shoal_with(
    bin: &Path,
    dir: &Path,
    n: usize,
    extra: &[String],
) -> Result<ShoalCluster> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    let mut token = None;
    for (i, (api, raft)) in ports.iter().enumerate() {
        let data = dir.join(format!("shoal{i}"));
        let mut args: Vec<String> = vec![
            "server".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{api}"),
            "--raft-listen".into(),
            format!("127.0.0.1:{raft}"),
            "--name".into(),
            format!("s{i}"),
        ];
        args.extend(extra.iter().cloned());
        if let Some(token) = &token {
            args.extend([
                "--join".into(),
                format!("https://127.0.0.1:{}", ports[0].0),
                "--token".into(),
                String::clone(token),
            ]);
        }
        let log = dir.join(format!("shoal{i}.log"));
        procs.push(Proc::start(bin, args, &log)?);
        let kubeconfig = data.join("kubeconfig");
        let token_file = data.join("token");
        wait_for(
            &format!("shoal member {i}"),
            Duration::from_secs(120),
            || kubeconfig.exists() && token_file.exists(),
        )
        .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        if token.is_none() {
            token = Some(std::fs::read_to_string(&token_file)?.trim().to_string());
        }
        dirs.push(data);
    }
    let ca = CertificateAuthority::load(&dirs[0].join("pki"))?;
    let admin = ca.issue_client("bench", &["system:masters"])?;
    let https: Vec<Https> = (0..CONNECTIONS * n)
        .map(|_| https_client(ca.cert_pem(), &admin))
        .collect::<Result<_>>()?;
    Ok(ShoalCluster {
        system: System {
            name: "shoal",
            put_urls: ports
                .iter()
                .map(|(_, r)| format!("https://127.0.0.1:{r}/v3/kv/put"))
                .collect(),
            procs,
            dirs: dirs.iter().map(|d| d.join("store")).collect(),
            client: https,
        },
        api_urls: ports
            .iter()
            .map(|(a, _)| format!("https://127.0.0.1:{a}"))
            .collect(),
    })
}

/// The member index of the Shoal leader.
fn shoal_leader(rt: &tokio::runtime::Runtime, cluster: &ShoalCluster) -> Result<usize> {
    for _ in 0..600 {
        for (i, api) in cluster.api_urls.iter().enumerate() {
            if cluster.system.procs[i].child.is_none() {
                continue;
            }
            let https = cluster.system.client[0].clone();
            let req = http::Request::get(format!("{api}/shoal/v1/members"))
                .body(Full::new(Bytes::new()))?;
            let answer = rt.block_on(async {
                let resp = https.request(req).await.ok()?;
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                serde_json::from_slice::<Value>(&body).ok()
            });
            if let Some(list) = answer
                && let Some(name) = list["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["leader"] == true)
                    .and_then(|m| m["name"].as_str())
                && let Some(i) = name.strip_prefix('s').and_then(|n| n.parse::<usize>().ok())
            {
                return Ok(i);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no shoal leader")
}

/// The put loads of one system: a row per client count, and the largest RSS of its processes
/// during the 256-client run and 3 s after it.
struct PutRun {
    rows: Vec<(usize, Load)>,
    rss_peak_kib: u64,
    rss_after_kib: u64,
}

impl PutRun {
    fn json(&self) -> Value {
        json!({
            "rows": rows_json(&self.rows),
            "rss_peak_mib": self.rss_peak_kib as f64 / 1024.0,
            "rss_after_mib": self.rss_after_kib as f64 / 1024.0,
        })
    }
}

/// Runs the put loads at every client count; samples RSS of `pids` during the largest.
fn put_rows(rt: &tokio::runtime::Runtime, system: &System) -> Result<PutRun> {
    let mut rows = Vec::new();
    let mut peak = 0;
    let mut after = 0;
    for clients in CLIENTS {
        let request = put_request(system.put_urls.clone(), 100_000);
        let sampling = Arc::new(AtomicBool::new(clients == 256));
        let pids: Vec<u32> = system.procs.iter().map(Proc::pid).collect();
        let max_rss = Arc::new(AtomicU64::new(0));
        let sampler = {
            let sampling = Arc::clone(&sampling);
            let max_rss = Arc::clone(&max_rss);
            let pids = pids.clone();
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    let rss = pids.iter().filter_map(|p| rss_kib(*p)).max().unwrap_or(0);
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let result = rt.block_on(load(
            &system.client,
            clients,
            Duration::from_secs(8),
            None,
            request,
        ));
        sampling.store(false, Ordering::Relaxed);
        let _ = sampler.join();
        println!(
            "{:<6} {:>2} member(s) {:>4} clients: {:>8.0} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} errors)",
            system.name,
            system.procs.len(),
            clients,
            result.rate(),
            result.p50_ms,
            result.p99_ms,
            result.errors
        );
        if clients == 256 {
            peak = max_rss.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(3));
            after = pids.iter().filter_map(|p| rss_kib(*p)).max().unwrap_or(0);
        }
        rows.push((clients, result));
    }
    Ok(PutRun {
        rows,
        rss_peak_kib: peak,
        rss_after_kib: after,
    })
}

fn rows_json(rows: &[(usize, Load)]) -> Value {
    Value::Array(
        rows.iter()
            .map(|(c, l)| {
                let mut v = l.json();
                v["clients"] = json!(c);
                v
            })
            .collect(),
    )
}

/// Median time from `kill -9` of the leader to the first acknowledged write sent after it.
fn failover(
    rt: &tokio::runtime::Runtime,
    cluster: &mut ShoalCluster,
    kills: usize,
) -> Result<Vec<f64>> {
    let mut samples = Vec::new();
    for _ in 0..kills {
        wait_writable(rt, &cluster.system)?;
        let leader = shoal_leader(rt, cluster)?;
        let survivors: Vec<String> = cluster
            .system
            .put_urls
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, u)| u.clone())
            .collect();
        let https = cluster.system.client.clone();
        cluster.system.procs[leader].kill9();
        let killed = Instant::now();
        let request = put_request(survivors, 1000);
        let first = rt.block_on(async {
            loop {
                let r = load(&https, 1, Duration::ZERO, Some(1), Arc::clone(&request)).await;
                if r.ops == 1 {
                    return killed.elapsed();
                }
                if killed.elapsed() > Duration::from_secs(60) {
                    return killed.elapsed();
                }
            }
        });
        println!(
            "failover: writes acknowledged again {:.0} ms after kill -9 of the leader",
            first.as_secs_f64() * 1e3
        );
        samples.push(first.as_secs_f64() * 1e3);
        cluster.system.procs[leader].spawn()?;
    }
    Ok(samples)
}

fn configmap_rows(rt: &tokio::runtime::Runtime, cluster: &ShoalCluster) -> Vec<(usize, Load)> {
    let mut rows = Vec::new();
    for clients in CLIENTS {
        let urls = cluster.api_urls.clone();
        let request: Request = Arc::new(move |client, n| {
            let url = format!(
                "{}/api/v1/namespaces/default/configmaps",
                urls[(client + n as usize) % urls.len()]
            );
            let body = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("cm-{clients}-{client}-{n}")},
                "data": {"v": "x".repeat(VALUE)},
            });
            (url, body.to_string().into_bytes())
        });
        let result = rt.block_on(load(
            &cluster.system.client,
            clients,
            Duration::from_secs(8),
            None,
            request,
        ));
        println!(
            "ConfigMap creates, 3 members, {:>4} clients: {:>8.0} /s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} errors)",
            clients,
            result.rate(),
            result.p50_ms,
            result.p99_ms,
            result.errors
        );
        rows.push((clients, result));
    }
    rows
}

/// 100,000 puts of the same 1,000 keys; the data dir's size at the end.
fn disk_use(rt: &tokio::runtime::Runtime, system: &System) -> Result<(Load, u64)> {
    let request = put_request(system.put_urls.clone(), 1000);
    let result = rt.block_on(load(
        &system.client,
        64,
        Duration::ZERO,
        Some(100_000),
        request,
    ));
    // Let background snapshots and compactions settle.
    std::thread::sleep(Duration::from_secs(5));
    let size = system.dirs.iter().map(|d| dir_size(d)).max().unwrap_or(0);
    println!(
        "{}: 100,000 updates of 1,000 keys ({:.0} writes/s): data dir {:.1} MiB",
        system.name,
        result.rate(),
        size as f64 / (1 << 20) as f64
    );
    Ok((result, size))
}

/// Only the failover figure, on a 3-member cluster whose data dirs and logs are kept under
/// `out/failover` (to read what happened when a kill is not recovered from).
pub fn failover_only(bin: &Path, out: &Path) -> Result<()> {
    let rt = runtime()?;
    let dir = fresh_dir(out, "failover")?;
    let mut shoal = start_shoal(bin, &dir, 3)?;
    wait_writable(&rt, &shoal.system)?;
    let samples = failover(&rt, &mut shoal, 10)?;
    println!(
        "failover samples (ms): {samples:?}; logs in {}",
        dir.display()
    );
    Ok(())
}

/// Disk use under a steady update load (100,000 updates of 1,000 keys), one member each.
fn disk_report(rt: &tokio::runtime::Runtime, bin: &Path, tls: &Tls, out: &Path) -> Result<Value> {
    // Kept under `out`, to see which files the space is in.
    let dir = fresh_dir(out, "store-disk-shoal")?;
    let shoal = start_shoal(bin, &dir, 1)?;
    wait_writable(rt, &shoal.system)?;
    let (load_s, size_s) = disk_use(rt, &shoal.system)?;
    drop(shoal);
    let dir = tempfile::tempdir()?;
    let etcd = start_etcd(tls, dir.path(), 1, &[])?;
    wait_writable(rt, &etcd)?;
    let (load_e, size_e) = disk_use(rt, &etcd)?;
    drop(etcd);
    Ok(json!({
        "updates": 100_000, "keys": 1000,
        "shoal_mib": size_s as f64 / (1 << 20) as f64, "shoal": load_s.json(),
        "etcd_default_mib": size_e as f64 / (1 << 20) as f64, "etcd": load_e.json(),
    }))
}

/// Only the disk-use figure; writes `out/store-disk.json`.
pub fn disk_only(bin: &Path, out: &Path, machine: Value) -> Result<()> {
    ensure_etcd()?;
    let rt = runtime()?;
    let mut report = disk_report(&rt, bin, &Tls::new()?, out)?;
    report["machine"] = machine;
    std::fs::create_dir_all(out)?;
    let path = out.join("store-disk.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn ensure_etcd() -> Result<()> {
    if !Path::new("/usr/bin/etcd").exists() {
        // Debian's etcd 3.4 is the peer; install it as the test command installs its tools.
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            ok,
            "etcd 3.4 is needed and apt-get install etcd-server failed"
        );
    }
    Ok(())
}

/// The write rows of etcd then Shoal with `members` members each: (etcd's report, Shoal's
/// report with its ratios to etcd, and the Shoal cluster, still running).
fn write_rows(
    rt: &tokio::runtime::Runtime,
    tls: &Tls,
    bin: &Path,
    out: &Path,
    members: usize,
) -> Result<(Value, Value, ShoalCluster)> {
    let dir = tempfile::tempdir()?;
    let etcd = start_etcd(tls, dir.path(), members, &[])?;
    wait_writable(rt, &etcd)?;
    let etcd_run = put_rows(rt, &etcd)?;
    drop(etcd);

    let dir = fresh_dir(out, &format!("store-shoal-{members}"))?;
    let shoal = start_shoal(bin, &dir, members)?;
    wait_writable(rt, &shoal.system)?;
    let run = put_rows(rt, &shoal.system)?;
    println!(
        "shoal {members} member(s): RSS {:.1} MiB during the 256-client run, {:.1} MiB after",
        run.rss_peak_kib as f64 / 1024.0,
        run.rss_after_kib as f64 / 1024.0
    );
    let mut ratios = Vec::new();
    for ((clients, s), (_, e)) in run.rows.iter().zip(&etcd_run.rows) {
        let ratio = s.rate() / e.rate().max(1e-9);
        println!("{members} member(s) {clients:>4} clients: shoal/etcd throughput {ratio:.2}");
        ratios.push(json!({"clients": clients, "shoal_over_etcd": ratio}));
    }
    let mut entry = run.json();
    entry["ratio_to_etcd"] = json!(ratios);
    Ok((etcd_run.json(), entry, shoal))
}

/// Only the write rows at `members` members; writes `out/store-writes-{members}.json`.
pub fn writes_only(bin: &Path, out: &Path, machine: Value, members: usize) -> Result<()> {
    ensure_etcd()?;
    let rt = runtime()?;
    let (etcd, shoal, _cluster) = write_rows(&rt, &Tls::new()?, bin, out, members)?;
    let report = json!({"benchmark": "store-writes", "members": members, "value_bytes": VALUE,
        "machine": machine, "etcd": etcd, "shoal": shoal});
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("store-writes-{members}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

pub fn run(bin: &Path, out: &Path, machine: Value) -> Result<()> {
    ensure_etcd()?;
    let rt = runtime()?;
    let tls = Tls::new()?;
    let mut report = json!({"benchmark": "store", "value_bytes": VALUE, "machine": machine});

    for members in [1usize, 3] {
        let (etcd, mut entry, mut shoal) = write_rows(&rt, &tls, bin, out, members)?;
        report[format!("etcd_{members}")] = etcd;
        if members == 3 {
            let cm = configmap_rows(&rt, &shoal);
            entry["configmap_creates"] = rows_json(&cm);
            let samples = failover(&rt, &mut shoal, 5)?;
            let mut sorted = samples.clone();
            sorted.sort_by(f64::total_cmp);
            println!(
                "failover median: {:.0} ms over {} kills",
                sorted[sorted.len() / 2],
                sorted.len()
            );
            entry["failover_ms"] = json!(samples);
            entry["failover_median_ms"] = json!(sorted[sorted.len() / 2]);
        }
        report[format!("shoal_{members}")] = entry;
    }

    report["disk_use"] = disk_report(&rt, bin, &tls, out)?;
    std::fs::create_dir_all(out)?;
    let path = out.join("store.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
