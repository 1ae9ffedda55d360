//! Watch streams: newline-delimited JSON `WatchEvent`s over a chunked HTTP body.
//!
//! A watch starts after the requested `resourceVersion` (absent or "0": the current objects
//! first, as `ADDED`), applies label and field selectors to both sides of each change (so an
//! object leaving the selection is seen as `DELETED`), sends `BOOKMARK`s when asked, and turns
//! store compaction into an `ERROR` event carrying a 410 `Status`. One task per watch, owned
//! by the response body: it ends when the client goes, on `timeoutSeconds`, or at shutdown.

use std::convert::Infallible;
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

use crate::error::ApiError;
use crate::object::{decode, name as object_name, set_resource_version};
use crate::resources::{Ctx, Filter};
use crate::table::render;

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
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
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

    async fn send(&mut self, kind: &str, object: Value) -> Open {
        let object = match (self.ctx.table, kind) {
            (Some(req), "ADDED" | "MODIFIED" | "DELETED") => {
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
        // A client that stays connected but stops reading must not hold the task past shutdown.
        tokio::select! {
            sent = self.tx.send(Bytes::from(line)) => sent.is_ok(),
            _ = self.ctx.state.inner.shutdown.cancelled() => false,
        }
    }

    async fn send_error(&mut self, err: ApiError) -> Open {
        let (_, status) = err.status();
        self.send("ERROR", status).await
    }

    fn bookmark(&self, rev: u64, initial_end: bool) -> Value {
        let rt = self.ctx.target.rt;
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta})
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
        let period = self
            .ctx
            .state
            .inner
            .bookmark_interval
            .max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
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

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::api::registry::find_by_plural;
    use crate::resources::{Params, Target};
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
        let ctx = Ctx {
            state,
            target: Target {
                rt,
                namespace: None,
                name: None,
                sub: None,
            },
            params: Params::default(),
            headers: HeaderMap::new(),
            table: None,
            user: None,
        };
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
