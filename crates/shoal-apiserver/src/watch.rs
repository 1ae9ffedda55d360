//! Watch streams: newline-delimited JSON `WatchEvent`s over a chunked HTTP body.
//!
//! A watch starts after the requested `resourceVersion` (absent or "0": the current objects
//! first, as `ADDED`), applies label and field selectors to both sides of each change (so an
//! object leaving the selection is seen as `DELETED`), sends `BOOKMARK`s when asked, and ends
//! with an `ERROR` event carrying a 410 `Status` when it can no longer follow (compaction, or a
//! client too slow for the watch cache). One task per watch, owned by the response body: it
//! ends when the client goes, on `timeoutSeconds`, or at shutdown.
//!
//! Watches are served from the resource's watch cache (`cache.rs`): each change arrives
//! decoded once, shared with every other watcher, and is written as the cached JSON. Only a
//! watch from a `resourceVersion` older than the cache's window reads the store itself.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use shoal_store::{KeyValue, StoreError, WatchEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::cache::{Cacher, Entry, Event, Start, Subscription};
use crate::error::ApiError;
use crate::object::{decode, name as object_name, set_resource_version};
use crate::resources::{Ctx, Filter};
use crate::table::{Shape, partial, partial_metadata, render, write_partial};

/// Starts a watch on the collection `ctx` addresses (`name` narrows it to one object).
pub async fn serve(ctx: Ctx, name: Option<String>) -> Result<Response, ApiError> {
    let filter = Filter::from_params(&ctx.params, ctx.target.rt)?;
    let bookmarks = ctx.params.flag("allowWatchBookmarks");
    let send_initial = ctx.params.flag("sendInitialEvents");
    let timeout = match ctx.params.get("timeoutSeconds") {
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => None,
    };
    let requested = match ctx.params.get("resourceVersion") {
        None | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let prefix = ctx.target.collection_prefix();
    let store = ctx.state.store().clone();
    let cacher = ctx.state.caches().cacher(ctx.target.rt);
    let from = match (requested, send_initial) {
        (Some(rv), false) => Start::After(rv),
        // Unset means the most recent state, as a consistent read; "0" any state.
        (_, _) if ctx.params.get("resourceVersion").is_none() => Start::Initial {
            min_revision: store.consistent_revision().await?,
        },
        (rv, _) => Start::Initial {
            min_revision: rv.unwrap_or(0),
        },
    };
    let index = cacher
        .index_field()
        .and_then(|f| filter.fields.as_ref()?.exact(f))
        .map(str::to_string);
    if let Some(subscription) = cacher.subscribe(&prefix, from, index).await? {
        let (tx, rx) = mpsc::channel::<Bytes>(256);
        let watcher = Watcher {
            ctx,
            filter,
            name,
            first_table: true,
            tx,
        };
        let options = Options {
            bookmarks,
            send_initial,
            timeout,
        };
        tokio::spawn(watcher.run_cached(cacher, subscription, options));
        return Ok(streaming(rx));
    }
    let (initial, start) = match requested {
        Some(rv) if !send_initial => (None, rv),
        _ => {
            let snapshot = store.list(&prefix).await?;
            (Some(snapshot.items), snapshot.revision)
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let watcher = Watcher {
        ctx,
        filter,
        name,
        first_table: true,
        tx,
    };
    let events = store.watch(&prefix, start);
    tokio::spawn(watcher.run(events, initial, start, bookmarks, send_initial, timeout));
    Ok(streaming(rx))
}

/// The response carrying what the watch task sends.
fn streaming(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What the client asked of its watch besides the start.
struct Options {
    bookmarks: bool,
    send_initial: bool,
    timeout: Option<u64>,
}

struct Watcher {
    ctx: Ctx,
    filter: Filter,
    name: Option<String>,
    first_table: bool,
    tx: mpsc::Sender<Bytes>,
}

/// Whether the client still listens.
type Open = bool;

impl Watcher {
    fn selects(&self, obj: &Value) -> bool {
        self.name.as_deref().is_none_or(|n| object_name(obj) == n) && self.filter.matches(obj)
    }

    fn selects_entry(&self, cacher: &Cacher, entry: &Entry) -> bool {
        self.name
            .as_deref()
            .is_none_or(|n| cacher.field(entry, "metadata.name") == Some(n))
            && self.filter.matches_entry(cacher, entry)
    }

    /// One cached change as at most one watch event, by what this watcher selects.
    fn translate_cached<'e>(
        &self,
        cacher: &Cacher,
        event: &'e Event,
    ) -> Option<(&'static str, &'e Entry)> {
        if event.deleted {
            return self
                .selects_entry(cacher, &event.object)
                .then_some(("DELETED", &event.object));
        }
        let now = self.selects_entry(cacher, &event.object);
        let before = event
            .prev
            .as_ref()
            .is_some_and(|p| self.selects_entry(cacher, p));
        match (before, now) {
            (false, true) => Some(("ADDED", &event.object)),
            (true, true) => Some(("MODIFIED", &event.object)),
            (true, false) => Some(("DELETED", &event.object)),
            (false, false) => None,
        }
    }

    /// Sends a cached object: its JSON as it is, or as a Table row when the client asked.
    async fn send_entry(&mut self, kind: &str, entry: &Entry) -> Open {
        if matches!(self.ctx.shape, Shape::Table(_)) {
            return match entry.object() {
                Ok(obj) => self.send(kind, obj).await,
                Err(e) => {
                    self.send_error(e).await;
                    false
                }
            };
        }
        let mut line = Vec::with_capacity(entry.json.len() + 32);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        if self.ctx.shape == Shape::Metadata {
            write_partial(&entry.json, &mut line);
        } else {
            line.extend_from_slice(&entry.json);
        }
        line.extend_from_slice(b"}\n");
        self.send_line(Bytes::from(line)).await
    }

    async fn send_line(&mut self, line: Bytes) -> Open {
        // A client that stays connected but stops reading must not hold the task past shutdown.
        tokio::select! {
            sent = self.tx.send(line) => sent.is_ok(),
            _ = self.ctx.state.inner.shutdown.cancelled() => false,
        }
    }

    async fn send(&mut self, kind: &str, object: Value) -> Open {
        let object = match (self.ctx.shape, kind) {
            (Shape::Metadata, "ADDED" | "MODIFIED" | "DELETED") => partial(&object),
            (Shape::Table(req), "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let table = render(
                    self.ctx.target.rt,
                    req,
                    [&object],
                    json!({"resourceVersion": rv}),
                    self.first_table,
                );
                self.first_table = false;
                table
            }
            _ => object,
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        self.send_line(Bytes::from(line)).await
    }

    async fn send_error(&mut self, err: ApiError) -> Open {
        let (_, status) = err.status();
        self.send("ERROR", status).await
    }

    /// Ticks every bookmark interval, the first one interval from now.
    fn bookmark_ticker(&self) -> tokio::time::Interval {
        let period = self
            .ctx
            .state
            .inner
            .bookmark_interval
            .max(Duration::from_millis(10));
        tokio::time::interval_at(Instant::now() + period, period)
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Value {
        let rt = self.ctx.target.rt;
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        match self.ctx.shape {
            Shape::Metadata => partial_metadata(meta),
            _ => json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
        }
    }

    /// Translates one store change into at most one watch event.
    fn translate(&self, event: WatchEvent) -> Result<Option<(&'static str, Value)>, ApiError> {
        match event {
            WatchEvent::Put { kv, prev } => {
                let new = decode(&kv)?;
                let now = self.selects(&new);
                let unfiltered = self.name.is_none()
                    && self.filter.labels.is_none()
                    && self.filter.fields.is_none();
                let before = match &prev {
                    None => false,
                    Some(_) if unfiltered => true,
                    Some(p) => self.selects(&decode(p)?),
                };
                Ok(match (before, now) {
                    (false, true) => Some(("ADDED", new)),
                    (true, true) => Some(("MODIFIED", new)),
                    (true, false) => Some(("DELETED", new)),
                    (false, false) => None,
                })
            }
            WatchEvent::Delete { prev, revision } => {
                let mut old = decode(&prev)?;
                if !self.selects(&old) {
                    return Ok(None);
                }
                set_resource_version(&mut old, revision);
                Ok(Some(("DELETED", old)))
            }
        }
    }

    /// Follows the watch cache: the initial objects or the replayed events, then live ones.
    async fn run_cached(mut self, cacher: Arc<Cacher>, sub: Subscription, options: Options) {
        let Subscription {
            initial,
            replay,
            revision,
            mut events,
            lagged,
            registered: _registered,
        } = sub;
        for entry in &initial {
            if self.selects_entry(&cacher, entry) && !self.send_entry("ADDED", entry).await {
                return;
            }
        }
        drop(initial);
        if options.send_initial && options.bookmarks {
            let mark = self.bookmark(revision, true);
            if !self.send("BOOKMARK", mark).await {
                return;
            }
        }
        let mut last = revision;
        for event in &replay {
            last = event.revision;
            if let Some((kind, entry)) = self.translate_cached(&cacher, event)
                && !self.send_entry(kind, entry).await
            {
                return;
            }
        }
        drop(replay);
        let shutdown = self.ctx.state.inner.shutdown.clone();
        let mut ticker = self.bookmark_ticker();
        let expired = deadline(options.timeout);
        tokio::pin!(expired);
        loop {
            let tx = self.tx.clone();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = &mut expired => break,
                _ = ticker.tick(), if options.bookmarks => {
                    // Read the cache's revision before looking at the queue: the cache queues
                    // an event before it publishes its revision, so an empty queue then means
                    // every event up to that revision has been sent.
                    // A watcher cut off gets nothing more, so the cache's revision says
                    // nothing about it.
                    let seen = cacher.revision();
                    if events.is_empty() && !lagged.load(Ordering::Acquire) {
                        last = last.max(seen);
                    }
                    let mark = self.bookmark(last, false);
                    if !self.send("BOOKMARK", mark).await {
                        break;
                    }
                }
                event = events.recv() => match event {
                    Some(event) => {
                        last = event.revision;
                        if let Some((kind, entry)) = self.translate_cached(&cacher, &event)
                            && !self.send_entry(kind, entry).await
                        {
                            break;
                        }
                    }
                    None => {
                        if lagged.load(Ordering::Acquire) {
                            self.send_error(ApiError::Gone(format!(
                                "too old resource version: {last} (the watch fell behind; list again)"
                            )))
                            .await;
                        }
                        break;
                    }
                },
            }
        }
        tracing::trace!(resource = self.ctx.target.rt.plural, "watch ended");
    }

    async fn run(
        mut self,
        events: Result<
            futures::stream::BoxStream<'static, Result<WatchEvent, StoreError>>,
            StoreError,
        >,
        initial: Option<Vec<KeyValue>>,
        start: u64,
        bookmarks: bool,
        send_initial: bool,
        timeout: Option<u64>,
    ) {
        let mut events = match events {
            Ok(events) => events,
            Err(e) => {
                self.send_error(ApiError::Store(e)).await;
                return;
            }
        };
        for kv in initial.unwrap_or_default() {
            let obj = match decode(&kv) {
                Ok(obj) => obj,
                Err(e) => {
                    self.send_error(e).await;
                    return;
                }
            };
            if self.selects(&obj) && !self.send("ADDED", obj).await {
                return;
            }
        }
        if send_initial && bookmarks {
            let mark = self.bookmark(start, true);
            if !self.send("BOOKMARK", mark).await {
                return;
            }
        }
        let shutdown = self.ctx.state.inner.shutdown.clone();
        let mut ticker = self.bookmark_ticker();
        let expired = deadline(timeout);
        tokio::pin!(expired);
        let mut last = start;
        loop {
            let tx = self.tx.clone();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tx.closed() => break,
                _ = &mut expired => break,
                _ = ticker.tick(), if bookmarks => {
                    let mark = self.bookmark(last, false);
                    if !self.send("BOOKMARK", mark).await {
                        break;
                    }
                }
                event = events.next() => match event {
                    None => break,
                    Some(Ok(event)) => {
                        last = event.revision();
                        match self.translate(event) {
                            Ok(Some((kind, obj))) => {
                                if !self.send(kind, obj).await {
                                    break;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                self.send_error(e).await;
                                break;
                            }
                        }
                    }
                    Some(Err(StoreError::WatchLagged)) => {
                        self.send_error(ApiError::Gone(format!("too old resource version: {last} (watch fell behind)"))).await;
                        break;
                    }
                    Some(Err(e)) => {
                        self.send_error(ApiError::Store(e)).await;
                        break;
                    }
                },
            }
        }
        tracing::trace!(resource = self.ctx.target.rt.plural, "watch ended");
    }
}

/// Completes after `timeout` seconds, or never.
async fn deadline(timeout: Option<u64>) {
    match timeout {
        Some(t) => tokio::time::sleep(Duration::from_secs(t)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::api::registry::find_by_plural;
    use crate::{AppState, Config};

    #[tokio::test]
    async fn send_blocked_on_a_slow_client_ends_at_shutdown() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = shoal_store::Store::open(dir.path())
            .await
            .expect("store opens");
        let shutdown = CancellationToken::new();
        let state =
            AppState::new(store.clone(), &Config::default(), shutdown.clone()).expect("state");
        let rt = find_by_plural("", "v1", "pods").expect("pods");
        let ctx = Ctx::internal(state, rt, None, None);
        // The client is connected (the receiver lives) but reads nothing.
        let (tx, mut rx) = mpsc::channel(1);
        let mut watcher = Watcher {
            ctx,
            filter: Filter::default(),
            name: None,
            first_table: true,
            tx,
        };
        assert!(watcher.send("BOOKMARK", json!({})).await);
        let blocked = tokio::spawn(async move { watcher.send("BOOKMARK", json!({})).await });
        shutdown.cancel();
        let open = tokio::time::timeout(Duration::from_secs(10), blocked)
            .await
            .expect("send returns at shutdown")
            .expect("send task");
        assert!(!open);
        assert!(rx.recv().await.is_some(), "the first event was queued");
        store.shutdown().await.expect("store shuts down");
    }
}
