//! Shoal's apiserver: the Kubernetes REST API over `shoal-store`.
//!
//! Owns the HTTP surface kubectl and kube-rs clients talk to: discovery, OpenAPI, CRUD, patch,
//! watch, the `status`, `scale`, `binding` and `log` subresources, and server-side Table output.
//! It is the only crate that touches the store. Serves HTTPS (HTTP/2 and HTTP/1.1) with client
//! certificates and bootstrap tokens (`auth.rs`), or plain HTTP on loopback when asked to
//! (every request is then the admin); `/metrics` (`metrics.rs`); and the membership endpoints
//! of a multi-member control plane (`join.rs`). CustomResourceDefinitions are established and
//! their custom resources served beside the built-in kinds (`crd.rs`, `served.rs`). Admission beyond defaulting and validation
//! (quotas, limit ranges) is not done here.

mod admission;
mod auth;
mod cache;
mod crd;
mod discovery;
mod error;
mod join;
mod logs;
mod metrics;
mod namespace;
mod object;
mod openapi;
mod protobuf;
mod resources;
mod review;
mod served;
mod table;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, delete, get, post};
use prometheus_client::registry::Registry;
use serde_json::json;
use shoal_api as api;
use shoal_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{METRICS_READERS, SERVER_JOINERS};
pub use join::{JoinResponse, MemberInfo, MemberList};
pub use logs::KUBELET_CLIENT_USER;

/// How the apiserver listens and behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to serve on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Interval of `BOOKMARK` events for watches that ask for them.
    pub bookmark_interval: Duration,
    /// HTTPS with this server configuration (which must verify client certificates against
    /// the cluster CA, optionally). `None`: plain HTTP, allowed on loopback only, where every
    /// request acts as the admin.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The cluster CA, for `/cacerts` and for members that join.
    pub cluster: Option<ClusterSecrets>,
    /// Settings of the admission steps new objects go through.
    pub admission: shoal_api::strategy::Admission,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            bookmark_interval: Duration::from_secs(10),
            tls: None,
            cluster: None,
            admission: shoal_api::strategy::Admission::default(),
        }
    }
}

/// The cluster CA's certificate and key (PEM).
#[derive(Clone)]
pub struct ClusterSecrets {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecrets").finish_non_exhaustive()
    }
}

/// Failures of the server as a whole (not of one request).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("serving http")]
    Serve(#[source] std::io::Error),
    #[error("creating the initial namespaces")]
    Bootstrap(#[source] StoreError),
    #[error("refusing to serve plain HTTP on {0}: without TLS the API only listens on loopback")]
    InsecureNotLoopback(SocketAddr),
    #[error("issuing the apiserver's client certificate for node agents")]
    Certificate(#[source] shoal_tls::TlsError),
}

/// Shared state of every request handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    bookmark_interval: Duration,
    shutdown: CancellationToken,
    served: served::Current,
    crds: crd::Follower,
    logs: logs::LogClient,
    auth: auth::Mode,
    cluster: Option<ClusterSecrets>,
    registry: Arc<Registry>,
    api_metrics: metrics::ApiMetrics,
    caches: cache::Caches,
    admission: shoal_api::strategy::Admission,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// State over `store`; watch streams end when `shutdown` is cancelled. Fails only when
    /// the cluster CA given cannot issue the apiserver's client certificate for node agents.
    pub fn new(
        store: Store,
        config: &Config,
        shutdown: CancellationToken,
    ) -> Result<AppState, shoal_tls::TlsError> {
        let mut registry = Registry::default();
        store.metrics().register(&mut registry);
        let api_metrics = metrics::ApiMetrics::register(&mut registry);
        let logs = logs::LogClient::new(config.cluster.as_ref())?;
        let caches = cache::Caches::new(store.clone(), shutdown.clone());
        Ok(AppState {
            inner: Arc::new(Inner {
                caches,
                store,
                bookmark_interval: config.bookmark_interval,
                shutdown,
                served: served::Current::builtin(),
                crds: crd::Follower::default(),
                logs,
                auth: if config.tls.is_some() {
                    auth::Mode::Tls
                } else {
                    auth::Mode::Insecure
                },
                cluster: config.cluster.clone(),
                registry: Arc::new(registry),
                api_metrics,
                admission: config.admission,
            }),
        })
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The kinds served now, built-in and custom, with their discovery and OpenAPI documents.
    pub(crate) fn served(&self) -> Arc<served::Served> {
        self.inner.served.get()
    }

    pub(crate) fn caches(&self) -> &cache::Caches {
        &self.inner.caches
    }

    pub(crate) fn auth_mode(&self) -> auth::Mode {
        self.inner.auth
    }

    pub(crate) fn cluster(&self) -> Option<&ClusterSecrets> {
        self.inner.cluster.as_ref()
    }

    pub(crate) fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.inner.registry)
    }

    pub(crate) fn admission(&self) -> &shoal_api::strategy::Admission {
        &self.inner.admission
    }

    pub(crate) fn api_metrics(&self) -> &metrics::ApiMetrics {
        &self.inner.api_metrics
    }
}

/// The router serving the whole API; testable with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api", get(discovery::api_versions))
        .route("/api/v1", get(discovery::core_resources))
        .route("/apis", get(discovery::api_groups))
        .route("/apis/{group}", get(discovery::api_group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/api/v1/{*rest}", any(resources::core))
        .route("/apis/{group}/{version}/{*rest}", any(resources::grouped))
        .route(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            post(review::access),
        )
        .route(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            post(review::whoami),
        )
        .route("/version", get(discovery::version))
        .route("/healthz", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(health))
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::v3_root))
        .route("/openapi/v3/{*path}", get(openapi::v3_group_version))
        .route("/metrics", get(metrics::serve))
        .route("/cacerts", get(join::ca_certs))
        .route("/shoal/v1/join", post(join::join))
        .route(
            "/shoal/v1/members",
            get(join::members).post(join::add_member),
        )
        .route("/shoal/v1/members/{member}", delete(join::remove_member))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::middleware,
        ))
        .layer(axum::middleware::from_fn(uri_limit))
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Refuses URIs over [`error::MAX_URI_BYTES`] with a `Status` before anything parses them.
async fn uri_limit(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if len > error::MAX_URI_BYTES {
        return error::ApiError::UriTooLong(len).into_response();
    }
    next.run(request).await
}

async fn health() -> &'static str {
    "ok"
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::MethodNotAllowed
}

async fn not_found() -> error::ApiError {
    error::ApiError::UnknownResource
}

/// Binds `config.listen`, creates the initial namespaces and serves until `shutdown`.
pub async fn run(config: Config, store: Store, shutdown: CancellationToken) -> Result<(), Error> {
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        return Err(Error::InsecureNotLoopback(config.listen));
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    serve(listener, config, store, shutdown).await
}

/// Like [`run`] on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    bootstrap(&store).await.map_err(Error::Bootstrap)?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    let state = AppState::new(store, &config, shutdown.clone()).map_err(Error::Certificate)?;
    crd::start(&state).await;
    match config.tls {
        Some(tls) => {
            tracing::info!(%addr, "apiserver listening (https)");
            shoal_tls::serve(listener, tls, app(state), shutdown)
                .await
                .map_err(Error::Serve)
        }
        None => {
            if !addr.ip().is_loopback() {
                return Err(Error::InsecureNotLoopback(addr));
            }
            tracing::info!(%addr, "apiserver listening (plain http, loopback only)");
            axum::serve(listener, app(state))
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .map_err(Error::Serve)
        }
    }
}

/// The namespaces every cluster has; creating them again is a no-op.
pub const INITIAL_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The priority classes every cluster has (upstream's `scheduling/v1` system classes):
/// name, value, description.
pub const SYSTEM_PRIORITY_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

async fn create_if_absent(
    store: &Store,
    key: &str,
    obj: &serde_json::Value,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    match store.create(key, bytes).await {
        Ok(_) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The RuntimeClasses every cluster has: name (= handler). A node offers a handler with the
/// `runtime.shoal.dev/HANDLER=true` label, which each class's `scheduling.nodeSelector` asks for.
pub const DEFAULT_RUNTIME_CLASSES: [&str; 2] = ["wasmtime", "runc"];

/// Creates the initial namespaces, system priority classes and runtime classes that do not
/// exist yet.
pub async fn bootstrap(store: &Store) -> Result<(), StoreError> {
    for handler in DEFAULT_RUNTIME_CLASSES {
        let key = api::kinds::node::runtimeclass::RUNTIME_CLASS.storage_key(None, handler);
        let obj = json!({
            "kind": "RuntimeClass",
            "apiVersion": "node.k8s.io/v1",
            "metadata": {
                "name": handler,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": object::now_rfc3339(),
            },
            "handler": handler,
            "scheduling": {"nodeSelector": {format!("runtime.shoal.dev/{handler}"): "true"}},
        });
        create_if_absent(store, &key, &obj).await?;
    }
    for (name, value, description) in SYSTEM_PRIORITY_CLASSES {
        let key = api::kinds::scheduling::PRIORITY_CLASS.storage_key(None, name);
        let obj = json!({
            "kind": "PriorityClass",
            "apiVersion": "scheduling.k8s.io/v1",
            "metadata": {
                "name": name,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": object::now_rfc3339(),
            },
            "value": value,
            "description": description,
            "preemptionPolicy": "PreemptLowerPriority",
        });
        create_if_absent(store, &key, &obj).await?;
    }
    for ns in INITIAL_NAMESPACES {
        let key = api::kinds::core::namespace::NAMESPACE.storage_key(None, ns);
        let obj = json!({
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": ns,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": object::now_rfc3339(),
                "labels": {"kubernetes.io/metadata.name": ns},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        create_if_absent(store, &key, &obj).await?;
    }
    Ok(())
}
