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
    /// Duration of the node's heartbeat Lease, renewed every quarter of it; keep it at most
    /// the control plane's `--node-monitor-grace-period`.
    #[arg(long, default_value_t = shoal_agent::LEASE_DURATION_SECONDS,
          value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub node_lease_duration_seconds: i32,
    /// The node's pod range (IPv4 CIDR): each pod gets an address from it, where its HTTP
    /// components are served [`shoal up`: 127.64.0.0/16; `shoal agent`: none, pods then use
    /// the node's address and are reached through their hostPorts].
    #[arg(long, value_parser = shoal_runtime_wasm::parse_cidr)]
    pub pod_cidr: Option<(std::net::Ipv4Addr, u8)>,
}

/// Where a node's serving certificate comes from.
pub enum ServingIssuer<'a> {
    /// The cluster CA in this process (`shoal up`).
    Ca(&'a shoal_tls::CertificateAuthority),
    /// A CertificateSigningRequest for `kubernetes.io/kubelet-serving`, filed as the node.
    Csr,
}

/// How long a kept serving certificate must still be valid to be used again.
const SERVING_MARGIN: Duration = Duration::from_secs(7 * 24 * 3600);

/// The TLS configuration of the node's log endpoint: the serving certificate kept under the
/// data dir while it still names this node for a week more, else a new one from `issuer`; and
/// only clients with a certificate of the cluster CA.
async fn serving_tls(
    client: &kube::Client,
    data_dir: &Path,
    node_name: &str,
    node: &NodeArgs,
    issuer: ServingIssuer<'_>,
) -> Result<Arc<rustls::ServerConfig>> {
    let dir = pki::dir(data_dir);
    let (cert_path, key_path) = (dir.join("node-serving.crt"), dir.join("node-serving.key"));
    let ca_pem = match &issuer {
        ServingIssuer::Ca(ca) => ca.cert_pem().to_owned(),
        ServingIssuer::Csr => shoal_tls::read_file(&dir.join("ca.crt"))?,
    };
    let kept = match (
        shoal_tls::read_file(&cert_path),
        shoal_tls::read_file(&key_path),
    ) {
        (Ok(cert_pem), Ok(key_pem))
            if shoal_tls::certificate_serves(&cert_pem, node_name, SERVING_MARGIN) =>
        {
            Some(IssuedCertificate { cert_pem, key_pem })
        }
        _ => None,
    };
    let identity = match kept {
        Some(identity) => identity,
        None => {
            let mut hosts = vec![node_name.to_owned()];
            let ip = node
                .node_ip
                .or(Some(node.agent_listen.ip()).filter(|ip| !ip.is_unspecified()));
            hosts.extend(ip.map(|ip| ip.to_string()));
            let key_pem = shoal_tls::new_private_key()?;
            let request = shoal_tls::request_serving_certificate(
                &key_pem,
                &format!("system:node:{node_name}"),
                &["system:nodes"],
                &hosts,
            )?;
            let cert_pem = match issuer {
                ServingIssuer::Ca(ca) => {
                    ca.sign_serving_request(&request, shoal_tls::CERT_VALIDITY)?
                }
                ServingIssuer::Csr => {
                    http::request_serving_certificate(
                        client,
                        node_name,
                        &request,
                        Duration::from_secs(120),
                    )
                    .await?
                }
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            shoal_tls::write_file(&key_path, key_pem.as_bytes(), 0o600)?;
            shoal_tls::write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
            info!(node = node_name, "received the node serving certificate");
            IssuedCertificate { cert_pem, key_pem }
        }
    };
    Ok(shoal_tls::server_config(&ca_pem, &identity, true)?)
}

/// Starts the node agent (with the Wasm runtime) as a task of `tasks`; its log endpoint is
/// HTTPS with a serving certificate from `issuer`.
pub async fn spawn_node(
    tasks: &mut Tasks,
    client: kube::Client,
    data_dir: &Path,
    node_name: String,
    node: &NodeArgs,
    issuer: ServingIssuer<'_>,
    shutdown: CancellationToken,
) -> Result<()> {
    let tls = serving_tls(&client, data_dir, &node_name, node, issuer)
        .await
        .context("getting the node's serving certificate")?;
    let mut wasm_config = shoal_runtime_wasm::WasmRuntimeConfig::new(data_dir.join("wasm"));
    wasm_config.insecure_registries = node.insecure_registries.clone();
    wasm_config.pod_cidr = node.pod_cidr;
    // hostPorts without a hostIP: the node's address and the loopback (not 0.0.0.0, which
    // would collide with pods listening on the same port at their own local address).
    let node_ip = node
        .node_ip
        .unwrap_or_else(|| match node.agent_listen.ip() {
            ip if ip.is_unspecified() || ip.is_loopback() => std::net::Ipv4Addr::LOCALHOST.into(),
            ip => ip,
        });
    wasm_config.node_ips = vec![node_ip];
    if !node_ip.is_loopback() {
        wasm_config
            .node_ips
            .push(std::net::Ipv4Addr::LOCALHOST.into());
    }
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
        tls: Some(tls),
        lease_duration_seconds: node.node_lease_duration_seconds,
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
        ServingIssuer::Csr,
        shutdown.clone(),
    )
    .await?;
    info!(node = %node_name, servers = ?args.server, "shoal agent is up");
    eprintln!(
        "shoal agent is up: node {node_name} joined {}",
        args.server.join(",")
    );
    let failure = process::supervise(&mut tasks).await;
    process::stop(tasks, &shutdown, None, failure).await
}
