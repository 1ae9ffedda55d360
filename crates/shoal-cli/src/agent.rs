//! `shoal agent`: a node agent alone on a machine, joining a cluster with a token.
//!
//! First start: the token pins the cluster CA and authenticates a CertificateSigningRequest
//! for `system:node:<name>`; once the control plane approved and signed it, the node
//! certificate and its kubeconfig are kept under the data dir and the token is not needed
//! again. A wrong or expired token ends the process with a message and a non-zero exit.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_tls::{IssuedCertificate, JoinToken};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::process::{self, Tasks};
use crate::{balancer, http, pki};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// API URLs of control-plane members (`https://HOST:PORT`; repeat or separate by commas).
    /// One is enough: the agent learns the others from the cluster and fails over between
    /// them.
    #[arg(long, required = true, value_delimiter = ',')]
    pub server: Vec<String>,
    /// Join token (`SHOAL1...`); needed on the first start only.
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the join token from this file (waiting up to two minutes for it to appear).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Where the node certificate, images, compile cache and pod data live.
    #[arg(long, default_value = "shoal-agent")]
    pub data_dir: PathBuf,
    /// Name of the Node [default: the host name].
    #[arg(long)]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What the node offers and where its log endpoint listens (shared with `shoal up`).
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Address of the node's log endpoint, which the apiserver proxies `kubectl logs` to.
    #[arg(long = "agent-listen", default_value = "0.0.0.0:10250")]
    pub agent_listen: SocketAddr,
    /// The node's address as the cluster reaches it [default: the log endpoint's address,
    /// or loopback].
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// Pods this node accepts.
    #[arg(long, default_value_t = 1000)]
    pub max_pods: u32,
    /// A registry (`host:port`) to pull from over plain HTTP (those on 127.0.0.0/8 always
    /// are); repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

/// Starts the node agent (with the Wasm runtime) as a task of `tasks`.
pub fn spawn_node(
    tasks: &mut Tasks,
    client: kube::Client,
    data_dir: &Path,
    node_name: String,
    node: &NodeArgs,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut wasm_config = shoal_runtime_wasm::WasmRuntimeConfig::new(data_dir.join("wasm"));
    wasm_config.insecure_registries = node.insecure_registries.clone();
    let wasm =
        shoal_runtime_wasm::WasmRuntime::new(wasm_config).context("starting the wasm runtime")?;
    let runtimes: Vec<Arc<dyn shoal_runtime::Runtime>> = vec![Arc::new(wasm)];
    let mut capacity = shoal_agent::NodeResources::detect();
    capacity.pods = node.max_pods;
    let config = shoal_agent::Config {
        node_name,
        data_dir: data_dir.join("agent"),
        listen: node.agent_listen,
        node_ip: node.node_ip,
        capacity,
        labels: Default::default(),
    };
    tasks.spawn(async move {
        let result = shoal_agent::run(config, client, runtimes, shutdown).await;
        ("agent", result.map_err(anyhow::Error::from))
    });
    Ok(())
}

/// This node's kubeconfig: the saved one, or a new one from the TLS bootstrap.
async fn credentials(args: &Args, data_dir: &Path, node_name: &str) -> Result<String> {
    let path = data_dir.join("kubeconfig");
    if path.exists() {
        return std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()));
    }
    let server = &args.server[0];
    let token: JoinToken =
        match crate::token::from_args(args.token.as_deref(), args.token_file.as_deref()).await? {
            Some(t) => t,
            None => anyhow::bail!(
                "this node has no certificate yet: give it the cluster's join token (--token, \
                 --token-file or SHOAL_TOKEN)"
            ),
        };
    let ca_pem = http::ca_bundle(server, &token).await?;
    let key_pem = shoal_tls::new_private_key()?;
    let cert_pem = http::request_node_certificate(
        server,
        &token,
        node_name,
        &key_pem,
        Duration::from_secs(120),
    )
    .await?;
    let pki_dir = pki::dir(data_dir);
    std::fs::create_dir_all(&pki_dir).with_context(|| format!("creating {}", pki_dir.display()))?;
    pki::set_mode(&pki_dir, 0o700)?;
    shoal_tls::write_file(&pki_dir.join("ca.crt"), ca_pem.as_bytes(), 0o644)?;
    shoal_tls::write_file(&pki_dir.join("node.key"), key_pem.as_bytes(), 0o600)?;
    shoal_tls::write_file(&pki_dir.join("node.crt"), cert_pem.as_bytes(), 0o644)?;
    let text = pki::kubeconfig(
        server,
        &ca_pem,
        &IssuedCertificate { cert_pem, key_pem },
        &format!("system:node:{node_name}"),
    );
    pki::write_kubeconfig(&path, &text)?;
    info!(node = node_name, "received the node certificate");
    Ok(text)
}

/// `shoal agent`.
pub async fn run(args: Args) -> Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .context("resolving the data dir")?;
    let node_name = args.node_name.clone().unwrap_or_else(process::hostname);
    let kubeconfig = credentials(&args, &data_dir, &node_name).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = Tasks::new();
    // Every request goes through the local proxy, which fails over between members.
    let upstreams = balancer::Upstreams::new(&args.server);
    let (proxy, proxy_task) = balancer::start(upstreams.clone(), shutdown.clone()).await?;
    tasks.spawn(async move {
        let _ = proxy_task.await;
        ("api-proxy", Ok(()))
    });
    let client =
        pki::client_from_kubeconfig_at(&kubeconfig, Some(&format!("https://{proxy}"))).await?;
    {
        let client = client.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            balancer::follow_members(client, upstreams, shutdown).await;
            ("member-list", Ok(()))
        });
    }
    spawn_node(
        &mut tasks,
        client,
        &data_dir,
        node_name.clone(),
        &args.node,
        shutdown.clone(),
    )?;
    info!(node = %node_name, servers = ?args.server, "shoal agent is up");
    eprintln!(
        "shoal agent is up: node {node_name} joined {}",
        args.server.join(",")
    );
    let failure = process::supervise(&mut tasks).await;
    process::stop(tasks, &shutdown, None, failure).await
}
