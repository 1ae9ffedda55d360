//! Resource endpoints: path parsing, CRUD, patch, delete (finalizers, graceful pod deletion)
//! and the `status`, `scale`, `binding` and `eviction` subresources.
//!
//! Objects are handled as `serde_json::Value`; shoal-api defaults and validates them. Every
//! write is a compare-and-swap on the store revision, retried on conflicts the client did not
//! ask to see. Watch streams live in `watch.rs`, logs in `logs.rs`, Table shaping in `table.rs`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use shoal_store::StoreError;

use crate::AppState;
use crate::api::patch::{PatchError, json_patch, merge_patch, strategic_merge_patch};
use crate::api::registry::{ResourceType, find_by_plural};
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::validation::{FieldError, default_object, validate};
use crate::error::{ApiError, MAX_REQUEST_BYTES, Subject, json_response, success_status};
use crate::object::{
    self, decode, encode, finalizers, labels, meta_str, metadata_mut, now_rfc3339, random_suffix,
    rfc3339_after, same_apart_from_rv,
};
use crate::protobuf::ProtobufError;
use crate::table::{TableRequest, negotiate, render};

/// Query parameters of one request.
#[derive(Debug, Default)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }

    pub fn label_selector(&self) -> Result<Option<LabelSelector>, ApiError> {
        self.get("labelSelector")
            .map(|s| {
                LabelSelector::parse(s)
                    .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))
            })
            .transpose()
    }

    /// The field selector, with only the fields `rt` supports (as upstream: 400 otherwise).
    pub fn field_selector(
        &self,
        rt: &'static ResourceType,
    ) -> Result<Option<FieldSelector>, ApiError> {
        self.get("fieldSelector")
            .map(|s| {
                FieldSelector::parse_for(rt.kind, s)
                    .map_err(|e| ApiError::BadRequest(format!("invalid field selector: {e}")))
            })
            .transpose()
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun").is_some()
    }
}

/// Label and field selectors of a list or watch.
#[derive(Debug, Default)]
pub struct Filter {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
}

impl Filter {
    pub fn from_params(params: &Params, rt: &'static ResourceType) -> Result<Filter, ApiError> {
        Ok(Filter {
            labels: params.label_selector()?,
            fields: params.field_selector(rt)?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.as_ref().is_none_or(|s| s.matches(&labels(obj)))
            && self.fields.as_ref().is_none_or(|s| s.matches(obj))
    }
}

/// What the request addresses.
#[derive(Debug)]
pub struct Target {
    pub rt: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    /// Store prefix of the collection: one namespace, or all of them.
    pub fn collection_prefix(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}{}/", self.rt.storage_prefix(), ns),
            None => self.rt.storage_prefix(),
        }
    }

    pub fn key(&self, name: &str) -> String {
        key_of(self.rt, self.namespace.as_deref(), name)
    }

    pub fn subject(&self, name: &str) -> Subject {
        Subject::new(self.rt, name)
    }
}

pub fn key_of(rt: &'static ResourceType, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if rt.namespaced => format!("{}{}/{}", rt.storage_prefix(), ns, name),
        _ => format!("{}{}", rt.storage_prefix(), name),
    }
}

fn parse_target(group: &str, version: &str, rest: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let owned = |s: Option<&&str>| s.map(|s| s.to_string());
    if segs.len() >= 3
        && segs[0] == "namespaces"
        && let Some(rt) = find_by_plural(group, version, segs[2]).filter(|rt| rt.namespaced)
    {
        if segs.len() > 5 {
            return Err(ApiError::UnknownResource);
        }
        return Ok(Target {
            rt,
            namespace: Some(segs[1].to_string()),
            name: owned(segs.get(3)),
            sub: owned(segs.get(4)),
        });
    }
    let first = segs.first().ok_or(ApiError::UnknownResource)?;
    let rt = find_by_plural(group, version, first).ok_or(ApiError::UnknownResource)?;
    if segs.len() > 3 || (rt.namespaced && segs.len() > 1) {
        return Err(ApiError::UnknownResource);
    }
    Ok(Target {
        rt,
        namespace: None,
        name: owned(segs.get(1)),
        sub: owned(segs.get(2)),
    })
}

/// Everything a handler needs about one request.
pub struct Ctx {
    pub state: AppState,
    pub target: Target,
    pub params: Params,
    pub headers: HeaderMap,
    pub table: Option<TableRequest>,
    /// Who asks (set by the auth middleware; absent only in unit tests of handlers).
    pub user: Option<crate::auth::User>,
}

pub async fn core(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    req: Request,
) -> Response {
    handle(state, "", "v1", &rest, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn grouped(
    State(state): State<AppState>,
    Path((group, version, rest)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    handle(state, &group, &version, &rest, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn read_body(body: Body, headers: &HeaderMap) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|s| *s > MAX_REQUEST_BYTES) {
        return Err(ApiError::TooLarge {
            size,
            limit: MAX_REQUEST_BYTES,
        });
    }
    axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge {
            size: declared.unwrap_or(MAX_REQUEST_BYTES + 1),
            limit: MAX_REQUEST_BYTES,
        })
}

async fn handle(
    state: AppState,
    group: &str,
    version: &str,
    rest: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let params = Params(
        Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?,
    );
    let method = parts.method;
    let headers = parts.headers;
    let user = parts.extensions.get::<crate::auth::User>().cloned();

    // Legacy `POST /api/v1/namespaces/{ns}/bindings` names the pod in the body.
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if group.is_empty() && segs.len() == 3 && segs[0] == "namespaces" && segs[2] == "bindings" {
        if method != Method::POST {
            return Err(ApiError::MethodNotAllowed);
        }
        let body = read_body(body, &headers).await?;
        let binding = parse_json(&headers, &body)?;
        let pod = object::name(&binding).to_string();
        let rt = find_by_plural("", "v1", "pods").ok_or(ApiError::UnknownResource)?;
        let target = Target {
            rt,
            namespace: Some(segs[1].to_string()),
            name: Some(pod.clone()),
            sub: None,
        };
        let ctx = Ctx {
            state,
            target,
            params,
            headers,
            table: None,
            user,
        };
        return bind(&ctx, &pod, binding).await;
    }

    let target = parse_target(group, version, rest)?;
    let table = negotiate(&headers, params.get("includeObject"));
    let ctx = Ctx {
        state,
        target,
        params,
        headers,
        table,
        user,
    };
    let name = ctx.target.name.clone();
    let sub = ctx.target.sub.clone();
    if let Some(sub) = &sub
        && !ctx.target.rt.subresources.contains(&sub.as_str())
    {
        return Err(ApiError::UnknownResource);
    }
    match (name.as_deref(), sub.as_deref()) {
        (None, _) => match method {
            Method::GET if ctx.params.flag("watch") => crate::watch::serve(ctx, None).await,
            Method::GET => list(&ctx).await,
            Method::POST => {
                let body = read_body(body, &ctx.headers).await?;
                create(&ctx, &body).await
            }
            Method::DELETE => {
                let body = read_body(body, &ctx.headers).await?;
                delete_collection(&ctx, &body).await
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        (Some(name), None) => match method {
            Method::GET if ctx.params.flag("watch") => {
                crate::watch::serve(ctx, Some(name.to_string())).await
            }
            Method::GET => get(&ctx, name).await,
            Method::PUT => {
                let body = read_body(body, &ctx.headers).await?;
                update(&ctx, name, &body, Mode::Main).await
            }
            Method::PATCH => {
                let body = read_body(body, &ctx.headers).await?;
                patch(&ctx, name, &body, Mode::Main).await
            }
            Method::DELETE => {
                let body = read_body(body, &ctx.headers).await?;
                let options = delete_options(&ctx, &body)?;
                if is_namespace(ctx.target.rt) {
                    let obj = crate::namespace::terminate(&ctx, name).await?;
                    return Ok(json_response(StatusCode::OK, &obj));
                }
                let (obj, _) = delete(&ctx, name, &options).await?;
                Ok(json_response(StatusCode::OK, &obj))
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        // A CSR's approval is a status write (its conditions), by whoever may approve.
        (Some(name), Some("status" | "approval")) => match method {
            Method::GET => get(&ctx, name).await,
            Method::PUT => {
                let body = read_body(body, &ctx.headers).await?;
                update(&ctx, name, &body, Mode::Status).await
            }
            Method::PATCH => {
                let body = read_body(body, &ctx.headers).await?;
                patch(&ctx, name, &body, Mode::Status).await
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        (Some(name), Some("scale")) => {
            let body = read_body(body, &ctx.headers).await?;
            scale(&ctx, name, &method, &body).await
        }
        (Some(name), Some("binding")) if method == Method::POST => {
            let body = read_body(body, &ctx.headers).await?;
            let binding = parse_json(&ctx.headers, &body)?;
            bind(&ctx, name, binding).await
        }
        (Some(name), Some("eviction")) if method == Method::POST => {
            let body = read_body(body, &ctx.headers).await?;
            let eviction = if body.is_empty() {
                json!({})
            } else {
                parse_json(&ctx.headers, &body)?
            };
            let options = eviction
                .get("deleteOptions")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let options = DeleteOptions::from_value(&options, &ctx.params)?;
            delete(&ctx, name, &options).await?;
            Ok(success_status(StatusCode::CREATED, None))
        }
        (Some(name), Some("log")) if method == Method::GET => crate::logs::serve(&ctx, name).await,
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// Parses a JSON request body; other media types are refused.
fn parse_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    if media == "application/vnd.kubernetes.protobuf" {
        return crate::protobuf::decode(body).map_err(|e| match e {
            ProtobufError::Malformed => ApiError::BadRequest("malformed protobuf body".into()),
            ProtobufError::Unsupported(kind) => {
                ApiError::UnsupportedMediaType(format!("{media} (not for {kind}; send JSON)"))
            }
        });
    }
    if !(media.is_empty()
        || media == "application/json"
        || media == "*/*"
        || media.ends_with("+json"))
    {
        return Err(ApiError::UnsupportedMediaType(media.to_string()));
    }
    parse_json_bytes(body)
}

fn parse_json_bytes(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding request body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

fn object_response(ctx: &Ctx, code: StatusCode, obj: &Value) -> Response {
    match ctx.table {
        Some(req) if code == StatusCode::OK => {
            let rv = meta_str(obj, "resourceVersion").unwrap_or("").to_string();
            let table = render(
                ctx.target.rt,
                req,
                [obj],
                json!({"resourceVersion": rv}),
                true,
            );
            json_response(code, &table)
        }
        _ => json_response(code, obj),
    }
}

async fn load(ctx: &Ctx, name: &str) -> Result<(Value, u64), ApiError> {
    let key = ctx.target.key(name);
    let kv = ctx
        .state
        .store()
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::NotFound(ctx.target.subject(name)))?;
    Ok((decode(&kv)?, kv.mod_revision))
}

async fn get(ctx: &Ctx, name: &str) -> Result<Response, ApiError> {
    let (obj, _) = load(ctx, name).await?;
    Ok(object_response(ctx, StatusCode::OK, &obj))
}

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
async fn list(ctx: &Ctx) -> Result<Response, ApiError> {
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

fn check_namespace(ctx: &Ctx, obj: &mut Value) -> Result<(), ApiError> {
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

fn check_valid(
    rt: &'static ResourceType,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let errors = validate(rt, obj, old);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(rt, object::name(obj), errors))
    }
}

fn has_status_subresource(rt: &'static ResourceType) -> bool {
    rt.subresources.contains(&"status")
}

async fn create(ctx: &Ctx, body: &[u8]) -> Result<Response, ApiError> {
    let mut obj = parse_json(&ctx.headers, body)?;
    let obj = create_object(ctx, &mut obj).await?;
    Ok(json_response(StatusCode::CREATED, &obj))
}

/// Prepares, validates and stores a new object; returns it with its resourceVersion.
async fn create_object(ctx: &Ctx, obj: &mut Value) -> Result<Value, ApiError> {
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
    if obj.get("spec").is_some() {
        metadata_mut(obj).insert("generation".into(), json!(1));
    } else {
        metadata_mut(obj).remove("generation");
    }
    if let Some(map) = obj.as_object_mut() {
        if has_status_subresource(rt) && rt.kind != "Node" {
            map.remove("status");
        }
        match rt.kind {
            "Pod" => {
                map.insert("status".into(), json!({"phase": "Pending"}));
            }
            "Namespace" => {
                map.insert("status".into(), json!({"phase": "Active"}));
            }
            // Who asks is the apiserver's to say, never the requester's.
            "CertificateSigningRequest" => {
                if let Some(spec) = map.get_mut("spec").and_then(Value::as_object_mut) {
                    let (name, groups) = match &ctx.user {
                        Some(u) => (u.name.clone(), u.groups.clone()),
                        None => ("system:anonymous".to_string(), Vec::new()),
                    };
                    spec.insert("username".into(), json!(name));
                    spec.insert("groups".into(), json!(groups));
                    spec.remove("uid");
                    spec.remove("extra");
                }
            }
            _ => {}
        }
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
    check_valid(rt, obj, None)?;
    if let Some(ns) = ctx.target.namespace.as_deref().filter(|_| rt.namespaced) {
        let ns_key = format!("/registry/core/namespaces/{ns}");
        let Some(ns_kv) = ctx.state.store().get(&ns_key).await? else {
            return Err(ApiError::NotFound(Subject {
                group: "",
                resource: "namespaces",
                name: ns.to_string(),
            }));
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
}

/// Builds the object to store from `old` and the client's `new` under `mode`.
fn merge_update(
    rt: &'static ResourceType,
    old: &Value,
    mut new: Value,
    mode: Mode,
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
            if has_status_subresource(rt)
                && let Some(map) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
            new
        }
    };
    default_object(rt, &mut out);
    if mode == Mode::Main && out.get("spec") != old.get("spec") {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        metadata_mut(&mut out).insert("generation".into(), json!(generation));
    }
    check_valid(rt, &out, Some(old))?;
    Ok(out)
}

/// The `resourceVersion` a body asks to update, if any.
fn precondition(obj: &Value) -> Result<Option<u64>, ApiError> {
    match meta_str(obj, "resourceVersion") {
        None | Some("") => Ok(None),
        Some(rv) => rv
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}"))),
    }
}

/// True when an update leaves an object that must now disappear: being deleted, no finalizers
/// left and no grace period running.
fn completes_deletion(obj: &Value) -> bool {
    // Namespaces are removed by their own finalizer task (namespace.rs), not by updates.
    obj.get("kind").and_then(Value::as_str) != Some("Namespace")
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
async fn guaranteed_update<F>(ctx: &Ctx, name: &str, mut f: F) -> Result<Value, ApiError>
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
        if completes_deletion(&new) {
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

fn check_body_identity(ctx: &Ctx, name: &str, obj: &mut Value) -> Result<(), ApiError> {
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

async fn update(ctx: &Ctx, name: &str, body: &[u8], mode: Mode) -> Result<Response, ApiError> {
    let mut new = parse_json(&ctx.headers, body)?;
    check_body_identity(ctx, name, &mut new)?;
    let expected = precondition(&new)?;
    let rt = ctx.target.rt;
    let subject = ctx.target.subject(name);
    let out = guaranteed_update(ctx, name, |current, rev| {
        if expected.is_some_and(|e| e != rev) {
            return Err(ApiError::stale(subject.clone()));
        }
        merge_update(rt, current, new.clone(), mode)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &out))
}

/// The kinds of PATCH bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

fn patch_type(headers: &HeaderMap) -> Result<PatchType, ApiError> {
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

fn apply_patch(
    rt: &'static ResourceType,
    kind: PatchType,
    current: &Value,
    patch: &Value,
) -> Result<Value, ApiError> {
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

fn parse_patch(kind: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        if kind == PatchType::Apply {
            ApiError::UnsupportedMediaType(
                "application/apply-patch+yaml (only JSON is accepted)".into(),
            )
        } else {
            ApiError::BadRequest(format!("error decoding patch: {e}"))
        }
    })?;
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

async fn patch(ctx: &Ctx, name: &str, body: &[u8], mode: Mode) -> Result<Response, ApiError> {
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
                Ok(created) => return Ok(json_response(StatusCode::CREATED, &created)),
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
        merge_update(rt, current, patched, mode)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &out))
}

/// Options of a DELETE, from the body (`DeleteOptions`) and the query.
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    fn from_value(v: &Value, params: &Params) -> Result<DeleteOptions, ApiError> {
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

fn delete_options(ctx: &Ctx, body: &[u8]) -> Result<DeleteOptions, ApiError> {
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
        let bound_pod = rt.kind == "Pod"
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
        let grace = if bound_pod {
            options.grace_period_seconds.unwrap_or_else(|| {
                current
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            })
        } else {
            0
        }
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

/// Whether `rt` is the core Namespace, whose deletion goes through `namespace::terminate`.
pub fn is_namespace(rt: &ResourceType) -> bool {
    rt.kind == "Namespace" && rt.group.is_empty()
}

/// `DELETE` on a collection. Namespaces have no `deletecollection` (as in Kubernetes): a
/// namespace is only deleted one at a time, through termination.
async fn delete_collection(ctx: &Ctx, body: &[u8]) -> Result<Response, ApiError> {
    if is_namespace(ctx.target.rt) {
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
            table: None,
            user: ctx.user.clone(),
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

/// `spec.selector` (a LabelSelector) in the string form `Scale.status.selector` carries.
fn selector_string(selector: Option<&Value>) -> String {
    let Some(sel) = selector else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => parts.push(format!("{key} in ({})", values.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

fn scale_of(obj: &Value) -> Value {
    let meta = obj
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut scale_meta = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            scale_meta.insert(field.into(), v.clone());
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(obj.pointer("/spec/selector")),
        },
    })
}

async fn scale(ctx: &Ctx, name: &str, method: &Method, body: &[u8]) -> Result<Response, ApiError> {
    let rt = ctx.target.rt;
    let subject = ctx.target.subject(name);
    let new_scale = |current: &Value, rev: u64, scale: Value| -> Result<Value, ApiError> {
        if let Some(expected) = precondition(&scale)?
            && expected != rev
        {
            return Err(ApiError::stale(subject.clone()));
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale",
                subject: subject.clone(),
                causes: vec![FieldError::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            });
        }
        let mut next = current.clone();
        if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("replicas".into(), json!(replicas));
        }
        merge_update(rt, current, next, Mode::Main)
    };
    let updated = match *method {
        Method::GET => {
            let (obj, _) = load(ctx, name).await?;
            return Ok(json_response(StatusCode::OK, &scale_of(&obj)));
        }
        Method::PUT => {
            let scale = parse_json(&ctx.headers, body)?;
            guaranteed_update(ctx, name, |current, rev| {
                new_scale(current, rev, scale.clone())
            })
            .await?
        }
        Method::PATCH => {
            let kind = patch_type(&ctx.headers)?;
            let patch = parse_patch(kind, body)?;
            guaranteed_update(ctx, name, |current, rev| {
                let patched = apply_patch(rt, kind, &scale_of(current), &patch)?;
                new_scale(current, rev, patched)
            })
            .await?
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    Ok(json_response(StatusCode::OK, &scale_of(&updated)))
}

/// `pods/binding`: assigns an unassigned pod to a node.
async fn bind(ctx: &Ctx, name: &str, binding: Value) -> Result<Response, ApiError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("binding target name is required".into()))?
        .to_string();
    let subject = ctx.target.subject(name);
    guaranteed_update(ctx, name, |current, _| {
        if meta_str(current, "deletionTimestamp").is_some() {
            return Err(ApiError::Conflict {
                subject: subject.clone(),
                message: format!("pod {name} is being deleted, cannot be assigned to a host"),
            });
        }
        if let Some(existing) = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::Conflict {
                subject: subject.clone(),
                message: format!("pod {name} is already assigned to node {existing:?}"),
            });
        }
        let mut next = current.clone();
        let map = next
            .as_object_mut()
            .ok_or_else(|| ApiError::Internal("pod is not an object".into()))?;
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("nodeName".into(), json!(node));
        }
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            let conditions = status.entry("conditions").or_insert_with(|| json!([]));
            if let Some(list) = conditions.as_array_mut() {
                list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                list.push(json!({
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": null,
                    "lastTransitionTime": now_rfc3339(),
                }));
            }
        }
        Ok(next)
    })
    .await?;
    tracing::debug!(pod = %name, node = %node, "bound pod");
    Ok(success_status(StatusCode::CREATED, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(t: &Target) -> String {
        format!(
            "{} ns={:?} name={:?} sub={:?}",
            t.rt.plural, t.namespace, t.name, t.sub
        )
    }

    #[test]
    fn targets() {
        let ok = |g, v, rest| {
            parse_target(g, v, rest)
                .map(|t| describe(&t))
                .unwrap_or_else(|e| format!("error: {e}"))
        };
        assert_eq!(ok("", "v1", "pods"), "pods ns=None name=None sub=None");
        assert_eq!(
            ok("", "v1", "namespaces/default/pods"),
            "pods ns=Some(\"default\") name=None sub=None"
        );
        assert_eq!(
            ok("", "v1", "namespaces/default/pods/a/status"),
            "pods ns=Some(\"default\") name=Some(\"a\") sub=Some(\"status\")"
        );
        assert_eq!(
            ok("", "v1", "namespaces/default"),
            "namespaces ns=None name=Some(\"default\") sub=None"
        );
        assert_eq!(
            ok("", "v1", "namespaces/default/status"),
            "namespaces ns=None name=Some(\"default\") sub=Some(\"status\")"
        );
        assert_eq!(
            ok("", "v1", "nodes/n1/status"),
            "nodes ns=None name=Some(\"n1\") sub=Some(\"status\")"
        );
        assert_eq!(
            ok("apps", "v1", "namespaces/x/deployments/web/scale"),
            "deployments ns=Some(\"x\") name=Some(\"web\") sub=Some(\"scale\")"
        );
        assert_eq!(ok("", "v1", "pods/a"), "error: unknown resource");
        assert_eq!(ok("", "v1", "nope"), "error: unknown resource");
        assert_eq!(
            ok("", "v1", "namespaces/default/pods/a/status/extra"),
            "error: unknown resource"
        );
    }

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

    #[test]
    fn scale_selectors() {
        let sel = json!({
            "matchLabels": {"app": "web", "tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["a", "b"]},
                {"key": "gone", "operator": "DoesNotExist"},
            ],
        });
        assert_eq!(
            selector_string(Some(&sel)),
            "app=web,tier=front,env in (a,b),!gone"
        );
        assert_eq!(selector_string(None), "");
    }

    #[test]
    fn completes_deletion_only_without_finalizers_and_grace() {
        let mut obj =
            json!({"metadata": {"name": "a", "deletionTimestamp": "2026-01-01T00:00:00Z"}});
        assert!(completes_deletion(&obj));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(30);
        assert!(!completes_deletion(&obj));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        obj["metadata"]["finalizers"] = json!(["x"]);
        assert!(!completes_deletion(&obj));
        assert!(!completes_deletion(&json!({"metadata": {"name": "a"}})));
    }
}
