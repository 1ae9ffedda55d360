//! Resource endpoints: path parsing and dispatch of every verb on every registered kind.
//! Objects are handled as `serde_json::Value`; what a kind does differently (defaults,
//! validation, what create resets, how it is deleted) is its strategy's, in `shoal-api`'s
//! `kinds/`: nothing here matches on kind names.
//!
//! `list.rs` serves lists, `write.rs` create, update and patch (every write a compare-and-swap
//! on the store revision, retried on conflicts the client did not ask to see), `delete.rs`
//! deletion (finalizers, grace periods, collections) and `subresources.rs` `scale`, `binding`
//! and `eviction`. Watch streams live in `../watch.rs`, logs in `../logs.rs`, Table shaping in
//! `../table.rs`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::kinds;
use crate::api::registry::ResourceType;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::strategy::Requester;
use crate::error::{ApiError, MAX_REQUEST_BYTES, Subject, json_response};
use crate::object::{self, decode, labels, meta_str};
use crate::protobuf::ProtobufError;
use crate::served::Served;
use crate::table::{Shape, negotiate, partial, render};

mod delete;
mod duplicates;
mod list;
mod subresources;
mod write;

pub use delete::{DeleteOptions, delete};
pub use write::Mode;
pub(crate) use write::completes_deletion;

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
                FieldSelector::parse_for(rt, s)
                    .map_err(|e| ApiError::BadRequest(format!("invalid field selector: {e}")))
            })
            .transpose()
    }

    /// `fieldValidation`: `Strict`, `Warn` (the default) or `Ignore`; anything else is a 400.
    pub fn field_validation(&self) -> Result<FieldValidation, ApiError> {
        match self.get("fieldValidation") {
            None | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }

    /// `dryRun=All`: do everything but write (`handle` refuses other values).
    pub fn dry_run(&self) -> bool {
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

    /// Whether a cached entry of `cacher`'s resource matches.
    pub fn matches_entry(
        &self,
        cacher: &crate::cache::Cacher,
        entry: &crate::cache::Entry,
    ) -> bool {
        self.labels
            .as_ref()
            .is_none_or(|s| s.matches(entry.labels()))
            && self.fields.as_ref().is_none_or(|s| {
                s.matches_by(|f| cacher.field(entry, f).unwrap_or_default().to_string())
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

fn parse_target(
    served: &Served,
    group: &str,
    version: &str,
    rest: &str,
) -> Result<Target, ApiError> {
    let find_by_plural = |g: &str, v: &str, p: &str| served.find_by_plural(g, v, p);
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

/// The resource a path names, whether served or not: `widgets` in `namespaces/a/widgets/x`
/// or `widgets/x`.
fn unknown_plural(rest: &str) -> Option<&str> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["namespaces", _, plural, ..] => Some(plural),
        [plural, ..] => Some(plural),
        [] => None,
    }
}

/// Everything a handler needs about one request.
pub struct Ctx {
    pub state: AppState,
    pub target: Target,
    pub params: Params,
    pub headers: HeaderMap,
    /// What reads answer with: objects, a Table, or metadata only.
    pub shape: Shape,
    /// Who asks (set by the auth middleware; absent only in unit tests of handlers).
    pub user: Option<crate::auth::User>,
    /// `Warning` headers for the response.
    pub warnings: Warnings,
}

/// Warnings a request collects for its response (`Warning: 299 - "..."`), as upstream sends
/// for unknown fields under `fieldValidation=Warn`.
#[derive(Debug, Clone, Default)]
pub struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    pub fn push(&self, warning: String) {
        let mut list = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !list.contains(&warning) {
            list.push(warning);
        }
    }

    /// Adds the collected warnings to `resp` as `Warning` headers.
    fn apply(&self, resp: &mut Response) {
        let list = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for w in list.iter() {
            let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
            if let Ok(v) = header::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
                resp.headers_mut().append(header::WARNING, v);
            }
        }
    }
}

/// How a write treats fields its kind's schema does not know (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Refuse the request (400).
    Strict,
    /// Drop them and say so in `Warning` headers (upstream's default).
    Warn,
    /// Drop them.
    Ignore,
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
    if let Some(v) = params.get("dryRun")
        && v != "All"
    {
        return Err(ApiError::BadRequest(format!(
            "dryRun: Unsupported value: {v:?}: supported values: \"All\""
        )));
    }
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
        let target = Target {
            rt: &kinds::core::pod::POD,
            namespace: Some(segs[1].to_string()),
            name: Some(pod.clone()),
            sub: None,
        };
        let ctx = Ctx {
            state,
            target,
            params,
            headers,
            shape: Shape::Object,
            user,
            warnings: Warnings::default(),
        };
        return subresources::bind(&ctx, &pod, binding).await;
    }

    let mut served = state.served();
    let mut target = parse_target(&served, group, version, rest);
    if matches!(target, Err(ApiError::UnknownResource))
        && let Some(plural) = unknown_plural(rest)
        && crate::crd::defined(&state, group, plural).await
    {
        // Another member may have established it a moment ago.
        crate::crd::refresh(&state).await?;
        served = state.served();
        target = parse_target(&served, group, version, rest);
    }
    let target = target?;
    if method == Method::POST && target.name.is_none() && served.is_terminating(target.rt) {
        return Err(ApiError::NotSupported(
            "create not allowed while custom resource definition is terminating".into(),
        ));
    }
    drop(served);
    let shape = negotiate(&headers, params.get("includeObject"));
    let warnings = Warnings::default();
    let ctx = Ctx {
        state,
        target,
        params,
        headers,
        shape,
        user,
        warnings: warnings.clone(),
    };
    let name = ctx.target.name.clone();
    let sub = ctx.target.sub.clone();
    if let Some(sub) = &sub
        && !ctx.target.rt.subresources.contains(&sub.as_str())
    {
        return Err(ApiError::UnknownResource);
    }
    let result = match (name.as_deref(), sub.as_deref()) {
        (None, _) => match method {
            Method::GET if ctx.params.flag("watch") => crate::watch::serve(ctx, None).await,
            Method::GET => list::list(&ctx).await,
            Method::POST => {
                let body = read_body(body, &ctx.headers).await?;
                write::create(&ctx, &body).await
            }
            Method::DELETE => {
                let body = read_body(body, &ctx.headers).await?;
                delete::delete_collection(&ctx, &body).await
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
                write::update(&ctx, name, &body, Mode::Main).await
            }
            Method::PATCH => {
                let body = read_body(body, &ctx.headers).await?;
                write::patch(&ctx, name, &body, Mode::Main).await
            }
            Method::DELETE => {
                let body = read_body(body, &ctx.headers).await?;
                let options = delete::delete_options(&ctx, &body)?;
                if ctx.target.rt.strategy.deleted_by_termination() {
                    let obj = crate::namespace::terminate(&ctx, name).await?;
                    return Ok(object_response(&ctx, StatusCode::OK, &obj));
                }
                let (obj, _) = delete(&ctx, name, &options).await?;
                Ok(object_response(&ctx, StatusCode::OK, &obj))
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        // A CSR's approval is a status write (its conditions), by whoever may approve.
        (Some(name), Some("status" | "approval")) => match method {
            Method::GET => get(&ctx, name).await,
            Method::PUT => {
                let body = read_body(body, &ctx.headers).await?;
                write::update(&ctx, name, &body, Mode::Status).await
            }
            Method::PATCH => {
                let body = read_body(body, &ctx.headers).await?;
                write::patch(&ctx, name, &body, Mode::Status).await
            }
            _ => Err(ApiError::MethodNotAllowed),
        },
        (Some(name), Some("finalize"))
            if method == Method::PUT && ctx.target.rt.has_subresource("finalize") =>
        {
            let body = read_body(body, &ctx.headers).await?;
            write::update(&ctx, name, &body, Mode::Finalize).await
        }
        (Some(name), Some("scale")) => {
            let body = read_body(body, &ctx.headers).await?;
            subresources::scale(&ctx, name, &method, &body).await
        }
        (Some(name), Some("binding")) if method == Method::POST => {
            let body = read_body(body, &ctx.headers).await?;
            let binding = parse_json(&ctx.headers, &body)?;
            subresources::bind(&ctx, name, binding).await
        }
        (Some(name), Some("eviction")) if method == Method::POST => {
            let body = read_body(body, &ctx.headers).await?;
            let eviction = if body.is_empty() {
                json!({})
            } else {
                parse_json(&ctx.headers, &body)?
            };
            subresources::evict(&ctx, name, &eviction).await
        }
        (Some(name), Some("log")) if method == Method::GET => crate::logs::serve(&ctx, name).await,
        _ => Err(ApiError::MethodNotAllowed),
    };
    result.map(|mut resp| {
        warnings.apply(&mut resp);
        resp
    })
}

/// Parses a JSON request body; other media types are refused.
pub(crate) fn parse_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
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
    if media == "application/yaml" {
        return parse_yaml(body);
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

/// Decodes a YAML body (one document; JSON is YAML too) into an object, within limits that
/// keep a small body small: at most 128 levels deep, 256 aliases of anchors of at most 16 KiB
/// and 100,000 replayed events (an alias bomb is refused, never expanded), no more scalar
/// text than a body may carry.
pub(crate) fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1;
    budget.max_depth = 128;
    budget.max_nodes = 500_000;
    budget.max_aliases = 256;
    budget.max_anchors = 256;
    budget.max_recorded_anchor_bytes = 16 << 10;
    budget.max_total_scalar_bytes = MAX_REQUEST_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 100_000;
    options.alias_limits.max_alias_expansions_per_anchor = 256;
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the YAML body is not UTF-8".into()))?;
    let value: Value = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| ApiError::BadRequest(format!("error decoding YAML request body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be an object".into(),
        ));
    }
    Ok(value)
}

/// Like [`parse_json`], and the paths of keys a JSON body repeats (for `fieldValidation`).
pub(super) fn parse_object(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Value, Vec<String>), ApiError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if !matches!(media, "" | "application/json") {
        return Ok((parse_json(headers, body)?, Vec::new()));
    }
    let (value, duplicates) = duplicates::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding request body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok((value, duplicates))
}

pub(super) fn parse_json_bytes(body: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding request body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

pub(super) fn object_response(ctx: &Ctx, code: StatusCode, obj: &Value) -> Response {
    match ctx.shape {
        Shape::Metadata => json_response(code, &partial(obj)),
        Shape::Table(req) if code == StatusCode::OK => {
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

pub(super) async fn load(ctx: &Ctx, name: &str) -> Result<(Value, u64), ApiError> {
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

impl Ctx {
    /// A request the apiserver makes of itself (namespace and CRD cleanup): no parameters, no
    /// headers, no user.
    pub fn internal(
        state: AppState,
        rt: &'static ResourceType,
        namespace: Option<String>,
        name: Option<String>,
    ) -> Ctx {
        Ctx {
            state,
            target: Target {
                rt,
                namespace,
                name,
                sub: None,
            },
            params: Params::default(),
            headers: HeaderMap::new(),
            shape: Shape::Object,
            user: None,
            warnings: Warnings::default(),
        }
    }

    /// Who asks, as the kinds that record it see it.
    pub fn requester(&self) -> Requester {
        match &self.user {
            Some(u) => Requester {
                name: u.name.clone(),
                groups: u.groups.clone(),
            },
            None => Requester::anonymous(),
        }
    }
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
        let served = crate::served::Current::builtin().get();
        let ok = |g, v, rest| {
            parse_target(&served, g, v, rest)
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
}
