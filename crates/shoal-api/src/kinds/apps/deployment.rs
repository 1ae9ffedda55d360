//! Deployment: rolls a template out through ReplicaSets.

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

/// `deployments` (`/apis/apps/v1`).
pub static DEPLOYMENT: ResourceType = ResourceType {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    list_kind: "DeploymentList",
    plural: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &["status", "scale"],
    strategy: &Deployment,
};

struct Deployment;

impl Strategy for Deployment {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Deployment>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Deployment>())
    }

    fn default(&self, obj: &mut Value) {
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

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_replicated(DEPLOYMENT.singular, obj, errs);
        validate_strategy(obj.get("spec").unwrap_or(&Value::Null), errs);
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
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Up-to-date", "integer", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "integer", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
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
            json!(i(obj, "/status/updatedReplicas")),
            json!(i(obj, "/status/availableReplicas")),
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

/// `spec.strategy`: Recreate without `rollingUpdate`, or RollingUpdate that can make progress.
fn validate_strategy(spec: &Value, errs: &mut Vec<FieldError>) {
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
