//! StatefulSet: pods with stable names and storage (run by `shoal_controllers::statefulset`).

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

/// `statefulsets` (`/apis/apps/v1`).
pub static STATEFUL_SET: ResourceType = ResourceType {
    group: "apps",
    version: "v1",
    kind: "StatefulSet",
    list_kind: "StatefulSetList",
    plural: "statefulsets",
    singular: "statefulset",
    namespaced: true,
    short_names: &["sts"],
    categories: &["all"],
    subresources: &["status", "scale"],
    strategy: &StatefulSet,
};

struct StatefulSet;

impl Strategy for StatefulSet {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::StatefulSet>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::StatefulSet>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                set_default(s, "type", json!("RollingUpdate"));
                if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        set_default(ru, "partition", json!(0));
                    }
                }
            }
            let retention = spec
                .entry("persistentVolumeClaimRetentionPolicy")
                .or_insert_with(|| json!({}));
            if let Some(r) = retention.as_object_mut() {
                set_default(r, "whenDeleted", json!("Retain"));
                set_default(r, "whenScaled", json!("Retain"));
            }
            default_template(spec);
        }
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_replicated(STATEFUL_SET.singular, obj, errs);
        let policy = obj.pointer("/spec/podManagementPolicy");
        if let Some(p) = policy
            && !matches!(p.as_str(), Some("OrderedReady" | "Parallel"))
        {
            errs.push(FieldError::not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        validate_selector_unchanged(obj, old, errs);
    }

    fn pod_spec_path(&self) -> Option<&'static [&'static str]> {
        Some(&["spec", "template", "spec"])
    }

    fn columns(&self) -> Vec<Column> {
        let mut c = vec![
            name_col(),
            col("Ready", "string", 0, "Number of the pod with ready state"),
            age_col(),
        ];
        c.extend(workload_wide());
        c
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let mut cells = vec![
            name,
            json!(format!(
                "{}/{}",
                i(obj, "/status/readyReplicas"),
                i(obj, "/spec/replicas")
            )),
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
