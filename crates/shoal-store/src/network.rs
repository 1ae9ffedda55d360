//! The member-to-member client: raft RPCs, forwarded writes, read-index requests and
//! membership changes, over HTTP/2 with mutual TLS (one multiplexed connection per peer).
//!
//! Bodies are postcard; every request names the cluster and the calling member in headers so a
//! peer can refuse a stranger's data dir or a removed member. Snapshots are streamed from their
//! file as one request body, never loaded whole. A peer that cannot be reached is reported as
//! `Unreachable` (openraft backs off); a peer that refuses us because we were removed from the
//! cluster raises the store's fatal signal.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http::{Request as HttpRequest, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory, Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::raft::{Member, Op, Outcome, TypeConfig};

pub(crate) const CLUSTER_HEADER: &str = "x-shoal-cluster";
pub(crate) const MEMBER_HEADER: &str = "x-shoal-member";
/// Largest response body read from a peer.
const MAX_RESPONSE: usize = 256 << 20;

type Body = BoxBody<Bytes, io::Error>;
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Why a forwarded request did not get its answer from the leader.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("member {me} is not the leader (leader: {leader:?})")]
    NotLeader { me: u64, leader: Option<u64> },
    /// The writes were proposed, then the member lost leadership before they committed: they
    /// may still be applied.
    #[error("member {me} lost leadership with the writes proposed (leader: {leader:?})")]
    Lost { me: u64, leader: Option<u64> },
    #[error("the leader has not heard from a quorum for {millis} ms")]
    NoQuorum { millis: u64 },
    #[error("{0}")]
    Failed(String),
}

/// A membership change, forwarded to the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add `id` as a learner, wait until it caught up, then make it a voter.
    Add { id: u64, member: Member },
    /// Remove `id` from the voters and learners.
    Remove { id: u64 },
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// `sent`: the request may have reached the member (the connection broke after it was
    /// made), so its effect is unknown.
    #[error("member at {addr} is unreachable: {reason}")]
    Unreachable {
        addr: String,
        reason: String,
        sent: bool,
    },
    #[error("member at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("member at {addr} refused the request ({status}): {message}")]
    Refused {
        addr: String,
        status: StatusCode,
        message: String,
    },
    #[error("undecodable answer from {addr}: {reason}")]
    Decode { addr: String, reason: String },
    #[error("this member has no network: it runs alone")]
    NoNetwork,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

/// Client side of the member port; cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<NetInner>,
}

struct NetInner {
    client: Option<HttpClient>,
    cluster_id: String,
    self_id: u64,
    /// Set (with a reason) when a peer says this member was removed or belongs elsewhere.
    fatal: watch::Sender<Option<String>>,
}

impl Network {
    /// A network over `tls` (none: this member runs alone and every call fails).
    pub fn new(
        tls: Option<Arc<rustls::ClientConfig>>,
        cluster_id: String,
        self_id: u64,
        fatal: watch::Sender<Option<String>>,
    ) -> Network {
        let client = tls.map(|tls| {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(2)));
            // The connector sets ALPN (h2) itself.
            let mut tls = (*tls).clone();
            tls.alpn_protocols.clear();
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http2()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .http2_only(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .http2_keep_alive_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(90))
                .build(connector)
        });
        Network {
            inner: Arc::new(NetInner {
                client,
                cluster_id,
                self_id,
                fatal,
            }),
        }
    }

    fn request(&self, addr: &str, path: &str, body: Body) -> Result<HttpRequest<Body>, CallError> {
        HttpRequest::post(format!("https://{addr}{path}"))
            .header(CLUSTER_HEADER, &self.inner.cluster_id)
            .header(MEMBER_HEADER, self.inner.self_id.to_string())
            .header(http::header::CONTENT_TYPE, "application/x-postcard")
            .body(body)
            .map_err(|e| CallError::Unreachable {
                addr: addr.to_owned(),
                reason: e.to_string(),
                sent: false,
            })
    }

    /// Sends `request` and decodes the answer, within `timeout`.
    async fn send<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        request: HttpRequest<Body>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let Some(client) = &self.inner.client else {
            return Err(CallError::NoNetwork);
        };
        let call = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| CallError::Unreachable {
                    addr: addr.to_owned(),
                    reason: error_chain(&e),
                    sent: !e.is_connect(),
                })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| CallError::Unreachable {
                    addr: addr.to_owned(),
                    reason: e.to_string(),
                    sent: true,
                })?
                .to_bytes();
            if status != StatusCode::OK {
                let message = String::from_utf8_lossy(&body).into_owned();
                if status == StatusCode::FORBIDDEN {
                    self.refused_by_peer(&message);
                }
                return Err(CallError::Refused {
                    addr: addr.to_owned(),
                    status,
                    message,
                });
            }
            postcard::from_bytes(&body).map_err(|e| CallError::Decode {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout {
                addr: addr.to_owned(),
                timeout,
            }),
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let bytes = postcard::to_allocvec(body).map_err(|e| CallError::Decode {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        let request = self.request(addr, path, full(bytes))?;
        self.send(addr, request, timeout).await
    }

    /// A peer answered 403: we were removed from the cluster or talk to another cluster.
    fn refused_by_peer(&self, message: &str) {
        if message.contains(crate::peer::REMOVED) || message.contains(crate::peer::WRONG_CLUSTER) {
            self.inner.fatal.send_if_modified(|fatal| {
                if fatal.is_none() {
                    tracing::error!(reason = message, "a peer refused this member");
                    *fatal = Some(message.to_owned());
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Asks the leader at `leader` to apply `ops` (same ids as here).
    pub async fn forward(
        &self,
        leader: &Member,
        ops: &[Op],
        timeout: Duration,
    ) -> Result<Result<Vec<Outcome>, ForwardError>, CallError> {
        self.call(&leader.raft_addr, "/raft/forward", &ops, timeout)
            .await
    }

    /// Asks the leader at `leader` for a read index: the log index a linearizable read must
    /// wait for.
    pub async fn read_index(
        &self,
        leader: &Member,
        timeout: Duration,
    ) -> Result<Result<u64, ForwardError>, CallError> {
        self.call(&leader.raft_addr, "/raft/read-index", &(), timeout)
            .await
    }

    /// Asks the leader at `leader` to change the membership.
    pub async fn change_membership(
        &self,
        leader: &Member,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Result<(), ForwardError>, CallError> {
        self.call(&leader.raft_addr, "/raft/membership", change, timeout)
            .await
    }
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A connection to one peer, as openraft uses it.
pub struct Peer {
    net: Network,
    target: u64,
    member: Member,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &Member) -> Self::Network {
        Peer {
            net: self.clone(),
            target,
            member: node.clone(),
        }
    }
}

impl Peer {
    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<u64, Member, E> {
        match e {
            CallError::Timeout { .. } | CallError::Unreachable { .. } | CallError::NoNetwork => {
                RPCError::Unreachable(Unreachable::new(&Message(e.to_string())))
            }
            CallError::Refused { .. } | CallError::Decode { .. } => {
                RPCError::Network(NetworkError::new(&Message(e.to_string())))
            }
        }
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<u64, Member, E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.member.clone(),
            e,
        ))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let answer: Result<AppendEntriesResponse<u64>, RaftError<u64>> = self
            .net
            .call(
                &self.member.raft_addr,
                "/raft/append",
                &rpc,
                option.hard_ttl(),
            )
            .await
            .map_err(|e| self.rpc_error(e))?;
        answer.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        // Snapshots go whole through `full_snapshot`; the chunked protocol is not served.
        Err(RPCError::Network(NetworkError::new(&Message(
            "chunked snapshots are not used: snapshots are streamed whole".into(),
        ))))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let answer: Result<VoteResponse<u64>, RaftError<u64>> = self
            .net
            .call(
                &self.member.raft_addr,
                "/raft/vote",
                &rpc,
                option.hard_ttl(),
            )
            .await
            .map_err(|e| self.rpc_error(e))?;
        answer.map_err(|e| self.remote(e))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let addr = self.member.raft_addr.clone();
        let stream_error = |e: CallError| -> StreamingError<TypeConfig, Fatal<u64>> {
            match e {
                CallError::Timeout { .. }
                | CallError::Unreachable { .. }
                | CallError::NoNetwork => {
                    StreamingError::Unreachable(Unreachable::new(&Message(e.to_string())))
                }
                _ => StreamingError::Network(NetworkError::new(&Message(e.to_string()))),
            }
        };
        // The body: length-prefixed (vote, meta), then the snapshot file as it is on disk.
        let head = postcard::to_allocvec(&(&vote, &snapshot.meta)).map_err(|e| {
            stream_error(CallError::Decode {
                addr: addr.clone(),
                reason: e.to_string(),
            })
        })?;
        let mut prefix = (head.len() as u32).to_le_bytes().to_vec();
        prefix.extend_from_slice(&head);
        let file = tokio_util::io::ReaderStream::with_capacity(*snapshot.snapshot, 256 << 10);
        let stream = futures::stream::once(async move { Ok(Bytes::from(prefix)) })
            .chain(file)
            .map_ok(Frame::data);
        let body = BodyExt::boxed(StreamBody::new(stream));
        let request = self
            .net
            .request(&addr, "/raft/snapshot", body)
            .map_err(stream_error)?;
        let send = self.net.send::<Result<SnapshotResponse<u64>, Fatal<u64>>>(
            &addr,
            request,
            option.hard_ttl().max(Duration::from_secs(600)),
        );
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            answer = send => match answer.map_err(stream_error)? {
                Ok(response) => Ok(response),
                Err(fatal) => Err(StreamingError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.member.clone(),
                    fatal,
                ))),
            },
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

use futures::StreamExt as _;
