//! Validation and defaulting of objects per kind, on `serde_json::Value`, with Kubernetes'
//! field paths and messages. Covers metadata and the parts of each served kind that clients
//! and Shoal's components rely on; it is not a full port of Kubernetes' validation (no
//! cross-object checks, no admission, no status validation beyond shape).
//!
//! Shapes are checked by deserialising into the `k8s-openapi` type of the kind; a type error
//! is reported as one `FieldError` without a precise path (serde gives none).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::quantity::{QUANTITY_ERROR_MESSAGE, parse_quantity};
use crate::registry::ResourceType;

/// The kind of a field error, mirroring `field.ErrorType` in apimachinery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorType {
    /// A required field is missing (`Required value`).
    Required,
    /// A value is malformed (`Invalid value`).
    Invalid,
    /// A value is not one of the supported values (`Unsupported value`).
    NotSupported,
    /// A value is duplicated in a list or map (`Duplicate value`).
    Duplicate,
    /// The field may not be set or changed (`Forbidden`).
    Forbidden,
    /// The value is too long (`Too long`).
    TooLong,
    /// The list has too many items (`Too many`).
    TooMany,
}

impl FieldErrorType {
    /// The phrase Kubernetes prints for the type: `Required value`, `Invalid value`, ...
    pub fn phrase(&self) -> &'static str {
        match self {
            FieldErrorType::Required => "Required value",
            FieldErrorType::Invalid => "Invalid value",
            FieldErrorType::NotSupported => "Unsupported value",
            FieldErrorType::Duplicate => "Duplicate value",
            FieldErrorType::Forbidden => "Forbidden",
            FieldErrorType::TooLong => "Too long",
            FieldErrorType::TooMany => "Too many",
        }
    }
}

/// One validation error: the field path, what is wrong and the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path, e.g. `spec.containers[0].image`; empty when no path is known.
    pub field: String,
    /// The error kind.
    pub error_type: FieldErrorType,
    /// The offending value as Kubernetes prints it (strings quoted: `"Foo_"`, numbers bare),
    /// when relevant.
    pub value: Option<String>,
    /// Detail, e.g. the DNS-1123 explanation; may be empty.
    pub message: String,
}

impl FieldError {
    /// A `Required value` error with an optional detail.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error_type: FieldErrorType::Required,
            value: None,
            message: detail.into(),
        }
    }

    /// An `Invalid value` error for `value` with a detail.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error_type: FieldErrorType::Invalid,
            value: Some(render_value(value)),
            message: detail.into(),
        }
    }

    /// An `Unsupported value` error listing the supported values.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            field: field.into(),
            error_type: FieldErrorType::NotSupported,
            value: Some(render_value(value)),
            message: format!("supported values: {}", list.join(", ")),
        }
    }

    /// A `Duplicate value` error.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            error_type: FieldErrorType::Duplicate,
            value: Some(render_value(value)),
            message: String::new(),
        }
    }

    /// A `Forbidden` error with a detail.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            error_type: FieldErrorType::Forbidden,
            value: None,
            message: detail.into(),
        }
    }

    /// A `Too long` error: `must have at most N bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            error_type: FieldErrorType::TooLong,
            value: None,
            message: format!("must have at most {max} bytes"),
        }
    }

    /// The `reason` of the matching `StatusCause`: `FieldValueRequired`, ...
    pub fn reason(&self) -> &'static str {
        match self.error_type {
            FieldErrorType::Required => "FieldValueRequired",
            FieldErrorType::Invalid => "FieldValueInvalid",
            FieldErrorType::NotSupported => "FieldValueNotSupported",
            FieldErrorType::Duplicate => "FieldValueDuplicate",
            FieldErrorType::Forbidden => "FieldValueForbidden",
            FieldErrorType::TooLong => "FieldValueTooLong",
            FieldErrorType::TooMany => "FieldValueTooMany",
        }
    }

    /// The error without its field, as in a `StatusCause.message`:
    /// `Invalid value: "Foo_": a lowercase RFC 1123 subdomain ...` or `Required value`.
    pub fn body(&self) -> String {
        let mut s = self.error_type.phrase().to_string();
        if let Some(v) = &self.value {
            s.push_str(": ");
            s.push_str(v);
        }
        if !self.message.is_empty() {
            s.push_str(": ");
            s.push_str(&self.message);
        }
        s
    }

    /// Kubernetes' one-line rendering: `spec.containers[0].image: Required value`.
    pub fn describe(&self) -> String {
        if self.field.is_empty() {
            self.body()
        } else {
            format!("{}: {}", self.field, self.body())
        }
    }
}

/// The `Status.message` of a 422 for these errors:
/// `Pod "x" is invalid: spec.containers: Required value` (several errors in `[a, b]`).
pub fn invalid_message(kind: &str, name: &str, errors: &[FieldError]) -> String {
    let list = match errors {
        [one] => one.describe(),
        many => format!(
            "[{}]",
            many.iter()
                .map(FieldError::describe)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!("{kind} {name:?} is invalid: {list}")
}

/// Renders a value the way Go's `%#v`/`%q` does in field errors: strings quoted, numbers and
/// booleans bare, maps of strings as `map[string]string{"a":"b"}`, other JSON as JSON.
pub fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Object(m) if m.values().all(Value::is_string) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or_default()))
                .collect();
            format!("map[string]string{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Kubernetes' message for an invalid DNS-1123 label.
pub const DNS1123_LABEL_ERROR: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
/// Kubernetes' message for an invalid DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_ERROR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
/// Kubernetes' message for an invalid DNS-1035 label (Service names).
pub const DNS1035_LABEL_ERROR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
/// Kubernetes' message for an invalid name part of a qualified name (label keys).
pub const QUALIFIED_NAME_ERROR: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
/// Kubernetes' message for an invalid label value.
pub const LABEL_VALUE_ERROR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
/// Kubernetes' message for an invalid ConfigMap or Secret key.
pub const CONFIG_KEY_ERROR: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";
/// Kubernetes' message for an invalid environment variable name (as of 1.32).
pub const ENV_VAR_NAME_ERROR: &str = "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')";

/// Largest DNS-1123 label.
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;
/// Largest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;
/// Largest total size of `metadata.annotations` (keys plus values).
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// Largest total size of a ConfigMap's or Secret's data.
pub const MAX_CONFIG_DATA_SIZE: usize = 1024 * 1024;

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_lower_alnum(b[0])
        && is_lower_alnum(b[b.len() - 1])
        && b.iter().all(|c| is_lower_alnum(*c) || *c == b'-')
}

/// Whether `s` is a DNS-1123 subdomain (at most 253 characters).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX_LENGTH && s.split('.').all(label_chars_ok)
}

/// Whether `s` is a DNS-1123 label (at most 63 characters).
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= DNS1123_LABEL_MAX_LENGTH && label_chars_ok(s)
}

/// Whether `s` is a DNS-1035 label: a DNS-1123 label starting with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter()
            .all(|c| is_alnum(*c) || matches!(c, b'-' | b'_' | b'.'))
}

/// Checks a qualified name (`prefix/name` or `name`, as label and annotation keys); returns
/// Kubernetes' messages for each problem.
pub fn qualified_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else if !is_dns1123_subdomain(p) {
            errs.push(format!("prefix part {DNS1123_SUBDOMAIN_ERROR}"));
        }
        if name.contains('/') {
            return vec![format!(
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            )];
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_string());
    } else if !is_name_part(name) {
        errs.push(QUALIFIED_NAME_ERROR.to_string());
    }
    errs
}

/// Whether `s` is a valid label value (empty, or at most 63 alphanumerics, `-`, `_`, `.`).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_name_part(s)
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_SUBDOMAIN_MAX_LENGTH
        && s != "."
        && s != ".."
        && !s.starts_with("..")
        && s.bytes()
            .all(|c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

fn is_env_var_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| is_alnum(*c) || matches!(c, b'-' | b'_' | b'.'))
}

/// Which name format a kind requires of `metadata.name`.
fn name_validator(kind: &str) -> fn(&str) -> Option<&'static str> {
    fn subdomain(s: &str) -> Option<&'static str> {
        (!is_dns1123_subdomain(s)).then_some(DNS1123_SUBDOMAIN_ERROR)
    }
    fn label(s: &str) -> Option<&'static str> {
        (!is_dns1123_label(s)).then_some(DNS1123_LABEL_ERROR)
    }
    fn dns1035(s: &str) -> Option<&'static str> {
        (!is_dns1035_label(s)).then_some(DNS1035_LABEL_ERROR)
    }
    match kind {
        "Namespace" => label,
        "Service" => dns1035,
        _ => subdomain,
    }
}

/// Validates `obj` (after defaulting); `old` is the stored object on update. Returns every
/// problem found, in field order; empty means valid.
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if !obj.is_object() {
        errs.push(FieldError {
            field: String::new(),
            error_type: FieldErrorType::Invalid,
            value: None,
            message: "the object must be a JSON object".into(),
        });
        return errs;
    }
    if let Err(e) = check_shape(rt, obj) {
        errs.push(FieldError {
            field: e.field,
            error_type: FieldErrorType::Invalid,
            value: e.value.as_ref().map(render_value),
            message: e.message,
        });
        return errs;
    }
    validate_metadata(rt, obj, old, &mut errs);
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    match (rt.group, rt.kind) {
        ("", "Pod") => {
            validate_pod_spec(spec, "spec", &mut errs);
            if let Some(old) = old {
                validate_pod_update(obj, old, &mut errs);
            }
        }
        ("apps", "Deployment" | "ReplicaSet") => validate_replicated(rt, obj, old, &mut errs),
        ("batch", "Job") => validate_job_spec(spec, "spec", &mut errs),
        ("batch", "CronJob") => {
            if spec
                .get("schedule")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errs.push(FieldError::required("spec.schedule", ""));
            }
            let job_spec = spec.pointer("/jobTemplate/spec").unwrap_or(&Value::Null);
            validate_job_spec(job_spec, "spec.jobTemplate.spec", &mut errs);
        }
        ("", "ConfigMap") => validate_config_data(rt, obj, old, &mut errs),
        ("", "Secret") => {
            validate_config_data(rt, obj, old, &mut errs);
            if let Some(old) = old {
                let (a, b) = (obj.get("type"), old.get("type"));
                if a != b {
                    errs.push(FieldError::invalid(
                        "type",
                        a.unwrap_or(&Value::Null),
                        "field is immutable",
                    ));
                }
            }
        }
        ("", "Service") => validate_service(obj, &mut errs),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            validate_certificate_signing_request(spec, old, &mut errs)
        }
        ("node.k8s.io", "RuntimeClass") => match obj.get("handler").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required("handler", "")),
            Some(h) if !is_dns1123_label(h) => errs.push(FieldError::invalid(
                "handler",
                &json!(h),
                DNS1123_LABEL_ERROR,
            )),
            Some(_) => {}
        },
        ("coordination.k8s.io", "Lease") => {
            if let Some(d) = spec.get("leaseDurationSeconds").and_then(Value::as_i64)
                && d <= 0
            {
                errs.push(FieldError::invalid(
                    "spec.leaseDurationSeconds",
                    &json!(d),
                    "must be greater than 0",
                ));
            }
        }
        ("", "Event") => validate_core_event(obj, &mut errs),
        ("events.k8s.io", "Event") => {
            if let Some(t) = obj.get("type").and_then(Value::as_str)
                && !t.is_empty()
                && t != "Normal"
                && t != "Warning"
            {
                errs.push(FieldError::not_supported(
                    "type",
                    &json!(t),
                    &["Normal", "Warning"],
                ));
            }
        }
        ("", "Namespace") => {
            if let Some(old) = old
                && let Some(ts) = old.pointer("/metadata/deletionTimestamp")
                && obj.pointer("/metadata/deletionTimestamp") != Some(ts)
            {
                errs.push(FieldError::forbidden(
                    "metadata.deletionTimestamp",
                    "field is immutable",
                ));
            }
        }
        _ => {}
    }
    errs
}

/// Where an object does not fit its kind's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ShapeError {
    /// Kubernetes-style path of the field that does not fit (`spec.containers[0].image`; empty
    /// for the object itself).
    pub field: String,
    /// The value there, if the path leads to a scalar (objects and lists are not repeated).
    pub value: Option<Value>,
    /// serde's message.
    pub message: String,
}

/// Checks that `obj` deserialises as the `k8s-openapi` type of its kind, in one pass that also
/// records where it failed (time linear in the object's size, however deep the bad field).
pub fn check_shape(rt: &ResourceType, obj: &Value) -> Result<(), ShapeError> {
    use k8s_openapi::api;
    fn check<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<(), ShapeError> {
        serde_path_to_error::deserialize::<_, T>(obj)
            .map(drop)
            .map_err(|e| {
                let field = e.path().to_string();
                ShapeError {
                    field: if field == "." { String::new() } else { field },
                    value: value_at(obj, e.path())
                        .filter(|v| !v.is_object() && !v.is_array())
                        .cloned(),
                    message: e.inner().to_string(),
                }
            })
    }
    let mut obj = obj.clone();
    crate::meta::set_type_meta(&mut obj, &rt.api_version(), rt.kind);
    let obj = &obj;
    match (rt.group, rt.kind) {
        ("", "Namespace") => check::<api::core::v1::Namespace>(obj),
        ("", "Pod") => check::<api::core::v1::Pod>(obj),
        ("", "Node") => check::<api::core::v1::Node>(obj),
        ("", "Event") => check::<api::core::v1::Event>(obj),
        ("", "ConfigMap") => check::<api::core::v1::ConfigMap>(obj),
        ("", "Secret") => check::<api::core::v1::Secret>(obj),
        ("", "ServiceAccount") => check::<api::core::v1::ServiceAccount>(obj),
        ("", "Service") => check::<api::core::v1::Service>(obj),
        ("", "Endpoints") => check::<api::core::v1::Endpoints>(obj),
        ("apps", "ReplicaSet") => check::<api::apps::v1::ReplicaSet>(obj),
        ("apps", "Deployment") => check::<api::apps::v1::Deployment>(obj),
        ("events.k8s.io", "Event") => check::<api::events::v1::Event>(obj),
        ("coordination.k8s.io", "Lease") => check::<api::coordination::v1::Lease>(obj),
        ("node.k8s.io", "RuntimeClass") => check::<api::node::v1::RuntimeClass>(obj),
        ("batch", "Job") => check::<api::batch::v1::Job>(obj),
        ("batch", "CronJob") => check::<api::batch::v1::CronJob>(obj),
        ("certificates.k8s.io", "CertificateSigningRequest") => {
            check::<api::certificates::v1::CertificateSigningRequest>(obj)
        }
        _ => Ok(()),
    }
}

/// A CSR names a signer and carries a PEM request; its spec never changes after creation.
fn validate_certificate_signing_request(
    spec: &Value,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    match spec.get("signerName").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("spec.signerName", "")),
        Some(name) if !name.contains('/') => errs.push(FieldError::invalid(
            "spec.signerName",
            &json!(name),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        )),
        Some(_) => {}
    }
    if spec
        .get("request")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errs.push(FieldError::required("spec.request", ""));
    }
    if let Some(old) = old
        && old.get("spec") != Some(spec)
    {
        errs.push(FieldError::invalid(
            "spec",
            &Value::Null,
            "field is immutable",
        ));
    }
}

/// The value at `path` in `obj`, if the path leads anywhere.
fn value_at<'a>(obj: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    use serde_path_to_error::Segment;
    let mut at = obj;
    for segment in path.iter() {
        at = match segment {
            Segment::Seq { index } => at.get(*index)?,
            Segment::Map { key } => at.get(key.as_str())?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(at)
}

fn validate_metadata(
    rt: &ResourceType,
    obj: &Value,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    let name = crate::meta::name(obj).unwrap_or_default();
    let generate_name = crate::meta::generate_name(obj).unwrap_or_default();
    let check_name = name_validator(rt.kind);
    if name.is_empty() {
        if generate_name.is_empty() {
            errs.push(FieldError::required(
                "metadata.name",
                "name or generateName is required",
            ));
        } else {
            // Kubernetes validates the prefix with a trailing-dash tolerance.
            let trimmed = generate_name.trim_end_matches('-');
            if !trimmed.is_empty()
                && let Some(msg) = check_name(trimmed)
            {
                errs.push(FieldError::invalid(
                    "metadata.generateName",
                    &json!(generate_name),
                    msg,
                ));
            }
        }
    } else if let Some(msg) = check_name(name) {
        errs.push(FieldError::invalid("metadata.name", &json!(name), msg));
    }
    let namespace = crate::meta::namespace(obj).unwrap_or_default();
    if rt.namespaced {
        if namespace.is_empty() {
            errs.push(FieldError::required("metadata.namespace", ""));
        } else if !is_dns1123_label(namespace) {
            errs.push(FieldError::invalid(
                "metadata.namespace",
                &json!(namespace),
                DNS1123_LABEL_ERROR,
            ));
        }
    } else if !namespace.is_empty() {
        errs.push(FieldError::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    let meta = crate::meta::metadata(obj);
    if let Some(labels) = meta
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
    {
        validate_labels(labels, "metadata.labels", errs);
    }
    if let Some(annotations) = meta
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, v) in annotations {
            for msg in qualified_name_errors(&k.to_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", &json!(k), msg));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > TOTAL_ANNOTATION_SIZE_LIMIT {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                TOTAL_ANNOTATION_SIZE_LIMIT,
            ));
        }
    }
    if let Some(finalizers) = meta
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
    {
        let mut seen = BTreeSet::new();
        for (i, f) in finalizers.iter().enumerate() {
            let f = f.as_str().unwrap_or_default();
            for msg in qualified_name_errors(f) {
                errs.push(FieldError::invalid(
                    format!("metadata.finalizers[{i}]"),
                    &json!(f),
                    msg,
                ));
            }
            if !seen.insert(f) {
                errs.push(FieldError::duplicate(
                    format!("metadata.finalizers[{i}]"),
                    &json!(f),
                ));
            }
        }
    }
    if let Some(old) = old {
        for field in ["name", "namespace", "uid"] {
            let (a, b) = (
                obj.pointer(&format!("/metadata/{field}")),
                old.pointer(&format!("/metadata/{field}")),
            );
            let empty = |v: Option<&Value>| v.and_then(Value::as_str).is_none_or(str::is_empty);
            if field == "uid" && empty(a) {
                continue;
            }
            if a != b && !(empty(a) && empty(b)) {
                errs.push(FieldError::invalid(
                    format!("metadata.{field}"),
                    a.unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
    }
}

fn validate_labels(labels: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
    for (k, v) in labels {
        for msg in qualified_name_errors(k) {
            errs.push(FieldError::invalid(path, &json!(k), msg));
        }
        let v = v.as_str().unwrap_or_default();
        if !is_label_value(v) {
            let msg = if v.len() > 63 {
                "must be no more than 63 characters"
            } else {
                LABEL_VALUE_ERROR
            };
            errs.push(FieldError::invalid(path, &json!(v), msg));
        }
    }
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// Validates a `PodSpec` found at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    // Volumes.
    let mut volume_names = BTreeSet::new();
    for (i, vol) in arr(spec, "volumes").iter().enumerate() {
        let p = format!("{path}.volumes[{i}].name");
        let name = str_of(vol, "name");
        if name.is_empty() {
            errs.push(FieldError::required(p, ""));
        } else if !is_dns1123_label(name) {
            errs.push(FieldError::invalid(p, &json!(name), DNS1123_LABEL_ERROR));
        } else if !volume_names.insert(name) {
            errs.push(FieldError::duplicate(p, &json!(name)));
        }
    }
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = BTreeSet::new();
    for (field, list) in [
        ("initContainers", arr(spec, "initContainers")),
        ("containers", containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            validate_container(
                c,
                &format!("{path}.{field}[{i}]"),
                &volume_names,
                &mut names,
                errs,
            );
        }
    }
    let restart = spec.get("restartPolicy").cloned().unwrap_or(Value::Null);
    match restart.as_str() {
        Some("Always" | "OnFailure" | "Never") => {}
        None => errs.push(FieldError::required(format!("{path}.restartPolicy"), "")),
        Some(_) => errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            &restart,
            &["Always", "OnFailure", "Never"],
        )),
    }
    if let Some(dns) = spec.get("dnsPolicy")
        && !matches!(
            dns.as_str(),
            Some("ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None")
        )
    {
        errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            dns,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ));
    }
    for key in ["terminationGracePeriodSeconds", "activeDeadlineSeconds"] {
        if let Some(n) = spec.get(key).and_then(Value::as_i64) {
            let bad = if key == "activeDeadlineSeconds" {
                n < 1
            } else {
                n < 0
            };
            if bad {
                let msg = if key == "activeDeadlineSeconds" {
                    "must be between 1 and 2147483647, inclusive"
                } else {
                    "must be greater than or equal to 0"
                };
                errs.push(FieldError::invalid(format!("{path}.{key}"), &json!(n), msg));
            }
        }
    }
    for key in ["nodeName", "serviceAccountName"] {
        let v = str_of(spec, key);
        if !v.is_empty() && !is_dns1123_subdomain(v) {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                &json!(v),
                DNS1123_SUBDOMAIN_ERROR,
            ));
        }
    }
    if let Some(sel) = spec.get("nodeSelector").and_then(Value::as_object) {
        validate_labels(sel, &format!("{path}.nodeSelector"), errs);
    }
    for (i, t) in arr(spec, "tolerations").iter().enumerate() {
        let p = format!("{path}.tolerations[{i}]");
        let op = str_of(t, "operator");
        if !matches!(op, "" | "Equal" | "Exists") {
            errs.push(FieldError::not_supported(
                format!("{p}.operator"),
                &json!(op),
                &["Equal", "Exists"],
            ));
        }
        if op == "Exists" && !str_of(t, "value").is_empty() {
            errs.push(FieldError::invalid(
                format!("{p}.operator"),
                &json!(op),
                "value must be empty when `operator` is 'Exists'",
            ));
        }
        let effect = str_of(t, "effect");
        if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            errs.push(FieldError::not_supported(
                format!("{p}.effect"),
                &json!(effect),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
}

fn validate_container(
    c: &Value,
    path: &str,
    volumes: &BTreeSet<&str>,
    names: &mut BTreeSet<String>,
    errs: &mut Vec<FieldError>,
) {
    let name = str_of(c, "name");
    if name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else if !is_dns1123_label(name) {
        errs.push(FieldError::invalid(
            format!("{path}.name"),
            &json!(name),
            DNS1123_LABEL_ERROR,
        ));
    } else if !names.insert(name.to_string()) {
        errs.push(FieldError::duplicate(format!("{path}.name"), &json!(name)));
    }
    if str_of(c, "image").trim().is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    if let Some(p) = c.get("imagePullPolicy")
        && !matches!(p.as_str(), Some("Always" | "IfNotPresent" | "Never"))
    {
        errs.push(FieldError::not_supported(
            format!("{path}.imagePullPolicy"),
            p,
            &["Always", "IfNotPresent", "Never"],
        ));
    }
    let mut port_names = BTreeSet::new();
    for (i, port) in arr(c, "ports").iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        match port.get("containerPort").and_then(Value::as_i64) {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => errs.push(FieldError::invalid(
                format!("{pp}.containerPort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(FieldError::required(format!("{pp}.containerPort"), "")),
        }
        if let Some(n) = port.get("hostPort").and_then(Value::as_i64)
            && !(0..=65535).contains(&n)
        {
            errs.push(FieldError::invalid(
                format!("{pp}.hostPort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = port.get("protocol")
            && !matches!(proto.as_str(), Some("TCP" | "UDP" | "SCTP"))
        {
            errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let pname = str_of(port, "name");
        if !pname.is_empty() {
            if !is_port_name(pname) {
                errs.push(FieldError::invalid(
                    format!("{pp}.name"),
                    &json!(pname),
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), must be no more than 15 characters, must contain at least one letter (a-z)",
                ));
            } else if !port_names.insert(pname) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &json!(pname)));
            }
        }
    }
    for (i, env) in arr(c, "env").iter().enumerate() {
        let name = str_of(env, "name");
        let p = format!("{path}.env[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(p, ""));
        } else if !is_env_var_name(name) {
            errs.push(FieldError::invalid(p, &json!(name), ENV_VAR_NAME_ERROR));
        }
    }
    let mut mount_paths = BTreeSet::new();
    for (i, m) in arr(c, "volumeMounts").iter().enumerate() {
        let p = format!("{path}.volumeMounts[{i}]");
        let name = str_of(m, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else if !volumes.contains(name) {
            errs.push(FieldError {
                field: format!("{p}.name"),
                error_type: FieldErrorType::Invalid,
                value: Some(render_value(&json!(name))),
                message: "volume not found: must match the name of a volume in spec.volumes".into(),
            });
        }
        let mount_path = str_of(m, "mountPath");
        if mount_path.is_empty() {
            errs.push(FieldError::required(format!("{p}.mountPath"), ""));
        } else if !mount_paths.insert(mount_path) {
            errs.push(FieldError::invalid(
                format!("{p}.mountPath"),
                &json!(mount_path),
                "must be unique",
            ));
        }
    }
    validate_resources(
        c.get("resources").unwrap_or(&Value::Null),
        &format!("{path}.resources"),
        errs,
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get(probe) {
            for key in [
                "timeoutSeconds",
                "periodSeconds",
                "successThreshold",
                "failureThreshold",
            ] {
                if let Some(n) = p.get(key).and_then(Value::as_i64)
                    && n < 1
                {
                    errs.push(FieldError::invalid(
                        format!("{path}.{probe}.{key}"),
                        &json!(n),
                        "must be greater than or equal to 1",
                    ));
                }
            }
            if probe != "readinessProbe"
                && p.get("successThreshold")
                    .and_then(Value::as_i64)
                    .is_some_and(|n| n != 1)
            {
                errs.push(FieldError::invalid(
                    format!("{path}.{probe}.successThreshold"),
                    p.get("successThreshold").unwrap_or(&Value::Null),
                    "must be 1",
                ));
            }
        }
    }
}

fn is_port_name(s: &str) -> bool {
    s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn validate_resources(res: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut parsed: BTreeMap<(&str, &str), crate::quantity::Quantity> = BTreeMap::new();
    for section in ["limits", "requests"] {
        let Some(map) = res.get(section).and_then(Value::as_object) else {
            continue;
        };
        for (name, q) in map {
            let p = format!("{path}.{section}[{name}]");
            let text = match q {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    errs.push(FieldError::invalid(p, other, QUANTITY_ERROR_MESSAGE));
                    continue;
                }
            };
            match parse_quantity(&text) {
                Ok(v) if v.is_negative() => errs.push(FieldError::invalid(
                    p,
                    &json!(text),
                    "must be greater than or equal to 0",
                )),
                Ok(v) => {
                    parsed.insert((section, name.as_str()), v);
                }
                Err(_) => errs.push(FieldError::invalid(p, &json!(text), QUANTITY_ERROR_MESSAGE)),
            }
        }
    }
    for ((section, name), req) in &parsed {
        if *section != "requests" {
            continue;
        }
        if let Some(limit) = parsed.get(&("limits", name))
            && req > limit
        {
            let req_text = res
                .pointer(&format!("/requests/{name}"))
                .cloned()
                .unwrap_or(Value::Null);
            let limit_text = res
                .pointer(&format!("/limits/{name}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            errs.push(FieldError::invalid(
                format!("{path}.requests"),
                &req_text,
                format!("must be less than or equal to {name} limit of {limit_text}"),
            ));
        }
    }
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn validate_pod_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let (Some(new_spec), Some(old_spec)) = (obj.get("spec"), old.get("spec")) else {
        return;
    };
    // Copy the mutable fields of the new spec onto the old one; anything else that differs is
    // a forbidden change.
    let mut patched = old_spec.clone();
    for list in ["containers", "initContainers"] {
        let new_list = arr(new_spec, list);
        if let Some(items) = patched.get_mut(list).and_then(Value::as_array_mut)
            && items.len() == new_list.len()
        {
            for (o, n) in items.iter_mut().zip(new_list) {
                if let (Some(o), Some(img)) = (o.as_object_mut(), n.get("image")) {
                    o.insert("image".into(), img.clone());
                }
            }
        }
    }
    if let Some(p) = patched.as_object_mut() {
        for key in [
            "activeDeadlineSeconds",
            "tolerations",
            "schedulingGates",
            "ephemeralContainers",
        ] {
            match new_spec.get(key) {
                Some(v) => p.insert(key.into(), v.clone()),
                None => p.remove(key),
            };
        }
        // terminationGracePeriodSeconds may go from negative to 1.
        if old_spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|n| n < 0)
            && new_spec
                .get("terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                == Some(1)
        {
            p.insert("terminationGracePeriodSeconds".into(), json!(1));
        }
        // nodeName is set through the binding subresource; a plain update may fill it once.
        if str_of(old_spec, "nodeName").is_empty()
            && let Some(n) = new_spec.get("nodeName")
        {
            p.insert("nodeName".into(), n.clone());
        }
    }
    if &patched != new_spec {
        errs.push(FieldError::forbidden("spec", POD_UPDATE_FORBIDDEN));
    }
    // Tolerations: only additions.
    let new_tol = arr(new_spec, "tolerations");
    for t in arr(old_spec, "tolerations") {
        let kept = new_tol.iter().any(|n| {
            n == t || {
                // tolerationSeconds may only be shortened, the rest must match.
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("tolerationSeconds");
                    }
                    v
                };
                strip(n) == strip(t)
            }
        });
        if !kept {
            errs.push(FieldError::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }
}

fn validate_replicated(
    rt: &ResourceType,
    obj: &Value,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            &json!(r),
            "must be greater than or equal to 0",
        ));
    }
    for key in ["minReadySeconds", "revisionHistoryLimit"] {
        if let Some(n) = spec.get(key).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid(
                format!("spec.{key}"),
                &json!(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect::<BTreeMap<_, _>>()
        })
        .unwrap_or_default();
    match spec.get("selector") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => match crate::selector::LabelSelector::from_value(Some(sel)) {
            Err(e) => errs.push(FieldError::invalid("spec.selector", sel, e.to_string())),
            Ok(s) if s.is_empty() => errs.push(FieldError::invalid(
                "spec.selector",
                sel,
                format!("empty selector is invalid for {}", rt.singular),
            )),
            Ok(s) => {
                if !s.matches(&template_labels) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        spec.pointer("/template/metadata/labels")
                            .unwrap_or(&Value::Null),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    if let Some(labels) = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
    {
        validate_labels(labels, "spec.template.metadata.labels", errs);
    }
    match spec.pointer("/template/spec") {
        None => errs.push(FieldError::required("spec.template.spec.containers", "")),
        Some(pod_spec) => {
            validate_pod_spec(pod_spec, "spec.template.spec", errs);
            if let Some(rp) = pod_spec.get("restartPolicy")
                && rp.as_str() != Some("Always")
            {
                errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    rp,
                    &["Always"],
                ));
            }
        }
    }
    if rt.kind == "Deployment" {
        let strategy = spec.get("strategy").unwrap_or(&Value::Null);
        match strategy.get("type") {
            None => {}
            Some(t)
                if t.as_str() == Some("Recreate")
                    && strategy.get("rollingUpdate").is_some_and(|v| !v.is_null()) =>
            {
                errs.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
            Some(t) if t.as_str() == Some("Recreate") => {}
            Some(t) if t.as_str() == Some("RollingUpdate") => {
                let zero = |v: Option<&Value>| match v {
                    Some(Value::Number(n)) => n.as_i64() == Some(0),
                    Some(Value::String(s)) => s == "0" || s == "0%",
                    _ => false,
                };
                let ru = strategy.get("rollingUpdate");
                if zero(ru.and_then(|r| r.get("maxSurge")))
                    && zero(ru.and_then(|r| r.get("maxUnavailable")))
                {
                    errs.push(FieldError::invalid(
                        "spec.strategy.rollingUpdate.maxUnavailable",
                        &json!(0),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
            Some(t) => errs.push(FieldError::not_supported(
                "spec.strategy.type",
                t,
                &["Recreate", "RollingUpdate"],
            )),
        }
    }
    if let Some(old) = old
        && old.pointer("/spec/selector") != spec.get("selector")
    {
        errs.push(FieldError::invalid(
            "spec.selector",
            spec.get("selector").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}

fn validate_job_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for key in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(n) = spec.get(key).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                &json!(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    let Some(pod_spec) = spec.pointer("/template/spec") else {
        errs.push(FieldError::required(
            format!("{path}.template.spec.containers"),
            "",
        ));
        return;
    };
    validate_pod_spec(pod_spec, &format!("{path}.template.spec"), errs);
    // validate_pod_spec already reported a missing or unknown restartPolicy.
    if let Some(rp) = pod_spec.get("restartPolicy")
        && rp.as_str() == Some("Always")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            rp,
            &["OnFailure", "Never"],
        ));
    }
}

fn validate_config_data(
    rt: &ResourceType,
    obj: &Value,
    old: Option<&Value>,
    errs: &mut Vec<FieldError>,
) {
    let mut total = 0;
    let mut seen = BTreeSet::new();
    let sections: &[&str] = if rt.kind == "Secret" {
        &["data", "stringData"]
    } else {
        &["data", "binaryData"]
    };
    for section in sections {
        let Some(map) = obj.get(*section).and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in map {
            if !is_config_key(k) {
                errs.push(FieldError::invalid(
                    format!("{section}[{k}]"),
                    &json!(k),
                    CONFIG_KEY_ERROR,
                ));
            }
            if rt.kind == "ConfigMap" && !seen.insert(k.as_str()) {
                errs.push(FieldError::duplicate(format!("{section}[{k}]"), &json!(k)));
            }
            total += v.as_str().map_or(0, str::len);
        }
    }
    if total > MAX_CONFIG_DATA_SIZE {
        errs.push(FieldError::too_long(sections[0], MAX_CONFIG_DATA_SIZE));
    }
    if let Some(old) = old
        && old.get("immutable").and_then(Value::as_bool) == Some(true)
    {
        if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        for section in sections {
            if obj.get(*section) != old.get(*section) {
                errs.push(FieldError::forbidden(
                    *section,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
}

fn validate_service(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(FieldError::not_supported(
            "spec.type",
            &json!(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = arr(spec, "ports");
    let headless = str_of(spec, "clusterIP") == "None";
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if ty == "ExternalName" && str_of(spec, "externalName").is_empty() {
        errs.push(FieldError::required("spec.externalName", ""));
    }
    let mut names = BTreeSet::new();
    let mut port_protos = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = str_of(p, "name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{pp}.name"), ""));
        } else if !name.is_empty() {
            if !is_dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{pp}.name"),
                    &json!(name),
                    DNS1123_LABEL_ERROR,
                ));
            } else if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &json!(name)));
            }
        }
        let port = p.get("port").and_then(Value::as_i64);
        match port {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => errs.push(FieldError::invalid(
                format!("{pp}.port"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(FieldError::required(format!("{pp}.port"), "")),
        }
        let proto = str_of(p, "protocol");
        if !matches!(proto, "" | "TCP" | "UDP" | "SCTP") {
            errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                &json!(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(port) = port
            && !port_protos.insert((port, proto))
        {
            errs.push(FieldError::duplicate(
                pp.clone(),
                &json!({"port": port, "protocol": proto}),
            ));
        }
        match p.get("targetPort") {
            None => {}
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
                errs.push(FieldError::invalid(
                    format!("{pp}.targetPort"),
                    &Value::Number(n.clone()),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(Value::String(s)) if !is_port_name(s) => {
                errs.push(FieldError::invalid(
                        format!("{pp}.targetPort"),
                        &json!(s),
                        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), must be no more than 15 characters, must contain at least one letter (a-z)",
                    ));
            }
            Some(Value::Number(_) | Value::String(_)) => {}
            Some(other) => errs.push(FieldError::invalid(
                format!("{pp}.targetPort"),
                other,
                "must be a port number or name",
            )),
        }
        if let Some(n) = p.get("nodePort").and_then(Value::as_i64)
            && n != 0
            && ty == "ClusterIP"
        {
            errs.push(FieldError::forbidden(
                format!("{pp}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(sel) = spec.get("selector").and_then(Value::as_object) {
        validate_labels(sel, "spec.selector", errs);
    }
}

fn validate_core_event(obj: &Value, errs: &mut Vec<FieldError>) {
    let ns = crate::meta::namespace(obj).unwrap_or_default();
    let involved_ns = obj
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !involved_ns.is_empty() && involved_ns != ns {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(involved_ns),
            "does not match event.namespace",
        ));
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str)
        && !t.is_empty()
        && t != "Normal"
        && t != "Warning"
    {
        errs.push(FieldError::not_supported(
            "type",
            &json!(t),
            &["Normal", "Warning"],
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Defaulting

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let map = v.as_object_mut()?;
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        None | Some(Value::Null) => {
            map.insert(key.into(), value);
        }
        Some(Value::String(s)) if s.is_empty() && value.is_string() => {
            map.insert(key.into(), value);
        }
        _ => {}
    }
}

/// Fills defaults the way Kubernetes' defaulting does for the served kinds, including the
/// defaults Kubernetes' default admission plugins add to pods (priority 0, service account
/// `default`, not-ready/unreachable tolerations of 300 s). Idempotent; never removes fields.
/// The apiserver still owns `uid`, `resourceVersion`, `creationTimestamp` and `generation`.
pub fn default_object(rt: &ResourceType, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match (rt.group, rt.kind) {
        ("", "Pod") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                default_pod_spec(spec);
                default_pod_admission(spec);
                default_requests_from_limits(spec);
            }
            let qos = obj.get("spec").map(qos_class).unwrap_or("BestEffort");
            if let Some(status) = obj_mut(obj, "status") {
                set_default(status, "phase", json!("Pending"));
                set_default(status, "qosClass", json!(qos));
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "replicas", json!(1));
                let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
                if let Some(s) = strategy.as_object_mut() {
                    set_default(s, "type", json!("RollingUpdate"));
                    if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set_default(ru, "maxUnavailable", json!("25%"));
                            set_default(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                default_template(spec);
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "replicas", json!(1));
                default_template(spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                default_job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                let jt = spec.entry("jobTemplate").or_insert_with(|| json!({}));
                if let Some(job_spec) = obj_mut(jt, "spec") {
                    default_job_spec(job_spec);
                }
            }
        }
        ("", "Namespace") => {
            let name = crate::meta::name(obj).map(str::to_string);
            if let Some(name) = name {
                crate::meta::set_label(obj, "kubernetes.io/metadata.name", Some(&name));
            }
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
            if let Some(status) = obj_mut(obj, "status") {
                set_default(status, "phase", json!("Active"));
            }
        }
        ("", "Service") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                let ty = spec
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if ty != "ExternalName" {
                    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
                }
                if ty == "NodePort" || ty == "LoadBalancer" {
                    set_default(spec, "externalTrafficPolicy", json!("Cluster"));
                }
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            let unset = match p.get("targetPort") {
                                None | Some(Value::Null) => true,
                                Some(Value::Number(n)) => n.as_i64() == Some(0),
                                Some(Value::String(s)) => s.is_empty(),
                                Some(_) => false,
                            };
                            if unset {
                                p.insert("targetPort".into(), port);
                            }
                        }
                    }
                }
            }
            if let Some(status) = obj_mut(obj, "status") {
                set_default(status, "loadBalancer", json!({}));
            }
        }
        ("", "Secret") => {
            if let Some(map) = obj.as_object_mut() {
                set_default(map, "type", json!("Opaque"));
                merge_string_data(map);
            }
        }
        ("", "Endpoints") => {
            if let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) {
                for s in subsets {
                    if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
                        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                            set_default(p, "protocol", json!("TCP"));
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// A Secret's `stringData` is write-only: its entries go into `data` (base64), overriding keys
/// of the same name, and it is never stored, as upstream. A malformed one (not a map of
/// strings, or `data` not a map) is left for validation to refuse.
fn merge_string_data(secret: &mut Map<String, Value>) {
    use base64::Engine as _;
    let well_formed = secret
        .get("stringData")
        .and_then(Value::as_object)
        .is_some_and(|m| m.values().all(Value::is_string))
        && secret.get("data").is_none_or(Value::is_object);
    if !well_formed {
        return;
    }
    let Some(Value::Object(strings)) = secret.remove("stringData") else {
        return;
    };
    let data = secret.entry("data").or_insert_with(|| json!({}));
    if let Some(data) = data.as_object_mut() {
        for (k, v) in strings {
            let plain = v.as_str().unwrap_or_default();
            let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
            data.insert(k, Value::String(encoded));
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(pod_spec) = obj_mut(template, "spec") {
        default_pod_spec(pod_spec);
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    let has_completions = spec.get("completions").is_some_and(|v| !v.is_null());
    let has_parallelism = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !has_completions && !has_parallelism {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(pod_spec) = obj_mut(template, "spec") {
        // A Job's template keeps the restartPolicy the user gave (validation insists on one).
        let rp = pod_spec.get("restartPolicy").cloned();
        default_pod_spec(pod_spec);
        match rp {
            Some(rp) => pod_spec.insert("restartPolicy".into(), rp),
            None => pod_spec.shift_remove("restartPolicy"),
        };
    }
}

/// Applies the schema defaults of a `PodSpec` (what Kubernetes' `SetDefaults_PodSpec`,
/// `SetDefaults_Container` and friends fill), used for pods and pod templates alike.
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    if let Some(sa) = spec.get("serviceAccount").cloned()
        && sa.as_str().is_some_and(|s| !s.is_empty())
    {
        set_default(spec, "serviceAccountName", sa);
    }
    if let Some(sa) = spec.get("serviceAccountName").cloned()
        && sa.as_str().is_some_and(|s| !s.is_empty())
    {
        set_default(spec, "serviceAccount", sa);
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                default_container(c);
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            for source in ["configMap", "secret", "downwardAPI", "projected"] {
                if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
            if let Some(s) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
                set_default(s, "type", json!(""));
            }
        }
    }
}

/// A pod's container with limits but no requests for a resource gets requests equal to the
/// limits (Kubernetes' `SetDefaults_Pod`; not applied to templates).
fn default_requests_from_limits(spec: &mut Map<String, Value>) {
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
                continue;
            };
            if limits.is_empty() {
                continue;
            }
            let requests = res.entry("requests").or_insert_with(|| json!({}));
            if requests.is_null() {
                *requests = json!({});
            }
            if let Some(requests) = requests.as_object_mut() {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
}

fn default_pod_admission(spec: &mut Map<String, Value>) {
    set_default(spec, "serviceAccountName", json!("default"));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set_default(spec, "serviceAccount", sa);
    }
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if tolerations.is_null() {
        *tolerations = json!([]);
    }
    if let Some(list) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = list.iter().any(|t| {
                let k = t.get("key").and_then(Value::as_str);
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
                let op = t
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                (k == Some(key) || (k.is_none_or(str::is_empty) && op == "Exists"))
                    && (effect.is_empty() || effect == "NoExecute")
            });
            if !present {
                list.push(json!({
                    "key": key,
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300
                }));
            }
        }
    }
}

fn default_container(c: &mut Map<String, Value>) {
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let policy = if image_tag_is_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for e in env.iter_mut() {
            if let Some(f) = e
                .pointer_mut("/valueFrom/fieldRef")
                .and_then(Value::as_object_mut)
            {
                set_default(f, "apiVersion", json!("v1"));
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set_default(h, "path", json!("/"));
                set_default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

/// Whether an image reference has no tag (and no digest) or the tag `latest`, which makes
/// Kubernetes default `imagePullPolicy` to `Always`.
pub fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// The pod's QoS class from its containers' requests and limits: `Guaranteed`, `Burstable`
/// or `BestEffort` (Kubernetes' `GetPodQOS`, for cpu and memory).
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = arr(spec, "containers")
        .iter()
        .chain(arr(spec, "initContainers"))
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let res = c.get("resources").unwrap_or(&Value::Null);
        let req = res.get("requests").and_then(Value::as_object);
        let lim = res.get("limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r)).and_then(quantity_of);
            let lm = lim.and_then(|m| m.get(r)).and_then(quantity_of);
            if rq.is_some_and(|q| q.nanos != 0) || lm.is_some_and(|q| q.nanos != 0) {
                any = true;
            }
            match (rq, lm) {
                (_, None) => guaranteed = false,
                (Some(a), Some(b)) if a != b => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn quantity_of(v: &Value) -> Option<crate::quantity::Quantity> {
    match v {
        Value::String(s) => parse_quantity(s).ok(),
        Value::Number(n) => parse_quantity(&n.to_string()).ok(),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::find_by_kind;
    use expect_test::{Expect, expect};

    fn rt(group: &str, kind: &str) -> &'static ResourceType {
        find_by_kind(group, "v1", kind).unwrap()
    }

    /// Defaults then validates, rendering errors one per line.
    fn check(group: &str, kind: &str, mut obj: Value, old: Option<Value>, want: Expect) {
        let rt = rt(group, kind);
        default_object(rt, &mut obj);
        let mut old = old;
        if let Some(o) = old.as_mut() {
            default_object(rt, o);
        }
        let errs = validate(rt, &obj, old.as_ref());
        let text: Vec<String> = errs
            .iter()
            .map(|e| format!("{} {}", e.reason(), e.describe()))
            .collect();
        want.assert_eq(&text.join("\n"));
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("a-1"));
        assert!(!is_dns1123_label("A"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain("Foo_"));
        assert!(is_dns1035_label("a1"));
        assert!(!is_dns1035_label("1a"));
        assert!(qualified_name_errors("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name_errors("-x").is_empty());
        assert!(!qualified_name_errors("/x").is_empty());
        assert!(image_tag_is_latest("nginx"));
        assert!(image_tag_is_latest("localhost:5000/nginx"));
        assert!(image_tag_is_latest("nginx:latest"));
        assert!(!image_tag_is_latest("localhost:5000/nginx:1.2"));
        assert!(!image_tag_is_latest("nginx@sha256:abc"));
    }

    #[test]
    fn metadata_errors() {
        check(
            "",
            "ConfigMap",
            json!({"metadata": {"name": "Foo_", "namespace": "default", "labels": {"ok": "Bad value!"}}}),
            None,
            expect![[r#"
                FieldValueInvalid metadata.name: Invalid value: "Foo_": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')
                FieldValueInvalid metadata.labels: Invalid value: "Bad value!": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"#]],
        );
        check(
            "",
            "ConfigMap",
            json!({"metadata": {}}),
            None,
            expect![[r#"
                FieldValueRequired metadata.name: Required value: name or generateName is required
                FieldValueRequired metadata.namespace: Required value"#]],
        );
        check(
            "",
            "ConfigMap",
            json!({"metadata": {"generateName": "web-", "namespace": "x"}}),
            None,
            expect![[""]],
        );
        check(
            "",
            "Namespace",
            json!({"metadata": {"name": "a.b"}}),
            None,
            expect![[
                r#"FieldValueInvalid metadata.name: Invalid value: "a.b": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
            ]],
        );
        let big = "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT + 1);
        check(
            "",
            "ConfigMap",
            json!({"metadata": {"name": "a", "namespace": "d", "annotations": {"k": big}}}),
            None,
            expect![[
                r#"FieldValueTooLong metadata.annotations: Too long: must have at most 262144 bytes"#
            ]],
        );
    }

    #[test]
    fn pod_errors() {
        check(
            "",
            "Pod",
            pod(json!({"containers": [{"name": "a", "image": "x:1"}]})),
            None,
            expect![[""]],
        );
        check(
            "",
            "Pod",
            pod(json!({"containers": []})),
            None,
            expect![[r#"FieldValueRequired spec.containers: Required value"#]],
        );
        check(
            "",
            "Pod",
            pod(json!({
                "restartPolicy": "Sometimes",
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [
                    {"name": "a", "image": "", "ports": [{"containerPort": 70000}]},
                    {"name": "a", "image": "x", "volumeMounts": [{"name": "nope", "mountPath": "/d"}],
                     "resources": {"requests": {"cpu": "2", "memory": "1Gx"}, "limits": {"cpu": "1"}}}
                ]
            })),
            None,
            expect![[r#"
                FieldValueRequired spec.containers[0].image: Required value
                FieldValueInvalid spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive
                FieldValueDuplicate spec.containers[1].name: Duplicate value: "a"
                FieldValueInvalid spec.containers[1].volumeMounts[0].name: Invalid value: "nope": volume not found: must match the name of a volume in spec.volumes
                FieldValueInvalid spec.containers[1].resources.requests[memory]: Invalid value: "1Gx": quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'
                FieldValueInvalid spec.containers[1].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1
                FieldValueNotSupported spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#]],
        );
        // Wrong types are caught by the typed check.
        let errs = validate(
            rt("", "Pod"),
            &pod(json!({"containers": [{"name": "a", "image": 5}]})),
            None,
        );
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.containers[0].image");
        assert_eq!(errs[0].value.as_deref(), Some("5"));
        let labels_err = validate(
            rt("", "Pod"),
            &json!({"metadata": {"name": "p", "namespace": "d", "labels": []}}),
            None,
        );
        assert_eq!(labels_err[0].field, "metadata.labels");
        // Found in one pass however large the object and however late the bad field (narrowing
        // by re-checking a copy per child took time quadratic in the size).
        let mut env: Vec<Value> = (0..5000)
            .map(|i| json!({"name": format!("V{i}"), "value": "x"}))
            .collect();
        env.push(json!({"name": "LAST", "value": 7}));
        let big = validate(
            rt("", "Pod"),
            &pod(json!({"containers": [{"name": "a", "image": "x", "env": env}]})),
            None,
        );
        assert_eq!(big.len(), 1);
        assert_eq!(big[0].field, "spec.containers[0].env[5000].value");
        assert_eq!(big[0].value.as_deref(), Some("7"));
        let top = validate(rt("", "ConfigMap"), &json!({"metadata": 5}), None);
        assert_eq!(top[0].field, "metadata");
        assert!(
            errs[0].message.contains("invalid type"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn pod_update() {
        let old = pod(json!({"containers": [{"name": "a", "image": "x:1"}]}));
        check(
            "",
            "Pod",
            pod(json!({"containers": [{"name": "a", "image": "x:2"}], "activeDeadlineSeconds": 5})),
            Some(old.clone()),
            expect![[""]],
        );
        check(
            "",
            "Pod",
            pod(json!({"containers": [{"name": "a", "image": "x:1", "command": ["sh"]}]})),
            Some(old.clone()),
            expect![[
                r#"FieldValueForbidden spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"#
            ]],
        );
        let mut labelled = old.clone();
        crate::meta::set_label(&mut labelled, "a", Some("b"));
        check("", "Pod", labelled, Some(old), expect![[""]]);
    }

    #[test]
    fn deployment_errors() {
        let d = |sel: Value, labels: Value, replicas: i64| {
            json!({"metadata": {"name": "d", "namespace": "default"}, "spec": {
                "replicas": replicas, "selector": sel,
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "a", "image": "x"}]}}
            }})
        };
        check(
            "apps",
            "Deployment",
            d(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"}), 1),
            None,
            expect![[""]],
        );
        check(
            "apps",
            "Deployment",
            d(
                json!({"matchLabels": {"app": "a"}}),
                json!({"app": "b"}),
                -1,
            ),
            None,
            expect![[r#"
                FieldValueInvalid spec.replicas: Invalid value: -1: must be greater than or equal to 0
                FieldValueInvalid spec.template.metadata.labels: Invalid value: map[string]string{"app":"b"}: `selector` does not match template `labels`"#]],
        );
        // Recreate is valid without rollingUpdate, and forbids it.
        let mut recreate = d(json!({"matchLabels": {"app": "a"}}), json!({"app": "a"}), 1);
        recreate["spec"]["strategy"] = json!({"type": "Recreate"});
        check("apps", "Deployment", recreate.clone(), None, expect![[""]]);
        recreate["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 1});
        check(
            "apps",
            "Deployment",
            recreate,
            None,
            expect![
                "FieldValueForbidden spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"
            ],
        );
        check(
            "apps",
            "ReplicaSet",
            d(json!({"matchLabels": {"app": "b"}}), json!({"app": "b"}), 1),
            Some(d(
                json!({"matchLabels": {"app": "a"}}),
                json!({"app": "a"}),
                1,
            )),
            expect![[
                r#"FieldValueInvalid spec.selector: Invalid value: {"matchLabels":{"app":"b"}}: field is immutable"#
            ]],
        );
    }

    #[test]
    fn other_kinds() {
        check(
            "batch",
            "Job",
            json!({"metadata": {"name": "j", "namespace": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}}),
            None,
            expect![[r#"FieldValueRequired spec.template.spec.restartPolicy: Required value"#]],
        );
        check(
            "batch",
            "Job",
            json!({"metadata": {"name": "j", "namespace": "d"}, "spec": {"template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}}}}),
            None,
            expect![[
                r#"FieldValueNotSupported spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#
            ]],
        );
        check(
            "",
            "Service",
            json!({"metadata": {"name": "1svc", "namespace": "d"}, "spec": {"ports": [{"port": 80}, {"port": 0, "name": "b"}]}}),
            None,
            expect![[r#"
                FieldValueInvalid metadata.name: Invalid value: "1svc": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')
                FieldValueRequired spec.ports[0].name: Required value
                FieldValueInvalid spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive
                FieldValueInvalid spec.ports[1].targetPort: Invalid value: 0: must be between 1 and 65535, inclusive"#]],
        );
        check(
            "node.k8s.io",
            "RuntimeClass",
            json!({"metadata": {"name": "wasm"}, "handler": "Wasm_time"}),
            None,
            expect![[
                r#"FieldValueInvalid handler: Invalid value: "Wasm_time": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"#
            ]],
        );
        check(
            "",
            "ConfigMap",
            json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"bad key": "v"}}),
            None,
            expect![[
                r#"FieldValueInvalid data[bad key]: Invalid value: "bad key": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"#
            ]],
        );
        check(
            "coordination.k8s.io",
            "Lease",
            json!({"metadata": {"name": "n", "namespace": "kube-node-lease"}, "spec": {"holderIdentity": "n", "leaseDurationSeconds": 40}}),
            None,
            expect![[""]],
        );
        check(
            "",
            "Node",
            json!({"metadata": {"name": "n1"}}),
            None,
            expect![[""]],
        );
        check(
            "",
            "Node",
            json!({"metadata": {"name": "n1", "namespace": "x"}}),
            None,
            expect![[
                r#"FieldValueForbidden metadata.namespace: Forbidden: not allowed on this type"#
            ]],
        );
    }

    #[test]
    fn defaults() {
        let mut p = pod(
            json!({"containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 80}],
            "resources": {"limits": {"cpu": "1", "memory": "1Mi"}}}]}),
        );
        default_object(rt("", "Pod"), &mut p);
        let before = p.clone();
        default_object(rt("", "Pod"), &mut p);
        assert_eq!(before, p, "defaulting is idempotent");
        expect![[r#"{"metadata":{"name":"p","namespace":"default"},"spec":{"containers":[{"name":"a","image":"x","ports":[{"containerPort":80,"protocol":"TCP"}],"resources":{"limits":{"cpu":"1","memory":"1Mi"},"requests":{"cpu":"1","memory":"1Mi"}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"Always"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","schedulerName":"default-scheduler","securityContext":{},"enableServiceLinks":true,"serviceAccountName":"default","serviceAccount":"default","priority":0,"preemptionPolicy":"PreemptLowerPriority","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}]},"status":{"phase":"Pending","qosClass":"Guaranteed"}}"#]]
            .assert_eq(&p.to_string());

        let mut d = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        default_object(rt("apps", "Deployment"), &mut d);
        expect![[r#"{"metadata":{"name":"d"},"spec":{"template":{"spec":{"containers":[{"name":"a","image":"x:1","terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent","resources":{}}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","schedulerName":"default-scheduler","securityContext":{},"enableServiceLinks":true}},"replicas":1,"strategy":{"type":"RollingUpdate","rollingUpdate":{"maxUnavailable":"25%","maxSurge":"25%"}},"revisionHistoryLimit":10,"progressDeadlineSeconds":600}}"#]]
            .assert_eq(&d.to_string());

        let mut secret = json!({"metadata": {"name": "s"}, "data": {"a": "eA==", "b": "eA=="},
            "stringData": {"b": "hello", "c": ""}});
        default_object(rt("", "Secret"), &mut secret);
        assert_eq!(
            secret,
            json!({"metadata": {"name": "s"}, "type": "Opaque",
                "data": {"a": "eA==", "b": "aGVsbG8=", "c": ""}})
        );
        let mut odd = json!({"metadata": {"name": "s"}, "stringData": {"b": 1}});
        default_object(rt("", "Secret"), &mut odd);
        assert_eq!(
            odd["stringData"],
            json!({"b": 1}),
            "left for validation to refuse"
        );

        let mut s = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        default_object(rt("", "Service"), &mut s);
        expect![[r#"{"metadata":{"name":"s"},"spec":{"ports":[{"port":80,"protocol":"TCP","targetPort":80}],"type":"ClusterIP","sessionAffinity":"None","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#]]
            .assert_eq(&s.to_string());

        let mut ns = json!({"metadata": {"name": "team"}});
        default_object(rt("", "Namespace"), &mut ns);
        expect![[r#"{"metadata":{"name":"team","labels":{"kubernetes.io/metadata.name":"team"}},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}"#]]
            .assert_eq(&ns.to_string());

        let mut j = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x:1"}]}}}});
        default_object(rt("batch", "Job"), &mut j);
        assert_eq!(j.pointer("/spec/completions"), Some(&json!(1)));
        assert_eq!(j.pointer("/spec/backoffLimit"), Some(&json!(6)));
        assert_eq!(
            j.pointer("/spec/template/spec/restartPolicy"),
            Some(&json!("Never"))
        );
    }

    #[test]
    fn qos() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }

    #[test]
    fn messages() {
        let e = FieldError::invalid("metadata.name", &json!("Foo_"), "bad");
        assert_eq!(
            invalid_message("Pod", "Foo_", std::slice::from_ref(&e)),
            "Pod \"Foo_\" is invalid: metadata.name: Invalid value: \"Foo_\": bad"
        );
        let r = FieldError::required("spec.containers", "");
        assert_eq!(
            invalid_message("Pod", "x", &[e, r]),
            "Pod \"x\" is invalid: [metadata.name: Invalid value: \"Foo_\": bad, spec.containers: Required value]"
        );
    }
}
