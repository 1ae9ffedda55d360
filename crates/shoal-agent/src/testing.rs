//! A fake runtime for the agent's own tests (unit tests, and the integration test against the
//! real apiserver): the real runtimes live in other crates and have their own tests.
//!
//! It keeps sandboxes and containers in memory like an in-process runtime and writes a few
//! lines to each container's CRI log at start: `argv=[..]`, `env=[..]`, one line per mount
//! listing its files, and `mounts=N` on stderr.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use shoal_runtime::cri_log::{LogFile, LogStream};
use shoal_runtime::{
    AuthConfig, ContainerConfig, ContainerEvent, ContainerEventKind, ContainerFilter,
    ContainerState, ContainerStats, ContainerStatus, Image, ImageService, PodSandboxConfig,
    PodSandboxFilter, PodSandboxStatus, Runtime, RuntimeError, RuntimeService, SandboxState,
};
use tokio::sync::broadcast;

/// Images: `fake/exitN` exits with N at once, `fake/flaky` exits with 1 on its first run and 0
/// on later ones, `fake/run` runs until stopped, `fake/stuck`
/// ignores the stop request until the grace period is over, `fake/missing` cannot be pulled.
/// A pod labelled `fake/sandbox-failures: N` has its first N sandboxes refused.
/// Container ids are `<pod uid>-<name>-<attempt>`, sandbox ids `<pod uid>-sandbox-<attempt>`.
/// It records `start ns/pod/c [argv]`, `stop ns/pod/c grace=Ns`, `remove sandbox <id>`.
pub struct FakeRuntime {
    events: Arc<Mutex<Vec<String>>>,
    state: Arc<Mutex<FakeState>>,
    notify: broadcast::Sender<ContainerEvent>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            events: Arc::default(),
            state: Arc::default(),
            notify: broadcast::channel(1024).0,
        }
    }
}

#[derive(Default)]
struct FakeState {
    sandboxes: HashMap<String, (PodSandboxStatus, PathBuf)>,
    containers: HashMap<String, FakeContainer>,
    /// Sandbox creations refused so far, per pod uid.
    refused: HashMap<String, u32>,
}

struct FakeContainer {
    status: ContainerStatus,
    config: ContainerConfig,
    /// `namespace/pod/container`.
    key: String,
    behaviour: Behaviour,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Exit(i32),
    Run,
    Stuck,
}

impl FakeRuntime {
    /// What happened so far, oldest first.
    pub fn events(&self) -> Vec<String> {
        self.events.lock().expect("events").clone()
    }

    /// Names of the pods whose sandbox is Ready.
    pub fn ready_sandboxes(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("state")
            .sandboxes
            .values()
            .filter(|(s, _)| s.state == SandboxState::Ready)
            .map(|(s, _)| s.metadata.name.clone())
            .collect()
    }

    fn record(&self, event: String) {
        self.events.lock().expect("events").push(event);
    }

    fn announce(&self, status: &ContainerStatus, kind: ContainerEventKind) {
        let _ = self.notify.send(ContainerEvent {
            container_id: status.id.clone(),
            sandbox_id: status.sandbox_id.clone(),
            kind,
        });
    }

    /// Moves a container to Exited; returns its status if it was not already.
    fn exit(&self, id: &str, code: i32, message: &str) -> Option<ContainerStatus> {
        let mut state = self.state.lock().expect("state");
        let c = state.containers.get_mut(id)?;
        if c.status.state == ContainerState::Exited {
            return None;
        }
        c.status.state = ContainerState::Exited;
        c.status.exit_code = code;
        c.status.reason = if code == 0 { "Completed" } else { "Error" }.to_owned();
        c.status.message = message.to_owned();
        c.status.finished_at = Some(SystemTime::now());
        Some(c.status.clone())
    }
}

#[async_trait]
impl ImageService for FakeRuntime {
    async fn pull_image(
        &self,
        image: &str,
        _auth: Option<&AuthConfig>,
    ) -> Result<String, RuntimeError> {
        if image.contains("missing") {
            return Err(RuntimeError::ImagePull {
                image: image.to_owned(),
                message: "manifest unknown".to_owned(),
            });
        }
        Ok(format!("{image}@sha256:feed"))
    }

    async fn image_status(&self, _image: &str) -> Result<Option<Image>, RuntimeError> {
        Ok(None)
    }

    async fn list_images(&self) -> Result<Vec<Image>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn remove_image(&self, _image: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
}

#[async_trait]
impl RuntimeService for FakeRuntime {
    async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        // A pod labelled `fake/sandbox-failures: N` has its first N sandboxes refused.
        let failures: u32 = config
            .labels
            .get("fake/sandbox-failures")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        {
            let mut state = self.state.lock().expect("state");
            let refused = state
                .refused
                .entry(config.metadata.uid.clone())
                .or_default();
            if *refused < failures {
                *refused += 1;
                drop(state);
                self.record(format!("refuse sandbox {}", config.metadata.name));
                return Err(RuntimeError::CreateSandbox {
                    message: "no address left".to_owned(),
                });
            }
        }
        let id = format!(
            "{}-sandbox-{}",
            config.metadata.uid, config.metadata.attempt
        );
        let status = PodSandboxStatus {
            id: id.clone(),
            metadata: config.metadata.clone(),
            state: SandboxState::Ready,
            created_at: SystemTime::now(),
            ips: Vec::new(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            runtime_handler: "wasmtime".to_owned(),
        };
        self.state
            .lock()
            .expect("state")
            .sandboxes
            .insert(id.clone(), (status, config.log_directory.clone()));
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let running: Vec<String> = {
            let mut state = self.state.lock().expect("state");
            let (sandbox, _) = state
                .sandboxes
                .get_mut(id)
                .ok_or_else(|| RuntimeError::not_found("pod sandbox", id))?;
            sandbox.state = SandboxState::NotReady;
            state
                .containers
                .values()
                .filter(|c| c.status.sandbox_id == id && c.status.state != ContainerState::Exited)
                .map(|c| c.status.id.clone())
                .collect()
        };
        for container in running {
            self.stop_container(&container, Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        match self.stop_pod_sandbox(id).await {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut state = self.state.lock().expect("state");
        if state.sandboxes.remove(id).is_some() {
            state.containers.retain(|_, c| c.status.sandbox_id != id);
            drop(state);
            self.record(format!("remove sandbox {id}"));
        }
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        self.state
            .lock()
            .expect("state")
            .sandboxes
            .get(id)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| RuntimeError::not_found("pod sandbox", id))
    }

    async fn list_pod_sandboxes(
        &self,
        filter: &PodSandboxFilter,
    ) -> Result<Vec<PodSandboxStatus>, RuntimeError> {
        Ok(self
            .state
            .lock()
            .expect("state")
            .sandboxes
            .values()
            .map(|(s, _)| s.clone())
            .filter(|s| filter.matches(s))
            .collect())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let mut state = self.state.lock().expect("state");
        let (sandbox, log_dir) = state
            .sandboxes
            .get(sandbox_id)
            .ok_or_else(|| RuntimeError::not_found("pod sandbox", sandbox_id))?;
        let meta = &sandbox.metadata;
        let id = format!(
            "{}-{}-{}",
            meta.uid, config.metadata.name, config.metadata.attempt
        );
        let key = format!("{}/{}/{}", meta.namespace, meta.name, config.metadata.name);
        let image = config.image.split('@').next().unwrap_or_default();
        let behaviour = if image == "fake/flaky" {
            // Fails its first run, succeeds on any later one.
            Behaviour::Exit(if config.metadata.attempt == 0 { 1 } else { 0 })
        } else if let Some(code) = image.strip_prefix("fake/exit") {
            Behaviour::Exit(code.parse().unwrap_or(1))
        } else if image == "fake/stuck" {
            Behaviour::Stuck
        } else {
            Behaviour::Run
        };
        let status = ContainerStatus {
            id: id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            metadata: config.metadata.clone(),
            state: ContainerState::Created,
            created_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
            exit_code: 0,
            image: config.image.clone(),
            reason: String::new(),
            message: String::new(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path: log_dir.join(&config.log_path),
        };
        state.containers.insert(
            id.clone(),
            FakeContainer {
                status,
                config: config.clone(),
                key,
                behaviour,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (status, config, key, behaviour) = {
            let mut state = self.state.lock().expect("state");
            let c = state
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::not_found("container", id))?;
            c.status.state = ContainerState::Running;
            c.status.started_at = Some(SystemTime::now());
            (
                c.status.clone(),
                c.config.clone(),
                c.key.clone(),
                c.behaviour,
            )
        };
        let mut argv = config.command.clone();
        if argv.is_empty() {
            argv.push(config.metadata.name.clone());
        }
        argv.extend(config.args.iter().cloned());
        self.record(format!("start {key} {argv:?}"));
        let log = LogFile::open(&status.log_path).map_err(|e| RuntimeError::StartContainer {
            message: format!("cannot open the log: {e}"),
        })?;
        log.write(LogStream::Stdout, format!("argv={argv:?}\nenv=").as_bytes());
        log.write(LogStream::Stdout, format!("{:?}\n", config.envs).as_bytes());
        for mount in &config.mounts {
            let mut files: Vec<String> = std::fs::read_dir(&mount.host_path)
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.path().is_file())
                        .map(|e| {
                            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
                            format!("{}={content}", e.file_name().to_string_lossy())
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            log.write(
                LogStream::Stdout,
                format!("{}: {}\n", mount.container_path, files.join(",")).as_bytes(),
            );
        }
        log.write(
            LogStream::Stderr,
            format!("mounts={}\n", config.mounts.len()).as_bytes(),
        );
        drop(log);
        self.announce(&status, ContainerEventKind::Started);
        if let Behaviour::Exit(code) = behaviour
            && let Some(exited) = self.exit(id, code, "")
        {
            self.announce(&exited, ContainerEventKind::Stopped);
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (key, behaviour, state) = {
            let state = self.state.lock().expect("state");
            let c = state
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::not_found("container", id))?;
            (c.key.clone(), c.behaviour, c.status.state)
        };
        if state == ContainerState::Exited {
            return Ok(());
        }
        self.record(format!("stop {key} grace={}s", grace.as_secs()));
        let (code, message) = match behaviour {
            Behaviour::Stuck => {
                tokio::time::sleep(grace).await;
                (137, "killed after the grace period")
            }
            Behaviour::Run => (0, ""),
            Behaviour::Exit(code) => (code, ""),
        };
        if let Some(exited) = self.exit(id, code, message) {
            self.announce(&exited, ContainerEventKind::Stopped);
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self.stop_container(id, Duration::ZERO).await {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        self.state.lock().expect("state").containers.remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.state
            .lock()
            .expect("state")
            .containers
            .get(id)
            .map(|c| c.status.clone())
            .ok_or_else(|| RuntimeError::not_found("container", id))
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerStatus>, RuntimeError> {
        Ok(self
            .state
            .lock()
            .expect("state")
            .containers
            .values()
            .map(|c| c.status.clone())
            .filter(|c| filter.matches(c))
            .collect())
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        self.container_status(id).await.map(|_| ContainerStats {
            id: id.to_owned(),
            timestamp: SystemTime::now(),
            cpu_usage: Duration::ZERO,
            memory_bytes: 0,
        })
    }

    fn container_events(&self) -> broadcast::Receiver<ContainerEvent> {
        self.notify.subscribe()
    }
}

impl Runtime for FakeRuntime {
    fn handler(&self) -> &'static str {
        "wasmtime"
    }

    fn version(&self) -> String {
        "wasmtime://fake".to_owned()
    }
}
