//! What the long-running commands (`up`, `server`, `agent`) share: waiting for the API,
//! watching the components until a signal or a failure, and stopping them in order.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The components of one process, each a named task.
pub type Tasks = JoinSet<(&'static str, Result<()>)>;

/// The host name, lower case, if it is a valid DNS subdomain.
pub fn hostname_opt() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty() && shoal_api::validation::is_dns1123_subdomain(h))
}

/// The host name, or `shoal-node` when it is not usable as a name.
pub fn hostname() -> String {
    hostname_opt().unwrap_or_else(|| "shoal-node".to_string())
}

/// A client of a plain-HTTP apiserver (`--insecure-http`).
pub fn insecure_client(url: &str) -> Result<kube::Client> {
    let uri: http::Uri = url.parse().context("apiserver address")?;
    kube::Client::try_from(kube::Config::new(uri)).context("building the API client")
}

/// Polls `/readyz` until the apiserver answers, failing fast if a component exits first.
pub async fn wait_ready(client: &kube::Client, url: &str, tasks: &mut Tasks) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if readyz(client).await {
            return Ok(());
        }
        if let Some(joined) = tasks.try_join_next() {
            match joined {
                Ok((name, Err(err))) => return Err(err.context(format!("{name} failed to start"))),
                Ok((name, Ok(()))) => bail!("{name} stopped before the API was ready"),
                Err(err) => bail!("a component panicked: {err}"),
            }
        }
        if Instant::now() > deadline {
            bail!("the API on {url} is not ready after 60s");
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

/// Waits for SIGINT/SIGTERM or the first component to end; returns why the process stops
/// when it is a failure.
pub async fn supervise(tasks: &mut Tasks) -> Option<String> {
    tokio::select! {
        _ = shutdown_signal() => {
            info!("shutting down");
            None
        }
        Some(joined) = tasks.join_next() => match joined {
            Ok((name, Ok(()))) => {
                error!(component = name, "component stopped unexpectedly");
                Some(format!("{name} stopped"))
            }
            Ok((name, Err(err))) => {
                error!(component = name, error = %format!("{err:#}"), "component failed");
                Some(format!("{name}: {err:#}"))
            }
            Err(err) => {
                error!(error = %err, "component panicked");
                Some(format!("component panicked: {err}"))
            }
        },
    }
}

/// Cancels every component, waits for them (bounded), then closes the store if there is one.
pub async fn stop(
    mut tasks: Tasks,
    shutdown: &CancellationToken,
    store: Option<&shoal_store::Store>,
    failure: Option<String>,
) -> Result<()> {
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
    if let Some(store) = store
        && let Err(err) = store.shutdown().await
    {
        error!(error = %err, "store shutdown failed");
    }
    match failure {
        Some(failure) => bail!(failure),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
