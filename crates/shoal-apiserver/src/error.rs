//! The one place where failures become Kubernetes `Status` responses.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` writes the `Status` body with the HTTP
//! code, reason and details clients branch on. Internal details (store failures) are logged
//! here and never sent to the client. Watch streams use [`ApiError::status`] for `ERROR` events.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use shoal_store::StoreError;

use crate::api::registry::ResourceType;
use crate::api::validation::FieldError;

/// Largest request body accepted, as the Kubernetes apiserver's default.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// Longest request URI (path and query) accepted. Below hyper's own limit (65,534 bytes, past
/// which hyper answers a bare 414 before any handler runs), so a long URI gets a `Status`.
pub const MAX_URI_BYTES: usize = 32 * 1024;

/// Names the object a failure is about, for `Status.details`.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub group: &'static str,
    /// The resource (plural), e.g. `pods`; `Status.details.kind` carries it as Kubernetes does.
    pub resource: &'static str,
    pub name: String,
}

impl Subject {
    pub fn new(rt: &'static ResourceType, name: &str) -> Subject {
        Subject {
            group: rt.group,
            resource: rt.plural,
            name: name.to_string(),
        }
    }

    /// `pods` or `deployments.apps`, as Kubernetes writes the resource in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// A failed API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("not found")]
    NotFound(Subject),
    #[error("already exists")]
    AlreadyExists(Subject),
    #[error("conflict: {message}")]
    Conflict { subject: Subject, message: String },
    #[error("invalid")]
    Invalid {
        kind: &'static str,
        subject: Subject,
        causes: Vec<FieldError>,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 405 saying why (a create while a custom resource's definition is being deleted).
    #[error("method not allowed: {0}")]
    NotSupported(String),
    #[error("unsupported media type {0:?}")]
    UnsupportedMediaType(String),
    /// 415 with its own message (a strategic merge patch of a custom resource).
    #[error("unsupported media type: {0}")]
    MediaTypeNotAccepted(String),
    #[error("request too large")]
    TooLarge { size: usize, limit: usize },
    /// 413 with its own message.
    #[error("request entity too large: {0}")]
    EntityTooLarge(String),
    /// 414: the URI is longer than [`MAX_URI_BYTES`].
    #[error("URI too long: {0} bytes")]
    UriTooLong(usize),
    /// 422 without field causes (a JSON patch that cannot be applied).
    #[error("unprocessable: {0}")]
    Unprocessable(String),
    #[error("gone: {0}")]
    Gone(String),
    #[error("unknown resource")]
    UnknownResource,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("unauthorized")]
    Unauthorized,
    #[error("internal error: {0}")]
    Internal(String),
    #[error("store")]
    Store(#[from] StoreError),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 429 for an eviction a PodDisruptionBudget does not allow now, with the budget's cause.
    #[error("too many requests: {message}")]
    TooManyRequests { message: String, cause: String },
    /// 504: the request could not be served in time (a resourceVersion the cache has not
    /// reached yet).
    #[error("timeout: {0}")]
    Timeout(String),
}

impl ApiError {
    /// The Kubernetes conflict for a stale `resourceVersion`.
    pub fn stale(subject: Subject) -> ApiError {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            subject.qualified(),
            subject.name
        );
        ApiError::Conflict { subject, message }
    }

    /// Maps a store error about the object `subject`.
    pub fn from_store(err: StoreError, subject: Subject) -> ApiError {
        match err {
            StoreError::NotFound(_) => ApiError::NotFound(subject),
            StoreError::AlreadyExists(_) => ApiError::AlreadyExists(subject),
            StoreError::Conflict { .. } => ApiError::stale(subject),
            other => ApiError::Store(other),
        }
    }

    /// The HTTP code and `Status` body for this error.
    pub fn status(&self) -> (StatusCode, Value) {
        let mut details = Map::new();
        let (code, reason, message) = match self {
            ApiError::NotFound(s) => {
                fill_details(&mut details, s);
                (
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{}\" not found", s.qualified(), s.name),
                )
            }
            ApiError::AlreadyExists(s) => {
                fill_details(&mut details, s);
                (
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{}\" already exists", s.qualified(), s.name),
                )
            }
            ApiError::Conflict { subject, message } => {
                fill_details(&mut details, subject);
                (StatusCode::CONFLICT, "Conflict", message.clone())
            }
            ApiError::Invalid {
                kind,
                subject,
                causes,
            } => {
                details.insert("name".into(), json!(subject.name));
                if !subject.group.is_empty() {
                    details.insert("group".into(), json!(subject.group));
                }
                details.insert("kind".into(), json!(kind));
                let list: Vec<Value> = causes
                    .iter()
                    .map(|c| json!({"reason": c.reason(), "message": c.body(), "field": c.field}))
                    .collect();
                details.insert("causes".into(), Value::Array(list));
                let qualified_kind = if subject.group.is_empty() {
                    kind.to_string()
                } else {
                    format!("{kind}.{}", subject.group)
                };
                let described: Vec<String> = causes.iter().map(FieldError::describe).collect();
                let joined = if described.len() == 1 {
                    described.concat()
                } else {
                    format!("[{}]", described.join(", "))
                };
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("{qualified_kind} \"{}\" is invalid: {joined}", subject.name),
                )
            }
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "BadRequest", m.clone()),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource".to_string(),
            ),
            ApiError::NotSupported(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                m.clone(),
            ),
            ApiError::MediaTypeNotAccepted(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                m.clone(),
            ),
            ApiError::UnsupportedMediaType(t) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {t:?})"
                ),
            ),
            ApiError::TooLarge { size, limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!(
                    "etcdserver: request is too large: {size} bytes exceeds the limit of {limit} bytes"
                ),
            ),
            ApiError::EntityTooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                m.clone(),
            ),
            ApiError::UriTooLong(size) => (
                StatusCode::URI_TOO_LONG,
                "RequestURITooLong",
                format!("the request URI is {size} bytes long; the limit is {MAX_URI_BYTES}"),
            ),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m.clone()),
            ApiError::Gone(m) => (StatusCode::GONE, "Expired", m.clone()),
            ApiError::UnknownResource => (
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".to_string(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "Forbidden", m.clone()),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized".to_string(),
            ),
            ApiError::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                m.clone(),
            ),
            ApiError::Timeout(m) => (StatusCode::GATEWAY_TIMEOUT, "Timeout", m.clone()),
            ApiError::TooManyRequests { message, cause } => {
                details.insert(
                    "causes".into(),
                    json!([{"reason": "DisruptionBudget", "message": cause}]),
                );
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    message.clone(),
                )
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "an internal error occurred".to_string(),
                )
            }
            ApiError::Store(e) => match e {
                StoreError::TooLarge { size, limit } => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestEntityTooLarge",
                    format!(
                        "etcdserver: request is too large: {size} bytes exceeds the limit of {limit} bytes"
                    ),
                ),
                StoreError::Compacted { requested, oldest } => (
                    StatusCode::GONE,
                    "Expired",
                    format!("too old resource version: {requested} ({oldest})"),
                ),
                // As Kubernetes does when etcd does not answer in time: the write may still land.
                StoreError::Timeout(detail) => {
                    tracing::warn!(error = %detail, "store write timed out");
                    (
                        StatusCode::GATEWAY_TIMEOUT,
                        "Timeout",
                        "Timeout: request did not complete within the allowed duration; it may or may not have been applied".to_string(),
                    )
                }
                // No leader or no quorum: the request was not served; the client may retry.
                StoreError::Unavailable(detail) => {
                    tracing::warn!(error = %detail, "store unavailable");
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "ServiceUnavailable",
                        "the storage is unavailable (no leader or no quorum of control-plane members); retry later".to_string(),
                    )
                }
                StoreError::Corrupt(detail) => {
                    tracing::error!(error = %detail, "corrupt data in the store");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "an internal error occurred: data corruption detected in storage"
                            .to_string(),
                    )
                }
                other => {
                    tracing::error!(error = %other, "store request failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "an internal error occurred: storage unavailable".to_string(),
                    )
                }
            },
        };
        let mut body = Map::new();
        body.insert("kind".into(), json!("Status"));
        body.insert("apiVersion".into(), json!("v1"));
        body.insert("metadata".into(), json!({}));
        body.insert("status".into(), json!("Failure"));
        body.insert("message".into(), json!(message));
        body.insert("reason".into(), json!(reason));
        if !details.is_empty() {
            body.insert("details".into(), Value::Object(details));
        }
        body.insert("code".into(), json!(code.as_u16()));
        (code, Value::Object(body))
    }
}

fn fill_details(details: &mut Map<String, Value>, s: &Subject) {
    details.insert("name".into(), json!(s.name));
    if !s.group.is_empty() {
        details.insert("group".into(), json!(s.group));
    }
    details.insert("kind".into(), json!(s.resource));
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, body) = self.status();
        let mut response = json_response(code, &body);
        if matches!(
            code,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            // As kube-apiserver: clients wait this long before they retry.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A JSON response with `Content-Type: application/json`.
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = (code, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `Status` with `status: Success`.
pub fn success_status(code: StatusCode, details: Option<Value>) -> Response {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code.as_u16()});
    if let Some(d) = details {
        body["details"] = d;
    }
    json_response(code, &body)
}
