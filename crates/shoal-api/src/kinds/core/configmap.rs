//! ConfigMap: configuration data for pods, optionally immutable.

use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};

use super::{validate_data, validate_immutable_data};
use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, age_col, col, count_keys, name_and_age, name_col};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `configmaps` (`/api/v1`).
pub static CONFIG_MAP: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    list_kind: "ConfigMapList",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    subresources: &[],
    strategy: &ConfigMap,
};

struct ConfigMap;

const SECTIONS: &[&str] = &["data", "binaryData"];

impl Strategy for ConfigMap {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::ConfigMap>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::ConfigMap>())
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_data(obj, SECTIONS, true, errs);
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        validate_immutable_data(obj, old, SECTIONS, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Data", "string", 0, "Data contains the configuration data."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let n = count_keys(obj, "/data") + count_keys(obj, "/binaryData");
        vec![name, json!(n), json!(age)]
    }
}
