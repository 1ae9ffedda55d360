//! The few requests a member or agent makes before it has credentials of its own: over TLS
//! that trusts the server only if it presents the CA the join token pins, authenticated by the
//! token's bootstrap part.
//!
//! - a joining server asks for the cluster material (`POST /shoal/v1/join`) and to be added
//!   (`POST /shoal/v1/members`);
//! - a joining agent files a CertificateSigningRequest for its node certificate and waits for
//!   the control plane to approve and sign it (the kubelet TLS-bootstrap flow).
//!
//! A refused token ends with a message that says so; an unreachable server with one that
//! names it.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shoal_apiserver::{JoinResponse, MemberInfo};
use shoal_store::Member;
use shoal_tls::JoinToken;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long one request may take (adding a member waits for it to catch up).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

fn client(token: &JoinToken) -> Result<HttpClient> {
    let mut tls = (*shoal_tls::pinned_client_config(&token.ca_fingerprint)?).clone();
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Sends one JSON request with the token; returns the decoded answer or a clear error.
async fn call<Resp: DeserializeOwned>(
    server: &str,
    token: &JoinToken,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<Resp> {
    let server = server.trim_end_matches('/');
    if !server.starts_with("https://") {
        bail!("{server} is not an https:// URL");
    }
    let url = format!("{server}{path}");
    let body = match body {
        Some(b) => serde_json::to_vec(b)?,
        None => Vec::new(),
    };
    let request = Request::builder()
        .method(method)
        .uri(&url)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.token.bearer()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("building a request to {url}"))?;
    let send = async {
        let response = client(token)?
            .request(request)
            .await
            .map_err(|e| anyhow!("cannot reach {server}: {}", chain(&e)))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer of {server}: {e}"))?
            .to_bytes();
        Ok::<_, anyhow::Error>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, send)
        .await
        .map_err(|_| anyhow!("{server} did not answer within {REQUEST_TIMEOUT:?}"))??;
    match status {
        s if s.is_success() => {
            serde_json::from_slice(&bytes).with_context(|| format!("undecodable answer from {url}"))
        }
        StatusCode::UNAUTHORIZED => {
            bail!("the join token was refused by {server}: it is wrong, expired or was deleted")
        }
        StatusCode::FORBIDDEN => bail!(
            "the join token is valid but may not do this ({path}): {}",
            message(&bytes)
        ),
        s => bail!("{url} answered {s}: {}", message(&bytes)),
    }
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The cluster material for a joining server.
pub async fn join(server: &str, token: &JoinToken) -> Result<JoinResponse> {
    call(
        server,
        token,
        Method::POST,
        "/shoal/v1/join",
        Some(&json!({})),
    )
    .await
}

/// Asks the cluster to add this member (returns once it is a voter there).
pub async fn add_member(server: &str, token: &JoinToken, id: u64, member: &Member) -> Result<()> {
    let info = MemberInfo {
        id: format!("{id:x}"),
        name: member.name.clone(),
        raft_address: member.raft_addr.clone(),
        api_url: member.api_url.clone(),
        voter: false,
        leader: false,
    };
    let _: Value = call(
        server,
        token,
        Method::POST,
        "/shoal/v1/members",
        Some(&info),
    )
    .await
    .context("adding this member to the cluster")?;
    Ok(())
}

/// The cluster CA's PEM, from a server the token pins.
pub async fn ca_bundle(server: &str, token: &JoinToken) -> Result<String> {
    // `/cacerts` is PEM, not JSON: fetch it through the same pinned connection.
    let url = format!("{}/cacerts", server.trim_end_matches('/'));
    let request = Request::get(&url)
        .body(Full::new(Bytes::new()))
        .context("building the CA request")?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client(token)?.request(request))
        .await
        .map_err(|_| anyhow!("{server} did not answer"))?
        .map_err(|e| anyhow!("cannot reach {server}: {}", chain(&e)))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| anyhow!("reading {url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    let pem = String::from_utf8(bytes.to_vec()).context("the CA bundle is not text")?;
    let der = shoal_tls::certificates_from_pem(&pem)?;
    anyhow::ensure!(
        der.iter()
            .any(|c| shoal_tls::fingerprint(c) == token.ca_fingerprint),
        "{server} sent a CA bundle without the CA the token pins"
    );
    Ok(pem)
}

/// A CertificateSigningRequest named `name` for `request_pem` to `signer` with `usages`.
fn csr_manifest(name: &str, request_pem: &str, signer: &str, usages: &[&str]) -> Value {
    use base64::Engine;
    json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request_pem),
            "signerName": signer,
            "usages": usages,
        },
    })
}

/// Polls the CSR `name` with `get` until it is signed (its certificate PEM), denied or failed
/// (an error with the reason), or `timeout` passed. `what` names it in messages.
async fn wait_signed<F, Fut>(
    what: &str,
    name: &str,
    timeout: Duration,
    mut get: F,
) -> Result<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    use base64::Engine;
    tracing::info!(csr = %name, "waiting for the {what} to be approved and signed");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let current = get().await?;
        let conditions = current
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(refusal) = conditions
            .iter()
            .find(|c| matches!(c["type"].as_str(), Some("Denied" | "Failed")))
        {
            bail!(
                "the {what} request {name} was {}: {}",
                refusal["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                refusal["message"].as_str().unwrap_or_default()
            );
        }
        if let Some(cert) = current
            .pointer("/status/certificate")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
        {
            return base64::engine::general_purpose::STANDARD
                .decode(cert)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| anyhow!("the signed certificate of {name} is not base64 PEM"));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the {what} request {name} was not signed within {timeout:?}: is a \
                 control-plane member running its controllers?"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The kubelet TLS bootstrap: files a CSR for `CN=system:node:<node>, O=system:nodes` signed
/// by `key_pem`, waits until it is approved and signed, returns the certificate PEM.
pub async fn request_node_certificate(
    server: &str,
    token: &JoinToken,
    node: &str,
    key_pem: &str,
    timeout: Duration,
) -> Result<String> {
    let request_pem =
        shoal_tls::request_certificate(key_pem, &format!("system:node:{node}"), &["system:nodes"])?;
    let name = format!("node-csr-{node}-{:08x}", rand::random::<u32>());
    let csr = csr_manifest(
        &name,
        &request_pem,
        "kubernetes.io/kube-apiserver-client-kubelet",
        &["digital signature", "key encipherment", "client auth"],
    );
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let _: Value = call(server, token, Method::POST, path, Some(&csr))
        .await
        .context("filing the certificate signing request")?;
    let url = format!("{path}/{name}");
    wait_signed("node certificate", &name, timeout, || {
        call(server, token, Method::GET, &url, None::<&Value>)
    })
    .await
}

/// Files a CSR for the node's serving certificate (`kubernetes.io/kubelet-serving`) as the
/// node itself through `client`, waits until it is approved and signed, returns the PEM.
pub async fn request_serving_certificate(
    client: &kube::Client,
    node: &str,
    request_pem: &str,
    timeout: Duration,
) -> Result<String> {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(client.clone());
    let name = format!("node-serving-{node}-{:08x}", rand::random::<u32>());
    let csr: CertificateSigningRequest = serde_json::from_value(csr_manifest(
        &name,
        request_pem,
        "kubernetes.io/kubelet-serving",
        &["digital signature", "key encipherment", "server auth"],
    ))
    .context("building the serving certificate request")?;
    api.create(&kube::api::PostParams::default(), &csr)
        .await
        .context("filing the serving certificate request")?;
    wait_signed("serving certificate", &name, timeout, || async {
        let current = api
            .get(&name)
            .await
            .with_context(|| format!("reading {name}"))?;
        Ok(serde_json::to_value(current)?)
    })
    .await
}
