//! The pods bound to this node: a watch (with a reflector) on `spec.nodeName=<node>`, and one
//! worker task per pod uid that pulls, starts, restarts and stops its containers through the
//! [`Runtime`] trait and writes the pod's status through `pods/status`.
//!
//! A worker runs its pod in one sandbox of the runtime and owns its container tasks (a
//! `JoinSet`); the watch loop owns the workers. On agent shutdown the workers are dropped without
//! touching the runtime or the API: what the runtime keeps running (a runtime outliving the
//! agent, as containerd does) is adopted by the next agent, which otherwise resumes the pods
//! from their recorded status (`resume`, corrected by what the runtime still knows: `adopt`).
//! Sandboxes of pods deleted while the agent was away are removed at its start. ConfigMaps and
//! Secrets a container refers to are read when it (re)starts; their volume files are not
//! refreshed later. Probes and init containers are not handled yet.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerState, ContainerStatus, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use shoal_events::EventType::{Normal, Warning};
use shoal_runtime::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState as RuntimeState,
    ContainerStatus as RuntimeContainer, PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata,
    RuntimeError, SandboxState, labels,
};
use tokio::sync::watch;
use tokio::task::{self, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::{BackoffPolicy, format_go_duration};
use crate::logs::{LiveLog, LogStore, pod_log_dir};
use crate::runtime::NodeRuntime;
use crate::spec::{self, ConfigError, DownwardValues, PullPolicy, SourceKind, Sources};
use crate::status::{self, StatusInput};
use crate::volumes::{self, ResolvedMounts};

/// Tunables of the pod workers; tests shrink the delays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// `CrashLoopBackOff` delays.
    pub crash: BackoffPolicy,
    /// `ImagePullBackOff` delays (also used for configuration errors).
    pub pull: BackoffPolicy,
    /// Retries of API writes while the API server is away.
    pub api: BackoffPolicy,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            crash: BackoffPolicy::default(),
            pull: BackoffPolicy::default(),
            api: BackoffPolicy {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
                reset_after: Duration::MAX,
            },
        }
    }
}

/// What every pod worker shares.
pub(crate) struct PodsContext {
    pub client: kube::Client,
    pub node_name: String,
    pub host_ip: String,
    pub runtimes: Vec<Arc<NodeRuntime>>,
    pub logs: Arc<LogStore>,
    /// The agent's data directory, canonical: hostPath volumes must stay out of it.
    pub data_dir: PathBuf,
    /// `data_dir/pods`: volumes under `<uid>/volumes`, logs under `<ns>_<pod>_<uid>`.
    pub pods_dir: PathBuf,
    pub timing: Timing,
    /// Events as `kubelet` on this node.
    pub events: shoal_events::Recorder,
}

struct WorkerHandle {
    pod: watch::Sender<Arc<Pod>>,
    vanished: CancellationToken,
}

/// Watches the pods bound to this node and keeps one worker per pod until `shutdown`.
pub(crate) async fn run(ctx: Arc<PodsContext>, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    // Pods whose worker finished (deleted by it); ignored until they leave the watch.
    let mut finished: HashSet<String> = HashSet::new();
    let mut tasks = WorkerTasks::default();
    let workers_shutdown = shutdown.child_token();
    let started = std::time::SystemTime::now();
    let mut orphans_removed = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(pod))) => {
                    let mut workers = Workers { ctx: &ctx, workers: &mut workers, finished: &mut finished, tasks: &mut tasks, shutdown: &workers_shutdown };
                    workers.apply(&Arc::new(pod));
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = pod.metadata.uid.as_deref() {
                        if let Some(handle) = workers.get(uid) {
                            handle.vanished.cancel();
                        }
                        finished.remove(uid);
                    }
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    // After a (re)list the store is complete: pods missing from it are gone.
                    let pods = reader.state();
                    if !orphans_removed {
                        // Once per agent start: sandboxes the runtimes kept for pods deleted
                        // while the agent was away.
                        orphans_removed = true;
                        let live: HashSet<String> = pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                        for runtime in &ctx.runtimes {
                            let (runtime, live) = (Arc::clone(runtime), live.clone());
                            tokio::spawn(async move { runtime.remove_orphans(&live, started).await });
                        }
                    }
                    let mut workers = Workers { ctx: &ctx, workers: &mut workers, finished: &mut finished, tasks: &mut tasks, shutdown: &workers_shutdown };
                    workers.sync(&pods);
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => warn!(node = %ctx.node_name, %error, "pod watch failed, retrying"),
                None => break,
            },
            Some(joined) = tasks.join_next() => {
                workers.remove(&joined.uid);
                match joined.failure {
                    None => {
                        finished.insert(joined.uid);
                    }
                    // Forget the worker so that the pod's next event starts a new one.
                    Some(failure) => error!(
                        pod = %joined.key,
                        uid = %joined.uid,
                        error = %failure,
                        "pod worker panicked, a new one starts on the pod's next event"
                    ),
                }
            }
        }
    }
    workers_shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

/// The pod worker tasks, with the pod each one runs (a panic's `JoinError` only has the task id).
#[derive(Default)]
struct WorkerTasks {
    set: JoinSet<()>,
    pods: HashMap<task::Id, (String, String)>,
}

/// A pod worker that ended.
struct JoinedWorker {
    uid: String,
    /// `namespace/name`.
    key: String,
    /// Why it ended early (panic or abort); `None` when it returned.
    failure: Option<JoinError>,
}

impl WorkerTasks {
    fn spawn(
        &mut self,
        uid: String,
        key: String,
        worker: impl Future<Output = ()> + Send + 'static,
    ) {
        let handle = self.set.spawn(worker);
        self.pods.insert(handle.id(), (uid, key));
    }

    /// The next worker to end; `None` (at once) when there is none.
    async fn join_next(&mut self) -> Option<JoinedWorker> {
        loop {
            let (id, failure) = match self.set.join_next_with_id().await? {
                Ok((id, ())) => (id, None),
                Err(error) => (error.id(), Some(error)),
            };
            if let Some((uid, key)) = self.pods.remove(&id) {
                return Some(JoinedWorker { uid, key, failure });
            }
        }
    }
}

/// The watch loop's view of its workers, borrowed for one event.
struct Workers<'a> {
    ctx: &'a Arc<PodsContext>,
    workers: &'a mut HashMap<String, WorkerHandle>,
    finished: &'a mut HashSet<String>,
    tasks: &'a mut WorkerTasks,
    shutdown: &'a CancellationToken,
}

impl Workers<'_> {
    /// Hands a new version of `pod` to its worker, starting one if needed.
    fn apply(&mut self, pod: &Arc<Pod>) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if self.finished.contains(&uid) {
            return;
        }
        match self.workers.get(&uid) {
            Some(handle) => {
                handle.pod.send_if_modified(|current| {
                    if current.metadata.resource_version == pod.metadata.resource_version {
                        false
                    } else {
                        *current = Arc::clone(pod);
                        true
                    }
                });
            }
            None => {
                let (tx, rx) = watch::channel(Arc::clone(pod));
                let vanished = CancellationToken::new();
                let worker = PodWorker::new(
                    Arc::clone(self.ctx),
                    rx,
                    vanished.clone(),
                    self.shutdown.clone(),
                );
                let key = format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or("default"),
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
                self.tasks.spawn(uid.clone(), key, worker.run());
                self.workers.insert(uid, WorkerHandle { pod: tx, vanished });
            }
        }
    }

    /// Reconciles the workers with the complete list of pods bound to the node.
    fn sync(&mut self, pods: &[Arc<Pod>]) {
        let present: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        for pod in pods {
            self.apply(pod);
        }
        for (uid, handle) in self.workers.iter() {
            if !present.contains(uid.as_str()) {
                handle.vanished.cancel();
            }
        }
        self.finished.retain(|uid| present.contains(uid.as_str()));
    }
}

/// How a container run should begin when a worker (re)starts, given the status recorded by a
/// previous agent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resume {
    /// Start (again) with this status as the base (restart count, last state).
    Start(ContainerStatus),
    /// The container is done and will not restart.
    Done(ContainerStatus),
    /// The runtime still runs the container (id): wait on it rather than start another.
    Adopt(ContainerStatus, String),
}

/// Corrects the recorded status of a container with what the runtime still knows of it after an
/// agent restart; the runtime is the source of truth, as for the kubelet's PLEG (the recorded
/// status may lag: the previous agent may have stopped before writing it). `observed` is the
/// runtime's newest run of that container in the pod's sandbox:
/// - still running: adopted (never started a second time), whatever the record says;
/// - exited, and not what the record already says: its real exit replaces the record (rather
///   than `ContainerStatusUnknown`), and the restart policy decides from there.
///
/// The restart count is never lower than the run's attempt number.
pub(crate) fn adopt(
    handler: &str,
    name: &str,
    recorded: Option<&ContainerStatus>,
    observed: Option<&RuntimeContainer>,
    pod_terminal: bool,
) -> Option<Result<Resume, ContainerStatus>> {
    let observed = observed?;
    if pod_terminal {
        return None;
    }
    let id = format!("{handler}://{}", observed.id);
    let base = recorded.cloned().unwrap_or_else(|| ContainerStatus {
        name: name.to_owned(),
        image: observed.image.clone(),
        ..ContainerStatus::default()
    });
    let restart_count = base
        .restart_count
        .max(i32::try_from(observed.metadata.attempt).unwrap_or(i32::MAX));
    let started_at = observed
        .started_at
        .and_then(|t| Timestamp::try_from(t).ok());
    match observed.state {
        RuntimeState::Running => Some(Ok(Resume::Adopt(
            ContainerStatus {
                state: Some(status::running(started_at.unwrap_or_else(Timestamp::now))),
                container_id: Some(id),
                restart_count,
                ready: true,
                started: Some(true),
                ..base
            },
            observed.id.clone(),
        ))),
        RuntimeState::Exited => {
            // Already recorded: as the current state, or as the last state of a container
            // waiting out its back-off.
            let recorded_exit = (base.container_id.as_deref() == Some(id.as_str())
                && base.state.as_ref().is_some_and(|s| s.terminated.is_some()))
                || base
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.container_id.as_deref() == Some(id.as_str()));
            if recorded_exit {
                return None;
            }
            let finished_at = observed
                .finished_at
                .and_then(|t| Timestamp::try_from(t).ok())
                .unwrap_or_else(Timestamp::now);
            Some(Err(ContainerStatus {
                state: Some(status::terminated(
                    observed.exit_code,
                    &observed.reason,
                    Some(observed.message.clone()).filter(|m| !m.is_empty()),
                    started_at,
                    finished_at,
                    Some(id.clone()),
                )),
                container_id: Some(id),
                restart_count,
                ..base
            }))
        }
        RuntimeState::Created | RuntimeState::Unknown => None,
    }
}

/// Decides how a container resumes from its recorded status. A container recorded as running
/// died with the previous agent: it counts as terminated (`ContainerStatusUnknown`, 137) and
/// restarts per `restartPolicy`.
pub(crate) fn resume(
    name: &str,
    image: &str,
    recorded: Option<&ContainerStatus>,
    restart_policy: &str,
    pod_terminal: bool,
    now: Timestamp,
) -> Resume {
    let creating = |base: ContainerStatus| ContainerStatus {
        state: Some(status::waiting("ContainerCreating", None)),
        ready: false,
        started: Some(false),
        ..base
    };
    let Some(recorded) = recorded else {
        let fresh = ContainerStatus {
            name: name.to_owned(),
            image: image.to_owned(),
            ..ContainerStatus::default()
        };
        return if pod_terminal {
            Resume::Done(fresh)
        } else {
            Resume::Start(creating(fresh))
        };
    };
    let state = recorded.state.clone().unwrap_or_default();
    if pod_terminal {
        return Resume::Done(recorded.clone());
    }
    if let Some(run) = &state.running {
        let lost = status::terminated(
            137,
            "ContainerStatusUnknown",
            Some("the container could not be located when the node agent restarted".to_owned()),
            run.started_at.as_ref().map(|t| t.0),
            now,
            recorded.container_id.clone(),
        );
        if restart_policy == "Never" {
            return Resume::Done(ContainerStatus {
                state: Some(lost),
                ready: false,
                started: Some(false),
                ..recorded.clone()
            });
        }
        return Resume::Start(creating(ContainerStatus {
            last_state: Some(lost),
            restart_count: recorded.restart_count + 1,
            ..recorded.clone()
        }));
    }
    if let Some(t) = &state.terminated {
        if !should_restart(restart_policy, t.exit_code) {
            return Resume::Done(recorded.clone());
        }
        return Resume::Start(creating(ContainerStatus {
            last_state: Some(ContainerState {
                terminated: Some(t.clone()),
                ..ContainerState::default()
            }),
            restart_count: recorded.restart_count + 1,
            ..recorded.clone()
        }));
    }
    Resume::Start(creating(recorded.clone()))
}

/// Whether a container that exited with `exit_code` restarts under `restartPolicy`.
pub(crate) fn should_restart(restart_policy: &str, exit_code: i32) -> bool {
    match restart_policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The sandbox a worker runs its pod's containers in.
struct Sandbox {
    id: String,
    ips: Vec<std::net::IpAddr>,
    /// The containers the runtime already had in it (adopted after an agent restart).
    containers: Vec<RuntimeContainer>,
}

struct PodWorker {
    ctx: Arc<PodsContext>,
    pod: watch::Receiver<Arc<Pod>>,
    vanished: CancellationToken,
    shutdown: CancellationToken,
}

/// Why a worker's main loop ended.
enum Ending {
    Deleted,
    Vanished,
    Shutdown,
}

impl PodWorker {
    fn new(
        ctx: Arc<PodsContext>,
        pod: watch::Receiver<Arc<Pod>>,
        vanished: CancellationToken,
        shutdown: CancellationToken,
    ) -> PodWorker {
        PodWorker {
            ctx,
            pod,
            vanished,
            shutdown,
        }
    }

    fn current(&self) -> Arc<Pod> {
        Arc::clone(&self.pod.borrow())
    }

    async fn run(mut self) {
        let pod = self.current();
        let meta = &pod.metadata;
        let (namespace, name, uid) = spec::pod_identity(&pod);
        let key = format!("{namespace}/{name}");
        info!(pod = %key, %uid, "pod worker started");
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".to_owned());
        let recorded_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let pod_terminal = matches!(recorded_phase, Some(status::SUCCEEDED | status::FAILED));
        let recorded: Vec<ContainerStatus> = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        let volumes_dir = self.ctx.pods_dir.join(&uid).join("volumes");
        let now = Timestamp::now();
        // A pod deleted before this worker started (its node was away while it was evicted
        // and replaced elsewhere) is never started again: it only gets its final status.
        let deleting = meta.deletion_timestamp.is_some();
        let runtime = self
            .select_runtime(spec.runtime_class_name.as_deref())
            .await;
        let volumes_ready = if pod_terminal || deleting {
            Ok(())
        } else {
            create_volumes(&volumes_dir, &spec::empty_dir_volumes(&pod))
        };
        let start_error = match (&runtime, &volumes_ready) {
            (Err(message), _) => Some(message.clone()),
            (_, Err(error)) => Some(format!("cannot create volumes: {error}")),
            _ => None,
        };
        // The pod's sandbox: the one the runtime still has (an agent restart), else a new one.
        let mut sandbox = None;
        if let (Ok(runtime), None, false) = (&runtime, &start_error, pod_terminal || deleting) {
            // As the kubelet: a sandbox that cannot be made is retried with back-off, each
            // failure an event, until it works or the pod goes away.
            let mut delay = None;
            while sandbox.is_none() {
                let error = match self.sandbox(runtime, &pod).await {
                    Ok(found) => {
                        sandbox = Some(found);
                        break;
                    }
                    Err(error) => error,
                };
                let next = self.ctx.timing.pull.next(delay);
                delay = Some(next);
                warn!(pod = %key, %error, retry_in = ?next, "cannot create the pod's sandbox");
                self.ctx.events.record(
                    &shoal_events::reference(pod.as_ref()),
                    Warning,
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {error}"),
                );
                let retry = tokio::time::sleep(next);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = &mut retry => break,
                        _ = self.shutdown.cancelled() => return,
                        _ = self.vanished.cancelled() => break,
                        changed = self.pod.changed() => {
                            if changed.is_err() {
                                break;
                            }
                        }
                    }
                }
                // Gone or being deleted meanwhile: nothing to start; the main loop finishes it.
                if self.vanished.is_cancelled()
                    || self.pod.borrow().metadata.deletion_timestamp.is_some()
                {
                    break;
                }
            }
        }
        let observed = |name: &str| {
            sandbox.as_ref().and_then(|s: &Sandbox| {
                s.containers
                    .iter()
                    .filter(|c| c.metadata.name == name)
                    .max_by_key(|c| {
                        (
                            c.state == RuntimeState::Running,
                            c.metadata.attempt,
                            c.created_at,
                        )
                    })
            })
        };
        let handler = runtime.as_ref().map_or("", |r| r.runtime.handler());
        let plans: Vec<Resume> = spec
            .containers
            .iter()
            .map(|c| {
                let recorded = recorded.iter().find(|r| r.name == c.name);
                let corrected = match adopt(
                    handler,
                    &c.name,
                    recorded,
                    observed(&c.name),
                    pod_terminal || deleting,
                ) {
                    Some(Ok(adopted)) => return adopted,
                    Some(Err(exited)) => Some(exited),
                    None => None,
                };
                let plan = resume(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    corrected.as_ref().or(recorded),
                    if deleting { "Never" } else { &policy },
                    pod_terminal,
                    now,
                );
                match plan {
                    Resume::Start(status) if deleting => Resume::Done(status),
                    plan => plan,
                }
            })
            .collect();
        let initial: Vec<ContainerStatus> = plans
            .iter()
            .map(|p| match p {
                Resume::Start(s) | Resume::Done(s) | Resume::Adopt(s, _) => s.clone(),
            })
            .collect();
        let (states_tx, mut states_rx) = watch::channel(initial);
        let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
        let mut containers: JoinSet<()> = JoinSet::new();

        let node_runtime = runtime.as_ref().ok().cloned();
        let pod_ip = sandbox
            .as_ref()
            .and_then(|s| s.ips.first())
            .map_or_else(|| self.ctx.host_ip.clone(), |ip| ip.to_string());
        match (runtime, start_error, &sandbox) {
            (Ok(runtime), None, Some(sandbox)) => {
                for (index, plan) in plans.into_iter().enumerate() {
                    let adopted = match plan {
                        Resume::Done(_) => continue,
                        Resume::Start(_) => None,
                        Resume::Adopt(_, id) => Some(id),
                    };
                    let run = ContainerRun {
                        ctx: Arc::clone(&self.ctx),
                        pod: Arc::clone(&pod),
                        index,
                        runtime: Arc::clone(&runtime),
                        sandbox_id: sandbox.id.clone(),
                        pod_ip: pod_ip.clone(),
                        adopted,
                        states: states_tx.clone(),
                        stop: stop_rx.clone(),
                        volumes_dir: volumes_dir.clone(),
                    };
                    containers.spawn(run.run());
                }
            }
            (_, Some(message), _) => {
                warn!(pod = %key, %message, "cannot start pod");
                states_tx.send_modify(|states| {
                    for s in states.iter_mut() {
                        if s.state.as_ref().is_some_and(|st| st.waiting.is_some()) {
                            s.state = Some(status::waiting(
                                "CreateContainerConfigError",
                                Some(message.clone()),
                            ));
                        }
                    }
                });
            }
            // Nothing to start: the pod is done or being deleted.
            _ => {}
        }
        drop(states_tx);

        let start_time = Timestamp::now();
        let mut terminating = false;
        let mut last_written: Option<k8s_openapi::api::core::v1::PodStatus> = None;
        let mut dirty = true;
        let mut retry_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
        let mut retry_delay: Option<Duration> = None;
        let ending = loop {
            if self.pod.borrow().metadata.deletion_timestamp.is_some() && !terminating {
                terminating = true;
                let grace = grace_period(&self.current());
                info!(pod = %key, grace_seconds = grace.as_secs(), "stopping pod for deletion");
                stop_tx.send_replace(Some(grace));
                dirty = true;
            }
            if terminating && containers.is_empty() {
                break Ending::Deleted;
            }
            let sleep_until = retry_at.filter(|_| dirty);
            tokio::select! {
                _ = self.shutdown.cancelled() => break Ending::Shutdown,
                _ = self.vanished.cancelled() => break Ending::Vanished,
                changed = self.pod.changed() => {
                    if changed.is_err() {
                        break Ending::Vanished;
                    }
                }
                changed = states_rx.changed(), if states_rx.has_changed().is_ok() => {
                    if changed.is_ok() {
                        dirty = true;
                        retry_at.get_or_insert_with(tokio::time::Instant::now);
                    }
                }
                Some(_) = containers.join_next() => {
                    dirty = true;
                    retry_at.get_or_insert_with(tokio::time::Instant::now);
                    // Every container is done for good (the pod succeeded or failed): as the
                    // kubelet, stop the sandbox, which gives its address back; it is removed
                    // with the pod.
                    if containers.is_empty()
                        && !terminating
                        && let (Some(runtime), Some(sandbox)) = (&node_runtime, &sandbox)
                        && let Err(error) = runtime.runtime.stop_pod_sandbox(&sandbox.id).await
                    {
                        warn!(pod = %key, %error, "cannot stop the sandbox of a finished pod");
                    }
                }
                _ = sleep_opt(sleep_until) => {
                    let pod = self.current();
                    let statuses = states_rx.borrow_and_update().clone();
                    let status = status::pod_status(&StatusInput {
                        pod: &pod,
                        containers: &statuses,
                        terminal: terminating && containers.is_empty(),
                        host_ip: &self.ctx.host_ip,
                        pod_ip: &pod_ip,
                        start_time,
                        now: Timestamp::now(),
                    });
                    let unchanged = last_written.as_ref() == Some(&status)
                        || pod.status.as_ref() == Some(&status);
                    if unchanged {
                        dirty = false;
                        retry_at = None;
                        continue;
                    }
                    match self.write_status(&namespace, &name, &status).await {
                        Ok(()) => {
                            debug!(pod = %key, phase = ?status.phase, "wrote pod status");
                            last_written = Some(status);
                            dirty = false;
                            retry_at = None;
                            retry_delay = None;
                        }
                        Err(error) => {
                            let delay = self.ctx.timing.api.next(retry_delay);
                            retry_delay = Some(delay);
                            retry_at = Some(tokio::time::Instant::now() + delay);
                            warn!(pod = %key, %error, retry_in = ?delay, "cannot write pod status");
                        }
                    }
                }
            }
        };

        match ending {
            Ending::Shutdown => {
                // Dropping the container tasks drops (kills) the containers; their status stays
                // as recorded so the next agent resumes them.
                containers.shutdown().await;
                debug!(pod = %key, "pod worker stopped for agent shutdown");
            }
            Ending::Vanished => {
                let grace = grace_period(&self.current());
                stop_tx.send_replace(Some(grace));
                tokio::select! {
                    _ = async { while containers.join_next().await.is_some() {} } => {}
                    _ = self.shutdown.cancelled() => containers.shutdown().await,
                }
                self.remove_sandboxes(node_runtime.as_deref(), &uid).await;
                self.remove_pod_dirs(&namespace, &name, &uid);
                info!(pod = %key, %uid, "pod removed from node");
            }
            Ending::Deleted => {
                let statuses = states_rx.borrow().clone();
                let final_status = status::pod_status(&StatusInput {
                    pod: &self.current(),
                    containers: &statuses,
                    terminal: true,
                    host_ip: &self.ctx.host_ip,
                    pod_ip: &pod_ip,
                    start_time,
                    now: Timestamp::now(),
                });
                if last_written.as_ref() != Some(&final_status) {
                    let _ = self
                        .retry(|| self.write_status(&namespace, &name, &final_status))
                        .await;
                }
                self.remove_sandboxes(node_runtime.as_deref(), &uid).await;
                self.remove_pod_dirs(&namespace, &name, &uid);
                let deleted = self
                    .retry(|| self.delete_pod(&namespace, &name, &uid))
                    .await;
                if deleted.is_some() {
                    info!(pod = %key, %uid, "pod deleted");
                }
            }
        }
    }

    /// The pod's Ready sandbox in the runtime, adopted with its containers (an agent restart), or
    /// a new one. Sandboxes of the pod that are not Ready are removed.
    async fn sandbox(&self, runtime: &NodeRuntime, pod: &Pod) -> Result<Sandbox, RuntimeError> {
        let rt = &runtime.runtime;
        let config = spec::sandbox_config(pod, self.ctx.logs.root());
        let uid = config.metadata.uid.clone();
        let mine = PodSandboxFilter {
            label_selector: [(labels::POD_UID.to_owned(), uid)].into(),
            ..PodSandboxFilter::default()
        };
        let mut found = rt.list_pod_sandboxes(&mine).await?;
        found.sort_by_key(|s| (s.metadata.attempt, s.created_at));
        let ready = found
            .iter()
            .rposition(|s| s.state == SandboxState::Ready)
            .map(|i| found.remove(i));
        for stale in &found {
            rt.remove_pod_sandbox(&stale.id).await?;
        }
        if let Some(ready) = ready {
            let mut found = rt
                .list_containers(&ContainerFilter {
                    sandbox_id: Some(ready.id.clone()),
                    ..ContainerFilter::default()
                })
                .await?;
            // Only the newest run of each container may go on: older ones still running (left
            // by an agent that lost track of them) are stopped.
            // A running run is the one that goes on, even if a newer one was created (and
            // never started, its agent gone before): that one is removed.
            found.sort_by_key(|c| {
                std::cmp::Reverse((
                    c.state == RuntimeState::Running,
                    c.metadata.attempt,
                    c.created_at,
                ))
            });
            let mut newest = HashSet::new();
            let mut containers = Vec::with_capacity(found.len());
            for container in found {
                if newest.insert(container.metadata.name.clone())
                    || container.state == RuntimeState::Exited
                {
                    containers.push(container);
                    continue;
                }
                warn!(container = %container.id, name = %container.metadata.name, "stopping an older run still going");
                rt.remove_container(&container.id).await?;
            }
            info!(pod = %format!("{}/{}", config.metadata.namespace, config.metadata.name), sandbox = %ready.id, containers = containers.len(), "adopted the pod's sandbox");
            return Ok(Sandbox {
                id: ready.id,
                ips: ready.ips,
                containers,
            });
        }
        let attempt = found.last().map_or(0, |s| s.metadata.attempt + 1);
        let config = PodSandboxConfig {
            metadata: PodSandboxMetadata {
                attempt,
                ..config.metadata
            },
            ..config
        };
        let id = rt.run_pod_sandbox(&config).await?;
        let status = rt.pod_sandbox_status(&id).await?;
        Ok(Sandbox {
            id,
            ips: status.ips,
            containers: Vec::new(),
        })
    }

    /// Removes every sandbox of the pod (stopping what still runs in them).
    async fn remove_sandboxes(&self, runtime: Option<&NodeRuntime>, uid: &str) {
        let Some(runtime) = runtime else { return };
        let mine = PodSandboxFilter {
            label_selector: [(labels::POD_UID.to_owned(), uid.to_owned())].into(),
            ..PodSandboxFilter::default()
        };
        let found = match runtime.runtime.list_pod_sandboxes(&mine).await {
            Ok(found) => found,
            Err(error) => {
                warn!(%uid, %error, "cannot list the pod's sandboxes");
                return;
            }
        };
        for sandbox in found {
            if let Err(error) = runtime.runtime.remove_pod_sandbox(&sandbox.id).await {
                warn!(%uid, sandbox = %sandbox.id, %error, "cannot remove the pod's sandbox");
            }
        }
    }

    /// Retries `op` with back-off until it succeeds or the pod vanishes / the agent stops.
    async fn retry<F, Fut>(&self, op: F) -> Option<()>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), kube::Error>>,
    {
        let mut delay = None;
        loop {
            match op().await {
                Ok(()) => return Some(()),
                Err(error) => {
                    let next = self.ctx.timing.api.next(delay);
                    delay = Some(next);
                    warn!(%error, retry_in = ?next, "api call failed");
                    tokio::select! {
                        _ = tokio::time::sleep(next) => {}
                        _ = self.vanished.cancelled() => return None,
                        _ = self.shutdown.cancelled() => return None,
                    }
                }
            }
        }
    }

    async fn write_status(
        &self,
        namespace: &str,
        name: &str,
        status: &k8s_openapi::api::core::v1::PodStatus,
    ) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            // The pod is gone: the watch will tell the worker.
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn delete_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            // Gone already, or replaced by a pod of the same name (uid precondition failed).
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn remove_pod_dirs(&self, namespace: &str, name: &str, uid: &str) {
        let dirs = [
            self.ctx.pods_dir.join(uid),
            pod_log_dir(self.ctx.logs.root(), namespace, name, uid),
        ];
        for dir in dirs {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => warn!(path = %dir.display(), %error, "cannot remove pod directory"),
            }
        }
    }

    /// The runtime for `runtimeClassName`: a runtime whose handler has that name, else the
    /// handler of the RuntimeClass of that name. No class: the first runtime.
    async fn select_runtime(&self, class: Option<&str>) -> Result<Arc<NodeRuntime>, String> {
        let by_handler = |handler: &str| {
            self.ctx
                .runtimes
                .iter()
                .find(|r| r.runtime.handler() == handler)
                .cloned()
        };
        let Some(class) = class else {
            return self
                .ctx
                .runtimes
                .first()
                .cloned()
                .ok_or_else(|| "no container runtime on this node".to_owned());
        };
        if let Some(runtime) = by_handler(class) {
            return Ok(runtime);
        }
        let api: Api<RuntimeClass> = Api::all(self.ctx.client.clone());
        match api.get_opt(class).await {
            Ok(Some(rc)) => by_handler(&rc.handler).ok_or_else(|| {
                format!(
                    "runtime handler {:?} is not available on this node",
                    rc.handler
                )
            }),
            Ok(None) => Err(format!("RuntimeClass {class:?} not found")),
            Err(error) => Err(format!("cannot read RuntimeClass {class:?}: {error}")),
        }
    }
}

async fn sleep_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `deletionGracePeriodSeconds`, else `terminationGracePeriodSeconds`, else 30 s.
pub(crate) fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn create_volumes(dir: &std::path::Path, names: &[String]) -> std::io::Result<()> {
    for name in names {
        std::fs::create_dir_all(dir.join(name))?;
    }
    Ok(())
}

/// Reads the ConfigMaps and Secrets a container refers to; absent ones are left out.
async fn fetch_sources(
    client: &kube::Client,
    namespace: &str,
    refs: &BTreeSet<(SourceKind, String)>,
) -> Result<Sources, ConfigError> {
    let failed = |e: kube::Error| ConfigError::Unsupported(format!("cannot read {namespace}: {e}"));
    let mut sources = Sources::default();
    for (kind, name) in refs {
        match kind {
            SourceKind::ConfigMap => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                if let Some(cm) = api.get_opt(name).await.map_err(failed)? {
                    let mut data: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    data.extend(
                        cm.binary_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0)),
                    );
                    sources.config_maps.insert(name.clone(), data);
                }
            }
            SourceKind::Secret => {
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                if let Some(secret) = api.get_opt(name).await.map_err(failed)? {
                    let mut data: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect();
                    data.extend(
                        secret
                            .string_data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes())),
                    );
                    sources.secrets.insert(name.clone(), data);
                }
            }
        }
    }
    Ok(sources)
}

/// One container of a pod: its pull/start/wait/restart loop.
struct ContainerRun {
    ctx: Arc<PodsContext>,
    pod: Arc<Pod>,
    index: usize,
    runtime: Arc<NodeRuntime>,
    sandbox_id: String,
    pod_ip: String,
    /// A container of this run the runtime already runs (after an agent restart).
    adopted: Option<String>,
    states: watch::Sender<Vec<ContainerStatus>>,
    stop: watch::Receiver<Option<Duration>>,
    volumes_dir: PathBuf,
}

impl ContainerRun {
    /// Records an event about this container (the pod, `spec.containers{name}`).
    fn event(&self, type_: shoal_events::EventType, reason: &str, message: String) {
        let mut object = shoal_events::reference(self.pod.as_ref());
        if let Some(c) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.get(self.index))
        {
            object.field_path = Some(format!("spec.containers{{{}}}", c.name));
        }
        self.ctx.events.record(&object, type_, reason, message);
    }
}

/// Resolves with the grace period once the pod's containers must stop.
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    loop {
        if let Some(grace) = *stop.borrow_and_update() {
            return grace;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ContainerRun {
    fn update(&self, f: impl FnOnce(&mut ContainerStatus)) {
        self.states.send_modify(|states| {
            if let Some(s) = states.get_mut(self.index) {
                f(s);
            }
        });
    }

    fn current(&self) -> ContainerStatus {
        self.states
            .borrow()
            .get(self.index)
            .cloned()
            .unwrap_or_default()
    }

    /// Sleeps `delay` unless asked to stop first; returns false when stopping.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop_requested(&mut self.stop) => false,
        }
    }

    async fn run(mut self) {
        let (namespace, pod_name, uid) = spec::pod_identity(&self.pod);
        let spec = self.pod.spec.clone().unwrap_or_default();
        let Some(container) = spec.containers.get(self.index).cloned() else {
            return;
        };
        let name = container.name.clone();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".to_owned());
        let key = format!("{namespace}/{pod_name}/{name}");
        let mut pull_delay: Option<Duration> = None;
        let mut crash_delay: Option<Duration> = None;
        let mut config_delay: Option<Duration> = None;
        loop {
            let (container_id, started_at, ran_since, mount_fds, live) = match self.adopted.take() {
                Some(id) => {
                    // A container the runtime kept running across an agent restart.
                    let started_at = self
                        .runtime
                        .runtime
                        .container_status(&id)
                        .await
                        .ok()
                        .and_then(|s| s.started_at)
                        .and_then(|t| Timestamp::try_from(t).ok())
                        .unwrap_or_else(Timestamp::now);
                    info!(container = %key, %id, "adopted running container");
                    (id, started_at, Instant::now(), Vec::new(), None)
                }
                None => {
                    let Some(launched) = self
                        .launch(
                            &container,
                            &key,
                            &mut pull_delay,
                            &mut config_delay,
                            &mut crash_delay,
                        )
                        .await
                    else {
                        return;
                    };
                    match launched {
                        Launched::Started { id, fds, live } => {
                            let started_at = Timestamp::now();
                            self.event(Normal, "Started", format!("Started container {name}"));
                            (id, started_at, Instant::now(), fds, Some(live))
                        }
                        Launched::Retry => continue,
                        Launched::Failed => return,
                    }
                }
            };
            config_delay = None;
            let status_id = format!("{}://{container_id}", self.runtime.runtime.handler());
            self.update(|s| {
                s.state = Some(status::running(started_at));
                s.ready = true;
                s.started = Some(true);
                s.container_id = Some(status_id.clone());
            });
            let live = match live {
                Some(live) => Some(live),
                None => self
                    .log_path(&container_id)
                    .await
                    .map(|p| self.ctx.logs.live(&p)),
            };

            // Wait.
            let rt = Arc::clone(&self.runtime);
            let (exit, stopping) = tokio::select! {
                exit = rt.wait_exited(&container_id) => (exit, false),
                grace = stop_requested(&mut self.stop) => {
                    self.event(Normal, "Killing", format!("Stopping container {name}"));
                    let exit = match rt.runtime.stop_container(&container_id, grace).await {
                        Ok(()) => rt.wait_exited(&container_id).await,
                        Err(e) => Err(e),
                    };
                    (exit, true)
                }
            };
            // The run's output is complete: followers end now, not after a back-off.
            drop(live);
            drop(mount_fds);
            let finished_at = Timestamp::now();
            let (exit_code, reason, message, finished_at) = match exit {
                Ok(exit) => (
                    exit.exit_code,
                    exit.reason,
                    Some(exit.message).filter(|m| !m.is_empty()),
                    exit.finished_at
                        .and_then(|t| Timestamp::try_from(t).ok())
                        .unwrap_or(finished_at),
                ),
                Err(error) => (
                    137,
                    "ContainerStatusUnknown".to_owned(),
                    Some(format!("the runtime lost the container: {error}")),
                    finished_at,
                ),
            };
            info!(container = %key, exit_code, %reason, "container exited");
            let ended = status::terminated(
                exit_code,
                &reason,
                message,
                Some(started_at),
                finished_at,
                Some(status_id.clone()),
            );
            if stopping || !should_restart(&policy, exit_code) {
                self.update(|s| {
                    s.state = Some(ended);
                    s.ready = false;
                    s.started = Some(false);
                });
                return;
            }
            let delay = self
                .ctx
                .timing
                .crash
                .restart_delay(crash_delay, ran_since.elapsed());
            crash_delay = Some(delay);
            let message = format!(
                "back-off {} restarting failed container={name} pod={pod_name}",
                format_go_duration(delay)
            );
            self.event(
                Warning,
                "BackOff",
                format!("Back-off restarting failed container {name} in pod {pod_name}_{namespace}({uid})"),
            );
            self.update(|s| {
                s.last_state = Some(ended);
                s.restart_count += 1;
                s.state = Some(status::waiting("CrashLoopBackOff", Some(message)));
                s.ready = false;
                s.started = Some(false);
            });
            if !self.pause(delay).await {
                return;
            }
        }
    }

    /// The absolute path of a container's log file, as the runtime reports it.
    async fn log_path(&self, id: &str) -> Option<PathBuf> {
        self.runtime
            .runtime
            .container_status(id)
            .await
            .ok()
            .map(|s| s.log_path)
    }

    /// Makes the image present per the pull policy; `None` when the pod stops first.
    async fn ensure_image(
        &mut self,
        container: &Container,
        key: &str,
        pull_delay: &mut Option<Duration>,
    ) -> Option<String> {
        let image = container.image.clone().unwrap_or_default();
        let policy = spec::pull_policy(container);
        loop {
            let rt = Arc::clone(&self.runtime.runtime);
            if policy != PullPolicy::Always {
                let present = tokio::select! {
                    r = rt.image_status(&image) => r,
                    _ = stop_requested(&mut self.stop) => return None,
                };
                if let Ok(Some(found)) = present {
                    *pull_delay = None;
                    self.event(
                        Normal,
                        "Pulled",
                        format!("Container image {image:?} already present on machine"),
                    );
                    return Some(found.id);
                }
            }
            let delay = self.ctx.timing.pull.next(*pull_delay);
            *pull_delay = Some(delay);
            if policy == PullPolicy::Never {
                let message =
                    format!("Container image {image:?} is not present with pull policy of Never");
                self.event(Warning, "ErrImageNeverPull", message.clone());
                self.update(|s| {
                    s.state = Some(status::waiting("ErrImageNeverPull", Some(message)))
                });
                if !self.pause(delay).await {
                    return None;
                }
                continue;
            }
            self.event(Normal, "Pulling", format!("Pulling image {image:?}"));
            let pull_started = Instant::now();
            let pulled = tokio::select! {
                r = rt.pull_image(&image, None) => r,
                _ = stop_requested(&mut self.stop) => return None,
            };
            let error = match pulled {
                Ok(image_id) => {
                    *pull_delay = None;
                    let took = pull_started.elapsed().as_secs_f64();
                    let message = format!("Successfully pulled image {image:?} in {took:.3}s");
                    self.event(Normal, "Pulled", message);
                    return Some(image_id);
                }
                Err(error) => error,
            };
            self.event(
                Warning,
                "Failed",
                format!("Failed to pull image {image:?}: {error}"),
            );
            self.event(Warning, "Failed", format!("Error: {}", error.reason()));
            warn!(container = %key, %error, retry_in = ?delay, "cannot pull image");
            let message = error.to_string();
            self.update(|s| s.state = Some(status::waiting(error.reason(), Some(message.clone()))));
            if matches!(error, RuntimeError::InvalidImageName { .. }) {
                // Retrying cannot help; wait for the pod to go away.
                stop_requested(&mut self.stop).await;
                return None;
            }
            let first = (delay / 2).min(Duration::from_secs(2));
            if !self.pause(first).await {
                return None;
            }
            if matches!(error, RuntimeError::ImagePull { .. }) {
                self.event(
                    Normal,
                    "BackOff",
                    format!("Back-off pulling image {image:?}"),
                );
                let message = format!("Back-off pulling image {image:?}: {message}");
                self.update(|s| s.state = Some(status::waiting("ImagePullBackOff", Some(message))));
            }
            if !self.pause(delay.saturating_sub(first)).await {
                return None;
            }
        }
    }

    /// Pulls, configures, creates and starts one run of the container. `None` when the pod
    /// stops first.
    async fn launch(
        &mut self,
        container: &Container,
        key: &str,
        pull_delay: &mut Option<Duration>,
        config_delay: &mut Option<Duration>,
        crash_delay: &mut Option<Duration>,
    ) -> Option<Launched> {
        let name = container.name.clone();
        let (namespace, pod_name, uid) = spec::pod_identity(&self.pod);
        let policy = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".to_owned());
        let image_id = self.ensure_image(container, key, pull_delay).await?;
        self.update(|s| s.image_id.clone_from(&image_id));

        // Configuration.
        let downward = DownwardValues {
            pod_ip: self.pod_ip.clone(),
            host_ip: self.ctx.host_ip.clone(),
        };
        let refs = spec::referenced_sources(&self.pod, container);
        let sources = if refs.is_empty() {
            Ok(Sources::default())
        } else {
            tokio::select! {
                r = fetch_sources(&self.ctx.client, &namespace, &refs) => r,
                _ = stop_requested(&mut self.stop) => return None,
            }
        };
        let config = sources.and_then(|sources| {
            let env = spec::container_env(&self.pod, container, &downward, &sources)?;
            let (command, args) = spec::container_command(container, &env);
            let planned = spec::container_mounts(&self.pod, container, &self.volumes_dir)?;
            let limits = spec::container_limits(container)?;
            let files = spec::projected_files(&self.pod, container, &sources)?;
            volumes::write_projected(&self.volumes_dir, &files)
                .map_err(|e| ConfigError::Unsupported(format!("cannot write volume files: {e}")))?;
            // After the files: a subPath may name a directory of a ConfigMap volume.
            let mounts = volumes::resolve_mounts(&planned, &self.ctx.data_dir)?;
            Ok((env, command, args, mounts, limits))
        });
        // `fds` keep the mounts' `/proc/self/fd` paths valid: the runtime may open them again
        // after `start` returns, so they live as long as the container.
        let (envs, command, args, ResolvedMounts { mounts, fds }, resources) = match config {
            Ok(config) => config,
            Err(error) => {
                let delay = self.ctx.timing.pull.next(*config_delay);
                *config_delay = Some(delay);
                warn!(container = %key, %error, "invalid container configuration");
                self.event(Warning, "Failed", format!("Error: {error}"));
                self.update(|s| {
                    s.state = Some(status::waiting(
                        "CreateContainerConfigError",
                        Some(error.to_string()),
                    ))
                });
                return self.pause(delay).await.then_some(Launched::Retry);
            }
        };

        // Create and start.
        let restart_count = self.current().restart_count;
        let attempt = u32::try_from(restart_count).unwrap_or(0);
        let log_path = PathBuf::from(&name).join(format!("{restart_count}.log"));
        // Followers that find the new file before the container starts wait for its output.
        let live = self
            .ctx
            .logs
            .live(&pod_log_dir(self.ctx.logs.root(), &namespace, &pod_name, &uid).join(&log_path));
        let container_labels: BTreeMap<String, String> = [
            (labels::POD_NAME, pod_name),
            (labels::POD_NAMESPACE, namespace.clone()),
            (labels::POD_UID, uid),
            (labels::CONTAINER_NAME, name.clone()),
        ]
        .into_iter()
        .map(|(label, value)| (label.to_owned(), value))
        .collect();
        let config = ContainerConfig {
            metadata: ContainerMetadata {
                name: name.clone(),
                attempt,
            },
            image: image_id,
            command,
            args,
            working_dir: container.working_dir.clone(),
            envs,
            mounts,
            labels: container_labels,
            annotations: BTreeMap::new(),
            log_path,
            resources,
            ports: spec::container_ports(container),
        };
        let rt = Arc::clone(&self.runtime.runtime);
        let sandbox_id = self.sandbox_id.clone();
        let created = tokio::select! {
            r = rt.create_container(&sandbox_id, &config) => r,
            _ = stop_requested(&mut self.stop) => return None,
        };
        let started = match created {
            Ok(id) => {
                self.event(Normal, "Created", format!("Created container {name}"));
                self.remove_previous(&id).await;
                match rt.start_container(&id).await {
                    Ok(()) => Ok(id),
                    Err(error) => {
                        let _ = rt.remove_container(&id).await;
                        Err(error)
                    }
                }
            }
            Err(error) => Err(error),
        };
        let error = match started {
            Ok(id) => {
                info!(container = %key, %id, "container started");
                return Some(Launched::Started { id, fds, live });
            }
            Err(error) => error,
        };
        warn!(container = %key, %error, "cannot start container");
        let message = error.to_string();
        self.event(Warning, "Failed", format!("Error: {message}"));
        if matches!(error, RuntimeError::StartContainer { .. }) && !should_restart(&policy, 128) {
            let now = Timestamp::now();
            self.update(|s| {
                s.state = Some(status::terminated(
                    128,
                    "StartError",
                    Some(message),
                    None,
                    now,
                    None,
                ));
            });
            return Some(Launched::Failed);
        }
        let delay = self.ctx.timing.crash.next(*crash_delay);
        *crash_delay = Some(delay);
        self.update(|s| s.state = Some(status::waiting(error.reason(), Some(message))));
        self.pause(delay).await.then_some(Launched::Retry)
    }

    /// Removes this container's earlier runs from the runtime, keeping the newest exited one
    /// besides `current` (as the kubelet keeps one dead container for `--previous`; the log
    /// files stay either way).
    async fn remove_previous(&self, current: &str) {
        let Some(name) = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.get(self.index))
            .map(|c| c.name.clone())
        else {
            return;
        };
        let filter = ContainerFilter {
            sandbox_id: Some(self.sandbox_id.clone()),
            label_selector: [(labels::CONTAINER_NAME.to_owned(), name)].into(),
            ..ContainerFilter::default()
        };
        let Ok(mut earlier) = self.runtime.runtime.list_containers(&filter).await else {
            return;
        };
        earlier.retain(|c| c.id != current && c.state != RuntimeState::Running);
        earlier.sort_by_key(|c| std::cmp::Reverse((c.metadata.attempt, c.created_at)));
        for old in earlier.iter().skip(1) {
            if let Err(error) = self.runtime.runtime.remove_container(&old.id).await {
                warn!(container = %old.id, %error, "cannot remove an earlier run of a container");
            }
        }
    }
}

/// How one attempt to launch a container ended.
enum Launched {
    Started {
        id: String,
        fds: Vec<std::os::fd::OwnedFd>,
        /// Marks the run's log file live for followers, from before its creation.
        live: LiveLog,
    },
    /// Waited out a back-off after a failure: try again.
    Retry,
    /// Failed for good (terminated status recorded).
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn recorded(state: ContainerState, restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: "c".into(),
            image: "img".into(),
            state: Some(state),
            restart_count: restarts,
            ready: true,
            ..ContainerStatus::default()
        }
    }

    fn summary(r: &Resume) -> String {
        let (kind, s) = match r {
            Resume::Start(s) => ("start", s),
            Resume::Done(s) => ("done", s),
            Resume::Adopt(s, _) => ("adopt", s),
        };
        let state = s.state.clone().unwrap_or_default();
        let state = if let Some(w) = state.waiting {
            format!("waiting {}", w.reason.unwrap_or_default())
        } else if let Some(t) = state.terminated {
            format!(
                "terminated {} {}",
                t.exit_code,
                t.reason.unwrap_or_default()
            )
        } else if state.running.is_some() {
            "running".to_owned()
        } else {
            "none".to_owned()
        };
        let last = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| format!(" last={}", t.exit_code))
            .unwrap_or_default();
        format!("{kind} {state} restarts={}{last}", s.restart_count)
    }

    #[test]
    fn resume_from_recorded_status() {
        let now = ts("2026-11-23T20:00:00Z");
        let run = status::running(ts("2026-11-23T19:00:00Z"));
        let done0 = status::terminated(0, "Completed", None, None, now, None);
        let done1 = status::terminated(1, "Error", None, None, now, None);
        let crash = status::waiting("CrashLoopBackOff", None);
        let cases: [(Option<ContainerStatus>, &str, bool, &str); 8] = [
            (
                None,
                "Always",
                false,
                "start waiting ContainerCreating restarts=0",
            ),
            (None, "Always", true, "done none restarts=0"),
            (
                Some(recorded(run.clone(), 2)),
                "Always",
                false,
                "start waiting ContainerCreating restarts=3 last=137",
            ),
            (
                Some(recorded(run, 0)),
                "Never",
                false,
                "done terminated 137 ContainerStatusUnknown restarts=0",
            ),
            (
                Some(recorded(done0.clone(), 0)),
                "OnFailure",
                false,
                "done terminated 0 Completed restarts=0",
            ),
            (
                Some(recorded(done1.clone(), 0)),
                "OnFailure",
                false,
                "start waiting ContainerCreating restarts=1 last=1",
            ),
            (
                Some(recorded(done1, 0)),
                "Always",
                true,
                "done terminated 1 Error restarts=0",
            ),
            (
                Some(recorded(crash, 4)),
                "Always",
                false,
                "start waiting ContainerCreating restarts=4",
            ),
        ];
        for (rec, policy, terminal, want) in cases {
            let got = resume("c", "img", rec.as_ref(), policy, terminal, now);
            assert_eq!(summary(&got), want, "{rec:?} {policy} {terminal}");
        }
    }

    #[tokio::test]
    async fn ended_workers_are_reported_with_their_pod() {
        let mut tasks = WorkerTasks::default();
        tasks.spawn("u1".into(), "ns/done".into(), async {});
        tasks.spawn("u2".into(), "ns/broken".into(), async {
            panic!("worker bug");
        });
        let mut ended = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let panicked = joined.failure.is_some_and(|e| e.is_panic());
            ended.push((joined.uid, joined.key, panicked));
        }
        ended.sort();
        assert_eq!(
            ended,
            [
                ("u1".to_owned(), "ns/done".to_owned(), false),
                ("u2".to_owned(), "ns/broken".to_owned(), true)
            ]
        );
        assert!(tasks.pods.is_empty());
    }

    fn observed(id: &str, state: RuntimeState, exit_code: i32) -> RuntimeContainer {
        RuntimeContainer {
            id: id.to_owned(),
            sandbox_id: "s".to_owned(),
            metadata: shoal_runtime::ContainerMetadata {
                name: "c".to_owned(),
                attempt: 2,
            },
            state,
            created_at: std::time::SystemTime::UNIX_EPOCH,
            started_at: Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(100)),
            finished_at: Some(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(200)),
            exit_code,
            image: "i".to_owned(),
            reason: "Error".to_owned(),
            message: "it broke".to_owned(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            log_path: PathBuf::from("/logs/c/2.log"),
        }
    }

    #[test]
    fn runtime_state_corrects_the_recorded_one() {
        let mut running = recorded(status::running(ts("2026-01-01T00:00:00Z")), 2);
        running.container_id = Some("wasmtime://c2".to_owned());
        let adopt = |recorded: Option<&ContainerStatus>, observed: &RuntimeContainer, terminal| {
            adopt("wasmtime", "c", recorded, Some(observed), terminal)
        };
        // Still running in the runtime: adopted, with the runtime's start time.
        let Some(Ok(Resume::Adopt(adopted, id))) = adopt(
            Some(&running),
            &observed("c2", RuntimeState::Running, 0),
            false,
        ) else {
            panic!("not adopted");
        };
        assert_eq!(id, "c2");
        assert_eq!(
            summary(&Resume::Adopt(adopted, id)),
            "adopt running restarts=2"
        );
        // A newer run than the record knows (the previous agent stopped before writing it):
        // adopted too, with its attempt as the restart count.
        let mut newer = observed("c3", RuntimeState::Running, 0);
        newer.metadata.attempt = 3;
        let Some(Ok(Resume::Adopt(adopted, id))) = adopt(Some(&running), &newer, false) else {
            panic!("newer run not adopted");
        };
        assert_eq!((id.as_str(), adopted.restart_count), ("c3", 3));
        assert_eq!(adopted.container_id.as_deref(), Some("wasmtime://c3"));
        // Nothing recorded at all: adopted just the same.
        assert!(matches!(
            adopt(None, &newer, false),
            Some(Ok(Resume::Adopt(_, _)))
        ));
        // Exited while the agent was away: its real exit, not ContainerStatusUnknown.
        let Some(Err(exited)) = adopt(
            Some(&running),
            &observed("c2", RuntimeState::Exited, 3),
            false,
        ) else {
            panic!("not corrected");
        };
        let t = exited.state.and_then(|s| s.terminated).expect("terminated");
        assert_eq!((t.exit_code, t.reason.as_deref()), (3, Some("Error")));
        assert_eq!(t.message.as_deref(), Some("it broke"));
        // The record already says how that run ended, or the pod is done: the record stands.
        let mut ended = recorded(
            ContainerState {
                terminated: Some(Default::default()),
                ..ContainerState::default()
            },
            2,
        );
        ended.container_id = Some("wasmtime://c2".to_owned());
        assert!(
            adopt(
                Some(&ended),
                &observed("c2", RuntimeState::Exited, 3),
                false
            )
            .is_none()
        );
        // ... or as the last state of a container waiting out its back-off (not counted twice).
        let mut backing_off = recorded(status::waiting("CrashLoopBackOff", None), 3);
        backing_off.container_id = Some("wasmtime://c2".to_owned());
        backing_off.last_state = Some(status::terminated(
            3,
            "Error",
            None,
            None,
            ts("2026-01-01T00:00:00Z"),
            Some("wasmtime://c2".to_owned()),
        ));
        assert!(
            adopt(
                Some(&backing_off),
                &observed("c2", RuntimeState::Exited, 3),
                false
            )
            .is_none()
        );
        assert!(
            adopt(
                Some(&running),
                &observed("c2", RuntimeState::Running, 0),
                true
            )
            .is_none()
        );
    }

    #[test]
    fn restart_policies() {
        assert!(should_restart("Always", 0));
        assert!(should_restart("Always", 1));
        assert!(!should_restart("OnFailure", 0));
        assert!(should_restart("OnFailure", 2));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn grace_periods() {
        let pod = |json: serde_json::Value| -> Pod { serde_json::from_value(json).expect("pod") };
        assert_eq!(
            grace_period(&pod(
                serde_json::json!({"metadata": {}, "spec": {"containers": []}})
            )),
            Duration::from_secs(30)
        );
        assert_eq!(
            grace_period(&pod(serde_json::json!({
                "metadata": {"deletionGracePeriodSeconds": 3},
                "spec": {"containers": [], "terminationGracePeriodSeconds": 60}
            }))),
            Duration::from_secs(3)
        );
        assert_eq!(
            grace_period(&pod(serde_json::json!({
                "metadata": {},
                "spec": {"containers": [], "terminationGracePeriodSeconds": 0}
            }))),
            Duration::ZERO
        );
    }
}
