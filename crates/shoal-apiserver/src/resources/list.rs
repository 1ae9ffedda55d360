//! LIST: a collection, whole or in pages, filtered by label and field selectors.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use shoal_store::StoreError;

use super::{Ctx, Filter, Params};
use crate::error::{ApiError, json_response};
use crate::object::decode;
use crate::table::render;

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

/// The 410 Kubernetes answers when a continue token's revision has been compacted.
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

/// Lists a collection, `limit` objects a page when asked.
///
/// Every page reports the revision of the first page as `metadata.resourceVersion` (the
/// continue token carries it), as Kubernetes does: a client that watches from the list's
/// revision then sees every change made while it paged. The store cannot read at an old
/// revision, so later pages hold current data; changes after the first page's revision are
/// replayed by the watch, which clients tolerate. A token whose revision has been compacted
/// is refused with 410 Expired, since the watch could no longer replay from it.
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
    let store = ctx.state.store();
    let snapshot = store.list(&prefix).await?;
    let revision = match &resume {
        Some(resume) => {
            // Probe for compaction: a watch from the token's revision is refused once the
            // history after it is gone. The stream is dropped unread.
            match store.watch(&prefix, resume.revision) {
                Ok(_) => {}
                Err(StoreError::Compacted { .. }) => return Err(continue_expired()),
                Err(e) => return Err(e.into()),
            }
            resume.revision
        }
        None => snapshot.revision,
    };
    let mut items = Vec::new();
    let mut next = None;
    for kv in &snapshot.items {
        if resume
            .as_ref()
            .is_some_and(|resume| kv.key.as_str() <= resume.key.as_str())
        {
            continue;
        }
        let obj = decode(kv)?;
        if !filter.matches(&obj) {
            continue;
        }
        if limit > 0 && items.len() == limit {
            next = items
                .last()
                .map(|(k, _): &(String, Value)| encode_continue(revision, k));
            break;
        }
        items.push((kv.key.clone(), obj));
    }
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = next {
        meta["continue"] = json!(token);
    }
    let rt = ctx.target.rt;
    if let Some(req) = ctx.table {
        let table = render(rt, req, items.iter().map(|(_, o)| o), meta, true);
        return Ok(json_response(StatusCode::OK, &table));
    }
    let body = json!({
        "kind": rt.list_kind,
        "apiVersion": rt.api_version(),
        "metadata": meta,
        "items": items.into_iter().map(|(_, o)| o).collect::<Vec<_>>(),
    });
    Ok(json_response(StatusCode::OK, &body))
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
