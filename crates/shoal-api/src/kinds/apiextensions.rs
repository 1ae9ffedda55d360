//! The `apiextensions.k8s.io` group: CustomResourceDefinition. What a CRD serves is
//! [`crate::custom`]'s; this file checks that a definition can be served (names, versions,
//! structural schemas, printer columns, subresources) as upstream's CRD validation does.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as api;
use serde_json::{Map, Value, json};

use crate::registry::ResourceType;
use crate::schema::Schema;
use crate::strategy::{Requester, Strategy, drop_status};
use crate::table::{Column, col, name_col};
use crate::validation::{
    FieldError, ShapeError, UnknownField, is_dns1035_label, is_dns1123_subdomain, typed,
};

/// `customresourcedefinitions` (`/apis/apiextensions.k8s.io/v1`).
pub static CUSTOM_RESOURCE_DEFINITION: ResourceType = ResourceType {
    group: "apiextensions.k8s.io",
    version: "v1",
    kind: "CustomResourceDefinition",
    list_kind: "CustomResourceDefinitionList",
    plural: "customresourcedefinitions",
    singular: "customresourcedefinition",
    namespaced: false,
    short_names: &["crd", "crds"],
    categories: &["api-extensions"],
    subresources: &["status"],
    strategy: &Crd,
};

/// The finalizer that keeps a CRD until its custom resources are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Annotation a CRD in a protected group (`*.k8s.io`, `*.kubernetes.io`) must carry.
const APPROVAL_ANNOTATION: &str = "api-approved.kubernetes.io";

const COLUMN_TYPES: [&str; 5] = ["boolean", "date", "integer", "number", "string"];

struct Crd;

/// A CRD's `spec.names` with upstream's defaults filled where unset or empty: `singular` is
/// the kind in lower case, `listKind` the kind followed by `List`. The one place these
/// defaults are computed (defaulting, serving and name claims all use it).
pub fn defaulted_names(names: &Value) -> Map<String, Value> {
    let mut out = names.as_object().cloned().unwrap_or_default();
    let kind = s(names, "/kind").to_string();
    if kind.is_empty() {
        return out;
    }
    for (key, value) in [
        ("singular", kind.to_lowercase()),
        ("listKind", format!("{kind}List")),
    ] {
        if out
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            out.insert(key.into(), json!(value));
        }
    }
    out
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn check_label(field: &str, value: &str, errs: &mut Vec<FieldError>) {
    if !is_dns1035_label(value) {
        errs.push(FieldError::invalid(
            field,
            &json!(value),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        ));
    }
}

fn validate_names(names: &Value, errs: &mut Vec<FieldError>) {
    for field in ["plural", "kind"] {
        if s(names, &format!("/{field}")).is_empty() {
            errs.push(FieldError::required(format!("spec.names.{field}"), ""));
        }
    }
    for field in ["plural", "singular"] {
        let v = s(names, &format!("/{field}"));
        if !v.is_empty() {
            check_label(&format!("spec.names.{field}"), v, errs);
        }
    }
    for field in ["kind", "listKind"] {
        let v = s(names, &format!("/{field}"));
        if !v.is_empty() {
            check_label(&format!("spec.names.{field}"), &v.to_lowercase(), errs);
        }
    }
    for field in ["shortNames", "categories"] {
        let list = names
            .get(field)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, v) in list.iter().enumerate() {
            check_label(
                &format!("spec.names.{field}[{i}]"),
                v.as_str().unwrap_or_default(),
                errs,
            );
        }
    }
}

fn validate_version(v: &Value, i: usize, errs: &mut Vec<FieldError>) {
    let at = format!("spec.versions[{i}]");
    let name = s(v, "/name");
    if name.is_empty() {
        errs.push(FieldError::required(format!("{at}.name"), ""));
    } else {
        check_label(&format!("{at}.name"), name, errs);
    }
    match v.pointer("/schema/openAPIV3Schema") {
        None => errs.push(FieldError::required(
            format!("{at}.schema.openAPIV3Schema"),
            "schemas are required",
        )),
        Some(schema) => {
            if let Err(e) = Schema::compile(schema) {
                errs.push(FieldError {
                    field: format!("{at}.schema.{}", e.path),
                    error_type: crate::validation::FieldErrorType::Invalid,
                    value: None,
                    message: e.message,
                });
            }
        }
    }
    let columns = v
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (j, c) in columns.iter().enumerate() {
        let at = format!("{at}.additionalPrinterColumns[{j}]");
        if s(c, "/name").is_empty() {
            errs.push(FieldError::required(format!("{at}.name"), ""));
        }
        let ty = s(c, "/type");
        if !COLUMN_TYPES.contains(&ty) {
            errs.push(FieldError::not_supported(
                format!("{at}.type"),
                &json!(ty),
                &COLUMN_TYPES,
            ));
        }
        let path = s(c, "/jsonPath");
        if path.is_empty() {
            errs.push(FieldError::required(format!("{at}.jsonPath"), ""));
        } else if !path.starts_with('.') {
            errs.push(FieldError::invalid(
                format!("{at}.jsonPath"),
                &json!(path),
                "must be a simple json path starting with .",
            ));
        }
    }
    if let Some(scale) = v.pointer("/subresources/scale") {
        let at = format!("{at}.subresources.scale");
        for (field, prefix, required) in [
            ("specReplicasPath", ".spec.", true),
            ("statusReplicasPath", ".status.", true),
            ("labelSelectorPath", ".s", false),
        ] {
            let path = s(scale, &format!("/{field}"));
            if path.is_empty() {
                if required {
                    errs.push(FieldError::required(format!("{at}.{field}"), ""));
                }
                continue;
            }
            let simple = path.starts_with(prefix)
                && !path.contains(['[', ']', '*', '?'])
                && (field != "labelSelectorPath"
                    || path.starts_with(".spec.")
                    || path.starts_with(".status."));
            if !simple {
                errs.push(FieldError::invalid(
                    format!("{at}.{field}"),
                    &json!(path),
                    format!(
                        "should be a json path under {}",
                        if field == "labelSelectorPath" {
                            ".spec or .status"
                        } else {
                            prefix.trim_end_matches('.')
                        }
                    ),
                ));
            }
        }
    }
}

impl Strategy for Crd {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::CustomResourceDefinition>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::CustomResourceDefinition>())
    }

    fn default(&self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        if !spec.contains_key("conversion") {
            spec.insert("conversion".into(), json!({"strategy": "None"}));
        }
        if let Some(names) = spec.get_mut("names")
            && names.is_object()
        {
            *names = Value::Object(defaulted_names(names));
        }
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            let list = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut()
                && !list.iter().any(|f| f == CLEANUP_FINALIZER)
            {
                list.push(json!(CLEANUP_FINALIZER));
            }
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let group = s(obj, "/spec/group");
        let plural = s(obj, "/spec/names/plural");
        let name = crate::meta::name(obj).unwrap_or_default();
        if group.is_empty() {
            errs.push(FieldError::required("spec.group", ""));
        } else if !is_dns1123_subdomain(group) || !group.contains('.') {
            errs.push(FieldError::invalid(
                "spec.group",
                &json!(group),
                "should be a domain with at least one dot",
            ));
        } else if (group.ends_with(".k8s.io")
            || group.ends_with(".kubernetes.io")
            || group == "k8s.io"
            || group == "kubernetes.io")
            && obj
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    APPROVAL_ANNOTATION.replace('/', "~1")
                ))
                .is_none()
        {
            errs.push(FieldError::required(
                format!("metadata.annotations[{APPROVAL_ANNOTATION}]"),
                format!("protected groups must have approval annotation {APPROVAL_ANNOTATION:?}, see https://github.com/kubernetes/enhancements/pull/1111"),
            ));
        }
        if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
            errs.push(FieldError::invalid(
                "metadata.name",
                &json!(name),
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        let scope = s(obj, "/spec/scope");
        if !matches!(scope, "Namespaced" | "Cluster") {
            errs.push(FieldError::not_supported(
                "spec.scope",
                &json!(scope),
                &["Cluster", "Namespaced"],
            ));
        }
        if let Some(names) = obj.pointer("/spec/names") {
            validate_names(names, errs);
        } else {
            errs.push(FieldError::required("spec.names", ""));
        }
        let strategy = s(obj, "/spec/conversion/strategy");
        if !matches!(strategy, "" | "None") {
            errs.push(FieldError::not_supported(
                "spec.conversion.strategy",
                &json!(strategy),
                &["None"],
            ));
        }
        let versions = obj
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if versions.is_empty() {
            errs.push(FieldError::invalid(
                "spec.versions",
                &json!([]),
                "must have exactly one version marked as storage version",
            ));
        }
        let mut seen: Vec<&str> = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            let name = s(v, "/name");
            if seen.contains(&name) {
                errs.push(FieldError::duplicate(
                    format!("spec.versions[{i}].name"),
                    &json!(name),
                ));
            }
            seen.push(name);
            validate_version(v, i, errs);
        }
        let storage = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .count();
        if !versions.is_empty() && storage != 1 {
            errs.push(FieldError::invalid(
                "spec.versions",
                &json!(versions.iter().map(|v| s(v, "/name")).collect::<Vec<_>>()),
                "must have exactly one version marked as storage version",
            ));
        }
        if !versions.is_empty()
            && !versions
                .iter()
                .any(|v| v.get("served").and_then(Value::as_bool) == Some(true))
        {
            errs.push(FieldError::invalid(
                "spec.versions",
                &json!(seen),
                "must have at least one version marked as served",
            ));
        }
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        for (pointer, field) in [("/spec/group", "spec.group"), ("/spec/scope", "spec.scope")] {
            if obj.pointer(pointer) != old.pointer(pointer) {
                errs.push(FieldError::invalid(
                    field,
                    obj.pointer(pointer).unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col(
                "Created At",
                "date",
                0,
                "CreationTimestamp is a timestamp representing the server time when this object was created.",
            ),
        ]
    }

    fn row(&self, obj: &Value, _now: jiff::Timestamp) -> Vec<Value> {
        vec![
            json!(crate::meta::name(obj).unwrap_or_default()),
            json!(crate::meta::creation_timestamp(obj).unwrap_or_default()),
        ]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::validation::validate;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "singular": "widget", "listKind": "WidgetList"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]
            }
        })
    }

    fn errors(obj: &Value) -> Vec<String> {
        validate(&CUSTOM_RESOURCE_DEFINITION, obj, None)
            .iter()
            .map(FieldError::describe)
            .collect()
    }

    #[test]
    fn a_valid_definition_passes() {
        assert_eq!(errors(&crd()), Vec::<String>::new());
    }

    #[test]
    fn refuses_what_cannot_be_served() {
        let mut bad = crd();
        bad["metadata"]["name"] = json!("gadgets.example.com");
        assert!(errors(&bad)[0].starts_with("metadata.name"));
        let mut bad = crd();
        bad["spec"]["group"] = json!("nodots");
        bad["metadata"]["name"] = json!("widgets.nodots");
        assert!(errors(&bad)[0].contains("at least one dot"));
        let mut bad = crd();
        bad["spec"]["group"] = json!("apps.k8s.io");
        bad["metadata"]["name"] = json!("widgets.apps.k8s.io");
        assert!(errors(&bad)[0].contains("approval annotation"));
        let mut bad = crd();
        bad["spec"]["versions"][0]["storage"] = json!(false);
        assert!(errors(&bad)[0].contains("exactly one version marked as storage"));
        let mut bad = crd();
        bad["spec"]["versions"][0]["schema"] =
            json!({"openAPIV3Schema": {"type": "object", "properties": {"spec": {}}}});
        assert!(
            errors(&bad)[0].contains("properties[spec].type"),
            "{:?}",
            errors(&bad)
        );
        let mut bad = crd();
        bad["spec"]["versions"][0]["additionalPrinterColumns"] =
            json!([{"name": "X", "type": "float", "jsonPath": "spec.x"}]);
        assert_eq!(errors(&bad).len(), 2, "{:?}", errors(&bad));
        let mut bad = crd();
        bad["spec"]["names"]["kind"] = json!("Wid_get");
        assert!(errors(&bad)[0].starts_with("spec.names.kind"));
    }

    #[test]
    fn scope_and_group_are_immutable() {
        let mut new = crd();
        new["spec"]["scope"] = json!("Cluster");
        let errs = validate(&CUSTOM_RESOURCE_DEFINITION, &new, Some(&crd()));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.scope");
    }
}
