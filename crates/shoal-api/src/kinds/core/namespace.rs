//! Namespace: cluster-scoped, named as a DNS-1123 label, deleted through termination (the
//! `kubernetes` finalizer empties it first).

use k8s_openapi::api::core::v1 as api;
use serde_json::{Map, Value, json};

use crate::defaults::{obj_mut, set_default};
use crate::registry::ResourceType;
use crate::strategy::{NameFormat, Requester, Strategy};
use crate::table::{Column, age_col, col, name_and_age, name_col, s};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `namespaces` (`/api/v1`).
pub static NAMESPACE: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Namespace",
    list_kind: "NamespaceList",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &["status", "finalize"],
    strategy: &Namespace,
};

struct Namespace;

impl Strategy for Namespace {
    fn name_format(&self) -> NameFormat {
        NameFormat::Label
    }

    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Namespace>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Namespace>())
    }

    fn default(&self, obj: &mut Value) {
        let name = crate::meta::name(obj).map(str::to_string);
        if let Some(name) = name {
            crate::meta::set_label(obj, "kubernetes.io/metadata.name", Some(&name));
        }
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "finalizers", json!(["kubernetes"]));
        }
        if let Some(status) = obj_mut(obj, "status") {
            set_default(status, "phase", json!("Active"));
        }
    }

    /// As upstream: every new Namespace holds the `kubernetes` finalizer, so its content
    /// is always removed before it goes.
    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        obj.insert("status".into(), json!({"phase": "Active"}));
        let spec = obj.entry("spec").or_insert_with(|| json!({}));
        if !spec.is_object() {
            *spec = json!({});
        }
        if let Some(spec) = spec.as_object_mut() {
            let finalizers = spec.entry("finalizers").or_insert_with(|| json!([]));
            if !finalizers.is_array() {
                *finalizers = json!([]);
            }
            if let Some(list) = finalizers.as_array_mut()
                && !list.iter().any(|f| f == "kubernetes")
            {
                list.push(json!("kubernetes"));
            }
        }
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        if let Some(ts) = old.pointer("/metadata/deletionTimestamp")
            && obj.pointer("/metadata/deletionTimestamp") != Some(ts)
        {
            errs.push(FieldError::forbidden(
                "metadata.deletionTimestamp",
                "field is immutable",
            ));
        }
    }

    fn deleted_by_termination(&self) -> bool {
        true
    }

    /// `spec.finalizers` changes only through the `finalize` subresource.
    fn prepare_for_update(&self, obj: &mut Value, old: &Value) {
        let finalizers = old.pointer("/spec/finalizers").cloned();
        if let Some(spec) = obj_mut(obj, "spec") {
            match finalizers {
                Some(f) => spec.insert("finalizers".into(), f),
                None => spec.remove("finalizers"),
            };
        }
    }

    /// The namespace controller removes `kubernetes` from `spec.finalizers` once the
    /// namespace is empty; until then the Namespace stays.
    fn deletion_held(&self, obj: &Value) -> bool {
        obj.pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty())
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.phase"]
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Status", "string", 0, "The status of the namespace"),
            age_col(),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        vec![name, json!(s(obj, "/status/phase")), json!(age)]
    }
}
