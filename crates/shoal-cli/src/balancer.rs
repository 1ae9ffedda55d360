//! The agent's view of the control plane: a local TCP proxy in front of every member's API
//! (k3s's agent load balancer is the model).
//!
//! The node agent talks to `https://127.0.0.1:<port>`; each connection is relayed to the first
//! member that accepts it, starting with the one that answered last, so the agent keeps
//! working while any member is down. TLS is end to end (every member's certificate is valid
//! for 127.0.0.1): the proxy sees only bytes. The member list starts with `--server` and is
//! refreshed from the cluster (`/shoal/v1/members`) as it changes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long one upstream gets to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the member list is refreshed.
const REFRESH: Duration = Duration::from_secs(15);

/// The upstream addresses (`host:port`), the preferred one first.
#[derive(Clone, Default)]
pub struct Upstreams {
    inner: Arc<Mutex<Vec<String>>>,
}

impl Upstreams {
    pub fn new(servers: &[String]) -> Upstreams {
        let list: Vec<String> = servers.iter().filter_map(|s| authority(s)).collect();
        Upstreams {
            inner: Arc::new(Mutex::new(list)),
        }
    }

    fn snapshot(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves `addr` to the front: it answered last.
    fn prefer(&self, addr: &str) {
        let mut list = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = list.iter().position(|a| a == addr)
            && i > 0
        {
            let a = list.remove(i);
            list.insert(0, a);
        }
    }

    /// Replaces the list with `members`, keeping the preferred one first if it is still there.
    pub fn update(&self, members: &[String]) {
        let members: Vec<String> = members.iter().filter_map(|s| authority(s)).collect();
        if members.is_empty() {
            return;
        }
        let mut list = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let first = list.first().cloned();
        let mut next = Vec::with_capacity(members.len());
        if let Some(first) = first.filter(|f| members.contains(f)) {
            next.push(first);
        }
        for m in members {
            if !next.contains(&m) {
                next.push(m);
            }
        }
        if *list != next {
            info!(members = ?next, "control-plane members for this agent");
            *list = next;
        }
    }
}

/// `host:port` of an `https://host:port` URL.
fn authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    (!authority.is_empty()).then(|| authority.to_owned())
}

/// Listens on a free loopback port; returns its address and the serving task.
pub async fn start(
    upstreams: Upstreams,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the agent's API proxy")?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let (client, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let upstreams = upstreams.clone();
            tokio::spawn(relay(client, upstreams));
        }
    });
    Ok((addr, task))
}

async fn relay(mut client: TcpStream, upstreams: Upstreams) {
    let _ = client.set_nodelay(true);
    for addr in upstreams.snapshot() {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(mut upstream)) => {
                let _ = upstream.set_nodelay(true);
                upstreams.prefer(&addr);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    debug!(upstream = %addr, error = %e, "relayed connection ended");
                }
                return;
            }
            Ok(Err(e)) => debug!(upstream = %addr, error = %e, "member refused the connection"),
            Err(_) => debug!(upstream = %addr, "member did not accept in time"),
        }
    }
    warn!("no control-plane member accepted the connection");
}

/// Keeps `upstreams` in step with the cluster's members, until `shutdown`.
pub async fn follow_members(
    client: kube::Client,
    upstreams: Upstreams,
    shutdown: CancellationToken,
) {
    loop {
        match members(&client).await {
            Ok(urls) => upstreams.update(&urls),
            Err(e) => debug!(error = %format!("{e:#}"), "refreshing the member list failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
}

async fn members(client: &kube::Client) -> Result<Vec<String>> {
    let request = http::Request::get("/shoal/v1/members").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let list: shoal_apiserver::MemberList = serde_json::from_str(&text)?;
    Ok(list.members.into_iter().map(|m| m.api_url).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_that_answered_stays_first_across_updates() {
        let u = Upstreams::new(&["https://10.0.0.1:6443".into()]);
        u.update(&[
            "https://10.0.0.2:6443".into(),
            "https://10.0.0.1:6443".into(),
            "https://10.0.0.3:6443/".into(),
        ]);
        assert_eq!(
            u.snapshot(),
            ["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]
        );
        u.prefer("10.0.0.3:6443");
        assert_eq!(u.snapshot()[0], "10.0.0.3:6443");
        // A member that left is dropped; an empty answer changes nothing.
        u.update(&[
            "https://10.0.0.1:6443".into(),
            "https://10.0.0.2:6443".into(),
        ]);
        assert_eq!(u.snapshot(), ["10.0.0.1:6443", "10.0.0.2:6443"]);
        u.update(&[]);
        assert_eq!(u.snapshot().len(), 2);
    }

    #[tokio::test]
    async fn connections_go_to_the_first_member_that_accepts() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let live = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let live_addr = live.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                let _ = s.write_all(b"hello").await;
            }
        });
        let upstreams = Upstreams::new(&[
            format!("https://{dead_addr}"),
            format!("https://{live_addr}"),
        ]);
        let shutdown = CancellationToken::new();
        let (addr, _task) = start(upstreams.clone(), shutdown.clone())
            .await
            .expect("start");
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        assert_eq!(upstreams.snapshot()[0], live_addr.to_string());
        shutdown.cancel();
    }
}
