//! Events as Kubernetes components record them (client-go's `tools/record`): core/v1 Events
//! about an object, which `kubectl describe` and `kubectl get events` show.
//!
//! A [`Recorder`] never blocks its caller and never fails it: [`Recorder::record`] puts the
//! event on a bounded queue (full: the event is dropped and counted) and one task per recorder
//! writes them. On the way the [`Correlator`] applies upstream's two rules:
//!
//! - **spam filter**: per source and involved object, a token bucket of `burst` (25) events
//!   refilled with one every `refill` (5 minutes); events beyond it are dropped, so a
//!   crash-looping pod cannot flood the store;
//! - **aggregation**: an event equal to one already written (same source, object, type,
//!   reason and message) increments that Event's `count` and `lastTimestamp` instead of
//!   creating another.
//!
//! Both caches are bounded (`cache` entries each). Events of cluster-scoped objects (Nodes)
//! live in the `default` namespace, as upstream. Event expiry (an hour upstream) is not done
//! here: the controllers' event TTL removes old Events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// An Event's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Who records: `source.component` (`default-scheduler`, `kubelet`, `replicaset-controller`)
/// and `source.host` (the node, for agents).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    /// The component.
    pub component: String,
    /// The host it runs on, if it is per host.
    pub host: Option<String>,
}

/// Limits of a recorder.
#[derive(Clone, Debug)]
pub struct Options {
    /// Events a source may record about one object at once.
    pub burst: u32,
    /// One more such event is allowed every this long.
    pub refill: Duration,
    /// Events waiting to be written; more are dropped.
    pub queue: usize,
    /// Entries of each correlation cache.
    pub cache: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            burst: 25,
            refill: Duration::from_secs(300),
            queue: 1024,
            cache: 4096,
        }
    }
}

/// One event to record.
#[derive(Clone, Debug)]
pub struct Record {
    /// The object it is about.
    pub object: ObjectReference,
    /// Normal or Warning.
    pub type_: EventType,
    /// A short CamelCase reason (`Scheduled`, `BackOff`).
    pub reason: String,
    /// What happened, for people.
    pub message: String,
}

/// Records events about objects; cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Record>>,
    dropped: Arc<AtomicU64>,
}

/// Longest message kept (longer ones are cut, marked with `...`).
const MAX_MESSAGE: usize = 1024;

impl Recorder {
    /// A recorder writing through `client` as `source` until `shutdown`.
    pub fn start(
        client: kube::Client,
        source: Source,
        options: Options,
        shutdown: CancellationToken,
    ) -> Recorder {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let sink = Sink {
            client,
            correlator: Correlator::new(source.clone(), options),
            source,
        };
        tokio::spawn(sink.run(rx, shutdown));
        Recorder {
            tx: Some(tx),
            dropped: Arc::default(),
        }
    }

    /// A recorder that records nothing (components run without events).
    pub fn disabled() -> Recorder {
        Recorder {
            tx: None,
            dropped: Arc::default(),
        }
    }

    /// Records a Normal event.
    pub fn normal(&self, object: &ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, EventType::Normal, reason, message.into());
    }

    /// Records a Warning event.
    pub fn warning(&self, object: &ObjectReference, reason: &str, message: impl Into<String>) {
        self.record(object, EventType::Warning, reason, message.into());
    }

    /// Queues an event; never waits (a full queue drops it).
    pub fn record(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        message: String,
    ) {
        let Some(tx) = &self.tx else {
            return;
        };
        let record = Record {
            object: object.clone(),
            type_,
            reason: reason.to_owned(),
            message: truncate(message),
        };
        if tx.try_send(record).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                debug!(dropped, "event queue full, events dropped");
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// A reference to `obj` for [`Recorder::record`].
pub fn reference<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

/// What to do with one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Over the spam filter's budget.
    Drop,
    /// Write a new Event.
    Create,
    /// Count it on the Event already written under this name.
    Update {
        /// The Event's name.
        name: String,
        /// Its new count.
        count: i32,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The spam filter and aggregation of one source, with bounded memory.
#[derive(Debug)]
pub struct Correlator {
    source: Source,
    options: Options,
    buckets: HashMap<String, Bucket>,
    written: HashMap<String, (String, i32)>,
}

fn object_key(object: &ObjectReference) -> String {
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        field(&object.api_version),
        field(&object.kind),
        field(&object.namespace),
        field(&object.name),
        field(&object.uid),
        field(&object.field_path),
    ]
    .join("\u{0}")
}

impl Correlator {
    /// An empty correlator for `source`.
    pub fn new(source: Source, options: Options) -> Correlator {
        Correlator {
            source,
            options,
            buckets: HashMap::new(),
            written: HashMap::new(),
        }
    }

    fn aggregation_key(&self, record: &Record) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            object_key(&record.object),
            record.type_.as_str(),
            record.reason,
            record.message,
            self.source.component
        )
    }

    /// Decides about `record` at `now`.
    pub fn decide(&mut self, record: &Record, now: Instant) -> Decision {
        let key = object_key(&record.object);
        let burst = f64::from(self.options.burst.max(1));
        let refill = self.options.refill.as_secs_f64().max(f64::MIN_POSITIVE);
        bound(&mut self.buckets, self.options.cache);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let gained = now.duration_since(bucket.at).as_secs_f64() / refill;
        bucket.tokens = (bucket.tokens + gained).min(burst);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Decision::Drop;
        }
        bucket.tokens -= 1.0;
        match self.written.get_mut(&self.aggregation_key(record)) {
            Some((name, count)) => {
                *count = count.saturating_add(1);
                Decision::Update {
                    name: name.clone(),
                    count: *count,
                }
            }
            None => Decision::Create,
        }
    }

    /// Remembers that `record` was written as the Event `name` with `count`.
    pub fn written(&mut self, record: &Record, name: String, count: i32) {
        bound(&mut self.written, self.options.cache);
        let key = self.aggregation_key(record);
        self.written.insert(key, (name, count));
    }

    /// Forgets the Event written for `record` (it is gone).
    pub fn forget(&mut self, record: &Record) {
        let key = self.aggregation_key(record);
        self.written.remove(&key);
    }
}

/// Keeps `map` under `cap` entries by dropping one when full.
fn bound<V>(map: &mut HashMap<String, V>, cap: usize) {
    if map.len() >= cap.max(1)
        && let Some(victim) = map.keys().next().cloned()
    {
        map.remove(&victim);
    }
}

struct Sink {
    client: kube::Client,
    correlator: Correlator,
    source: Source,
}

impl Sink {
    async fn run(mut self, mut rx: mpsc::Receiver<Record>, shutdown: CancellationToken) {
        loop {
            let record = tokio::select! {
                () = shutdown.cancelled() => return,
                record = rx.recv() => match record {
                    Some(record) => record,
                    None => return,
                },
            };
            self.write(record).await;
        }
    }

    async fn write(&mut self, record: Record) {
        let namespace = record
            .object
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".to_owned());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Timestamp::now();
        match self.correlator.decide(&record, Instant::now()) {
            Decision::Drop => {
                debug!(reason = %record.reason, object = ?record.object.name, "event over its budget, dropped");
            }
            Decision::Update { name, count } => {
                let patch = json!({"count": count, "lastTimestamp": Time(now)});
                match api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        self.correlator.forget(&record);
                        self.create(&api, &namespace, &record, now).await;
                    }
                    Err(error) => debug!(%error, %name, "cannot update event"),
                }
            }
            Decision::Create => self.create(&api, &namespace, &record, now).await,
        }
    }

    async fn create(&mut self, api: &Api<Event>, namespace: &str, record: &Record, now: Timestamp) {
        let object_name = record.object.name.as_deref().unwrap_or("unknown");
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{object_name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            involved_object: record.object.clone(),
            reason: Some(record.reason.clone()),
            message: Some(record.message.clone()),
            type_: Some(record.type_.as_str().to_owned()),
            source: Some(EventSource {
                component: Some(self.source.component.clone()),
                host: self.source.host.clone(),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            reporting_component: Some(self.source.component.clone()),
            reporting_instance: Some(
                self.source
                    .host
                    .clone()
                    .unwrap_or_else(|| self.source.component.clone()),
            ),
            ..Event::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                self.correlator.written(record, name, 1);
            }
            Err(error) => debug!(%error, reason = %record.reason, "cannot create event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(reason: &str, message: &str) -> Record {
        Record {
            object: ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some("default".into()),
                name: Some("p".into()),
                uid: Some("u1".into()),
                ..ObjectReference::default()
            },
            type_: EventType::Normal,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn equal_events_are_counted_on_one() {
        let mut c = Correlator::new(Source::default(), Options::default());
        let now = Instant::now();
        let started = record("Started", "Started container c");
        assert_eq!(c.decide(&started, now), Decision::Create);
        c.written(&started, "p.1".into(), 1);
        assert_eq!(
            c.decide(&started, now),
            Decision::Update {
                name: "p.1".into(),
                count: 2
            }
        );
        // Another message is another Event.
        assert_eq!(
            c.decide(&record("Started", "Started container d"), now),
            Decision::Create
        );
        c.forget(&started);
        assert_eq!(c.decide(&started, now), Decision::Create);
    }

    #[test]
    fn an_object_gets_a_burst_then_one_event_per_refill() {
        let options = Options {
            burst: 3,
            refill: Duration::from_secs(10),
            ..Options::default()
        };
        let mut c = Correlator::new(Source::default(), options);
        let now = Instant::now();
        let decisions: Vec<bool> = (0..5)
            .map(|i| c.decide(&record("BackOff", &i.to_string()), now) != Decision::Drop)
            .collect();
        assert_eq!(decisions, [true, true, true, false, false]);
        let later = now + Duration::from_secs(10);
        assert_ne!(c.decide(&record("BackOff", "x"), later), Decision::Drop);
        assert_eq!(c.decide(&record("BackOff", "y"), later), Decision::Drop);
    }

    #[test]
    fn caches_stay_bounded_and_messages_short() {
        let options = Options {
            cache: 8,
            ..Options::default()
        };
        let mut c = Correlator::new(Source::default(), options);
        let now = Instant::now();
        for i in 0..100 {
            let mut r = record("Created", "m");
            r.object.uid = Some(i.to_string());
            c.decide(&r, now);
            c.written(&r, format!("e{i}"), 1);
        }
        assert!(c.buckets.len() <= 8 && c.written.len() <= 8);
        let long = truncate("é".repeat(2000));
        assert!(long.len() <= MAX_MESSAGE && long.ends_with("..."));
    }
}
