//! The runtime's bookkeeping of pod sandboxes and containers: ids, states, statuses and events.
//!
//! Everything sits behind one mutex that is never held across an await or while a guest runs;
//! the guest's task updates its container when it ends (through the callback [`run::start`]
//! takes). A container moves Created -> Running -> Exited, each step announced on the event
//! channel after the state changed, so a reader woken by an event always sees the new state.
//! A container's log file is open from its creation until its guest ended (or it is removed
//! before starting).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use shoal_runtime::cri_log::LogFile;
use shoal_runtime::{
    ContainerConfig, ContainerEvent, ContainerEventKind, ContainerFilter, ContainerState,
    ContainerStats, ContainerStatus, PodSandboxConfig, PodSandboxFilter, PodSandboxStatus,
    PortMapping, Protocol, RuntimeError, SandboxState,
};
use tokio::sync::broadcast;

use crate::engine::{Prepared, WasmEngine};
use crate::run::{self, ExitStatus, GuestSpec, Running, Usage};

/// Room for events not yet read by a slow subscriber; beyond it the subscriber lags and
/// re-reads statuses.
const EVENT_BUFFER: usize = 4096;

struct Sandbox {
    status: PodSandboxStatus,
    log_directory: PathBuf,
    port_mappings: Vec<PortMapping>,
}

/// The node's pod addresses: each Ready sandbox holds one (released when it stops). The network
/// address, the first address (kept for a gateway) and the broadcast address are never given.
#[derive(Debug)]
pub(crate) struct IpPool {
    network: u32,
    size: u32,
    used: HashSet<u32>,
    next: u32,
}

impl IpPool {
    pub(crate) fn new(network: Ipv4Addr, prefix: u8) -> IpPool {
        let size = 1u32
            .checked_shl(32 - u32::from(prefix.min(30)))
            .unwrap_or(u32::MAX);
        IpPool {
            network: u32::from(network) & !(size - 1),
            size,
            used: HashSet::new(),
            next: 2,
        }
    }

    fn allocate(&mut self) -> Option<Ipv4Addr> {
        let usable = self.size.saturating_sub(3);
        if self.used.len() as u32 >= usable {
            return None;
        }
        loop {
            let offset = self.next;
            self.next = if self.next + 1 >= self.size - 1 {
                2
            } else {
                self.next + 1
            };
            if self.used.insert(offset) {
                return Some(Ipv4Addr::from(self.network + offset));
            }
        }
    }

    fn release(&mut self, ip: IpAddr) {
        if let IpAddr::V4(ip) = ip {
            self.used.remove(&u32::from(ip).wrapping_sub(self.network));
        }
    }
}

struct Container {
    status: ContainerStatus,
    config: Arc<ContainerConfig>,
    prepared: Arc<Prepared>,
    /// Until the guest starts; then the guest owns it.
    log: Option<LogFile>,
    running: Option<Running>,
    /// Of the guest once started (kept after it ended, for its totals).
    usage: Option<Arc<Usage>>,
}

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, Sandbox>,
    containers: HashMap<String, Container>,
    /// `None`: sandboxes get no address of their own.
    ips: Option<IpPool>,
}

pub(crate) struct Sandboxes {
    state: Arc<Mutex<State>>,
    /// Where hostPorts without a hostIP are bound; empty: `0.0.0.0`.
    node_ips: Vec<IpAddr>,
    events: broadcast::Sender<ContainerEvent>,
    next: AtomicU64,
}

impl Sandboxes {
    pub(crate) fn new(ips: Option<IpPool>, node_ips: Vec<IpAddr>) -> Sandboxes {
        Sandboxes {
            node_ips,
            state: Arc::new(Mutex::new(State {
                ips,
                ..State::default()
            })),
            events: broadcast::channel(EVENT_BUFFER).0,
            next: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new 64-hex-digit id, as containerd's.
    fn new_id(&self, what: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(what.as_bytes());
        hasher.update(self.next.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        hasher.update(std::process::id().to_le_bytes());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        hasher.update(now.as_nanos().to_le_bytes());
        hex::encode(hasher.finalize())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    fn announce(
        events: &broadcast::Sender<ContainerEvent>,
        container: &ContainerStatus,
        kind: ContainerEventKind,
    ) {
        let _ = events.send(ContainerEvent {
            container_id: container.id.clone(),
            sandbox_id: container.sandbox_id.clone(),
            kind,
        });
    }

    pub(crate) fn run_sandbox(&self, config: &PodSandboxConfig) -> Result<String, RuntimeError> {
        let meta = &config.metadata;
        let id = self.new_id(&format!(
            "{}/{}/{}/{}",
            meta.namespace, meta.name, meta.uid, meta.attempt
        ));
        let mut state = self.lock();
        let ips = match state.ips.as_mut() {
            None => Vec::new(),
            Some(pool) => match pool.allocate() {
                Some(ip) => vec![IpAddr::V4(ip)],
                None => {
                    return Err(RuntimeError::CreateSandbox {
                        message: "the node's pod address range is exhausted".to_owned(),
                    });
                }
            },
        };
        let status = PodSandboxStatus {
            id: id.clone(),
            metadata: meta.clone(),
            state: SandboxState::Ready,
            created_at: SystemTime::now(),
            ips,
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            runtime_handler: "wasmtime".to_owned(),
        };
        tracing::debug!(sandbox = %id, pod = %format!("{}/{}", meta.namespace, meta.name), ips = ?status.ips, "sandbox ready");
        state.sandboxes.insert(
            id.clone(),
            Sandbox {
                status,
                log_directory: config.log_directory.clone(),
                port_mappings: config.port_mappings.clone(),
            },
        );
        Ok(id)
    }

    /// Marks the sandbox NotReady and hands back its running guests, to be stopped by the caller
    /// (then reported with [`Sandboxes::finish_stop`]).
    pub(crate) fn stop_sandbox(&self, id: &str) -> Result<Vec<(String, Running)>, RuntimeError> {
        let mut state = self.lock();
        let state = &mut *state;
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| RuntimeError::not_found("pod sandbox", id))?;
        sandbox.status.state = SandboxState::NotReady;
        Ok(state
            .containers
            .iter_mut()
            .filter(|(_, c)| c.status.sandbox_id == id)
            .filter_map(|(cid, c)| Some((cid.clone(), c.running.take()?)))
            .collect())
    }

    /// Gives a stopped sandbox's address back to the pool: only once its containers have
    /// stopped, so that no listener of theirs still holds it when another sandbox gets it.
    pub(crate) fn release_ips(&self, id: &str) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(sandbox) = state.sandboxes.get_mut(id) {
            for ip in sandbox.status.ips.drain(..) {
                if let Some(pool) = state.ips.as_mut() {
                    pool.release(ip);
                }
            }
        }
    }

    /// Forgets a (stopped) sandbox and its containers.
    pub(crate) fn remove_sandbox(&self, id: &str) {
        let removed: Vec<ContainerStatus> = {
            let mut state = self.lock();
            state.sandboxes.remove(id);
            let ids: Vec<String> = state
                .containers
                .iter()
                .filter(|(_, c)| c.status.sandbox_id == id)
                .map(|(cid, _)| cid.clone())
                .collect();
            ids.iter()
                .filter_map(|cid| state.containers.remove(cid))
                .map(|c| c.status)
                .collect()
        };
        for status in &removed {
            Self::announce(&self.events, status, ContainerEventKind::Deleted);
        }
    }

    pub(crate) fn sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, RuntimeError> {
        self.lock()
            .sandboxes
            .get(id)
            .map(|s| s.status.clone())
            .ok_or_else(|| RuntimeError::not_found("pod sandbox", id))
    }

    pub(crate) fn list_sandboxes(&self, filter: &PodSandboxFilter) -> Vec<PodSandboxStatus> {
        self.lock()
            .sandboxes
            .values()
            .filter(|s| filter.matches(&s.status))
            .map(|s| s.status.clone())
            .collect()
    }

    /// The log directory of a Ready sandbox.
    pub(crate) fn sandbox_log_directory(&self, id: &str) -> Result<PathBuf, RuntimeError> {
        let state = self.lock();
        let sandbox = state
            .sandboxes
            .get(id)
            .ok_or_else(|| RuntimeError::not_found("pod sandbox", id))?;
        if sandbox.status.state != SandboxState::Ready {
            return Err(RuntimeError::CreateContainer {
                message: format!("pod sandbox {id} is not ready"),
            });
        }
        Ok(sandbox.log_directory.clone())
    }

    pub(crate) fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
        image_id: &str,
        prepared: Arc<Prepared>,
        log: LogFile,
    ) -> Result<String, RuntimeError> {
        let id = self.new_id(&format!(
            "{sandbox_id}/{}/{}",
            config.metadata.name, config.metadata.attempt
        ));
        let status = ContainerStatus {
            id: id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            metadata: config.metadata.clone(),
            state: ContainerState::Created,
            created_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
            exit_code: 0,
            image: image_id.to_owned(),
            reason: String::new(),
            message: String::new(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            log_path: log.path().to_path_buf(),
        };
        {
            let mut state = self.lock();
            // Checked again under the lock: the sandbox may have been stopped meanwhile.
            match state.sandboxes.get(sandbox_id) {
                Some(s) if s.status.state == SandboxState::Ready => {}
                Some(_) => {
                    return Err(RuntimeError::CreateContainer {
                        message: format!("pod sandbox {sandbox_id} is not ready"),
                    });
                }
                None => return Err(RuntimeError::not_found("pod sandbox", sandbox_id)),
            }
            state.containers.insert(
                id.clone(),
                Container {
                    status: status.clone(),
                    config: Arc::new(config.clone()),
                    prepared,
                    log: Some(log),
                    running: None,
                    usage: None,
                },
            );
        }
        Self::announce(&self.events, &status, ContainerEventKind::Created);
        Ok(id)
    }

    pub(crate) fn start_container(
        &self,
        id: &str,
        executor: &tokio::runtime::Handle,
        engine: &Arc<WasmEngine>,
    ) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::not_found("container", id))?;
        if container.status.state != ContainerState::Created {
            return Err(RuntimeError::StartContainer {
                message: format!(
                    "container {id} is {:?}, not created",
                    container.status.state
                ),
            });
        }
        let config = Arc::clone(&container.config);
        let serves = matches!(*container.prepared, Prepared::Http(_));
        let sandbox = state
            .sandboxes
            .get(&container.status.sandbox_id)
            .filter(|s| s.status.state == SandboxState::Ready)
            .ok_or_else(|| RuntimeError::StartContainer {
                message: format!("the pod sandbox of container {id} is not ready"),
            })?;
        let listeners = if serves {
            listen(&config, sandbox, &self.node_ips)?
        } else {
            Vec::new()
        };
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::not_found("container", id))?;
        let log = container
            .log
            .take()
            .ok_or_else(|| RuntimeError::StartContainer {
                message: format!("container {id} has no log file"),
            })?;
        let mut args = config.command.clone();
        if args.is_empty() {
            args.push(config.metadata.name.clone());
        }
        args.extend(config.args.iter().cloned());
        let spec = GuestSpec {
            id: format!(
                "{}/{}",
                config
                    .labels
                    .get(shoal_runtime::labels::POD_NAME)
                    .map_or(container.status.sandbox_id.as_str(), String::as_str),
                config.metadata.name
            ),
            args,
            env: config.envs.clone(),
            mounts: config.mounts.clone(),
            limits: config.resources,
            log: Arc::new(log),
        };
        container.status.state = ContainerState::Running;
        container.status.started_at = Some(SystemTime::now());
        let on_exit = {
            let state = Arc::clone(&self.state);
            let events = self.events.clone();
            let id = id.to_owned();
            move |exit: ExitStatus| {
                let exited = {
                    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                    state.containers.get_mut(&id).and_then(|c| {
                        c.running = None;
                        exited(c, exit)
                    })
                };
                if let Some(status) = exited {
                    Self::announce(&events, &status, ContainerEventKind::Stopped);
                }
            }
        };
        let running = run::start(
            executor,
            engine,
            Arc::clone(&container.prepared),
            spec,
            listeners,
            on_exit,
        );
        container.usage = Some(Arc::clone(&running.usage));
        container.running = Some(running);
        let status = container.status.clone();
        drop(state);
        Self::announce(&self.events, &status, ContainerEventKind::Started);
        Ok(())
    }

    /// Takes the running guest of a container out, to be stopped by the caller. A container
    /// created but never started is marked exited here.
    pub(crate) fn take_running(&self, id: &str) -> Result<Option<Running>, RuntimeError> {
        let mut state = self.lock();
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::not_found("container", id))?;
        if container.status.state == ContainerState::Created {
            container.log = None;
            let status = exited(container, run::stopped_status());
            drop(state);
            if let Some(status) = status {
                Self::announce(&self.events, &status, ContainerEventKind::Stopped);
            }
            return Ok(None);
        }
        Ok(container.running.take())
    }

    /// Records how a stopped guest ended when its task could not say so itself.
    pub(crate) fn finish_stop(&self, id: String, reported: Option<ExitStatus>) {
        let Some(exit) = reported else { return };
        let status = {
            let mut state = self.lock();
            state.containers.get_mut(&id).and_then(|c| exited(c, exit))
        };
        if let Some(status) = status {
            Self::announce(&self.events, &status, ContainerEventKind::Stopped);
        }
    }

    pub(crate) fn remove_container(&self, id: &str) {
        let removed = self.lock().containers.remove(id);
        if let Some(container) = removed {
            Self::announce(&self.events, &container.status, ContainerEventKind::Deleted);
        }
    }

    pub(crate) fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.status.clone())
            .ok_or_else(|| RuntimeError::not_found("container", id))
    }

    pub(crate) fn container_stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let state = self.lock();
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::not_found("container", id))?;
        let usage = container.usage.as_deref();
        Ok(ContainerStats {
            id: id.to_owned(),
            timestamp: SystemTime::now(),
            cpu_usage: usage.map_or(std::time::Duration::ZERO, Usage::cpu),
            memory_bytes: usage.map_or(0, Usage::memory),
        })
    }

    pub(crate) fn list_containers(&self, filter: &ContainerFilter) -> Vec<ContainerStatus> {
        self.lock()
            .containers
            .values()
            .filter(|c| filter.matches(&c.status))
            .map(|c| c.status.clone())
            .collect()
    }

    /// Cancels every guest (the runtime is going away).
    pub(crate) fn kill_all(&self) {
        for container in self.lock().containers.values() {
            if let Some(running) = &container.running {
                running.kill();
            }
        }
    }
}

/// Binds the listeners of an HTTP container: each TCP `containerPort` on the sandbox's IP, and
/// the sandbox's `hostPort`s of those ports on the node (its `hostIP`, else each of
/// `node_ips`, else every address).
fn listen(
    config: &ContainerConfig,
    sandbox: &Sandbox,
    node_ips: &[IpAddr],
) -> Result<Vec<std::net::TcpListener>, RuntimeError> {
    let mut addrs = Vec::new();
    for port in config.ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
        if let Some(ip) = sandbox.status.ips.first() {
            addrs.push(SocketAddr::new(*ip, port.container_port));
        }
        for mapping in sandbox
            .port_mappings
            .iter()
            .filter(|m| m.protocol == Protocol::Tcp && m.container_port == port.container_port)
        {
            match (mapping.host_ip, node_ips) {
                (Some(ip), _) => addrs.push(SocketAddr::new(ip, mapping.host_port)),
                (None, []) => addrs.push(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    mapping.host_port,
                )),
                (None, ips) => {
                    addrs.extend(ips.iter().map(|ip| SocketAddr::new(*ip, mapping.host_port)))
                }
            }
        }
    }
    addrs
        .into_iter()
        .map(|addr| {
            let listener =
                std::net::TcpListener::bind(addr).map_err(|e| RuntimeError::StartContainer {
                    message: format!("cannot listen on {addr}: {e}"),
                })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| RuntimeError::StartContainer {
                    message: format!("cannot listen on {addr}: {e}"),
                })?;
            Ok(listener)
        })
        .collect()
}

/// Moves a container to Exited with `exit`; `None` if it already was.
fn exited(container: &mut Container, exit: ExitStatus) -> Option<ContainerStatus> {
    if container.status.state == ContainerState::Exited {
        return None;
    }
    let status = &mut container.status;
    status.state = ContainerState::Exited;
    status.finished_at = Some(SystemTime::now());
    status.exit_code = exit.exit_code;
    status.reason = exit.reason;
    status.message = exit.message.unwrap_or_default();
    Some(status.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_skips_network_gateway_and_broadcast_and_reuses_released_addresses() {
        // A /30 has one usable pod address: .0 network, .1 gateway, .3 broadcast.
        let mut pool = IpPool::new("10.0.0.5".parse().expect("ip"), 30);
        let only = pool.allocate().expect("one address");
        assert_eq!(only, "10.0.0.6".parse::<Ipv4Addr>().expect("ip"));
        assert_eq!(pool.allocate(), None);
        pool.release(IpAddr::V4(only));
        assert_eq!(pool.allocate(), Some(only));

        let mut pool = IpPool::new("127.64.0.0".parse().expect("ip"), 16);
        let first: Vec<Ipv4Addr> = (0..3).filter_map(|_| pool.allocate()).collect();
        assert_eq!(
            first,
            ["127.64.0.2", "127.64.0.3", "127.64.0.4"]
                .map(|ip| ip.parse::<Ipv4Addr>().expect("ip"))
        );
        // Released addresses come back after the rest of the range, not at once.
        pool.release(IpAddr::V4(first[0]));
        assert_eq!(pool.allocate(), Some("127.64.0.5".parse().expect("ip")));
    }
}
