//! Subresources beyond status: `scale` (ReplicaSets, Deployments, StatefulSets, custom
//! resources at their CRD's paths), `binding` and `eviction` (pods).

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::write::{
    Mode, apply_patch, guaranteed_update, merge_update, parse_patch, patch_type, precondition,
};
use super::{Ctx, DeleteOptions, FieldValidation, delete, load, parse_json};
use crate::api::kinds::core::pod::POD;
use crate::api::kinds::policy::POD_DISRUPTION_BUDGET;
use crate::api::registry::ResourceType;
use crate::api::selector::LabelSelector;
use crate::api::validation::FieldError;
use crate::error::{ApiError, json_response, success_status};
use crate::object::{self, decode, encode, labels, meta_str, now_rfc3339};
use shoal_store::StoreError;

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

/// Sets the value at JSON pointer `pointer`, creating the objects on the way.
fn set_at(obj: &mut Value, pointer: &str, value: Value) {
    let mut at = obj;
    let mut segs = pointer.split('/').skip(1).peekable();
    while let Some(seg) = segs.next() {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        let Some(map) = at.as_object_mut() else {
            return;
        };
        if segs.peek().is_none() {
            map.insert(seg.to_string(), value);
            return;
        }
        at = map.entry(seg).or_insert_with(|| json!({}));
    }
}

/// The `Scale` of `obj`: from `spec.replicas`, `status.replicas` and `spec.selector`, or from
/// the paths a custom resource's definition names.
fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
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
    let (spec_replicas, status_replicas, selector) = match rt.strategy.scale_paths() {
        Some(paths) => (
            obj.pointer(&paths.spec_replicas)
                .and_then(Value::as_i64)
                .unwrap_or(0),
            obj.pointer(&paths.status_replicas)
                .and_then(Value::as_i64)
                .unwrap_or(0),
            paths
                .selector
                .and_then(|p| obj.pointer(&p).and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default(),
        ),
        None => (
            obj.pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1),
            obj.pointer("/status/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            selector_string(obj.pointer("/spec/selector")),
        ),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": scale_meta,
        "spec": {"replicas": spec_replicas},
        "status": {
            "replicas": status_replicas,
            "selector": selector,
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
        match rt.strategy.scale_paths() {
            Some(paths) => set_at(&mut next, &paths.spec_replicas, json!(replicas)),
            None => {
                if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("replicas".into(), json!(replicas));
                }
            }
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
            return Ok(json_response(StatusCode::OK, &scale_of(rt, &obj)));
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
                let patched = apply_patch(rt, kind, &scale_of(rt, current), &patch)?;
                new_scale(current, rev, patched)
            })
            .await?
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    Ok(json_response(StatusCode::OK, &scale_of(rt, &updated)))
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

    #[test]
    fn budgets_count_ready_live_pods() {
        let pod = |ready: bool, phase: &str| {
            json!({"metadata": {"name": "p"}, "status": {"phase": phase,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        let pods = [
            pod(true, "Running"),
            pod(true, "Running"),
            pod(false, "Running"),
            pod(true, "Succeeded"),
        ];
        let refs: Vec<&Value> = pods.iter().collect();
        let budget = |spec: Value| Budget::of(&json!({"spec": spec}), &refs);
        let min2 = budget(json!({"minAvailable": 2}));
        assert_eq!(
            (min2.expected, min2.healthy, min2.desired, min2.allowed()),
            (3, 2, 2, 0)
        );
        let half = budget(json!({"minAvailable": "50%"}));
        assert_eq!((half.desired, half.allowed()), (2, 0));
        let max1 = budget(json!({"maxUnavailable": 1}));
        assert_eq!((max1.desired, max1.allowed()), (2, 0));
        let max_pct = budget(json!({"maxUnavailable": "100%"}));
        assert_eq!((max_pct.desired, max_pct.allowed()), (0, 2));
        assert_eq!(budget(json!({})).desired, 1);
    }
}

/// A PodDisruptionBudget's verdict on evicting one pod.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Budget {
    /// Pods the budget covers that are not being deleted or finished.
    pub expected: i64,
    /// Of those, the Ready ones.
    pub healthy: i64,
    /// How many must stay Ready.
    pub desired: i64,
}

impl Budget {
    /// What `pdb` says, given the pods it covers.
    pub(super) fn of(pdb: &Value, pods: &[&Value]) -> Budget {
        let live: Vec<&&Value> = pods
            .iter()
            .filter(|p| meta_str(p, "deletionTimestamp").is_none() && !finished(p))
            .collect();
        let expected = live.len() as i64;
        let healthy = live.iter().filter(|p| ready(p)).count() as i64;
        let scaled = |v: &Value, round_up: bool| -> i64 {
            match v {
                Value::Number(n) => n.as_i64().unwrap_or(0),
                Value::String(s) => {
                    let pct = s.trim_end_matches('%').parse::<i64>().unwrap_or(0);
                    let num = pct * expected;
                    if round_up {
                        (num + 99) / 100
                    } else {
                        num / 100
                    }
                }
                _ => 0,
            }
        };
        let spec = pdb.get("spec").unwrap_or(&Value::Null);
        let desired = match (spec.get("minAvailable"), spec.get("maxUnavailable")) {
            (Some(min), _) if !min.is_null() => scaled(min, true),
            (_, Some(max)) if !max.is_null() => (expected - scaled(max, true)).max(0),
            // Neither: as policy/v1beta1's default, at least one must stay.
            _ => 1,
        };
        Budget {
            expected,
            healthy,
            desired,
        }
    }

    /// Disruptions allowed now.
    pub(super) fn allowed(&self) -> i64 {
        (self.healthy - self.desired).max(0)
    }
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// `pods/eviction`: deletes the pod unless the PodDisruptionBudget covering it allows no
/// disruption now (429, as upstream's eviction). The budget is computed from the pods it
/// selects and claimed with a compare-and-swap of its status (`disruptionsAllowed` one
/// lower), so two concurrent evictions cannot both spend the last disruption. A pod already
/// being deleted or finished, or one no budget covers, is deleted as asked.
pub(super) async fn evict(ctx: &Ctx, name: &str, eviction: &Value) -> Result<Response, ApiError> {
    let options = eviction
        .get("deleteOptions")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let options = DeleteOptions::from_value(&options, &ctx.params)?;
    let (pod, _) = load(ctx, name).await?;
    if meta_str(&pod, "deletionTimestamp").is_none() && !finished(&pod) {
        guard_budget(ctx, name, &pod).await?;
    }
    delete(ctx, name, &options).await?;
    Ok(success_status(StatusCode::CREATED, None))
}

async fn guard_budget(ctx: &Ctx, name: &str, pod: &Value) -> Result<(), ApiError> {
    let store = ctx.state.store();
    let ns = ctx.target.namespace.as_deref().unwrap_or("default");
    let pod_labels = labels(pod);
    let budgets = store
        .list(&format!("{}{ns}/", POD_DISRUPTION_BUDGET.storage_prefix()))
        .await?;
    let mut covering = Vec::new();
    for kv in &budgets.items {
        let pdb = decode(kv)?;
        // policy/v1: an empty selector covers every pod of the namespace; none covers none.
        let selects = match pdb.pointer("/spec/selector") {
            None | Some(Value::Null) => false,
            Some(sel) => LabelSelector::from_value(Some(sel)).is_ok_and(|s| s.matches(&pod_labels)),
        };
        if selects {
            covering.push((kv.key.clone(), kv.mod_revision, pdb));
        }
    }
    let (key, revision, mut pdb) = match covering.len() {
        0 => return Ok(()),
        1 => covering.remove(0),
        _ => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ));
        }
    };
    let selector = LabelSelector::from_value(pdb.pointer("/spec/selector"))
        .map_err(|e| ApiError::Internal(format!("budget selector: {e}")))?;
    let pods = store
        .list(&format!("{}{ns}/", POD.storage_prefix()))
        .await?;
    let decoded = pods
        .items
        .iter()
        .map(decode)
        .collect::<Result<Vec<Value>, ApiError>>()?;
    let covered: Vec<&Value> = decoded
        .iter()
        .filter(|p| selector.matches(&labels(p)))
        .collect();
    let budget = Budget::of(&pdb, &covered);
    let pdb_name = object::name(&pdb).to_string();
    // An unready pod may go while the budget is otherwise met (upstream's IfHealthyBudget).
    let allowed = if ready(pod) {
        budget.allowed() >= 1
    } else {
        budget.healthy >= budget.desired
    };
    if !allowed {
        return Err(ApiError::TooManyRequests {
            message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            cause: format!(
                "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                budget.desired, budget.healthy
            ),
        });
    }
    if ctx.params.dry_run() {
        return Ok(());
    }
    let spent = if ready(pod) { 1 } else { 0 };
    if let Some(map) = pdb.as_object_mut() {
        let status = map.entry("status").or_insert_with(|| json!({}));
        if let Some(status) = status.as_object_mut() {
            status.insert("disruptionsAllowed".into(), json!(budget.allowed() - spent));
            status.insert("currentHealthy".into(), json!(budget.healthy - spent));
            status.insert("desiredHealthy".into(), json!(budget.desired));
            status.insert("expectedPods".into(), json!(budget.expected));
        }
    }
    match store.update(&key, encode(&mut pdb), Some(revision)).await {
        Ok(_) => Ok(()),
        // Another eviction spent the budget first: the client tries again.
        Err(StoreError::Conflict { .. }) => Err(ApiError::TooManyRequests {
            message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            cause: format!("The disruption budget {pdb_name} is being updated; try again ({name})"),
        }),
        Err(e) => Err(e.into()),
    }
}
