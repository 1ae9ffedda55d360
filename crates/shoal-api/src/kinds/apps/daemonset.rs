//! DaemonSet: one pod per eligible node (run by `shoal_controllers::daemonset`).

use k8s_openapi::api::apps::v1 as api;
use serde_json::{Map, Value, json};

use super::{validate_replicated, validate_selector_unchanged};
use crate::defaults::{default_template, obj_mut, set_default};
use crate::registry::ResourceType;
use crate::strategy::{Requester, Strategy, drop_status};
use crate::table::{
    Column, age_col, col, i, name_and_age, name_col, workload_wide, workload_wide_cells,
};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `daemonsets` (`/apis/apps/v1`).
pub static DAEMON_SET: ResourceType = ResourceType {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    list_kind: "DaemonSetList",
    plural: "daemonsets",
    singular: "daemonset",
    namespaced: true,
    short_names: &["ds"],
    categories: &["all"],
    subresources: &["status"],
    strategy: &DaemonSet,
};

struct DaemonSet;

impl Strategy for DaemonSet {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::DaemonSet>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::DaemonSet>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "maxUnavailable", json!(1));
                        set_default(ru, "maxSurge", json!(0));
                    }
                }
            }
            default_template(spec);
        }
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_replicated(DAEMON_SET.singular, obj, errs);
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        validate_selector_unchanged(obj, old, errs);
    }

    fn pod_spec_path(&self) -> Option<&'static [&'static str]> {
        Some(&["spec", "template", "spec"])
    }

    #[rustfmt::skip]
    fn columns(&self) -> Vec<Column> {
        let mut c = vec![
            name_col(),
            col("Desired", "integer", 0, "The number of nodes that should be running the daemon pod."),
            col("Current", "integer", 0, "The number of nodes running at least one daemon pod and are supposed to."),
            col("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            col("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod."),
            col("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
            col("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
            age_col(),
        ];
        c.extend(workload_wide());
        c
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let selector = obj
            .pointer("/spec/template/spec/nodeSelector")
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "<none>".into());
        let mut cells = vec![
            name,
            json!(i(obj, "/status/desiredNumberScheduled")),
            json!(i(obj, "/status/currentNumberScheduled")),
            json!(i(obj, "/status/numberReady")),
            json!(i(obj, "/status/updatedNumberScheduled")),
            json!(i(obj, "/status/numberAvailable")),
            json!(selector),
            json!(age),
        ];
        cells.extend(workload_wide_cells(
            obj,
            "/spec/template/spec",
            obj.pointer("/spec/selector"),
        ));
        cells
    }
}
