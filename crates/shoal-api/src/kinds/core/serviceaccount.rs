//! ServiceAccount: the identity pods run as.

use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};

use crate::patch::ListStrategy;
use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, age_col, arr, col, name_and_age, name_col};
use crate::validation::{ShapeError, UnknownField, typed};

/// `serviceaccounts` (`/api/v1`).
pub static SERVICE_ACCOUNT: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    list_kind: "ServiceAccountList",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    subresources: &[],
    strategy: &ServiceAccount,
};

struct ServiceAccount;

impl Strategy for ServiceAccount {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::ServiceAccount>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::ServiceAccount>())
    }

    fn list_strategy(&self, parent: &[&str], last: &str) -> Option<ListStrategy> {
        (parent.is_empty() && last == "secrets").then_some(ListStrategy::MergeByKey("name"))
    }

    #[rustfmt::skip]
    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        vec![name, json!(arr(obj, "/secrets").len()), json!(age)]
    }
}
