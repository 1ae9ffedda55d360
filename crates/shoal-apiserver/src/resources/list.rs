//! LIST: a collection, whole or in pages, filtered by label and field selectors, served from
//! the watch cache and written as a stream of the cached JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use shoal_store::StoreError;

use super::{Ctx, Filter, Params};
use crate::cache::Entry;
use crate::error::{ApiError, json_response};
use crate::table::{Shape, render, write_partial};

/// Where a paginated list resumes: the revision of its first page and the last key returned.
#[derive(Debug, PartialEq, Eq)]
struct Continue {
    revision: u64,
    key: String,
}

/// Hex of `REVISION:KEY` (opaque to clients, as Kubernetes' base64 JSON token is).
fn encode_continue(revision: u64, key: &str) -> String {
    format!("{revision}:{key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Result<Continue, ApiError> {
    let bad = || ApiError::BadRequest("continue key is not valid".into());
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (revision, key) = text.split_once(':').ok_or_else(bad)?;
    let revision = revision.parse::<u64>().map_err(|_| bad())?;
    if revision == 0 || key.is_empty() {
        return Err(bad());
    }
    Ok(Continue {
        revision,
        key: key.to_string(),
    })
}

/// The 410 Kubernetes answers when a continue token's revision can no longer be read.
fn continue_expired() -> ApiError {
    ApiError::Gone(
        "The provided continue parameter is too old to display a consistent list result. \
         You can start a new list without the continue parameter, or use the continue token \
         in this response to retrieve the remainder of the results. Continuing with the \
         provided token results in an inconsistent list - objects that were created, \
         modified, or deleted between the time the first chunk was returned and now may show \
         up in the list."
            .into(),
    )
}

/// Refuses what upstream refuses in a list's `resourceVersion` and `resourceVersionMatch`
/// (400), rather than ignoring it.
fn check_list_version(params: &Params) -> Result<(), ApiError> {
    let rv = params.get("resourceVersion");
    if let Some(v) = rv
        && v.parse::<u64>().is_err()
    {
        return Err(ApiError::BadRequest(format!(
            "resourceVersion: Invalid value: {v:?}: must be a non-negative integer"
        )));
    }
    match (params.get("resourceVersionMatch"), rv) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(ApiError::BadRequest(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
        )),
        (Some("Exact"), Some("0")) => Err(ApiError::BadRequest(
            "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"".into(),
        )),
        (Some("NotOlderThan" | "Exact"), Some(_)) => Ok(()),
        (Some(other), _) => Err(ApiError::BadRequest(format!(
            "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

/// Lists a collection, `limit` objects a page when asked, from the watch cache.
///
/// Without `resourceVersion` the list is consistent: the cache is first brought up to the
/// store's current revision (a linearizable read of it). `resourceVersion=0` takes the cache as
/// it is, `N` (not older than) waits for N, `N` with `resourceVersionMatch=Exact` needs a
/// snapshot at exactly N. Every page of a paginated list is read from the first page's snapshot
/// (the continue token names its revision); a token whose snapshot is gone (expired, or made by
/// another member) is refused with 410 Expired, and clients list again.
pub(super) async fn list(ctx: &Ctx) -> Result<Response, ApiError> {
    let filter = Filter::from_params(&ctx.params, ctx.target.rt)?;
    check_list_version(&ctx.params)?;
    let limit = match ctx.params.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let resume = ctx
        .params
        .get("continue")
        .map(decode_continue)
        .transpose()?;
    let prefix = ctx.target.collection_prefix();
    let cacher = ctx.state.caches().cacher(ctx.target.rt);
    let snapshot = match &resume {
        Some(resume) => {
            // As upstream, a token is good while the store still holds its revision: probe
            // for compaction with a watch from there (dropped unread).
            match ctx.state.store().watch(&prefix, resume.revision) {
                Ok(_) => {}
                Err(StoreError::Compacted { .. }) => return Err(continue_expired()),
                Err(e) => return Err(e.into()),
            }
            cacher
                .snapshot_at(resume.revision, &prefix)
                .ok_or_else(continue_expired)?
        }
        None => match ctx.params.get("resourceVersion") {
            None => {
                let current = ctx.state.store().consistent_revision().await?;
                cacher.wait_for(current).await?;
                cacher.snapshot(&prefix)
            }
            Some(rv) => {
                // check_list_version made sure it is a number.
                let rv = rv.parse::<u64>().unwrap_or(0);
                cacher.wait_for(rv).await?;
                if ctx.params.get("resourceVersionMatch") == Some("Exact") {
                    cacher
                        .snapshot_at(rv, &prefix)
                        .ok_or_else(|| ApiError::Gone(format!("too old resource version: {rv}")))?
                } else {
                    cacher.snapshot(&prefix)
                }
            }
        },
    };
    let after = resume.as_ref().map(|r| r.key.as_str());
    let mut items: Vec<Arc<Entry>> = Vec::new();
    let mut next = None;
    for entry in snapshot.range(after) {
        if !filter.matches_entry(&cacher, entry) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            next = items
                .last()
                .map(|e| encode_continue(snapshot.revision, &e.key));
            break;
        }
        items.push(Arc::clone(entry));
    }
    if next.is_some() {
        cacher.keep(&snapshot);
    }
    let mut meta = json!({"resourceVersion": snapshot.revision.to_string()});
    if let Some(token) = next {
        meta["continue"] = json!(token);
    }
    drop(snapshot);
    let rt = ctx.target.rt;
    match ctx.shape {
        Shape::Table(req) => {
            let objects = items
                .iter()
                .map(|e| e.object())
                .collect::<Result<Vec<Value>, ApiError>>()?;
            let table = render(rt, req, objects.iter(), meta, true);
            Ok(json_response(StatusCode::OK, &table))
        }
        Shape::Metadata => {
            let head = json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
            });
            // Each item's metadata decoded as it is written: never the whole list in memory.
            Ok(stream_list(head, items, |entry, out| {
                write_partial(&entry.json, out);
            }))
        }
        Shape::Object => {
            let head = json!({
                "kind": rt.list_kind,
                "apiVersion": rt.api_version(),
                "metadata": meta,
            });
            Ok(stream_list(head, items, |entry, out| {
                out.extend_from_slice(&entry.json);
            }))
        }
    }
}

/// Bytes of a list's items written per chunk of the response body.
const CHUNK: usize = 64 << 10;

/// Writes `{...head, "items": [...]}` as a stream of chunks, each item written by `item`
/// from its cache entry, so a large list is never assembled in memory.
fn stream_list(
    head: Value,
    items: Vec<Arc<Entry>>,
    item: impl Fn(&Entry, &mut Vec<u8>) + Send + 'static,
) -> Response {
    let mut open = serde_json::to_vec(&head).unwrap_or_default();
    // Reopen the head object to append the items.
    open.pop();
    open.extend_from_slice(b",\"items\":[");
    let mut first = Some(Bytes::from(open));
    let mut items = items.into_iter().peekable();
    let mut done = false;
    let chunks = futures::stream::iter(std::iter::from_fn(move || {
        if let Some(first) = first.take() {
            return Some(first);
        }
        if done {
            return None;
        }
        let mut chunk = Vec::with_capacity(CHUNK + 4096);
        while chunk.len() < CHUNK {
            let Some(entry) = items.next() else {
                chunk.extend_from_slice(b"]}");
                done = true;
                break;
            };
            item(&entry, &mut chunk);
            if items.peek().is_some() {
                chunk.push(b',');
            }
        }
        Some(Bytes::from(chunk))
    }))
    .map(Ok::<_, std::convert::Infallible>);
    let mut resp = (StatusCode::OK, Body::from_stream(chunks)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip() {
        let key = "/registry/core/pods/default/a-ü:b";
        assert_eq!(
            decode_continue(&encode_continue(42, key)).ok(),
            Some(Continue {
                revision: 42,
                key: key.to_string()
            })
        );
        assert!(decode_continue("zz").is_err());
        assert!(decode_continue("abc").is_err());
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        // A bare key (the old format), a bad revision, no key.
        assert!(decode_continue(&hex("/registry/core/pods/default/a")).is_err());
        assert!(decode_continue(&hex("x:/registry/core/pods/default/a")).is_err());
        assert!(decode_continue(&hex("7:")).is_err());
    }
}
