//! The contract between the node agent and a container runtime, shaped like the Kubernetes
//! Container Runtime Interface (CRI v1).
//!
//! A runtime offers what containerd offers the kubelet: **pod sandboxes** (run, stop, remove,
//! status, list), which own a pod's network identity; **containers** inside a sandbox (create,
//! start, stop within a grace period, remove, status, list) whose output the runtime itself writes
//! to the log file the agent names, in the CRI log format ([`cri_log`]); **images** (pull, status,
//! list, remove); and a stream of **container events** (created, started, stopped, deleted) that
//! tells the agent when to look again, as the kubelet's evented PLEG does. Because every sandbox
//! and container carries the pod's identity in its metadata and labels, an agent that restarts
//! lists what the runtime still has and adopts it or cleans it up.
//!
//! The vocabulary is the CRI's, in plain Rust: no engine type (wasmtime) and no gRPC type (tonic,
//! the CRI protos) crosses it. The Wasm runtime (`shoal-runtime-wasm`) implements it in process;
//! a CRI client implements it by forwarding to containerd. The crate knows nothing of the
//! Kubernetes API: the agent translates a `Pod` into these types and back.

pub mod cri_log;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

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
    /// The pod sandbox could not be created (network identity, host ports).
    #[error("{message}")]
    CreateSandbox { message: String },
    /// The artifact was fetched but cannot run here (not Wasm, bad layout, fails to compile), or
    /// the container's configuration cannot be honoured (volume paths).
    #[error("{message}")]
    CreateContainer { message: String },
    /// The container could not be started (host resources).
    #[error("{message}")]
    StartContainer { message: String },
    /// No sandbox, container or image has this id.
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
}

impl RuntimeError {
    /// The Kubernetes `waiting.reason` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::ImagePull { .. } => "ErrImagePull",
            RuntimeError::InvalidImageName { .. } => "InvalidImageName",
            RuntimeError::CreateSandbox { .. } => "CreatePodSandboxError",
            RuntimeError::CreateContainer { .. } | RuntimeError::NotFound { .. } => {
                "CreateContainerError"
            }
            RuntimeError::StartContainer { .. } => "RunContainerError",
        }
    }

    pub fn not_found(kind: &'static str, id: &str) -> RuntimeError {
        RuntimeError::NotFound {
            kind,
            id: id.to_owned(),
        }
    }
}

// ------------------------------------------------------------------------------------ images

/// Credentials for a registry (CRI `AuthConfig`), from the pod's `imagePullSecrets`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// An image the runtime holds (CRI `Image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// What containers are created from and what the container status reports as `imageID`
    /// (`repo@sha256:...`).
    pub id: String,
    /// References that resolve to it (`registry/repo:tag`).
    pub repo_tags: Vec<String>,
    /// `repo@sha256:...` forms.
    pub repo_digests: Vec<String>,
    /// Bytes on disk.
    pub size: u64,
}

/// The image half of the interface (CRI `ImageService`).
#[async_trait]
pub trait ImageService: Send + Sync {
    /// Fetches `image` (always from its registry) and returns the id of what was stored.
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&AuthConfig>,
    ) -> Result<String, RuntimeError>;
    /// The local image a reference or id resolves to, without touching the network.
    async fn image_status(&self, image: &str) -> Result<Option<Image>, RuntimeError>;
    async fn list_images(&self) -> Result<Vec<Image>, RuntimeError>;
    /// Forgets a reference or id; an image a container still uses stays usable by it.
    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError>;
}

// --------------------------------------------------------------------------------- sandboxes

/// Identity of a pod sandbox (CRI `PodSandboxMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PodSandboxMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// Incremented each time the agent creates a new sandbox for the same pod.
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// A container port published on the node (`hostPort`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    pub host_port: u16,
    pub host_ip: Option<IpAddr>,
}

/// What a sandbox is created from (CRI `PodSandboxConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSandboxConfig {
    pub metadata: PodSandboxMetadata,
    pub hostname: String,
    /// Directory of the pod's container logs; each container's `log_path` is relative to it.
    pub log_directory: PathBuf,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxState {
    Ready,
    NotReady,
}

/// A sandbox as the runtime reports it (CRI `PodSandboxStatus`, also the list entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandboxStatus {
    pub id: String,
    pub metadata: PodSandboxMetadata,
    pub state: SandboxState,
    pub created_at: SystemTime,
    /// The pod's IPs, primary first; empty when the runtime gives the pod no address of its own.
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The RuntimeClass handler that runs it.
    pub runtime_handler: String,
}

/// Which sandboxes to list; every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSandboxFilter {
    pub id: Option<String>,
    pub state: Option<SandboxState>,
    pub label_selector: BTreeMap<String, String>,
}

impl PodSandboxFilter {
    pub fn matches(&self, sandbox: &PodSandboxStatus) -> bool {
        self.id.as_ref().is_none_or(|id| *id == sandbox.id)
            && self.state.is_none_or(|s| s == sandbox.state)
            && labels_match(&self.label_selector, &sandbox.labels)
    }
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// -------------------------------------------------------------------------------- containers

/// Identity of a container in its sandbox (CRI `ContainerMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ContainerMetadata {
    pub name: String,
    /// The agent's run number of this container in its pod: the Kubernetes `restartCount`.
    pub attempt: u32,
}

/// A directory the container sees, and nothing else of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Directory on the host (already created by the agent).
    pub host_path: PathBuf,
    /// Absolute path inside the container.
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

/// What a container is created from (CRI `ContainerConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    pub metadata: ContainerMetadata,
    /// The image id returned by [`ImageService::pull_image`] or [`ImageService::image_status`].
    pub image: String,
    /// Entrypoint with its variables expanded; empty: the image's own (for a Wasm guest, `argv[0]`
    /// is then the container's name).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Where the runtime writes the container's output, relative to the sandbox's
    /// `log_directory`, in the CRI log format.
    pub log_path: PathBuf,
    pub resources: Limits,
    /// The container's `ports` (Shoal's addition to the CRI shape): where a runtime that serves
    /// the container itself (a Wasm HTTP component) listens, on the sandbox's IP; a runtime
    /// whose containers open their own sockets ignores them.
    pub ports: Vec<ContainerPort>,
}

/// One `containerPort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub protocol: Protocol,
    pub container_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container as the runtime reports it (CRI `ContainerStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub sandbox_id: String,
    pub metadata: ContainerMetadata,
    pub state: ContainerState,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Meaningful once `state` is `Exited`: the guest's exit code (137 when killed).
    pub exit_code: i32,
    /// The image reference the container was created with (the image id).
    pub image: String,
    /// Kubernetes `terminated.reason` once exited: `Completed`, `Error`, `OOMKilled`.
    pub reason: String,
    /// Human-readable detail, e.g. a trap's message.
    pub message: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Absolute path of the log file.
    pub log_path: PathBuf,
}

/// What a container has used (CRI `ContainerStats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: String,
    pub timestamp: SystemTime,
    /// CPU time the container used since it started.
    pub cpu_usage: Duration,
    /// Memory it holds now (for a Wasm guest: linear memories and tables).
    pub memory_bytes: u64,
}

/// Which containers to list; every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub state: Option<ContainerState>,
    pub sandbox_id: Option<String>,
    pub label_selector: BTreeMap<String, String>,
}

impl ContainerFilter {
    pub fn matches(&self, container: &ContainerStatus) -> bool {
        self.id.as_ref().is_none_or(|id| *id == container.id)
            && self.state.is_none_or(|s| s == container.state)
            && self
                .sandbox_id
                .as_ref()
                .is_none_or(|id| *id == container.sandbox_id)
            && labels_match(&self.label_selector, &container.labels)
    }
}

/// What happened to a container (CRI `ContainerEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerEventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

/// One container event (CRI `ContainerEventResponse`, without the statuses: read them with
/// [`RuntimeService::container_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: String,
    pub sandbox_id: String,
    pub kind: ContainerEventKind,
}

/// The sandbox and container half of the interface (CRI `RuntimeService`).
#[async_trait]
pub trait RuntimeService: Send + Sync {
    /// Creates and starts a sandbox; returns its id.
    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError>;
    /// Stops every container of the sandbox (at once: the agent stops them with their grace
    /// periods first) and releases its network identity. Idempotent.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Removes the sandbox and its containers (stopping them if needed). Idempotent.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError>;
    async fn list_pod_sandboxes(
        &self,
        filter: &PodSandboxFilter,
    ) -> Result<Vec<PodSandboxStatus>, RuntimeError>;

    /// Creates a container in a sandbox (image prepared, log file opened, volumes checked);
    /// returns its id. It does not run until [`RuntimeService::start_container`].
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError>;
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Asks the container to stop and kills it if it has not ended after `grace`; returns once
    /// it has exited. Idempotent.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes an exited (or created) container, killing it first if it still runs. Its log
    /// file stays: the agent owns the log directory.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStatus>, RuntimeError>;
    /// What the container has used; an exited container reports its totals.
    async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;
    /// Events of every container from now on. A receiver that falls behind gets
    /// `RecvError::Lagged` and must re-read the statuses it cares about.
    fn container_events(&self) -> tokio::sync::broadcast::Receiver<ContainerEvent>;
}

/// A container runtime the node agent drives: both halves of the CRI plus its name.
pub trait Runtime: RuntimeService + ImageService {
    /// The RuntimeClass handler this runtime serves (`wasmtime`, `runc`).
    fn handler(&self) -> &'static str;
    /// `name://version`, as the Node's `containerRuntimeVersion` shows it.
    fn version(&self) -> String;
}

/// Labels the agent puts on every sandbox and container, so that a restarted agent can tell
/// which pod and container they belong to (the kubelet's `io.kubernetes.*` labels).
pub mod labels {
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_every_given_field() {
        let status = PodSandboxStatus {
            id: "s1".into(),
            metadata: PodSandboxMetadata::default(),
            state: SandboxState::Ready,
            created_at: SystemTime::UNIX_EPOCH,
            ips: Vec::new(),
            labels: [(labels::POD_UID.to_owned(), "u1".to_owned())].into(),
            annotations: BTreeMap::new(),
            runtime_handler: "wasmtime".into(),
        };
        assert!(PodSandboxFilter::default().matches(&status));
        let by_uid = PodSandboxFilter {
            label_selector: [(labels::POD_UID.to_owned(), "u1".to_owned())].into(),
            ..Default::default()
        };
        assert!(by_uid.matches(&status));
        let other = PodSandboxFilter {
            label_selector: [(labels::POD_UID.to_owned(), "u2".to_owned())].into(),
            ..Default::default()
        };
        assert!(!other.matches(&status));
        let not_ready = PodSandboxFilter {
            state: Some(SandboxState::NotReady),
            ..by_uid
        };
        assert!(!not_ready.matches(&status));
    }

    #[test]
    fn errors_map_to_waiting_reasons() {
        assert_eq!(
            RuntimeError::not_found("container", "c1").reason(),
            "CreateContainerError"
        );
        assert_eq!(
            RuntimeError::CreateSandbox {
                message: String::new()
            }
            .reason(),
            "CreatePodSandboxError"
        );
    }
}
