//! wasmtime behind [`shoal_runtime::Runtime`]: the node agent's in-process Wasm runtime.
//!
//! It implements the CRI-shaped interface as containerd does for the kubelet: pod sandboxes and
//! the containers in them are kept in memory (`sandboxes`), with their status, their CRI log file
//! (written by the guest's own thread) and an event on each transition. They live as long as the
//! `WasmRuntime` value: an agent that restarts within the same process (tests, a future
//! supervisor) finds and adopts them; after the process ends there is nothing left to list, and
//! the agent resumes its pods from their recorded status.
//!
//! This crate owns pulling Wasm OCI artifacts ([`oci`]) into an on-disk image store under
//! [`WasmRuntimeConfig::data_dir`], compiling each artifact once per digest and engine version
//! (serialized artifacts on disk, pre-instantiated ones in memory), and running WASI preview 2
//! command components and preview 1 core modules with the container's argv, environment and
//! preopened mounts and nothing else of the host (no inherited stdio or environment, no
//! network). Memory limits are enforced with a `ResourceLimiter`, stop and CPU share with epoch
//! interruption driven by one engine-wide ticker.
//!
//! Exit codes: a preview 1 `proc_exit(n)` reports `n`; a preview 2 `wasi:cli/exit.exit` reports 0
//! or 1 (WASI 0.2 carries only ok/err), `exit-with-code(n)` reports `n`. A trap reports 1 with
//! the trap text as message; a guest killed by its memory limit reports 137 `OOMKilled`; a
//! stopped guest reports 137.
//!
//! Stopping: a Wasm guest has no SIGTERM to catch, so `stop` cancels it at once (at its next
//! epoch tick or host call, like a process without a SIGTERM handler); `grace` only bounds how
//! long `stop` waits for that before aborting the container's task.
//!
//! `wasi:http/proxy` components are served per request on their container's ports (`serve`),
//! at the sandbox's address from the node's pod range and on its host ports. wasmtime types
//! never cross its public API.

mod engine;
mod images;
pub mod oci;
mod run;
mod sandboxes;
mod serve;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use shoal_runtime::{
    AuthConfig, ContainerConfig, ContainerEvent, ContainerFilter, ContainerStats, ContainerStatus,
    Image, ImageService, PodSandboxConfig, PodSandboxFilter, PodSandboxStatus, Runtime,
    RuntimeError, RuntimeService, cri_log,
};

pub use oci::push;

/// Errors of this crate outside the [`Runtime`] trait (setup, push).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image reference is malformed.
    #[error("invalid image reference {reference:?}: {message}")]
    InvalidReference { reference: String, message: String },
    /// The registry refused or could not be reached.
    #[error("registry error for {reference:?}: {message}")]
    Registry { reference: String, message: String },
    /// The data directory could not be read or written.
    #[error("data directory {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The Wasm engine could not be set up.
    #[error("wasm engine setup failed: {0}")]
    Engine(String),
}

/// Default cap on one image layer, as downloaded and as decompressed (256 MiB).
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 256 << 20;

/// Configuration of [`WasmRuntime`].
#[derive(Debug, Clone)]
pub struct WasmRuntimeConfig {
    /// Root of the image store and the compile cache; created if missing.
    pub data_dir: PathBuf,
    /// Interval of the engine-wide epoch ticker: the granularity of stop and CPU throttling.
    pub epoch_tick: std::time::Duration,
    /// Largest image layer pulled, compressed or decompressed; a larger one fails the pull
    /// (held in memory while pulled, so this bounds the agent's memory per pull).
    pub max_layer_bytes: u64,
    /// Registries (`host:port`) spoken to over plain HTTP besides those on the loopback, as
    /// Docker's `insecure-registries`.
    pub insecure_registries: Vec<String>,
    /// The node's pod range (network, prefix length): each sandbox gets an address from it,
    /// where its HTTP components are served. `None`: sandboxes have no address of their own.
    pub pod_cidr: Option<(std::net::Ipv4Addr, u8)>,
    /// Where a `hostPort` without a `hostIP` is bound: the node's addresses. Empty: every
    /// address (`0.0.0.0`), which on Linux conflicts with a pod listening on the same port at
    /// its own local address, so set it whenever `pod_cidr` is.
    pub node_ips: Vec<std::net::IpAddr>,
}

/// Parses `A.B.C.D/N` (IPv4) for [`WasmRuntimeConfig::pod_cidr`].
pub fn parse_cidr(cidr: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (ip, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not an IPv4 CIDR (A.B.C.D/N)"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|e| format!("{cidr:?} is not an IPv4 CIDR: {e}"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| format!("{cidr:?}: the prefix length must be between 8 and 30"))?;
    Ok((ip, prefix))
}

impl WasmRuntimeConfig {
    /// A configuration with a 10 ms epoch tick and layers of at most
    /// [`DEFAULT_MAX_LAYER_BYTES`].
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        WasmRuntimeConfig {
            data_dir: data_dir.into(),
            epoch_tick: std::time::Duration::from_millis(10),
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            insecure_registries: Vec::new(),
            pod_cidr: None,
            node_ips: Vec::new(),
        }
    }
}

/// The wasmtime runtime (RuntimeClass handler `wasmtime`). Share it behind an `Arc`.
///
/// Owns one epoch-ticker thread and the guest executor: a tokio runtime of its own whose worker
/// threads (one per core, at a lower scheduling priority) run every guest, so guests never
/// occupy the threads of the apiserver, the store or the agent. Dropping the runtime kills its
/// guests. Its async methods must run inside a tokio runtime.
pub struct WasmRuntime {
    images: Arc<images::ImageStore>,
    engine: Arc<engine::WasmEngine>,
    max_layer_bytes: u64,
    insecure_registries: Arc<[String]>,
    pods: sandboxes::Sandboxes,
    guests: Option<tokio::runtime::Runtime>,
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.pods.kill_all();
        if let Some(guests) = self.guests.take() {
            // Not `drop`: that blocks, which a runtime dropped inside async code must not do.
            guests.shutdown_background();
        }
    }
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("data_dir", &self.images.root())
            .finish_non_exhaustive()
    }
}

impl WasmRuntime {
    /// Opens (or creates) the image store and compile cache under `config.data_dir` and starts
    /// the epoch ticker.
    pub fn new(config: WasmRuntimeConfig) -> Result<Self, Error> {
        let images = Arc::new(images::ImageStore::open(&config.data_dir)?);
        let engine = Arc::new(engine::WasmEngine::new(
            &config.data_dir.join("compiled"),
            config.epoch_tick,
        )?);
        let guests = engine::guest_executor()?;
        Ok(WasmRuntime {
            images,
            engine,
            max_layer_bytes: config.max_layer_bytes,
            insecure_registries: config.insecure_registries.into(),
            pods: sandboxes::Sandboxes::new(
                config
                    .pod_cidr
                    .map(|(network, prefix)| sandboxes::IpPool::new(network, prefix)),
                config.node_ips.clone(),
            ),
            guests: Some(guests),
        })
    }

    fn executor(&self) -> tokio::runtime::Handle {
        self.guests
            .as_ref()
            .expect("the guest executor lives as long as the runtime")
            .handle()
            .clone()
    }

    /// How many artifacts this runtime compiled from Wasm (cache misses), for tests and metrics.
    pub fn compile_count(&self) -> u64 {
        self.engine.compile_count()
    }

    /// Where the serialized compiled artifact of a layer digest (`sha256:...`) is cached.
    pub fn compiled_path(&self, layer_digest: &str) -> PathBuf {
        self.engine.compiled_path(layer_digest)
    }

    /// The layer (Wasm binary) digest an `image_id` resolved to, if it was pulled.
    pub fn layer_digest(&self, image_id: &str) -> Option<String> {
        self.images.layer_for_image_id(image_id)
    }

    /// Threads of the guest executor, for tests that check guests stay off other threads.
    pub fn guest_thread_prefix() -> &'static str {
        engine::GUEST_THREAD_NAME
    }
}

#[async_trait]
impl ImageService for WasmRuntime {
    async fn pull_image(
        &self,
        image: &str,
        _auth: Option<&AuthConfig>,
    ) -> Result<String, RuntimeError> {
        let reference = oci::parse_reference(image).map_err(|e| match e {
            Error::InvalidReference { message, .. } => RuntimeError::InvalidImageName {
                image: image.to_string(),
                message,
            },
            other => RuntimeError::InvalidImageName {
                image: image.to_string(),
                message: other.to_string(),
            },
        })?;
        let pulled = oci::pull(&reference, self.max_layer_bytes, &self.insecure_registries)
            .await
            .map_err(|e| match e {
                oci::PullError::Registry(message) => RuntimeError::ImagePull {
                    image: image.to_string(),
                    message,
                },
                oci::PullError::Layout(message) => RuntimeError::CreateContainer {
                    message: format!("image {image:?} cannot run here: {message}"),
                },
            })?;
        // Storing writes and fsyncs the blob: blocking work.
        let images = Arc::clone(&self.images);
        let (image_id, pulled) = tokio::task::spawn_blocking(move || {
            images
                .store(&reference, &pulled)
                .map(|image_id| (image_id, pulled))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|stored| stored.map_err(|e| e.to_string()))
        .map_err(|message| RuntimeError::ImagePull {
            image: image.to_string(),
            message,
        })?;
        tracing::info!(image, %image_id, layer = %pulled.layer_digest, "pulled image");
        // Compile now so the first start is fast; a failure is reported again at create.
        let blob = self.images.blob_path(&pulled.layer_digest);
        if let Err(message) = self.engine.prepare(&pulled.layer_digest, &blob).await {
            tracing::warn!(image, %message, "pulled image does not compile");
        }
        Ok(image_id)
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>, RuntimeError> {
        let Some(stored) = self.lookup(image) else {
            return Ok(None);
        };
        // The first look at a blob in this process hashes it: off the async workers.
        let images = Arc::clone(&self.images);
        let layer = stored.layer_digest.clone();
        let intact = tokio::task::spawn_blocking(move || images.blob_intact(&layer))
            .await
            .unwrap_or(false);
        Ok(intact.then(|| self.image_of(stored)))
    }

    async fn list_images(&self) -> Result<Vec<Image>, RuntimeError> {
        Ok(self
            .images
            .list()
            .into_iter()
            .map(|i| self.image_of(i))
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        let Some(stored) = self.lookup(image) else {
            return Ok(());
        };
        let images = Arc::clone(&self.images);
        tokio::task::spawn_blocking(move || images.remove(&stored.id))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|message| RuntimeError::CreateContainer { message })?;
        Ok(())
    }
}

impl WasmRuntime {
    /// The stored image an id or a reference (normalized as a pull would) names.
    fn lookup(&self, image: &str) -> Option<images::StoredImage> {
        self.images.find(image).or_else(|| {
            let whole = oci::parse_reference(image).ok()?.whole();
            self.images.find(&whole)
        })
    }

    fn image_of(&self, stored: images::StoredImage) -> Image {
        let size = std::fs::metadata(self.images.blob_path(&stored.layer_digest))
            .map(|m| m.len())
            .unwrap_or(0);
        Image {
            repo_digests: vec![stored.id.clone()],
            id: stored.id,
            repo_tags: stored.references,
            size,
        }
    }
}

#[async_trait]
impl RuntimeService for WasmRuntime {
    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        self.pods.run_sandbox(config)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        for running in self.pods.stop_sandbox(id)? {
            self.pods
                .finish_stop(running.0, running.1.stop(Duration::ZERO).await);
        }
        // The address goes back once nothing of the sandbox listens on it any more.
        self.pods.release_ips(id);
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_pod_sandbox(id).await.or_else(|e| match e {
            RuntimeError::NotFound { .. } => Ok(()),
            e => Err(e),
        })?;
        self.pods.remove_sandbox(id);
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        self.pods.sandbox_status(id)
    }

    async fn list_pod_sandboxes(
        &self,
        filter: &PodSandboxFilter,
    ) -> Result<Vec<PodSandboxStatus>, RuntimeError> {
        Ok(self.pods.list_sandboxes(filter))
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let log_directory = self.pods.sandbox_log_directory(sandbox_id)?;
        let stored = self
            .lookup(&config.image)
            .ok_or_else(|| RuntimeError::CreateContainer {
                message: format!(
                    "image {:?} is not present locally: pull it first",
                    config.image
                ),
            })?;
        let blob = self.images.blob_path(&stored.layer_digest);
        let prepared = self
            .engine
            .prepare(&stored.layer_digest, &blob)
            .await
            .map_err(|message| RuntimeError::CreateContainer {
                message: format!(
                    "image {:?} is not a WebAssembly module or component: {message}",
                    config.image
                ),
            })?;
        run::check_mounts(&config.mounts)?;
        let log_path = log_directory.join(&config.log_path);
        let log = cri_log::LogFile::open(&log_path).map_err(|e| RuntimeError::CreateContainer {
            message: format!("cannot open log file {}: {e}", log_path.display()),
        })?;
        self.pods
            .create_container(sandbox_id, config, &stored.id, prepared, log)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.pods
            .start_container(id, &self.executor(), &self.engine)
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let mut events = self.pods.subscribe();
        if let Some(running) = self.pods.take_running(id)? {
            let reported = running.stop(grace).await;
            self.pods.finish_stop(id.to_owned(), reported);
            return Ok(());
        }
        // Another caller is stopping it: return once it has exited, as that caller will.
        loop {
            if self.pods.container_status(id)?.state != shoal_runtime::ContainerState::Running {
                return Ok(());
            }
            match tokio::time::timeout(grace + Duration::from_secs(1), events.recv()).await {
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) | Err(_) => return Ok(()),
            }
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self.stop_container(id, Duration::ZERO).await {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.pods.remove_container(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.pods.container_status(id)
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStatus>, RuntimeError> {
        Ok(self.pods.list_containers(filter))
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        self.pods.container_stats(id)
    }

    fn container_events(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent> {
        self.pods.subscribe()
    }
}

impl Runtime for WasmRuntime {
    fn handler(&self) -> &'static str {
        "wasmtime"
    }

    fn version(&self) -> String {
        format!("wasmtime://{}", engine::WASMTIME_VERSION)
    }
}
