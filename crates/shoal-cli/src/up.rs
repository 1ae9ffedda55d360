//! `shoal up`: the whole cluster in one process — a control-plane member (`shoal server`) and
//! a node agent — each component a task with its own `run(config, ..., shutdown)`. They still
//! talk to each other only through the apiserver, over loopback HTTPS, exactly as when split
//! across machines. Writes `DIR/kubeconfig` and `DIR/token` (agents on other machines can join
//! with it).

use std::time::Instant;

use anyhow::Result;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::agent::{self, NodeArgs};
use crate::{pki, process, server};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub server: server::ServerArgs,
    /// Name of the node this process registers [default: the host name].
    #[arg(long)]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

pub async fn run(mut args: Args) -> Result<()> {
    let started = Instant::now();
    // One machine: the log endpoint stays on loopback unless asked otherwise.
    if args.node.agent_listen.ip().is_unspecified() && args.server.listen.ip().is_loopback() {
        args.node.agent_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    }
    // One machine: pod addresses on the loopback, which needs no network setup.
    args.node
        .pod_cidr
        .get_or_insert((std::net::Ipv4Addr::new(127, 64, 0, 0), 16));
    let shutdown = CancellationToken::new();
    let mut srv = server::start(&args.server, shutdown.clone()).await?;
    let node_name = args.node_name.clone().unwrap_or_else(process::hostname);
    let client = if args.server.insecure_http {
        process::insecure_client(&srv.local_url)?
    } else {
        pki::client_as(
            &srv.ca,
            &srv.local_url,
            &format!("system:node:{node_name}"),
            &["system:nodes"],
        )
        .await?
    };
    let data_dir = args.server.data_dir.canonicalize()?;
    agent::spawn_node(
        &mut srv.tasks,
        client,
        &data_dir,
        node_name,
        &args.node,
        agent::ServingIssuer::Ca(&srv.ca),
        shutdown.clone(),
    )
    .await?;
    info!(
        api = %srv.local_url,
        kubeconfig = %srv.kubeconfig.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shoal is up"
    );
    eprintln!(
        "shoal is up: API on {}; use `export KUBECONFIG={}`",
        srv.local_url,
        srv.kubeconfig.display()
    );
    let failure = process::supervise(&mut srv.tasks).await;
    process::stop(srv.tasks, &shutdown, Some(&srv.store), failure).await
}
