//! The scheduler's IO shell: watches, the pending queue, binding and status writes.
//!
//! One task owns the [`Snapshot`] and the [`Queue`]; bindings and status patches run as
//! spawned requests (at most [`MAX_IN_FLIGHT`] at once) whose results come back to that
//! task. A chosen node is assumed in the snapshot before the binding is sent, so the next
//! decision sees it without re-listing. It does not retry a binding the API refused with
//! a conflict (the pod was bound by someone else) or not found (the pod is gone).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::{Value, json};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::framework::{Framework, Sampling};
use crate::preemption::{Preemption, preempt};
use crate::queue::Queue;
use crate::snapshot::{Snapshot, bound_node, is_terminated, nominated_node, pod_key};
use crate::{Config, DEFAULT_SCHEDULER_NAME, Error};

/// Bindings and status patches allowed in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;

enum Outcome {
    Bound {
        key: String,
        node: String,
        result: Result<(), kube::Error>,
    },
    StatusPatched {
        key: String,
        result: Result<(), kube::Error>,
    },
    Preempted {
        victim: String,
        result: Result<(), kube::Error>,
    },
}

/// What a watcher event means for a kind the snapshot mirrors whole.
enum Change<K> {
    /// A (re)list completed: these are all the objects.
    Replace(Vec<K>),
    /// One object was added or changed.
    Apply(K),
    /// One object was deleted.
    Delete(K),
}

/// Buffers a watcher's (re)list until it completes.
struct Relist<K> {
    buffer: Vec<K>,
    synced: bool,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            buffer: Vec::new(),
            synced: false,
        }
    }
}

impl<K> Relist<K> {
    fn step(&mut self, event: Event<K>) -> Option<Change<K>> {
        match event {
            Event::Init => {
                self.buffer.clear();
                None
            }
            Event::InitApply(obj) => {
                self.buffer.push(obj);
                None
            }
            Event::InitDone => {
                self.synced = true;
                Some(Change::Replace(std::mem::take(&mut self.buffer)))
            }
            Event::Apply(obj) => Some(Change::Apply(obj)),
            Event::Delete(obj) => Some(Change::Delete(obj)),
        }
    }
}

struct Scheduler {
    name: String,
    client: kube::Client,
    snapshot: Snapshot,
    queue: Queue,
    framework: Framework,
    pods_synced: bool,
    pod_buffer: Vec<Pod>,
    nodes: Relist<Node>,
    classes: Relist<RuntimeClass>,
    pdbs: Relist<PodDisruptionBudget>,
    /// Where the next sampled decision starts (rotates through large clusters).
    next_start: Option<String>,
    /// The pod each running binding task binds, so a panicked task still releases it.
    binding_tasks: HashMap<Id, String>,
    events: shoal_events::Recorder,
}

/// Runs the scheduler until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let nodes =
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()).default_backoff();
    let pods =
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()).default_backoff();
    let classes = watcher(
        Api::<RuntimeClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let pdbs = watcher(
        Api::<PodDisruptionBudget>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let mut nodes = std::pin::pin!(nodes);
    let mut pods = std::pin::pin!(pods);
    let mut classes = std::pin::pin!(classes);
    let mut pdbs = std::pin::pin!(pdbs);
    let events = if config.record_events {
        let source = shoal_events::Source {
            component: config.scheduler_name.clone(),
            host: None,
        };
        let options = shoal_events::Options::default();
        shoal_events::Recorder::start(client.clone(), source, options, shutdown.clone())
    } else {
        shoal_events::Recorder::disabled()
    };
    let mut scheduler = Scheduler {
        events,
        name: config.scheduler_name,
        client,
        snapshot: Snapshot::new(),
        queue: Queue::new(),
        framework: Framework::new(&config.profile),
        pods_synced: false,
        pod_buffer: Vec::new(),
        nodes: Relist::default(),
        classes: Relist::default(),
        pdbs: Relist::default(),
        next_start: None,
        binding_tasks: HashMap::new(),
    };
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    info!(scheduler = %scheduler.name, "scheduler starting");
    loop {
        if scheduler.synced() {
            while tasks.len() < MAX_IN_FLIGHT && scheduler.schedule_next(&mut tasks) {}
        }
        let wakeup = scheduler.queue.next_wakeup();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            event = nodes.next() => match event {
                Some(Ok(event)) => scheduler.on_node_event(event),
                Some(Err(error)) => warn!(%error, "node watch failed"),
                None => return Err(Error::WatchEnded("nodes")),
            },
            event = pods.next() => match event {
                Some(Ok(event)) => scheduler.on_pod_event(event),
                Some(Err(error)) => warn!(%error, "pod watch failed"),
                None => return Err(Error::WatchEnded("pods")),
            },
            event = classes.next() => match event {
                Some(Ok(event)) => scheduler.on_class_event(event),
                Some(Err(error)) => warn!(%error, "runtimeclass watch failed"),
                None => return Err(Error::WatchEnded("runtimeclasses")),
            },
            event = pdbs.next() => match event {
                Some(Ok(event)) => scheduler.on_pdb_event(event),
                Some(Err(error)) => warn!(%error, "poddisruptionbudget watch failed"),
                None => return Err(Error::WatchEnded("poddisruptionbudgets")),
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => match done {
                Ok((id, outcome)) => {
                    scheduler.binding_tasks.remove(&id);
                    scheduler.on_outcome(outcome);
                }
                Err(error) => scheduler.on_task_failed(error),
            },
            () = sleep_until(wakeup), if wakeup.is_some() => scheduler.queue.wake(Instant::now()),
        }
    }
    tasks.shutdown().await;
    info!("scheduler stopped");
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Scheduler {
    fn synced(&self) -> bool {
        self.nodes.synced && self.pods_synced && self.classes.synced && self.pdbs.synced
    }

    fn on_class_event(&mut self, event: Event<RuntimeClass>) {
        match self.classes.step(event) {
            Some(Change::Replace(classes)) => {
                for name in self.snapshot.runtime_class_names() {
                    self.snapshot.remove_runtime_class(&name);
                }
                for class in &classes {
                    self.snapshot.upsert_runtime_class(class);
                }
            }
            Some(Change::Apply(class)) => self.snapshot.upsert_runtime_class(&class),
            Some(Change::Delete(class)) => {
                if let Some(name) = class.metadata.name.as_deref() {
                    self.snapshot.remove_runtime_class(name);
                }
                return;
            }
            None => return,
        }
        self.queue.request_flush();
    }

    fn on_pdb_event(&mut self, event: Event<PodDisruptionBudget>) {
        let key = |pdb: &PodDisruptionBudget| {
            format!(
                "{}/{}",
                pdb.metadata.namespace.as_deref().unwrap_or_default(),
                pdb.metadata.name.as_deref().unwrap_or_default()
            )
        };
        match self.pdbs.step(event) {
            Some(Change::Replace(pdbs)) => {
                for key in self.snapshot.pdb_keys() {
                    self.snapshot.remove_pdb(&key);
                }
                for pdb in &pdbs {
                    self.snapshot.upsert_pdb(pdb);
                }
            }
            Some(Change::Apply(pdb)) => self.snapshot.upsert_pdb(&pdb),
            Some(Change::Delete(pdb)) => self.snapshot.remove_pdb(&key(&pdb)),
            None => {}
        }
    }

    fn is_ours(&self, pod: &Pod) -> bool {
        let Some(spec) = pod.spec.as_ref() else {
            return false;
        };
        let name = spec
            .scheduler_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_SCHEDULER_NAME);
        name == self.name
            && bound_node(pod).is_none()
            && pod.metadata.deletion_timestamp.is_none()
            && !is_terminated(pod)
    }

    fn on_node_event(&mut self, event: Event<Node>) {
        match self.nodes.step(event) {
            Some(Change::Replace(nodes)) => {
                let listed: HashSet<&str> = nodes
                    .iter()
                    .filter_map(|n| n.metadata.name.as_deref())
                    .collect();
                for name in self.snapshot.node_names() {
                    if !listed.contains(name.as_str()) {
                        self.snapshot.remove_node(&name);
                    }
                }
                for node in &nodes {
                    self.snapshot.upsert_node(node);
                }
            }
            Some(Change::Apply(node)) => self.snapshot.upsert_node(&node),
            Some(Change::Delete(node)) => {
                if let Some(name) = node.metadata.name.as_deref() {
                    self.snapshot.remove_node(name);
                }
                return;
            }
            None => return,
        }
        self.queue.request_flush();
    }

    fn on_pod_event(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => self.pod_buffer.clear(),
            Event::InitApply(pod) => self.pod_buffer.push(pod),
            Event::InitDone => {
                let pods = std::mem::take(&mut self.pod_buffer);
                let listed: HashSet<String> = pods.iter().map(pod_key).collect();
                let known: Vec<String> = self
                    .snapshot
                    .pod_keys()
                    .chain(self.queue.keys())
                    .chain(self.snapshot.nominated_keys())
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for key in known {
                    self.on_pod_deleted(&key);
                }
                for pod in pods {
                    self.on_pod_applied(pod);
                }
                self.pods_synced = true;
            }
            Event::Apply(pod) => self.on_pod_applied(pod),
            Event::Delete(pod) => self.on_pod_deleted(&pod_key(&pod)),
        }
    }

    fn on_pod_applied(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        if bound_node(&pod).is_some() {
            self.queue.remove(&key);
            if self.snapshot.upsert_pod(&pod) {
                self.queue.request_flush();
            }
            return;
        }
        if self.snapshot.is_assumed(&key) {
            // Our binding is in flight or not yet visible on the watch.
            return;
        }
        if self.snapshot.upsert_pod(&pod) {
            self.queue.request_flush();
        }
        if self.is_ours(&pod) {
            self.queue.upsert(key, Arc::new(pod));
        } else {
            self.queue.remove(&key);
        }
    }

    fn on_pod_deleted(&mut self, key: &str) {
        self.queue.remove(key);
        if self.snapshot.remove_pod(key) {
            self.queue.request_flush();
        }
    }

    /// Decides for the next active pod; false when none is active.
    fn schedule_next(&mut self, tasks: &mut JoinSet<Outcome>) -> bool {
        let Some((key, pod)) = self.queue.pop() else {
            return false;
        };
        let sampling = Sampling::adaptive(self.snapshot.node_count(), self.next_start.take());
        match self.framework.schedule(&self.snapshot, &pod, &sampling) {
            Ok(placement) => {
                self.next_start = placement.last_examined;
                let node = placement.node;
                self.snapshot.assume_pod(&pod, &node);
                let client = self.client.clone();
                let task_key = key.clone();
                let events = self.events.clone();
                let handle = tasks.spawn(async move {
                    let result = bind(client, &pod, &node).await;
                    if result.is_ok() {
                        events.normal(
                            &shoal_events::reference(pod.as_ref()),
                            "Scheduled",
                            format!("Successfully assigned {task_key} to {node}"),
                        );
                    }
                    Outcome::Bound {
                        key: task_key,
                        node,
                        result,
                    }
                });
                self.binding_tasks.insert(handle.id(), key);
            }
            Err(mut fit) => {
                self.next_start = sampling.start_after;
                match preempt(&self.framework, &self.snapshot, &pod, &fit) {
                    Ok(preemption) => self.start_preemption(&pod, preemption, tasks),
                    Err(message) => {
                        fit.post_filter_message = Some(message);
                        // A nomination that preemption no longer stands behind is released,
                        // here and in the pod's status.
                        self.snapshot.clear_nomination(&key);
                        if nominated_node(&pod).is_some() {
                            self.patch_nomination(key.clone(), None, tasks);
                        }
                    }
                }
                let message = fit.to_string();
                debug!(pod = %key, %message, "pod is unschedulable");
                self.events.warning(
                    &shoal_events::reference(pod.as_ref()),
                    "FailedScheduling",
                    message.clone(),
                );
                self.queue.back_off(&key, Instant::now());
                if let Some(patch) = unschedulable_patch(&pod, &message) {
                    let api: Api<Pod> = Api::namespaced(
                        self.client.clone(),
                        pod.metadata.namespace.as_deref().unwrap_or("default"),
                    );
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    tasks.spawn(async move {
                        let result = api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map(drop);
                        Outcome::StatusPatched { key, result }
                    });
                }
            }
        }
        true
    }

    /// Nominates `pod` to the chosen node and deletes the victims (each first marked with a
    /// `DisruptionTarget` condition and given a `Preempted` Event), and withdraws the
    /// nominations of lower-priority pods on that node.
    fn start_preemption(
        &mut self,
        pod: &Arc<Pod>,
        preemption: Preemption,
        tasks: &mut JoinSet<Outcome>,
    ) {
        let key = pod_key(pod);
        let node = preemption.node;
        info!(pod = %key, %node, victims = preemption.victims.len(), "preempting");
        self.snapshot.nominate(pod, &node);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        for victim in preemption.victims {
            let client = self.client.clone();
            let events = self.events.clone();
            let message = format!("Preempted by pod {uid} on node {node}");
            tasks.spawn(async move {
                let result = evict(client, &victim, &message).await;
                if result.is_ok() {
                    let reference = ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        namespace: Some(victim.namespace.clone()),
                        name: victim.key.rsplit('/').next().map(str::to_owned),
                        uid: Some(victim.uid.clone()),
                        ..ObjectReference::default()
                    };
                    events.normal(&reference, "Preempted", message);
                }
                Outcome::Preempted {
                    victim: victim.key.clone(),
                    result,
                }
            });
        }
        let mut nominations = vec![(key.clone(), Some(node.clone()))];
        for other in preemption.lower_nominated {
            self.snapshot.clear_nomination(&other);
            nominations.push((other, None));
        }
        for (key, node) in nominations {
            self.patch_nomination(key, node, tasks);
        }
    }

    /// Writes (or, with `None`, clears) a pod's `status.nominatedNodeName`.
    fn patch_nomination(&self, key: String, node: Option<String>, tasks: &mut JoinSet<Outcome>) {
        let Some((namespace, name)) = key.split_once('/') else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let name = name.to_owned();
        let patch = json!({"status": {"nominatedNodeName": node}});
        tasks.spawn(async move {
            let result = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop);
            Outcome::StatusPatched { key, result }
        });
    }

    /// A binding or status task panicked: a binding's pod loses its assumption and retries.
    fn on_task_failed(&mut self, error: JoinError) {
        match self.binding_tasks.remove(&error.id()) {
            Some(key) => {
                error!(pod = %key, %error, "binding task failed, will retry");
                self.snapshot.forget_pod(&key);
                self.queue.back_off(&key, Instant::now());
            }
            None => error!(%error, "status patch task failed"),
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Bound {
                key,
                node,
                result: Ok(()),
            } => {
                debug!(pod = %key, %node, "bound pod");
                self.queue.remove(&key);
            }
            Outcome::Bound {
                key,
                node,
                result: Err(error),
            } => {
                self.snapshot.forget_pod(&key);
                if is_status(&error, 409) || is_status(&error, 404) {
                    debug!(pod = %key, %node, %error, "binding refused, dropping pod");
                    self.queue.remove(&key);
                } else {
                    warn!(pod = %key, %node, %error, "binding failed, will retry");
                    self.queue.back_off(&key, Instant::now());
                }
            }
            Outcome::StatusPatched { result: Ok(()), .. } => {}
            Outcome::Preempted { result: Ok(()), .. } => {}
            Outcome::Preempted {
                victim,
                result: Err(error),
            } => {
                if !is_status(&error, 404) {
                    warn!(pod = %victim, %error, "could not delete preemption victim");
                }
            }
            Outcome::StatusPatched {
                key,
                result: Err(error),
            } => {
                if !is_status(&error, 404) {
                    warn!(pod = %key, %error, "could not record unschedulable condition");
                }
            }
        }
    }
}

fn is_status(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Marks a victim with `DisruptionTarget` (reason `PreemptionByScheduler`) and deletes it
/// with its own grace period.
async fn evict(
    client: kube::Client,
    victim: &crate::snapshot::PodInfo,
    message: &str,
) -> Result<(), kube::Error> {
    let name = victim.key.rsplit('/').next().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client, &victim.namespace);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": message,
        "lastTransitionTime": now(),
    }]}});
    // A strategic merge keys conditions by type, keeping the others.
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&condition))
        .await?;
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some(victim.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    api.delete(name, &params).await.map(drop)
}

async fn bind(client: kube::Client, pod: &Pod, node: &str) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client, namespace);
    match api
        .create_subresource::<_, serde::de::IgnoredAny>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        // The request succeeded; only the (unused) response body was not JSON.
        Ok(_) | Err(kube::Error::SerdeError(_)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The merge patch for `pods/status` that records `message` in a `PodScheduled=False`
/// condition (reason `Unschedulable`), keeping the other conditions; `None` when the pod
/// already says exactly that.
pub fn unschedulable_patch(pod: &Pod, message: &str) -> Option<Value> {
    let conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let current = conditions.iter().find(|c| c.type_ == "PodScheduled");
    if current.is_some_and(|c| {
        c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && c.message.as_deref() == Some(message)
    }) {
        return None;
    }
    let transition = match current {
        Some(c) if c.status == "False" => c
            .last_transition_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_else(now),
        _ => now(),
    };
    let mut list: Vec<Value> = conditions
        .iter()
        .filter(|c| c.type_ != "PodScheduled")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    list.push(json!({
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    }));
    Some(json!({"status": {"conditions": list}}))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unschedulable_patch_only_when_changed() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "old", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        }))
        .expect("pod");
        assert_eq!(unschedulable_patch(&pod, "old"), None);
        let patch = unschedulable_patch(&pod, "new").expect("changed");
        let conditions = &patch["status"]["conditions"];
        assert_eq!(conditions[0]["type"], "Initialized");
        assert_eq!(conditions[1]["message"], "new");
        assert_eq!(conditions[1]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        let fresh = unschedulable_patch(&Pod::default(), "m").expect("new condition");
        assert_eq!(fresh["status"]["conditions"][0]["reason"], "Unschedulable");
    }

    #[tokio::test]
    async fn panicked_binding_releases_pod() {
        let uri = "http://127.0.0.1:9".parse().expect("uri");
        let client = kube::Client::try_from(kube::Config::new(uri)).expect("client");
        let mut scheduler = Scheduler {
            name: DEFAULT_SCHEDULER_NAME.to_owned(),
            client,
            snapshot: Snapshot::new(),
            queue: Queue::new(),
            framework: Framework::default(),
            pods_synced: true,
            pod_buffer: Vec::new(),
            nodes: Relist {
                synced: true,
                ..Relist::default()
            },
            classes: Relist {
                synced: true,
                ..Relist::default()
            },
            pdbs: Relist {
                synced: true,
                ..Relist::default()
            },
            next_start: None,
            binding_tasks: HashMap::new(),
            events: shoal_events::Recorder::disabled(),
        };
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "p"},
            "spec": {"containers": []}
        }))
        .expect("pod");
        let key = pod_key(&pod);
        scheduler.queue.upsert(key.clone(), Arc::new(pod.clone()));
        assert!(scheduler.queue.pop().is_some());
        scheduler.snapshot.assume_pod(&pod, "n");
        let mut tasks: JoinSet<Outcome> = JoinSet::new();
        let handle = tasks.spawn(async { panic!("boom") });
        scheduler.binding_tasks.insert(handle.id(), key.clone());
        let error = tasks
            .join_next()
            .await
            .expect("one task")
            .err()
            .expect("panicked");
        scheduler.on_task_failed(error);
        assert!(!scheduler.snapshot.is_assumed(&key));
        assert!(scheduler.binding_tasks.is_empty());
        assert!(scheduler.queue.next_wakeup().is_some(), "pod backs off");
    }
}
