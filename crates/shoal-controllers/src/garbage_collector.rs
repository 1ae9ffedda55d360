//! The garbage collector: deletes objects whose owners are gone, and carries out
//! foreground and orphan deletion of owners.
//!
//! Like kube-controller-manager's, it follows every kind that can be listed, watched and
//! deleted, as discovery finds them (custom resources come and go with their CRDs; Events
//! are left out), through metadata-only watches (`PartialObjectMetadata`: no spec or status
//! is sent or kept). From them it keeps a graph of owner references (owner uid to
//! dependents). An object is examined when its owner references change, when one of its
//! owners is deleted, after every re-list of its kind, and when new kinds appear. The
//! decision for one object is the plain function [`decide`]; an owner missing from the
//! cache is confirmed with a live GET before anything is deleted, because the watches of
//! different kinds lag independently. Owners of kinds not served, and namespaced owners of
//! cluster-scoped objects (unresolvable, as upstream), are assumed to exist: it never
//! deletes on a guess.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, PartialObjectMeta, Patch, PatchParams,
    Preconditions, PropagationPolicy,
};
use kube::discovery::{Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::Error;

/// Finalizer that makes an owner wait for its blocking dependents.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer that makes the collector orphan an owner's dependents.
pub const ORPHAN: &str = "orphan";
/// Items examined at once.
const WORKERS: usize = 16;

/// A kind, independent of version: what an owner reference names (`apiVersion` without
/// its version, and `kind`), and how the collector tells resources apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKind {
    /// API group; empty for the core group.
    pub group: String,
    /// Kind.
    pub kind: String,
}

impl GroupKind {
    /// A group and a kind.
    pub fn new(group: &str, kind: &str) -> GroupKind {
        GroupKind {
            group: group.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// The kind an owner reference points to.
    pub fn of_reference(reference: &OwnerReference) -> GroupKind {
        let group = match reference.api_version.rsplit_once('/') {
            Some((group, _)) => group,
            None => "",
        };
        GroupKind::new(group, &reference.kind)
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// An object of any kind: cluster-scoped objects have an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind.
    pub kind: GroupKind,
    /// Namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Where a dependent's owner reference points: owners of namespaced kinds live in the
/// dependent's namespace, cluster-scoped owners in none. `None` when a cluster-scoped
/// dependent names a namespaced owner: upstream treats that reference as unresolvable, and
/// the collector never deletes on it.
pub fn owner_key(
    dependent_namespace: &str,
    reference: &OwnerReference,
    owner_namespaced: bool,
) -> Option<ObjectKey> {
    let namespace = match (owner_namespaced, dependent_namespace.is_empty()) {
        (true, true) => return None,
        (true, false) => dependent_namespace.to_owned(),
        (false, _) => String::new(),
    };
    Some(ObjectKey {
        kind: GroupKind::of_reference(reference),
        namespace,
        name: reference.name.clone(),
    })
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
    pub fn all_of(&self, kind: &GroupKind) -> Vec<ObjectKey> {
        self.owners_of
            .keys()
            .chain(self.finalizing.iter())
            .filter(|k| k.kind == *kind)
            .cloned()
            .collect()
    }

    /// Every object with owners, for a rescan when new kinds become known (an owner of a
    /// kind the collector did not know was assumed to exist).
    pub fn with_owners(&self) -> Vec<ObjectKey> {
        self.owners_of.keys().cloned().collect()
    }

    /// Known dependents of the owner with `uid`.
    pub fn dependents_of(&self, uid: &str) -> Vec<ObjectKey> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// How the collector finds the kinds it follows.
#[derive(Clone, Debug)]
pub struct Options {
    /// How often discovery is read again for kinds that came or went. A change to a
    /// CustomResourceDefinition also triggers a read, half a second later.
    pub discovery_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        // As kube-controller-manager's garbage collector re-reads discovery.
        Options {
            discovery_period: Duration::from_secs(30),
        }
    }
}

/// Kinds the collector leaves alone, as upstream's does: Events (plural names).
const IGNORED: [(&str, &str); 2] = [("", "events"), ("events.k8s.io", "events")];

/// The CustomResourceDefinition kind: its changes make the collector re-read discovery.
fn is_crd(kind: &GroupKind) -> bool {
    kind.group == "apiextensions.k8s.io" && kind.kind == "CustomResourceDefinition"
}

/// A kind the collector follows.
#[derive(Clone, Debug)]
struct Known {
    resource: ApiResource,
    namespaced: bool,
}

impl Known {
    /// Served at the same place: same version, plural and scope.
    fn same(&self, other: &Known) -> bool {
        self.resource.api_version == other.resource.api_version
            && self.resource.plural == other.resource.plural
            && self.namespaced == other.namespaced
    }
}

/// What the collector's loop hears.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every message is a watch event: boxing it would allocate per event"
)]
enum Message {
    /// A change seen by the metadata watch of one kind.
    Watch(GroupKind, watcher::Event<PartialObjectMeta<DynamicObject>>),
    /// The kinds discovery serves now.
    Kinds(HashMap<GroupKind, Known>),
}

type Meta = PartialObjectMeta<DynamicObject>;

enum Outcome {
    Done,
    Gone,
    Requeue(Duration),
}

/// What the collector's workers share with its loop: the metadata of every followed object
/// (written only by the loop, before the graph hears of the change) and the known kinds.
struct Shared {
    client: kube::Client,
    objects: RwLock<HashMap<ObjectKey, Arc<ObjectMeta>>>,
    kinds: RwLock<HashMap<GroupKind, Known>>,
}

/// The collector: follows the metadata of every kind that can be listed, watched and
/// deleted (custom resources included, as discovery finds them), and deletes what is owned
/// by what is gone.
pub struct GarbageCollector {
    shared: Arc<Shared>,
    options: Options,
}

impl GarbageCollector {
    /// A collector talking to the API through `client`.
    pub fn new(client: kube::Client, options: Options) -> Self {
        GarbageCollector {
            shared: Arc::new(Shared {
                client,
                objects: RwLock::new(HashMap::new()),
                kinds: RwLock::new(HashMap::new()),
            }),
            options,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<Message>(1024);
        let nudge = Arc::new(Notify::new());
        let mut background = JoinSet::new();
        background.spawn(discover(
            self.shared.client.clone(),
            self.options.discovery_period,
            Arc::clone(&nudge),
            tx.clone(),
            shutdown.clone(),
        ));
        let shared = self.shared;
        let mut graph = Graph::default();
        let mut queue = Queue::default();
        let mut watches: HashMap<GroupKind, CancellationToken> = HashMap::new();
        // Keys seen during each kind's current re-list, to drop what it no longer has.
        let mut relisting: HashMap<GroupKind, HashSet<ObjectKey>> = HashMap::new();
        // Kinds of the first discovery not yet listed: workers wait for them (owners
        // missing from a partial cache would each cost a live GET), for at most a minute.
        let mut unsynced: Option<HashSet<GroupKind>> = None;
        let wait_for_sync = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(wait_for_sync);
        let mut tasks: JoinSet<Result<Outcome, Error>> = JoinSet::new();
        // Which object each running task examines, so a panicked task still frees its key.
        let mut task_keys: HashMap<tokio::task::Id, ObjectKey> = HashMap::new();
        let mut timers: JoinSet<ObjectKey> = JoinSet::new();
        info!("garbage collector started");
        loop {
            let ready = unsynced.as_ref().is_some_and(HashSet::is_empty);
            while ready && tasks.len() < WORKERS {
                let Some(key) = queue.next() else { break };
                let uid = cached_meta(&shared, &key).and_then(|m| m.uid.clone());
                let dependents = uid.map(|u| graph.dependents_of(&u)).unwrap_or_default();
                let worker = Arc::clone(&shared);
                let task_key = key.clone();
                let handle =
                    tasks.spawn(async move { attempt(&worker, &task_key, dependents).await });
                task_keys.insert(handle.id(), key);
            }
            let examine = tokio::select! {
                () = shutdown.cancelled() => break,
                Some(message) = rx.recv() => match message {
                    Message::Kinds(kinds) => {
                        let first = unsynced.is_none();
                        let added = follow_kinds(&shared, &mut graph, &mut watches, kinds, &tx, &shutdown);
                        if first {
                            unsynced = Some(added.into_iter().collect());
                            Vec::new()
                        } else if added.is_empty() {
                            Vec::new()
                        } else {
                            // Owners of the new kinds were assumed to exist: look again.
                            graph.with_owners()
                        }
                    }
                    // Left over from a watch just stopped: its kind is no longer followed.
                    Message::Watch(kind, _) if !watches.contains_key(&kind) => Vec::new(),
                    Message::Watch(kind, event) => {
                        if is_crd(&kind) && matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_)) {
                            nudge.notify_one();
                        }
                        match event {
                            watcher::Event::Init => {
                                relisting.insert(kind, HashSet::new());
                                Vec::new()
                            }
                            watcher::Event::InitApply(meta) => {
                                let key = key_of(&kind, &meta);
                                if let Some(seen) = relisting.get_mut(&kind) {
                                    seen.insert(key.clone());
                                }
                                record(&shared, &mut graph, key, meta)
                            }
                            watcher::Event::InitDone => {
                                let seen = relisting.remove(&kind).unwrap_or_default();
                                let mut examine = forget_unseen(&shared, &mut graph, &kind, &seen);
                                examine.extend(graph.all_of(&kind));
                                if let Some(pending) = unsynced.as_mut() {
                                    pending.remove(&kind);
                                }
                                examine
                            }
                            watcher::Event::Apply(meta) => {
                                let key = key_of(&kind, &meta);
                                record(&shared, &mut graph, key, meta)
                            }
                            watcher::Event::Delete(meta) => {
                                let key = key_of(&kind, &meta);
                                forget(&shared, &mut graph, &key, &meta.metadata)
                            }
                        }
                    }
                },
                () = &mut wait_for_sync, if !ready && unsynced.is_some() => {
                    if let Some(pending) = unsynced.as_mut().filter(|p| !p.is_empty()) {
                        warn!(kinds = ?pending, "starting without the first list of these kinds");
                        pending.clear();
                    }
                    Vec::new()
                }
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, result) = match done {
                        Ok((id, result)) => (id, Ok(result)),
                        Err(error) => (error.id(), Err(error)),
                    };
                    let Some(key) = task_keys.remove(&id) else { continue };
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
                    queue.finished(key)
                }
                Some(Ok(key)) = timers.join_next(), if !timers.is_empty() => vec![key],
                else => break,
            };
            queue.push(examine);
        }
        for token in watches.values() {
            token.cancel();
        }
        tasks.shutdown().await;
        timers.shutdown().await;
        background.shutdown().await;
        info!("garbage collector stopped");
    }
}

/// The work queue: each key at most once in it, and never examined twice at once (a key
/// queued while examined runs again after).
#[derive(Default)]
struct Queue {
    order: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    in_flight: HashSet<ObjectKey>,
    dirty: HashSet<ObjectKey>,
}

impl Queue {
    fn push(&mut self, keys: Vec<ObjectKey>) {
        for key in keys {
            if self.queued.insert(key.clone()) {
                self.order.push_back(key);
            }
        }
    }

    /// The next key to examine, now in flight.
    fn next(&mut self) -> Option<ObjectKey> {
        while let Some(key) = self.order.pop_front() {
            self.queued.remove(&key);
            if self.in_flight.contains(&key) {
                self.dirty.insert(key);
                continue;
            }
            self.in_flight.insert(key.clone());
            return Some(key);
        }
        None
    }

    /// `key` is examined; returns it again if it changed meanwhile.
    fn finished(&mut self, key: ObjectKey) -> Vec<ObjectKey> {
        self.in_flight.remove(&key);
        if self.dirty.remove(&key) {
            vec![key]
        } else {
            Vec::new()
        }
    }
}

fn key_of(kind: &GroupKind, meta: &Meta) -> ObjectKey {
    ObjectKey {
        kind: kind.clone(),
        namespace: meta.metadata.namespace.clone().unwrap_or_default(),
        name: meta.metadata.name.clone().unwrap_or_default(),
    }
}

/// Stores what the collector reads of an object's metadata (its identity, owners,
/// finalizers and deletion; not labels, annotations or managed fields, which can be most of
/// it) before the graph hears of it, so a worker examining it finds this version or a newer
/// one.
fn record(shared: &Shared, graph: &mut Graph, key: ObjectKey, meta: Meta) -> Vec<ObjectKey> {
    let full = meta.metadata;
    let metadata = Arc::new(ObjectMeta {
        name: full.name,
        namespace: full.namespace,
        uid: full.uid,
        resource_version: full.resource_version,
        owner_references: full.owner_references,
        finalizers: full.finalizers,
        deletion_timestamp: full.deletion_timestamp,
        ..ObjectMeta::default()
    });
    write(&shared.objects).insert(key.clone(), Arc::clone(&metadata));
    graph.apply(key, &metadata)
}

fn forget(
    shared: &Shared,
    graph: &mut Graph,
    key: &ObjectKey,
    meta: &ObjectMeta,
) -> Vec<ObjectKey> {
    write(&shared.objects).remove(key);
    graph.delete(key, meta)
}

/// After a re-list of `kind`: forgets its objects the list no longer had (deleted while
/// the watch was down).
fn forget_unseen(
    shared: &Shared,
    graph: &mut Graph,
    kind: &GroupKind,
    seen: &HashSet<ObjectKey>,
) -> Vec<ObjectKey> {
    let gone: Vec<(ObjectKey, Arc<ObjectMeta>)> = read(&shared.objects)
        .iter()
        .filter(|(k, _)| k.kind == *kind && !seen.contains(*k))
        .map(|(k, m)| (k.clone(), Arc::clone(m)))
        .collect();
    let mut examine = Vec::new();
    for (key, meta) in gone {
        examine.extend(forget(shared, graph, &key, &meta));
    }
    examine
}

/// Starts watches for kinds discovery added and stops those of kinds it withdrew (their
/// objects are forgotten, never deleted); a kind now served in another version or scope is
/// watched again from a fresh list. Returns the kinds watched anew.
fn follow_kinds(
    shared: &Shared,
    graph: &mut Graph,
    watches: &mut HashMap<GroupKind, CancellationToken>,
    kinds: HashMap<GroupKind, Known>,
    tx: &mpsc::Sender<Message>,
    shutdown: &CancellationToken,
) -> Vec<GroupKind> {
    let changed: Vec<GroupKind> = {
        let before = read(&shared.kinds);
        before
            .iter()
            .filter(|(kind, old)| kinds.get(*kind).is_some_and(|new| !new.same(old)))
            .map(|(kind, _)| kind.clone())
            .collect()
    };
    for kind in &changed {
        if let Some(token) = watches.remove(kind) {
            token.cancel();
        }
    }
    let withdrawn: Vec<GroupKind> = watches
        .keys()
        .filter(|k| !kinds.contains_key(*k))
        .cloned()
        .collect();
    for kind in &withdrawn {
        if let Some(token) = watches.remove(kind) {
            token.cancel();
        }
        forget_unseen(shared, graph, kind, &HashSet::new());
        info!(%kind, "no longer served: stopped following it");
    }
    let mut added = Vec::new();
    for (kind, known) in &kinds {
        if watches.contains_key(kind) {
            continue;
        }
        let token = shutdown.child_token();
        tokio::spawn(follow(
            shared.client.clone(),
            kind.clone(),
            known.resource.clone(),
            tx.clone(),
            token.clone(),
        ));
        watches.insert(kind.clone(), token);
        added.push(kind.clone());
    }
    *write(&shared.kinds) = kinds;
    if !added.is_empty() {
        debug!(kinds = ?added, "following kinds");
    }
    added
}

/// The metadata watch of one kind, into the collector's loop.
async fn follow(
    client: kube::Client,
    kind: GroupKind,
    resource: ApiResource,
    tx: mpsc::Sender<Message>,
    token: CancellationToken,
) {
    let api: Api<Meta> = Api::all_with(client, &resource);
    let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
    tokio::pin!(events);
    loop {
        let event = tokio::select! {
            () = token.cancelled() => return,
            event = events.next() => event,
        };
        match event {
            Some(Ok(event)) => {
                if tx.send(Message::Watch(kind.clone(), event)).await.is_err() {
                    return;
                }
            }
            Some(Err(error)) => debug!(%kind, %error, "metadata watch failed, retrying"),
            None => return,
        }
    }
}

/// Reads discovery now, then every `period` or when nudged (half a second after, so a burst
/// of CRD changes costs one read), and sends the kinds the collector can follow.
async fn discover(
    client: kube::Client,
    period: Duration,
    nudge: Arc<Notify>,
    tx: mpsc::Sender<Message>,
    shutdown: CancellationToken,
) {
    let mut last: Option<HashMap<GroupKind, Known>> = None;
    loop {
        let wait = match deletable_kinds(&client).await {
            Ok(kinds) => {
                let unchanged = last.as_ref().is_some_and(|last| {
                    last.len() == kinds.len()
                        && kinds
                            .iter()
                            .all(|(kind, known)| last.get(kind).is_some_and(|l| l.same(known)))
                });
                if !unchanged {
                    if tx.send(Message::Kinds(kinds.clone())).await.is_err() {
                        return;
                    }
                    last = Some(kinds);
                }
                period
            }
            Err(error) => {
                warn!(%error, "reading discovery failed, retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = nudge.notified() => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Every kind that can be listed, watched and deleted, in its group's preferred version;
/// upstream's ignored kinds left out.
async fn deletable_kinds(client: &kube::Client) -> Result<HashMap<GroupKind, Known>, kube::Error> {
    let discovery = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await?;
    let mut out = HashMap::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            let verbs = [verbs::LIST, verbs::WATCH, verbs::DELETE];
            if !verbs.iter().all(|v| caps.supports_operation(v))
                || IGNORED.contains(&(resource.group.as_str(), resource.plural.as_str()))
            {
                continue;
            }
            let kind = GroupKind::new(&resource.group, &resource.kind);
            let namespaced = caps.scope == Scope::Namespaced;
            out.insert(
                kind,
                Known {
                    resource,
                    namespaced,
                },
            );
        }
    }
    Ok(out)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn cached_meta(shared: &Shared, key: &ObjectKey) -> Option<Arc<ObjectMeta>> {
    read(&shared.objects).get(key).cloned()
}

/// The API of `key`'s kind, in its namespace; `None` when the kind is no longer served.
fn api_for(shared: &Shared, key: &ObjectKey) -> Option<Api<DynamicObject>> {
    let kinds = read(&shared.kinds);
    let known = kinds.get(&key.kind)?;
    let client = shared.client.clone();
    Some(if known.namespaced {
        Api::namespaced_with(client, &key.namespace, &known.resource)
    } else {
        Api::all_with(client, &known.resource)
    })
}

async fn live_meta(shared: &Shared, key: &ObjectKey) -> Result<Option<ObjectMeta>, kube::Error> {
    let Some(api) = api_for(shared, key) else {
        return Ok(None);
    };
    Ok(api.get_metadata_opt(&key.name).await?.map(|m| m.metadata))
}

async fn patch_meta(
    shared: &Shared,
    key: &ObjectKey,
    body: serde_json::Value,
) -> Result<(), kube::Error> {
    let Some(api) = api_for(shared, key) else {
        return Ok(());
    };
    let result = api
        .patch_metadata(&key.name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(drop);
    ignore_not_found(result)
}

async fn delete(
    shared: &Shared,
    key: &ObjectKey,
    uid: Option<String>,
    propagation: Propagation,
) -> Result<(), kube::Error> {
    let Some(api) = api_for(shared, key) else {
        return Ok(());
    };
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
    ignore_not_found(api.delete(&key.name, &params).await.map(drop))
}

/// The state of the owner `reference` of an object in `namespace`. An owner of a kind not
/// served (yet), or one a cluster-scoped object cannot have, is assumed to exist: the
/// collector never deletes on a guess.
async fn owner_state(
    shared: &Shared,
    namespace: &str,
    reference: &OwnerReference,
) -> Result<OwnerState, kube::Error> {
    let kind = GroupKind::of_reference(reference);
    let namespaced = match read(&shared.kinds).get(&kind) {
        Some(known) => known.namespaced,
        None => return Ok(OwnerState::Solid),
    };
    let Some(key) = owner_key(namespace, reference, namespaced) else {
        return Ok(OwnerState::Solid);
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
    if let Some(meta) = cached_meta(shared, &key)
        && meta.uid.as_deref() == Some(reference.uid.as_str())
    {
        return Ok(state(&meta));
    }
    // The cache may lag behind a just-created owner: ask the API before deleting.
    match live_meta(shared, &key).await? {
        Some(meta) if meta.uid.as_deref() == Some(reference.uid.as_str()) => Ok(state(&meta)),
        _ => Ok(OwnerState::Dangling),
    }
}

/// Examines one object: finishes its own foreground/orphan deletion, or collects it when
/// its owners are gone.
async fn attempt(
    shared: &Shared,
    key: &ObjectKey,
    dependents: Vec<ObjectKey>,
) -> Result<Outcome, Error> {
    let Some(meta) = cached_meta(shared, key) else {
        return Ok(Outcome::Gone);
    };
    let uid = meta.uid.clone().unwrap_or_default();
    let finalizers = meta.finalizers.clone().unwrap_or_default();
    if meta.deletion_timestamp.is_some() {
        let dependents: Vec<(ObjectKey, Arc<ObjectMeta>)> = dependents
            .into_iter()
            .filter_map(|k| {
                let m = cached_meta(shared, &k)?;
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
                patch_meta(shared, dependent, patch).await?;
                debug!(owner = %key, dependent = %dependent, "orphaned dependent");
            }
            remove_finalizer(shared, key, &meta, ORPHAN).await?;
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
                remove_finalizer(shared, key, &meta, FOREGROUND).await?;
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
            owner_state(shared, &namespace, reference).await?,
        ));
    }
    match decide(&owners, &finalizers, !dependents.is_empty()) {
        Decision::Keep => {}
        Decision::RemoveOwnerReferences(uids) => {
            let patch = json!({"metadata": {
                "ownerReferences": without_owners(&meta, &uids),
                "resourceVersion": meta.resource_version,
            }});
            patch_meta(shared, key, patch).await?;
            info!(object = %key, "removed references to deleted owners");
        }
        Decision::Delete(propagation) => {
            delete(shared, key, meta.uid.clone(), propagation).await?;
            info!(object = %key, ?propagation, "deleted object whose owners are gone");
        }
    }
    Ok(Outcome::Done)
}

async fn remove_finalizer(
    shared: &Shared,
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
    let patch =
        json!({"metadata": {"finalizers": remaining, "resourceVersion": meta.resource_version}});
    patch_meta(shared, key, patch).await
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

    #[derive(Clone, Copy)]
    enum Kind {
        Pod,
        ReplicaSet,
        Deployment,
    }

    fn key(kind: Kind, name: &str) -> ObjectKey {
        let kind = match kind {
            Kind::Pod => GroupKind::new("", "Pod"),
            Kind::ReplicaSet => GroupKind::new("apps", "ReplicaSet"),
            Kind::Deployment => GroupKind::new("apps", "Deployment"),
        };
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
        assert_eq!(
            graph.all_of(&GroupKind::new("", "Pod")),
            vec![key(Kind::Pod, "p")]
        );
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

    fn reference(api_version: &str, kind: &str, name: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            ..OwnerReference::default()
        }
    }

    #[test]
    fn owner_references_resolve_by_group_and_scope() {
        let widget = reference("example.com/v1beta2", "Widget", "w");
        assert_eq!(
            GroupKind::of_reference(&widget),
            GroupKind::new("example.com", "Widget")
        );
        assert_eq!(
            GroupKind::of_reference(&reference("v1", "Pod", "p")),
            GroupKind::new("", "Pod")
        );
        // A namespaced owner of a namespaced dependent: same namespace.
        assert_eq!(
            owner_key("team", &widget, true).map(|k| k.to_string()),
            Some("Widget.example.com team/w".to_owned())
        );
        // A cluster-scoped owner: no namespace, whoever the dependent.
        let node = reference("v1", "Node", "n1");
        assert_eq!(
            owner_key("team", &node, false).map(|k| k.to_string()),
            Some("Node n1".to_owned())
        );
        assert_eq!(
            owner_key("", &node, false).map(|k| k.to_string()),
            Some("Node n1".to_owned())
        );
        // A cluster-scoped dependent cannot have a namespaced owner.
        assert_eq!(owner_key("", &widget, true), None);
    }

    #[test]
    fn queue_examines_a_key_once_at_a_time_and_again_if_it_changed() {
        let mut queue = Queue::default();
        let (a, b) = (key(Kind::Pod, "a"), key(Kind::Pod, "b"));
        queue.push(vec![a.clone(), b.clone(), a.clone()]);
        assert_eq!(queue.next(), Some(a.clone()));
        // Queued again while in flight: held back, not run twice at once.
        queue.push(vec![a.clone()]);
        assert_eq!(queue.next(), Some(b.clone()));
        assert_eq!(queue.next(), None);
        assert_eq!(queue.finished(b), Vec::<ObjectKey>::new());
        assert_eq!(queue.finished(a.clone()), vec![a.clone()]);
        queue.push(vec![a.clone()]);
        assert_eq!(queue.next(), Some(a));
    }
}
