//! Running one container: WASI context, limits, log streams and the task that owns the guest.
//!
//! Each container is a tokio task owning its `Store`. The guest sees its argv, its environment
//! and its preopened mounts, nothing else: stdin is empty, stdout/stderr go to the container's
//! [`LogSink`], sockets and name lookup are denied. Every epoch tick the guest yields to the
//! executor (so a busy loop neither starves other tasks nor escapes cancellation) and, with a CPU
//! limit, sleeps for the share it overspent. Stopping cancels the task: the guest future is
//! dropped at its next yield or host call, which for a Wasm guest is the equivalent of a
//! process without a SIGTERM handler dying at once; `grace` bounds how long we wait for that
//! before aborting the task.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use shoal_runtime::{Container, ContainerSpec, ExitStatus, LogSink, LogStream, RuntimeError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::engine::{Prepared, WasmEngine};

/// Exit code of a guest killed by its memory limit or stopped (as SIGKILL would report).
const KILLED_EXIT_CODE: i32 = 137;

/// Store data of a preview 2 component.
pub(crate) struct P2Host {
    ctx: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
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

/// Caps linear memories plus tables (8 bytes an element) at the container's memory limit and
/// remembers whether it refused a growth.
struct GuestLimiter {
    cap: Option<u64>,
    used: u64,
    refused: Arc<AtomicBool>,
}

impl GuestLimiter {
    fn grow(&mut self, current: u64, desired: u64) -> bool {
        let next = self.used.saturating_sub(current).saturating_add(desired);
        match self.cap {
            Some(cap) if next > cap => {
                self.refused.store(true, Ordering::Relaxed);
                false
            }
            _ => {
                self.used = next;
                true
            }
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current as u64, desired as u64))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current as u64 * 8, desired as u64 * 8))
    }
}

/// A guest output stream that hands every write to the container's log sink.
#[derive(Clone)]
struct LogOutput {
    sink: LogSink,
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
        if !bytes.is_empty() {
            (self.sink)(self.stream, bytes);
        }
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
        if !buf.is_empty() {
            (self.sink)(self.stream, Bytes::copy_from_slice(buf));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn wasi_builder(spec: &ContainerSpec) -> Result<WasiCtxBuilder, RuntimeError> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(LogOutput {
            sink: Arc::clone(&spec.logs),
            stream: LogStream::Stdout,
        })
        .stderr(LogOutput {
            sink: Arc::clone(&spec.logs),
            stream: LogStream::Stderr,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for mount in &spec.mounts {
        let perms = if mount.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&mount.host_path, &mount.container_path, perms)
            .map_err(|e| RuntimeError::StartContainer {
                message: format!(
                    "cannot open volume directory {} for {}: {e:#}",
                    mount.host_path.display(),
                    mount.container_path
                ),
            })?;
    }
    Ok(builder)
}

/// Installs the limiter and the epoch callback on a fresh store.
fn configure_store<T: Send + 'static>(
    store: &mut Store<T>,
    limiter: fn(&mut T) -> &mut GuestLimiter,
    cpu_millis: Option<u64>,
    tick: Duration,
) {
    store.limiter(move |host| limiter(host) as &mut dyn ResourceLimiter);
    store.set_epoch_deadline(1);
    // Share of one core, in thousandths; at or above 1000 the guest only yields.
    let share = cpu_millis.map(|m| m.clamp(1, 1000)).filter(|m| *m < 1000);
    let mut last = Instant::now();
    store.epoch_deadline_callback(move |_| {
        let now = Instant::now();
        let Some(share) = share else {
            return Ok(UpdateDeadline::Yield(1));
        };
        // The guest ran for `ran` since it last resumed; to hold `share`, it now waits
        // `ran * (1000 - share) / share`, capped so one long tick cannot stall it for long.
        // A guest back from a long host call (a sleep) did not run all that time: count at most
        // two ticks.
        let ran = now.duration_since(last).min(tick * 2);
        let pause = ran
            .mul_f64((1000 - share) as f64 / share as f64)
            .min(tick * 100);
        last = now + pause;
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::time::sleep(pause)),
        ))
    });
}

/// What ended a guest, before it becomes an [`ExitStatus`].
///
/// `out_of_memory` is the limit in bytes when the limiter refused a growth.
fn exit_status(result: wasmtime::Result<i32>, out_of_memory: Option<u64>) -> ExitStatus {
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
    spec: &ContainerSpec,
    refused: Arc<AtomicBool>,
) -> Result<wasmtime::Result<i32>, RuntimeError> {
    let ctx = wasi_builder(spec)?.build();
    let mut store = Store::new(
        engine.engine(),
        P2Host {
            ctx,
            table: ResourceTable::new(),
            limiter: GuestLimiter {
                cap: spec.limits.memory_bytes,
                used: 0,
                refused,
            },
        },
    );
    configure_store(
        &mut store,
        |host: &mut P2Host| &mut host.limiter,
        spec.limits.cpu_millis,
        engine.epoch_tick(),
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
    spec: &ContainerSpec,
    refused: Arc<AtomicBool>,
) -> Result<wasmtime::Result<i32>, RuntimeError> {
    let wasi = wasi_builder(spec)?.build_p1();
    let mut store = Store::new(
        engine.engine(),
        P1Host {
            wasi,
            limiter: GuestLimiter {
                cap: spec.limits.memory_bytes,
                used: 0,
                refused,
            },
        },
    );
    configure_store(
        &mut store,
        |host: &mut P1Host| &mut host.limiter,
        spec.limits.cpu_millis,
        engine.epoch_tick(),
    );
    Ok(async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await?;
        Ok::<i32, wasmtime::Error>(0)
    }
    .await)
}

/// A container started by [`start`].
pub(crate) struct WasmContainer {
    id: String,
    status: watch::Receiver<Option<ExitStatus>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Spawns the container's task. Fails only if its volumes cannot be opened.
pub(crate) fn start(
    engine: &Arc<WasmEngine>,
    prepared: Arc<Prepared>,
    spec: ContainerSpec,
) -> Result<WasmContainer, RuntimeError> {
    // Open the volumes up front so a bad mount fails `start` rather than the running container.
    wasi_builder(&spec)?;
    let (status_tx, status_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let id = spec.id.clone();
    let task = {
        let engine = Arc::clone(engine);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let refused = Arc::new(AtomicBool::new(false));
            let run = async {
                let result = match &*prepared {
                    Prepared::Component(command) => {
                        run_component(&engine, command, &spec, Arc::clone(&refused)).await
                    }
                    Prepared::Module(pre) => {
                        run_module(&engine, pre, &spec, Arc::clone(&refused)).await
                    }
                };
                match result {
                    Ok(result) => {
                        let out_of_memory = refused
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
            let status = tokio::select! {
                status = run => status,
                () = cancel.cancelled() => stopped_status(),
            };
            tracing::info!(container = %spec.id, exit_code = status.exit_code, reason = %status.reason, "container ended");
            let _ = status_tx.send(Some(status));
        })
    };
    tracing::debug!(container = %id, "container started");
    Ok(WasmContainer {
        id,
        status: status_rx,
        cancel,
        task,
    })
}

fn stopped_status() -> ExitStatus {
    ExitStatus {
        exit_code: KILLED_EXIT_CODE,
        reason: "Error".to_string(),
        message: Some("stopped".to_string()),
    }
}

#[async_trait]
impl Container for WasmContainer {
    async fn wait(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.status.borrow_and_update().clone() {
                return status;
            }
            if self.status.changed().await.is_err() {
                // The task ended without reporting (panicked or aborted).
                return self.status.borrow().clone().unwrap_or_else(|| ExitStatus {
                    exit_code: KILLED_EXIT_CODE,
                    reason: "Error".to_string(),
                    message: Some("container task ended unexpectedly".to_string()),
                });
            }
        }
    }

    async fn stop(&mut self, grace: Duration) -> ExitStatus {
        self.cancel.cancel();
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(container = %self.id, "container did not stop within its grace period, aborting it");
                self.task.abort();
                let _ = tokio::time::timeout(Duration::from_millis(500), self.wait()).await;
                self.status.borrow().clone().unwrap_or_else(stopped_status)
            }
        }
    }
}

impl Drop for WasmContainer {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_of_growths() {
        let refused = Arc::new(AtomicBool::new(false));
        let mut limiter = GuestLimiter {
            cap: Some(100),
            used: 0,
            refused: Arc::clone(&refused),
        };
        assert!(limiter.grow(0, 60));
        assert!(limiter.grow(0, 40));
        assert!(!refused.load(Ordering::Relaxed));
        assert!(!limiter.grow(60, 61));
        assert!(refused.load(Ordering::Relaxed));
        assert!(limiter.grow(40, 0));
        assert!(limiter.grow(60, 100));
    }

    #[test]
    fn exit_codes_become_reasons() {
        assert_eq!(classify(0, false).reason, "Completed");
        assert_eq!(classify(3, false).reason, "Error");
        assert_eq!(classify(1, true).reason, "OOMKilled");
        assert_eq!(classify(0, true).reason, "Completed");
    }
}
