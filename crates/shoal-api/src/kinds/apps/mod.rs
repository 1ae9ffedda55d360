//! The `apps` group (`/apis/apps/v1`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::validation::{FieldError, validate_labels, validate_pod_spec};

pub mod controllerrevision;
pub mod daemonset;
pub mod deployment;
pub mod replicaset;
pub mod statefulset;

/// Validates what ReplicaSets and Deployments share: replicas, selector matching the template
/// labels, and a pod template whose pods always restart.
fn validate_replicated(singular: &str, obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    if let Some(r) = spec.get("replicas").and_then(Value::as_i64)
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            &json!(r),
            "must be greater than or equal to 0",
        ));
    }
    for key in ["minReadySeconds", "revisionHistoryLimit"] {
        if let Some(n) = spec.get(key).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid(
                format!("spec.{key}"),
                &json!(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    let template_labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect::<BTreeMap<_, _>>()
        })
        .unwrap_or_default();
    match spec.get("selector") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.selector", "")),
        Some(sel) => match crate::selector::LabelSelector::from_value(Some(sel)) {
            Err(e) => errs.push(FieldError::invalid("spec.selector", sel, e.to_string())),
            Ok(s) if s.is_empty() => errs.push(FieldError::invalid(
                "spec.selector",
                sel,
                format!("empty selector is invalid for {}", singular),
            )),
            Ok(s) => {
                if !s.matches(&template_labels) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        spec.pointer("/template/metadata/labels")
                            .unwrap_or(&Value::Null),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    if let Some(labels) = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object)
    {
        validate_labels(labels, "spec.template.metadata.labels", errs);
    }
    match spec.pointer("/template/spec") {
        None => errs.push(FieldError::required("spec.template.spec.containers", "")),
        Some(pod_spec) => {
            validate_pod_spec(pod_spec, "spec.template.spec", errs);
            if let Some(rp) = pod_spec.get("restartPolicy")
                && rp.as_str() != Some("Always")
            {
                errs.push(FieldError::not_supported(
                    "spec.template.spec.restartPolicy",
                    rp,
                    &["Always"],
                ));
            }
        }
    }
}

/// A workload's selector never changes: the pods it owns would be orphaned.
fn validate_selector_unchanged(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    if old.pointer("/spec/selector") != spec.get("selector") {
        errs.push(FieldError::invalid(
            "spec.selector",
            spec.get("selector").unwrap_or(&Value::Null),
            "field is immutable",
        ));
    }
}
