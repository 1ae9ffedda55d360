//! Pod: the unit the scheduler places and node agents run. Bound pods are deleted gracefully
//! (the node agent stops them and removes them); unbound ones at once.

use k8s_openapi::api::core::v1 as api;
use serde_json::{Map, Value, json};

use crate::defaults::{
    default_pod_admission, default_pod_spec, default_requests_from_limits,
    default_toleration_seconds, obj_mut, qos_class, set_default,
};
use crate::patch::ListStrategy;
use crate::registry::ResourceType;
use crate::strategy::{Admission, Requester, Strategy};
use crate::table::{
    Column, age_col, arr, col, has_condition, human_age, i, name_and_age, name_col, or_none, s,
    since,
};
use crate::validation::{
    FieldError, ShapeError, UnknownField, arr as arr_of, str_of, typed, validate_pod_spec,
};

/// `pods` (`/api/v1`).
pub static POD: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Pod",
    list_kind: "PodList",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &["status", "binding", "log", "eviction"],
    strategy: &Pod,
};

struct Pod;

impl Strategy for Pod {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Pod>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Pod>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj_mut(obj, "spec") {
            default_pod_spec(spec);
            default_pod_admission(spec);
            default_requests_from_limits(spec);
        }
        let qos = obj.get("spec").map(qos_class).unwrap_or("BestEffort");
        if let Some(status) = obj_mut(obj, "status") {
            set_default(status, "phase", json!("Pending"));
            set_default(status, "qosClass", json!(qos));
        }
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        obj.insert("status".into(), json!({"phase": "Pending"}));
    }

    fn admit_create(&self, obj: &mut Value, admission: &Admission) {
        if let Some(spec) = obj_mut(obj, "spec") {
            default_toleration_seconds(spec, admission);
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_pod_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", errs);
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        validate_pod_update(obj, old, errs);
    }

    /// A pod on a node gets the client's grace period, else its
    /// `terminationGracePeriodSeconds` (30 s by default), for the agent to stop it; a pod no
    /// node runs is deleted at once.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> i64 {
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !bound {
            return 0;
        }
        requested
            .or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0)
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &[
            "spec.nodeName",
            "spec.schedulerName",
            "spec.restartPolicy",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ]
    }

    fn watch_index(&self) -> Option<&'static str> {
        Some("spec.nodeName")
    }

    fn pod_spec_path(&self) -> Option<&'static [&'static str]> {
        Some(&["spec"])
    }

    fn list_strategy(&self, parent: &[&str], last: &str) -> Option<ListStrategy> {
        match (parent, last) {
            (["status"], "podIPs" | "hostIPs") => Some(ListStrategy::MergeByKey("ip")),
            _ => None,
        }
    }

    #[rustfmt::skip]
    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age_col(),
            col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
            col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, _) = name_and_age(obj, now);
        let mut cells = vec![name];
        cells.extend(pod_cells(obj, now));
        cells
    }
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn validate_pod_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let (Some(new_spec), Some(old_spec)) = (obj.get("spec"), old.get("spec")) else {
        return;
    };
    // Copy the mutable fields of the new spec onto the old one; anything else that differs is
    // a forbidden change.
    let mut patched = old_spec.clone();
    for list in ["containers", "initContainers"] {
        let new_list = arr_of(new_spec, list);
        if let Some(items) = patched.get_mut(list).and_then(Value::as_array_mut)
            && items.len() == new_list.len()
        {
            for (o, n) in items.iter_mut().zip(new_list) {
                if let (Some(o), Some(img)) = (o.as_object_mut(), n.get("image")) {
                    o.insert("image".into(), img.clone());
                }
            }
        }
    }
    if let Some(p) = patched.as_object_mut() {
        for key in [
            "activeDeadlineSeconds",
            "tolerations",
            "schedulingGates",
            "ephemeralContainers",
        ] {
            match new_spec.get(key) {
                Some(v) => p.insert(key.into(), v.clone()),
                None => p.remove(key),
            };
        }
        // terminationGracePeriodSeconds may go from negative to 1.
        if old_spec
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .is_some_and(|n| n < 0)
            && new_spec
                .get("terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                == Some(1)
        {
            p.insert("terminationGracePeriodSeconds".into(), json!(1));
        }
        // nodeName is set through the binding subresource; a plain update may fill it once.
        if str_of(old_spec, "nodeName").is_empty()
            && let Some(n) = new_spec.get("nodeName")
        {
            p.insert("nodeName".into(), n.clone());
        }
    }
    if &patched != new_spec {
        errs.push(FieldError::forbidden("spec", POD_UPDATE_FORBIDDEN));
    }
    // Tolerations: only additions.
    let new_tol = arr_of(new_spec, "tolerations");
    for t in arr_of(old_spec, "tolerations") {
        let kept = new_tol.iter().any(|n| {
            n == t || {
                // tolerationSeconds may only be shortened, the rest must match.
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("tolerationSeconds");
                    }
                    v
                };
                strip(n) == strip(t)
            }
        });
        if !kept {
            errs.push(FieldError::forbidden(
                "spec.tolerations",
                "existing toleration can not be modified except its tolerationSeconds",
            ));
            break;
        }
    }
}

fn pod_cells(pod: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let total = arr(pod, "/spec/containers").len();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<jiff::Timestamp> = None;
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    for c in arr(pod, "/status/conditions") {
        if s(c, "/type") == "PodScheduled" && s(c, "/reason") == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let note_restart = |c: &Value, last: &mut Option<jiff::Timestamp>| {
        if let Some(t) = crate::meta::parse_time(s(c, "/lastState/terminated/finishedAt"))
            && last.is_none_or(|l| t > l)
        {
            *last = Some(t);
        }
    };
    let init_specs = arr(pod, "/spec/initContainers");
    let mut initializing = false;
    let mut sidecar_restarts = 0;
    for (idx, c) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        restarts += i(c, "/restartCount");
        note_restart(c, &mut last_restart);
        let restartable = init_specs
            .iter()
            .any(|spec| s(spec, "/name") == s(c, "/name") && s(spec, "/restartPolicy") == "Always");
        if restartable {
            sidecar_restarts += i(c, "/restartCount");
        }
        let terminated = c.pointer("/state/terminated");
        let waiting_reason = s(c, "/state/waiting/reason");
        if terminated.is_some() && i(c, "/state/terminated/exitCode") == 0 {
            continue;
        }
        if restartable && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = s(t, "/reason");
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if i(t, "/signal") != 0 {
                format!("Init:Signal:{}", i(t, "/signal"))
            } else {
                format!("Init:ExitCode:{}", i(t, "/exitCode"))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{idx}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    if !initializing || has_condition(pod, "Initialized") {
        // Once initialised, only sidecar (restartable init) restarts count, as in kubectl.
        restarts = sidecar_restarts;
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            restarts += i(c, "/restartCount");
            note_restart(c, &mut last_restart);
            let waiting = s(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = s(t, "/reason");
                reason = if !r.is_empty() {
                    r.to_string()
                } else if i(t, "/signal") != 0 {
                    format!("Signal:{}", i(t, "/signal"))
                } else {
                    format!("ExitCode:{}", i(t, "/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let phase = s(pod, "/status/phase");
    if crate::meta::deletion_timestamp(pod).is_some() {
        if s(pod, "/status/reason") == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    let restarts_text = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_age(t, now)),
        _ => restarts.to_string(),
    };
    let age = since(
        crate::meta::creation_timestamp(pod).unwrap_or_default(),
        now,
    );
    let ip = arr(pod, "/status/podIPs")
        .first()
        .map(|p| s(p, "/ip").to_string())
        .unwrap_or_else(|| s(pod, "/status/podIP").to_string());
    let gates = arr(pod, "/spec/readinessGates");
    let gates_text = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let ok = gates
            .iter()
            .filter(|g| has_condition(pod, s(g, "/conditionType")))
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_text),
        json!(age),
        json!(or_none(&ip)),
        json!(or_none(s(pod, "/spec/nodeName"))),
        json!(or_none(s(pod, "/status/nominatedNodeName"))),
        json!(gates_text),
    ]
}
