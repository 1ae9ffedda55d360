//! The pods bound to this node: a watch (with a reflector) on `spec.nodeName=<node>`, and one
//! worker task per pod uid that pulls, starts, restarts and stops its containers through the
//! [`Runtime`] trait and writes the pod's status through `pods/status`.
//!
//! A worker owns its container tasks (a `JoinSet`); the watch loop owns the workers. On agent
//! shutdown the workers are dropped, which drops (and so kills) the containers, without any API
//! write: the next agent resumes the pods from their recorded status. ConfigMaps and Secrets a
//! container refers to are read when it (re)starts; their volume files are not refreshed later.
//! Probes and init containers are not handled yet.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerState, ContainerStatus, Pod, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use shoal_events::EventType::{Normal, Warning};
use shoal_runtime::{ContainerSpec, LogSink, Runtime, RuntimeError};
use tokio::sync::watch;
use tokio::task::{self, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::{BackoffPolicy, format_go_duration};
use crate::logs::{LogStore, pod_log_dir};
use crate::spec::{self, ConfigError, DownwardValues, SourceKind, Sources};
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
    pub runtimes: Vec<Arc<dyn Runtime>>,
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
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = meta.name.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
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
        let now = Timestamp::now();
        // A pod deleted before this worker started (its node was away while it was evicted
        // and replaced elsewhere) is never started again: it only gets its final status.
        let deleting = meta.deletion_timestamp.is_some();
        let plans: Vec<Resume> = spec
            .containers
            .iter()
            .map(|c| {
                let plan = resume(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    recorded.iter().find(|r| r.name == c.name),
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
                Resume::Start(s) | Resume::Done(s) => s.clone(),
            })
            .collect();
        let (states_tx, mut states_rx) = watch::channel(initial);
        let (stop_tx, stop_rx) = watch::channel(None::<Duration>);
        let volumes_dir = self.ctx.pods_dir.join(&uid).join("volumes");
        let mut containers: JoinSet<()> = JoinSet::new();

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
        match (runtime, start_error) {
            (Ok(runtime), None) => {
                for (index, plan) in plans.into_iter().enumerate() {
                    let Resume::Start(_) = plan else { continue };
                    let run = ContainerRun {
                        ctx: Arc::clone(&self.ctx),
                        pod: Arc::clone(&pod),
                        index,
                        runtime: Arc::clone(&runtime),
                        states: states_tx.clone(),
                        stop: stop_rx.clone(),
                        volumes_dir: volumes_dir.clone(),
                    };
                    containers.spawn(run.run());
                }
            }
            (_, message) => {
                let message = message.unwrap_or_default();
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
                }
                _ = sleep_opt(sleep_until) => {
                    let pod = self.current();
                    let statuses = states_rx.borrow_and_update().clone();
                    let status = status::pod_status(&StatusInput {
                        pod: &pod,
                        containers: &statuses,
                        terminal: terminating && containers.is_empty(),
                        host_ip: &self.ctx.host_ip,
                        pod_ip: &self.ctx.host_ip,
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
                    pod_ip: &self.ctx.host_ip,
                    start_time,
                    now: Timestamp::now(),
                });
                if last_written.as_ref() != Some(&final_status) {
                    let _ = self
                        .retry(|| self.write_status(&namespace, &name, &final_status))
                        .await;
                }
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
    async fn select_runtime(&self, class: Option<&str>) -> Result<Arc<dyn Runtime>, String> {
        let by_handler = |handler: &str| {
            self.ctx
                .runtimes
                .iter()
                .find(|r| r.handler() == handler)
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
    runtime: Arc<dyn Runtime>,
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
        let meta = &self.pod.metadata;
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let pod_name = meta.name.clone().unwrap_or_default();
        let uid = meta.uid.clone().unwrap_or_default();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let Some(container) = spec.containers.get(self.index).cloned() else {
            return;
        };
        let name = container.name.clone();
        let image = container.image.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".to_owned());
        let key = format!("{namespace}/{pod_name}/{name}");
        let mut pull_delay: Option<Duration> = None;
        let mut crash_delay: Option<Duration> = None;
        let mut config_delay: Option<Duration> = None;
        loop {
            // Pull.
            let image_ref = loop {
                self.event(Normal, "Pulling", format!("Pulling image {image:?}"));
                let pull_started = Instant::now();
                let pulled = tokio::select! {
                    r = self.runtime.pull(&image, spec::pull_policy(&container)) => r,
                    _ = stop_requested(&mut self.stop) => return,
                };
                match pulled {
                    Ok(image_ref) => {
                        pull_delay = None;
                        let took = pull_started.elapsed().as_secs_f64();
                        let message = format!("Successfully pulled image {image:?} in {took:.3}s");
                        self.event(Normal, "Pulled", message);
                        break image_ref;
                    }
                    Err(error) => {
                        self.event(
                            Warning,
                            "Failed",
                            format!("Failed to pull image {image:?}: {error}"),
                        );
                        self.event(Warning, "Failed", format!("Error: {}", error.reason()));
                        let delay = self.ctx.timing.pull.next(pull_delay);
                        pull_delay = Some(delay);
                        warn!(container = %key, %error, retry_in = ?delay, "cannot pull image");
                        let message = error.to_string();
                        self.update(|s| {
                            s.state = Some(status::waiting(error.reason(), Some(message.clone())))
                        });
                        if matches!(error, RuntimeError::InvalidImageName { .. }) {
                            // Retrying cannot help; wait for the pod to go away.
                            stop_requested(&mut self.stop).await;
                            return;
                        }
                        let first = (delay / 2).min(Duration::from_secs(2));
                        if !self.pause(first).await {
                            return;
                        }
                        if matches!(error, RuntimeError::ImagePull { .. }) {
                            self.event(
                                Normal,
                                "BackOff",
                                format!("Back-off pulling image {image:?}"),
                            );
                            let message = format!("Back-off pulling image {image:?}: {message}");
                            self.update(|s| {
                                s.state = Some(status::waiting("ImagePullBackOff", Some(message)))
                            });
                        }
                        if !self.pause(delay.saturating_sub(first)).await {
                            return;
                        }
                    }
                }
            };
            self.update(|s| s.image_id.clone_from(&image_ref.image_id));

            // Configuration.
            let downward = DownwardValues {
                pod_ip: self.ctx.host_ip.clone(),
                host_ip: self.ctx.host_ip.clone(),
            };
            let refs = spec::referenced_sources(&self.pod, &container);
            let sources = if refs.is_empty() {
                Ok(Sources::default())
            } else {
                tokio::select! {
                    r = fetch_sources(&self.ctx.client, &namespace, &refs) => r,
                    _ = stop_requested(&mut self.stop) => return,
                }
            };
            let config = sources.and_then(|sources| {
                let env = spec::container_env(&self.pod, &container, &downward, &sources)?;
                let args = spec::container_argv(&container, &env);
                let planned = spec::container_mounts(&self.pod, &container, &self.volumes_dir)?;
                let limits = spec::container_limits(&container)?;
                let files = spec::projected_files(&self.pod, &container, &sources)?;
                volumes::write_projected(&self.volumes_dir, &files).map_err(|e| {
                    ConfigError::Unsupported(format!("cannot write volume files: {e}"))
                })?;
                // After the files: a subPath may name a directory of a ConfigMap volume.
                let mounts = volumes::resolve_mounts(&planned, &self.ctx.data_dir)?;
                Ok((env, args, mounts, limits))
            });
            // `mount_fds` keep the mounts' `/proc/self/fd` paths valid: the runtime may open
            // them again after `start` returns, so they live as long as the container.
            let (
                env,
                args,
                ResolvedMounts {
                    mounts,
                    fds: mount_fds,
                },
                limits,
            ) = match config {
                Ok(config) => config,
                Err(error) => {
                    let delay = self.ctx.timing.pull.next(config_delay);
                    config_delay = Some(delay);
                    warn!(container = %key, %error, "invalid container configuration");
                    self.event(Warning, "Failed", format!("Error: {error}"));
                    self.update(|s| {
                        s.state = Some(status::waiting(
                            "CreateContainerConfigError",
                            Some(error.to_string()),
                        ))
                    });
                    if !self.pause(delay).await {
                        return;
                    }
                    continue;
                }
            };

            // Start.
            let restart_count = self.current().restart_count;
            let writer = self
                .ctx
                .logs
                .open(&namespace, &pod_name, &uid, &name, restart_count);
            let logs: LogSink = match &writer {
                Ok(writer) => writer.sink(),
                Err(error) => {
                    warn!(container = %key, %error, "cannot open container log, output is dropped");
                    Arc::new(|_, _| {})
                }
            };
            let container_id = format!("{}://{uid}-{name}-{restart_count}", self.runtime.handler());
            let container_spec = ContainerSpec {
                id: key.clone(),
                image: image_ref,
                args,
                env,
                mounts,
                limits,
                logs,
            };
            let started = tokio::select! {
                r = self.runtime.start(container_spec) => r,
                _ = stop_requested(&mut self.stop) => return,
            };
            let mut handle = match started {
                Ok(handle) => handle,
                Err(error) => {
                    drop(writer);
                    warn!(container = %key, %error, "cannot start container");
                    let message = error.to_string();
                    self.event(Warning, "Failed", format!("Error: {message}"));
                    if matches!(error, RuntimeError::StartContainer { .. })
                        && !should_restart(&policy, 128)
                    {
                        let now = Timestamp::now();
                        self.update(|s| {
                            s.state = Some(status::terminated(
                                128,
                                "StartError",
                                Some(message),
                                None,
                                now,
                                Some(container_id.clone()),
                            ));
                            s.container_id = Some(container_id);
                        });
                        return;
                    }
                    let delay = self.ctx.timing.crash.next(crash_delay);
                    crash_delay = Some(delay);
                    self.update(|s| s.state = Some(status::waiting(error.reason(), Some(message))));
                    if !self.pause(delay).await {
                        return;
                    }
                    continue;
                }
            };
            config_delay = None;
            let started_at = Timestamp::now();
            let ran_since = Instant::now();
            info!(container = %key, %container_id, "container started");
            self.event(Normal, "Created", format!("Created container {name}"));
            self.event(Normal, "Started", format!("Started container {name}"));
            self.update(|s| {
                s.state = Some(status::running(started_at));
                s.ready = true;
                s.started = Some(true);
                s.container_id = Some(container_id.clone());
            });

            // Wait.
            let (exit, stopping) = tokio::select! {
                exit = handle.wait() => (exit, false),
                grace = stop_requested(&mut self.stop) => {
                    self.event(Normal, "Killing", format!("Stopping container {name}"));
                    (handle.stop(grace).await, true)
                }
            };
            drop(handle);
            drop(mount_fds);
            drop(writer);
            let finished_at = Timestamp::now();
            info!(container = %key, exit_code = exit.exit_code, reason = %exit.reason, "container exited");
            let ended = status::terminated(
                exit.exit_code,
                &exit.reason,
                exit.message.clone(),
                Some(started_at),
                finished_at,
                Some(container_id.clone()),
            );
            if stopping || !should_restart(&policy, exit.exit_code) {
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
