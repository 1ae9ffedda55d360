//! The member port's server side: answers raft RPCs, receives streamed snapshots, applies
//! writes forwarded by followers, answers read-index requests and membership changes, and
//! offers etcd's `/v3/kv/put` (its JSON gateway's shape) to admin clients, so the store can be
//! driven and benchmarked on the same terms as etcd, without the Kubernetes layer.
//!
//! Only callers with a member certificate of the cluster CA are served (the TLS layer checks
//! the chain; here the certificate must be in `shoal:members`), and each request must name this
//! cluster and a member that was not removed from it. A refusal names its reason
//! (`REMOVED`, `WRONG_CLUSTER`) so the caller can stop instead of retrying forever.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures::StreamExt;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{ChangeMembers, Raft, Snapshot, SnapshotMeta, Vote};
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::network::{CLUSTER_HEADER, ForwardError, MEMBER_HEADER, MembershipChange};
use crate::raft::{Member, Op, Request as RaftRequest, Response as RaftResponse, TypeConfig};
use crate::state_machine::Shared;

/// Marker in the refusal of a removed member's request.
pub const REMOVED: &str = "member was removed from the cluster";
/// Marker in the refusal of a request from another cluster.
pub const WRONG_CLUSTER: &str = "request is for another cluster";
/// The group of member certificates.
pub const MEMBERS_GROUP: &str = "shoal:members";
/// Largest raft RPC body (a snapshot is streamed and not bounded by this).
const MAX_RPC_BODY: usize = 128 << 20;

pub(crate) struct PeerState {
    pub raft: Raft<TypeConfig>,
    pub proposer: Arc<crate::propose::Proposer>,
    pub shared: Arc<Shared>,
    pub cluster_id: String,
    pub id: u64,
    /// How long the leader may go without a quorum's ack before refusing writes.
    pub quorum_grace: Duration,
}

type St = State<Arc<PeerState>>;

pub(crate) fn router(state: Arc<PeerState>) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/forward", post(forward))
        .route("/raft/read-index", post(read_index))
        .route("/raft/membership", post(membership))
        .route("/v3/kv/put", post(kv_put))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(state)
}

/// A request this port will not serve, with the reason the caller gets.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal(status, message.into())
}

fn encode<T: Serialize>(value: &T) -> Response {
    match postcard::to_allocvec(value) {
        Ok(bytes) => (StatusCode::OK, bytes).into_response(),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Checks who calls: a member certificate, this cluster, a member not removed.
fn admit(
    state: &PeerState,
    request_headers: &HeaderMap,
    ext: &http::Extensions,
) -> Result<u64, Refusal> {
    let member = ext
        .get::<shoal_tls::ConnectionInfo>()
        .and_then(|c| c.identity.as_ref())
        .is_some_and(|id| id.groups.iter().any(|g| g == MEMBERS_GROUP));
    if !member {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "a member certificate of this cluster is required",
        ));
    }
    let cluster = request_headers
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if cluster != state.cluster_id {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{WRONG_CLUSTER}: this is cluster {}, not {cluster:?}",
                state.cluster_id
            ),
        ));
    }
    let from = request_headers
        .get(MEMBER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "missing member id"))?;
    if state.shared.removed().contains(&from) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("{REMOVED}: member {from:x} may not rejoin with its old data dir"),
        ));
    }
    Ok(from)
}

async fn body_of(request: Request) -> Result<(HeaderMap, http::Extensions, Bytes), Refusal> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_RPC_BODY)
        .await
        .map_err(|e| refuse(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?;
    Ok((parts.headers, parts.extensions, bytes))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    postcard::from_bytes(bytes).map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn append(State(state): St, request: Request) -> Response {
    let run = async {
        let (headers, ext, bytes) = body_of(request).await?;
        admit(&state, &headers, &ext)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&bytes)?;
        Ok::<_, Refusal>(encode(&state.raft.append_entries(rpc).await))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn vote(State(state): St, request: Request) -> Response {
    let run = async {
        let (headers, ext, bytes) = body_of(request).await?;
        admit(&state, &headers, &ext)?;
        let rpc: VoteRequest<u64> = decode(&bytes)?;
        Ok::<_, Refusal>(encode(&state.raft.vote(rpc).await))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Receives a snapshot streamed from the leader into a file, then installs it.
async fn snapshot(State(state): St, request: Request) -> Response {
    let run = async {
        let (parts, body) = request.into_parts();
        admit(&state, &parts.headers, &parts.extensions)?;
        let mut stream = body.into_data_stream();
        let mut pending: Vec<u8> = Vec::new();
        let internal =
            |e: &dyn std::fmt::Display| refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        // The length-prefixed (vote, meta) head.
        let head_len = loop {
            if pending.len() >= 4 {
                let n =
                    u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
                if n > 1 << 20 {
                    return Err(refuse(StatusCode::BAD_REQUEST, "snapshot head too large"));
                }
                if pending.len() >= 4 + n {
                    break n;
                }
            }
            match stream.next().await {
                Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(refuse(StatusCode::BAD_REQUEST, e.to_string())),
                None => return Err(refuse(StatusCode::BAD_REQUEST, "snapshot ends in its head")),
            }
        };
        let (vote, meta): (Vote<u64>, SnapshotMeta<u64, Member>) =
            decode(&pending[4..4 + head_len])?;
        let mut file = state
            .raft
            .begin_receiving_snapshot()
            .await
            .map_err(|e| internal(&e))?;
        file.write_all(&pending[4 + head_len..])
            .await
            .map_err(|e| internal(&e))?;
        drop(pending);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
            file.write_all(&chunk).await.map_err(|e| internal(&e))?;
        }
        file.flush().await.map_err(|e| internal(&e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "received snapshot");
        let answer = state
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: file,
                },
            )
            .await;
        Ok::<_, Refusal>(encode(&answer))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Whether this member leads and has heard from a quorum lately.
pub(crate) fn leader_check(
    raft: &Raft<TypeConfig>,
    me: u64,
    grace: Duration,
) -> Result<(), ForwardError> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(me) {
        return Err(ForwardError::NotLeader {
            me,
            leader: m.current_leader,
        });
    }
    let voters = m.membership_config.membership().voter_ids().count();
    if voters > 1
        && let Some(millis) = m.millis_since_quorum_ack
        && millis > grace.as_millis() as u64
    {
        return Err(ForwardError::NoQuorum { millis });
    }
    Ok(())
}

/// Maps a failed local client write (proposed, so its fate may be open).
pub(crate) fn write_error(
    me: u64,
    e: RaftError<u64, ClientWriteError<u64, Member>>,
) -> ForwardError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ForwardError::Lost {
            me,
            leader: f.leader_id,
        },
        other => ForwardError::Failed(other.to_string()),
    }
}

async fn forward(State(state): St, request: Request) -> Response {
    let run = async {
        let (headers, ext, bytes) = body_of(request).await?;
        admit(&state, &headers, &ext)?;
        let ops: Vec<Op> = decode(&bytes)?;
        if let Err(e) = leader_check(&state.raft, state.id, state.quorum_grace) {
            return Ok(encode(&Err::<Vec<crate::raft::Outcome>, _>(e)));
        }
        let n = ops.len();
        let answer = match state.raft.client_write(RaftRequest::Ops(ops)).await {
            Ok(r) => match r.data {
                RaftResponse::Ops(outcomes) if outcomes.len() == n => Ok(outcomes),
                other => Err(ForwardError::Failed(format!(
                    "unexpected response {other:?}"
                ))),
            },
            Err(e) => Err(write_error(state.id, e)),
        };
        Ok::<_, Refusal>(encode(&answer))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn read_index(State(state): St, request: Request) -> Response {
    let run = async {
        let (headers, ext, _) = body_of(request).await?;
        admit(&state, &headers, &ext)?;
        if let Err(e) = leader_check(&state.raft, state.id, state.quorum_grace) {
            return Ok(encode(&Err::<u64, _>(e)));
        }
        let answer = match state.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(e) => Err(ForwardError::Failed(e.to_string())),
        };
        Ok::<_, Refusal>(encode(&answer))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Applies a membership change on this member, which must lead.
pub(crate) async fn change_membership(
    raft: &Raft<TypeConfig>,
    me: u64,
    change: MembershipChange,
) -> Result<(), ForwardError> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(me) {
        return Err(ForwardError::NotLeader {
            me,
            leader: m.current_leader,
        });
    }
    let failed = |e: &dyn std::fmt::Display| ForwardError::Failed(e.to_string());
    match change {
        MembershipChange::Add { id, member } => {
            let membership = m.membership_config.membership();
            if membership.voter_ids().any(|v| v == id) {
                return Ok(());
            }
            tracing::info!(member = %id, node = %member, "adding a member as learner");
            raft.add_learner(id, member, true)
                .await
                .map_err(|e| match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                        ForwardError::NotLeader {
                            me,
                            leader: f.leader_id,
                        }
                    }
                    other => failed(&other),
                })?;
            tracing::info!(member = %id, "promoting the member to voter");
            raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| write_error(me, e))?;
        }
        MembershipChange::Remove { id } => {
            let membership = m.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            if voters == [id] {
                return Err(ForwardError::Failed(
                    "the last member of the cluster cannot be removed".into(),
                ));
            }
            if voters.contains(&id) {
                raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    .await
                    .map_err(|e| write_error(me, e))?;
            }
            if membership.learner_ids().any(|l| l == id) {
                raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                    .await
                    .map_err(|e| write_error(me, e))?;
            }
            tracing::info!(member = %id, "removed a member");
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct PutRequest {
    /// Base64, as etcd's JSON gateway.
    key: String,
    value: String,
}

/// `POST /v3/kv/put`: a durable, unconditional write through the leader, answered with the
/// revision it took (`{"header":{"revision":"N"}}`), as etcd's gateway. Admin or member
/// certificates only.
async fn kv_put(State(state): St, request: Request) -> Response {
    let run = async {
        let (_, ext, bytes) = body_of(request).await?;
        let allowed = ext
            .get::<shoal_tls::ConnectionInfo>()
            .and_then(|c| c.identity.as_ref())
            .is_some_and(|id| {
                id.groups
                    .iter()
                    .any(|g| g == MEMBERS_GROUP || g == "system:masters")
            });
        if !allowed {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "an admin or member certificate of this cluster is required",
            ));
        }
        let put: PutRequest = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
        let decode = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))
        };
        let key = String::from_utf8(decode(&put.key)?)
            .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the key is not UTF-8"))?;
        let value = decode(&put.value)?;
        if value.len() > crate::MAX_VALUE_BYTES {
            return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, "value too large"));
        }
        let write = crate::raft::Write::Put {
            key,
            value: Bytes::from(value),
        };
        match state.proposer.propose(write).await {
            Ok(crate::raft::Outcome::Written { mod_revision, .. }) => Ok(axum::Json(
                serde_json::json!({"header": {"revision": mod_revision.to_string()}}),
            )
            .into_response()),
            Ok(other) => Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("unexpected outcome {other:?}"),
            )),
            Err(e @ crate::StoreError::Unavailable(_)) => {
                Err(refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
            }
            Err(e @ crate::StoreError::Timeout(_)) => {
                Err(refuse(StatusCode::GATEWAY_TIMEOUT, e.to_string()))
            }
            Err(e) => Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn membership(State(state): St, request: Request) -> Response {
    let run = async {
        let (headers, ext, bytes) = body_of(request).await?;
        admit(&state, &headers, &ext)?;
        let change: MembershipChange = decode(&bytes)?;
        Ok::<_, Refusal>(encode(
            &change_membership(&state.raft, state.id, change).await,
        ))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
