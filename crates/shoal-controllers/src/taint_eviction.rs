//! Taint eviction (kube-controller-manager's `taint-eviction-controller`, once the NoExecute
//! taint manager): deletes the pods of a node with `NoExecute` taints they do not tolerate,
//! at once, or when their `tolerationSeconds` run out.
//!
//! The clock of a toleration starts at the taint's `timeAdded` (the node lifecycle controller
//! sets it), so a restarted controller keeps the deadlines; a taint without one is timed from
//! when this controller first saw it. An evicted pod gets the `DisruptionTarget` condition
//! (`DeletionByTaintManager`) and an ordinary graceful delete: its agent stops it, or, if the
//! agent is gone, it stays terminating while its controller (which no longer counts it)
//! replaces it elsewhere. Finished pods are left alone. [`verdict`] is the decision.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use serde_json::json;
use shoal_api::taints::tolerates;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What happens to a pod on a node with `NoExecute` taints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It tolerates them for good.
    Keep,
    /// It tolerates them until then.
    EvictAt(Timestamp),
    /// It does not tolerate one of them.
    EvictNow,
}

/// Upstream's rule: each `NoExecute` taint must be tolerated (its first matching toleration
/// is the one used); the shortest `tolerationSeconds` among the used tolerations (none: for
/// ever) counts from the earliest of the taints' start times.
pub fn verdict(pod: &Pod, taints: &[(Taint, Timestamp)]) -> Verdict {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    let mut seconds: Option<i64> = None;
    let mut start: Option<Timestamp> = None;
    for (taint, added) in taints.iter().filter(|(t, _)| t.effect == "NoExecute") {
        let Some(used) = tolerations.iter().find(|t| tolerates(t, taint)) else {
            return Verdict::EvictNow;
        };
        if let Some(s) = used.toleration_seconds {
            let s = s.max(0);
            seconds = Some(seconds.map_or(s, |m| m.min(s)));
        }
        start = Some(start.map_or(*added, |m| m.min(*added)));
    }
    match (seconds, start) {
        (Some(s), Some(start)) => Verdict::EvictAt(
            start
                .checked_add(SignedDuration::from_secs(s))
                .unwrap_or(Timestamp::MAX),
        ),
        _ => Verdict::Keep,
    }
}

/// How often the controller looks when some node has `NoExecute` taints (and at most how
/// long it sleeps otherwise).
const PERIOD: Duration = Duration::from_secs(1);

/// What the controller reads and writes with.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// Every Node.
    pub nodes: Store<Node>,
    /// Every pod.
    pub pods: Store<Pod>,
    /// Events as `taint-eviction-controller`.
    pub events: shoal_events::Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    // (node, taint key) -> when a taint without `timeAdded` was first seen.
    let mut first_seen: HashMap<(String, String), Timestamp> = HashMap::new();
    // Pods deleted by this controller, until the store shows them deleted.
    let mut evicted: HashSet<String> = HashSet::new();
    loop {
        let now = Timestamp::now();
        let tainted = no_execute_taints(&ctx.nodes, &mut first_seen, now);
        let mut wake = PERIOD;
        if !tainted.is_empty() {
            let mut alive = HashSet::new();
            for pod in ctx.pods.state() {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                let Some(taints) = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .and_then(|n| tainted.get(n))
                else {
                    continue;
                };
                if !crate::pods::is_active(&pod) {
                    continue;
                }
                alive.insert(uid.clone());
                if evicted.contains(&uid) {
                    continue;
                }
                let due = match verdict(&pod, taints) {
                    Verdict::Keep => continue,
                    Verdict::EvictNow => true,
                    Verdict::EvictAt(at) if at <= now => true,
                    Verdict::EvictAt(at) => {
                        let left = Duration::try_from(at.duration_since(now)).unwrap_or(PERIOD);
                        wake = wake.min(left);
                        false
                    }
                };
                if due && evict(&ctx, &pod).await {
                    evicted.insert(uid);
                }
            }
            evicted.retain(|uid| alive.contains(uid));
        } else {
            evicted.clear();
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wake.max(Duration::from_millis(50))) => {}
        }
    }
}

/// Each node's `NoExecute` taints with their start times; forgets taints no longer there.
fn no_execute_taints(
    nodes: &Store<Node>,
    first_seen: &mut HashMap<(String, String), Timestamp>,
    now: Timestamp,
) -> HashMap<String, Vec<(Taint, Timestamp)>> {
    let mut tainted: HashMap<String, Vec<(Taint, Timestamp)>> = HashMap::new();
    let mut present = HashSet::new();
    for node in nodes.state() {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref());
        for taint in taints.unwrap_or_default() {
            if taint.effect != "NoExecute" {
                continue;
            }
            let key = (name.to_owned(), taint.key.clone());
            let added = match &taint.time_added {
                Some(t) => t.0,
                None => *first_seen.entry(key.clone()).or_insert(now),
            };
            present.insert(key);
            tainted
                .entry(name.to_owned())
                .or_default()
                .push((taint.clone(), added));
        }
    }
    first_seen.retain(|key, _| present.contains(key));
    tainted
}

/// Marks the pod as a disruption target and deletes it gracefully; true when deleted (or
/// gone already).
async fn evict(ctx: &Context, pod: &Pod) -> bool {
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return false;
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "DeletionByTaintManager",
        "message": "Taint manager: deleting due to NoExecute taint",
        "lastTransitionTime": Time(Timestamp::now()),
    }]}});
    if let Err(error) = api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(condition))
        .await
    {
        warn!(pod = %format!("{namespace}/{name}"), %error, "cannot mark pod for eviction");
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => {
            info!(pod = %format!("{namespace}/{name}"), node = ?pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), "evicted pod from a NoExecute-tainted node");
            ctx.events.normal(
                &shoal_events::reference(pod),
                "TaintManagerEviction",
                format!("Marking for deletion Pod {namespace}/{name}"),
            );
            true
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => true,
        Err(error) => {
            warn!(pod = %format!("{namespace}/{name}"), %error, "cannot evict pod, retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn pod(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"spec": {"containers": [], "tolerations": tolerations}}))
            .expect("pod")
    }

    fn taint(key: &str, effect: &str, added: &str) -> (Taint, Timestamp) {
        (
            Taint {
                key: key.into(),
                effect: effect.into(),
                ..Taint::default()
            },
            ts(added),
        )
    }

    #[test]
    fn tolerations_decide_when_a_pod_leaves() {
        let unreachable = taint(
            "node.kubernetes.io/unreachable",
            "NoExecute",
            "2026-01-01T00:00:00Z",
        );
        let default = json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 300}]);
        assert_eq!(
            verdict(&pod(default.clone()), std::slice::from_ref(&unreachable)),
            Verdict::EvictAt(ts("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            verdict(&pod(json!([])), std::slice::from_ref(&unreachable)),
            Verdict::EvictNow
        );
        // Tolerated for ever.
        assert_eq!(
            verdict(
                &pod(json!([{"operator": "Exists"}])),
                std::slice::from_ref(&unreachable)
            ),
            Verdict::Keep
        );
        // NoSchedule taints never evict.
        let soft = taint("dedicated", "NoSchedule", "2026-01-01T00:00:00Z");
        assert_eq!(verdict(&pod(json!([])), &[soft]), Verdict::Keep);
        // A second taint the pod does not tolerate evicts at once.
        let other = taint("maintenance", "NoExecute", "2026-01-01T00:01:00Z");
        assert_eq!(
            verdict(&pod(default.clone()), &[unreachable.clone(), other]),
            Verdict::EvictNow
        );
        // The shortest toleration counts from the earliest taint; negative means 0.
        let both = json!([
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": -5},
            {"key": "maintenance", "operator": "Exists", "tolerationSeconds": 60}]);
        let later = taint("maintenance", "NoExecute", "2026-01-01T00:01:00Z");
        assert_eq!(
            verdict(&pod(both), &[unreachable, later]),
            Verdict::EvictAt(ts("2026-01-01T00:00:00Z"))
        );
    }
}
