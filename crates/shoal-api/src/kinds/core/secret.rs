//! Secret: data for pods; `stringData` is write-only and merged into `data`; `type` never
//! changes.

use k8s_openapi::api::core::v1 as api;
use serde_json::{Map, Value, json};

use super::{validate_data, validate_immutable_data};
use crate::defaults::set_default;
use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, age_col, col, count_keys, name_and_age, name_col, s};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `secrets` (`/api/v1`).
pub static SECRET: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Secret",
    list_kind: "SecretList",
    plural: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &Secret,
};

struct Secret;

const SECTIONS: &[&str] = &["data", "stringData"];

impl Strategy for Secret {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Secret>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Secret>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            set_default(map, "type", json!("Opaque"));
            merge_string_data(map);
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_data(obj, SECTIONS, false, errs);
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        validate_immutable_data(obj, old, SECTIONS, errs);
        let (a, b) = (obj.get("type"), old.get("type"));
        if a != b {
            errs.push(FieldError::invalid(
                "type",
                a.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["type"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col(
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ),
            col("Data", "string", 0, "Data contains the secret data."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let n = count_keys(obj, "/data");
        vec![name, json!(s(obj, "/type")), json!(n), json!(age)]
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
