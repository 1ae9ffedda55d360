//! Validation of objects on `serde_json::Value`, with Kubernetes' field paths and messages:
//! the generic part every kind shares (the object, its shape against the `k8s-openapi` type,
//! metadata, immutable identity), then the kind's own rules from its
//! [`Strategy`](crate::strategy::Strategy). Covers the parts of each served kind that clients
//! and Shoal's components rely on; it is not a full port of Kubernetes' validation (no
//! cross-object checks, no admission, no status validation beyond shape).
//!
//! Shapes are checked by deserialising into the `k8s-openapi` type of the kind, in one pass
//! that records the path of the first field that does not fit.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::registry::ResourceType;
use crate::strategy::NameFormat;

mod names;
mod pod_spec;

pub use names::*;
pub(crate) use pod_spec::is_port_name;
pub use pod_spec::validate_pod_spec;

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

/// Validates `obj` (after defaulting); `old` is the stored object on update. Returns every
/// problem found, in field order; empty means valid. The generic checks (object, shape,
/// metadata) come first, then the kind's strategy: `validate`, and `validate_update` on update.
pub fn validate(rt: &ResourceType, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    validate_fields(rt, obj, old).0
}

/// [`validate`], and the fields `obj` carries that its kind's schema does not know (for the
/// caller's `fieldValidation`: refuse, warn or drop them).
pub fn validate_fields(
    rt: &ResourceType,
    obj: &Value,
    old: Option<&Value>,
) -> (Vec<FieldError>, Vec<UnknownField>) {
    let mut errs = Vec::new();
    if !obj.is_object() {
        errs.push(FieldError {
            field: String::new(),
            error_type: FieldErrorType::Invalid,
            value: None,
            message: "the object must be a JSON object".into(),
        });
        return (errs, Vec::new());
    }
    let unknown = match check_shape(rt, obj) {
        Ok(unknown) => unknown,
        Err(e) => {
            errs.push(FieldError {
                field: e.field,
                error_type: FieldErrorType::Invalid,
                value: e.value.as_ref().map(render_value),
                message: e.message,
            });
            return (errs, Vec::new());
        }
    };
    validate_metadata(rt, obj, old, &mut errs);
    rt.strategy.validate(obj, &mut errs);
    if let Some(old) = old {
        rt.strategy.validate_update(obj, old, &mut errs);
    }
    (errs, unknown)
}

/// One step of a path into an object: a map key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A key of a map.
    Key(String),
    /// An index into a list.
    Index(usize),
}

/// A field an object carries that its kind's schema does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField(pub Vec<Step>);

impl UnknownField {
    /// The path as Kubernetes writes it: `spec.containers[0].imag`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for step in &self.0 {
            match step {
                Step::Key(k) if out.is_empty() => out.push_str(k),
                Step::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Step::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// Removes the field from `obj` (upstream drops what its types do not hold).
    pub fn remove_from(&self, obj: &mut Value) {
        let Some((last, parents)) = self.0.split_last() else {
            return;
        };
        let mut at = obj;
        for step in parents {
            let next = match step {
                Step::Key(k) => at.get_mut(k.as_str()),
                Step::Index(i) => at.get_mut(*i),
            };
            match next {
                Some(next) => at = next,
                None => return,
            }
        }
        if let (Step::Key(k), Some(map)) = (last, at.as_object_mut()) {
            map.remove(k);
        }
    }
}

fn steps(path: &serde_ignored::Path<'_>, out: &mut Vec<Step>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            steps(parent, out);
            out.push(Step::Index(*index));
        }
        Path::Map { parent, key } => {
            steps(parent, out);
            out.push(Step::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => steps(parent, out),
    }
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

/// Checks that `obj` fits its kind's typed schema (the strategy's [`typed`] check), with its
/// `kind` and `apiVersion` filled in first. Returns the fields the schema does not know.
pub fn check_shape(rt: &ResourceType, obj: &Value) -> Result<Vec<UnknownField>, ShapeError> {
    let mut obj = obj.clone();
    crate::meta::set_type_meta(&mut obj, &rt.api_version(), rt.kind);
    let mut unknown = Vec::new();
    rt.strategy.check_shape(&obj, &mut unknown)?;
    Ok(unknown)
}

/// Checks that `obj` deserialises as `T` (the `k8s-openapi` type of its kind), in one pass that
/// also records where it failed (time linear in the object's size, however deep the bad field)
/// and which fields `T` does not know (added to `unknown`).
pub fn typed<T: serde::de::DeserializeOwned>(
    obj: &Value,
    unknown: &mut Vec<UnknownField>,
) -> Result<(), ShapeError> {
    let mut ignored = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        let mut out = Vec::new();
        steps(&path, &mut out);
        ignored.push(UnknownField(out));
    };
    let result =
        serde_path_to_error::deserialize::<_, T>(serde_ignored::Deserializer::new(obj, &mut note))
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
            });
    unknown.extend(ignored);
    result
}

/// The check `metadata.name` gets under a name format: the message when it fails.
fn check_name(format: NameFormat, s: &str) -> Option<&'static str> {
    match format {
        NameFormat::Subdomain => (!is_dns1123_subdomain(s)).then_some(DNS1123_SUBDOMAIN_ERROR),
        NameFormat::Label => (!is_dns1123_label(s)).then_some(DNS1123_LABEL_ERROR),
        NameFormat::Dns1035 => (!is_dns1035_label(s)).then_some(DNS1035_LABEL_ERROR),
        NameFormat::PathSegment => (s == "." || s == ".." || s.contains(['/', '%']))
            .then_some("may not be '.' or '..' and may not contain '/' or '%'"),
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
    let format = rt.strategy.name_format();
    let check_name = |s: &str| check_name(format, s);
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

pub(crate) fn validate_labels(labels: &Map<String, Value>, path: &str, errs: &mut Vec<FieldError>) {
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

pub(crate) fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::defaults::{default_object, image_tag_is_latest, qos_class};
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
        let admission = crate::strategy::Admission {
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 60,
        };
        rt("", "Pod").strategy.admit_create(&mut p, &admission);
        let before = p.clone();
        rt("", "Pod").strategy.admit_create(&mut p, &admission);
        assert_eq!(before, p, "admission adds its tolerations once");
        expect![[r#"{"metadata":{"name":"p","namespace":"default"},"spec":{"containers":[{"name":"a","image":"x","ports":[{"containerPort":80,"protocol":"TCP"}],"resources":{"limits":{"cpu":"1","memory":"1Mi"},"requests":{"cpu":"1","memory":"1Mi"}},"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"Always"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","schedulerName":"default-scheduler","securityContext":{},"enableServiceLinks":true,"serviceAccountName":"default","serviceAccount":"default","priority":0,"preemptionPolicy":"PreemptLowerPriority","tolerations":[{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":60}]},"status":{"phase":"Pending","qosClass":"Guaranteed"}}"#]]
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

    #[test]
    fn unknown_fields_are_found_by_path_and_can_be_dropped() {
        let rt = rt("", "Pod");
        let mut obj = pod(json!({
            "containers": [{"name": "a", "image": "i", "imagePullPolcy": "Always"}],
            "nodeSelectr": {"a": "b"},
        }));
        obj["metadata"]["labelz"] = json!({});
        obj["status"] = json!({"phase": "Pending"});
        crate::defaults::default_object(rt, &mut obj);
        let (errs, unknown) = validate_fields(rt, &obj, None);
        assert!(errs.is_empty(), "{errs:?}");
        let mut paths: Vec<String> = unknown.iter().map(UnknownField::describe).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "metadata.labelz",
                "spec.containers[0].imagePullPolcy",
                "spec.nodeSelectr"
            ]
        );
        for field in &unknown {
            field.remove_from(&mut obj);
        }
        assert!(validate_fields(rt, &obj, None).1.is_empty());
        assert_eq!(obj["spec"]["containers"][0]["image"], "i");
        assert_eq!(obj["status"]["phase"], "Pending");
    }
}
