//! Writes: create, update (the main resource or its status) and patch (JSON, merge,
//! strategic, apply). Every write is a compare-and-swap on the store revision.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use shoal_store::StoreError;

use super::{Ctx, FieldValidation, Warnings, load, object_response, parse_object};
use crate::api::defaults::default_object;
use crate::api::kinds::core::namespace::NAMESPACE;
use crate::api::patch::{PatchError, json_patch, merge_patch, strategic_merge_patch};
use crate::api::registry::ResourceType;
use crate::api::validation::{FieldError, validate_fields};
use crate::error::{ApiError, Subject};
use crate::object::{
    self, decode, encode, finalizers, meta_str, metadata_mut, now_rfc3339, random_suffix,
    same_apart_from_rv,
};

/// Checks `kind`/`apiVersion` of a body against the resource, filling them when absent.
fn check_type(rt: &'static ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let api_version = rt.api_version();
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("body is not an object".into()))?;
    if let Some(kind) = map.get("kind").and_then(Value::as_str)
        && !kind.is_empty()
        && kind != rt.kind
    {
        return Err(ApiError::BadRequest(format!(
            "the kind of the provided object ({kind}) does not match the kind of the resource ({})",
            rt.kind
        )));
    }
    if let Some(v) = map.get("apiVersion").and_then(Value::as_str)
        && !v.is_empty()
        && v != api_version
    {
        return Err(ApiError::BadRequest(format!(
            "the API version in the data ({v}) does not match the expected API version ({api_version})"
        )));
    }
    map.insert("kind".into(), json!(rt.kind));
    map.insert("apiVersion".into(), json!(api_version));
    Ok(())
}

pub(super) fn check_namespace(ctx: &Ctx, obj: &mut Value) -> Result<(), ApiError> {
    let rt = ctx.target.rt;
    let meta = metadata_mut(obj);
    if !rt.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let path_ns = ctx
        .target
        .namespace
        .as_deref()
        .ok_or(ApiError::MethodNotAllowed)?;
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && ns != path_ns => Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
        _ => {
            meta.insert("namespace".into(), json!(path_ns));
            Ok(())
        }
    }
}

fn invalid(rt: &'static ResourceType, name: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: rt.kind,
        subject: Subject::new(rt, name),
        causes,
    }
}

/// Validates `obj` and applies `fieldValidation` to the fields its kind does not know:
/// refused (Strict), or dropped with a warning (Warn) or silently (Ignore), as upstream's typed
/// decoding drops them.
fn check_valid(
    rt: &'static ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    fields: FieldValidation,
    warnings: &Warnings,
) -> Result<(), ApiError> {
    let (errors, unknown) = validate_fields(rt, obj, old);
    let described: Vec<String> = unknown
        .iter()
        .map(|u| format!("unknown field \"{}\"", u.describe()))
        .collect();
    // As upstream, strict decoding fails before validation looks at the object.
    if fields == FieldValidation::Strict && !described.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            described.join(", ")
        )));
    }
    if !errors.is_empty() {
        return Err(invalid(rt, object::name(obj), errors));
    }
    if fields == FieldValidation::Warn {
        described.into_iter().for_each(|w| warnings.push(w));
    }
    for field in &unknown {
        field.remove_from(obj);
    }
    Ok(())
}

/// Applies `fieldValidation` to keys the body repeats: refused (Strict), warned about
/// (Warn) or ignored; the last occurrence is the one kept, as upstream.
fn check_duplicates(ctx: &Ctx, duplicates: &[String]) -> Result<(), ApiError> {
    if duplicates.is_empty() {
        return Ok(());
    }
    let described: Vec<String> = duplicates
        .iter()
        .map(|d| format!("duplicate field \"{d}\""))
        .collect();
    match ctx.params.field_validation()? {
        FieldValidation::Strict => Err(ApiError::BadRequest(format!(
            "strict decoding error: {}",
            described.join(", ")
        ))),
        FieldValidation::Warn => {
            described.into_iter().for_each(|w| ctx.warnings.push(w));
            Ok(())
        }
        FieldValidation::Ignore => Ok(()),
    }
}

pub(super) async fn create(ctx: &Ctx, body: &[u8]) -> Result<Response, ApiError> {
    let (mut obj, duplicates) = parse_object(&ctx.headers, body)?;
    check_duplicates(ctx, &duplicates)?;
    let obj = create_object(ctx, &mut obj).await?;
    Ok(object_response(ctx, StatusCode::CREATED, &obj))
}

/// Prepares, validates and stores a new object; returns it with its resourceVersion.
pub(super) async fn create_object(ctx: &Ctx, obj: &mut Value) -> Result<Value, ApiError> {
    let rt = ctx.target.rt;
    check_type(rt, obj)?;
    check_namespace(ctx, obj)?;
    {
        let meta = metadata_mut(obj);
        for field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(field);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    }
    if rt.strategy.generation_changed(None, obj) {
        metadata_mut(obj).insert("generation".into(), json!(1));
    } else {
        metadata_mut(obj).remove("generation");
    }
    let requester = ctx.requester();
    if let Some(map) = obj.as_object_mut() {
        rt.strategy.prepare_for_create(map, &requester);
    }
    let generate_name = meta_str(obj, "generateName").unwrap_or("").to_string();
    let fixed_name = object::name(obj).to_string();
    if fixed_name.is_empty() && generate_name.is_empty() {
        return Err(invalid(
            rt,
            "",
            vec![FieldError::required(
                "metadata.name",
                "name or generateName is required",
            )],
        ));
    }
    if fixed_name.is_empty() {
        // Validate with a placeholder name so generateName itself is checked.
        metadata_mut(obj).insert(
            "name".into(),
            json!(format!("{generate_name}{}", random_suffix())),
        );
    }
    default_object(rt, obj);
    rt.strategy.admit_create(obj, ctx.state.admission());
    crate::admission::admit_create(&ctx.state, rt, obj).await?;
    check_valid(rt, obj, None, ctx.params.field_validation()?, &ctx.warnings)?;
    if let Some(ns) = ctx.target.namespace.as_deref().filter(|_| rt.namespaced) {
        let ns_key = NAMESPACE.storage_key(None, ns);
        let Some(ns_kv) = ctx.state.store().get(&ns_key).await? else {
            return Err(ApiError::NotFound(Subject::new(&NAMESPACE, ns)));
        };
        if meta_str(&decode(&ns_kv)?, "deletionTimestamp").is_some() {
            return Err(ApiError::Forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                rt.plural,
                object::name(obj)
            )));
        }
    }
    for attempt in 0..8 {
        if attempt > 0 {
            metadata_mut(obj).insert(
                "name".into(),
                json!(format!("{generate_name}{}", random_suffix())),
            );
        }
        let name = object::name(obj).to_string();
        if ctx.params.dry_run() {
            return Ok(obj.clone());
        }
        let key = ctx.target.key(&name);
        match ctx.state.store().create(&key, encode(obj)).await {
            Ok(kv) => {
                object::set_resource_version(obj, kv.mod_revision);
                tracing::debug!(key = %key, revision = kv.mod_revision, "created object");
                return Ok(obj.clone());
            }
            Err(StoreError::AlreadyExists(_)) if fixed_name.is_empty() => continue,
            Err(e) => return Err(ApiError::from_store(e, ctx.target.subject(&name))),
        }
    }
    Err(ApiError::AlreadyExists(
        ctx.target.subject(object::name(obj)),
    ))
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The main resource: everything but status (for kinds with a status subresource).
    Main,
    /// The `status` subresource: only status.
    Status,
    /// The `finalize` subresource (namespaces): only `spec.finalizers`.
    Finalize,
}

/// Builds the object to store from `old` and the client's `new` under `mode`.
pub(super) fn merge_update(
    rt: &'static ResourceType,
    old: &Value,
    mut new: Value,
    mode: Mode,
    fields: FieldValidation,
    warnings: &Warnings,
) -> Result<Value, ApiError> {
    check_type(rt, &mut new)?;
    let mut out = match mode {
        Mode::Status => {
            let mut out = old.clone();
            if let Some(map) = out.as_object_mut() {
                match new.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
            out
        }
        Mode::Finalize => {
            let mut out = old.clone();
            let finalizers = new.pointer("/spec/finalizers").cloned();
            let spec = out
                .as_object_mut()
                .map(|map| map.entry("spec").or_insert_with(|| json!({})))
                .and_then(Value::as_object_mut);
            if let Some(spec) = spec {
                // Absent or null means none left (defaulting must not put `kubernetes` back).
                let finalizers = finalizers.filter(|f| !f.is_null()).unwrap_or(json!([]));
                spec.insert("finalizers".into(), finalizers);
            }
            out
        }
        Mode::Main => {
            let old_meta = old
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let meta = metadata_mut(&mut new);
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "name",
                "namespace",
                "generation",
            ] {
                match old_meta.get(field) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            if rt.has_subresource("status")
                && let Some(map) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
            rt.strategy.prepare_for_update(&mut new, old);
            new
        }
    };
    default_object(rt, &mut out);
    if mode == Mode::Main && rt.strategy.generation_changed(Some(old), &out) {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        metadata_mut(&mut out).insert("generation".into(), json!(generation));
    }
    check_valid(rt, &mut out, Some(old), fields, warnings)?;
    Ok(out)
}

/// The `resourceVersion` a body asks to update, if any.
pub(super) fn precondition(obj: &Value) -> Result<Option<u64>, ApiError> {
    match meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// True when an update leaves an object that must now disappear: being deleted, no finalizers
/// left (nor anything else holding it: a Namespace's `spec.finalizers`) and no grace period
/// running.
pub(crate) fn completes_deletion(rt: &ResourceType, obj: &Value) -> bool {
    !rt.strategy.deletion_held(obj)
        && meta_str(obj, "deletionTimestamp").is_some()
        && finalizers(obj).is_empty()
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

/// Reads `name`, computes its next version with `f` and writes it with a compare-and-swap,
/// retrying when another writer got in between. `f` sees the object with its resourceVersion
/// and decides about client preconditions itself.
pub(super) async fn guaranteed_update<F>(ctx: &Ctx, name: &str, mut f: F) -> Result<Value, ApiError>
where
    F: FnMut(&Value, u64) -> Result<Value, ApiError>,
{
    let key = ctx.target.key(name);
    let store = ctx.state.store();
    for _ in 0..32 {
        let (current, rev) = load(ctx, name).await?;
        let mut new = f(&current, rev)?;
        if same_apart_from_rv(&new, &current) {
            return Ok(current);
        }
        if ctx.params.dry_run() {
            return Ok(new);
        }
        if completes_deletion(ctx.target.rt, &new) {
            match store.delete(&key, Some(rev)).await {
                Ok((_, deleted_at)) => {
                    object::set_resource_version(&mut new, deleted_at);
                    tracing::debug!(key = %key, "deleted object after its last finalizer");
                    return Ok(new);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, ctx.target.subject(name))),
            }
        }
        match store.update(&key, encode(&mut new), Some(rev)).await {
            Ok(kv) => {
                object::set_resource_version(&mut new, kv.mod_revision);
                return Ok(new);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, ctx.target.subject(name))),
        }
    }
    Err(ApiError::stale(ctx.target.subject(name)))
}

pub(super) fn check_body_identity(ctx: &Ctx, name: &str, obj: &mut Value) -> Result<(), ApiError> {
    if let Some(n) = meta_str(obj, "name")
        && !n.is_empty()
        && n != name
    {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    check_namespace(ctx, obj)?;
    metadata_mut(obj).insert("name".into(), json!(name));
    Ok(())
}

pub(super) async fn update(
    ctx: &Ctx,
    name: &str,
    body: &[u8],
    mode: Mode,
) -> Result<Response, ApiError> {
    let fields = ctx.params.field_validation()?;
    let (mut new, duplicates) = parse_object(&ctx.headers, body)?;
    check_duplicates(ctx, &duplicates)?;
    check_body_identity(ctx, name, &mut new)?;
    let expected = precondition(&new)?;
    let rt = ctx.target.rt;
    let subject = ctx.target.subject(name);
    let out = guaranteed_update(ctx, name, |current, rev| {
        if expected.is_some_and(|e| e != rev) {
            return Err(ApiError::stale(subject.clone()));
        }
        merge_update(rt, current, new.clone(), mode, fields, &ctx.warnings)
    })
    .await?;
    Ok(object_response(ctx, StatusCode::OK, &out))
}

/// The kinds of PATCH bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub(super) fn patch_type(headers: &HeaderMap) -> Result<PatchType, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(PatchType::Apply),
        other => Err(ApiError::UnsupportedMediaType(other.to_string())),
    }
}

pub(super) fn apply_patch(
    rt: &'static ResourceType,
    kind: PatchType,
    current: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
    if kind == PatchType::Strategic && !rt.strategy.strategic_merge() {
        return Err(ApiError::MediaTypeNotAccepted(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
        ));
    }
    let result = match kind {
        PatchType::Json => json_patch(current, patch),
        PatchType::Merge => merge_patch(current, patch),
        PatchType::Strategic | PatchType::Apply => strategic_merge_patch(rt, current, patch),
    };
    result.map_err(|e| match e {
        PatchError::TooManyOperations(m) => ApiError::EntityTooLarge(m),
        // As upstream: a JSON patch that cannot be applied is unprocessable.
        PatchError::JsonPatch(m) => ApiError::Unprocessable(m),
        e => ApiError::BadRequest(format!("the patch could not be applied: {e}")),
    })
}

pub(super) fn parse_patch(kind: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    // An apply patch is YAML (kubectl sends JSON, which is YAML too).
    let value: Value = if kind == PatchType::Apply {
        super::parse_yaml(body)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?
    };
    let shape_ok = match kind {
        PatchType::Json => value.is_array(),
        _ => value.is_object(),
    };
    if !shape_ok {
        return Err(ApiError::BadRequest(
            "the patch has the wrong shape for its type".into(),
        ));
    }
    Ok(value)
}

pub(super) async fn patch(
    ctx: &Ctx,
    name: &str,
    body: &[u8],
    mode: Mode,
) -> Result<Response, ApiError> {
    let fields = ctx.params.field_validation()?;
    let kind = patch_type(&ctx.headers)?;
    let patch = parse_patch(kind, body)?;
    let rt = ctx.target.rt;
    if kind == PatchType::Apply && mode == Mode::Main {
        // Server-side apply, approximated: create when absent, else a strategic merge.
        let key = ctx.target.key(name);
        if ctx.state.store().get(&key).await?.is_none() {
            let mut obj = patch.clone();
            check_body_identity(ctx, name, &mut obj)?;
            match create_object(ctx, &mut obj).await {
                Ok(created) => return Ok(object_response(ctx, StatusCode::CREATED, &created)),
                Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let subject = ctx.target.subject(name);
    let out = guaranteed_update(ctx, name, |current, rev| {
        let mut patched = apply_patch(rt, kind, current, &patch)?;
        if let Some(expected) = precondition(&patched)?
            && expected != rev
        {
            return Err(ApiError::stale(subject.clone()));
        }
        check_body_identity(ctx, name, &mut patched)?;
        merge_update(rt, current, patched, mode, fields, &ctx.warnings)
    })
    .await?;
    Ok(object_response(ctx, StatusCode::OK, &out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kinds::core::{configmap::CONFIG_MAP, namespace::NAMESPACE};

    #[test]
    fn completes_deletion_only_without_finalizers_and_grace() {
        let mut obj =
            json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}});
        assert!(completes_deletion(&CONFIG_MAP, &obj));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        assert!(!completes_deletion(&CONFIG_MAP, &obj));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        obj["metadata"]["finalizers"] = json!(["x"]);
        assert!(!completes_deletion(&CONFIG_MAP, &obj));
        assert!(!completes_deletion(
            &CONFIG_MAP,
            &json!({"metadata": {"name": "a"}})
        ));
        obj["metadata"]["finalizers"] = json!([]);
        assert!(completes_deletion(&CONFIG_MAP, &obj));
        // A namespace is also held by its `spec.finalizers`.
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        assert!(!completes_deletion(&NAMESPACE, &obj));
        obj["spec"]["finalizers"] = json!([]);
        assert!(completes_deletion(&NAMESPACE, &obj));
    }
}
