//! `shoal up`: the whole cluster in one process — store, apiserver, scheduler, controllers and
//! one node agent — each a task with its own `run(config, ..., shutdown)`. They still talk to
//! each other only through the apiserver over loopback HTTP, exactly as when split across
//! machines. Writes `DIR/kubeconfig` for kubectl once the apiserver answers `/readyz`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the store, images, compile cache, logs and kubeconfig live.
    #[arg(long, default_value = "shoal-data")]
    pub data_dir: PathBuf,
    /// Address of the Kubernetes API.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Address of the node agent's log endpoint (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub agent_listen: SocketAddr,
    /// Name of the node this process registers (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Pods this node accepts.
    #[arg(long, default_value_t = 1000)]
    pub max_pods: u32,
}

pub async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize().context("resolving data dir")?;
    let shutdown = CancellationToken::new();
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();

    let store = shoal_store::Store::open(&data_dir.join("store"))
        .await
        .context("opening the store")?;
    {
        let config = shoal_apiserver::Config {
            listen: args.listen,
            ..shoal_apiserver::Config::default()
        };
        let store = store.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = shoal_apiserver::run(config, store, shutdown).await;
            ("apiserver", result.map_err(anyhow::Error::from))
        });
    }
    let client = api_client(args.listen)?;
    wait_ready(&client, args.listen, &mut tasks).await?;
    let kubeconfig = data_dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, args.listen)?;

    {
        let client = client.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let config = shoal_scheduler::Config::default();
            let result = shoal_scheduler::run(config, client, shutdown).await;
            ("scheduler", result.map_err(anyhow::Error::from))
        });
    }
    {
        let client = client.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let config = shoal_controllers::Config::default();
            let result = shoal_controllers::run(config, client, shutdown).await;
            ("controllers", result.map_err(anyhow::Error::from))
        });
    }
    {
        let wasm = shoal_runtime_wasm::WasmRuntime::new(
            shoal_runtime_wasm::WasmRuntimeConfig::new(data_dir.join("wasm")),
        )
        .context("starting the wasm runtime")?;
        let runtimes: Vec<Arc<dyn shoal_runtime::Runtime>> = vec![Arc::new(wasm)];
        let node_name = match args.node_name.clone() {
            Some(name) => name,
            None => hostname(),
        };
        let mut capacity = shoal_agent::NodeResources::detect();
        capacity.pods = args.max_pods;
        let config = shoal_agent::Config {
            node_name,
            data_dir: data_dir.join("agent"),
            listen: args.agent_listen,
            capacity,
            labels: Default::default(),
        };
        let client = client.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = shoal_agent::run(config, client, runtimes, shutdown).await;
            ("agent", result.map_err(anyhow::Error::from))
        });
    }
    info!(
        api = %args.listen,
        kubeconfig = %kubeconfig.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shoal is up"
    );
    eprintln!(
        "shoal is up: API on http://{}; use `export KUBECONFIG={}`",
        args.listen,
        kubeconfig.display()
    );

    let mut failure = None;
    tokio::select! {
        _ = shutdown_signal() => info!("shutting down"),
        Some(joined) = tasks.join_next() => {
            match joined {
                Ok((name, Ok(()))) => { error!(component = name, "component stopped unexpectedly"); failure = Some(format!("{name} stopped")); }
                Ok((name, Err(err))) => { error!(component = name, error = %format!("{err:#}"), "component failed"); failure = Some(format!("{name}: {err:#}")); }
                Err(err) => { error!(error = %err, "component panicked"); failure = Some(format!("component panicked: {err}")); }
            }
        }
    }
    shutdown.cancel();
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, Err(err))) = joined {
                error!(component = name, error = %format!("{err:#}"), "component failed while stopping");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        error!("components did not stop within 30s");
    }
    if let Err(err) = store.shutdown().await {
        error!(error = %err, "store shutdown failed");
    }
    match failure {
        Some(failure) => bail!(failure),
        None => Ok(()),
    }
}

/// Polls `/readyz` until the apiserver answers, failing fast if it exits first.
async fn wait_ready(
    client: &kube::Client,
    listen: SocketAddr,
    tasks: &mut JoinSet<(&'static str, Result<()>)>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if readyz(client).await {
            return Ok(());
        }
        if let Some(joined) = tasks.try_join_next() {
            match joined {
                Ok((name, Err(err))) => return Err(err.context(format!("{name} failed to start"))),
                Ok((name, Ok(()))) => bail!("{name} stopped before becoming ready"),
                Err(err) => bail!("apiserver panicked: {err}"),
            }
        }
        if Instant::now() > deadline {
            bail!("apiserver not ready on {listen} after 60s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn readyz(client: &kube::Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client.request_text(request).await.is_ok()
}

fn api_client(listen: SocketAddr) -> Result<kube::Client> {
    let uri: http::Uri = format!("http://{listen}")
        .parse()
        .context("apiserver address")?;
    let config = kube::Config::new(uri);
    kube::Client::try_from(config).context("building the API client")
}

/// Writes a kubeconfig that kubectl can use as it is.
fn write_kubeconfig(path: &Path, listen: SocketAddr) -> Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: http://{listen}\nusers:\n- name: shoal\n  user: {{}}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: shoal\n    namespace: default\ncurrent-context: shoal\n"
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty() && shoal_api::validation::is_dns1123_subdomain(h))
        .unwrap_or_else(|| "shoal-node".to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
