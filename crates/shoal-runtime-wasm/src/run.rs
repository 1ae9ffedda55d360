//! Running one container: WASI context, limits, log streams and the task that owns the guest.
//!
//! Each container is a task on the runtime's guest executor (threads of its own, never the
//! control plane's), owning its `Store`. The guest sees its argv, its environment and its
//! preopened mounts, nothing else: stdin is empty, stdout/stderr go to the container's CRI log
//! file, sockets and name lookup are denied. Every epoch tick the guest yields to the executor
//! (so a busy loop neither starves other guests nor escapes cancellation) and, with a CPU limit,
//! sleeps for the share it overspent. Stopping cancels the task: the guest future is dropped at
//! its next yield or host call, which for a Wasm guest is the equivalent of a process without a
//! SIGTERM handler dying at once; `grace` bounds how long we wait for that before aborting it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use shoal_runtime::cri_log::{LogFile, LogStream};
use shoal_runtime::{Limits, Mount, RuntimeError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::{Prepared, WasmEngine};

/// What a guest runs with: everything of the container's configuration the engine needs.
#[derive(Clone)]
pub(crate) struct GuestSpec {
    /// `namespace/pod/container`, for tracing.
    pub id: String,
    /// argv, argv[0] included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    pub log: Arc<LogFile>,
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExitStatus {
    /// The guest's exit code; 0 is success. A trap is reported as 1 (or 137 for a kill).
    pub exit_code: i32,
    /// Kubernetes `terminated.reason`: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// Human-readable detail, e.g. the trap message.
    pub message: Option<String>,
}

/// Exit code of a guest killed by its memory limit or stopped (as SIGKILL would report).
const KILLED_EXIT_CODE: i32 = 137;

/// Store data of a preview 2 component.
pub(crate) struct P2Host {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    http: wasmtime_wasi_http::WasiHttpCtx,
    hooks: DenyOutbound,
}

impl P2Host {
    pub(crate) fn new(ctx: WasiCtx, limiter: GuestLimiter) -> P2Host {
        P2Host {
            ctx,
            table: ResourceTable::new(),
            limiter,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: DenyOutbound,
        }
    }

    pub(crate) fn limiter(&mut self) -> &mut GuestLimiter {
        &mut self.limiter
    }
}

impl wasmtime_wasi_http::WasiHttpView for P2Host {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Outbound `wasi:http` requests are refused (`HTTP-request-denied`): a pod spec has no way yet
/// to grant them, and the rule is that a guest reaches only what its spec grants. Outbound
/// `wasi:sockets` are refused the same way (see [`wasi_builder`]).
struct DenyOutbound;

impl wasmtime_wasi_http::WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Store data of a preview 1 module.
pub(crate) struct P1Host {
    pub(crate) wasi: WasiP1Ctx,
    limiter: GuestLimiter,
}

/// What a guest has used so far, shared by its task and the runtime's `container_stats`.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    /// Requests being served (HTTP containers).
    pub(crate) in_flight: AtomicU64,
    /// Whether the limiter refused a growth.
    refused: AtomicBool,
    /// Bytes of linear memory and tables.
    memory: AtomicU64,
    /// Thread CPU time of the guest's completed polls, in nanoseconds.
    cpu_done: AtomicU64,
    /// Thread CPU clock at the start of the poll under way; 0 when not being polled.
    poll_start: AtomicU64,
}

impl Usage {
    /// CPU time of the guest's completed polls.
    pub(crate) fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_done.load(Ordering::Relaxed))
    }

    pub(crate) fn memory(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    /// CPU time so far, the poll under way included. Only meaningful on the thread polling the
    /// guest (the epoch callback runs there).
    fn cpu_on_this_thread(&self) -> u64 {
        let done = self.cpu_done.load(Ordering::Relaxed);
        match self.poll_start.load(Ordering::Relaxed) {
            0 => done,
            start => done + thread_cpu_nanos().saturating_sub(start),
        }
    }
}

/// CPU time the calling thread has used, in nanoseconds.
fn thread_cpu_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// Runs a guest future and adds the thread CPU time of each of its polls to its [`Usage`]: the
/// guest's own CPU, whatever else the machine runs.
pub(crate) struct Metered<F> {
    pub(crate) inner: Pin<Box<F>>,
    pub(crate) usage: Arc<Usage>,
    /// Also charged with the CPU (the container of a per-request instance).
    pub(crate) parent: Option<Arc<Usage>>,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_nanos().max(1);
        self.usage.poll_start.store(start, Ordering::Relaxed);
        let result = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_nanos().saturating_sub(start);
        self.usage.poll_start.store(0, Ordering::Relaxed);
        self.usage.cpu_done.fetch_add(spent, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            parent.cpu_done.fetch_add(spent, Ordering::Relaxed);
        }
        result
    }
}

/// Caps linear memories plus tables (8 bytes an element) of all the container's live instances
/// together (an HTTP container runs one per request) at its memory limit, keeping the total in
/// its [`Usage`]; remembers whether it refused a growth. Dropping it (the instance's store)
/// gives its share back.
pub(crate) struct GuestLimiter {
    cap: Option<u64>,
    /// What this instance holds.
    used: u64,
    usage: Arc<Usage>,
}

impl GuestLimiter {
    pub(crate) fn new(cap: Option<u64>, usage: &Arc<Usage>) -> GuestLimiter {
        GuestLimiter {
            cap,
            used: 0,
            usage: Arc::clone(usage),
        }
    }

    fn grow(&mut self, current: u64, desired: u64, maximum: Option<u64>) -> bool {
        // wasmtime asks before checking the memory's own maximum: a growth past it fails
        // anyway and must not be counted.
        if maximum.is_some_and(|m| desired > m) {
            return false;
        }
        let delta = desired.saturating_sub(current);
        let cap = self.cap.unwrap_or(u64::MAX);
        let granted = self
            .usage
            .memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                total.checked_add(delta).filter(|t| *t <= cap)
            })
            .is_ok();
        if granted {
            self.used += delta;
        } else {
            self.usage.refused.store(true, Ordering::Relaxed);
        }
        granted
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        self.usage.memory.fetch_sub(self.used, Ordering::Relaxed);
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current as u64, desired as u64, maximum.map(|m| m as u64)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            current as u64 * 8,
            desired as u64 * 8,
            maximum.map(|m| m as u64 * 8),
        ))
    }
}

/// A guest output stream that appends every write to the container's log file.
#[derive(Clone)]
struct LogOutput {
    log: Arc<LogFile>,
    stream: LogStream,
}

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for LogOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for LogOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Checks that the volumes of a container can be opened, so that a bad mount fails its creation
/// rather than the running container.
pub(crate) fn check_mounts(mounts: &[Mount]) -> Result<(), RuntimeError> {
    let mut builder = WasiCtxBuilder::new();
    preopen(&mut builder, mounts)
}

fn preopen(builder: &mut WasiCtxBuilder, mounts: &[Mount]) -> Result<(), RuntimeError> {
    for mount in mounts {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&mount.host_path, &mount.container_path, perms)
            .map_err(|e| RuntimeError::CreateContainer {
                message: format!(
                    "cannot open volume directory {} for {}: {e:#}",
                    mount.host_path.display(),
                    mount.container_path
                ),
            })?;
    }
    Ok(())
}

pub(crate) fn wasi_builder(spec: &GuestSpec) -> Result<WasiCtxBuilder, RuntimeError> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(LogOutput {
            log: Arc::clone(&spec.log),
            stream: LogStream::Stdout,
        })
        .stderr(LogOutput {
            log: Arc::clone(&spec.log),
            stream: LogStream::Stderr,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    preopen(&mut builder, &spec.mounts)?;
    Ok(builder)
}

/// How long a guest held to `share` thousandths of a core waits after using `ran` of CPU:
/// `ran * (1000 - share) / share`, so that over any stretch CPU / wall time stays at most
/// `share / 1000`; capped at 100 ticks so that one long tick cannot stall it for long.
fn throttle_pause(ran: Duration, share: u64, tick: Duration) -> Duration {
    ran.mul_f64((1000 - share) as f64 / share as f64)
        .min(tick * 100)
}

/// Installs the limiter and the epoch callback on a fresh store.
///
/// Every tick the guest yields to its executor (so a busy loop neither starves the other guests
/// on that thread nor escapes cancellation). A guest with a CPU limit also waits out the share
/// it overspent, measured in the thread CPU time it used since the last tick (so time spent
/// waiting on a host call or preempted by the kernel is not counted against it); a guest
/// without one does nothing else.
pub(crate) fn configure_store<T: Send + 'static>(
    store: &mut Store<T>,
    limiter: fn(&mut T) -> &mut GuestLimiter,
    cpu_millis: Option<u64>,
    tick: Duration,
    usage: Arc<Usage>,
) {
    store.limiter(move |host| limiter(host) as &mut dyn ResourceLimiter);
    store.set_epoch_deadline(1);
    // Share of one core, in thousandths; at or above 1000 the guest only yields.
    let share = cpu_millis.map(|m| m.clamp(1, 1000)).filter(|m| *m < 1000);
    let mut last = 0;
    store.epoch_deadline_callback(move |_| {
        let Some(share) = share else {
            return Ok(UpdateDeadline::Yield(1));
        };
        let used = usage.cpu_on_this_thread();
        let ran = Duration::from_nanos(used.saturating_sub(last));
        last = used;
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::time::sleep(throttle_pause(ran, share, tick))),
        ))
    });
}

/// What ended a guest, before it becomes an [`ExitStatus`].
///
/// `out_of_memory` is the limit in bytes when the limiter refused a growth.
pub(crate) fn exit_status(result: wasmtime::Result<i32>, out_of_memory: Option<u64>) -> ExitStatus {
    match result {
        Ok(code) => classify(code, out_of_memory.is_some()),
        Err(error) => {
            if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                return classify(exit.0, out_of_memory.is_some());
            }
            let message = trap_message(&error);
            if let Some(limit) = out_of_memory {
                return ExitStatus {
                    exit_code: KILLED_EXIT_CODE,
                    reason: "OOMKilled".to_string(),
                    message: Some(format!(
                        "memory limit of {limit} bytes exceeded ({message})"
                    )),
                };
            }
            ExitStatus {
                exit_code: 1,
                reason: "Error".to_string(),
                message: Some(message),
            }
        }
    }
}

fn classify(code: i32, out_of_memory: bool) -> ExitStatus {
    let reason = match code {
        0 => "Completed",
        _ if out_of_memory => "OOMKilled",
        _ => "Error",
    };
    ExitStatus {
        exit_code: code,
        reason: reason.to_string(),
        message: None,
    }
}

/// The trap text plus the innermost guest function, e.g. "wasm trap: wasm `unreachable`
/// instruction executed (in testguest::main)".
fn trap_message(error: &wasmtime::Error) -> String {
    let mut message = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    if let Some(frame) = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .and_then(|bt| {
            bt.frames()
                .iter()
                .find_map(|f| f.func_name().map(str::to_string))
        })
    {
        message.push_str(&format!(" (in {frame})"));
    }
    match message.split_once('\n') {
        Some((first, _)) => format!("{first} ..."),
        None => message,
    }
}

async fn run_component(
    engine: &WasmEngine,
    command: &wasmtime_wasi::p2::bindings::CommandPre<P2Host>,
    spec: &GuestSpec,
    usage: &Arc<Usage>,
) -> Result<wasmtime::Result<i32>, RuntimeError> {
    let ctx = wasi_builder(spec)?.build();
    let mut store = Store::new(
        engine.engine(),
        P2Host::new(ctx, GuestLimiter::new(spec.limits.memory_bytes, usage)),
    );
    configure_store(
        &mut store,
        |host: &mut P2Host| &mut host.limiter,
        spec.limits.cpu_millis,
        engine.epoch_tick(),
        Arc::clone(usage),
    );
    Ok(async {
        let command = command.instantiate_async(&mut store).await?;
        let result = command.wasi_cli_run().call_run(&mut store).await?;
        Ok::<i32, wasmtime::Error>(if result.is_ok() { 0 } else { 1 })
    }
    .await)
}

async fn run_module(
    engine: &WasmEngine,
    pre: &wasmtime::InstancePre<P1Host>,
    spec: &GuestSpec,
    usage: &Arc<Usage>,
) -> Result<wasmtime::Result<i32>, RuntimeError> {
    let wasi = wasi_builder(spec)?.build_p1();
    let mut store = Store::new(
        engine.engine(),
        P1Host {
            wasi,
            limiter: GuestLimiter::new(spec.limits.memory_bytes, usage),
        },
    );
    configure_store(
        &mut store,
        |host: &mut P1Host| &mut host.limiter,
        spec.limits.cpu_millis,
        engine.epoch_tick(),
        Arc::clone(usage),
    );
    Ok(async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await?;
        Ok::<i32, wasmtime::Error>(0)
    }
    .await)
}

/// A running guest: its task on the guest executor and how to stop it.
pub(crate) struct Running {
    id: String,
    pub(crate) usage: Arc<Usage>,
    /// Set before the task is aborted, so that its [`ExitReport`] says why it ended.
    aborted: Arc<AtomicBool>,
    status: watch::Receiver<Option<ExitStatus>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Spawns the guest's task on `executor`; `on_exit` is called with its status once it ended on
/// its own or by [`Running::stop`] (not when it is aborted: [`Running::stop`] reports that). An
/// HTTP component is served on `listeners` (bound by the caller); other guests ignore them.
pub(crate) fn start(
    executor: &tokio::runtime::Handle,
    engine: &Arc<WasmEngine>,
    prepared: Arc<Prepared>,
    spec: GuestSpec,
    listeners: Vec<std::net::TcpListener>,
    on_exit: impl FnOnce(ExitStatus) + Send + 'static,
) -> Running {
    let (status_tx, status_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let id = spec.id.clone();
    let usage = Arc::new(Usage::default());
    let aborted = Arc::new(AtomicBool::new(false));
    let report = ExitReport {
        on_exit: Some(Box::new(on_exit)),
        status: status_tx,
        aborted: Arc::clone(&aborted),
    };
    let task = {
        let engine = Arc::clone(engine);
        let cancel = cancel.clone();
        let usage = Arc::clone(&usage);
        executor.spawn(async move {
            if let Prepared::Http(pre) = &*prepared {
                // A server drains on cancellation rather than dying at once.
                let served = crate::serve::serve(
                    &engine,
                    pre,
                    &spec,
                    &usage,
                    listeners,
                    cancel.clone(),
                );
                let status = Metered {
                    inner: Box::pin(served),
                    usage: Arc::clone(&usage),
                    parent: None,
                }
                .await;
                tracing::info!(container = %spec.id, exit_code = status.exit_code, reason = %status.reason, "container ended");
                drop(spec);
                report.report(status);
                return;
            }
            let run = async {
                let result = match &*prepared {
                    Prepared::Component(command) => {
                        run_component(&engine, command, &spec, &usage).await
                    }
                    Prepared::Module(pre) => run_module(&engine, pre, &spec, &usage).await,
                    Prepared::Http(_) => unreachable!("served above"),
                };
                match result {
                    Ok(result) => {
                        let out_of_memory = usage
                            .refused
                            .load(Ordering::Relaxed)
                            .then_some(spec.limits.memory_bytes.unwrap_or_default());
                        exit_status(result, out_of_memory)
                    }
                    Err(e) => ExitStatus {
                        exit_code: 128,
                        reason: "StartError".to_string(),
                        message: Some(e.to_string()),
                    },
                }
            };
            let run = Metered {
                inner: Box::pin(run),
                usage: Arc::clone(&usage),
                parent: None,
            };
            let status = tokio::select! {
                status = run => status,
                () = cancel.cancelled() => stopped_status(),
            };
            tracing::info!(container = %spec.id, exit_code = status.exit_code, reason = %status.reason, "container ended");
            // The log is flushed (its last partial line written) before anyone hears of the end.
            drop(spec);
            report.report(status);
        })
    };
    tracing::debug!(container = %id, "container started");
    Running {
        id,
        usage,
        aborted,
        status: status_rx,
        cancel,
        task,
    }
}

pub(crate) fn stopped_status() -> ExitStatus {
    ExitStatus {
        exit_code: KILLED_EXIT_CODE,
        reason: "Error".to_string(),
        message: Some("stopped".to_string()),
    }
}

/// Reports how a guest's task ended exactly once: with the status it reached, or, when the task
/// is dropped without reaching one (aborted after the grace period, or a panic in the host),
/// with a status that says so. Without it a panicked task would leave its container running
/// forever.
struct ExitReport {
    on_exit: Option<Box<dyn FnOnce(ExitStatus) + Send>>,
    status: watch::Sender<Option<ExitStatus>>,
    aborted: Arc<AtomicBool>,
}

impl ExitReport {
    fn report(mut self, status: ExitStatus) {
        self.send(status);
    }

    fn send(&mut self, status: ExitStatus) {
        if let Some(on_exit) = self.on_exit.take() {
            on_exit(status.clone());
            let _ = self.status.send(Some(status));
        }
    }
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        let message = if self.aborted.load(Ordering::Relaxed) {
            "killed: did not stop within its grace period"
        } else {
            "the container's task ended unexpectedly (a panic in the host)"
        };
        self.send(ExitStatus {
            exit_code: KILLED_EXIT_CODE,
            reason: "Error".to_string(),
            message: Some(message.to_string()),
        });
    }
}

impl Running {
    async fn wait(&mut self) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.status.borrow_and_update().clone() {
                return Some(status);
            }
            if self.status.changed().await.is_err() {
                // The task ended without reporting (panicked or aborted).
                return self.status.borrow().clone();
            }
        }
    }

    /// Cancels the guest and waits at most `grace` for it to end, then aborts its task.
    /// Returns the status when the task did not report one itself (it vanished without its
    /// report, which [`ExitReport`] should make impossible).
    pub(crate) async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        self.cancel.cancel();
        // A zero grace period still lets the cancellation land at the guest's next tick.
        let wait = grace.max(Duration::from_millis(100));
        match tokio::time::timeout(wait, self.wait()).await {
            Ok(Some(_)) => None,
            Ok(None) => Some(ExitStatus {
                exit_code: KILLED_EXIT_CODE,
                reason: "Error".to_string(),
                message: Some("container task ended unexpectedly".to_string()),
            }),
            Err(_) => {
                if !grace.is_zero() {
                    tracing::warn!(container = %self.id, "container did not stop within its grace period, aborting it");
                }
                self.aborted.store(true, Ordering::Relaxed);
                self.task.abort();
                match tokio::time::timeout(Duration::from_millis(500), self.wait()).await {
                    Ok(Some(_)) => None,
                    _ => Some(ExitStatus {
                        exit_code: KILLED_EXIT_CODE,
                        reason: "Error".to_string(),
                        message: Some("killed: did not stop within its grace period".to_string()),
                    }),
                }
            }
        }
    }

    /// Kills the guest without waiting.
    pub(crate) fn kill(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_of_every_instance() {
        let usage = Arc::new(Usage::default());
        let mut a = GuestLimiter::new(Some(100), &usage);
        let mut b = GuestLimiter::new(Some(100), &usage);
        assert!(a.grow(0, 60, None));
        assert!(b.grow(0, 40, None));
        assert_eq!(usage.memory(), 100);
        assert!(!usage.refused.load(Ordering::Relaxed));
        assert!(!b.grow(40, 41, None));
        assert!(usage.refused.load(Ordering::Relaxed));
        assert_eq!(usage.memory(), 100);
        // An instance that ends gives its memory back to the others.
        drop(a);
        assert_eq!(usage.memory(), 40);
        // A growth past the memory's own maximum fails without being counted.
        assert!(!b.grow(40, 90, Some(80)));
        assert_eq!(usage.memory(), 40);
        assert!(b.grow(40, 100, None));
        assert_eq!(usage.memory(), 100);
        drop(b);
        assert_eq!(usage.memory(), 0);
        // No cap: no overflow either.
        let mut c = GuestLimiter::new(None, &usage);
        assert!(c.grow(0, u64::MAX, None));
        assert!(!c.grow(0, 1, None));
    }

    #[test]
    fn throttling_holds_the_share() {
        let tick = Duration::from_millis(10);
        // A fifth of a core: 10 ms of CPU costs 40 ms of waiting, so CPU / wall is 1/5.
        assert_eq!(
            throttle_pause(Duration::from_millis(10), 200, tick),
            Duration::from_millis(40)
        );
        assert_eq!(
            throttle_pause(Duration::from_millis(10), 500, tick),
            Duration::from_millis(10)
        );
        assert_eq!(throttle_pause(Duration::ZERO, 200, tick), Duration::ZERO);
        // One very long stretch waits at most 100 ticks.
        assert_eq!(throttle_pause(Duration::from_secs(5), 1, tick), tick * 100);
    }

    #[test]
    fn polls_are_metered_in_thread_cpu_time() {
        let usage = Arc::new(Usage::default());
        let mut busy = Metered {
            inner: Box::pin(async {
                let mut x = 0u64;
                for i in 0..20_000_000u64 {
                    x = std::hint::black_box(x.wrapping_add(i));
                }
                x
            }),
            usage: Arc::clone(&usage),
            parent: None,
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut busy).poll(&mut cx).is_ready());
        assert!(usage.cpu() > Duration::ZERO);
        assert_eq!(usage.poll_start.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn exit_codes_become_reasons() {
        assert_eq!(classify(0, false).reason, "Completed");
        assert_eq!(classify(3, false).reason, "Error");
        assert_eq!(classify(1, true).reason, "OOMKilled");
        assert_eq!(classify(0, true).reason, "Completed");
    }
}
