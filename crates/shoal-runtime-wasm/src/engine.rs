//! The wasmtime engine, its epoch ticker and the compile cache.
//!
//! One [`wasmtime::Engine`] per runtime, configured for epoch interruption; a dedicated thread
//! increments its epoch every tick (a thread, not a tokio task, so that ticks keep coming while
//! guests occupy every worker). Each artifact (keyed by its layer digest) is compiled at most once
//! per engine build: the serialized artifact is kept under `data_dir/compiled` named by digest and
//! engine compatibility hash, and the pre-instantiated form ([`Prepared`]) is kept in memory so a
//! start only instantiates. Whether a binary is a component or a core module is read from its
//! header. This module does not run guests (see `run`).
//!
//! Deserializing a compiled artifact trusts it as native code, so the cache directory is created
//! private (mode 0700), each `.cwasm` is written with a `.cwasm.sha256` sidecar holding its
//! SHA-256, and an artifact is deserialized only from the bytes whose hash matched that sidecar;
//! a missing or mismatched sidecar means recompiling. A layer blob is checked against its digest
//! before it is compiled.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Module};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::Error;
use crate::run::{P1Host, P2Host};

/// The wasmtime release this crate is built with (pinned in the workspace `Cargo.toml`).
pub(crate) const WASMTIME_VERSION: &str = "48.0.8";

/// Name of the guest executor's worker threads.
pub(crate) const GUEST_THREAD_NAME: &str = "shoal-guest";

/// Scheduling priority (nice) of the guest threads: below the control plane's, so guests that
/// busy-loop on every core still leave the apiserver, the store and the agent their CPU.
const GUEST_NICE: i32 = 10;

/// The executor every guest runs on: one worker thread per core, niced.
pub(crate) fn guest_executor() -> Result<tokio::runtime::Runtime, Error> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name(GUEST_THREAD_NAME)
        .enable_all()
        .on_thread_start(|| {
            let tid = rustix::thread::gettid();
            if let Err(error) = rustix::process::setpriority_process(Some(tid), GUEST_NICE) {
                tracing::warn!(%error, "cannot lower the priority of a guest thread");
            }
        })
        .build()
        .map_err(|e| Error::Engine(format!("cannot start the guest executor: {e}")))
}

const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Whether `bytes` is a component (header layer byte 1) rather than a core module.
pub(crate) fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == WASM_MAGIC && bytes[6] == 1
}

/// A compiled, pre-instantiated artifact.
pub(crate) enum Prepared {
    /// A WASI preview 2 command component.
    Component(CommandPre<P2Host>),
    /// A `wasi:http/proxy` component: served per request on the container's ports.
    Http(ProxyPre<P2Host>),
    /// A WASI preview 1 core module.
    Module(wasmtime::InstancePre<P1Host>),
}

pub(crate) struct WasmEngine {
    engine: Engine,
    cache_dir: PathBuf,
    engine_key: String,
    p1_linker: wasmtime::Linker<P1Host>,
    p2_linker: wasmtime::component::Linker<P2Host>,
    prepared: Mutex<HashMap<String, Arc<Prepared>>>,
    /// Serializes compiles: compiling is CPU bound, and two starts of one new digest must not
    /// compile it twice.
    compile_lock: tokio::sync::Mutex<()>,
    compiles: AtomicU64,
    ticker_stop: Arc<AtomicBool>,
    epoch_tick: Duration,
}

impl WasmEngine {
    pub(crate) fn new(cache_dir: &Path, epoch_tick: Duration) -> Result<Self, Error> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = format!("{:016x}", hasher.finish());

        let mut p1_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |host: &mut P1Host| &mut host.wasi)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut p2_linker)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;

        create_private_dir(cache_dir).map_err(|source| Error::Io {
            path: cache_dir.to_path_buf(),
            source,
        })?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = Arc::clone(&ticker_stop);
            std::thread::Builder::new()
                .name("shoal-wasm-epoch".to_string())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(epoch_tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| Error::Engine(format!("cannot start the epoch ticker: {e}")))?;
        }

        Ok(WasmEngine {
            engine,
            cache_dir: cache_dir.to_path_buf(),
            engine_key,
            p1_linker,
            p2_linker,
            prepared: Mutex::new(HashMap::new()),
            compile_lock: tokio::sync::Mutex::new(()),
            compiles: AtomicU64::new(0),
            ticker_stop,
            epoch_tick,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn epoch_tick(&self) -> Duration {
        self.epoch_tick
    }

    pub(crate) fn compile_count(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    pub(crate) fn compiled_path(&self, layer_digest: &str) -> PathBuf {
        let hex = layer_digest.strip_prefix("sha256:").unwrap_or(layer_digest);
        self.cache_dir
            .join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    fn cached(&self, layer_digest: &str) -> Option<Arc<Prepared>> {
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(layer_digest)
            .cloned()
    }

    /// The pre-instantiated artifact of a layer: from memory, else from the on-disk cache, else
    /// compiled from `blob` (and cached). Errors are messages for `CreateContainer`.
    pub(crate) async fn prepare(
        self: &Arc<Self>,
        layer_digest: &str,
        blob: &Path,
    ) -> Result<Arc<Prepared>, String> {
        if let Some(prepared) = self.cached(layer_digest) {
            return Ok(prepared);
        }
        let _compiling = self.compile_lock.lock().await;
        if let Some(prepared) = self.cached(layer_digest) {
            return Ok(prepared);
        }
        let this = Arc::clone(self);
        let digest = layer_digest.to_string();
        let blob = blob.to_path_buf();
        let prepared = tokio::task::spawn_blocking(move || this.load_or_compile(&digest, &blob))
            .await
            .map_err(|e| format!("compile task failed: {e}"))??;
        let prepared = Arc::new(prepared);
        self.prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(layer_digest.to_string(), Arc::clone(&prepared));
        Ok(prepared)
    }

    fn load_or_compile(&self, layer_digest: &str, blob: &Path) -> Result<Prepared, String> {
        let compiled = self.compiled_path(layer_digest);
        if compiled.is_file() {
            match self.load_compiled(&compiled) {
                Ok(prepared) => {
                    tracing::debug!(layer = %layer_digest, "loaded compiled artifact from cache");
                    return Ok(prepared);
                }
                Err(e) => {
                    tracing::warn!(layer = %layer_digest, error = %e, "discarding unusable compiled artifact");
                    let _ = std::fs::remove_file(&compiled);
                    let _ = std::fs::remove_file(checksum_path(&compiled));
                }
            }
        }
        let bytes = std::fs::read(blob).map_err(|e| format!("cannot read layer: {e}"))?;
        if let Some(hex) = layer_digest.strip_prefix("sha256:")
            && !hex.eq_ignore_ascii_case(&hex::encode(Sha256::digest(&bytes)))
        {
            // Removed so that the next pull fetches it again.
            let _ = std::fs::remove_file(blob);
            return Err(format!(
                "the stored layer does not match its digest {layer_digest}: pull the image again"
            ));
        }
        if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
            return Err("the layer does not start with the WebAssembly magic bytes".to_string());
        }
        let started = std::time::Instant::now();
        let (serialized, prepared) = if is_component(&bytes) {
            let component = Component::new(&self.engine, &bytes).map_err(|e| format!("{e:#}"))?;
            let serialized = component.serialize().map_err(|e| format!("{e:#}"))?;
            (serialized, self.prepare_component(&component)?)
        } else {
            let module = Module::new(&self.engine, &bytes).map_err(|e| format!("{e:#}"))?;
            let serialized = module.serialize().map_err(|e| format!("{e:#}"))?;
            (serialized, self.prepare_module(&module)?)
        };
        self.compiles.fetch_add(1, Ordering::Relaxed);
        tracing::info!(layer = %layer_digest, elapsed_ms = started.elapsed().as_millis() as u64, "compiled wasm artifact");
        if let Err(e) = write_compiled(&compiled, &serialized) {
            tracing::warn!(layer = %layer_digest, error = %e, "cannot cache compiled artifact");
        }
        Ok(prepared)
    }

    fn load_compiled(&self, path: &Path) -> Result<Prepared, String> {
        let bytes = read_verified(path)?;
        match Engine::detect_precompiled(&bytes) {
            Some(wasmtime::Precompiled::Component) => {
                let component = deserialize_component(&self.engine, &bytes)?;
                self.prepare_component(&component)
            }
            Some(wasmtime::Precompiled::Module) => {
                let module = deserialize_module(&self.engine, &bytes)?;
                self.prepare_module(&module)
            }
            None => Err("not a precompiled artifact".to_string()),
        }
    }

    fn prepare_component(&self, component: &Component) -> Result<Prepared, String> {
        let pre = self.p2_linker.instantiate_pre(component).map_err(|e| {
            format!("component imports something this host does not provide: {e:#}")
        })?;
        let command = match CommandPre::new(pre.clone()) {
            Ok(command) => return Ok(Prepared::Component(command)),
            Err(e) => e,
        };
        match ProxyPre::new(pre) {
            Ok(proxy) => Ok(Prepared::Http(proxy)),
            Err(http) => Err(format!(
                "component exports neither wasi:cli/run ({command:#}) nor \
                 wasi:http/incoming-handler ({http:#})"
            )),
        }
    }

    fn prepare_module(&self, module: &Module) -> Result<Prepared, String> {
        if module.get_export("_start").is_none() {
            return Err("core module has no _start export (not a WASI command)".to_string());
        }
        let pre = self
            .p1_linker
            .instantiate_pre(module)
            .map_err(|e| format!("module imports something this host does not provide: {e:#}"))?;
        Ok(Prepared::Module(pre))
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Creates `dir` (and missing parents) readable and writable by this user only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        // An existing directory keeps its mode through `create`: tighten it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    builder.create(dir)
}

/// Where the SHA-256 of a compiled artifact is recorded: `<file>.sha256`.
pub(crate) fn checksum_path(compiled: &Path) -> PathBuf {
    let mut name = compiled.as_os_str().to_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Writes a compiled artifact, then the sidecar with its SHA-256 (so a crash in between leaves
/// an artifact without a sidecar, which is recompiled).
fn write_compiled(path: &Path, serialized: &[u8]) -> Result<(), Error> {
    let sidecar = checksum_path(path);
    match std::fs::remove_file(&sidecar) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: sidecar,
                source,
            });
        }
    }
    crate::images::write_atomic(path, serialized)?;
    crate::images::write_atomic(&sidecar, hex::encode(Sha256::digest(serialized)).as_bytes())
}

/// The bytes of a compiled artifact, provided they hash to what its sidecar records.
fn read_verified(path: &Path) -> Result<Vec<u8>, String> {
    let sidecar = checksum_path(path);
    let expected = std::fs::read_to_string(&sidecar)
        .map_err(|e| format!("no checksum for the compiled artifact ({e})"))?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !expected.trim().eq_ignore_ascii_case(&actual) {
        return Err(format!(
            "compiled artifact hashes to {actual}, its checksum file says {}",
            expected.trim()
        ));
    }
    Ok(bytes)
}

/// Loads a component serialized by [`WasmEngine::load_or_compile`].
#[allow(unsafe_code)]
fn deserialize_component(engine: &Engine, bytes: &[u8]) -> Result<Component, String> {
    // SAFETY: `bytes` were read from our own private (0700) `data_dir/compiled`, from a file named
    // by the artifact's digest and this engine's compatibility hash that only `load_or_compile`
    // writes, from `Component::serialize` of this engine configuration; they hash to the SHA-256
    // recorded beside the file when it was written (`read_verified`), so they are that output
    // unaltered. wasmtime checks the header for version and configuration compatibility besides.
    unsafe { Component::deserialize(engine, bytes) }.map_err(|e| format!("{e:#}"))
}

/// Loads a core module serialized by [`WasmEngine::load_or_compile`].
#[allow(unsafe_code)]
fn deserialize_module(engine: &Engine, bytes: &[u8]) -> Result<Module, String> {
    // SAFETY: as for `deserialize_component`: `bytes` are our own `Module::serialize` output from
    // the private `data_dir/compiled`, verified against the SHA-256 recorded when it was written.
    unsafe { Module::deserialize(engine, bytes) }.map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_distinguishes_components_from_modules() {
        assert!(is_component(b"\0asm\x0d\x00\x01\x00"));
        assert!(!is_component(b"\0asm\x01\x00\x00\x00"));
        assert!(!is_component(b"not wasm"));
        assert!(!is_component(b"\0as"));
    }

    #[test]
    fn compiled_artifacts_are_read_only_when_their_checksum_matches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("abc-0123.cwasm");
        write_compiled(&path, b"compiled bytes").expect("write");
        assert_eq!(
            checksum_path(&path),
            dir.path().join("abc-0123.cwasm.sha256")
        );
        assert_eq!(read_verified(&path).expect("verified"), b"compiled bytes");

        std::fs::write(&path, b"tampered bytes").expect("tamper");
        let error = read_verified(&path).expect_err("a tampered artifact is refused");
        assert!(error.contains("checksum"), "{error}");

        std::fs::remove_file(checksum_path(&path)).expect("remove sidecar");
        let error = read_verified(&path).expect_err("an artifact without checksum is refused");
        assert!(error.contains("no checksum"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn the_compile_cache_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = dir.path().join("compiled");
        std::fs::create_dir(&cache).expect("mkdir");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&cache).expect("private");
        let mode = std::fs::metadata(&cache)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        let fresh = dir.path().join("a").join("b");
        create_private_dir(&fresh).expect("create");
        let mode = std::fs::metadata(&fresh)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
