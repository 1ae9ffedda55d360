//! The Deployment controller: one ReplicaSet per pod template, rolled out by the
//! strategy, with the status `kubectl rollout status` reads.
//!
//! [`plan`] is the decision as a plain function over the Deployment and its namespace's
//! ReplicaSets: which ReplicaSets to adopt or release, the new ReplicaSet to create, the
//! replica counts and annotations to set, old ReplicaSets to delete beyond
//! `revisionHistoryLimit`, and the status. It follows Kubernetes' rolling-update math
//! (`maxSurge` rounds up, `maxUnavailable` down) and Recreate (old to zero, then new up).
//! A change of `replicas` while several ReplicaSets are active is a scaling event: the sets
//! are scaled in proportion (upstream's `scale`), nothing rolls in that pass; a paused
//! Deployment is scaled the same way. `progressDeadlineSeconds` drives the `Progressing`
//! condition as upstream: `ReplicaSetUpdated` with a fresh `lastUpdateTime` whenever pods
//! progress, `ProgressDeadlineExceeded` (False) once none did for that long.
//! Not implemented: rollback through the API (the deprecated `rollbackTo`; `kubectl rollout
//! undo` patches the template itself), hash collision counting beyond what
//! `status.collisionCount` already says.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::Error;
use crate::pods::{controller_of, controller_ref};

/// The label that ties a ReplicaSet and its pods to one pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Revision annotation on Deployments and ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

const SKIPPED_ANNOTATIONS: [&str; 5] = [
    REVISION,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deployment.kubernetes.io/revision-history",
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// A stable short lowercase alphanumeric hash of a pod template: [`crate::history::hash_bytes`]
/// over its JSON (plus the collision count, if any).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    crate::history::hash_bytes(
        &serde_json::to_vec(template).unwrap_or_default(),
        collision_count,
    )
}

/// `maxSurge`/`maxUnavailable` as counts for `replicas`: surge rounds up, unavailable
/// rounds down, and both zero becomes one unavailable (as Kubernetes does).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> Result<(i32, i32), Error> {
    let default = IntOrString::String("25%".into());
    let surge = scaled(max_surge.unwrap_or(&default), replicas, true, "maxSurge")?;
    let unavailable = scaled(
        max_unavailable.unwrap_or(&default),
        replicas,
        false,
        "maxUnavailable",
    )?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

fn scaled(
    value: &IntOrString,
    total: i32,
    round_up: bool,
    field: &'static str,
) -> Result<i32, Error> {
    match value {
        IntOrString::Int(n) => Ok((*n).max(0)),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| Error::Invalid {
                    field,
                    reason: format!("{s:?} is neither an integer nor a percentage"),
                })?;
            let product = percent * i64::from(total);
            let value = if round_up {
                (product + 99) / 100
            } else {
                product / 100
            };
            Ok(i32::try_from(value).unwrap_or(i32::MAX))
        }
    }
}

/// Kubernetes' `NewRSNewReplicas` for RollingUpdate: scale the new ReplicaSet up as far as
/// `replicas + max_surge` total pods allow, never past `replicas`.
pub fn rolling_new_replicas(replicas: i32, max_surge: i32, total: i32, new_current: i32) -> i32 {
    if new_current >= replicas {
        return replicas;
    }
    let max_total = replicas + max_surge;
    if total >= max_total {
        return new_current;
    }
    new_current + (max_total - total).min(replicas - new_current)
}

/// One old ReplicaSet as the rolling scale-down sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldSet {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// Kubernetes' `reconcileOldReplicaSets` for RollingUpdate: the new `spec.replicas` of each
/// old ReplicaSet (given oldest first), first dropping unavailable pods, then available
/// ones while at least `replicas - max_unavailable` stay available.
pub fn rolling_old_replicas(
    replicas: i32,
    max_unavailable: i32,
    old: &[OldSet],
    new_replicas: i32,
    new_available: i32,
) -> Vec<i32> {
    let mut result: Vec<i32> = old.iter().map(|o| o.replicas).collect();
    let old_total: i32 = result.iter().sum();
    if old_total == 0 {
        return result;
    }
    let all_total = old_total + new_replicas;
    let min_available = replicas - max_unavailable;
    let new_unavailable = (new_replicas - new_available).max(0);
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return result;
    }
    // Unhealthy pods of old sets go first: they do not count towards availability.
    let mut cleaned = 0;
    for (i, set) in old.iter().enumerate() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (set.replicas - set.available).max(0);
        let down = unhealthy.min(max_scaled_down - cleaned);
        result[i] -= down;
        cleaned += down;
    }
    // Then available pods, as long as enough stay available.
    let available: i32 = old.iter().map(|o| o.available).sum::<i32>() + new_available;
    if available <= min_available {
        return result;
    }
    let mut budget = (available - min_available).min(max_scaled_down - cleaned);
    for count in &mut result {
        if budget <= 0 {
            break;
        }
        let down = (*count).min(budget);
        *count -= down;
        budget -= down;
    }
    result
}

/// A change to an existing ReplicaSet: `spec.replicas`, annotations, `minReadySeconds`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaSetUpdate {
    /// ReplicaSet name.
    pub name: String,
    /// New `spec.replicas`.
    pub replicas: i32,
    /// Annotations to set.
    pub annotations: BTreeMap<String, String>,
    /// New `spec.minReadySeconds`, when it changes.
    pub min_ready_seconds: Option<i32>,
}

/// What one reconcile should do for a Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Orphan ReplicaSets matching the selector to claim.
    pub adopt: Vec<String>,
    /// Owned ReplicaSets no longer matching the selector, to let go.
    pub release: Vec<String>,
    /// The new ReplicaSet to create.
    pub create: Option<ReplicaSet>,
    /// Changes to existing ReplicaSets.
    pub updates: Vec<ReplicaSetUpdate>,
    /// Old ReplicaSets beyond `revisionHistoryLimit` to delete.
    pub delete: Vec<String>,
    /// The Deployment's revision annotation.
    pub revision: String,
    /// The status the Deployment should have.
    pub status: DeploymentStatus,
    /// When to look again although nothing changed (the progress deadline runs out).
    pub requeue_after: Option<Duration>,
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// Whether a ReplicaSet's template equals the Deployment's, ignoring `pod-template-hash`.
pub fn template_matches(rs: &ReplicaSet, template: &PodTemplateSpec) -> bool {
    let Some(rs_template) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) else {
        return false;
    };
    let normalize = |t: &PodTemplateSpec| -> Value {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH);
        }
        serde_json::to_value(t).unwrap_or(Value::Null)
    };
    normalize(rs_template) == normalize(template)
}

/// Computes what to do for `deployment` given every ReplicaSet of its namespace.
pub fn plan(
    deployment: &Deployment,
    replicasets: &[&ReplicaSet],
    now: Timestamp,
) -> Result<Plan, Error> {
    let mut out = Plan::default();
    let spec = deployment.spec.clone().unwrap_or_default();
    let uid = deployment.metadata.uid.as_deref().unwrap_or_default();
    // An invalid selector matches nothing, as in Kubernetes.
    let selector = shoal_api::selector::LabelSelector::from_api(&spec.selector).ok();
    if selector.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(Error::Invalid {
            field: "spec.selector",
            reason: "empty selector".into(),
        });
    }
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let no_labels = BTreeMap::new();

    let mut owned: Vec<&ReplicaSet> = Vec::new();
    for rs in replicasets {
        let labels = rs.metadata.labels.as_ref().unwrap_or(&no_labels);
        let matching = selector.as_ref().is_some_and(|s| s.matches(labels));
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        match controller_of(&rs.metadata) {
            Some(owner) if owner.uid == uid => {
                if matching {
                    owned.push(rs);
                } else if rs.metadata.deletion_timestamp.is_none() {
                    out.release.push(rs_name);
                }
            }
            Some(_) => {}
            None if matching && rs.metadata.deletion_timestamp.is_none() => {
                out.adopt.push(rs_name);
                owned.push(rs);
            }
            None => {}
        }
    }
    owned.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.metadata.name.clone(),
        )
    });

    // The ReplicaSet named after this template's hash is the new one even if the
    // apiserver defaulted its template differently from the Deployment's.
    let expected_name = format!(
        "{}-{}",
        deployment.metadata.name.as_deref().unwrap_or_default(),
        template_hash(
            &spec.template,
            deployment.status.as_ref().and_then(|s| s.collision_count)
        )
    );
    let new_rs = owned
        .iter()
        .copied()
        .find(|rs| template_matches(rs, &spec.template))
        .or_else(|| {
            owned
                .iter()
                .copied()
                .find(|rs| rs.metadata.name.as_deref() == Some(expected_name.as_str()))
        });
    let old: Vec<&ReplicaSet> = owned
        .iter()
        .copied()
        .filter(|rs| new_rs.is_none_or(|n| n.metadata.name != rs.metadata.name))
        .collect();
    let max_old_revision = old.iter().map(|rs| revision_of(rs)).max().unwrap_or(0);
    let revision = match new_rs {
        Some(rs) if revision_of(rs) > max_old_revision => revision_of(rs),
        _ => max_old_revision + 1,
    };
    out.revision = revision.to_string();

    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let (max_surge, max_unavailable) = if recreate {
        (0, 0)
    } else {
        let rolling = strategy.rolling_update.unwrap_or_default();
        resolve_fenceposts(
            rolling.max_surge.as_ref(),
            rolling.max_unavailable.as_ref(),
            replicas,
        )?
    };
    let annotations = |revision: i64| {
        BTreeMap::from([
            (REVISION.to_owned(), revision.to_string()),
            (DESIRED_REPLICAS.to_owned(), replicas.to_string()),
            (MAX_REPLICAS.to_owned(), (replicas + max_surge).to_string()),
        ])
    };

    // Planned spec.replicas per owned ReplicaSet (by name), starting from the current.
    let mut planned: BTreeMap<String, i32> = owned
        .iter()
        .map(|rs| {
            (
                rs.metadata.name.clone().unwrap_or_default(),
                spec_replicas(rs),
            )
        })
        .collect();
    let old_total: i32 = old.iter().map(|rs| spec_replicas(rs)).sum();
    let paused = spec.paused.unwrap_or(false);
    let mut new_name = new_rs.and_then(|rs| rs.metadata.name.clone());
    let mut created = false;
    // Upstream's isScalingEvent: an active set was last sized for another replica count.
    let scaling_event = owned
        .iter()
        .any(|rs| spec_replicas(rs) > 0 && desired_annotation(rs).is_some_and(|d| d != replicas));

    if paused || scaling_event {
        // Upstream's `sync`: scale (proportionally during a rollout), roll nothing.
        let sizes = scale(
            replicas,
            max_surge,
            !recreate,
            new_rs,
            &old,
            deployment
                .status
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(0),
        );
        for rs in &owned {
            let Some(&size) = sizes.get(rs.metadata.name.as_deref().unwrap_or_default()) else {
                continue;
            };
            let rs_name = rs.metadata.name.clone().unwrap_or_default();
            planned.insert(rs_name.clone(), size);
            // A stale annotation is rewritten too, or every pass would be a scaling event.
            if size != spec_replicas(rs) || desired_annotation(rs).is_some_and(|d| d != replicas) {
                out.updates.push(ReplicaSetUpdate {
                    name: rs_name,
                    replicas: size,
                    annotations: annotations(revision_of(rs)),
                    min_ready_seconds: None,
                });
            }
        }
    } else {
        let (new_current, new_available) =
            new_rs.map_or((0, 0), |rs| (spec_replicas(rs), status_of(rs).2));
        let new_target = if recreate {
            let old_running: i32 = old.iter().map(|rs| status_of(rs).0).sum();
            if old_total > 0 || old_running > 0 {
                for rs in &old {
                    planned.insert(rs.metadata.name.clone().unwrap_or_default(), 0);
                }
                None
            } else {
                Some(replicas)
            }
        } else {
            Some(rolling_new_replicas(
                replicas,
                max_surge,
                old_total + new_current,
                new_current,
            ))
        };
        match (new_rs, new_target) {
            (None, Some(target)) => {
                let rs = new_replicaset(
                    deployment,
                    &spec.template,
                    &spec.selector,
                    target,
                    annotations(revision),
                );
                new_name = rs.metadata.name.clone();
                planned.insert(new_name.clone().unwrap_or_default(), target);
                out.create = Some(rs);
                created = true;
            }
            (Some(rs), target) => {
                let target = target.unwrap_or(new_current);
                planned.insert(rs.metadata.name.clone().unwrap_or_default(), target);
                let have = rs.metadata.annotations.clone().unwrap_or_default();
                let wanted = annotations(revision);
                let min_ready = (rs.spec.as_ref().and_then(|s| s.min_ready_seconds)
                    != spec.min_ready_seconds)
                    .then(|| spec.min_ready_seconds.unwrap_or(0));
                if target != new_current
                    || wanted.iter().any(|(k, v)| have.get(k) != Some(v))
                    || min_ready.is_some()
                {
                    out.updates.push(ReplicaSetUpdate {
                        name: rs.metadata.name.clone().unwrap_or_default(),
                        replicas: target,
                        annotations: wanted,
                        min_ready_seconds: min_ready,
                    });
                }
            }
            (None, None) => {}
        }
        if !recreate {
            let new_replicas = new_name
                .as_ref()
                .and_then(|n| planned.get(n))
                .copied()
                .unwrap_or(0);
            let sets: Vec<OldSet> = old
                .iter()
                .map(|rs| OldSet {
                    replicas: spec_replicas(rs),
                    available: status_of(rs).2,
                })
                .collect();
            let scaled = rolling_old_replicas(
                replicas,
                max_unavailable,
                &sets,
                new_replicas,
                new_available,
            );
            for (rs, count) in old.iter().zip(scaled) {
                planned.insert(rs.metadata.name.clone().unwrap_or_default(), count);
            }
        }
        for rs in &old {
            let rs_name = rs.metadata.name.clone().unwrap_or_default();
            let target = planned.get(&rs_name).copied().unwrap_or(0);
            if target != spec_replicas(rs) {
                out.updates.push(ReplicaSetUpdate {
                    name: rs_name,
                    replicas: target,
                    annotations: annotations(revision_of(rs)),
                    min_ready_seconds: None,
                });
            }
        }
    }

    // History: old sets fully scaled down, oldest revision first.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
    let mut idle: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .filter(|rs| {
            spec_replicas(rs) == 0
                && status_of(rs).0 == 0
                && rs.metadata.deletion_timestamp.is_none()
                && planned.get(rs.metadata.name.as_deref().unwrap_or_default()) == Some(&0)
        })
        .collect();
    idle.sort_by_key(|rs| revision_of(rs));
    if idle.len() > limit {
        out.delete = idle[..idle.len() - limit]
            .iter()
            .map(|rs| rs.metadata.name.clone().unwrap_or_default())
            .collect();
    }

    // Status, from the ReplicaSets' reported counts.
    let (mut actual, mut ready, mut available) = (0, 0, 0);
    for rs in &owned {
        let (a, r, v) = status_of(rs);
        actual += a;
        ready += r;
        available += v;
    }
    let updated = new_rs.map_or(0, |rs| status_of(rs).0);
    let total: i32 = planned.values().sum();
    let min_available = replicas - if recreate { 0 } else { max_unavailable };
    let old_conditions = deployment
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let available_condition = if available >= min_available {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".to_owned(),
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".to_owned(),
        )
    };
    let new_display = new_name.clone().unwrap_or_default();
    let complete =
        updated == replicas && actual == replicas && available == replicas && new_rs.is_some();
    let previous = old_conditions.iter().find(|c| c.type_ == "Progressing");
    let previous_reason = previous.and_then(|c| c.reason.as_deref());
    let old_status = deployment.status.clone().unwrap_or_default();
    let num = |v: Option<i32>| v.unwrap_or(0);
    // Upstream's DeploymentProgressing: more updated, ready or available pods, or fewer old.
    let progressed = updated > num(old_status.updated_replicas)
        || actual - updated < num(old_status.replicas) - num(old_status.updated_replicas)
        || ready > num(old_status.ready_replicas)
        || available > num(old_status.available_replicas);
    let deadline = spec
        .progress_deadline_seconds
        .filter(|s| *s > 0 && *s < i32::MAX);
    let mut touch = false;
    let keep = || {
        previous.map(|c| {
            (
                c.status.as_str(),
                c.reason.as_deref().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
    };
    // Upstream: a finished rollout is not estimated again (a replaced pod is no rollout).
    let finished = actual == updated && previous_reason == Some("NewReplicaSetAvailable");
    let progressing_condition = if deadline.is_none() {
        // No deadline, no Progressing condition (upstream removes it).
        None
    } else if paused && previous_reason == Some("ProgressDeadlineExceeded") {
        // A reported lack of progress is not hidden by a pause.
        keep()
    } else if paused {
        Some((
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".to_owned(),
        ))
    } else if previous_reason == Some("DeploymentPaused") {
        Some((
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed".to_owned(),
        ))
    } else if finished && !created {
        keep()
    } else if complete {
        Some((
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet {new_display:?} has successfully progressed."),
        ))
    } else if created {
        Some((
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set {new_display:?}"),
        ))
    } else if scaling_event {
        // Scaling is not rolling: the rollout's condition stays as it is.
        keep()
    } else if progressed || previous.is_none() {
        touch = true;
        Some((
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet {new_display:?} is progressing."),
        ))
    } else if let (Some(seconds), Some(cond)) = (deadline, previous)
        && !matches!(
            cond.reason.as_deref(),
            Some("NewReplicaSetAvailable" | "ProgressDeadlineExceeded")
        )
    {
        let since = cond
            .last_update_time
            .as_ref()
            .map_or(now.as_second(), |t| t.0.as_second());
        let left = since + i64::from(seconds) - now.as_second();
        if left < 0 {
            Some((
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet {new_display:?} has timed out progressing."),
            ))
        } else {
            out.requeue_after = Some(Duration::from_secs(u64::try_from(left).unwrap_or(0) + 1));
            keep()
        }
    } else {
        keep()
    };
    // A rollout still under way looks again when its deadline would run out.
    if out.requeue_after.is_none()
        && !complete
        && !paused
        && let Some(seconds) = deadline
    {
        out.requeue_after = Some(Duration::from_secs(
            u64::try_from(seconds).unwrap_or(600) + 1,
        ));
    }
    let mut conditions = vec![condition(
        &old_conditions,
        "Available",
        available_condition,
        now,
    )];
    if let Some(progressing) = progressing_condition {
        let mut c = condition(&old_conditions, "Progressing", progressing, now);
        if touch {
            c.last_update_time = Some(Time(now));
        }
        conditions.push(c);
    }
    out.status = DeploymentStatus {
        observed_generation: deployment.metadata.generation,
        replicas: Some(actual),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        conditions: Some(conditions),
        collision_count: deployment.status.as_ref().and_then(|s| s.collision_count),
        terminating_replicas: None,
    };
    Ok(out)
}

fn desired_annotation(rs: &ReplicaSet) -> Option<i32> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(DESIRED_REPLICAS)?
        .parse()
        .ok()
}

fn max_annotation(rs: &ReplicaSet) -> Option<i32> {
    rs.metadata
        .annotations
        .as_ref()?
        .get(MAX_REPLICAS)?
        .parse()
        .ok()
}

/// Upstream's `scale`: the size of each ReplicaSet (by name) when the Deployment's replica
/// count changed or it is paused. One active set (or none: the newest) takes the whole count; a
/// saturated new set leaves the old ones at zero; otherwise, during a rolling update, the
/// replicas to add or remove (`replicas + max_surge` minus what the active sets have) are
/// shared in proportion to each set's size at the last scale (`max-replicas` annotation),
/// largest first (newer first when scaling up, older first when scaling down), the leftover
/// to the first. Sets not named keep their size.
pub fn scale(
    replicas: i32,
    max_surge: i32,
    rolling: bool,
    new_rs: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
    status_replicas: i32,
) -> BTreeMap<String, i32> {
    let name = |rs: &ReplicaSet| rs.metadata.name.clone().unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut all: Vec<&ReplicaSet> = old.to_vec();
    all.extend(new_rs);
    let active: Vec<&ReplicaSet> = all
        .iter()
        .copied()
        .filter(|rs| spec_replicas(rs) > 0)
        .collect();
    let single = match active.len() {
        0 => new_rs.or_else(|| old.last().copied()),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(rs) = single {
        out.insert(name(rs), replicas);
        return out;
    }
    if let Some(new) = new_rs
        && spec_replicas(new) == replicas
        && desired_annotation(new) == Some(replicas)
        && status_of(new).2 == replicas
    {
        for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
            out.insert(name(rs), 0);
        }
        return out;
    }
    if !rolling {
        return out;
    }
    let current: i32 = active.iter().map(|rs| spec_replicas(rs)).sum();
    let allowed = if replicas > 0 {
        replicas + max_surge
    } else {
        0
    };
    let to_add = allowed - current;
    let created = |rs: &ReplicaSet| rs.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let mut sorted = active.clone();
    if to_add > 0 {
        // Larger first; among equals the newer first.
        sorted.sort_by(|a, b| {
            spec_replicas(b)
                .cmp(&spec_replicas(a))
                .then_with(|| created(b).cmp(&created(a)))
                .then_with(|| name(b).cmp(&name(a)))
        });
    } else {
        // Larger first; among equals the older first.
        sorted.sort_by(|a, b| {
            spec_replicas(b)
                .cmp(&spec_replicas(a))
                .then_with(|| created(a).cmp(&created(b)))
                .then_with(|| name(a).cmp(&name(b)))
        });
    }
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::with_capacity(sorted.len());
    for rs in &sorted {
        let size = spec_replicas(rs);
        let proportion = if to_add == 0 || to_add == added {
            0
        } else {
            let fraction = if replicas == 0 {
                -size
            } else {
                let before = max_annotation(rs)
                    .filter(|m| *m > 0)
                    .unwrap_or(status_replicas.max(1));
                let scaled = f64::from(size) * f64::from(allowed) / f64::from(before);
                // Round half away from zero, as upstream's RoundToInt32.
                scaled.round() as i32 - size
            };
            let room = to_add - added;
            if to_add > 0 {
                fraction.min(room)
            } else {
                fraction.max(room)
            }
        };
        added += proportion;
        sizes.push(size + proportion);
    }
    if let Some(first) = sizes.first_mut() {
        *first = (*first + to_add - added).max(0);
    }
    for (rs, size) in sorted.iter().zip(sizes) {
        out.insert(name(rs), size);
    }
    out
}

fn condition(
    old: &[DeploymentCondition],
    type_: &str,
    (status, reason, message): (&str, &str, String),
    now: Timestamp,
) -> DeploymentCondition {
    let previous = old.iter().find(|c| c.type_ == type_);
    let now = Time(now);
    match previous {
        Some(p)
            if p.status == status
                && p.reason.as_deref() == Some(reason)
                && p.message.as_deref() == Some(message.as_str()) =>
        {
            p.clone()
        }
        Some(p) if p.status == status => DeploymentCondition {
            last_update_time: Some(now),
            message: Some(message),
            reason: Some(reason.to_owned()),
            ..p.clone()
        },
        _ => DeploymentCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        },
    }
}

/// The new ReplicaSet for a template: `<deployment>-<hash>`, selector and labels extended
/// with `pod-template-hash`, owned by the Deployment.
pub fn new_replicaset(
    deployment: &Deployment,
    template: &PodTemplateSpec,
    deployment_selector: &LabelSelector,
    replicas: i32,
    annotations: BTreeMap<String, String>,
) -> ReplicaSet {
    let collision = deployment.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(template, collision);
    let mut template = template.clone();
    let meta = template.metadata.get_or_insert_default();
    let labels = meta.labels.get_or_insert_default();
    labels.insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
    let labels = labels.clone();
    let mut selector = deployment_selector.clone();
    selector
        .match_labels
        .get_or_insert_default()
        .insert(POD_TEMPLATE_HASH.to_owned(), hash.clone());
    let mut all_annotations: BTreeMap<String, String> = deployment
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !SKIPPED_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    all_annotations.extend(annotations);
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                deployment.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: deployment.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(all_annotations),
            owner_references: Some(vec![controller_ref(
                "apps/v1",
                "Deployment",
                &deployment.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: deployment.spec.as_ref().and_then(|s| s.min_ready_seconds),
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// What the Deployment reconciler shares across calls.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All ReplicaSets, kept by a reflector.
    pub replicasets: Store<ReplicaSet>,
    /// Events as `deployment-controller`.
    pub events: shoal_events::Recorder,
}

/// Brings one Deployment's ReplicaSets and status in line with its spec.
pub async fn reconcile(deployment: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    if deployment.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
    let name = deployment.metadata.name.clone().unwrap_or_default();
    let all: Vec<Arc<ReplicaSet>> = ctx
        .replicasets
        .state_filter(|rs| rs.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let refs: Vec<&ReplicaSet> = all.iter().map(|rs| rs.as_ref()).collect();
    let plan = plan(&deployment, &refs, Timestamp::now())?;
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &namespace);
    let find = |n: &str| all.iter().find(|rs| rs.metadata.name.as_deref() == Some(n));

    for rs_name in &plan.adopt {
        if let Some(rs) = find(rs_name) {
            let mut owners = rs.metadata.owner_references.clone().unwrap_or_default();
            owners.push(controller_ref(
                "apps/v1",
                "Deployment",
                &deployment.metadata,
            ));
            let patch = json!({"metadata": {"ownerReferences": owners, "resourceVersion": rs.metadata.resource_version}});
            rs_api
                .patch(rs_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            info!(deployment = %name, replicaset = %rs_name, "adopted replicaset");
        }
    }
    for rs_name in &plan.release {
        if let Some(rs) = find(rs_name) {
            let uid = deployment.metadata.uid.as_deref().unwrap_or_default();
            let owners: Vec<_> = rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != uid)
                .collect();
            let patch = json!({"metadata": {"ownerReferences": owners, "resourceVersion": rs.metadata.resource_version}});
            rs_api
                .patch(rs_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            info!(deployment = %name, replicaset = %rs_name, "released replicaset");
        }
    }
    let deployment_ref = shoal_events::reference(deployment.as_ref());
    if let Some(rs) = &plan.create {
        let rs_name = rs.metadata.name.clone().unwrap_or_default();
        match rs_api.create(&PostParams::default(), rs).await {
            Ok(_) => {
                info!(deployment = %name, replicaset = %rs_name, "created replicaset");
                let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                ctx.events.normal(
                    &deployment_ref,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {rs_name} from 0 to {replicas}"),
                );
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                // Either our cache lags behind our own creation, or the name is taken.
                let existing = rs_api.get_opt(&rs_name).await?;
                let ours = existing
                    .as_ref()
                    .and_then(|e| controller_of(&e.metadata))
                    .is_some_and(|o| Some(o.uid.as_str()) == deployment.metadata.uid.as_deref());
                if !ours {
                    return Err(Error::NameTaken(rs_name));
                }
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(error) => return Err(error.into()),
        }
    }
    for update in &plan.updates {
        let mut spec = json!({"replicas": update.replicas});
        if let Some(seconds) = update.min_ready_seconds {
            spec["minReadySeconds"] = json!(seconds);
        }
        let patch = json!({"metadata": {"annotations": update.annotations}, "spec": spec});
        rs_api
            .patch(&update.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        info!(deployment = %name, replicaset = %update.name, replicas = update.replicas, "scaled replicaset");
        let before = find(&update.name)
            .and_then(|rs| rs.spec.as_ref().and_then(|s| s.replicas))
            .unwrap_or(0);
        if before != update.replicas {
            let direction = if update.replicas > before {
                "up"
            } else {
                "down"
            };
            ctx.events.normal(
                &deployment_ref,
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {before} to {}",
                    update.name, update.replicas
                ),
            );
        }
    }
    for rs_name in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: find(rs_name).and_then(|rs| rs.metadata.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match rs_api.delete(rs_name, &params).await {
            Ok(_) => info!(deployment = %name, replicaset = %rs_name, "deleted old replicaset"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }

    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let current_revision = deployment
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION));
    if current_revision != Some(&plan.revision) {
        let patch = json!({"metadata": {"annotations": {REVISION: plan.revision}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    if deployment.status.as_ref() != Some(&plan.status) {
        let patch = json!({"status": plan.status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        debug!(deployment = %name, "updated status");
    }
    Ok(plan
        .requeue_after
        .map_or_else(Action::await_change, Action::requeue))
}

/// Requeues a failed reconcile; conflicts come back quickly, other errors after a pause.
pub fn error_policy(deployment: Arc<Deployment>, error: &Error, _ctx: Arc<Context>) -> Action {
    if error.is_conflict() {
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(deployment = ?deployment.metadata.name, %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests;
