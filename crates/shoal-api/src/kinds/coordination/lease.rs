//! Lease: node heartbeats and leader election.

use k8s_openapi::api::coordination::v1 as api;
use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, age_col, col, name_and_age, name_col, s};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `leases` (`/apis/coordination.k8s.io/v1`).
pub static LEASE: ResourceType = ResourceType {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    list_kind: "LeaseList",
    plural: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    strategy: &Lease,
};

struct Lease;

impl Strategy for Lease {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Lease>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Lease>())
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        if let Some(d) = obj
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_i64)
            && d <= 0
        {
            errs.push(FieldError::invalid(
                "spec.leaseDurationSeconds",
                &json!(d),
                "must be greater than 0",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col(
                "Holder",
                "string",
                0,
                "holderIdentity contains the identity of the holder of a current lease.",
            ),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        vec![name, json!(s(obj, "/spec/holderIdentity")), json!(age)]
    }
}
