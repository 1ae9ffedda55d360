//! The apiserver over HTTPS as `shoal server` runs it: who gets in and what they may do.
//! Client certificates from the cluster CA, bootstrap tokens (valid, wrong, expired, for
//! servers or not), anonymous requests; CSRs record their requester; `/metrics` in the
//! Prometheus format with etcd's and kube-apiserver's names.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shoal_store::Store;
use shoal_tls::{CertificateAuthority, IssuedCertificate};
use tokio_util::sync::CancellationToken;

type Https = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Server {
    addr: SocketAddr,
    ca: CertificateAuthority,
    shutdown: CancellationToken,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).await.expect("store");
    let ca = CertificateAuthority::generate("test-ca").expect("ca");
    let serving = ca
        .issue_server("apiserver", &[], &["127.0.0.1".into()])
        .expect("serving certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = shoal_apiserver::Config {
        listen: addr,
        tls: Some(shoal_tls::server_config(ca.cert_pem(), &serving, false).expect("tls")),
        cluster: Some(shoal_apiserver::ClusterSecrets {
            ca_cert_pem: ca.cert_pem().to_owned(),
            ca_key_pem: ca.key_pem().to_owned(),
        }),
        ..shoal_apiserver::Config::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(shoal_apiserver::serve(
        listener,
        config,
        store.clone(),
        shutdown.clone(),
    ));
    Server {
        addr,
        ca,
        shutdown,
        store,
        _dir: dir,
    }
}

fn client(ca_pem: &str, identity: Option<&IssuedCertificate>) -> Https {
    let mut tls = (*shoal_tls::client_config(ca_pem, identity).expect("tls")).clone();
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn call(
    client: &Https,
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, String) {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A bootstrap-token Secret as `shoal token create` stores it.
async fn store_token(server: &Server, id: &str, secret: &str, extra: &[(&str, &str)]) {
    let mut data = json!({
        "token-id": b64(id),
        "token-secret": b64(secret),
        "usage-bootstrap-authentication": b64("true"),
    });
    for (k, v) in extra {
        data[*k] = json!(b64(v));
    }
    let object = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": data,
    });
    server
        .store
        .create(
            &format!("/registry/core/secrets/kube-system/bootstrap-token-{id}"),
            serde_json::to_vec(&object).expect("json"),
        )
        .await
        .expect("store the token");
}

#[tokio::test]
async fn requests_are_authenticated_and_authorized() {
    let server = start().await;
    let addr = server.addr;
    let anonymous = client(server.ca.cert_pem(), None);
    // Health and the CA bundle are public; everything else needs credentials (401 Status).
    assert_eq!(
        call(&anonymous, addr, "GET", "/readyz", None, None).await.0,
        200
    );
    let (code, body) = call(&anonymous, addr, "GET", "/cacerts", None, None).await;
    assert_eq!(code, 200);
    assert_eq!(body, server.ca.cert_pem());
    let (code, body) = call(&anonymous, addr, "GET", "/api/v1/namespaces", None, None).await;
    assert_eq!(code, 401, "{body}");
    let status: Value = serde_json::from_str(&body).expect("a Status");
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str()),
        (Some("Status"), Some("Unauthorized"))
    );

    // The admin's certificate may do anything.
    let admin_cert = server
        .ca
        .issue_client("system:admin", &["system:masters"])
        .expect("admin");
    let admin = client(server.ca.cert_pem(), Some(&admin_cert));
    assert_eq!(
        call(&admin, addr, "GET", "/api/v1/namespaces", None, None)
            .await
            .0,
        200
    );
    // A certificate of another CA is not accepted at all.
    let stranger_ca = CertificateAuthority::generate("other").expect("ca");
    let stranger_cert = stranger_ca
        .issue_client("system:admin", &["system:masters"])
        .expect("cert");
    let stranger = client(server.ca.cert_pem(), Some(&stranger_cert));
    let refused = stranger
        .request(
            http::Request::get(format!("https://{addr}/api/v1/namespaces"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
    assert!(
        refused.is_err(),
        "a foreign client certificate was accepted"
    );
    // A user without a privileged group is forbidden (403 Status).
    let alice_cert = server.ca.issue_client("alice", &["devs"]).expect("cert");
    let alice = client(server.ca.cert_pem(), Some(&alice_cert));
    let (code, body) = call(&alice, addr, "GET", "/api/v1/secrets", None, None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("alice"), "{body}");

    // Bootstrap tokens: valid ones may file CSRs (which record who asked) and nothing more.
    store_token(&server, "abcdef", "0123456789abcdef", &[]).await;
    let token = "abcdef.0123456789abcdef";
    let key = shoal_tls::new_private_key().expect("key");
    let csr_pem =
        shoal_tls::request_certificate(&key, "system:node:n1", &["system:nodes"]).expect("csr");
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "node-csr-n1"},
        "spec": {
            "request": b64(&csr_pem),
            "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
            "usages": ["client auth"],
            "username": "system:admin",
            "groups": ["system:masters"],
        },
    });
    let csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let (code, body) = call(&anonymous, addr, "POST", csrs, Some(token), Some(csr)).await;
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).expect("csr");
    assert_eq!(created["spec"]["username"], "system:bootstrap:abcdef");
    assert!(created["spec"]["groups"].as_array().is_some_and(|g| {
        g.contains(&json!("system:bootstrappers")) && !g.contains(&json!("system:masters"))
    }));
    let (code, _) = call(
        &anonymous,
        addr,
        "GET",
        "/api/v1/namespaces/kube-system/secrets",
        Some(token),
        None,
    )
    .await;
    assert_eq!(code, 403);
    // Joining as a control-plane member takes a server token.
    let (code, _) = call(
        &anonymous,
        addr,
        "POST",
        "/shoal/v1/join",
        Some(token),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, 403);
    store_token(
        &server,
        "server",
        "0123456789abcdef",
        &[("auth-extra-groups", "system:bootstrappers:shoal:servers")],
    )
    .await;
    let (code, body) = call(
        &anonymous,
        addr,
        "POST",
        "/shoal/v1/join",
        Some("server.0123456789abcdef"),
        Some(json!({})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let joined: Value = serde_json::from_str(&body).expect("join response");
    assert_eq!(joined["caCert"], server.ca.cert_pem());

    // A wrong secret, an unknown token and an expired token are all plain 401s.
    for bad in [
        "abcdef.0123456789abcdee",
        "zzzzzz.0123456789abcdef",
        "not-a-token",
    ] {
        let (code, _) = call(&anonymous, addr, "GET", "/apis", Some(bad), None).await;
        assert_eq!(code, 401, "{bad}");
    }
    store_token(
        &server,
        "expird",
        "0123456789abcdef",
        &[("expiration", "2020-01-01T00:00:00Z")],
    )
    .await;
    let (code, _) = call(
        &anonymous,
        addr,
        "GET",
        "/apis",
        Some("expird.0123456789abcdef"),
        None,
    )
    .await;
    assert_eq!(code, 401);

    // Metrics: the admin may scrape; names as etcd and kube-apiserver have them.
    let (code, text) = call(&admin, addr, "GET", "/metrics", None, None).await;
    assert_eq!(code, 200);
    for name in [
        "etcd_server_has_leader 1",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_server_proposals_committed_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "apiserver_request_total{verb=\"LIST\",resource=\"namespaces\",code=\"200\"}",
        "apiserver_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    let (code, _) = call(&anonymous, addr, "GET", "/metrics", Some(token), None).await;
    assert_eq!(
        code, 403,
        "a token without the metrics group may not scrape"
    );
    server.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// kubectl run as `user` (a client certificate of the cluster CA) against `server`.
fn kubectl_as(
    server: &Server,
    home: &std::path::Path,
    user: &IssuedCertificate,
    args: &[&str],
) -> (bool, String) {
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: u\ncurrent-context: shoal\n",
        server.addr,
        b64(server.ca.cert_pem()),
        b64(&user.cert_pem),
        b64(&user.key_pem),
    );
    let path = home.join("kubeconfig");
    std::fs::write(&path, config).expect("kubeconfig");
    shoal_apiserver::testing::kubectl(&path, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_and_whoami_answer_by_the_policy() {
    let server = start().await;
    let admin = server
        .ca
        .issue_client("system:admin", &["system:masters"])
        .expect("admin");
    let alice = server.ca.issue_client("alice", &["devs"]).expect("alice");
    let home = tempfile::tempdir().expect("home");
    let home_path = home.path().to_path_buf();
    let results = tokio::task::spawn_blocking(move || {
        let steps: [(&IssuedCertificate, &[&str]); 5] = [
            (&admin, &["auth", "can-i", "create", "pods"]),
            (&admin, &["auth", "can-i", "*", "*"]),
            (&alice, &["auth", "can-i", "create", "pods"]),
            (
                &alice,
                &["auth", "can-i", "get", "secrets", "-n", "kube-system"],
            ),
            (
                &alice,
                &[
                    "auth",
                    "whoami",
                    "-o",
                    "jsonpath={.status.userInfo.username}",
                ],
            ),
        ];
        steps
            .iter()
            .map(|(user, args)| kubectl_as(&server, &home_path, user, args))
            .collect::<Vec<_>>()
    })
    .await
    .expect("kubectl thread");
    let want = [
        (true, "yes"),
        (true, "yes"),
        (false, "no"),
        (false, "no"),
        (true, "alice"),
    ];
    for (i, ((ok, out), (want_ok, want_text))) in results.iter().zip(want).enumerate() {
        assert_eq!(*ok, want_ok, "step {i}: {out}");
        assert_eq!(out.trim(), want_text, "step {i}: {out}");
    }
}
