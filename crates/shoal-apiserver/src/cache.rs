//! The watch cache: per resource, the objects in memory, fed by one store watch, serving LISTs
//! and WATCHes (kube-apiserver's cacher is the model).
//!
//! A [`Cacher`] starts on the first LIST or WATCH of its resource: it lists the store prefix
//! once, then follows one progress watch from that revision. Each change is decoded once into
//! an [`Entry`] (the object's JSON with its `resourceVersion`, its labels and its field-selector
//! values) and fanned out as an `Arc<Event>` to every watcher of the resource through a bounded
//! channel; a watcher whose channel is full is cut off (it ends with 410 and relists) instead of
//! slowing the others. The newest events stay in a window bounded in count and bytes, so a
//! watch from a recent `resourceVersion` replays from memory; an older one falls back to the
//! store.
//!
//! Consistency: the cache knows the store revision it reflects (the store's progress
//! notifications advance it even when nothing under its prefix changes). A consistent LIST
//! asks the store for its current revision (a read index, so linearizable) and waits until the
//! cache has caught up with it; `resourceVersion=N` waits for N; `0` takes the cache as it is.
//! Paginated lists keep the key-ordered snapshot of their first page (pointers to shared
//! entries) for a while, so every page is read at the first page's revision.
//!
//! Memory: one entry per object (its JSON, labels and selector values, shared by snapshots,
//! the window and in-flight events), the window (at most [`WINDOW_EVENTS`] events and
//! [`WINDOW_BYTES`] bytes), at most [`SNAPSHOTS`] list snapshots of pointers, and per watcher a
//! channel of at most [`WATCHER_QUEUE`] pointers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use shoal_store::{KeyValue, Store, WatchEvent, WatchItem};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::registry::ResourceType;
use crate::api::selector::field_value;
use crate::error::ApiError;
use crate::object::set_resource_version;

/// Events kept in memory for watches that start from a recent `resourceVersion`.
pub const WINDOW_EVENTS: usize = 10_000;
/// Bytes of object JSON those events may hold.
pub const WINDOW_BYTES: usize = 32 << 20;
/// Paginated-list snapshots kept per resource, and for how long.
pub const SNAPSHOTS: usize = 16;
const SNAPSHOT_TTL: Duration = Duration::from_secs(120);
/// Events a watcher may have waiting before it is cut off.
pub const WATCHER_QUEUE: usize = 1024;
/// How long a request waits for the cache to reach the revision it needs.
const FRESHNESS_WAIT: Duration = Duration::from_secs(5);

/// The fields every kind's entries carry for field selectors, before the kind's own.
const COMMON_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

/// One object as the cache holds it.
#[derive(Debug)]
pub struct Entry {
    /// Its store key.
    pub key: String,
    /// The object's JSON, `metadata.resourceVersion` included.
    pub json: Bytes,
    labels: BTreeMap<String, String>,
    /// Values of the cacher's selectable fields, in its order.
    fields: Box<[String]>,
}

impl Entry {
    fn build(key: &str, mut obj: Value, revision: u64, fields: &[&'static str]) -> Entry {
        set_resource_version(&mut obj, revision);
        let labels = crate::object::labels(&obj);
        let fields = fields.iter().map(|f| field_value(&obj, f)).collect();
        let json = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
        Entry {
            key: key.to_string(),
            json,
            labels,
            fields,
        }
    }

    /// The decoded object (for Table output and other per-object work).
    pub fn object(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.json)
            .map_err(|e| ApiError::Internal(format!("decoding {}: {e}", self.key)))
    }

    /// The object's labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// One change as watchers see it.
#[derive(Debug)]
pub struct Event {
    pub revision: u64,
    /// After a put, the object; after a delete, the deleted object with the deletion's
    /// revision as its `resourceVersion`.
    pub object: Arc<Entry>,
    /// The object before the change, if it existed.
    pub prev: Option<Arc<Entry>>,
    pub deleted: bool,
}

/// The objects under one key prefix at one revision, in key order.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: u64,
    prefix: String,
    entries: Arc<Vec<Arc<Entry>>>,
}

impl Snapshot {
    /// The entries after key `after` (exclusive; `None`: from the first), in key order.
    pub fn range(&self, after: Option<&str>) -> impl Iterator<Item = &Arc<Entry>> {
        let start = match after {
            Some(key) => self.entries.partition_point(|e| e.key.as_str() <= key),
            None => 0,
        };
        self.entries[start..].iter()
    }
}

/// Where a watch starts.
pub enum Start {
    /// The current objects as `ADDED`, then changes (`resourceVersion` unset or `0`, or
    /// `sendInitialEvents`): the cache must reflect at least `min_revision`.
    Initial { min_revision: u64 },
    /// Changes after this revision.
    After(u64),
}

/// A watch registered with a cacher.
pub struct Subscription {
    /// Objects to send as `ADDED` first (for `Start::Initial`).
    pub initial: Vec<Arc<Entry>>,
    /// Events to send before the live ones (for `Start::After`).
    pub replay: Vec<Arc<Event>>,
    /// The revision the subscription starts at (after `initial` and `replay`).
    pub revision: u64,
    pub events: mpsc::Receiver<Arc<Event>>,
    /// Set when the cacher cut the watcher off for falling behind.
    pub lagged: Arc<AtomicBool>,
    /// Keeps the watcher registered; dropping it unregisters.
    pub registered: Registered,
}

/// Removes a watcher's sink when its subscription goes, so watchers of a quiet resource do
/// not pile up until the next change.
pub struct Registered {
    cacher: std::sync::Weak<Cacher>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(cacher) = self.cacher.upgrade() {
            cacher.write().sinks.remove(&self.id);
        }
    }
}

struct Sink {
    prefix: String,
    /// The value the watcher requires of the kind's index field (`spec.nodeName=n1` for a
    /// node agent's pods): other events are not even queued for it.
    index: Option<String>,
    tx: mpsc::Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Arc<Entry>>,
    /// The store revision the objects reflect; 0 until the first list.
    revision: u64,
    window: VecDeque<Arc<Event>>,
    window_bytes: usize,
    /// Every event with a revision above this is in the window.
    window_start: u64,
    sinks: HashMap<u64, Sink>,
    next_sink: u64,
    snapshots: VecDeque<(Instant, Snapshot)>,
}

/// The cache of one resource.
pub struct Cacher {
    rt: &'static ResourceType,
    prefix: String,
    fields: Vec<&'static str>,
    /// Position in `fields` of the kind's watch index field.
    index: Option<usize>,
    state: RwLock<State>,
    /// The revision the cache reflects; `None` until its first list.
    progress: watch::Sender<Option<u64>>,
}

impl Cacher {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of selectable field `field` in `entry` (`None`: not a field of this kind).
    pub fn field<'e>(&self, entry: &'e Entry, field: &str) -> Option<&'e str> {
        let i = self.fields.iter().position(|f| *f == field)?;
        entry.fields.get(i).map(String::as_str)
    }

    /// The revision the cache reflects (0 before its first list).
    pub fn revision(&self) -> u64 {
        self.progress.borrow().unwrap_or(0)
    }

    /// Waits until the cache reflects at least `revision`; 504 after a while.
    pub async fn wait_for(&self, revision: u64) -> Result<(), ApiError> {
        let mut rx = self.progress.subscribe();
        let reached = tokio::time::timeout(
            FRESHNESS_WAIT,
            rx.wait_for(|r| r.is_some_and(|r| r >= revision)),
        );
        match reached.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ApiError::Unavailable("the watch cache stopped".into())),
            Err(_) if self.progress.borrow().is_none() => Err(ApiError::Unavailable(format!(
                "the watch cache of {} is still being filled; try again",
                self.rt.plural
            ))),
            Err(_) => Err(ApiError::Timeout(format!(
                "Too large resource version: {revision}, current: {}",
                self.revision()
            ))),
        }
    }

    /// The objects under `prefix` now, in key order.
    pub fn snapshot(&self, prefix: &str) -> Snapshot {
        let state = self.read();
        Snapshot {
            revision: state.revision,
            prefix: prefix.to_string(),
            entries: Arc::new(
                state
                    .objects
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(_, e)| Arc::clone(e))
                    .collect(),
            ),
        }
    }

    /// Keeps `snapshot` for the pages after the first.
    pub fn keep(&self, snapshot: &Snapshot) {
        let mut state = self.write();
        let now = Instant::now();
        expire_snapshots(&mut state.snapshots);
        if state
            .snapshots
            .iter()
            .any(|(_, s)| s.revision == snapshot.revision && s.prefix == snapshot.prefix)
        {
            return;
        }
        if state.snapshots.len() >= SNAPSHOTS {
            state.snapshots.pop_front();
        }
        state.snapshots.push_back((now, snapshot.clone()));
    }

    /// The objects under `prefix` at exactly `revision`: a kept snapshot, or the cache itself
    /// when it is at that revision.
    pub fn snapshot_at(&self, revision: u64, prefix: &str) -> Option<Snapshot> {
        let state = self.read();
        if let Some((_, s)) = state
            .snapshots
            .iter()
            .find(|(_, s)| s.revision == revision && s.prefix == prefix)
        {
            return Some(s.clone());
        }
        drop(state);
        let snapshot = self.snapshot(prefix);
        (snapshot.revision == revision).then_some(snapshot)
    }

    /// The field watchers of this kind are indexed by (`spec.nodeName` for pods), if any.
    pub fn index_field(&self) -> Option<&'static str> {
        self.index.map(|i| self.fields[i])
    }

    /// Registers a watcher of the keys under `prefix`; with `index`, only of the objects whose
    /// index field has that value before or after a change (the watcher still filters). `None`
    /// when `Start::After` is older than the window (the caller watches the store instead).
    pub async fn subscribe(
        self: &Arc<Self>,
        prefix: &str,
        start: Start,
        index: Option<String>,
    ) -> Result<Option<Subscription>, ApiError> {
        let needed = match start {
            Start::Initial { min_revision } => min_revision,
            Start::After(rev) => rev,
        };
        self.wait_for(needed).await?;
        let lagged = Arc::new(AtomicBool::new(false));
        let mut state = self.write();
        let (initial, replay) = match start {
            Start::Initial { .. } => (
                state
                    .objects
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(_, e)| Arc::clone(e))
                    .collect(),
                Vec::new(),
            ),
            Start::After(rev) if rev < state.window_start => return Ok(None),
            Start::After(rev) => {
                let skip = state.window.partition_point(|e| e.revision <= rev);
                let replay = state
                    .window
                    .iter()
                    .skip(skip)
                    .filter(|e| e.object.key.starts_with(prefix))
                    .cloned()
                    .collect();
                (Vec::new(), replay)
            }
        };
        // Room for what arrives while the initial objects or the replay are being sent, so a
        // large start alone never cuts a watcher off.
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE + initial.len() + replay.len());
        let id = state.next_sink;
        state.next_sink += 1;
        state.sinks.insert(
            id,
            Sink {
                prefix: prefix.to_string(),
                index,
                tx,
                lagged: Arc::clone(&lagged),
            },
        );
        Ok(Some(Subscription {
            initial,
            replay,
            revision: state.revision,
            events: rx,
            lagged,
            registered: Registered {
                cacher: Arc::downgrade(self),
                id,
            },
        }))
    }

    /// Replaces the contents after a (re)list; every watcher ends and relists.
    fn reset(&self, items: Vec<KeyValue>, revision: u64) {
        let objects: BTreeMap<String, Arc<Entry>> = items
            .into_iter()
            .filter_map(|kv| {
                let obj: Value = serde_json::from_slice(&kv.value).ok()?;
                let entry = Entry::build(&kv.key, obj, kv.mod_revision, &self.fields);
                Some((kv.key, Arc::new(entry)))
            })
            .collect();
        let mut state = self.write();
        for sink in state.sinks.values() {
            sink.lagged.store(true, Ordering::Release);
        }
        *state = State {
            objects,
            revision,
            window_start: revision,
            next_sink: state.next_sink,
            ..State::default()
        };
        drop(state);
        self.progress.send_replace(Some(revision));
    }

    /// Applies one store change and hands it to the watchers. `false`: the change could not
    /// be decoded, and only a relist makes the cache true again.
    fn apply(&self, event: WatchEvent) -> bool {
        let revision = event.revision();
        let (key, built, deleted) = match event {
            WatchEvent::Put { kv, .. } => {
                let entry = serde_json::from_slice::<Value>(&kv.value)
                    .ok()
                    .map(|obj| Entry::build(&kv.key, obj, kv.mod_revision, &self.fields));
                (kv.key, entry, false)
            }
            WatchEvent::Delete { prev, revision } => {
                let entry = serde_json::from_slice::<Value>(&prev.value)
                    .ok()
                    .map(|obj| Entry::build(&prev.key, obj, revision, &self.fields));
                (prev.key, entry, true)
            }
        };
        let Some(entry) = built.map(Arc::new) else {
            // Not JSON: the store holds only what the apiserver encoded, so this is never
            // expected; the cache cannot say what the object is now.
            tracing::warn!(%key, revision, "watch cache met an undecodable value");
            return false;
        };
        let mut state = self.write();
        state.revision = revision;
        let prev = if deleted {
            state.objects.remove(&key)
        } else {
            state.objects.insert(key.clone(), Arc::clone(&entry))
        };
        let event = Arc::new(Event {
            revision,
            object: entry,
            prev,
            deleted,
        });
        state.window_bytes += event.object.json.len();
        state.window.push_back(Arc::clone(&event));
        while state.window.len() > WINDOW_EVENTS
            || (state.window_bytes > WINDOW_BYTES && state.window.len() > 1)
        {
            if let Some(old) = state.window.pop_front() {
                state.window_bytes -= old.object.json.len();
                state.window_start = old.revision;
            }
        }
        expire_snapshots(&mut state.snapshots);
        let index = self.index;
        let indexed = |entry: Option<&Arc<Entry>>, value: &str| {
            entry.is_some_and(|e| {
                index
                    .and_then(|i| e.fields.get(i))
                    .is_some_and(|v| v == value)
            })
        };
        state.sinks.retain(|_, sink| {
            let wanted = key.starts_with(&sink.prefix)
                && sink.index.as_deref().is_none_or(|v| {
                    indexed(Some(&event.object), v) || indexed(event.prev.as_ref(), v)
                });
            if !wanted {
                return !sink.tx.is_closed();
            }
            match sink.tx.try_send(Arc::clone(&event)) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sink.lagged.store(true, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        drop(state);
        self.progress.send_replace(Some(revision));
        true
    }

    /// Ends every watcher (they get 410 and relist): the cache can no longer vouch for what
    /// it would send them.
    fn end_watchers(&self) {
        let mut state = self.write();
        for sink in state.sinks.values() {
            sink.lagged.store(true, Ordering::Release);
        }
        state.sinks.clear();
    }

    /// Notes that the store has been seen up to `revision`.
    fn advance(&self, revision: u64) {
        let mut state = self.write();
        expire_snapshots(&mut state.snapshots);
        if revision > state.revision {
            state.revision = revision;
            drop(state);
            self.progress.send_replace(Some(revision));
        }
    }

    /// Lists and follows the store until shutdown, relisting (after a growing pause) when the
    /// watch breaks.
    async fn run(self: Arc<Self>, store: Store, shutdown: CancellationToken) {
        const FIRST_PAUSE: Duration = Duration::from_millis(50);
        let mut backoff = FIRST_PAUSE;
        let pause = |backoff: &mut Duration| {
            let now = *backoff;
            *backoff = (*backoff * 2).min(Duration::from_secs(2));
            tokio::time::sleep(now)
        };
        while !shutdown.is_cancelled() {
            let list = tokio::select! {
                _ = shutdown.cancelled() => return,
                list = store.list(&self.prefix) => list,
            };
            let list = match list {
                Ok(list) => list,
                Err(e) => {
                    tracing::debug!(resource = self.rt.plural, error = %e, "watch cache list failed");
                    pause(&mut backoff).await;
                    continue;
                }
            };
            let revision = list.revision;
            let mut items = match store.watch_progress(&self.prefix, revision) {
                Ok(items) => items,
                Err(e) => {
                    tracing::debug!(resource = self.rt.plural, error = %e, "watch cache watch failed");
                    pause(&mut backoff).await;
                    continue;
                }
            };
            let decode = {
                let this = Arc::clone(&self);
                tokio::task::spawn_blocking(move || this.reset(list.items, revision))
            };
            if decode.await.is_err() {
                tracing::error!(resource = self.rt.plural, "watch cache fill failed");
                pause(&mut backoff).await;
                continue;
            }
            tracing::debug!(resource = self.rt.plural, revision, "watch cache filled");
            let followed = Instant::now();
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    item = items.next() => item,
                };
                match item {
                    Some(Ok(WatchItem::Event(event))) => {
                        if !self.apply(event) {
                            break;
                        }
                    }
                    Some(Ok(WatchItem::Progress(revision))) => self.advance(revision),
                    Some(Err(e)) => {
                        tracing::info!(resource = self.rt.plural, error = %e, "watch cache relists");
                        break;
                    }
                    None => {
                        tracing::info!(resource = self.rt.plural, "watch cache relists");
                        break;
                    }
                }
            }
            if followed.elapsed() > Duration::from_secs(10) {
                backoff = FIRST_PAUSE;
            }
            pause(&mut backoff).await;
        }
    }
}

/// Drops kept snapshots past their time (oldest first: they are kept in time order).
fn expire_snapshots(snapshots: &mut VecDeque<(Instant, Snapshot)>) {
    while snapshots
        .front()
        .is_some_and(|(at, _)| at.elapsed() >= SNAPSHOT_TTL)
    {
        snapshots.pop_front();
    }
}

/// Every resource's cacher, started on first use.
pub struct Caches {
    store: Store,
    shutdown: CancellationToken,
    cachers: Mutex<HashMap<String, Arc<Cacher>>>,
}

impl Caches {
    pub fn new(store: Store, shutdown: CancellationToken) -> Caches {
        Caches {
            store,
            shutdown,
            cachers: Mutex::new(HashMap::new()),
        }
    }

    /// The cacher of `rt`, started if it is not running yet.
    pub fn cacher(&self, rt: &'static ResourceType) -> Arc<Cacher> {
        let prefix = rt.storage_prefix();
        let mut cachers = self.cachers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cachers.get(&prefix) {
            return Arc::clone(c);
        }
        let mut fields: Vec<&'static str> = COMMON_FIELDS.to_vec();
        fields.extend(rt.strategy.selectable_fields());
        let index = rt
            .strategy
            .watch_index()
            .and_then(|f| fields.iter().position(|x| *x == f));
        let cacher = Arc::new(Cacher {
            rt,
            prefix: prefix.clone(),
            fields,
            index,
            state: RwLock::new(State::default()),
            progress: watch::channel(None).0,
        });
        let (store, shutdown, supervised) = (
            self.store.clone(),
            self.shutdown.clone(),
            Arc::clone(&cacher),
        );
        // If the cache's task dies (a panic), its watchers end and it starts over: a dead
        // cache must not leave watchers silent and lists frozen.
        tokio::spawn(async move {
            loop {
                let run =
                    tokio::spawn(Arc::clone(&supervised).run(store.clone(), shutdown.clone()));
                match run.await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(resource = supervised.rt.plural, error = %e, "watch cache task died; restarting");
                        supervised.end_watchers();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        cachers.insert(prefix, Arc::clone(&cacher));
        cacher
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::kinds::core::configmap::CONFIG_MAP;

    async fn open() -> (tempfile::TempDir, Store, CancellationToken, Caches) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let shutdown = CancellationToken::new();
        let caches = Caches::new(store.clone(), shutdown.clone());
        (dir, store, shutdown, caches)
    }

    fn cm(name: &str, value: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default", "labels": {"v": value}},
            "data": {"v": value}}))
        .unwrap()
    }

    fn key(name: &str) -> String {
        CONFIG_MAP.storage_key(Some("default"), name)
    }

    fn names(snapshot: &Snapshot) -> Vec<String> {
        snapshot
            .range(None)
            .map(|e| {
                let obj = e.object().unwrap();
                format!(
                    "{}={}",
                    obj["metadata"]["name"].as_str().unwrap(),
                    obj["data"]["v"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn follows_the_store_and_knows_its_revision_without_changes_of_its_own() {
        let (_dir, store, shutdown, caches) = open().await;
        store.create(&key("a"), cm("a", "1")).await.unwrap();
        let cacher = caches.cacher(&CONFIG_MAP);
        let prefix = CONFIG_MAP.storage_prefix();
        cacher
            .wait_for(store.consistent_revision().await.unwrap())
            .await
            .unwrap();
        assert_eq!(names(&cacher.snapshot(&prefix)), ["a=1"]);

        let b = store.create(&key("b"), cm("b", "1")).await.unwrap();
        store.update(&key("a"), cm("a", "2"), None).await.unwrap();
        store.delete(&key("b"), Some(b.mod_revision)).await.unwrap();
        // A write elsewhere moves the store on; the cache must learn it reflects that too.
        let other = store
            .create("/registry/core/secrets/default/s", b"{}".to_vec())
            .await
            .unwrap();
        cacher.wait_for(other.mod_revision).await.unwrap();
        let snapshot = cacher.snapshot(&prefix);
        assert_eq!(snapshot.revision, other.mod_revision);
        assert_eq!(names(&snapshot), ["a=2"]);
        let a = snapshot.range(None).next().unwrap();
        assert_eq!(
            a.object().unwrap()["metadata"]["resourceVersion"],
            json!((other.mod_revision - 2).to_string())
        );
        shutdown.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_kept_snapshot_still_shows_its_revision_after_changes() {
        let (_dir, store, shutdown, caches) = open().await;
        for n in ["a", "b", "c"] {
            store.create(&key(n), cm(n, "1")).await.unwrap();
        }
        let cacher = caches.cacher(&CONFIG_MAP);
        let prefix = CONFIG_MAP.storage_prefix();
        cacher
            .wait_for(store.consistent_revision().await.unwrap())
            .await
            .unwrap();
        let first = cacher.snapshot(&prefix);
        cacher.keep(&first);
        store.update(&key("b"), cm("b", "2"), None).await.unwrap();
        store.delete(&key("c"), None).await.unwrap();
        let d = store.create(&key("d"), cm("d", "1")).await.unwrap();
        cacher.wait_for(d.mod_revision).await.unwrap();

        let again = cacher.snapshot_at(first.revision, &prefix).unwrap();
        assert_eq!(names(&again), ["a=1", "b=1", "c=1"]);
        let after_a: Vec<_> = again
            .range(Some(&key("a")))
            .map(|e| e.key.clone())
            .collect();
        assert_eq!(after_a, [key("b"), key("c")]);
        assert_eq!(names(&cacher.snapshot(&prefix)), ["a=1", "b=2", "d=1"]);
        // Neither kept nor current: gone.
        assert!(cacher.snapshot_at(first.revision + 1, &prefix).is_none());
        shutdown.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_watcher_that_stops_reading_is_cut_off_and_the_others_get_everything() {
        let (_dir, store, shutdown, caches) = open().await;
        let cacher = caches.cacher(&CONFIG_MAP);
        let prefix = CONFIG_MAP.storage_prefix();
        let start = store.consistent_revision().await.unwrap();
        let mut slow = cacher
            .subscribe(&prefix, Start::After(start), None)
            .await
            .unwrap()
            .unwrap();
        let mut fast = cacher
            .subscribe(&prefix, Start::After(start), None)
            .await
            .unwrap()
            .unwrap();
        let writes = WATCHER_QUEUE + 10;
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < writes {
                let Some(e) = fast.events.recv().await else {
                    break;
                };
                seen.push(e.revision);
            }
            (seen, fast.lagged.load(Ordering::Acquire))
        });
        let mut last = 0;
        for i in 0..writes {
            last = store
                .create(&key(&format!("k{i}")), cm("k", "1"))
                .await
                .unwrap()
                .mod_revision;
        }
        let (seen, fast_lagged) = reader.await.unwrap();
        assert_eq!(seen.len(), writes);
        assert_eq!(seen.last(), Some(&last));
        assert!(!fast_lagged);
        // The slow one got a full queue, then its channel closed with the lag flag set.
        let mut queued = 0;
        while slow.events.recv().await.is_some() {
            queued += 1;
        }
        assert_eq!(queued, WATCHER_QUEUE);
        assert!(slow.lagged.load(Ordering::Acquire));
        shutdown.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_watch_from_before_the_window_is_left_to_the_store() {
        let (_dir, store, shutdown, caches) = open().await;
        let early = store
            .create(&key("a"), cm("a", "1"))
            .await
            .unwrap()
            .mod_revision;
        store.create(&key("b"), cm("b", "1")).await.unwrap();
        let cacher = caches.cacher(&CONFIG_MAP);
        let prefix = CONFIG_MAP.storage_prefix();
        let now = store.consistent_revision().await.unwrap();
        cacher.wait_for(now).await.unwrap();
        // The cache started after `early`: it cannot replay from there.
        assert!(
            cacher
                .subscribe(&prefix, Start::After(early), None)
                .await
                .unwrap()
                .is_none()
        );
        let c = store
            .create(&key("c"), cm("c", "1"))
            .await
            .unwrap()
            .mod_revision;
        let sub = cacher
            .subscribe(&prefix, Start::After(now), None)
            .await
            .unwrap()
            .unwrap();
        let replayed: Vec<u64> = sub.replay.iter().map(|e| e.revision).collect();
        assert_eq!(replayed, [c]);
        let initial = cacher
            .subscribe(&prefix, Start::Initial { min_revision: c }, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(initial.initial.len(), 3);
        assert_eq!(initial.revision, c);
        shutdown.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn pod_watchers_of_one_node_are_not_sent_other_nodes_pods() {
        use crate::api::kinds::core::pod::POD;
        let (_dir, store, shutdown, caches) = open().await;
        let cacher = caches.cacher(&POD);
        assert_eq!(cacher.index_field(), Some("spec.nodeName"));
        let prefix = POD.storage_prefix();
        let start = store.consistent_revision().await.unwrap();
        let watch = |node: &str| cacher.subscribe(&prefix, Start::After(start), Some(node.into()));
        let mut n1 = watch("n1").await.unwrap().unwrap();
        let mut n2 = watch("n2").await.unwrap().unwrap();
        let mut all = cacher
            .subscribe(&prefix, Start::After(start), None)
            .await
            .unwrap()
            .unwrap();
        let pod = |node: &str| {
            serde_json::to_vec(&json!({"metadata": {"name": "p", "namespace": "default"},
                "spec": {"nodeName": node}}))
            .unwrap()
        };
        let key = POD.storage_key(Some("default"), "p");
        let on_n1 = store.create(&key, pod("n1")).await.unwrap().mod_revision;
        let moved = store
            .update(&key, pod("n2"), None)
            .await
            .unwrap()
            .mod_revision;
        let gone = store.delete(&key, None).await.unwrap().1;
        cacher.wait_for(gone).await.unwrap();
        let drain = |rx: &mut mpsc::Receiver<Arc<Event>>| {
            let mut got = Vec::new();
            while let Ok(e) = rx.try_recv() {
                got.push(e.revision);
            }
            got
        };
        // n1 sees its pod arrive and leave; n2 sees it arrive and go; the unindexed all.
        assert_eq!(drain(&mut n1.events), [on_n1, moved]);
        assert_eq!(drain(&mut n2.events), [moved, gone]);
        assert_eq!(drain(&mut all.events), [on_n1, moved, gone]);
        shutdown.cancel();
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_watcher_that_goes_is_forgotten_without_waiting_for_a_change() {
        let (_dir, store, shutdown, caches) = open().await;
        let cacher = caches.cacher(&CONFIG_MAP);
        let prefix = CONFIG_MAP.storage_prefix();
        let start = Start::Initial {
            min_revision: store.consistent_revision().await.unwrap(),
        };
        let sub = cacher
            .subscribe(&prefix, start, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cacher.read().sinks.len(), 1);
        drop(sub);
        assert_eq!(cacher.read().sinks.len(), 0);
        shutdown.cancel();
        store.shutdown().await.unwrap();
    }
}
