//! `pods/log`: proxies to the node agent's log endpoint named in the Node's status
//! (`InternalIP` and `daemonEndpoints.kubeletEndpoint.Port`) and streams the body back as
//! text. Knows nothing about how the agent stores logs.
//!
//! With a cluster CA (every TLS cluster) the call is HTTPS both ways, as kube-apiserver's to
//! the kubelet: the apiserver presents a client certificate of the CA as
//! [`KUBELET_CLIENT_USER`], and accepts the agent only with a serving certificate of the CA
//! for the *node's name* (the TLS server name is the node name, whatever address is dialled),
//! so one node cannot answer for another. Without a CA (`--insecure-http`, loopback only) it
//! is plain HTTP.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::ClusterSecrets;
use crate::api::kinds::core::node::NODE;
use crate::error::{ApiError, Subject};
use crate::object::decode;
use crate::resources::{Ctx, key_of};

/// The user the apiserver's client certificate names when it calls node agents.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// How long connecting to an agent (TCP and TLS) may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Client for the agents' log endpoints.
pub enum LogClient {
    Plain(Box<Client<HttpConnector, Empty<Bytes>>>),
    Tls(tokio_rustls::TlsConnector),
}

impl LogClient {
    /// HTTPS with a client certificate minted from `cluster`'s CA; plain HTTP without one.
    pub fn new(cluster: Option<&ClusterSecrets>) -> Result<LogClient, shoal_tls::TlsError> {
        let Some(cluster) = cluster else {
            return Ok(LogClient::Plain(Box::new(
                Client::builder(TokioExecutor::new()).build_http(),
            )));
        };
        let ca =
            shoal_tls::CertificateAuthority::from_pem(&cluster.ca_cert_pem, &cluster.ca_key_pem)?;
        let identity = ca.issue_client(KUBELET_CLIENT_USER, &[])?;
        let mut config =
            (*shoal_tls::client_config(&cluster.ca_cert_pem, Some(&identity))?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(LogClient::Tls(tokio_rustls::TlsConnector::from(Arc::new(
            config,
        ))))
    }

    /// GETs `path_and_query` from the agent of `node` at `address`.
    async fn get(
        &self,
        node: &str,
        address: &str,
        path_and_query: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        match self {
            LogClient::Plain(client) => {
                let uri: Uri = format!("http://{address}{path_and_query}")
                    .parse()
                    .map_err(|e| format!("log url: {e}"))?;
                client.get(uri).await.map_err(|e| e.to_string())
            }
            LogClient::Tls(connector) => {
                let name = rustls::pki_types::ServerName::try_from(node.to_owned())
                    .map_err(|e| format!("node name {node} is not a TLS server name: {e}"))?;
                let connect = async {
                    let tcp = tokio::net::TcpStream::connect(address)
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = tcp.set_nodelay(true);
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("TLS: {e}"))
                };
                let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| "connecting timed out".to_string())??;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "log proxy connection ended");
                    }
                });
                let request = hyper::Request::get(path_and_query)
                    .header(header::HOST, address)
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| e.to_string())?;
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())
            }
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
    let node_kv = store
        .get(&key_of(&NODE, None, node_name))
        .await?
        .ok_or_else(|| ApiError::NotFound(Subject::new(&NODE, node_name)))?;
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
    let path = format!(
        "/containerLogs/{}/{}/{}{}{}",
        query_escape(ns),
        query_escape(name),
        query_escape(&container),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let resp = ctx
        .state
        .inner
        .logs
        .get(node_name, &address, &path)
        .await
        .map_err(|e| {
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
