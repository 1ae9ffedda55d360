//! `cargo xtask bench http`: HTTP hello with a fresh instance per request (issue 8), `wrk` on the
//! same two cores, side by side with its peers:
//!
//! - Shoal: `shoal up` (release), the `http-hello` example in a Deployment, `wrk` against the
//!   pod's IP;
//! - `wasmtime-serve`: a minimal wasmtime-wasi-http server of the same component, same wasmtime
//!   version, a fresh instance per request (`crates/shoal-bench-peers`);
//! - `hyper-hello`: a native hyper server answering the same bytes: the ceiling.
//!
//! Each at 1, 16 and 128 connections for 10 s after a 2 s warm-up: requests/s, p50 and p99 (from
//! `wrk --latency`), and the server's RSS after the run. Prints the table with the ratios to the
//! peers and writes `target/bench/http.json`. Installs Debian's `wrk` when missing. Never
//! asserts on time.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_e2e::{Cluster, Registry, free_port, http_get, http_hello_guest, wait_until};

use crate::store::rss_kib;

const CONNECTIONS: [u32; 3] = [1, 16, 128];
const DURATION_SECS: u32 = 10;

/// One `wrk` run.
struct Run {
    connections: u32,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// `123.45us`, `1.20ms`, `2.00s` in milliseconds.
fn wrk_ms(value: &str) -> Option<f64> {
    let (number, factor) = if let Some(v) = value.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn parse_wrk(output: &str, connections: u32) -> Result<Run> {
    let mut run = Run {
        connections,
        requests_per_sec: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in output.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", value] => run.requests_per_sec = value.parse()?,
            ["50%", value] => run.p50_ms = wrk_ms(value).context("p50")?,
            ["99%", value] => run.p99_ms = wrk_ms(value).context("p99")?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    ensure!(
        run.requests_per_sec > 0.0,
        "no figures in wrk output:\n{output}"
    );
    Ok(run)
}

fn wrk(addr: SocketAddr, connections: u32, seconds: u32) -> Result<Run> {
    let threads = connections.min(2);
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{addr}/"),
        ])
        .output()
        .context("running wrk")?;
    ensure!(
        out.status.success(),
        "wrk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_wrk(&String::from_utf8_lossy(&out.stdout), connections)
}

fn ensure_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "wrk"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("apt-get install wrk")?;
    ensure!(status.success(), "apt-get install wrk failed");
    Ok(())
}

/// Waits until `addr` answers `GET /` with 200.
fn answering(addr: SocketAddr) -> Result<()> {
    wait_until(
        &format!("{addr} to answer"),
        Duration::from_secs(60),
        || {
            Ok(http_get(addr, "/")
                .is_ok_and(|(code, _)| code == 200)
                .then_some(()))
        },
    )
}

/// Warms up, then one `wrk` run per connection count; the RSS of `pid` after each.
fn measure(name: &str, addr: SocketAddr, pid: u32) -> Result<Value> {
    answering(addr)?;
    let rss_before = rss_kib(pid).unwrap_or(0);
    wrk(addr, 16, 2)?;
    let mut runs = Vec::new();
    for connections in CONNECTIONS {
        let run = wrk(addr, connections, DURATION_SECS)?;
        let rss = rss_kib(pid).unwrap_or(0);
        println!(
            "{name:<15} {:>4} conns: {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {:>5}  RSS {:>6.1} MiB",
            run.connections,
            run.requests_per_sec,
            run.p50_ms,
            run.p99_ms,
            run.errors,
            rss as f64 / 1024.0
        );
        runs.push(json!({
            "connections": run.connections,
            "requests_per_sec": run.requests_per_sec,
            "p50_ms": run.p50_ms,
            "p99_ms": run.p99_ms,
            "errors": run.errors,
            "rss_mib_after": rss as f64 / 1024.0,
        }));
    }
    Ok(json!({"server": name, "rss_mib_before": rss_before as f64 / 1024.0, "runs": runs}))
}

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer(bin: &Path, args: &[&str]) -> Result<Peer> {
    let child = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Peer(child))
}

pub fn run(bins: &Path, out: &Path, machine: Value) -> Result<()> {
    ensure_wrk()?;
    let component = http_hello_guest();
    let mut results = Vec::new();

    // Shoal.
    {
        shoal_e2e::use_shoal_bin(bins.join("shoal"));
        let registry = Registry::start();
        let data = tempfile::tempdir()?;
        let cluster = Cluster::start(data.path())?;
        let image = registry.reference("http-hello", "v1");
        cluster.push(&component, &image)?;
        let manifest = std::fs::read_to_string(
            shoal_e2e::workspace_root().join("examples/http-hello/deployment.yaml"),
        )?;
        let mut doc: Value = serde_saphyr::from_str(&manifest)?;
        let container = &mut doc["spec"]["template"]["spec"]["containers"][0];
        container["image"] = image.into();
        container["ports"][0]["hostPort"] = free_port().into();
        // The benchmark measures serving, not the CPU limit of the example.
        container["resources"]["limits"]["cpu"] = "2".into();
        let applied = cluster.apply(&doc.to_string())?;
        ensure!(
            applied.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let pod_ip = wait_until("the http-hello pod", Duration::from_secs(120), || {
            let pods = cluster.pods(Some("app=http-hello"))?;
            Ok(pods
                .iter()
                .find(|p| p["status"]["phase"] == "Running")
                .and_then(|p| p["status"]["podIP"].as_str().map(str::to_owned)))
        })?;
        let addr = SocketAddr::new(pod_ip.parse()?, 8080);
        let pid = cluster.pid().context("shoal up is not running")?;
        results.push(measure("shoal", addr, pid)?);
    }

    // wasmtime-wasi-http, same component, same wasmtime.
    {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let component = component.to_str().context("component path")?;
        let server = peer(
            &bins.join("wasmtime-serve"),
            &[component, &addr.to_string()],
        )?;
        results.push(measure("wasmtime-serve", addr, server.0.id())?);
    }

    // Native hyper: the ceiling.
    {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let server = peer(&bins.join("hyper-hello"), &[&addr.to_string()])?;
        results.push(measure("hyper-hello", addr, server.0.id())?);
    }

    let rps = |server: usize, run: usize| -> f64 {
        results[server]["runs"][run]["requests_per_sec"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let mut ratios = Vec::new();
    for (i, connections) in CONNECTIONS.iter().enumerate() {
        let shoal = rps(0, i);
        let (wasmtime, hyper) = (rps(1, i), rps(2, i));
        println!(
            "{connections:>4} conns: shoal / wasmtime-serve {:.2}, shoal / hyper {:.2}",
            shoal / wasmtime,
            shoal / hyper
        );
        ratios.push(json!({
            "connections": connections,
            "shoal_over_wasmtime_serve": shoal / wasmtime,
            "shoal_over_hyper": shoal / hyper,
        }));
    }
    std::fs::create_dir_all(out)?;
    let report = json!({
        "machine": machine,
        "duration_secs": DURATION_SECS,
        "servers": results,
        "ratios": ratios,
    });
    let path = out.join("http.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("wrote {}", path.display());
    if results.is_empty() {
        bail!("nothing measured");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_parses() {
        let output = "Running 10s test @ http://127.0.0.1:8080/
  2 threads and 16 connections
  Latency Distribution
     50%  412.00us
     75%  600.00us
     90%    1.02ms
     99%    2.50ms
  123456 requests in 10.00s, 20.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  12345.60
Transfer/sec:      2.00MB
";
        let run = parse_wrk(output, 16).expect("parse");
        assert_eq!(run.requests_per_sec, 12345.6);
        assert!((run.p50_ms - 0.412).abs() < 1e-9);
        assert!((run.p99_ms - 2.5).abs() < 1e-9);
        assert_eq!(run.errors, 12);
        assert_eq!(wrk_ms("1.5s"), Some(1500.0));
    }
}
