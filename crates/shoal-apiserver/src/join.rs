//! Cluster membership over the API port: the CA bundle for joiners, the cluster material a
//! joining control-plane member needs, adding it to the store's raft group, and listing and
//! removing members (`shoal member list|remove`).
//!
//! These are Shoal's own endpoints under `/shoal/v1/`, not Kubernetes resources: a member is a
//! raft voter, not an object in the store. Who may call them is decided in `auth.rs`: the CA
//! bundle is public, joining takes a server-join bootstrap token, listing and removing take
//! the admin.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shoal_store::{Member, MemberStatus};

use crate::AppState;
use crate::error::ApiError;

/// What a joining control-plane member receives: the cluster's identity and its CA (with the
/// key, since every member issues certificates).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    pub ca_cert: String,
    pub ca_key: String,
}

/// A member as the membership endpoints show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    /// Hexadecimal member id.
    pub id: String,
    pub name: String,
    pub raft_address: String,
    #[serde(rename = "apiURL")]
    pub api_url: String,
    #[serde(default)]
    pub voter: bool,
    #[serde(default)]
    pub leader: bool,
}

/// `{"members": [...]}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MemberList {
    pub members: Vec<MemberInfo>,
}

fn info(m: MemberStatus) -> MemberInfo {
    MemberInfo {
        id: format!("{:x}", m.id),
        name: m.member.name,
        raft_address: m.member.raft_addr,
        api_url: m.member.api_url,
        voter: m.voter,
        leader: m.leader,
    }
}

fn list(state: &AppState) -> MemberList {
    MemberList {
        members: state.store().members().into_iter().map(info).collect(),
    }
}

/// `GET /cacerts`: the cluster CA, PEM.
pub async fn ca_certs(State(state): State<AppState>) -> Response {
    let Some(cluster) = state.cluster() else {
        return ApiError::UnknownResource.into_response();
    };
    let mut response = cluster.ca_cert_pem.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    response
}

/// `POST /shoal/v1/join`: the cluster material for a new member.
pub async fn join(State(state): State<AppState>) -> Result<Json<JoinResponse>, ApiError> {
    let cluster = state.cluster().ok_or(ApiError::UnknownResource)?;
    Ok(Json(JoinResponse {
        cluster_id: state.store().identity().cluster_id.clone(),
        ca_cert: cluster.ca_cert_pem.clone(),
        ca_key: cluster.ca_key_pem.clone(),
    }))
}

/// `GET /shoal/v1/members`.
pub async fn members(State(state): State<AppState>) -> Json<MemberList> {
    Json(list(&state))
}

/// `POST /shoal/v1/members`: adds the member (learner, caught up, then voter); answers when
/// it votes.
pub async fn add_member(
    State(state): State<AppState>,
    Json(member): Json<MemberInfo>,
) -> Result<Json<MemberList>, ApiError> {
    let id = u64::from_str_radix(&member.id, 16).map_err(|_| {
        ApiError::BadRequest(format!("member id {:?} is not hexadecimal", member.id))
    })?;
    if member.name.is_empty() || member.raft_address.is_empty() {
        return Err(ApiError::BadRequest(
            "a member needs a name and a raft address".into(),
        ));
    }
    tracing::info!(member = %member.id, name = %member.name, raft = %member.raft_address, "adding a control-plane member");
    state
        .store()
        .add_member(
            id,
            Member {
                name: member.name,
                raft_addr: member.raft_address,
                api_url: member.api_url,
            },
        )
        .await?;
    Ok(Json(list(&state)))
}

/// `DELETE /shoal/v1/members/{id or name}`.
pub async fn remove_member(
    State(state): State<AppState>,
    Path(which): Path<String>,
) -> Result<Response, ApiError> {
    let members = state.store().members();
    let found = members
        .iter()
        .find(|m| format!("{:x}", m.id) == which || m.member.name == which)
        .ok_or_else(|| ApiError::BadRequest(format!("no member {which:?}")))?;
    let id = found.id;
    tracing::info!(member = %format_args!("{id:x}"), "removing a control-plane member");
    state.store().remove_member(id).await?;
    Ok((StatusCode::OK, Json(list(&state))).into_response())
}
