//! `shoal server`: one control-plane member — store, apiserver, and the scheduler and
//! controllers under leader election; no node agent.
//!
//! Without `--join` the first start creates a new cluster: its CA under `DIR/pki`, its store
//! under `DIR/store`, a join token (`DIR/token`) and the admin kubeconfig (`DIR/kubeconfig`).
//! With `--join https://HOST:PORT --token TOKEN` a fresh data dir joins an existing cluster as a
//! voter: the token pins the cluster CA, so nothing secret is sent to an impostor. Any later
//! start of the same data dir is a restart of the same member, with or without `--join`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use shoal_store::{Identity, MEMBERS_GROUP, Member, MemberOptions, PeerTransport, Store};
use shoal_tls::CertificateAuthority;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::process::{self, Tasks};
use crate::{http, leader, pki, token};

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where the store, the cluster CA, the join token and the admin kubeconfig live.
    #[arg(long, default_value = "shoal-data")]
    pub data_dir: PathBuf,
    /// Address of the Kubernetes API (HTTPS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Member-to-member (raft) address [default: the API host, port + 1].
    #[arg(long)]
    pub raft_listen: Option<SocketAddr>,
    /// Address the other members and clients use to reach this one [default: the listen
    /// address, or the host's primary address when listening on all addresses].
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// API URL of any member of the cluster to join (`https://HOST:PORT`).
    #[arg(long)]
    pub join: Option<String>,
    /// Join token (`SHOAL1...`, from the first server's `DIR/token` or `shoal token create
    /// --server`).
    #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the join token from this file (waiting up to two minutes for it to appear).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Extra names or addresses for the API certificate (repeatable).
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// This member's name [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Serve the API over plain HTTP without authentication (loopback only; for local tools
    /// and tests).
    #[arg(long)]
    pub insecure_http: bool,
    /// Revisions of watch history kept (older ones are compacted).
    #[arg(long, default_value_t = 10_000)]
    pub history_revisions: u64,
    /// Also compact history older than this (`90s`, `30m`, `6h`); off by default.
    #[arg(long, value_parser = parse_duration)]
    pub history_age: Option<Duration>,
    /// Leader election: how long a Lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// Leader election: how long the leader keeps trying to renew before it stands down.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// Leader election: time between attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// How long Events are kept after they were last seen.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub event_ttl: Duration,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// How nodes are judged and their pods moved (kube-controller-manager's and kube-apiserver's
/// flags of the same names and defaults).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Node lifecycle")]
pub struct LifecycleArgs {
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: Duration,
    /// How long a node may go without a heartbeat before it is `Ready=Unknown` and tainted
    /// `node.kubernetes.io/unreachable`.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// The same for a node that has never reported its status.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub node_startup_grace_period: Duration,
    /// Nodes per second, per zone, that get a NoExecute taint (their pods then leave).
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,
    /// The same in a zone where too many nodes are down (see
    /// `--unhealthy-zone-threshold`).
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,
    /// Zones of at most this many nodes stop tainting when too many of their nodes are down.
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,
    /// Fraction of a zone's nodes down (with at least 3) that slows its tainting.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,
    /// Finished pods kept before the oldest are deleted (0: keep all).
    #[arg(long, default_value_t = 12_500)]
    pub terminated_pod_gc_threshold: usize,
    /// Seconds a new pod tolerates `node.kubernetes.io/not-ready:NoExecute` unless it says
    /// otherwise.
    #[arg(long, default_value_t = 300)]
    pub default_not_ready_toleration_seconds: i64,
    /// Seconds a new pod tolerates `node.kubernetes.io/unreachable:NoExecute` unless it says
    /// otherwise.
    #[arg(long, default_value_t = 300)]
    pub default_unreachable_toleration_seconds: i64,
}

impl LifecycleArgs {
    fn admission(&self) -> shoal_api::strategy::Admission {
        shoal_api::strategy::Admission {
            not_ready_toleration_seconds: self.default_not_ready_toleration_seconds,
            unreachable_toleration_seconds: self.default_unreachable_toleration_seconds,
        }
    }

    fn controllers(&self, base: shoal_controllers::Config) -> shoal_controllers::Config {
        shoal_controllers::Config {
            node_lifecycle_options: shoal_controllers::node_lifecycle::Options {
                monitor_period: self.node_monitor_period,
                grace_period: self.node_monitor_grace_period,
                startup_grace_period: self.node_startup_grace_period,
                eviction_rate: self.node_eviction_rate,
                secondary_eviction_rate: self.secondary_node_eviction_rate,
                large_cluster_threshold: self.large_cluster_size_threshold,
                unhealthy_zone_threshold: self.unhealthy_zone_threshold,
            },
            pod_gc_options: shoal_controllers::podgc::Options {
                terminated_threshold: self.terminated_pod_gc_threshold,
                ..base.pod_gc_options.clone()
            },
            ..base
        }
    }
}

/// Parses `500ms`, `90s`, `30m`, `6h`, `2d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m or 6h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Ok(Duration::from_secs(seconds))
}

/// A running control-plane member.
pub struct Server {
    pub store: Store,
    pub ca: Arc<CertificateAuthority>,
    /// URL in-process clients use (loopback when the API listens on all addresses).
    pub local_url: String,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    pub tasks: Tasks,
}

/// The host's primary address: the source address of its default route (a UDP "connect"
/// sends nothing). Loopback when there is none.
fn primary_address() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn connect_address(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
    } else {
        listen
    }
}

/// Starts the member and its components; they stop when `shutdown` is cancelled.
pub async fn start(args: &ServerArgs, shutdown: CancellationToken) -> Result<Server> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .context("resolving the data dir")?;
    let store_dir = data_dir.join("store");
    let name = args.name.clone().unwrap_or_else(process::hostname);
    let advertise = args.advertise_address.unwrap_or_else(|| {
        if args.listen.ip().is_unspecified() {
            primary_address()
        } else {
            args.listen.ip()
        }
    });
    let raft_listen = args
        .raft_listen
        .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), args.listen.port().wrapping_add(1)));
    let api_url = format!("https://{}", SocketAddr::new(advertise, args.listen.port()));
    let raft_addr = SocketAddr::new(advertise, raft_listen.port()).to_string();

    // Who this data dir is: a restart, a new cluster, or a member joining one.
    let existing = Identity::load(&store_dir)?;
    let join_token =
        crate::token::from_args(args.token.as_deref(), args.token_file.as_deref()).await?;
    let new_cluster = existing.is_none() && args.join.is_none();
    let (identity, ca, joining) = match (existing, &args.join) {
        (Some(identity), _) => {
            let ca = pki::load_or_create_ca(&data_dir, false)?;
            if let Some(token) = &join_token {
                ensure!(
                    token.ca_fingerprint == ca.fingerprint(),
                    "{} belongs to another cluster (its CA is {}, the token's is {}): \
                     refusing to mix them",
                    data_dir.display(),
                    ca.fingerprint(),
                    token.ca_fingerprint
                );
            }
            info!(member = %format_args!("{:x}", identity.member_id), "restarting a member");
            (identity, ca, None)
        }
        (None, None) => {
            let ca = pki::load_or_create_ca(&data_dir, true)?;
            (Identity::generate(), ca, None)
        }
        (None, Some(url)) => {
            let token = join_token
                .clone()
                .ok_or_else(|| anyhow!("--join needs --token or --token-file"))?;
            ensure!(
                !pki::dir(&data_dir).join("ca.crt").exists(),
                "{} already has a cluster CA but no store: it is a damaged or removed \
                 member's data dir; use a fresh one to join",
                data_dir.display()
            );
            let joined = http::join(url, &token).await?;
            let ca = pki::save_ca(&data_dir, &joined.ca_cert, &joined.ca_key)?;
            ensure!(
                ca.fingerprint() == token.ca_fingerprint,
                "the cluster at {url} sent a CA that does not match the token"
            );
            info!(cluster = %joined.cluster_id, %url, "joining the cluster");
            (
                Identity::joining(&joined.cluster_id),
                ca,
                Some((url.clone(), token)),
            )
        }
    };

    // This member's certificate: it serves the API and the member port, and calls the others.
    let hosts = pki::hosts(
        &[advertise, args.listen.ip(), raft_listen.ip()],
        &args.tls_san,
    );
    let member_cert = ca
        .issue_server(
            &format!("shoal:member:{:x}", identity.member_id),
            &[MEMBERS_GROUP],
            &hosts,
        )
        .context("issuing the member certificate")?;
    let raft_listener = tokio::net::TcpListener::bind(raft_listen)
        .await
        .with_context(|| format!("binding the member port {raft_listen}"))?;
    let peer = PeerTransport {
        listener: raft_listener,
        server_tls: shoal_tls::server_config(ca.cert_pem(), &member_cert, true)?,
        client_tls: shoal_tls::client_config(ca.cert_pem(), Some(&member_cert))?,
    };
    let member = Member {
        name: name.clone(),
        raft_addr,
        api_url: api_url.clone(),
    };
    let config = shoal_store::StoreConfig {
        history_retain: args.history_revisions,
        history_age: args.history_age,
        ..shoal_store::StoreConfig::default()
    };
    let options = MemberOptions {
        identity: identity.clone(),
        member: member.clone(),
        peer: Some(peer),
        // Only a brand-new cluster initializes: a member that has not finished joining must
        // never start a cluster of its own.
        initialize: new_cluster,
    };
    let store = Store::start(&store_dir, config, options)
        .await
        .context("starting the store")?;
    // A restart of a member whose join did not finish (it is in no membership yet) joins again.
    let joining = match joining {
        Some(j) => Some(j),
        None if !new_cluster && !store.members().iter().any(|m| m.id == identity.member_id) => {
            match (&args.join, &join_token) {
                (Some(url), Some(token)) => Some((url.clone(), token.clone())),
                _ => anyhow::bail!(
                    "{} never finished joining its cluster: start it again with --join and \
                     --token",
                    data_dir.display()
                ),
            }
        }
        None => None,
    };
    if let Some((url, token)) = &joining {
        http::add_member(url, token, identity.member_id, &member).await?;
        store
            .wait_voter(Duration::from_secs(120))
            .await
            .context("waiting to become a voter")?;
        info!(%url, "joined the cluster as a voter");
    }

    let mut tasks = Tasks::new();
    {
        let tls = if args.insecure_http {
            None
        } else {
            Some(shoal_tls::server_config(
                ca.cert_pem(),
                &member_cert,
                false,
            )?)
        };
        let config = shoal_apiserver::Config {
            listen: args.listen,
            tls,
            cluster: Some(shoal_apiserver::ClusterSecrets {
                ca_cert_pem: ca.cert_pem().to_owned(),
                ca_key_pem: ca.key_pem().to_owned(),
            }),
            admission: args.lifecycle.admission(),
            ..shoal_apiserver::Config::default()
        };
        let store = store.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let result = shoal_apiserver::run(config, store, shutdown).await;
            ("apiserver", result.map_err(anyhow::Error::from))
        });
    }
    {
        let store = store.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => ("store", Ok(())),
                reason = store.fatal() => ("store", Err(anyhow!(reason))),
            }
        });
    }
    let scheme = if args.insecure_http { "http" } else { "https" };
    let local_url = format!("{scheme}://{}", connect_address(args.listen));
    let admin = if args.insecure_http {
        process::insecure_client(&local_url)?
    } else {
        pki::client_as(&ca, &local_url, "system:admin", &["system:masters"]).await?
    };
    process::wait_ready(&admin, &local_url, &mut tasks).await?;

    // Credentials for people and agents.
    let kubeconfig = data_dir.join("kubeconfig");
    let public_url = format!(
        "{scheme}://{}",
        SocketAddr::new(
            if args.listen.ip().is_unspecified() {
                advertise
            } else {
                args.listen.ip()
            },
            args.listen.port(),
        )
    );
    let admin_cert = ca.issue_client("system:admin", &["system:masters"])?;
    pki::write_kubeconfig(
        &kubeconfig,
        &pki::kubeconfig(&public_url, ca.cert_pem(), &admin_cert, "admin"),
    )?;
    let token_path = data_dir.join("token");
    match &joining {
        Some((_, token)) => token::write(&token_path, token)?,
        None if !token_path.exists() => {
            let token = token::create(&admin, &ca, None, true, false, "the first server's token")
                .await
                .context("creating the join token")?;
            token::write(&token_path, &token)?;
        }
        None => {}
    }

    // The scheduler and the controllers, each acting only while this member holds its Lease.
    let identity_name = format!("{name}_{:x}", identity.member_id);
    let timing = leader::Timing {
        lease_duration: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry_period: args.leader_elect_retry_period,
    };
    {
        let client = if args.insecure_http {
            admin.clone()
        } else {
            pki::client_as(&ca, &local_url, "system:kube-scheduler", &[]).await?
        };
        let election = leader::Election {
            lease: "kube-scheduler".into(),
            identity: identity_name.clone(),
            timing,
        };
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let run = |token: CancellationToken| {
                let client = client.clone();
                async move {
                    shoal_scheduler::run(shoal_scheduler::Config::default(), client, token)
                        .await
                        .map_err(anyhow::Error::from)
                }
            };
            let leader_client = client.clone();
            let result = leader::run_elected(leader_client, election, shutdown, run).await;
            ("scheduler", result)
        });
    }
    {
        let client = if args.insecure_http {
            admin.clone()
        } else {
            pki::client_as(&ca, &local_url, "system:kube-controller-manager", &[]).await?
        };
        let election = leader::Election {
            lease: "kube-controller-manager".into(),
            identity: identity_name,
            timing,
        };
        let ca = Arc::clone(&ca);
        let shutdown = shutdown.clone();
        let lifecycle = args.lifecycle.clone();
        let event_ttl = args.event_ttl;
        tasks.spawn(async move {
            let run = |token: CancellationToken| {
                let client = client.clone();
                let ca = Arc::clone(&ca);
                let lifecycle = lifecycle.clone();
                async move {
                    let config = lifecycle.controllers(shoal_controllers::Config {
                        certificate_authority: Some(ca),
                        event_ttl_options: shoal_controllers::event_ttl::Options {
                            ttl: event_ttl,
                            ..Default::default()
                        },
                        ..shoal_controllers::Config::default()
                    });
                    shoal_controllers::run(config, client, token)
                        .await
                        .map_err(anyhow::Error::from)
                }
            };
            let leader_client = client.clone();
            let result = leader::run_elected(leader_client, election, shutdown, run).await;
            ("controllers", result)
        });
    }
    Ok(Server {
        store,
        ca,
        local_url,
        kubeconfig,
        tasks,
    })
}

/// `shoal server`.
pub async fn run(args: ServerArgs) -> Result<()> {
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let mut server = start(&args, shutdown.clone()).await?;
    info!(
        api = %server.local_url,
        kubeconfig = %server.kubeconfig.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shoal server is up"
    );
    eprintln!(
        "shoal server is up: API on {}; use `export KUBECONFIG={}`; join token in {}",
        server.local_url,
        server.kubeconfig.display(),
        args.data_dir.join("token").display()
    );
    let failure = process::supervise(&mut server.tasks).await;
    process::stop(server.tasks, &shutdown, Some(&server.store), failure).await
}
