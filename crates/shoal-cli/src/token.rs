//! `shoal token create|list|delete`: join tokens, stored as Kubernetes bootstrap-token
//! Secrets (`kube-system/bootstrap-token-<id>`) and handed out as `SHOAL1<ca hash>::<id>.<secret>`.
//!
//! A token joins agents (it may file node certificate requests); with `--server` it also
//! joins control-plane members, which receive the cluster CA; with `--metrics` it may scrape
//! `/metrics`. Tokens made by `create` expire (24 h by default); the first server's token does
//! not.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};
use shoal_tls::{BootstrapToken, CertificateAuthority, JoinToken};

use crate::client::{self, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a join token and print it.
    Create {
        /// How long the token is valid (`30m`, `24h`, `7d`).
        #[arg(long, default_value = "24h", value_parser = crate::server::parse_duration)]
        ttl: Duration,
        /// The token may also join control-plane members (which receive the cluster CA).
        #[arg(long)]
        server: bool,
        /// The token may also scrape `/metrics`.
        #[arg(long)]
        metrics: bool,
        /// Free text stored with the token.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the join tokens.
    List,
    /// Delete a join token by its id (the part before the dot).
    Delete { id: String },
}

const SECRETS: &str = "/api/v1/namespaces/kube-system/secrets";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: Option<&Value>) -> String {
    v.and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// Creates a bootstrap-token Secret through `client`; returns the full join token.
pub async fn create(
    client: &kube::Client,
    ca: &CertificateAuthority,
    ttl: Option<Duration>,
    server: bool,
    metrics: bool,
    description: &str,
) -> Result<JoinToken> {
    let fingerprint = ca.fingerprint();
    create_with_fingerprint(client, &fingerprint, ttl, server, metrics, description).await
}

async fn create_with_fingerprint(
    client: &kube::Client,
    fingerprint: &str,
    ttl: Option<Duration>,
    server: bool,
    metrics: bool,
    description: &str,
) -> Result<JoinToken> {
    let token = BootstrapToken::generate();
    let mut groups = Vec::new();
    if server {
        groups.push(shoal_apiserver::SERVER_JOINERS);
    }
    if metrics {
        groups.push(shoal_apiserver::METRICS_READERS);
    }
    let mut data = json!({
        "token-id": b64(&token.id),
        "token-secret": b64(&token.secret),
        "usage-bootstrap-authentication": b64("true"),
        "usage-bootstrap-signing": b64("true"),
        "description": b64(description),
    });
    if !groups.is_empty() {
        data["auth-extra-groups"] = json!(b64(&groups.join(",")));
    }
    if let Some(ttl) = ttl {
        let ttl = jiff::SignedDuration::try_from(ttl).context("token lifetime")?;
        let expires = jiff::Timestamp::now()
            .checked_add(ttl)
            .context("token lifetime")?;
        data["expiration"] = json!(b64(&expires.to_string()));
    }
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{}", token.id), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": data,
    });
    client::send(
        client,
        http::Method::POST,
        SECRETS,
        Some("application/json"),
        None,
        serde_json::to_vec(&secret)?,
    )
    .await
    .context("storing the token")?;
    Ok(JoinToken {
        ca_fingerprint: fingerprint.to_owned(),
        token,
    })
}

/// The token given as `--token` or in `--token-file` (waiting up to two minutes for the file,
/// which another member may still be writing).
pub async fn from_args(token: Option<&str>, file: Option<&Path>) -> Result<Option<JoinToken>> {
    let text = match (token, file) {
        (Some(t), _) => t.to_owned(),
        (None, Some(path)) => {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                match std::fs::read_to_string(path) {
                    Ok(t) if !t.trim().is_empty() => break t,
                    _ if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Ok(_) => bail!("{} is empty", path.display()),
                    Err(e) => bail!("reading the token file {}: {e}", path.display()),
                }
            }
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(text.trim().parse().context("reading the join token")?))
}

/// Writes a token file (mode 0600).
pub fn write(path: &Path, token: &JoinToken) -> Result<()> {
    shoal_tls::write_file(path, format!("{token}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// The CA fingerprint of the cluster `client` talks to (from `/cacerts`).
async fn cluster_fingerprint(client: &kube::Client) -> Result<String> {
    let pem = client::send(
        client,
        http::Method::GET,
        "/cacerts",
        None,
        None,
        Vec::new(),
    )
    .await
    .context("reading the cluster CA")?;
    let der = shoal_tls::certificates_from_pem(&pem)?;
    let first = der.first().context("the cluster CA bundle is empty")?;
    Ok(shoal_tls::fingerprint(first))
}

pub async fn run(args: Args) -> Result<()> {
    let (client, _) = client::connect(&args.client).await?;
    match args.command {
        Command::Create {
            ttl,
            server,
            metrics,
            description,
        } => {
            let fingerprint = cluster_fingerprint(&client).await?;
            let token = create_with_fingerprint(
                &client,
                &fingerprint,
                Some(ttl),
                server,
                metrics,
                &description,
            )
            .await?;
            println!("{token}");
        }
        Command::List => {
            let text =
                client::send(&client, http::Method::GET, SECRETS, None, None, Vec::new()).await?;
            let list: Value = serde_json::from_str(&text)?;
            println!("{:<8} {:<28} {:<40} DESCRIPTION", "ID", "EXPIRES", "GROUPS");
            for secret in list["items"].as_array().into_iter().flatten() {
                if secret["type"] != "bootstrap.kubernetes.io/token" {
                    continue;
                }
                let data = &secret["data"];
                let expires = unb64(data.get("expiration"));
                println!(
                    "{:<8} {:<28} {:<40} {}",
                    unb64(data.get("token-id")),
                    if expires.is_empty() {
                        "<never>".into()
                    } else {
                        expires
                    },
                    unb64(data.get("auth-extra-groups")),
                    unb64(data.get("description")),
                );
            }
        }
        Command::Delete { id } => {
            if BootstrapToken::parse(&format!("{id}.0000000000000000")).is_err() {
                bail!("{id:?} is not a token id (6 characters of [a-z0-9])");
            }
            client::send(
                &client,
                http::Method::DELETE,
                &format!("{SECRETS}/bootstrap-token-{id}"),
                None,
                None,
                Vec::new(),
            )
            .await?;
            println!("token {id} deleted");
        }
    }
    Ok(())
}
