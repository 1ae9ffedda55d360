//! `pods/log`: proxies to the node agent's log endpoint named in the Node's status
//! (`InternalIP` and `daemonEndpoints.kubeletEndpoint.Port`) and streams the body back as
//! text. Knows nothing about how the agent stores logs.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::api::registry::find_by_plural;
use crate::error::{ApiError, Subject};
use crate::object::decode;
use crate::resources::{Ctx, key_of};

/// HTTP client for the agents' log endpoints.
pub struct LogClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for LogClient {
    fn default() -> Self {
        LogClient::new()
    }
}

impl LogClient {
    pub fn new() -> LogClient {
        LogClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The container a log request is about: the one named, else the only one.
fn container_name(pod: &Value, name: &str, requested: Option<&str>) -> Result<String, ApiError> {
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    match requested {
        Some(c) => {
            let init: Vec<&str> = pod
                .pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.get("name").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            if containers.contains(&c) || init.contains(&c) {
                Ok(c.to_string())
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// `host:port` of the agent on `node`.
fn kubelet_address(node: &Value) -> Option<String> {
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)?;
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?;
    let ip = addresses
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .or_else(|| addresses.first())?
        .get("address")
        .and_then(Value::as_str)?;
    if ip.contains(':') {
        Some(format!("[{ip}]:{port}"))
    } else {
        Some(format!("{ip}:{port}"))
    }
}

pub async fn serve(ctx: &Ctx, name: &str) -> Result<Response, ApiError> {
    let store = ctx.state.store();
    let ns = ctx.target.namespace.as_deref().unwrap_or("default");
    let pod_kv = store
        .get(&ctx.target.key(name))
        .await?
        .ok_or_else(|| ApiError::NotFound(ctx.target.subject(name)))?;
    let pod = decode(&pod_kv)?;
    let container = container_name(&pod, name, ctx.params.get("container"))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: pod is not yet scheduled to a node"
            ))
        })?;
    let nodes = find_by_plural("", "v1", "nodes").ok_or(ApiError::UnknownResource)?;
    let node_kv = store
        .get(&key_of(nodes, None, node_name))
        .await?
        .ok_or_else(|| ApiError::NotFound(Subject::new(nodes, node_name)))?;
    let node = decode(&node_kv)?;
    let address = kubelet_address(&node).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "node {node_name} does not report a kubelet endpoint"
        ))
    })?;
    let mut query = Vec::new();
    for key in [
        "follow",
        "tailLines",
        "timestamps",
        "previous",
        "sinceSeconds",
        "sinceTime",
        "limitBytes",
    ] {
        if let Some(v) = ctx.params.get(key) {
            query.push(format!("{key}={}", query_escape(v)));
        }
    }
    let url = format!(
        "http://{address}/containerLogs/{}/{}/{}{}{}",
        query_escape(ns),
        query_escape(name),
        query_escape(&container),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let uri: Uri = url
        .parse()
        .map_err(|e| ApiError::Internal(format!("log url {url}: {e}")))?;
    let resp = ctx.state.inner.logs.client.get(uri).await.map_err(|e| {
        tracing::warn!(node = %node_name, error = %e, "log proxy request failed");
        ApiError::Unavailable(format!(
            "unable to reach the node agent of {node_name}: {e}"
        ))
    })?;
    let status = resp.status();
    let mut out = (status, Body::new(resp.into_body())).into_response();
    if status == StatusCode::OK {
        out.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    Ok(out)
}
