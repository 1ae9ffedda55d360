//! Subresources beyond status: `scale` (ReplicaSets, Deployments), `binding` (pods).

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::write::{
    Mode, apply_patch, guaranteed_update, merge_update, parse_patch, patch_type, precondition,
};
use super::{Ctx, FieldValidation, load, parse_json};
use crate::api::validation::FieldError;
use crate::error::{ApiError, json_response, success_status};
use crate::object::{meta_str, now_rfc3339};

/// `spec.selector` (a LabelSelector) in the string form `Scale.status.selector` carries.
fn selector_string(selector: Option<&Value>) -> String {
    let Some(sel) = selector else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => parts.push(format!("{key} in ({})", values.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

fn scale_of(obj: &Value) -> Value {
    let meta = obj
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut scale_meta = Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(field) {
            scale_meta.insert(field.into(), v.clone());
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(obj.pointer("/spec/selector")),
        },
    })
}

pub(super) async fn scale(
    ctx: &Ctx,
    name: &str,
    method: &Method,
    body: &[u8],
) -> Result<Response, ApiError> {
    let rt = ctx.target.rt;
    let subject = ctx.target.subject(name);
    let new_scale = |current: &Value, rev: u64, scale: Value| -> Result<Value, ApiError> {
        if let Some(expected) = precondition(&scale)?
            && expected != rev
        {
            return Err(ApiError::stale(subject.clone()));
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale",
                subject: subject.clone(),
                causes: vec![FieldError::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            });
        }
        let mut next = current.clone();
        if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("replicas".into(), json!(replicas));
        }
        // Scale changes only replicas; stray fields already stored go quietly.
        merge_update(
            rt,
            current,
            next,
            Mode::Main,
            FieldValidation::Ignore,
            &ctx.warnings,
        )
    };
    let updated = match *method {
        Method::GET => {
            let (obj, _) = load(ctx, name).await?;
            return Ok(json_response(StatusCode::OK, &scale_of(&obj)));
        }
        Method::PUT => {
            let scale = parse_json(&ctx.headers, body)?;
            guaranteed_update(ctx, name, |current, rev| {
                new_scale(current, rev, scale.clone())
            })
            .await?
        }
        Method::PATCH => {
            let kind = patch_type(&ctx.headers)?;
            let patch = parse_patch(kind, body)?;
            guaranteed_update(ctx, name, |current, rev| {
                let patched = apply_patch(rt, kind, &scale_of(current), &patch)?;
                new_scale(current, rev, patched)
            })
            .await?
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    Ok(json_response(StatusCode::OK, &scale_of(&updated)))
}

/// `pods/binding`: assigns an unassigned pod to a node.
pub(super) async fn bind(ctx: &Ctx, name: &str, binding: Value) -> Result<Response, ApiError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("binding target name is required".into()))?
        .to_string();
    let subject = ctx.target.subject(name);
    guaranteed_update(ctx, name, |current, _| {
        if meta_str(current, "deletionTimestamp").is_some() {
            return Err(ApiError::Conflict {
                subject: subject.clone(),
                message: format!("pod {name} is being deleted, cannot be assigned to a host"),
            });
        }
        if let Some(existing) = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::Conflict {
                subject: subject.clone(),
                message: format!("pod {name} is already assigned to node {existing:?}"),
            });
        }
        let mut next = current.clone();
        let map = next
            .as_object_mut()
            .ok_or_else(|| ApiError::Internal("pod is not an object".into()))?;
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("nodeName".into(), json!(node));
        }
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            let conditions = status.entry("conditions").or_insert_with(|| json!([]));
            if let Some(list) = conditions.as_array_mut() {
                list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                list.push(json!({
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": null,
                    "lastTransitionTime": now_rfc3339(),
                }));
            }
        }
        Ok(next)
    })
    .await?;
    tracing::debug!(pod = %name, node = %node, "bound pod");
    Ok(success_status(StatusCode::CREATED, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_selectors() {
        let sel = json!({
            "matchLabels": {"app": "web", "tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["a", "b"]},
                {"key": "gone", "operator": "DoesNotExist"},
            ],
        });
        assert_eq!(
            selector_string(Some(&sel)),
            "app=web,tier=front,env in (a,b),!gone"
        );
        assert_eq!(selector_string(None), "");
    }
}
