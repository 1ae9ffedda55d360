//! Boundary tests of the whole agent: a fake runtime (the real one lives in another crate) and
//! a minimal in-memory Kubernetes API (pods with list+watch, nodes, leases) served over HTTP to
//! a real `kube::Client`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use shoal_runtime::Runtime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::pods::Timing;
use crate::testing::FakeRuntime;
use crate::{Config, NodeResources};

// ---------------------------------------------------------------- fake API server

#[derive(Default)]
struct Objects {
    revision: u64,
    pods: BTreeMap<(String, String), Value>,
    /// Watch events of pods: (revision, type, object).
    pod_events: Vec<(u64, &'static str, Value)>,
    nodes: BTreeMap<String, Value>,
    leases: BTreeMap<String, Value>,
}

struct FakeApi {
    objects: Mutex<Objects>,
    revision: watch::Sender<u64>,
    /// While set, every request gets 503 and open watches end.
    down: std::sync::atomic::AtomicBool,
    rejected: std::sync::atomic::AtomicUsize,
}

type Shared = Arc<FakeApi>;

fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            let object = target.as_object_mut().expect("object");
            for (k, v) in fields {
                if v.is_null() {
                    object.remove(k);
                } else {
                    merge(object.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404
        })),
    )
        .into_response()
}

fn conflict(what: &str) -> Response {
    (
        StatusCode::CONFLICT,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{what} conflict"), "reason": "Conflict", "code": 409
        })),
    )
        .into_response()
}

fn json_body(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

impl FakeApi {
    fn new() -> Shared {
        Arc::new(FakeApi {
            objects: Mutex::new(Objects::default()),
            revision: watch::channel(0).0,
            down: std::sync::atomic::AtomicBool::new(false),
            rejected: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        // Wake the watches so that they notice.
        self.revision.send_modify(|_| {});
    }

    fn rejected(&self) -> usize {
        self.rejected.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().expect("objects")
    }

    /// Stores a pod change and publishes it to watchers.
    fn put_pod(&self, objects: &mut Objects, kind: &'static str, mut pod: Value) -> Value {
        objects.revision += 1;
        let rv = objects.revision;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (
            pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned(),
            pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        if kind == "DELETED" {
            objects.pods.remove(&key);
        } else {
            objects.pods.insert(key, pod.clone());
        }
        objects.pod_events.push((rv, kind, pod.clone()));
        self.revision.send_replace(rv);
        pod
    }

    fn create_pod(&self, mut pod: Value) {
        let mut objects = self.lock();
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        pod["metadata"]["namespace"] = json!("default");
        pod["metadata"]["uid"] = json!(format!("uid-{name}-{}", objects.revision));
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        self.put_pod(&mut objects, "ADDED", pod);
    }

    fn pod(&self, name: &str) -> Option<Value> {
        self.lock()
            .pods
            .get(&("default".to_owned(), name.to_owned()))
            .cloned()
    }

    /// What the apiserver does on a graceful delete: set the deletion timestamp.
    fn mark_deleted(&self, name: &str, grace: i64) {
        let mut objects = self.lock();
        let mut pod = objects
            .pods
            .get(&("default".to_owned(), name.to_owned()))
            .cloned()
            .expect("pod exists");
        pod["metadata"]["deletionTimestamp"] = json!(jiff::Timestamp::now().to_string());
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        self.put_pod(&mut objects, "MODIFIED", pod);
    }

    /// A deletion the agent did not take part in (e.g. force delete).
    fn remove_pod(&self, name: &str) {
        let mut objects = self.lock();
        let pod = objects
            .pods
            .get(&("default".to_owned(), name.to_owned()))
            .cloned()
            .expect("pod exists");
        self.put_pod(&mut objects, "DELETED", pod);
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    watch: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(rename = "fieldSelector")]
    field_selector: Option<String>,
}

fn selected(pod: &Value, selector: &Option<String>) -> bool {
    match selector
        .as_deref()
        .and_then(|s| s.strip_prefix("spec.nodeName="))
    {
        Some(node) => pod["spec"]["nodeName"] == node,
        None => true,
    }
}

async fn list_pods(State(api): State<Shared>, Query(q): Query<ListQuery>) -> Response {
    if q.watch.as_deref() != Some("true") && q.watch.as_deref() != Some("1") {
        let objects = api.lock();
        let items: Vec<Value> = objects
            .pods
            .values()
            .filter(|p| selected(p, &q.field_selector))
            .cloned()
            .collect();
        return axum::Json(json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": objects.revision.to_string()},
            "items": items
        }))
        .into_response();
    }
    let after: u64 = q
        .resource_version
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let rx = api.revision.subscribe();
    let state = (api, rx, after, q.field_selector);
    let stream = futures::stream::unfold(state, |(api, mut rx, after, selector)| async move {
        loop {
            if api.is_down() {
                return None;
            }
            let batch: Vec<(u64, &'static str, Value)> = api
                .lock()
                .pod_events
                .iter()
                .filter(|(rv, _, pod)| *rv > after && selected(pod, &selector))
                .cloned()
                .collect();
            if let Some(last) = batch.last().map(|(rv, _, _)| *rv) {
                let mut out = Vec::new();
                for (_, kind, object) in batch {
                    out.extend(
                        serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json"),
                    );
                    out.push(b'\n');
                }
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from(out)),
                    (api, rx, last, selector),
                ));
            }
            let current = *rx.borrow_and_update();
            if current <= after && rx.changed().await.is_err() {
                return None;
            }
            if current > after {
                // Events of other nodes only: skip past them.
                let skipped = current;
                return Some((Ok(Bytes::new()), (api, rx, skipped, selector)));
            }
        }
    });
    Body::from_stream(stream).into_response()
}

async fn pod_status(
    State(api): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut objects = api.lock();
    let Some(mut pod) = objects.pods.get(&(ns, name.clone())).cloned() else {
        return not_found(&name);
    };
    let patch = json_body(&body);
    merge(&mut pod["status"], &patch["status"]);
    axum::Json(api.put_pod(&mut objects, "MODIFIED", pod)).into_response()
}

async fn delete_pod(
    State(api): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut objects = api.lock();
    let Some(pod) = objects.pods.get(&(ns, name.clone())).cloned() else {
        return not_found(&name);
    };
    let params = json_body(&body);
    if let Some(uid) = params["preconditions"]["uid"].as_str()
        && pod["metadata"]["uid"] != uid
    {
        return conflict(&name);
    }
    axum::Json(api.put_pod(&mut objects, "DELETED", pod)).into_response()
}

async fn get_node(State(api): State<Shared>, Path(name): Path<String>) -> Response {
    match api.lock().nodes.get(&name) {
        Some(node) => axum::Json(node.clone()).into_response(),
        None => not_found(&name),
    }
}

async fn create_node(State(api): State<Shared>, body: Bytes) -> Response {
    let mut node = json_body(&body);
    let name = node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    node["metadata"]["uid"] = json!(format!("uid-node-{name}"));
    api.lock().nodes.insert(name, node.clone());
    (StatusCode::CREATED, axum::Json(node)).into_response()
}

async fn patch_node(State(api): State<Shared>, Path(name): Path<String>, body: Bytes) -> Response {
    let mut objects = api.lock();
    let Some(node) = objects.nodes.get_mut(&name) else {
        return not_found(&name);
    };
    merge(node, &json_body(&body));
    axum::Json(node.clone()).into_response()
}

async fn get_lease(
    State(api): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
) -> Response {
    match api.lock().leases.get(&name) {
        Some(lease) => axum::Json(lease.clone()).into_response(),
        None => not_found(&name),
    }
}

async fn create_lease(State(api): State<Shared>, Path(_ns): Path<String>, body: Bytes) -> Response {
    let mut lease = json_body(&body);
    let name = lease["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut objects = api.lock();
    objects.revision += 1;
    lease["metadata"]["resourceVersion"] = json!(objects.revision.to_string());
    objects.leases.insert(name, lease.clone());
    (StatusCode::CREATED, axum::Json(lease)).into_response()
}

async fn replace_lease(
    State(api): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut lease = json_body(&body);
    let mut objects = api.lock();
    let current = objects
        .leases
        .get(&name)
        .map(|l| l["metadata"]["resourceVersion"].clone());
    if current != Some(lease["metadata"]["resourceVersion"].clone()) {
        return conflict(&name);
    }
    objects.revision += 1;
    lease["metadata"]["resourceVersion"] = json!(objects.revision.to_string());
    objects.leases.insert(name, lease.clone());
    axum::Json(lease).into_response()
}

async fn availability(
    State(api): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if api.is_down() {
        api.rejected
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    next.run(request).await
}

fn fake_api_router(api: Shared) -> Router {
    Router::new()
        .route("/api/v1/pods", get(list_pods))
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            axum::routing::delete(delete_pod),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/status",
            axum::routing::patch(pod_status),
        )
        .route("/api/v1/nodes", axum::routing::post(create_node))
        .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
        .route(
            "/api/v1/nodes/{name}/status",
            axum::routing::patch(patch_node),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
            axum::routing::post(create_lease),
        )
        .route(
            "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
            get(get_lease).put(replace_lease),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            availability,
        ))
        .with_state(api)
}

// ---------------------------------------------------------------- harness

struct Harness {
    api: Shared,
    runtime: Arc<FakeRuntime>,
    data: tempfile::TempDir,
    client: kube::Client,
    _server: tokio::task::JoinHandle<()>,
}

struct RunningAgent {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), crate::Error>>,
}

impl RunningAgent {
    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("agent stops in time")
            .expect("agent task");
        result.expect("agent result");
    }
}

fn fast_timing() -> Timing {
    let fast = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        reset_after: Duration::from_secs(600),
    };
    Timing {
        crash: fast,
        pull: fast,
        api: fast,
    }
}

impl Harness {
    async fn new() -> Harness {
        let api = FakeApi::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = fake_api_router(Arc::clone(&api));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url: axum::http::Uri = format!("http://{addr}").parse().expect("uri");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("client");
        Harness {
            api,
            runtime: Arc::new(FakeRuntime::default()),
            data: tempfile::tempdir().expect("tempdir"),
            client,
            _server: server,
        }
    }

    async fn start_agent(&self) -> RunningAgent {
        self.start_agent_with(None).await
    }

    async fn start_agent_with(&self, tls: Option<Arc<rustls::ServerConfig>>) -> RunningAgent {
        self.start_agent_on(self.runtime.clone(), tls).await
    }

    /// An agent driving `runtime` (a fresh one stands for a runtime that died with the agent).
    async fn start_agent_on(
        &self,
        runtime: Arc<FakeRuntime>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> RunningAgent {
        let config = Config {
            node_name: "n1".to_owned(),
            data_dir: self.data.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            node_ip: None,
            capacity: NodeResources {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
                pods: 110,
            },
            labels: BTreeMap::new(),
            tls,
            lease_duration_seconds: crate::LEASE_DURATION_SECONDS,
        };
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime: Arc<dyn Runtime> = runtime;
        let task = tokio::spawn(crate::run_with(
            config,
            self.client.clone(),
            vec![runtime],
            fast_timing(),
            shutdown.clone(),
            Some(tx),
        ));
        let addr = rx.await.expect("agent bound");
        RunningAgent {
            addr,
            shutdown,
            task,
        }
    }
}

/// Polls `check` until it gives a value, for at most 10 s.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET path` over HTTP/1.0 (no chunked encoding); returns status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_owned())
}

/// `GET path` over TLS and HTTP/1.0, trusting `ca_pem`, presenting `identity`, expecting the
/// server to be `server_name`; `Err` when the connection or handshake fails.
async fn https_get(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&shoal_tls::IssuedCertificate>,
    server_name: &str,
    path: &str,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = (*shoal_tls::client_config(ca_pem, identity).expect("client config")).clone();
    config.alpn_protocols.clear();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // A TLS 1.3 server refusing the client certificate says so on the first read.
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response).into_owned();
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))
}

fn container_status(pod: &Value) -> Value {
    pod["status"]["containerStatuses"][0].clone()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn registers_node_and_renews_lease() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    let node = eventually("node with status", || {
        h.api
            .lock()
            .nodes
            .get("n1")
            .filter(|n| n["status"]["daemonEndpoints"].is_object())
            .cloned()
    })
    .await;
    assert_eq!(node["metadata"]["labels"]["shoal.dev/wasm"], "true");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
    assert_eq!(
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        agent.addr.port()
    );
    assert_eq!(node["status"]["addresses"][0]["address"], "127.0.0.1");
    assert_eq!(node["status"]["capacity"]["cpu"], "2");
    assert_eq!(node["status"]["runtimeHandlers"][0]["name"], "wasmtime");
    let lease = eventually("lease", || h.api.lock().leases.get("n1").cloned()).await;
    assert_eq!(lease["spec"]["holderIdentity"], "n1");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["uid"],
        "uid-node-n1"
    );
    let (code, body) = http_get(agent.addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    agent.stop().await;
}

#[tokio::test]
async fn pod_runs_to_completion_and_logs_are_served() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "hello"},
        "spec": {
            "nodeName": "n1",
            "restartPolicy": "Never",
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{
                "name": "main", "image": "fake/exit0",
                "args": ["hi", "$(WHO)"],
                "env": [
                    {"name": "WHO", "value": "world"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}
            }]
        }
    }));
    let pod = eventually("pod succeeded", || {
        h.api
            .pod("hello")
            .filter(|p| p["status"]["phase"] == "Succeeded")
    })
    .await;
    let cs = container_status(&pod);
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0);
    assert_eq!(cs["state"]["terminated"]["reason"], "Completed");
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    assert_eq!(
        cs["state"]["terminated"]["containerID"],
        format!("wasmtime://{uid}-main-0")
    );
    assert_eq!(cs["imageID"], "fake/exit0@sha256:feed");
    assert_eq!(cs["ready"], false);
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    let ready = pod["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .expect("ready condition");
    assert_eq!(ready["reason"], "PodCompleted");
    assert!(
        h.data
            .path()
            .join("pods")
            .join(&uid)
            .join("volumes/scratch")
            .is_dir()
    );
    assert_eq!(
        h.runtime.events()[0],
        r#"start default/hello/main ["main", "hi", "world"]"#
    );

    let (code, body) = http_get(agent.addr, "/containerLogs/default/hello/main").await;
    assert_eq!(code, 200);
    expect_test::expect![[r#"
        argv=["main", "hi", "world"]
        env=[("WHO", "world"), ("POD", "hello")]
        /scratch: 
        mounts=1
    "#]]
    .assert_eq(&body);
    let (code, body) = http_get(
        agent.addr,
        "/containerLogs/default/hello/main?tailLines=1&timestamps=true",
    )
    .await;
    assert_eq!(code, 200);
    assert!(body.ends_with("Z mounts=1\n"), "{body}");
    assert!(body.starts_with("20"), "{body}");
    let (code, body) = http_get(
        agent.addr,
        "/containerLogs/default/hello/main?previous=true",
    )
    .await;
    assert_eq!(
        (code, body.as_str()),
        (
            404,
            "previous terminated container main in pod hello not found"
        )
    );
    agent.stop().await;
}

#[tokio::test]
async fn crash_loop_restarts_with_backoff() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "crashy"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/exit3"}]}
    }));
    let pod = eventually("two restarts", || {
        h.api.pod("crashy").filter(|p| {
            let cs = container_status(p);
            cs["restartCount"].as_i64().unwrap_or(0) >= 2
                && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
    })
    .await;
    let cs = container_status(&pod);
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3);
    let message = cs["state"]["waiting"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("back-off ")
            && message.ends_with("restarting failed container=c pod=crashy"),
        "{message}"
    );
    assert_eq!(pod["status"]["phase"], "Running");
    // The previous run's log is served with previous=true.
    let (code, body) = http_get(agent.addr, "/containerLogs/default/crashy/c?previous=true").await;
    assert_eq!(code, 200);
    assert!(body.starts_with("argv=[\"c\"]"), "{body}");
    agent.stop().await;
}

#[tokio::test]
async fn on_failure_pod_fails_with_never_and_succeeds_after_retry() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    // The same container, failing its first run: under Never the pod fails with that run...
    h.api.create_pod(json!({
        "metadata": {"name": "never"},
        "spec": {"nodeName": "n1", "restartPolicy": "Never",
                 "containers": [{"name": "c", "image": "fake/flaky"}]}
    }));
    // ... under OnFailure it is run again and the pod succeeds.
    h.api.create_pod(json!({
        "metadata": {"name": "retried"},
        "spec": {"nodeName": "n1", "restartPolicy": "OnFailure",
                 "containers": [{"name": "c", "image": "fake/flaky"}]}
    }));
    let pod = eventually("never failed", || {
        h.api
            .pod("never")
            .filter(|p| p["status"]["phase"] == "Failed")
    })
    .await;
    let cs = container_status(&pod);
    assert_eq!(cs["state"]["terminated"]["exitCode"], 1);
    assert_eq!(cs["restartCount"], 0);
    let pod = eventually("retried succeeded", || {
        h.api
            .pod("retried")
            .filter(|p| p["status"]["phase"] == "Succeeded")
    })
    .await;
    let cs = container_status(&pod);
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0);
    assert_eq!(cs["restartCount"], 1);
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 1);
    // Finished pods keep no Ready sandbox.
    eventually("the finished pods' sandboxes stopped", || {
        let ready = h.runtime.ready_sandboxes();
        ready.is_empty().then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn image_pull_failure_backs_off() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "nopull"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/missing:v1"}]}
    }));
    let pod = eventually("pull error", || {
        h.api.pod("nopull").filter(|p| {
            let reason = &container_status(p)["state"]["waiting"]["reason"];
            reason == "ErrImagePull" || reason == "ImagePullBackOff"
        })
    })
    .await;
    let message = container_status(&pod)["state"]["waiting"]["message"]
        .as_str()
        .expect("message")
        .to_owned();
    assert!(message.contains("manifest unknown"), "{message}");
    assert_eq!(pod["status"]["phase"], "Pending");
    eventually("back-off", || {
        h.api
            .pod("nopull")
            .filter(|p| container_status(p)["state"]["waiting"]["reason"] == "ImagePullBackOff")
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn unsupported_volume_is_a_config_error() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "cfg"},
        "spec": {"nodeName": "n1",
                 "volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "x"}}],
                 "containers": [{"name": "c", "image": "fake/run",
                                 "volumeMounts": [{"name": "c", "mountPath": "/c"}]}]}
    }));
    let pod = eventually("config error", || {
        h.api.pod("cfg").filter(|p| {
            container_status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
        })
    })
    .await;
    assert!(
        container_status(&pod)["state"]["waiting"]["message"]
            .as_str()
            .expect("message")
            .contains("only emptyDir, hostPath, configMap and secret volumes are supported")
    );
    agent.stop().await;
}

#[tokio::test]
async fn escaping_sub_paths_and_host_paths_into_the_data_dir_are_config_errors() {
    let h = Harness::new().await;
    let host = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("../../../../../../..", host.path().join("esc")).expect("symlink");
    let agent = h.start_agent().await;
    let pod = |name: &str, path: &std::path::Path, sub_path: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "n1",
                     "volumes": [{"name": "data", "hostPath": {"path": path}}],
                     "containers": [{"name": "c", "image": "fake/run",
                                     "volumeMounts": [{"name": "data", "mountPath": "/d",
                                                       "subPath": sub_path}]}]}
        })
    };
    h.api.create_pod(pod("esc", host.path(), "esc"));
    h.api
        .create_pod(pod("own", &h.data.path().join("pods"), ""));
    let cases = [
        (
            "esc",
            "subPath \"esc\" of volume \"data\" is not a directory inside the volume",
        ),
        ("own", "overlaps the node agent's data directory"),
    ];
    for (name, want) in cases {
        let pod = eventually("config error", || {
            h.api.pod(name).filter(|p| {
                container_status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
            })
        })
        .await;
        let message = container_status(&pod)["state"]["waiting"]["message"].clone();
        assert!(
            message.as_str().expect("message").contains(want),
            "{name}: {message}"
        );
    }
    agent.stop().await;
}

#[tokio::test]
async fn graceful_deletion_stops_a_stuck_container_and_deletes_the_pod() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "stuck"},
        "spec": {"nodeName": "n1",
                 "volumes": [{"name": "v", "emptyDir": {}}],
                 "containers": [{"name": "c", "image": "fake/stuck",
                                 "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}
    }));
    let pod = eventually("running", || {
        h.api
            .pod("stuck")
            .filter(|p| p["status"]["phase"] == "Running" && container_status(p)["ready"] == true)
    })
    .await;
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    let ready = pod["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .expect("ready");
    assert_eq!(ready["status"], "True");
    assert!(container_status(&pod)["state"]["running"]["startedAt"].is_string());
    let volume = h.data.path().join("pods").join(&uid).join("volumes/v");
    assert!(volume.is_dir());

    h.api.mark_deleted("stuck", 1);
    eventually("pod deleted", || h.api.pod("stuck").is_none().then_some(())).await;
    let events = h.runtime.events();
    assert!(
        events.contains(&"stop default/stuck/c grace=1s".to_owned()),
        "{events:?}"
    );
    assert!(!volume.exists());
    // The final status written before the delete says how the container ended.
    let last_modified = h
        .api
        .lock()
        .pod_events
        .iter()
        .rev()
        .find(|(_, kind, _)| *kind == "MODIFIED")
        .map(|(_, _, p)| p.clone())
        .expect("a status write");
    assert_eq!(
        container_status(&last_modified)["state"]["terminated"]["exitCode"],
        137
    );
    assert_eq!(last_modified["status"]["phase"], "Failed");
    agent.stop().await;
}

#[tokio::test]
async fn vanished_pod_is_stopped_and_cleaned_up() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "gone"},
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    eventually("running", || {
        h.api
            .pod("gone")
            .filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    h.api.remove_pod("gone");
    eventually("container stopped", || {
        h.runtime
            .events()
            .contains(&"stop default/gone/c grace=0s".to_owned())
            .then_some(())
    })
    .await;
    eventually("logs removed", || {
        let dirs: Vec<_> = std::fs::read_dir(h.data.path().join("pods"))
            .expect("pods dir")
            .flatten()
            .collect();
        dirs.is_empty().then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn a_sandbox_that_cannot_be_made_is_retried() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "late", "labels": {"fake/sandbox-failures": "2"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    eventually("running after two refusals", || {
        h.api
            .pod("late")
            .filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    let events = h.runtime.events();
    let refused = events
        .iter()
        .filter(|e| *e == "refuse sandbox late")
        .count();
    assert_eq!(refused, 2, "{events:?}");
    // A pod deleted while its sandbox is being retried is finished without one.
    h.api.create_pod(json!({
        "metadata": {"name": "never", "labels": {"fake/sandbox-failures": "1000"}},
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    eventually("a refusal", || {
        h.runtime
            .events()
            .contains(&"refuse sandbox never".to_owned())
            .then_some(())
    })
    .await;
    h.api.mark_deleted("never", 0);
    eventually("pod deleted", || h.api.pod("never").is_none().then_some(())).await;
    assert!(
        !h.runtime
            .events()
            .iter()
            .any(|e| e.starts_with("start default/never/")),
        "{:?}",
        h.runtime.events()
    );
    agent.stop().await;
}

#[tokio::test]
async fn agent_restart_adopts_what_the_runtime_still_runs() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "svc"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    h.api.create_pod(json!({
        "metadata": {"name": "doomed"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    for name in ["svc", "doomed"] {
        eventually("running", || {
            h.api
                .pod(name)
                .filter(|p| p["status"]["phase"] == "Running")
        })
        .await;
    }
    let doomed_uid = h.api.pod("doomed").expect("pod")["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .to_owned();
    agent.stop().await;
    // The agent's stop leaves the runtime's containers alone, as the kubelet's does.
    assert!(
        !h.runtime.events().iter().any(|e| e.starts_with("stop ")),
        "{:?}",
        h.runtime.events()
    );
    // Deleted while the agent is away: its sandbox is an orphan.
    h.api.remove_pod("doomed");
    let agent = h.start_agent().await;
    eventually("orphaned sandbox removed", || {
        h.runtime
            .events()
            .contains(&format!("remove sandbox {doomed_uid}-sandbox-0"))
            .then_some(())
    })
    .await;
    assert!(
        h.runtime
            .events()
            .contains(&"stop default/doomed/c grace=0s".to_owned())
    );
    // The running container is adopted: no second start, no restart counted.
    let pod = h.api.pod("svc").expect("pod");
    let cs = container_status(&pod);
    assert_eq!(cs["restartCount"], 0);
    assert!(cs["state"]["running"].is_object(), "{cs}");
    let starts = |events: Vec<String>| {
        events
            .iter()
            .filter(|e| e.starts_with("start default/svc/c"))
            .count()
    };
    assert_eq!(starts(h.runtime.events()), 1);
    // ... and still stopped on deletion by the new agent.
    h.api.mark_deleted("svc", 0);
    eventually("pod deleted", || h.api.pod("svc").is_none().then_some(())).await;
    assert!(
        h.runtime
            .events()
            .contains(&"stop default/svc/c grace=0s".to_owned())
    );
    agent.stop().await;
}

#[tokio::test]
async fn agent_restart_with_a_lost_runtime_resumes_from_recorded_status() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "svc"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    eventually("running", || {
        h.api
            .pod("svc")
            .filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    agent.stop().await;
    // As after a restart of the process that held an in-process runtime: nothing left to adopt.
    let fresh = Arc::new(FakeRuntime::default());
    let agent = h.start_agent_on(Arc::clone(&fresh), None).await;
    let pod = eventually("running again", || {
        h.api.pod("svc").filter(|p| {
            let cs = container_status(p);
            cs["restartCount"] == 1 && cs["state"]["running"].is_object()
        })
    })
    .await;
    assert_eq!(
        container_status(&pod)["lastState"]["terminated"]["reason"],
        "ContainerStatusUnknown"
    );
    let starts = fresh
        .events()
        .iter()
        .filter(|e| e.starts_with("start default/svc/c"))
        .count();
    assert_eq!(starts, 1);
    // The second run logs to its own file; the first run's log is `--previous`.
    let (code, _) = http_get(agent.addr, "/containerLogs/default/svc/c?previous=true").await;
    assert_eq!(code, 200);
    agent.stop().await;
}

#[tokio::test]
async fn follow_streams_a_running_container() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "tail"},
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    eventually("running", || {
        h.api
            .pod("tail")
            .filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(agent.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /containerLogs/default/tail/c?follow=true HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("mounts=0") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("first lines in time")
            .expect("read");
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    // The follow ends when the container does.
    h.api.mark_deleted("tail", 0);
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("follow ends")
        .expect("read");
    let text = String::from_utf8_lossy(&received).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(body.starts_with("argv=[\"c\"]\n"), "{body}");
    agent.stop().await;
}

#[tokio::test]
async fn pods_keep_running_while_the_api_is_away() {
    let h = Harness::new().await;
    let agent = h.start_agent().await;
    h.api.create_pod(json!({
        "metadata": {"name": "steady"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    eventually("running", || {
        h.api
            .pod("steady")
            .filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    // The API server goes away: watches end, every request fails, for a while.
    h.api.set_down(true);
    eventually("the agent to notice the outage", || {
        (h.api.rejected() >= 2).then_some(())
    })
    .await;
    h.api.set_down(false);
    h.api.create_pod(json!({
        "metadata": {"name": "later"},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "fake/run"}]}
    }));
    eventually("new pod running after the outage", || {
        h.api
            .pod("later")
            .filter(|p| p["status"]["phase"] == "Running")
    })
    .await;
    let events = h.runtime.events();
    assert!(
        !events
            .iter()
            .any(|e| e.contains("steady") && !e.starts_with("start")),
        "{events:?}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn api_retry_backs_off_on_errors_only_and_stops_on_shutdown() {
    let mut retry = crate::ApiRetry::new(BackoffPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(3),
        reset_after: Duration::from_secs(60),
    });
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let failed = || Err(kube::Error::LinesCodecMaxLineLengthExceeded);
    let mut seen = Vec::new();
    for outcome in [failed(), failed(), Ok(Duration::from_millis(50)), failed()] {
        assert!(!retry.wait(outcome, "n1", "cannot test", &shutdown).await);
        seen.push(retry.delay.map(|d| d.as_secs()));
    }
    // A short wait (a conflict) keeps the back-off; a success resets it.
    assert_eq!(seen, [Some(1), Some(2), Some(2), Some(3)]);
    retry.reset();
    assert_eq!(retry.delay, None);
}

/// Over TLS the log endpoint serves only the apiserver's and administrators' certificates of
/// the cluster CA, under the node's own name: no certificate, another CA, another node's
/// certificate, or the wrong server name all fail.
#[tokio::test]
async fn the_tls_log_endpoint_serves_only_the_apiserver_and_admins() {
    let h = Harness::new().await;
    let ca = shoal_tls::CertificateAuthority::generate("test-ca").expect("ca");
    let key = shoal_tls::new_private_key().expect("key");
    let request = shoal_tls::request_serving_certificate(
        &key,
        "system:node:n1",
        &["system:nodes"],
        &["n1".to_string()],
    )
    .expect("request");
    let serving = shoal_tls::IssuedCertificate {
        cert_pem: ca
            .sign_serving_request(&request, Duration::from_secs(3600))
            .expect("sign"),
        key_pem: key,
    };
    let tls = shoal_tls::server_config(ca.cert_pem(), &serving, true).expect("server config");
    let agent = h.start_agent_with(Some(tls)).await;
    let apiserver = ca
        .issue_client(crate::logs::AUTHORIZED_USERS[0], &[])
        .expect("apiserver cert");
    let admin = ca
        .issue_client("system:admin", &["system:masters"])
        .expect("admin cert");
    let other_node = ca
        .issue_client("system:node:n2", &["system:nodes"])
        .expect("node cert");
    let ca_pem = ca.cert_pem();
    let path = "/containerLogs/default/missing/c";

    assert_eq!(
        https_get(agent.addr, ca_pem, Some(&apiserver), "n1", "/healthz").await,
        Ok(200)
    );
    assert_eq!(
        https_get(agent.addr, ca_pem, Some(&admin), "n1", "/healthz").await,
        Ok(200)
    );
    assert_eq!(
        https_get(agent.addr, ca_pem, Some(&other_node), "n1", path).await,
        Ok(403)
    );
    assert!(
        https_get(agent.addr, ca_pem, None, "n1", path)
            .await
            .is_err(),
        "served without a client certificate"
    );
    let stranger = shoal_tls::CertificateAuthority::generate("other-ca").expect("ca");
    let foreign = stranger
        .issue_client(crate::logs::AUTHORIZED_USERS[0], &[])
        .expect("cert");
    assert!(
        https_get(agent.addr, ca_pem, Some(&foreign), "n1", path)
            .await
            .is_err(),
        "served a certificate of another CA"
    );
    assert!(
        https_get(agent.addr, ca_pem, Some(&apiserver), "n2", path)
            .await
            .is_err(),
        "the agent of n1 passed for n2"
    );
    // Plain HTTP on the TLS port gets nothing.
    let mut plain = tokio::net::TcpStream::connect(agent.addr)
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = plain.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200"));
    agent.stop().await;
}
