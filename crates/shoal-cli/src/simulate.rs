//! `shoal simulate`: simulated nodes (KWOK's idea) for capacity planning and scale tests.
//! Registers `--nodes` Node objects that heartbeat their Leases and report the pods bound to
//! them Running without running anything, until SIGINT/SIGTERM. Stopping it stops the
//! heartbeats, so its nodes go `Unknown` and their pods are evicted as from dead machines.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{self, ClientArgs};
use crate::process;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 10)]
    pub nodes: usize,
    /// Node names: this prefix and a five-digit index.
    #[arg(long, default_value = "sim-")]
    pub prefix: String,
    /// CPU each node offers (a Kubernetes quantity).
    #[arg(long, default_value = "32")]
    pub cpu: String,
    /// Memory each node offers (a Kubernetes quantity).
    #[arg(long, default_value = "256Gi")]
    pub memory: String,
    /// Pods each node accepts.
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// Spread the nodes over this many zones (`topology.kubernetes.io/zone=zone-N`).
    #[arg(long, default_value_t = 3)]
    pub zones: usize,
    /// Extra node label, KEY=VALUE (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// `leaseDurationSeconds` of the node Leases.
    #[arg(long, default_value_t = shoal_agent::LEASE_DURATION_SECONDS)]
    pub node_lease_duration_seconds: i32,
    /// Register and heartbeat the nodes only; bound pods stay as the scheduler left them.
    #[arg(long)]
    pub nodes_only: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let cpu_millis = shoal_scheduler::quantity::cpu_millis(&args.cpu)
        .with_context(|| format!("--cpu {:?} is not a CPU quantity", args.cpu))?;
    let memory = shoal_scheduler::quantity::whole_units(&args.memory)
        .with_context(|| format!("--memory {:?} is not a memory quantity", args.memory))?;
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let Some((key, value)) = label.split_once('=') else {
            bail!("--label {label:?} is not KEY=VALUE");
        };
        labels.insert(key.to_owned(), value.to_owned());
    }
    let (client, _) = client::connect(&args.client).await?;
    let config = shoal_agent::simulated::SimConfig {
        count: args.nodes,
        prefix: args.prefix,
        resources: shoal_agent::NodeResources {
            cpu_millis: u64::try_from(cpu_millis).context("--cpu must not be negative")?,
            memory_bytes: u64::try_from(memory).context("--memory must not be negative")?,
            pods: args.max_pods,
        },
        zones: args.zones,
        labels,
        lease_duration_seconds: args.node_lease_duration_seconds,
        run_pods: !args.nodes_only,
    };
    let shutdown = CancellationToken::new();
    let mut tasks: process::Tasks = JoinSet::new();
    let token = shutdown.clone();
    tasks.spawn(async move {
        let result = shoal_agent::simulated::run(client, config, token).await;
        ("simulated nodes", result.map_err(Into::into))
    });
    let failure = process::supervise(&mut tasks).await;
    process::stop(tasks, &shutdown, None, failure).await
}
