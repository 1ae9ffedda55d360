//! A control plane of several `shoal server` processes, each on its own host of a [`Lan`],
//! and `shoal agent` processes on others, as on separate machines.
//!
//! Host `i` runs member `m{i}` with its API on `10.99.0.i:6443` and its member port on
//! `:6444`; the first creates the cluster, the others join it with its token. Clients (kubectl
//! and the test's own kube-rs clients) run on the client host with the admin kubeconfig.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::lan::{Lan, Proc};
use crate::wait_until;

/// Leader election fast enough for tests (kube's defaults are 15 s / 10 s / 2 s).
const ELECTION: [&str; 6] = [
    "--leader-elect-lease-duration",
    "4s",
    "--leader-elect-renew-deadline",
    "3s",
    "--leader-elect-retry-period",
    "1s",
];

pub struct ControlPlane {
    pub members: Vec<Proc>,
    pub dir: PathBuf,
    /// The first member's admin kubeconfig (valid for every member).
    pub kubeconfig: PathBuf,
    /// The join token (`DIR/token` of the first member).
    pub token: String,
}

impl ControlPlane {
    /// `n` members on hosts `1..=n`, data under `dir`; returns once all are voters and ready.
    pub fn start(lan: &Lan, n: u8, dir: &Path) -> Result<ControlPlane> {
        let first_dir = dir.join("m1");
        let mut first = Proc::start(
            lan,
            1,
            &server_args(lan, 1, &first_dir, None),
            &dir.join("m1.log"),
        )?;
        let token_path = first_dir.join("token");
        let kubeconfig = first_dir.join("kubeconfig");
        wait_until("the first member's token", Duration::from_secs(60), || {
            if let Some(status) = first.exited()? {
                bail!("m1 exited with {status}: {}", first.log_tail());
            }
            Ok((token_path.exists() && kubeconfig.exists()).then_some(()))
        })?;
        let token = std::fs::read_to_string(&token_path)?.trim().to_string();
        let mut cp = ControlPlane {
            members: vec![first],
            dir: dir.to_owned(),
            kubeconfig,
            token,
        };
        cp.wait_ready(lan, 1)?;
        for i in 2..=n {
            let join = (api(lan, 1), cp.token.clone());
            let args = server_args(lan, i, &dir.join(format!("m{i}")), Some(join));
            cp.members
                .push(Proc::start(lan, i, &args, &dir.join(format!("m{i}.log")))?);
            cp.wait_ready(lan, i)?;
        }
        Ok(cp)
    }

    /// The last lines of every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- m{} ---\n{}", m.host, m.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Member `i` (host `i`).
    pub fn member(&mut self, i: u8) -> &mut Proc {
        &mut self.members[usize::from(i) - 1]
    }

    /// Waits until member `i` answers `/readyz` through its own API.
    pub fn wait_ready(&mut self, lan: &Lan, i: u8) -> Result<()> {
        let kubeconfig = self.kubeconfig.clone();
        let server = api(lan, i);
        wait_until(
            &format!("member m{i} to be ready"),
            Duration::from_secs(120),
            || {
                if let Some(status) = self.member(i).exited()? {
                    bail!("m{i} exited with {status}: {}", self.member(i).log_tail());
                }
                let out = lan.kubectl(&kubeconfig, &server, &["get", "--raw", "/readyz"])?;
                Ok(out.status.success().then_some(()))
            },
        )
    }

    /// Runs kubectl against member `i`; fails with its stderr.
    pub fn kubectl(&self, lan: &Lan, i: u8, args: &[&str]) -> Result<String> {
        let out = lan.kubectl(&self.kubeconfig, &api(lan, i), args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} (via m{i}) failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The members as member `via` sees them.
    pub fn members_seen_by(&self, lan: &Lan, via: u8) -> Result<Value> {
        Ok(serde_json::from_str(&self.kubectl(
            lan,
            via,
            &["get", "--raw", "/shoal/v1/members"],
        )?)?)
    }

    /// The host of the leader as member `via` sees it, once there is one.
    pub fn leader(&self, lan: &Lan, via: u8) -> Result<u8> {
        wait_until("a raft leader", Duration::from_secs(60), || {
            let Ok(members) = self.members_seen_by(lan, via) else {
                return Ok(None);
            };
            Ok(members["members"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["leader"] == true)
                .and_then(|m| m["name"].as_str())
                .and_then(|name| name.strip_prefix('m'))
                .and_then(|n| n.parse::<u8>().ok()))
        })
    }

    /// The host whose member holds the Lease `name` in kube-system.
    pub fn lease_holder(&self, lan: &Lan, via: u8, name: &str) -> Result<u8> {
        let lease: Value = serde_json::from_str(&self.kubectl(
            lan,
            via,
            &["get", "lease", "-n", "kube-system", name, "-o", "json"],
        )?)?;
        let holder = lease["spec"]["holderIdentity"]
            .as_str()
            .ok_or_else(|| anyhow!("lease {name} has no holder"))?;
        holder
            .strip_prefix('m')
            .and_then(|rest| rest.split('_').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("holder {holder:?} is not one of the members"))
    }
}

/// `https://10.99.0.i:6443`.
pub fn api(lan: &Lan, i: u8) -> String {
    format!("https://{}:6443", lan.ip(i))
}

fn server_args(lan: &Lan, i: u8, dir: &Path, join: Option<(String, String)>) -> Vec<String> {
    let ip = lan.ip(i);
    let mut args: Vec<String> = vec![
        "server".into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        format!("{ip}:6443"),
        "--raft-listen".into(),
        format!("{ip}:6444"),
        "--name".into(),
        format!("m{i}"),
    ];
    args.extend(ELECTION.iter().map(|s| s.to_string()));
    if let Some((url, token)) = join {
        args.extend(["--join".into(), url, "--token".into(), token]);
    }
    args
}

/// Arguments of `shoal agent` on host `i`, joining through member `via`.
pub fn agent_args(lan: &Lan, i: u8, via: u8, dir: &Path, token: &str) -> Vec<String> {
    vec![
        "agent".into(),
        "--server".into(),
        api(lan, via),
        "--token".into(),
        token.to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--node-name".into(),
        format!("n{i}"),
        "--agent-listen".into(),
        format!("{}:10250", lan.ip(i)),
    ]
}

/// Writes ConfigMaps through every member, from the client host, and records each write a
/// member acknowledged (with when). Stops when dropped or `stop`ped.
pub struct WriteLoad {
    state: std::sync::Arc<LoadState>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    pub name: String,
    pub sent: std::time::Instant,
    pub acked: std::time::Instant,
}

#[derive(Default)]
struct LoadState {
    stop: std::sync::atomic::AtomicBool,
    /// Name, when the request was sent and when it was acknowledged.
    acked: std::sync::Mutex<Vec<Ack>>,
    failed: std::sync::atomic::AtomicU64,
}

/// A client of `server` with the kubeconfig's credentials and short timeouts (a dead or cut
/// off member fails a request fast).
pub async fn client_at(kubeconfig: &Path, server: &str) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.cluster_url = server.parse()?;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(15));
    config.write_timeout = Some(Duration::from_secs(5));
    // Every failure is counted as it happens: no retries behind the load's back.
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

impl WriteLoad {
    /// `writers` concurrent writers, each cycling over the members' APIs in `servers`.
    pub fn start(lan: &Lan, kubeconfig: &Path, servers: Vec<String>, writers: usize) -> WriteLoad {
        let state = std::sync::Arc::new(LoadState::default());
        let threads = (0..writers)
            .map(|w| {
                let state = std::sync::Arc::clone(&state);
                let servers = servers.clone();
                let kubeconfig = kubeconfig.to_owned();
                lan.spawn_within(crate::lan::CLIENT, move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(write_loop(w, state, servers, kubeconfig))
                })
            })
            .collect();
        WriteLoad { state, threads }
    }

    /// Acknowledged writes so far.
    pub fn acked(&self) -> Vec<Ack> {
        self.state
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Failed (or unanswered) writes so far.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the writers and returns every acknowledged write.
    pub fn stop(mut self) -> Result<Vec<String>> {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().map_err(|_| anyhow!("a writer panicked"))??;
        }
        Ok(self.acked().into_iter().map(|a| a.name).collect())
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn write_loop(
    writer: usize,
    state: std::sync::Arc<LoadState>,
    servers: Vec<String>,
    kubeconfig: PathBuf,
) -> Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let mut clients = Vec::new();
    for s in &servers {
        clients.push(client_at(&kubeconfig, s).await?);
    }
    let mut n = 0u64;
    while !state.stop.load(std::sync::atomic::Ordering::Relaxed) {
        let client = &clients[(n as usize + writer) % clients.len()];
        let name = format!("w{writer}-{n}");
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "data": {"n": n.to_string()},
        }))?;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), "default");
        let sent = std::time::Instant::now();
        match api.create(&kube::api::PostParams::default(), &cm).await {
            Ok(_) => state
                .acked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Ack {
                    name,
                    sent,
                    acked: std::time::Instant::now(),
                }),
            Err(_) => {
                state
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        n += 1;
    }
    Ok(())
}

/// Names of the ConfigMaps in `default`, as member `i` lists them.
pub fn configmaps(
    cp: &ControlPlane,
    lan: &Lan,
    i: u8,
) -> Result<std::collections::BTreeSet<String>> {
    let list: Value = serde_json::from_str(&cp.kubectl(
        lan,
        i,
        &["get", "configmaps", "-n", "default", "-o", "json"],
    )?)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|cm| cm["metadata"]["name"].as_str().map(str::to_owned))
        .collect())
}
