//! Serving a `wasi:http/proxy` component: HTTP/1.1 on the container's listeners, a fresh
//! instance of the pre-instantiated component per request.
//!
//! Each request gets its own `Store` (the container's argv, env, mounts and limits, with the
//! memory limit shared by all the container's live instances), runs on the guest executor
//! metered like any guest, and holds one of [`MAX_CONCURRENT_REQUESTS`] permits; a request that
//! waits longer than [`REQUEST_TIMEOUT`] for a permit or for the guest's response gets 503 or
//! 504. On cancellation (the container is stopped) the listeners close, open connections finish
//! their request in flight and close, and the container ends with exit code 0 once the last
//! request is done; the stop's grace period bounds how long that may take.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::engine::WasmEngine;
use crate::run::{
    ExitStatus, GuestLimiter, GuestSpec, Metered, P2Host, Usage, configure_store, wasi_builder,
};

/// Requests of one container served at once; more wait for a permit.
pub(crate) const MAX_CONCURRENT_REQUESTS: usize = 256;

/// How long a request may wait for a permit and then for the guest's response headers.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Server {
    engine: Arc<WasmEngine>,
    pre: ProxyPre<P2Host>,
    spec: GuestSpec,
    usage: Arc<Usage>,
    permits: Arc<Semaphore>,
    /// Cancelled when the server ends in any way (drained, or aborted after the grace period):
    /// every instance still running for a request is then dropped with it.
    kill: CancellationToken,
}

/// Serves until `cancel`, then drains; returns the container's exit status.
pub(crate) async fn serve(
    engine: &Arc<WasmEngine>,
    pre: &ProxyPre<P2Host>,
    spec: &GuestSpec,
    usage: &Arc<Usage>,
    listeners: Vec<std::net::TcpListener>,
    cancel: CancellationToken,
) -> ExitStatus {
    let kill = CancellationToken::new();
    let _kill_instances = kill.clone().drop_guard();
    let server = Arc::new(Server {
        engine: Arc::clone(engine),
        pre: pre.clone(),
        spec: spec.clone(),
        usage: Arc::clone(usage),
        permits: Arc::new(Semaphore::new(MAX_CONCURRENT_REQUESTS)),
        kill,
    });
    let tracker = TaskTracker::new();
    for listener in listeners {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                return ExitStatus {
                    exit_code: 128,
                    reason: "StartError".to_string(),
                    message: Some(format!("cannot listen: {e}")),
                };
            }
        };
        tracker.spawn(accept(
            listener,
            Arc::clone(&server),
            tracker.clone(),
            cancel.clone(),
        ));
    }
    if tracker.is_empty() {
        tracing::warn!(container = %spec.id, "HTTP component with no port to serve; it waits until stopped");
    }
    cancel.cancelled().await;
    tracker.close();
    tracker.wait().await;
    ExitStatus {
        exit_code: 0,
        reason: "Completed".to_string(),
        message: None,
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors and the like: back off rather than spin.
                    tracing::warn!(container = %server.spec.id, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let kill = server.kill.clone();
        let server = Arc::clone(&server);
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let server = Arc::clone(&server);
                async move { Ok::<_, Infallible>(handle(server, request).await) }
            });
            // Headers must arrive in time: an idle or trickling client cannot hold a
            // connection (and the agent's descriptors) forever.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    // Killed with the server if the grace period runs out first.
                    tokio::select! {
                        _ = connection => {}
                        () = kill.cancelled() => {}
                    }
                }
            }
        });
    }
}

/// Counts a request in [`Usage::in_flight`] while it lives.
struct InFlight(Arc<Usage>);

impl InFlight {
    fn new(usage: &Arc<Usage>) -> InFlight {
        usage.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(usage))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn plain(status: u16, text: String) -> hyper::Response<HyperOutgoingBody> {
    let body = http_body_util::Full::new(Bytes::from(text))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response
}

async fn handle(
    server: Arc<Server>,
    request: hyper::Request<Incoming>,
) -> hyper::Response<HyperOutgoingBody> {
    if server.kill.is_cancelled() {
        return plain(503, "the container is stopped\n".to_string());
    }
    let permit =
        match tokio::time::timeout(REQUEST_TIMEOUT, Arc::clone(&server.permits).acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            _ => return plain(503, "too many requests in flight\n".to_string()),
        };
    let ctx = match wasi_builder(&server.spec) {
        Ok(mut builder) => builder.build(),
        Err(e) => return plain(500, format!("{e}\n")),
    };
    let mut store = Store::new(
        server.engine.engine(),
        P2Host::new(
            ctx,
            GuestLimiter::new(server.spec.limits.memory_bytes, &server.usage),
        ),
    );
    // The CPU limit is held per instance (measured on its own polls); the container's total is
    // what its stats report.
    let instance = Arc::new(Usage::default());
    configure_store(
        &mut store,
        |host: &mut P2Host| host.limiter(),
        server.spec.limits.cpu_millis,
        server.engine.epoch_tick(),
        Arc::clone(&instance),
    );
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let prepared = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|req| {
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        });
    let (req, out) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return plain(500, format!("{e:#}\n")),
    };
    let pre = server.pre.clone();
    let in_flight = InFlight::new(&server.usage);
    let kill = server.kill.clone();
    let instance = Metered {
        inner: Box::pin(async move {
            let _counted = (permit, in_flight);
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        }),
        usage: instance,
        parent: Some(Arc::clone(&server.usage)),
    };
    let guest = tokio::spawn(async move {
        tokio::select! {
            biased;
            () = kill.cancelled() => Err(wasmtime::Error::msg("the container was stopped")),
            result = instance => result,
        }
    });
    match tokio::time::timeout(REQUEST_TIMEOUT, receiver).await {
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(code))) => plain(500, format!("the component failed: {code:?}\n")),
        Ok(Err(_)) => {
            // The guest ended without setting a response: say why.
            let why = match guest.await {
                Ok(Ok(())) => "the component returned without a response".to_string(),
                Ok(Err(e)) => format!("the component failed: {e:#}"),
                Err(e) => format!("the component's task failed: {e}"),
            };
            tracing::debug!(container = %server.spec.id, %why, "request failed");
            plain(500, format!("{why}\n"))
        }
        Err(_) => {
            guest.abort();
            plain(504, "the component did not answer in time\n".to_string())
        }
    }
}
