//! The StatefulSet controller: pods with stable names (`<set>-<ordinal>`), stable hostnames
//! and their own PersistentVolumeClaims, created, replaced and updated in order
//! (kube-controller-manager's `statefulset` package is the model).
//!
//! `OrderedReady` creates ordinal `i` only once `0..i` are Running and Ready, removes
//! surplus pods from the highest ordinal down one at a time, and stops at the first pod that
//! is not healthy; `Parallel` creates and removes all at once. A failed or succeeded pod is
//! deleted and made again under the same name. `RollingUpdate` replaces, from the highest
//! ordinal down to `partition`, one pod at a time, each only once the previous one is healthy
//! again; pods below the partition, and pods made again there, keep the current revision.
//! `OnDelete` makes new pods from the update revision but replaces nothing itself.
//! Templates are recorded as ControllerRevisions; a pod's `controller-revision-hash` label
//! holds its revision's name, as upstream writes it. Claims from `volumeClaimTemplates` are
//! created before their pod (`<template>-<set>-<ordinal>`) and kept by default;
//! `persistentVolumeClaimRetentionPolicy` `whenDeleted: Delete` gives new claims an owner
//! reference to the set, `whenScaled: Delete` one to the pod that is scaled away, so the
//! garbage collector removes them.
//!
//! [`plan`] is the decision as a plain function over the set, its pods and its revisions;
//! [`reconcile`] carries it out.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use serde_json::json;
use tracing::info;

use crate::Error;
use crate::history::{self, CONTROLLER_REVISION_HASH};
use crate::pods::{claim, controller_of, controller_ref, delete_pods, is_available, is_ready};
use crate::replicaset::{Expectations, finish, requeue_after_error};

/// The label with a StatefulSet pod's name (for per-pod Services).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with a StatefulSet pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal in a pod name of `set`, if the name is `<set>-<ordinal>`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let digits = pod.strip_prefix(set)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The name of the claim from template `template` for ordinal `ordinal` of `set`.
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// Which revision a pod to create is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// `status.currentRevision` (below the partition).
    Current,
    /// The update revision (the set's template now).
    Update,
}

/// What one reconcile should do for a StatefulSet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphan pods matching the selector to claim (names).
    pub adopt: Vec<String>,
    /// Owned pods that no longer match the selector, to let go (names).
    pub release: Vec<String>,
    /// Ordinals to create, with the revision each is made from.
    pub create: Vec<(i32, Which)>,
    /// Pods to delete: failed or succeeded ones to be made again.
    pub recreate: Vec<String>,
    /// Pods to delete because they are above `replicas` (their claims follow
    /// `whenScaled`).
    pub condemn: Vec<String>,
    /// Pods to delete for the rolling update.
    pub update: Vec<String>,
    /// The status the set should have.
    pub status: StatefulSetStatus,
    /// When to look again although nothing changed (a pod becomes available).
    pub requeue_after: Option<Duration>,
}

/// What [`plan`] reads besides the set.
pub struct Input<'a> {
    /// The pods of the set's namespace.
    pub pods: &'a [&'a Pod],
    /// The name of the current revision.
    pub current: &'a str,
    /// The name of the update revision.
    pub update: &'a str,
    /// Now.
    pub now: Timestamp,
    /// False while creations or deletions are not yet in the pod store: only the status.
    pub manage: bool,
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(CONTROLLER_REVISION_HASH)
        .map(String::as_str)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// Computes what to do for `set` (upstream's `updateStatefulSet`).
pub fn plan(set: &StatefulSet, input: &Input<'_>) -> Plan {
    let mut out = Plan::default();
    let spec = set.spec.as_ref();
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let uid = set.metadata.uid.as_deref().unwrap_or_default();
    let selector = spec
        .and_then(|s| shoal_api::selector::LabelSelector::from_api(&s.selector).ok())
        .filter(|s| !s.is_empty());
    let deleting = set.metadata.deletion_timestamp.is_some();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0);
    let start = spec
        .and_then(|s| s.ordinals.as_ref())
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let no_labels = BTreeMap::new();

    let mut owned: Vec<(i32, &Pod)> = Vec::new();
    for pod in input.pods {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
        let matching = selector.as_ref().is_some_and(|s| s.matches(labels));
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let mine = match controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => {
                if !matching && !deleting && pod.metadata.deletion_timestamp.is_none() {
                    out.release.push(name.to_owned());
                    false
                } else {
                    true
                }
            }
            Some(_) => false,
            None => {
                let adopt = matching && !deleting && pod.metadata.deletion_timestamp.is_none();
                if adopt {
                    out.adopt.push(name.to_owned());
                }
                adopt
            }
        };
        if mine && let Some(ordinal) = ordinal_of(set_name, name) {
            owned.push((ordinal, pod));
        }
    }
    owned.sort_by_key(|(ordinal, _)| *ordinal);

    // Status over every pod the set has.
    let healthy = |p: &Pod| {
        p.metadata.deletion_timestamp.is_none()
            && phase(p) == Some("Running")
            && is_available(p, min_ready, input.now)
    };
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(owned.iter().filter(|(_, p)| f(p)).count()).unwrap_or(i32::MAX)
    };
    let mut status = StatefulSetStatus {
        replicas: count(&|_| true),
        ready_replicas: Some(count(&|p| phase(p) == Some("Running") && is_ready(p))),
        available_replicas: Some(count(&|p| {
            phase(p) == Some("Running") && is_available(p, min_ready, input.now)
        })),
        // Terminating pods count in `replicas` but no longer for a revision (upstream).
        current_replicas: Some(count(&|p| {
            p.metadata.deletion_timestamp.is_none() && revision_of(p) == Some(input.current)
        })),
        updated_replicas: Some(count(&|p| {
            p.metadata.deletion_timestamp.is_none() && revision_of(p) == Some(input.update)
        })),
        current_revision: Some(input.current.to_owned()),
        update_revision: Some(input.update.to_owned()),
        observed_generation: set.metadata.generation,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    let update_strategy = spec.and_then(|s| s.update_strategy.as_ref());
    let rolling = update_strategy
        .and_then(|u| u.type_.as_deref())
        .unwrap_or("RollingUpdate")
        == "RollingUpdate";
    // Upstream's completeRollingUpdate.
    if rolling
        && status.updated_replicas == Some(status.replicas)
        && status.ready_replicas == Some(status.replicas)
    {
        status.current_revision = status.update_revision.clone();
        status.current_replicas = status.updated_replicas;
    }
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        out.requeue_after = Some(Duration::from_secs(1));
    }
    out.status = status;
    if !input.manage || deleting {
        return out;
    }

    let partition = if rolling {
        update_strategy
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0)
    } else {
        0
    };
    let monotonic = spec
        .and_then(|s| s.pod_management_policy.as_deref())
        .unwrap_or("OrderedReady")
        != "Parallel";
    let wanted = |ordinal: i32| ordinal >= start && ordinal - start < replicas;
    let at = |ordinal: i32| owned.iter().find(|(o, _)| *o == ordinal).map(|(_, p)| *p);
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let terminating = |p: &Pod| p.metadata.deletion_timestamp.is_some();

    for ordinal in start..start.saturating_add(replicas) {
        match at(ordinal) {
            None => {
                let which = if rolling && ordinal - start < partition {
                    Which::Current
                } else {
                    Which::Update
                };
                out.create.push((ordinal, which));
                if monotonic {
                    return out;
                }
            }
            Some(pod)
                if matches!(phase(pod), Some("Failed" | "Succeeded")) && !terminating(pod) =>
            {
                out.recreate.push(name(pod));
                if monotonic {
                    return out;
                }
            }
            Some(pod) if !healthy(pod) => {
                if monotonic {
                    return out;
                }
            }
            Some(_) => {}
        }
    }
    // Here, in OrderedReady, every wanted pod is healthy. Surplus pods go from the highest
    // ordinal down; an unhealthy one waits unless it is the lowest unhealthy surplus pod.
    let lowest_unhealthy = owned
        .iter()
        .filter(|(o, p)| !wanted(*o) && !healthy(p))
        .map(|(o, _)| *o)
        .next();
    for (ordinal, pod) in owned.iter().rev().filter(|(o, _)| !wanted(*o)) {
        if terminating(pod) {
            if monotonic {
                return out;
            }
            continue;
        }
        if monotonic && !healthy(pod) && lowest_unhealthy != Some(*ordinal) {
            return out;
        }
        out.condemn.push(name(pod));
        if monotonic {
            return out;
        }
    }
    if !rolling || !out.create.is_empty() || !out.recreate.is_empty() {
        return out;
    }
    for ordinal in (start + partition..start.saturating_add(replicas)).rev() {
        let Some(pod) = at(ordinal) else {
            return out;
        };
        if revision_of(pod) != Some(input.update) && !terminating(pod) {
            out.update.push(name(pod));
            return out;
        }
        if !healthy(pod) {
            return out;
        }
    }
    out
}

/// The pod with `ordinal` of `set`, made from `template` of revision `revision`.
pub fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let name = format!("{set_name}-{ordinal}");
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(CONTROLLER_REVISION_HASH.into(), revision.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    if let Some(service) = set
        .spec
        .as_ref()
        .and_then(|s| s.service_name.as_deref())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(service.to_owned());
    }
    let claims = set
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default();
    if !claims.is_empty() {
        let volumes = spec.volumes.get_or_insert_with(Vec::new);
        for template in claims {
            let claim = template.metadata.name.clone().unwrap_or_default();
            volumes.retain(|v| v.name != claim);
            volumes.push(Volume {
                name: claim.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&claim, set_name, ordinal),
                    read_only: None,
                }),
                ..Volume::default()
            });
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![controller_ref(
                "apps/v1",
                "StatefulSet",
                &set.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn owner_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        controller: None,
        ..controller_ref(api_version, kind, meta)
    }
}

fn retention(set: &StatefulSet) -> (bool, bool) {
    let policy = set
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    (
        delete(policy.and_then(|p| p.when_deleted.as_ref())),
        delete(policy.and_then(|p| p.when_scaled.as_ref())),
    )
}

/// The claims of ordinal `ordinal` of `set`: each template's spec, its labels plus the set's
/// `matchLabels`, and an owner reference to the set under `whenDeleted: Delete`.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let match_labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let (when_deleted, _) = retention(set);
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|template| {
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(match_labels.clone());
            let name = template.metadata.name.clone().unwrap_or_default();
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&name, set_name, ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: when_deleted
                        .then(|| vec![owner_ref("apps/v1", "StatefulSet", &set.metadata)]),
                    ..ObjectMeta::default()
                },
                spec: template.spec,
                status: None,
            }
        })
        .collect()
}

fn status_changed(old: Option<&StatefulSetStatus>, new: &StatefulSetStatus) -> bool {
    let old = old.cloned().unwrap_or_default();
    let norm = |v: Option<i32>| v.unwrap_or(0);
    old.replicas != new.replicas
        || norm(old.ready_replicas) != norm(new.ready_replicas)
        || norm(old.available_replicas) != norm(new.available_replicas)
        || norm(old.current_replicas) != norm(new.current_replicas)
        || norm(old.updated_replicas) != norm(new.updated_replicas)
        || old.current_revision != new.current_revision
        || old.update_revision != new.update_revision
        || old.observed_generation != new.observed_generation
}

/// What the StatefulSet reconciler shares across calls.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All pods.
    pub pods: Store<Pod>,
    /// All ControllerRevisions.
    pub revisions: Store<ControllerRevision>,
    /// Outstanding creations and deletions.
    pub expectations: Expectations,
    /// Events as `statefulset-controller`.
    pub events: shoal_events::Recorder,
}

/// Brings one StatefulSet's pods, claims, revisions and status in line with its spec.
pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = set.metadata.namespace.clone().unwrap_or_default();
    let name = set.metadata.name.clone().unwrap_or_default();
    let uid = set.metadata.uid.clone().unwrap_or_default();
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let template = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let owner = history::Owner {
        api_version: "apps/v1",
        kind: "StatefulSet",
        meta: &set.metadata,
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
    };
    let selector = set
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let Some(history) = history::sync_owner(
        &ctx.client,
        &ctx.revisions,
        &api,
        &owner,
        &selector,
        &template,
    )
    .await?
    else {
        return Ok(Action::requeue(Duration::from_millis(100)));
    };
    let owned = history.owned();
    let update = &history.update;
    let update_name = update.metadata.name.clone().unwrap_or_default();
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .and_then(|c| owned.iter().find(|r| r.metadata.name.as_deref() == Some(c)))
        .map_or_else(|| update.clone(), |r| (*r).clone());
    let current_name = current.metadata.name.clone().unwrap_or_default();

    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let settled = ctx.expectations.satisfied(&uid, &pods);
    let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let plan = plan(
        &set,
        &Input {
            pods: &pod_refs,
            current: &current_name,
            update: &update_name,
            now: Timestamp::now(),
            manage: settled,
        },
    );

    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let set_ref = shoal_events::reference(set.as_ref());
    claim(
        &pod_api,
        &pods,
        &plan.adopt,
        &plan.release,
        &controller_ref("apps/v1", "StatefulSet", &set.metadata),
    )
    .await?;
    let mut deleted = Vec::new();
    let mut first_error = None;
    for pod in &plan.recreate {
        ctx.events.warning(
            &set_ref,
            "RecreatingFailedPod",
            format!("StatefulSet {namespace}/{name} is recreating failed Pod {pod}"),
        );
    }
    let (_, when_scaled) = retention(&set);
    if when_scaled {
        for pod_name in &plan.condemn {
            if let Some(pod) = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(pod_name))
            {
                own_claims_by_pod(&ctx.client, &set, pod).await?;
            }
        }
    }
    let doomed: Vec<String> = plan
        .recreate
        .iter()
        .chain(&plan.condemn)
        .chain(&plan.update)
        .cloned()
        .collect();
    for (pod_name, result) in delete_pods(&pod_api, &pods, &doomed).await {
        match result {
            Ok(()) => {
                ctx.events.normal(
                    &set_ref,
                    "SuccessfulDelete",
                    format!("delete Pod {pod_name} in StatefulSet {name} successful"),
                );
                deleted.push(pod_name);
            }
            Err(error) => {
                ctx.events.warning(
                    &set_ref,
                    "FailedDelete",
                    format!("delete Pod {pod_name} in StatefulSet {name} failed error: {error}"),
                );
                first_error.get_or_insert(error);
            }
        }
    }
    let mut created = Vec::new();
    for (ordinal, which) in &plan.create {
        let (template, revision) = match which {
            Which::Update => (template.clone(), update_name.as_str()),
            Which::Current => (
                history::template_of(&current).unwrap_or_else(|| template.clone()),
                current_name.as_str(),
            ),
        };
        let pod = pod_for(&set, &template, *ordinal, revision);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        if let Err(error) = create_claims(&ctx, &set, *ordinal, &pod_name, &set_ref).await {
            first_error.get_or_insert(error);
            continue;
        }
        match pod_api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                ctx.events.normal(
                    &set_ref,
                    "SuccessfulCreate",
                    format!("create Pod {pod_name} in StatefulSet {name} successful"),
                );
                created.push(pod_name);
            }
            // Our store had not seen it yet.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(error) => {
                ctx.events.warning(
                    &set_ref,
                    "FailedCreate",
                    format!("create Pod {pod_name} in StatefulSet {name} failed error: {error}"),
                );
                first_error.get_or_insert(error);
            }
        }
    }
    if !created.is_empty() || !deleted.is_empty() {
        info!(statefulset = %name, created = ?created, deleted = ?deleted, "synced pods");
    }
    ctx.expectations.expect(&uid, created, deleted);

    // History: keep the current and update revisions, those pods run, and the limit.
    let live_names: HashSet<&str> = pods
        .iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .filter_map(|p| revision_of(p))
        .chain([current_name.as_str(), update_name.as_str()])
        .collect();
    let limit = set.spec.as_ref().and_then(|s| s.revision_history_limit);
    history::trim(&ctx.client, &namespace, &owned, &live_names, limit).await?;

    let status = status_changed(set.status.as_ref(), &plan.status).then(|| json!(plan.status));
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

/// Creates the claims of one ordinal that do not exist yet.
async fn create_claims(
    ctx: &Context,
    set: &StatefulSet,
    ordinal: i32,
    pod_name: &str,
    set_ref: &k8s_openapi::api::core::v1::ObjectReference,
) -> Result<(), kube::Error> {
    let namespace = set.metadata.namespace.as_deref().unwrap_or_default();
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    for claim in claims_for(set, ordinal) {
        let claim_name = claim.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => ctx.events.normal(
                set_ref,
                "SuccessfulCreate",
                format!(
                    "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                ),
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(error) => {
                ctx.events.warning(
                    set_ref,
                    "FailedCreate",
                    format!(
                        "create Claim {claim_name} for Pod {pod_name} in StatefulSet {set_name} failed error: {error}"
                    ),
                );
                return Err(error);
            }
        }
    }
    Ok(())
}

/// `whenScaled: Delete`: the claims of a pod scaled away get an owner reference to it, so
/// they go with it.
async fn own_claims_by_pod(
    client: &kube::Client,
    set: &StatefulSet,
    pod: &Pod,
) -> Result<(), Error> {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let Some(ordinal) = pod
        .metadata
        .name
        .as_deref()
        .and_then(|n| ordinal_of(set_name, n))
    else {
        return Ok(());
    };
    let namespace = set.metadata.namespace.as_deref().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pod_ref = owner_ref("v1", "Pod", &pod.metadata);
    for claim in claims_for(set, ordinal) {
        let claim_name = claim.metadata.name.unwrap_or_default();
        let existing = match api.get_opt(&claim_name).await? {
            Some(existing) => existing,
            None => continue,
        };
        let mut refs = existing
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default();
        if refs.iter().any(|r| r.uid == pod_ref.uid) {
            continue;
        }
        refs.push(pod_ref.clone());
        let patch = json!({"metadata": {"ownerReferences": refs,
            "resourceVersion": existing.metadata.resource_version}});
        api.patch(&claim_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(())
}

/// Requeues a failed reconcile.
pub fn error_policy(set: Arc<StatefulSet>, error: &Error, ctx: Arc<Context>) -> Action {
    requeue_after_error("statefulset", &set.metadata, error, &ctx.expectations)
}

#[cfg(test)]
mod tests;
