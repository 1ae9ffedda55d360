//! RuntimeClass: names the runtime handler a pod asks for.

use k8s_openapi::api::node::v1 as api;
use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, age_col, col, name_and_age, name_col, s};
use crate::validation::{
    DNS1123_LABEL_ERROR, FieldError, ShapeError, UnknownField, is_dns1123_label, typed,
};

/// `runtimeclasses` (`/apis/node.k8s.io/v1`).
pub static RUNTIME_CLASS: ResourceType = ResourceType {
    group: "node.k8s.io",
    version: "v1",
    kind: "RuntimeClass",
    list_kind: "RuntimeClassList",
    plural: "runtimeclasses",
    singular: "runtimeclass",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &RuntimeClass,
};

struct RuntimeClass;

impl Strategy for RuntimeClass {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::RuntimeClass>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::RuntimeClass>())
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        match obj.get("handler").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required("handler", "")),
            Some(h) if !is_dns1123_label(h) => errs.push(FieldError::invalid(
                "handler",
                &json!(h),
                DNS1123_LABEL_ERROR,
            )),
            Some(_) => {}
        }
    }

    #[rustfmt::skip]
    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Handler", "string", 0, "handler specifies the underlying runtime and configuration that the CRI implementation will use to handle pods of this class."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        vec![name, json!(s(obj, "/handler")), json!(age)]
    }
}
