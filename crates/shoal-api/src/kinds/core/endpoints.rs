//! Endpoints: the addresses behind a Service.

use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};

use crate::defaults::set_default;
use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, age_col, arr, col, i, name_and_age, name_col, s};
use crate::validation::{ShapeError, UnknownField, typed};

/// `endpoints` (`/api/v1`).
pub static ENDPOINTS: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Endpoints",
    list_kind: "EndpointsList",
    plural: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    subresources: &[],
    strategy: &Endpoints,
};

struct Endpoints;

impl Strategy for Endpoints {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Endpoints>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Endpoints>())
    }

    fn default(&self, obj: &mut Value) {
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

    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Endpoints", "string", 0, "Endpoints of the service"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        vec![name, json!(format_endpoints(obj)), json!(age)]
    }
}

fn format_endpoints(ep: &Value) -> String {
    let mut list = Vec::new();
    let mut more = 0;
    for subset in arr(ep, "/subsets") {
        let ports = arr(subset, "/ports");
        for addr in arr(subset, "/addresses") {
            let ip = s(addr, "/ip");
            if ports.is_empty() {
                if list.len() < 3 {
                    list.push(ip.to_string())
                } else {
                    more += 1
                }
            }
            for p in ports {
                if list.len() < 3 {
                    list.push(format!("{ip}:{}", i(p, "/port")));
                } else {
                    more += 1;
                }
            }
        }
    }
    if list.is_empty() {
        return "<none>".into();
    }
    let mut out = list.join(",");
    if more > 0 {
        out.push_str(&format!(" + {more} more..."));
    }
    out
}
