//! wasmtime behind [`shoal_runtime::Runtime`]: the node agent's in-process Wasm runtime.
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
//! It deliberately does not serve `wasi:http/proxy` components yet, and wasmtime types never
//! cross its public API.

mod engine;
mod images;
pub mod oci;
mod run;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use shoal_runtime::{Container, ContainerSpec, ImageRef, PullPolicy, Runtime, RuntimeError};

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
        }
    }
}

/// The wasmtime runtime (RuntimeClass handler `wasmtime`). Cheap to share behind an `Arc`.
///
/// Owns one epoch-ticker thread, which stops once the runtime and every container started from
/// it are gone. Its async methods must run inside a tokio runtime (containers are tokio tasks).
pub struct WasmRuntime {
    images: Arc<images::ImageStore>,
    engine: Arc<engine::WasmEngine>,
    max_layer_bytes: u64,
    insecure_registries: Arc<[String]>,
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
        Ok(WasmRuntime {
            images,
            engine,
            max_layer_bytes: config.max_layer_bytes,
            insecure_registries: config.insecure_registries.into(),
        })
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
}

#[async_trait]
impl Runtime for WasmRuntime {
    fn handler(&self) -> &'static str {
        "wasmtime"
    }

    async fn pull(&self, image: &str, policy: PullPolicy) -> Result<ImageRef, RuntimeError> {
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
        // Resolving hashes the blob (once per process), so it runs off the async workers.
        let resolved = if policy == PullPolicy::Always {
            None
        } else {
            let images = Arc::clone(&self.images);
            let key = reference.whole();
            tokio::task::spawn_blocking(move || images.resolve(&key))
                .await
                .map_err(|e| RuntimeError::ImagePull {
                    image: image.to_string(),
                    message: format!("resolving the local image failed: {e}"),
                })?
        };
        if let Some(image_id) = resolved {
            tracing::debug!(image, %image_id, "image present locally");
            return Ok(ImageRef {
                image: image.to_string(),
                image_id,
            });
        }
        if policy == PullPolicy::Never {
            return Err(RuntimeError::ImagePull {
                image: image.to_string(),
                message: "image is not present locally and imagePullPolicy is Never".to_string(),
            });
        }
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
        // Compile now so the first start is fast; a failure is reported again by `start`.
        let blob = self.images.blob_path(&pulled.layer_digest);
        if let Err(message) = self.engine.prepare(&pulled.layer_digest, &blob).await {
            tracing::warn!(image, %message, "pulled image does not compile");
        }
        Ok(ImageRef {
            image: image.to_string(),
            image_id,
        })
    }

    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Container>, RuntimeError> {
        let image = &spec.image;
        let layer_digest = self
            .images
            .layer_for_image_id(&image.image_id)
            .ok_or_else(|| RuntimeError::CreateContainer {
                message: format!(
                    "image {:?} ({}) is not present locally: pull it first",
                    image.image, image.image_id
                ),
            })?;
        let blob = self.images.blob_path(&layer_digest);
        let prepared = self
            .engine
            .prepare(&layer_digest, &blob)
            .await
            .map_err(|message| RuntimeError::CreateContainer {
                message: format!(
                    "image {:?} is not a WebAssembly module or component: {message}",
                    image.image
                ),
            })?;
        let container = run::start(&self.engine, prepared, spec)?;
        Ok(Box::new(container))
    }
}
