//! The disruption controller: the status of every PodDisruptionBudget (kube-controller-manager's
//! `disruption` package), which the scheduler's preemption and `kubectl get pdb` read.
//!
//! A budget covers the pods of its namespace its selector matches (policy/v1: an empty
//! selector covers all of them, none covers none). `minAvailable` as a number wants that many
//! healthy pods out of the pods covered; `maxUnavailable`, or `minAvailable` as a percentage,
//! is taken of the expected scale: the replicas of the controllers owning the covered pods
//! (a ReplicaSet's Deployment, else the ReplicaSet; a StatefulSet), so a budget is judged
//! against what should run, not what happens to run. A covered pod whose controller has no
//! scale fails the sync (`SyncFailed`, no disruption allowed), as upstream. Healthy means
//! Ready, not being deleted, and not in `disruptedPods` (evictions not yet visible, which
//! expire after two minutes). `disruptionsAllowed = currentHealthy - desiredHealthy`, at
//! least 0, with the `DisruptionAllowed` condition.
//!
//! [`plan`] is the decision as a plain function; [`reconcile`] writes the status guarded by
//! the budget's resourceVersion, so it never overwrites an eviction's claim.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tracing::{debug, warn};

use crate::Error;
use crate::informer::Change;
use crate::pods::{controller_of, is_ready};

/// How long an eviction's entry in `disruptedPods` holds the pod out of the healthy count.
pub const DISRUPTED_POD_TIMEOUT: Duration = Duration::from_secs(120);

/// The condition this controller writes.
pub const DISRUPTION_ALLOWED: &str = "DisruptionAllowed";

/// A controller's identity and desired replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    /// The controller's uid (several pods of one controller count it once).
    pub uid: String,
    /// Its desired replicas.
    pub replicas: i32,
}

/// What the plan needs to know about a pod's controller: its scale, `None` for a pod without
/// a controller (ignored, as upstream), or why it has none.
pub type ScaleOf<'a> = dyn Fn(&Pod) -> Result<Option<Scale>, String> + 'a;

/// Whether the budget covers `pod`.
pub fn covers(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    if pod.metadata.namespace != pdb.metadata.namespace {
        return false;
    }
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    let no_labels = BTreeMap::new();
    shoal_api::selector::LabelSelector::from_api(selector)
        .is_ok_and(|s| s.matches(pod.metadata.labels.as_ref().unwrap_or(&no_labels)))
}

fn scaled(value: &IntOrString, total: i32) -> Result<i32, String> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map(|p| i32::try_from((p * i64::from(total) + 99) / 100).unwrap_or(i32::MAX))
            .ok_or_else(|| format!("invalid value for IntOrString: {s:?}")),
    }
}

fn expected_scale(pods: &[&Pod], scale_of: &ScaleOf<'_>) -> Result<i32, String> {
    let mut controllers: HashMap<String, i32> = HashMap::new();
    for pod in pods {
        if let Some(scale) = scale_of(pod)? {
            controllers.insert(scale.uid, scale.replicas);
        }
    }
    Ok(controllers.values().copied().map(|r| r.max(0)).sum())
}

/// The budget's new status (and when to look again for an expiring `disruptedPods` entry),
/// given the pods of its namespace.
pub fn plan(
    pdb: &PodDisruptionBudget,
    pods: &[&Pod],
    scale_of: &ScaleOf<'_>,
    now: Timestamp,
) -> (PodDisruptionBudgetStatus, Option<Duration>) {
    let covered: Vec<&Pod> = pods.iter().copied().filter(|p| covers(pdb, p)).collect();
    let spec = pdb.spec.as_ref();
    let counts: Result<(i32, i32), String> = match (
        spec.and_then(|s| s.max_unavailable.as_ref()),
        spec.and_then(|s| s.min_available.as_ref()),
    ) {
        (Some(max), _) => expected_scale(&covered, scale_of).and_then(|expected| {
            let unavailable = scaled(max, expected)?;
            Ok((expected, (expected - unavailable).max(0)))
        }),
        (None, Some(IntOrString::Int(min))) => {
            Ok((i32::try_from(covered.len()).unwrap_or(i32::MAX), *min))
        }
        (None, Some(min)) => expected_scale(&covered, scale_of)
            .and_then(|expected| Ok((expected, scaled(min, expected)?))),
        // Neither: nothing expected, so nothing may be disrupted (upstream).
        (None, None) => Ok((0, 0)),
    };

    // Evictions still in flight: kept while the pod is there, not deleted, and young.
    let old = pdb.status.clone().unwrap_or_default();
    let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
    let mut recheck: Option<Duration> = None;
    for (name, since) in old.disrupted_pods.iter().flatten() {
        let present = covered.iter().any(|p| {
            p.metadata.name.as_deref() == Some(name) && p.metadata.deletion_timestamp.is_none()
        });
        let age = now.as_second() - since.0.as_second();
        let timeout = i64::try_from(DISRUPTED_POD_TIMEOUT.as_secs()).unwrap_or(i64::MAX);
        if present && age < timeout {
            let left = Duration::from_secs(u64::try_from(timeout - age).unwrap_or(0));
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
            disrupted.insert(name.clone(), since.clone());
        }
    }
    let healthy = covered
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !p
                    .metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| disrupted.contains_key(n))
                && is_ready(p)
        })
        .count();
    let healthy = i32::try_from(healthy).unwrap_or(i32::MAX);

    let (expected, desired, allowed, condition) = match counts {
        Ok((expected, desired)) => {
            let allowed = if expected <= 0 {
                0
            } else {
                (healthy - desired).max(0)
            };
            let condition = if allowed > 0 {
                ("True", "SufficientPods", String::new())
            } else {
                ("False", "InsufficientPods", String::new())
            };
            (expected, desired, allowed, condition)
        }
        // Upstream's failSafe: the last known counts stay, nothing may be disrupted.
        Err(message) => (
            old.expected_pods,
            old.desired_healthy,
            0,
            ("False", "SyncFailed", message),
        ),
    };
    let (status, reason, message) = condition;
    let previous = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == DISRUPTION_ALLOWED);
    let transition = previous
        .filter(|c| c.status == status)
        .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
    let status = PodDisruptionBudgetStatus {
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        observed_generation: pdb.metadata.generation,
        conditions: Some(vec![Condition {
            type_: DISRUPTION_ALLOWED.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: transition,
            observed_generation: pdb.metadata.generation,
        }]),
    };
    (status, recheck)
}

/// What the reconciler reads.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All pods.
    pub pods: Store<Pod>,
    /// All ReplicaSets.
    pub replicasets: Store<ReplicaSet>,
    /// All Deployments.
    pub deployments: Store<Deployment>,
    /// All StatefulSets.
    pub statefulsets: Store<StatefulSet>,
}

impl Context {
    /// The scale behind `pod`, from the stores (upstream's finders, without
    /// ReplicationControllers and custom scale subresources).
    fn scale_of(&self, pod: &Pod) -> Result<Option<Scale>, String> {
        let Some(owner) = controller_of(&pod.metadata) else {
            return Ok(None);
        };
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let missing = || {
            format!(
                "found no controllers for pod {:?}",
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        };
        match (owner.api_version.as_str(), owner.kind.as_str()) {
            ("apps/v1", "ReplicaSet") => {
                let rs = self
                    .replicasets
                    .get(&ObjectRef::new(&owner.name).within(namespace))
                    .filter(|rs| rs.metadata.uid.as_deref() == Some(owner.uid.as_str()))
                    .ok_or_else(missing)?;
                if let Some(parent) = controller_of(&rs.metadata)
                    .filter(|p| p.kind == "Deployment" && p.api_version == "apps/v1")
                {
                    let deployment = self
                        .deployments
                        .get(&ObjectRef::new(&parent.name).within(namespace))
                        .filter(|d| d.metadata.uid.as_deref() == Some(parent.uid.as_str()))
                        .ok_or_else(missing)?;
                    return Ok(Some(Scale {
                        uid: parent.uid.clone(),
                        replicas: deployment
                            .spec
                            .as_ref()
                            .and_then(|s| s.replicas)
                            .unwrap_or(1),
                    }));
                }
                Ok(Some(Scale {
                    uid: owner.uid.clone(),
                    replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                }))
            }
            ("apps/v1", "StatefulSet") => {
                let set = self
                    .statefulsets
                    .get(&ObjectRef::new(&owner.name).within(namespace))
                    .filter(|s| s.metadata.uid.as_deref() == Some(owner.uid.as_str()))
                    .ok_or_else(missing)?;
                Ok(Some(Scale {
                    uid: owner.uid.clone(),
                    replicas: set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                }))
            }
            _ => Err(missing()),
        }
    }
}

fn same(old: Option<&PodDisruptionBudgetStatus>, new: &PodDisruptionBudgetStatus) -> bool {
    old.is_some_and(|old| old == new)
}

/// Writes one budget's status.
pub async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = pdb.metadata.namespace.clone().unwrap_or_default();
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let pods = ctx
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let scale_of = |pod: &Pod| ctx.scale_of(pod);
    let (status, recheck) = plan(&pdb, &refs, &scale_of, Timestamp::now());
    if !same(pdb.status.as_ref(), &status) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &namespace);
        let mut body = json!(status);
        // An emptied map must be cleared, which a merge patch does only with null.
        if status.disrupted_pods.is_none() {
            body["disruptedPods"] = serde_json::Value::Null;
        }
        let patch = json!({"metadata": {"resourceVersion": pdb.metadata.resource_version},
            "status": body});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => debug!(pdb = %name, allowed = status.disruptions_allowed, "updated status"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Scale changes show up as pod changes, but a budget over pods whose controller changed
    // replicas without any pod changing yet is looked at again soon.
    let resync = Duration::from_secs(30);
    Ok(Action::requeue(recheck.map_or(resync, |r| r.min(resync))))
}

/// Conflicts (an eviction claimed the budget) come back quickly, other errors after 5 s.
pub fn error_policy(pdb: Arc<PodDisruptionBudget>, error: &Error, _: Arc<Context>) -> Action {
    if error.is_conflict() {
        return Action::requeue(Duration::from_millis(100));
    }
    warn!(pdb = ?pdb.metadata.name, %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// A pod change triggers the budgets covering the pod.
pub fn trigger_budgets(
    budgets: Store<PodDisruptionBudget>,
) -> impl FnMut(Change<Pod>) -> Vec<Result<ObjectRef<PodDisruptionBudget>, Infallible>> {
    move |change| {
        let (Change::Applied(pod) | Change::Deleted(pod)) = change else {
            return Vec::new();
        };
        budgets
            .state()
            .iter()
            .filter(|pdb| covers(pdb, &pod))
            .map(|pdb| Ok(ObjectRef::from_obj(pdb.as_ref())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pdb(spec: Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": "b", "namespace": "ns", "generation": 2},
            "spec": spec,
        }))
        .expect("pdb")
    }

    fn pod(name: &str, ready: bool, owner: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "a"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": owner, "uid": owner, "controller": true}]},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .expect("pod")
    }

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().expect("time")
    }

    fn scale_five(pod: &Pod) -> Result<Option<Scale>, String> {
        Ok(controller_of(&pod.metadata).map(|o| Scale {
            uid: o.uid.clone(),
            replicas: 5,
        }))
    }

    #[test]
    fn min_available_counts_covered_pods() {
        let pods = [
            pod("p1", true, "rs"),
            pod("p2", true, "rs"),
            pod("p3", false, "rs"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let budget = pdb(json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "a"}}}));
        let (status, _) = plan(&budget, &refs, &scale_five, now());
        assert_eq!(
            (
                status.expected_pods,
                status.current_healthy,
                status.desired_healthy,
                status.disruptions_allowed
            ),
            (3, 2, 1, 1)
        );
        let condition = &status.conditions.as_ref().expect("conditions")[0];
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "SufficientPods")
        );
        assert_eq!(status.observed_generation, Some(2));
        // No selector covers nothing; an empty one covers the namespace.
        let none = pdb(json!({"minAvailable": 1}));
        assert_eq!(plan(&none, &refs, &scale_five, now()).0.expected_pods, 0);
        let all = pdb(json!({"minAvailable": 1, "selector": {}}));
        assert_eq!(plan(&all, &refs, &scale_five, now()).0.expected_pods, 3);
    }

    #[test]
    fn max_unavailable_and_percentages_use_the_controllers_scale() {
        let pods = [
            pod("p1", true, "rs"),
            pod("p2", true, "rs"),
            pod("p3", true, "rs"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        // Scale 5 (two missing): 5 - 1 = 4 must be healthy; 3 are: nothing may go.
        let budget = pdb(json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "a"}}}));
        let (status, _) = plan(&budget, &refs, &scale_five, now());
        assert_eq!(
            (
                status.expected_pods,
                status.desired_healthy,
                status.disruptions_allowed
            ),
            (5, 4, 0)
        );
        assert_eq!(
            status.conditions.as_ref().expect("c")[0].reason,
            "InsufficientPods"
        );
        let budget = pdb(json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "a"}}}));
        let (status, _) = plan(&budget, &refs, &scale_five, now());
        assert_eq!((status.desired_healthy, status.disruptions_allowed), (3, 0));
        // A pod whose controller has no scale: the sync fails, nothing may go.
        let no_scale = |_: &Pod| -> Result<Option<Scale>, String> {
            Err("found no controllers for pod \"p1\"".into())
        };
        let (status, _) = plan(&budget, &refs, &no_scale, now());
        let condition = &status.conditions.as_ref().expect("c")[0];
        assert_eq!(
            (condition.reason.as_str(), status.disruptions_allowed),
            ("SyncFailed", 0)
        );
        assert!(condition.message.contains("p1"));
    }

    #[test]
    fn disrupted_pods_are_not_healthy_until_they_expire() {
        let pods = [pod("p1", true, "rs"), pod("p2", true, "rs")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut budget = pdb(json!({"minAvailable": 1, "selector": {"matchLabels": {"app": "a"}}}));
        budget.status = Some(
            serde_json::from_value(json!({
            "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2, "disruptionsAllowed": 0,
            "disruptedPods": {"p1": "2026-01-01T00:59:30Z", "gone": "2026-01-01T00:59:30Z"}}))
            .expect("status"),
        );
        let (status, recheck) = plan(&budget, &refs, &scale_five, now());
        assert_eq!((status.current_healthy, status.disruptions_allowed), (1, 0));
        assert_eq!(
            status
                .disrupted_pods
                .as_ref()
                .map(|d| d.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["p1".to_owned()])
        );
        assert_eq!(recheck, Some(Duration::from_secs(90)));
        let later: Timestamp = "2026-01-01T01:02:00Z".parse().expect("time");
        let (status, recheck) = plan(&budget, &refs, &scale_five, later);
        assert_eq!(
            (status.current_healthy, status.disrupted_pods, recheck),
            (2, None, None)
        );
    }
}
