//! The ReplicaSet controller: keeps `spec.replicas` active pods from the template, owned
//! through a controller owner reference, and reports counts in the status.
//!
//! [`plan`] is the whole decision as a plain function (adopt, release, create, delete,
//! status); [`reconcile`] reads pods from a shared reflector store and carries the plan
//! out. Creations and deletions are remembered as expectations until the pod store shows
//! them, so a lagging cache never makes it create or delete twice. It does not manage pods
//! of a ReplicaSet that is being deleted (the garbage collector does).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Error;
use crate::pods::{
    claim, controller_of, controller_ref, delete_pods, is_active, is_available, is_ready,
};

/// At most this many pods are created or deleted in one reconcile (Kubernetes'
/// `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;
/// Concurrent API calls for pod creation within one reconcile.
const PARALLEL_WRITES: usize = 32;
/// How long an expectation waits for the store before it is given up.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What one reconcile should do for a ReplicaSet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphan pods matching the selector to claim (names).
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector, to let go (names).
    pub release: Vec<String>,
    /// Pods to create from the template.
    pub create: usize,
    /// Pods to delete (names), best candidates first.
    pub delete: Vec<String>,
    /// The status the ReplicaSet should have.
    pub status: ReplicaSetStatus,
    /// When to look again although nothing changed (a pod becomes available).
    pub requeue_after: Option<Duration>,
}

/// Computes what to do for `rs` given all pods of its namespace. With `manage` false
/// (pending expectations, or the ReplicaSet is being deleted) only the status is computed.
pub fn plan(rs: &ReplicaSet, pods: &[&Pod], now: Timestamp, manage: bool) -> Plan {
    let mut out = Plan::default();
    let spec = rs.spec.as_ref();
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    // An empty selector matches nothing here; an invalid one matches nothing, as in Kubernetes.
    let rs_selector = spec
        .and_then(|s| shoal_api::selector::LabelSelector::from_api(&s.selector).ok())
        .filter(|s| !s.is_empty());
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let no_labels = Default::default();
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in pods {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
        let matching = rs_selector.as_ref().is_some_and(|s| s.matches(labels));
        match controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => {
                if matching || deleting {
                    owned.push(pod);
                } else if pod.metadata.deletion_timestamp.is_none() {
                    out.release
                        .push(pod.metadata.name.clone().unwrap_or_default());
                }
            }
            Some(_) => {}
            None => {
                if matching && !deleting && pod.metadata.deletion_timestamp.is_none() {
                    out.adopt
                        .push(pod.metadata.name.clone().unwrap_or_default());
                    owned.push(pod);
                }
            }
        }
    }
    let active: Vec<&Pod> = owned.iter().copied().filter(|p| is_active(p)).collect();
    let want = usize::try_from(spec.and_then(|s| s.replicas).unwrap_or(1).max(0)).unwrap_or(0);
    if manage && !deleting {
        if active.len() < want {
            out.create = (want - active.len()).min(BURST_REPLICAS);
        } else if active.len() > want {
            let surplus = (active.len() - want).min(BURST_REPLICAS);
            out.delete = deletion_order(&active)
                .into_iter()
                .take(surplus)
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
        }
    }
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    out.status = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            let labels = p.metadata.labels.as_ref().unwrap_or(&no_labels);
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })),
        ready_replicas: Some(count(&is_ready)),
        available_replicas: Some(count(&|p| is_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    if min_ready > 0 && out.status.ready_replicas != out.status.available_replicas {
        out.requeue_after = Some(Duration::from_secs(1));
    }
    out
}

/// Active pods ordered best-to-delete first: unscheduled, then pending, then not ready,
/// then the newest; name breaks ties.
pub fn deletion_order<'a>(pods: &[&'a Pod]) -> Vec<&'a Pod> {
    let mut sorted = pods.to_vec();
    sorted.sort_by_cached_key(|p| {
        let scheduled = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let phase_rank = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Running") => 2,
            Some("Pending") | None => 0,
            _ => 1,
        };
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second());
        (
            scheduled,
            phase_rank,
            is_ready(p),
            std::cmp::Reverse(created),
            p.metadata.name.clone(),
        )
    });
    sorted
}

/// The pod a ReplicaSet creates: its template with `generateName: <rs>-`, the template's
/// labels and annotations, and a controller reference to the ReplicaSet.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                rs.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: rs.metadata.namespace.clone(),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn status_changed(old: Option<&ReplicaSetStatus>, new: &ReplicaSetStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    let norm = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || norm(old.fully_labeled_replicas) != norm(new.fully_labeled_replicas)
        || norm(old.ready_replicas) != norm(new.ready_replicas)
        || norm(old.available_replicas) != norm(new.available_replicas)
        || old.observed_generation != new.observed_generation
}

#[derive(Debug, Default)]
struct Expectation {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    deadline: Option<Instant>,
}

/// Pod creations and deletions not yet visible in the pod store, per ReplicaSet uid.
#[derive(Debug, Default)]
pub struct Expectations {
    by_uid: Mutex<HashMap<String, Expectation>>,
}

impl Expectations {
    pub(crate) fn satisfied(&self, uid: &str, pods: &[Arc<Pod>]) -> bool {
        let mut map = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        let Some(exp) = map.get_mut(uid) else {
            return true;
        };
        exp.creates.retain(|name| {
            !pods
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(name))
        });
        exp.deletes.retain(|name| {
            pods.iter().any(|p| {
                p.metadata.name.as_deref() == Some(name) && p.metadata.deletion_timestamp.is_none()
            })
        });
        let done = (exp.creates.is_empty() && exp.deletes.is_empty())
            || exp.deadline.is_some_and(|d| Instant::now() >= d);
        if done {
            map.remove(uid);
        }
        done
    }

    pub(crate) fn expect(&self, uid: &str, creates: Vec<String>, deletes: Vec<String>) {
        if creates.is_empty() && deletes.is_empty() {
            return;
        }
        let mut map = self.by_uid.lock().unwrap_or_else(|e| e.into_inner());
        let exp = map.entry(uid.to_owned()).or_default();
        exp.creates.extend(creates);
        exp.deletes.extend(deletes);
        exp.deadline = Some(Instant::now() + EXPECTATION_TIMEOUT);
    }

    /// Drops the expectations of owner `uid`.
    pub fn forget(&self, uid: &str) {
        self.by_uid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }
}

/// What the ReplicaSet reconciler shares across calls.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All pods, kept by a reflector.
    pub pods: Store<Pod>,
    /// Outstanding creations and deletions.
    pub expectations: Expectations,
    /// Events as `replicaset-controller`.
    pub events: shoal_events::Recorder,
}

/// Brings one ReplicaSet's pods and status in line with its spec.
pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let settled = ctx.expectations.satisfied(&uid, &pods);
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let plan = plan(&rs, &refs, Timestamp::now(), settled);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);

    claim(
        &pod_api,
        &pods,
        &plan.adopt,
        &plan.release,
        &controller_ref("apps/v1", "ReplicaSet", &rs.metadata),
    )
    .await?;

    let mut first_error = None;
    if plan.create > 0 {
        let template = pod_from_template(&rs);
        let params = PostParams::default();
        let results: Vec<Result<Pod, kube::Error>> = stream::iter(0..plan.create)
            .map(|_| pod_api.create(&params, &template))
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        let mut created = Vec::new();
        let rs_ref = shoal_events::reference(rs.as_ref());
        for result in results {
            match result {
                Ok(pod) => {
                    let pod_name = pod.metadata.name.unwrap_or_default();
                    ctx.events.normal(
                        &rs_ref,
                        "SuccessfulCreate",
                        format!("Created pod: {pod_name}"),
                    );
                    created.push(pod_name);
                }
                Err(error) => {
                    ctx.events
                        .warning(&rs_ref, "FailedCreate", format!("Error creating: {error}"));
                    first_error.get_or_insert(error);
                }
            }
        }
        info!(replicaset = %name, count = created.len(), "created pods");
        ctx.expectations.expect(&uid, created, Vec::new());
    }
    if !plan.delete.is_empty() {
        let results = delete_pods(&pod_api, &pods, &plan.delete).await;
        let mut deleted = Vec::new();
        let rs_ref = shoal_events::reference(rs.as_ref());
        for (pod_name, result) in results {
            match result {
                Ok(()) => {
                    ctx.events.normal(
                        &rs_ref,
                        "SuccessfulDelete",
                        format!("Deleted pod: {pod_name}"),
                    );
                    deleted.push(pod_name);
                }
                Err(error) => {
                    ctx.events.warning(
                        &rs_ref,
                        "FailedDelete",
                        format!("Error deleting pod {pod_name}: {error}"),
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        info!(replicaset = %name, count = deleted.len(), "deleted surplus pods");
        ctx.expectations.expect(&uid, Vec::new(), deleted);
    }

    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let status = status_changed(rs.status.as_ref(), &plan.status).then(|| json!(plan.status));
    finish(
        &api,
        &name,
        status,
        first_error,
        settled,
        plan.requeue_after,
    )
    .await
}

/// The end of a pod-owning controller's reconcile: writes `status` if given (an object gone
/// meanwhile is fine), then returns the first error of the pass, or looks again in 500 ms while
/// creations and deletions are not yet in the store, or after `requeue_after`, or on the next
/// change.
pub(crate) async fn finish<K>(
    api: &Api<K>,
    name: &str,
    status: Option<serde_json::Value>,
    mut first_error: Option<kube::Error>,
    settled: bool,
    requeue_after: Option<Duration>,
) -> Result<Action, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Some(status) = status {
        let patch = json!({ "status": status });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => debug!(%name, "updated status"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error.into());
    }
    if !settled {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    Ok(requeue_after.map_or_else(Action::await_change, Action::requeue))
}

/// Requeues a failed reconcile; conflicts come back quickly, other errors after a pause.
pub fn error_policy(rs: Arc<ReplicaSet>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_after_error("replicaset", &rs.metadata, error, &ctx.expectations)
}

/// The error policy of controllers that create pods: conflicts come back quickly; other
/// errors forget the owner's expectations (its next pass trusts the store) and wait 5 s.
pub(crate) fn requeue_after_error(
    kind: &str,
    owner: &ObjectMeta,
    error: &Error,
    expectations: &Expectations,
) -> Action {
    if error.is_conflict() {
        debug!(%kind, name = ?owner.name, %error, "conflict, retrying");
        return Action::requeue(Duration::from_millis(200));
    }
    if let Some(uid) = owner.uid.as_deref() {
        expectations.forget(uid);
    }
    warn!(%kind, name = ?owner.name, %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::merge;
    use serde_json::{Value, json};

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "rs-uid", "generation": 2},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "front"}},
                             "spec": {"containers": [{"name": "c", "image": "i"}]}}
            }
        }))
        .expect("rs")
    }

    fn pod(name: &str, extra: Value) -> Pod {
        let mut value = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "web", "tier": "front"},
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                    "uid": "rs-uid", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "i"}], "nodeName": "n1"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        merge(&mut value, extra);
        serde_json::from_value(value).expect("pod")
    }

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().expect("time")
    }

    #[test]
    fn creates_missing_pods_and_reports_status() {
        let a = pod("a", json!({}));
        let done = pod("b", json!({"status": {"phase": "Succeeded"}}));
        let p = plan(&rs(3), &[&a, &done], now(), true);
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty());
        assert_eq!(p.status.replicas, 1);
        assert_eq!(p.status.ready_replicas, Some(1));
        assert_eq!(p.status.available_replicas, Some(1));
        assert_eq!(p.status.fully_labeled_replicas, Some(1));
        assert_eq!(p.status.observed_generation, Some(2));
        let waiting = plan(&rs(3), &[&a], now(), false);
        assert_eq!(waiting.create, 0);
    }

    #[test]
    fn deletes_surplus_unscheduled_then_unready_then_newest() {
        let old = pod("old", json!({}));
        let new = pod(
            "new",
            json!({"metadata": {"creationTimestamp": "2026-01-01T00:30:00Z"}}),
        );
        let unready = pod(
            "unready",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        let unscheduled = pod(
            "unscheduled",
            json!({"spec": {"nodeName": null}, "status": {"phase": "Pending", "conditions": []}}),
        );
        let p = plan(&rs(1), &[&old, &new, &unready, &unscheduled], now(), true);
        assert_eq!(p.delete, ["unscheduled", "unready", "new"]);
        let p = plan(&rs(2), &[&old, &new], now(), true);
        assert_eq!(p.delete, Vec::<String>::new());
        assert_eq!(p.create, 0);
    }

    #[test]
    fn adopts_orphans_and_releases_mismatches() {
        let orphan = pod("orphan", json!({"metadata": {"ownerReferences": null}}));
        let stray = pod("stray", json!({"metadata": {"labels": {"app": "other"}}}));
        let foreign = pod(
            "foreign",
            json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "ReplicaSet", "name": "x", "uid": "other", "controller": true}]}}),
        );
        let p = plan(&rs(1), &[&orphan, &stray, &foreign], now(), true);
        assert_eq!(p.adopt, ["orphan"]);
        assert_eq!(p.release, ["stray"]);
        assert_eq!(p.create, 0);
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn empty_or_invalid_selector_matches_nothing() {
        let owned = pod("owned", json!({}));
        let orphan = pod("orphan", json!({"metadata": {"ownerReferences": null}}));
        for selector in [
            json!({}),
            json!({"matchExpressions": [{"key": "app", "operator": "Bogus", "values": ["web"]}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": []}]}),
        ] {
            let mut set = rs(1);
            if let Some(spec) = set.spec.as_mut() {
                spec.selector = serde_json::from_value(selector).expect("selector");
            }
            let p = plan(&set, &[&owned, &orphan], now(), true);
            assert!(p.adopt.is_empty(), "{:?}", set.spec);
            assert_eq!(p.release, ["owned"]);
        }
    }

    #[test]
    fn available_waits_for_min_ready_seconds() {
        let mut set = rs(1);
        if let Some(spec) = set.spec.as_mut() {
            spec.min_ready_seconds = Some(60);
        }
        let recent = pod(
            "a",
            json!({"status": {"conditions": [{"type": "Ready", "status": "True",
            "lastTransitionTime": "2026-01-01T00:59:30Z"}]}}),
        );
        let p = plan(&set, &[&recent], now(), true);
        assert_eq!(p.status.ready_replicas, Some(1));
        assert_eq!(p.status.available_replicas, Some(0));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn deleting_replicaset_is_left_alone() {
        let mut set = rs(3);
        set.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
        let orphan = pod("orphan", json!({"metadata": {"ownerReferences": null}}));
        let p = plan(&set, &[&orphan], now(), true);
        assert_eq!((p.create, p.adopt.len()), (0, 0));
    }

    #[test]
    fn template_becomes_a_pod() {
        let pod = pod_from_template(&rs(1));
        expect_test::expect![[r#"{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-1-","labels":{"app":"web","tier":"front"},"namespace":"default","ownerReferences":[{"apiVersion":"apps/v1","blockOwnerDeletion":true,"controller":true,"kind":"ReplicaSet","name":"web-1","uid":"rs-uid"}]},"spec":{"containers":[{"image":"i","name":"c"}]}}"#]]
            .assert_eq(&serde_json::to_string(&pod).expect("json"));
    }
}
