//! The garbage collector: deletes objects whose owners are gone, and carries out
//! foreground and orphan deletion of owners.
//!
//! It keeps a graph of owner references (owner uid to dependents) built from the shared
//! watches of Pods, ReplicaSets and Deployments. An object is examined when its owner
//! references change, when one of its owners is deleted, and after every re-list. The
//! decision for one object is the plain function [`decide`]; an owner missing from the
//! stores is confirmed with a live GET before anything is deleted, because the stores of
//! different kinds lag independently. Owners of kinds it does not watch are assumed to
//! exist: it never deletes on a guess.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::Error;
use crate::informer::Change;

/// Finalizer that makes an owner wait for its blocking dependents.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer that makes the collector orphan an owner's dependents.
pub const ORPHAN: &str = "orphan";
/// Items examined at once.
const WORKERS: usize = 16;

/// The kinds the collector watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// core/v1 Pod.
    Pod,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// apps/v1 Deployment.
    Deployment,
}

impl Kind {
    /// The kind an owner reference points to, if watched.
    pub fn of_reference(reference: &OwnerReference) -> Option<Kind> {
        match (reference.api_version.as_str(), reference.kind.as_str()) {
            ("v1", "Pod") => Some(Kind::Pod),
            ("apps/v1", "ReplicaSet") => Some(Kind::ReplicaSet),
            ("apps/v1", "Deployment") => Some(Kind::Deployment),
            _ => None,
        }
    }
}

/// A namespaced object of a watched kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What the collector knows about one owner of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// Exists and is not being deleted in the foreground.
    Solid,
    /// Gone, or replaced by an object with another uid.
    Dangling,
    /// Being deleted with the `foregroundDeletion` finalizer: waits for its dependents.
    WaitingForDependents,
}

/// What to do with an object that has owner references.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it.
    Keep,
    /// Remove the owner references with these uids (other owners still hold it).
    RemoveOwnerReferences(Vec<String>),
    /// Delete it with this propagation.
    Delete(Propagation),
}

/// Deletion propagation, as a plain value for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents go after the object.
    Background,
    /// The object waits for its dependents.
    Foreground,
    /// Dependents stay.
    Orphan,
}

/// Kubernetes' `attemptToDeleteItem` decision: an object with no solid owner left is
/// deleted (in the foreground when an owner waits for it and it has dependents of its
/// own, otherwise honouring its own finalizers); an object with a solid owner only drops
/// its references to dangling and waiting owners.
pub fn decide(
    owners: &[(String, OwnerState)],
    own_finalizers: &[String],
    has_dependents: bool,
) -> Decision {
    if owners.is_empty() {
        return Decision::Keep;
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let waiting = owners
        .iter()
        .any(|(_, s)| *s == OwnerState::WaitingForDependents);
    if solid {
        let stale: Vec<String> = owners
            .iter()
            .filter(|(_, s)| *s != OwnerState::Solid)
            .map(|(uid, _)| uid.clone())
            .collect();
        return if stale.is_empty() {
            Decision::Keep
        } else {
            Decision::RemoveOwnerReferences(stale)
        };
    }
    if waiting && has_dependents {
        return Decision::Delete(Propagation::Foreground);
    }
    let has = |f: &str| own_finalizers.iter().any(|x| x == f);
    Decision::Delete(if has(ORPHAN) {
        Propagation::Orphan
    } else if has(FOREGROUND) {
        Propagation::Foreground
    } else {
        Propagation::Background
    })
}

/// Owner references to remove from a dependent, by uid.
pub fn without_owners(meta: &ObjectMeta, uids: &[String]) -> Vec<OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .filter(|r| !uids.contains(&r.uid))
        .cloned()
        .collect()
}

/// The graph of owner references.
#[derive(Debug, Default)]
pub struct Graph {
    dependents: HashMap<String, HashSet<ObjectKey>>,
    owners_of: HashMap<ObjectKey, Vec<String>>,
    key_of: HashMap<String, ObjectKey>,
    finalizing: HashSet<ObjectKey>,
}

impl Graph {
    /// Records an object; returns the keys to examine.
    pub fn apply(&mut self, key: ObjectKey, meta: &ObjectMeta) -> Vec<ObjectKey> {
        let mut examine = Vec::new();
        if let Some(uid) = meta.uid.as_deref() {
            self.key_of.insert(uid.to_owned(), key.clone());
        }
        let owners: Vec<String> = meta
            .owner_references
            .iter()
            .flatten()
            .map(|r| r.uid.clone())
            .collect();
        let previous = self.owners_of.get(&key).cloned().unwrap_or_default();
        if previous != owners {
            for uid in &previous {
                if let Some(set) = self.dependents.get_mut(uid) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.dependents.remove(uid);
                    }
                }
            }
            for uid in &owners {
                self.dependents
                    .entry(uid.clone())
                    .or_default()
                    .insert(key.clone());
            }
            if owners.is_empty() {
                self.owners_of.remove(&key);
            } else {
                self.owners_of.insert(key.clone(), owners);
                examine.push(key.clone());
            }
        }
        let finalizing = meta.deletion_timestamp.is_some()
            && meta
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == FOREGROUND || f == ORPHAN);
        if finalizing {
            if meta.finalizers.iter().flatten().any(|f| f == FOREGROUND)
                && let Some(uid) = meta.uid.as_deref()
            {
                examine.extend(self.dependents_of(uid));
            }
            self.finalizing.insert(key.clone());
            examine.push(key);
        } else {
            self.finalizing.remove(&key);
        }
        examine
    }

    /// Forgets a deleted object; returns its dependents and owners to examine.
    pub fn delete(&mut self, key: &ObjectKey, meta: &ObjectMeta) -> Vec<ObjectKey> {
        let mut examine: Vec<ObjectKey> = Vec::new();
        if let Some(uid) = meta.uid.as_deref() {
            if self.key_of.get(uid) == Some(key) {
                self.key_of.remove(uid);
            }
            examine.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        }
        for uid in self.owners_of.remove(key).unwrap_or_default() {
            if let Some(owner) = self.key_of.get(&uid) {
                examine.push(owner.clone());
            }
            if let Some(set) = self.dependents.get_mut(&uid) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(&uid);
                }
            }
        }
        self.finalizing.remove(key);
        examine
    }

    /// Objects with owners or pending GC finalizers of a kind, for a rescan after a
    /// re-list.
    pub fn all_of(&self, kind: Kind) -> Vec<ObjectKey> {
        self.owners_of
            .keys()
            .chain(self.finalizing.iter())
            .filter(|k| k.kind == kind)
            .cloned()
            .collect()
    }

    /// Known dependents of the owner with `uid`.
    pub fn dependents_of(&self, uid: &str) -> Vec<ObjectKey> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The change streams the collector consumes.
pub struct Events {
    /// Pods.
    pub pods: UnboundedReceiver<Change<Pod>>,
    /// ReplicaSets.
    pub replicasets: UnboundedReceiver<Change<ReplicaSet>>,
    /// Deployments.
    pub deployments: UnboundedReceiver<Change<Deployment>>,
}

enum Outcome {
    Done,
    Gone,
    Requeue(Duration),
}

/// The collector: stores for lookups and a client for writes.
pub struct GarbageCollector {
    client: kube::Client,
    pods: Store<Pod>,
    replicasets: Store<ReplicaSet>,
    deployments: Store<Deployment>,
}

fn key_of<K: Resource>(kind: Kind, obj: &K) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
    }
}

impl GarbageCollector {
    /// A collector over the given stores.
    pub fn new(
        client: kube::Client,
        pods: Store<Pod>,
        replicasets: Store<ReplicaSet>,
        deployments: Store<Deployment>,
    ) -> Self {
        GarbageCollector {
            client,
            pods,
            replicasets,
            deployments,
        }
    }

    fn cached_meta(&self, key: &ObjectKey) -> Option<ObjectMeta> {
        fn get<K>(store: &Store<K>, key: &ObjectKey) -> Option<ObjectMeta>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            store
                .get(&ObjectRef::new(&key.name).within(&key.namespace))
                .map(|o| o.meta().clone())
        }
        match key.kind {
            Kind::Pod => get(&self.pods, key),
            Kind::ReplicaSet => get(&self.replicasets, key),
            Kind::Deployment => get(&self.deployments, key),
        }
    }

    async fn live_meta(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, kube::Error> {
        async fn get<K>(
            client: kube::Client,
            key: &ObjectKey,
        ) -> Result<Option<ObjectMeta>, kube::Error>
        where
            K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
                + Clone
                + DeserializeOwned
                + fmt::Debug,
        {
            let api: Api<K> = Api::namespaced(client, &key.namespace);
            Ok(api.get_opt(&key.name).await?.map(|o| o.meta().clone()))
        }
        let client = self.client.clone();
        match key.kind {
            Kind::Pod => get::<Pod>(client, key).await,
            Kind::ReplicaSet => get::<ReplicaSet>(client, key).await,
            Kind::Deployment => get::<Deployment>(client, key).await,
        }
    }

    async fn patch_meta(
        &self,
        key: &ObjectKey,
        body: serde_json::Value,
    ) -> Result<(), kube::Error> {
        async fn patch<K>(
            client: kube::Client,
            key: &ObjectKey,
            body: serde_json::Value,
        ) -> Result<(), kube::Error>
        where
            K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
                + Clone
                + DeserializeOwned
                + fmt::Debug,
        {
            let api: Api<K> = Api::namespaced(client, &key.namespace);
            api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(drop)
        }
        let client = self.client.clone();
        let result = match key.kind {
            Kind::Pod => patch::<Pod>(client, key, body).await,
            Kind::ReplicaSet => patch::<ReplicaSet>(client, key, body).await,
            Kind::Deployment => patch::<Deployment>(client, key, body).await,
        };
        ignore_not_found(result)
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        uid: Option<String>,
        propagation: Propagation,
    ) -> Result<(), kube::Error> {
        async fn delete<K>(
            client: kube::Client,
            key: &ObjectKey,
            params: &DeleteParams,
        ) -> Result<(), kube::Error>
        where
            K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
                + Clone
                + DeserializeOwned
                + fmt::Debug,
        {
            let api: Api<K> = Api::namespaced(client, &key.namespace);
            api.delete(&key.name, params).await.map(drop)
        }
        let params = DeleteParams {
            propagation_policy: Some(match propagation {
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Foreground => PropagationPolicy::Foreground,
                Propagation::Orphan => PropagationPolicy::Orphan,
            }),
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let client = self.client.clone();
        let result = match key.kind {
            Kind::Pod => delete::<Pod>(client, key, &params).await,
            Kind::ReplicaSet => delete::<ReplicaSet>(client, key, &params).await,
            Kind::Deployment => delete::<Deployment>(client, key, &params).await,
        };
        ignore_not_found(result)
    }

    async fn owner_state(
        &self,
        namespace: &str,
        reference: &OwnerReference,
    ) -> Result<OwnerState, kube::Error> {
        let Some(kind) = Kind::of_reference(reference) else {
            return Ok(OwnerState::Solid);
        };
        let key = ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: reference.name.clone(),
        };
        let state = |meta: &ObjectMeta| {
            let waiting = meta.deletion_timestamp.is_some()
                && meta.finalizers.iter().flatten().any(|f| f == FOREGROUND);
            if waiting {
                OwnerState::WaitingForDependents
            } else {
                OwnerState::Solid
            }
        };
        if let Some(meta) = self.cached_meta(&key)
            && meta.uid.as_deref() == Some(reference.uid.as_str())
        {
            return Ok(state(&meta));
        }
        // The store may lag behind a just-created owner: ask the API before deleting.
        match self.live_meta(&key).await? {
            Some(meta) if meta.uid.as_deref() == Some(reference.uid.as_str()) => Ok(state(&meta)),
            _ => Ok(OwnerState::Dangling),
        }
    }

    /// Examines one object: finishes its own foreground/orphan deletion, or collects it
    /// when its owners are gone.
    async fn attempt(&self, key: &ObjectKey, dependents: Vec<ObjectKey>) -> Result<Outcome, Error> {
        let Some(meta) = self.cached_meta(key) else {
            return Ok(Outcome::Gone);
        };
        let uid = meta.uid.clone().unwrap_or_default();
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        if meta.deletion_timestamp.is_some() {
            let dependents: Vec<(ObjectKey, ObjectMeta)> = dependents
                .into_iter()
                .filter_map(|k| {
                    let m = self.cached_meta(&k)?;
                    m.owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.uid == uid)
                        .then_some((k, m))
                })
                .collect();
            if finalizers.iter().any(|f| f == ORPHAN) {
                for (dependent, dmeta) in &dependents {
                    let patch = json!({"metadata": {
                        "ownerReferences": without_owners(dmeta, std::slice::from_ref(&uid)),
                        "resourceVersion": dmeta.resource_version,
                    }});
                    self.patch_meta(dependent, patch).await?;
                    debug!(owner = %key, dependent = %dependent, "orphaned dependent");
                }
                self.remove_finalizer(key, &meta, ORPHAN).await?;
                info!(object = %key, "orphaned dependents");
                return Ok(Outcome::Done);
            }
            if finalizers.iter().any(|f| f == FOREGROUND) {
                let blocking = dependents.iter().any(|(_, m)| {
                    m.owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
                });
                if !blocking {
                    self.remove_finalizer(key, &meta, FOREGROUND).await?;
                    info!(object = %key, "dependents gone, finished foreground deletion");
                    return Ok(Outcome::Done);
                }
                // Dependents see this owner waiting and delete themselves when examined.
                return Ok(Outcome::Requeue(Duration::from_secs(1)));
            }
            return Ok(Outcome::Done);
        }
        let references = meta.owner_references.clone().unwrap_or_default();
        if references.is_empty() {
            return Ok(Outcome::Done);
        }
        let namespace = meta.namespace.clone().unwrap_or_default();
        let mut owners = Vec::with_capacity(references.len());
        for reference in &references {
            owners.push((
                reference.uid.clone(),
                self.owner_state(&namespace, reference).await?,
            ));
        }
        match decide(&owners, &finalizers, !dependents.is_empty()) {
            Decision::Keep => {}
            Decision::RemoveOwnerReferences(uids) => {
                let patch = json!({"metadata": {
                    "ownerReferences": without_owners(&meta, &uids),
                    "resourceVersion": meta.resource_version,
                }});
                self.patch_meta(key, patch).await?;
                info!(object = %key, "removed references to deleted owners");
            }
            Decision::Delete(propagation) => {
                self.delete(key, meta.uid.clone(), propagation).await?;
                info!(object = %key, ?propagation, "deleted object whose owners are gone");
            }
        }
        Ok(Outcome::Done)
    }

    async fn remove_finalizer(
        &self,
        key: &ObjectKey,
        meta: &ObjectMeta,
        finalizer: &str,
    ) -> Result<(), kube::Error> {
        let remaining: Vec<&String> = meta
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": meta.resource_version}});
        self.patch_meta(key, patch).await
    }

    /// Runs until `shutdown` is cancelled or every event stream ends.
    pub async fn run(self, events: Events, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let Events {
            mut pods,
            mut replicasets,
            mut deployments,
        } = events;
        let mut graph = Graph::default();
        let mut queue: VecDeque<ObjectKey> = VecDeque::new();
        let mut queued: HashSet<ObjectKey> = HashSet::new();
        let mut in_flight: HashSet<ObjectKey> = HashSet::new();
        let mut dirty: HashSet<ObjectKey> = HashSet::new();
        let mut tasks: JoinSet<Result<Outcome, Error>> = JoinSet::new();
        // Which object each running task examines, so a panicked task still frees its key.
        let mut task_keys: HashMap<tokio::task::Id, ObjectKey> = HashMap::new();
        let mut timers: JoinSet<ObjectKey> = JoinSet::new();
        let enqueue = |queue: &mut VecDeque<ObjectKey>,
                       queued: &mut HashSet<ObjectKey>,
                       keys: Vec<ObjectKey>| {
            for key in keys {
                if queued.insert(key.clone()) {
                    queue.push_back(key);
                }
            }
        };
        info!("garbage collector started");
        loop {
            while tasks.len() < WORKERS {
                let Some(key) = queue.pop_front() else { break };
                queued.remove(&key);
                if in_flight.contains(&key) {
                    dirty.insert(key);
                    continue;
                }
                in_flight.insert(key.clone());
                let uid = this.cached_meta(&key).and_then(|m| m.uid);
                let dependents = uid.map(|u| graph.dependents_of(&u)).unwrap_or_default();
                let worker = Arc::clone(&this);
                let task_key = key.clone();
                let handle =
                    tasks.spawn(async move { worker.attempt(&task_key, dependents).await });
                task_keys.insert(handle.id(), key);
            }
            let examine = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(change) = pods.next() => on_change(&mut graph, Kind::Pod, change),
                Some(change) = replicasets.next() => on_change(&mut graph, Kind::ReplicaSet, change),
                Some(change) = deployments.next() => on_change(&mut graph, Kind::Deployment, change),
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, result) = match done {
                        Ok((id, result)) => (id, Ok(result)),
                        Err(error) => (error.id(), Err(error)),
                    };
                    let Some(key) = task_keys.remove(&id) else { continue };
                    in_flight.remove(&key);
                    let retry = match result {
                        Ok(Ok(Outcome::Done)) => None,
                        Ok(Ok(Outcome::Gone)) => {
                            graph.delete(&key, &ObjectMeta::default());
                            None
                        }
                        Ok(Ok(Outcome::Requeue(after))) => Some(after),
                        Ok(Err(error)) if error.is_conflict() => Some(Duration::from_millis(200)),
                        Ok(Err(error)) => {
                            warn!(object = %key, %error, "garbage collection failed, will retry");
                            Some(Duration::from_secs(5))
                        }
                        Err(error) => {
                            error!(object = %key, %error, "garbage collection task failed, will retry");
                            Some(Duration::from_secs(5))
                        }
                    };
                    if let Some(after) = retry {
                        let key = key.clone();
                        timers.spawn(async move {
                            tokio::time::sleep(after).await;
                            key
                        });
                    }
                    if dirty.remove(&key) { vec![key] } else { Vec::new() }
                }
                Some(Ok(key)) = timers.join_next(), if !timers.is_empty() => vec![key],
                else => break,
            };
            enqueue(&mut queue, &mut queued, examine);
        }
        tasks.shutdown().await;
        timers.shutdown().await;
        info!("garbage collector stopped");
    }
}

fn on_change<K: Resource>(graph: &mut Graph, kind: Kind, change: Change<K>) -> Vec<ObjectKey> {
    match change {
        Change::Applied(obj) => graph.apply(key_of(kind, obj.as_ref()), obj.meta()),
        Change::Deleted(obj) => graph.delete(&key_of(kind, obj.as_ref()), obj.meta()),
        Change::Synced => graph.all_of(kind),
    }
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn owners(states: &[(&str, OwnerState)]) -> Vec<(String, OwnerState)> {
        states.iter().map(|(u, s)| ((*u).to_owned(), *s)).collect()
    }

    #[test]
    fn decisions() {
        use OwnerState::*;
        let none: &[String] = &[];
        assert_eq!(decide(&[], none, false), Decision::Keep);
        assert_eq!(
            decide(&owners(&[("a", Solid)]), none, false),
            Decision::Keep
        );
        assert_eq!(
            decide(&owners(&[("a", Dangling)]), none, false),
            Decision::Delete(Propagation::Background)
        );
        assert_eq!(
            decide(
                &owners(&[("a", Solid), ("b", Dangling), ("c", WaitingForDependents)]),
                none,
                true
            ),
            Decision::RemoveOwnerReferences(vec!["b".into(), "c".into()])
        );
        assert_eq!(
            decide(&owners(&[("a", WaitingForDependents)]), none, true),
            Decision::Delete(Propagation::Foreground)
        );
        assert_eq!(
            decide(&owners(&[("a", WaitingForDependents)]), none, false),
            Decision::Delete(Propagation::Background)
        );
        assert_eq!(
            decide(&owners(&[("a", Dangling)]), &[ORPHAN.to_owned()], true),
            Decision::Delete(Propagation::Orphan)
        );
    }

    fn meta(value: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(value).expect("meta")
    }

    fn key(kind: Kind, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn graph_tracks_dependents_and_examines_them_when_owner_goes() {
        let mut graph = Graph::default();
        let rs = meta(
            json!({"name": "rs", "namespace": "default", "uid": "rs-uid",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "d-uid"}]}),
        );
        let pod = meta(json!({"name": "p", "namespace": "default", "uid": "p-uid",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid"}]}));
        let d = meta(json!({"name": "d", "namespace": "default", "uid": "d-uid"}));
        assert_eq!(graph.apply(key(Kind::Deployment, "d"), &d), vec![]);
        assert_eq!(
            graph.apply(key(Kind::ReplicaSet, "rs"), &rs),
            vec![key(Kind::ReplicaSet, "rs")]
        );
        assert_eq!(
            graph.apply(key(Kind::Pod, "p"), &pod),
            vec![key(Kind::Pod, "p")]
        );
        // Unchanged owners: nothing to examine.
        assert_eq!(graph.apply(key(Kind::Pod, "p"), &pod), vec![]);
        assert_eq!(
            graph.delete(&key(Kind::Deployment, "d"), &d),
            vec![key(Kind::ReplicaSet, "rs")]
        );
        let mut examined = graph.delete(&key(Kind::ReplicaSet, "rs"), &rs);
        examined.sort();
        assert_eq!(examined, vec![key(Kind::Pod, "p")]);
        assert_eq!(graph.all_of(Kind::Pod), vec![key(Kind::Pod, "p")]);
        let deleting = meta(json!({"name": "d", "namespace": "default", "uid": "d-uid",
            "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": [FOREGROUND]}));
        graph.apply(key(Kind::ReplicaSet, "rs"), &rs);
        assert_eq!(
            graph.apply(key(Kind::Deployment, "d"), &deleting),
            vec![key(Kind::ReplicaSet, "rs"), key(Kind::Deployment, "d")]
        );
    }

    #[test]
    fn removes_only_named_owners() {
        let m = meta(json!({"ownerReferences": [
            {"apiVersion": "v1", "kind": "A", "name": "a", "uid": "1"},
            {"apiVersion": "v1", "kind": "B", "name": "b", "uid": "2"}]}));
        let left = without_owners(&m, &["1".to_owned()]);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].uid, "2");
    }
}
