//! The contract between the node agent and a container runtime.
//!
//! The agent speaks only this vocabulary: pull an image, start a container from a
//! [`ContainerSpec`], wait for its [`ExitStatus`], stop it within a grace period. A runtime crate
//! (`shoal-runtime-wasm`, later a CRI client) implements [`Runtime`]; no engine type (wasmtime,
//! tonic) ever appears here. This crate deliberately knows nothing of the Kubernetes API: the
//! agent translates a `PodSpec` into these types.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Errors a runtime reports. Each variant maps to a Kubernetes container `waiting.reason`
/// (see [`RuntimeError::reason`]); the Display text becomes `waiting.message`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image could not be fetched (unreachable registry, unknown repository or tag, auth).
    #[error("failed to pull image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    /// The image reference itself is malformed.
    #[error("invalid image name {image:?}: {message}")]
    InvalidImageName { image: String, message: String },
    /// The artifact was fetched but cannot run here (not Wasm, bad layout, fails to compile).
    #[error("{message}")]
    CreateContainer { message: String },
    /// The container could not be started (host resources, volume paths).
    #[error("{message}")]
    StartContainer { message: String },
}

impl RuntimeError {
    /// The Kubernetes `waiting.reason` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::ImagePull { .. } => "ErrImagePull",
            RuntimeError::InvalidImageName { .. } => "InvalidImageName",
            RuntimeError::CreateContainer { .. } => "CreateContainerError",
            RuntimeError::StartContainer { .. } => "RunContainerError",
        }
    }
}

/// `imagePullPolicy` of the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// A pulled image, ready to start containers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The reference as written in the pod spec.
    pub image: String,
    /// `repo@sha256:...`: what the container status reports as `imageID`.
    pub image_id: String,
}

/// A directory the guest sees, and nothing else of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Directory on the host (already created by the agent).
    pub host_path: PathBuf,
    /// Absolute path inside the guest.
    pub container_path: String,
    pub read_only: bool,
}

/// Resource limits the runtime enforces inside the sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Cap on linear memory plus tables, in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU share in millicores (1000 = one core).
    pub cpu_millis: Option<u64>,
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Where a container's output goes. The runtime calls it with raw chunks as the guest writes
/// them; the agent frames them into log lines. Must not block for long.
pub type LogSink = Arc<dyn Fn(LogStream, Bytes) + Send + Sync>;

/// Everything a runtime needs to start one container.
#[derive(Clone)]
pub struct ContainerSpec {
    /// `namespace/pod/container`, for logs and errors.
    pub id: String,
    pub image: ImageRef,
    /// argv, argv[0] included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    pub logs: LogSink,
}

impl std::fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerSpec")
            .field("id", &self.id)
            .field("image", &self.image)
            .field("args", &self.args)
            .field("env", &self.env)
            .field("mounts", &self.mounts)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// The guest's exit code; 0 is success. A trap is reported as 1 (or 137 for a kill).
    pub exit_code: i32,
    /// Kubernetes `terminated.reason`: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// Human-readable detail, e.g. the trap message.
    pub message: Option<String>,
}

/// A running container.
#[async_trait]
pub trait Container: Send + Sync {
    /// Resolves when the container has ended. Cancel-safe; may be called again after it
    /// resolved and returns the same status.
    async fn wait(&mut self) -> ExitStatus;
    /// Asks the container to stop; if it has not ended after `grace`, kills it (a guest in a busy
    /// loop included). Returns once it has ended.
    async fn stop(&mut self, grace: Duration) -> ExitStatus;
}

/// A container runtime the node agent drives.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Short name: the RuntimeClass handler (`wasmtime`, `runc`).
    fn handler(&self) -> &'static str;
    /// Makes `image` available locally per `policy`.
    async fn pull(&self, image: &str, policy: PullPolicy) -> Result<ImageRef, RuntimeError>;
    /// Starts a container. The returned handle owns it: dropping the handle kills it.
    async fn start(&self, spec: ContainerSpec) -> Result<Box<dyn Container>, RuntimeError>;
}
