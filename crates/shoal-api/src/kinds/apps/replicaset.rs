//! ReplicaSet: keeps a number of pods from one template running.

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

/// `replicasets` (`/apis/apps/v1`).
pub static REPLICA_SET: ResourceType = ResourceType {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    list_kind: "ReplicaSetList",
    plural: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    categories: &["all"],
    subresources: &["status", "scale"],
    strategy: &ReplicaSet,
};

struct ReplicaSet;

impl Strategy for ReplicaSet {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::ReplicaSet>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::ReplicaSet>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "replicas", json!(1));
            default_template(spec);
        }
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_replicated(REPLICA_SET.singular, obj, errs);
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        validate_selector_unchanged(obj, old, errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.replicas"]
    }

    fn pod_spec_path(&self) -> Option<&'static [&'static str]> {
        Some(&["spec", "template", "spec"])
    }

    #[rustfmt::skip]
    fn columns(&self) -> Vec<Column> {
        let mut c = vec![
            name_col(),
            col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
            col("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
            col("Ready", "integer", 0, "readyReplicas is the number of pods targeted by this ReplicaSet with a Ready Condition."),
            age_col(),
        ];
        c.extend(workload_wide());
        c
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let mut cells = vec![
            name,
            json!(i(obj, "/spec/replicas")),
            json!(i(obj, "/status/replicas")),
            json!(i(obj, "/status/readyReplicas")),
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
