//! Harness for the end-to-end tests: builds the `shoal` binary and Wasm guests from source,
//! starts Debian's `docker-registry` and `shoal up` as real processes on loopback ports, and
//! drives them with the real `kubectl`. Everything it starts is killed on drop. It waits on
//! conditions with deadlines, never on fixed sleeps.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod lan;
pub mod multi;
pub use shoal_runtime_wasm::testing::{
    GuestTarget, Registry, build_guest, hello_guest, http_get, http_hello_guest, test_guest,
    workspace_root,
};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

static SHOAL_BIN: OnceLock<PathBuf> = OnceLock::new();

/// Makes the harness use `bin` (e.g. a release build) instead of building the debug binary.
/// Must be called before anything starts a cluster.
pub fn use_shoal_bin(bin: PathBuf) {
    let _ = SHOAL_BIN.set(bin);
}

/// Path to the `shoal` binary: `$SHOAL_BIN`, else built once with cargo (debug profile, the
/// same the test suite uses, so it is usually already up to date).
pub fn shoal_bin() -> &'static Path {
    SHOAL_BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SHOAL_BIN") {
            return PathBuf::from(bin);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "shoal-cli", "--bin", "shoal"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for shoal");
        assert!(status.success(), "cargo build of shoal failed");
        target_dir().join("debug").join("shoal")
    })
}

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// Polls `check` until it yields `Some`, or fails after `timeout` with the last observation.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met".to_string(),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `shoal up` process with its own data dir, API port and member (raft) port.
pub struct Cluster {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub raft: SocketAddr,
    /// Flags given to `shoal up` besides the data dir, addresses and node name.
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `shoal up` on `data_dir` and waits until it answers `/readyz` and its node is Ready.
    pub fn start(data_dir: &Path) -> Result<Cluster> {
        Self::start_with(data_dir, &[])
    }

    /// Starts `shoal up` with `extra` flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Result<Cluster> {
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let raft: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(data_dir, api, raft, extra)
    }

    /// Starts `shoal up` with node failure detected fast: nodes monitored every second, lost
    /// after `grace` without a Lease renewal (node Leases of 2 s, renewed every 500 ms), and
    /// their pods evicted `toleration` later.
    pub fn start_fast_failover(
        data_dir: &Path,
        grace: std::time::Duration,
        toleration: std::time::Duration,
    ) -> Result<Cluster> {
        let grace = format!("{}s", grace.as_secs());
        let toleration = toleration.as_secs().to_string();
        Self::start_with(
            data_dir,
            &[
                "--node-monitor-period",
                "1s",
                "--node-monitor-grace-period",
                &grace,
                "--default-unreachable-toleration-seconds",
                &toleration,
                "--default-not-ready-toleration-seconds",
                &toleration,
                "--node-lease-duration-seconds",
                "2",
            ],
        )
    }

    /// Starts `shoal up` again on the same data dir, ports and flags (after `kill9`).
    pub fn restart(&self) -> Result<Cluster> {
        Self::launch(&self.data_dir, self.api, self.raft, self.extra.clone())
    }

    pub fn start_on(data_dir: &Path, api: SocketAddr, raft: SocketAddr) -> Result<Cluster> {
        Self::launch(data_dir, api, raft, Vec::new())
    }

    fn launch(
        data_dir: &Path,
        api: SocketAddr,
        raft: SocketAddr,
        extra: Vec<String>,
    ) -> Result<Cluster> {
        std::fs::create_dir_all(data_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("shoal.log"))?;
        let child = Command::new(shoal_bin())
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .arg("--listen")
            .arg(api.to_string())
            .arg("--raft-listen")
            .arg(raft.to_string())
            .args(["--node-name", "node-1"])
            .args(&extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting shoal up")?;
        let mut cluster = Cluster {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            api,
            raft,
            extra,
        };
        wait_until("shoal up to be ready", Duration::from_secs(60), || {
            if let Some(status) = cluster
                .child
                .as_mut()
                .map(Child::try_wait)
                .transpose()?
                .flatten()
            {
                bail!("shoal up exited with {status}: {}", cluster.log_tail());
            }
            // The kubeconfig is written once the API answers; then ask it over TLS as kubectl.
            if !cluster.kubeconfig().exists() {
                return Ok(None);
            }
            let ready = cluster
                .kubectl_output(&["get", "--raw", "/readyz"])
                .is_ok_and(|out| out.status.success());
            Ok(ready.then_some(()))
        })?;
        wait_until("the node to be Ready", Duration::from_secs(60), || {
            let out = cluster.kubectl(&["get", "nodes", "-o", "json"])?;
            let nodes: serde_json::Value = serde_json::from_str(&out)?;
            let ready = nodes["items"].as_array().is_some_and(|items| {
                items.iter().any(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
            });
            Ok(ready.then_some(()))
        })?;
        Ok(cluster)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// The last lines of the cluster's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("shoal.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Runs kubectl against this cluster; fails with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_output(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The revision numbers `kubectl rollout history RESOURCE` lists, with its whole output.
    pub fn rollout_history(&self, resource: &str) -> Result<(Vec<String>, String)> {
        let history = self.kubectl(&["rollout", "history", resource])?;
        let revisions = history
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_owned)
            .collect();
        Ok((revisions, history))
    }

    /// Runs kubectl and returns its whole output, success or not.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<Output> {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs `kubectl apply -f -` with `manifest` on stdin.
    pub fn apply(&self, manifest: &str) -> Result<Output> {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(manifest.as_bytes())?;
        Ok(child.wait_with_output()?)
    }

    /// Runs the `shoal` CLI with this cluster's kubeconfig.
    pub fn shoal(&self, args: &[&str]) -> Result<Output> {
        Command::new(shoal_bin())
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .context("running shoal")
    }

    /// Pushes a Wasm file to `image` with `shoal push`; returns what it printed (the
    /// manifest digest), or fails with its stderr.
    pub fn push(&self, wasm: &Path, image: &str) -> Result<String> {
        let out = self.shoal(&["push", wasm.to_str().context("wasm path")?, image])?;
        if !out.status.success() {
            bail!("shoal push: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Pods as JSON objects, optionally filtered by a label selector.
    pub fn pods(&self, selector: Option<&str>) -> Result<Vec<serde_json::Value>> {
        let mut args = vec!["get", "pods", "-o", "json"];
        if let Some(selector) = selector {
            args.extend(["-l", selector]);
        }
        let list: serde_json::Value = serde_json::from_str(&self.kubectl(&args)?)?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Stops the process with SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Number of pods that are Running and not being deleted.
pub fn running(pods: &[serde_json::Value]) -> usize {
    pods.iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count()
}

impl Cluster {
    /// Process id of the running `shoal up`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}
