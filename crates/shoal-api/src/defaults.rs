//! Defaulting: the entry point that applies a kind's defaults, and the defaults shared by the
//! kinds that carry a PodSpec (Kubernetes' `SetDefaults_PodSpec`, `SetDefaults_Container` and
//! the default admission plugins' pod defaults).

use serde_json::{Map, Value, json};

use crate::quantity::parse_quantity;
use crate::registry::ResourceType;
use crate::validation::arr;

/// Fills defaults the way Kubernetes' defaulting does for `rt`'s kind (its strategy's
/// `default`), including what Kubernetes' default admission plugins add to pods (priority 0,
/// service account `default`; the tolerations of DefaultTolerationSeconds, which take the
/// cluster's settings, are [`crate::strategy::Strategy::admit_create`]'s). Idempotent; never
/// removes fields. The apiserver still owns `uid`, `resourceVersion`, `creationTimestamp` and
/// `generation`.
pub fn default_object(rt: &ResourceType, obj: &mut Value) {
    if obj.is_object() {
        rt.strategy.default(obj);
    }
}

/// The object at `key` in `v`, created empty when absent or null.
pub(crate) fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let map = v.as_object_mut()?;
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}

/// Sets `key` unless the client set it (null and, for strings, empty count as unset).
pub(crate) fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    match map.get(key) {
        None | Some(Value::Null) => {
            map.insert(key.into(), value);
        }
        Some(Value::String(s)) if s.is_empty() && value.is_string() => {
            map.insert(key.into(), value);
        }
        _ => {}
    }
}

/// Defaults the pod template under `spec.template`.
pub(crate) fn default_template(spec: &mut Map<String, Value>) {
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(pod_spec) = obj_mut(template, "spec") {
        default_pod_spec(pod_spec);
    }
}

/// Applies the schema defaults of a `PodSpec` (what Kubernetes' `SetDefaults_PodSpec`,
/// `SetDefaults_Container` and friends fill), used for pods and pod templates alike.
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    if let Some(sa) = spec.get("serviceAccount").cloned()
        && sa.as_str().is_some_and(|s| !s.is_empty())
    {
        set_default(spec, "serviceAccountName", sa);
    }
    if let Some(sa) = spec.get("serviceAccountName").cloned()
        && sa.as_str().is_some_and(|s| !s.is_empty())
    {
        set_default(spec, "serviceAccount", sa);
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                default_container(c);
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes.iter_mut().filter_map(Value::as_object_mut) {
            for source in ["configMap", "secret", "downwardAPI", "projected"] {
                if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
                    set_default(s, "defaultMode", json!(420));
                }
            }
            if let Some(s) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
                set_default(s, "type", json!(""));
            }
        }
    }
}

/// A pod's container with limits but no requests for a resource gets requests equal to the
/// limits (Kubernetes' `SetDefaults_Pod`; not applied to templates).
pub(crate) fn default_requests_from_limits(spec: &mut Map<String, Value>) {
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else {
                continue;
            };
            if limits.is_empty() {
                continue;
            }
            let requests = res.entry("requests").or_insert_with(|| json!({}));
            if requests.is_null() {
                *requests = json!({});
            }
            if let Some(requests) = requests.as_object_mut() {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
}

pub(crate) fn default_pod_admission(spec: &mut Map<String, Value>) {
    set_default(spec, "serviceAccountName", json!("default"));
    if let Some(sa) = spec.get("serviceAccountName").cloned() {
        set_default(spec, "serviceAccount", sa);
    }
    set_default(spec, "priority", json!(0));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

fn default_container(c: &mut Map<String, Value>) {
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let policy = if image_tag_is_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(c, "imagePullPolicy", json!(policy));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for e in env.iter_mut() {
            if let Some(f) = e
                .pointer_mut("/valueFrom/fieldRef")
                .and_then(Value::as_object_mut)
            {
                set_default(f, "apiVersion", json!("v1"));
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set_default(h, "path", json!("/"));
                set_default(h, "scheme", json!("HTTP"));
            }
        }
    }
}

/// Whether an image reference has no tag (and no digest) or the tag `latest`, which makes
/// Kubernetes default `imagePullPolicy` to `Always`.
pub fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// The pod's QoS class from its containers' requests and limits: `Guaranteed`, `Burstable`
/// or `BestEffort` (Kubernetes' `GetPodQOS`, for cpu and memory).
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = arr(spec, "containers")
        .iter()
        .chain(arr(spec, "initContainers"))
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let res = c.get("resources").unwrap_or(&Value::Null);
        let req = res.get("requests").and_then(Value::as_object);
        let lim = res.get("limits").and_then(Value::as_object);
        for r in ["cpu", "memory"] {
            let rq = req.and_then(|m| m.get(r)).and_then(quantity_of);
            let lm = lim.and_then(|m| m.get(r)).and_then(quantity_of);
            if rq.is_some_and(|q| q.nanos != 0) || lm.is_some_and(|q| q.nanos != 0) {
                any = true;
            }
            match (rq, lm) {
                (_, None) => guaranteed = false,
                (Some(a), Some(b)) if a != b => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn quantity_of(v: &Value) -> Option<crate::quantity::Quantity> {
    match v {
        Value::String(s) => parse_quantity(s).ok(),
        Value::Number(n) => parse_quantity(&n.to_string()).ok(),
        _ => None,
    }
}

/// Kubernetes' DefaultTolerationSeconds admission: a pod that does not tolerate the
/// `not-ready` / `unreachable` NoExecute taints gets a toleration of them for the configured
/// seconds, so its controller replaces it that long after its node fails.
pub(crate) fn default_toleration_seconds(
    spec: &mut Map<String, Value>,
    admission: &crate::strategy::Admission,
) {
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if tolerations.is_null() {
        *tolerations = json!([]);
    }
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    for (key, seconds) in [
        (
            "node.kubernetes.io/not-ready",
            admission.not_ready_toleration_seconds,
        ),
        (
            "node.kubernetes.io/unreachable",
            admission.unreachable_toleration_seconds,
        ),
    ] {
        let present = list.iter().any(|t| {
            let k = t.get("key").and_then(Value::as_str);
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or_default();
            let op = t
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or_default();
            (k == Some(key) || (k.is_none_or(str::is_empty) && op == "Exists"))
                && (effect.is_empty() || effect == "NoExecute")
        });
        if !present {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": seconds
            }));
        }
    }
}
