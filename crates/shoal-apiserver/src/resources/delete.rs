//! DELETE: one object (preconditions, finalizers, grace periods, propagation policy) or a
//! collection.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use shoal_store::StoreError;

use super::{Ctx, Filter, Params, Target, load, parse_json_bytes};
use crate::error::{ApiError, json_response};
use crate::object::{
    self, decode, encode, finalizers, meta_str, metadata_mut, now_rfc3339, rfc3339_after,
    same_apart_from_rv,
};

/// Options of a DELETE, from the body (`DeleteOptions`) and the query.
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    pub(super) fn from_value(v: &Value, params: &Params) -> Result<DeleteOptions, ApiError> {
        let mut o = DeleteOptions {
            grace_period_seconds: v.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation_policy: v
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string),
            uid: v
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            resource_version: v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        if o.propagation_policy.is_none()
            && v.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        {
            o.propagation_policy = Some("Orphan".into());
        }
        if let Some(g) = params.get("gracePeriodSeconds") {
            o.grace_period_seconds =
                Some(g.parse().map_err(|_| {
                    ApiError::BadRequest(format!("invalid gracePeriodSeconds {g:?}"))
                })?);
        }
        if let Some(p) = params.get("propagationPolicy") {
            o.propagation_policy = Some(p.to_string());
        }
        match o.propagation_policy.as_deref() {
            None | Some("Background" | "Foreground" | "Orphan") => Ok(o),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid propagationPolicy {other:?}"
            ))),
        }
    }
}

pub(super) fn delete_options(ctx: &Ctx, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json_bytes(body)?
    };
    DeleteOptions::from_value(&value, &ctx.params)
}

/// Deletes `name` honouring finalizers and pod grace periods. Returns the object as it was
/// deleted (or as it now is, when deletion is pending) and whether it is gone.
pub async fn delete(
    ctx: &Ctx,
    name: &str,
    options: &DeleteOptions,
) -> Result<(Value, bool), ApiError> {
    let rt = ctx.target.rt;
    let key = ctx.target.key(name);
    let store = ctx.state.store();
    let subject = ctx.target.subject(name);
    for _ in 0..32 {
        let (current, rev) = load(ctx, name).await?;
        if let Some(uid) = &options.uid {
            let actual = meta_str(&current, "uid").unwrap_or("");
            if uid != actual {
                return Err(ApiError::Conflict {
                    subject,
                    message: format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                });
            }
        }
        if let Some(want) = &options.resource_version
            && *want != rev.to_string()
        {
            return Err(ApiError::stale(subject));
        }
        let mut next = current.clone();
        let mut pending = false;
        let mut fins = finalizers(&current);
        let extra = match options.propagation_policy.as_deref() {
            _ if !rt.strategy.garbage_collected() => None,
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra
            && meta_str(&current, "deletionTimestamp").is_none()
            && !fins.iter().any(|x| x == f)
        {
            fins.push(f.to_string());
            metadata_mut(&mut next).insert("finalizers".into(), json!(fins));
        }
        let grace = rt
            .strategy
            .grace_period(&current, options.grace_period_seconds)
            .max(0);
        let current_grace = current
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        let already = meta_str(&current, "deletionTimestamp").is_some();
        if grace > 0 {
            // Graceful: the node agent stops the pod and deletes it with grace 0.
            if !already || current_grace.is_none_or(|g| grace < g) {
                let meta = metadata_mut(&mut next);
                meta.insert("deletionTimestamp".into(), json!(rfc3339_after(grace)));
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
            pending = true;
        } else if !fins.is_empty() {
            let meta = metadata_mut(&mut next);
            if !already {
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            }
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            pending = true;
        }
        if ctx.params.dry_run() {
            return Ok((next, !pending));
        }
        if pending {
            if same_apart_from_rv(&next, &current) {
                return Ok((current, false));
            }
            match store.update(&key, encode(&mut next), Some(rev)).await {
                Ok(kv) => {
                    object::set_resource_version(&mut next, kv.mod_revision);
                    tracing::debug!(key = %key, grace, "marked object for deletion");
                    return Ok((next, false));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, subject)),
            }
        }
        match store.delete(&key, Some(rev)).await {
            Ok((_, at)) => {
                object::set_resource_version(&mut next, at);
                tracing::debug!(key = %key, "deleted object");
                return Ok((next, true));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, subject)),
        }
    }
    Err(ApiError::stale(subject))
}

/// `DELETE` on a collection. Namespaces have no `deletecollection` (as in Kubernetes): a
/// namespace is only deleted one at a time, through termination.
pub(super) async fn delete_collection(ctx: &Ctx, body: &[u8]) -> Result<Response, ApiError> {
    if ctx.target.rt.strategy.deleted_by_termination() {
        return Err(ApiError::MethodNotAllowed);
    }
    let options = delete_options(ctx, body)?;
    let filter = Filter::from_params(&ctx.params, ctx.target.rt)?;
    let snapshot = ctx
        .state
        .store()
        .list(&ctx.target.collection_prefix())
        .await?;
    let rt = ctx.target.rt;
    let mut deleted = Vec::new();
    for kv in &snapshot.items {
        let obj = decode(kv)?;
        if !filter.matches(&obj) {
            continue;
        }
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        let name = object::name(&obj).to_string();
        let target = Target {
            rt,
            namespace: ns,
            name: Some(name.clone()),
            sub: None,
        };
        let one = Ctx {
            state: ctx.state.clone(),
            target,
            params: Params(ctx.params.0.clone()),
            headers: HeaderMap::new(),
            shape: crate::table::Shape::Object,
            user: ctx.user.clone(),
            warnings: Default::default(),
        };
        match delete(&one, &name, &options).await {
            Ok((obj, _)) => deleted.push(obj),
            Err(ApiError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let body = json!({
        "kind": rt.list_kind,
        "apiVersion": rt.api_version(),
        "metadata": {"resourceVersion": ctx.state.store().revision().to_string()},
        "items": deleted,
    });
    Ok(json_response(StatusCode::OK, &body))
}
