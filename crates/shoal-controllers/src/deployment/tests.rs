//! Tests of the Deployment controller's pure planning: rollout math, template hashing, history.

use super::*;
use crate::test_support::merge;
use serde_json::{Value, json};

fn deployment(extra: Value) -> Deployment {
    let mut value = json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 3,
            "annotations": {"kubernetes.io/change-cause": "v2"}},
        "spec": {
            "replicas": 4,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "v2"}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}}
        }
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("deployment")
}

fn old_rs(name: &str, image: &str, revision: &str, replicas: i32, available: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "x"},
            "annotations": {REVISION: revision},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                "uid": "d-uid", "controller": true}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "x"}},
            "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "x"}},
                         "spec": {"containers": [{"name": "c", "image": image}]}}},
        "status": {"replicas": replicas, "readyReplicas": available, "availableReplicas": available}
    }))
    .expect("rs")
}

fn now() -> Timestamp {
    "2026-01-01T01:00:00Z".parse().expect("time")
}

#[test]
fn template_hash_is_stable_short_and_sensitive() {
    let d = deployment(json!({}));
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .expect("template");
    let hash = template_hash(&template, None);
    assert_eq!(hash, template_hash(&template, None));
    assert!(hash.len() <= 10 && !hash.is_empty());
    assert!(
        hash.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    let mut other = template.clone();
    other.spec.as_mut().expect("spec").containers[0].image = Some("v3".into());
    assert_ne!(hash, template_hash(&other, None));
    assert_ne!(hash, template_hash(&template, Some(1)));
    expect_test::expect!["756f99f4f8"].assert_eq(&hash);
}

#[test]
fn fenceposts_round_surge_up_and_unavailable_down() {
    let pct = |s: &str| IntOrString::String(s.into());
    assert_eq!(
        resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10).ok(),
        Some((3, 2))
    );
    assert_eq!(resolve_fenceposts(None, None, 1).ok(), Some((1, 0)));
    assert_eq!(
        resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 3).ok(),
        Some((0, 1))
    );
    assert!(resolve_fenceposts(Some(&pct("abc")), None, 3).is_err());
}

#[test]
fn rolling_math() {
    // Kubernetes' examples: replicas 10, surge 2, 8 old + 0 new -> new may reach 4.
    assert_eq!(rolling_new_replicas(10, 2, 8, 0), 4);
    assert_eq!(rolling_new_replicas(10, 2, 12, 2), 2);
    assert_eq!(rolling_new_replicas(10, 2, 10, 12), 10);
    // Old sets: unhealthy pods go first, then available ones down to min availability.
    let old = [
        OldSet {
            replicas: 3,
            available: 2,
        },
        OldSet {
            replicas: 2,
            available: 2,
        },
    ];
    assert_eq!(rolling_old_replicas(4, 1, &old, 1, 0), vec![1, 2]);
    assert_eq!(rolling_old_replicas(4, 1, &old, 1, 1), vec![0, 2]);
    assert_eq!(rolling_old_replicas(4, 1, &old, 4, 4), vec![0, 0]);
    assert_eq!(
        rolling_old_replicas(
            4,
            0,
            &[OldSet {
                replicas: 4,
                available: 4
            }],
            1,
            0
        ),
        vec![4]
    );
}

#[test]
fn first_rollout_creates_the_new_replicaset() {
    let d = deployment(json!({}));
    let p = plan(&d, &[], now()).expect("plan");
    let rs = p.create.expect("new rs");
    let name = rs.metadata.name.clone().expect("name");
    let hash = name.strip_prefix("web-").expect("prefix");
    let spec = rs.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(4));
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .and_then(|m| m.get(POD_TEMPLATE_HASH))
            .map(String::as_str),
        Some(hash)
    );
    let annotations = rs.metadata.annotations.expect("annotations");
    assert_eq!(annotations.get(REVISION).map(String::as_str), Some("1"));
    assert_eq!(
        annotations.get(DESIRED_REPLICAS).map(String::as_str),
        Some("4")
    );
    assert_eq!(annotations.get(MAX_REPLICAS).map(String::as_str), Some("5"));
    assert_eq!(
        annotations
            .get("kubernetes.io/change-cause")
            .map(String::as_str),
        Some("v2")
    );
    assert_eq!(p.revision, "1");
    let conditions = p.status.conditions.expect("conditions");
    assert_eq!(
        conditions[1].reason.as_deref(),
        Some("NewReplicaSetCreated")
    );
}

#[test]
fn rolling_update_surges_then_scales_old_down() {
    let d = deployment(json!({}));
    let old = old_rs("web-old", "v1", "1", 4, 4);
    let p = plan(&d, &[&old], now()).expect("plan");
    let new = p.create.as_ref().expect("new rs");
    // 4 old + surge 1: the new set may start with 1 pod; old may drop 1 (maxUnavailable).
    assert_eq!(new.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(
        p.updates
            .iter()
            .map(|u| (u.name.as_str(), u.replicas))
            .collect::<Vec<_>>(),
        [("web-old", 3)]
    );
    assert_eq!(p.revision, "2");
    // Later: new set has 4 available, old still 3 -> old goes to 0.
    let mut new_rs = new.clone();
    new_rs.spec.as_mut().expect("spec").replicas = Some(4);
    new_rs.status = Some(
        serde_json::from_value(json!({"replicas": 4, "readyReplicas": 4, "availableReplicas": 4}))
            .expect("status"),
    );
    let old = old_rs("web-old", "v1", "1", 3, 3);
    let p = plan(&d, &[&old, &new_rs], now()).expect("plan");
    assert_eq!(
        p.updates
            .iter()
            .map(|u| (u.name.as_str(), u.replicas))
            .collect::<Vec<_>>(),
        [("web-old", 0)]
    );
    assert_eq!(p.status.updated_replicas, Some(4));
    assert_eq!(p.status.replicas, Some(7));
}

#[test]
fn complete_rollout_status_and_history_cleanup() {
    let d = deployment(json!({"spec": {"revisionHistoryLimit": 1}}));
    let mut new_rs = new_replicaset(
        &d,
        &d.spec.as_ref().expect("spec").template,
        &d.spec.as_ref().expect("spec").selector,
        4,
        BTreeMap::from([
            (REVISION.to_owned(), "3".to_owned()),
            (DESIRED_REPLICAS.to_owned(), "4".to_owned()),
            (MAX_REPLICAS.to_owned(), "5".to_owned()),
        ]),
    );
    new_rs.status = Some(
        serde_json::from_value(json!({"replicas": 4, "readyReplicas": 4, "availableReplicas": 4}))
            .expect("status"),
    );
    let a = old_rs("web-a", "v0", "1", 0, 0);
    let b = old_rs("web-b", "v1", "2", 0, 0);
    let p = plan(&d, &[&a, &b, &new_rs], now()).expect("plan");
    assert!(p.create.is_none());
    assert_eq!(p.updates, vec![]);
    assert_eq!(p.delete, ["web-a"]);
    assert_eq!(p.revision, "3");
    let s = &p.status;
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(4), Some(4), Some(4), Some(0))
    );
    assert_eq!(s.observed_generation, Some(3));
    let conditions = s.conditions.as_ref().expect("conditions");
    assert_eq!(conditions[0].type_, "Available");
    assert_eq!(conditions[0].status, "True");
    assert_eq!(
        conditions[1].reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    // Conditions keep their times when nothing changed, so the status compares equal.
    let mut again = d.clone();
    again.status = Some(p.status.clone());
    let later: Timestamp = "2026-01-01T02:00:00Z".parse().expect("time");
    assert_eq!(
        plan(&again, &[&a, &b, &new_rs], later)
            .expect("plan")
            .status,
        p.status
    );
}

#[test]
fn recreate_scales_old_to_zero_before_creating_new() {
    let d = deployment(json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}}));
    let old = old_rs("web-old", "v1", "1", 4, 4);
    let p = plan(&d, &[&old], now()).expect("plan");
    assert!(p.create.is_none());
    assert_eq!(
        p.updates
            .iter()
            .map(|u| (u.name.as_str(), u.replicas))
            .collect::<Vec<_>>(),
        [("web-old", 0)]
    );
    let mut drained = old_rs("web-old", "v1", "1", 0, 0);
    drained.status = Some(serde_json::from_value(json!({"replicas": 1})).expect("status"));
    let p = plan(&d, &[&drained], now()).expect("plan");
    assert!(p.create.is_none(), "waits for old pods to go");
    let gone = old_rs("web-old", "v1", "1", 0, 0);
    let p = plan(&d, &[&gone], now()).expect("plan");
    assert_eq!(
        p.create.and_then(|rs| rs.spec).and_then(|s| s.replicas),
        Some(4)
    );
}

#[test]
fn paused_deployment_does_not_roll() {
    let d = deployment(json!({"spec": {"paused": true}}));
    let old = old_rs("web-old", "v1", "1", 4, 4);
    let p = plan(&d, &[&old], now()).expect("plan");
    assert!(p.create.is_none());
    assert!(p.updates.is_empty());
    assert_eq!(
        p.status.conditions.expect("conditions")[1]
            .reason
            .as_deref(),
        Some("DeploymentPaused")
    );
}

#[test]
fn adopts_orphan_replicasets_and_matches_templates_ignoring_hash() {
    let d = deployment(json!({}));
    let mut orphan = old_rs("web-orphan", "v2", "5", 4, 4);
    orphan.metadata.owner_references = None;
    assert!(template_matches(
        &orphan,
        &d.spec.as_ref().expect("spec").template
    ));
    let p = plan(&d, &[&orphan], now()).expect("plan");
    assert_eq!(p.adopt, ["web-orphan"]);
    assert!(p.create.is_none());
    assert_eq!(p.revision, "5");
}

fn annotate(rs: &mut ReplicaSet, desired: i32, max: i32) {
    let annotations = rs.metadata.annotations.get_or_insert_default();
    annotations.insert(DESIRED_REPLICAS.to_owned(), desired.to_string());
    annotations.insert(MAX_REPLICAS.to_owned(), max.to_string());
}

fn current_rs(d: &Deployment, replicas: i32, available: i32) -> ReplicaSet {
    let spec = d.spec.as_ref().expect("spec");
    let mut rs = new_replicaset(
        d,
        &spec.template,
        &spec.selector,
        replicas,
        BTreeMap::from([(REVISION.to_owned(), "2".to_owned())]),
    );
    rs.metadata.creation_timestamp = Some(Time("2026-01-01T00:30:00Z".parse().expect("time")));
    rs.status = Some(
        serde_json::from_value(json!({"replicas": replicas, "readyReplicas": available,
            "availableReplicas": available}))
        .expect("status"),
    );
    rs
}

#[test]
fn scaling_in_mid_rollout_is_proportional() {
    // Upstream's example: 10 replicas, maxSurge 3, rolling with 8 old and 5 new pods; the
    // Deployment goes to 15: 18 allowed, 5 more shared 3 to the old set and 2 to the new.
    let d = deployment(json!({"spec": {"replicas": 15,
        "strategy": {"rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}}}));
    let mut old = old_rs("web-old", "v1", "1", 8, 8);
    annotate(&mut old, 10, 13);
    let mut new = current_rs(&d, 5, 0);
    annotate(&mut new, 10, 13);
    let p = plan(&d, &[&old, &new], now()).expect("plan");
    assert!(p.create.is_none());
    let mut sizes: Vec<(String, i32)> = p
        .updates
        .iter()
        .map(|u| (u.name.clone(), u.replicas))
        .collect();
    sizes.sort();
    let new_name = new.metadata.name.clone().expect("name");
    let mut want = vec![("web-old".to_owned(), 11), (new_name, 7)];
    want.sort();
    assert_eq!(sizes, want);
    for update in &p.updates {
        assert_eq!(update.annotations[DESIRED_REPLICAS], "15");
        assert_eq!(update.annotations[MAX_REPLICAS], "18");
    }
    // Down to 5: 8 allowed, 5 fewer: the larger, older set gives more.
    let d = deployment(json!({"spec": {"replicas": 5,
        "strategy": {"rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}}}));
    let p = plan(&d, &[&old, &new], now()).expect("plan");
    let total: i32 = p.updates.iter().map(|u| u.replicas).sum();
    assert_eq!(total, 8);
    let old_size = p
        .updates
        .iter()
        .find(|u| u.name == "web-old")
        .map(|u| u.replicas);
    assert_eq!(old_size, Some(5));
    // One active set takes the whole count.
    let mut only = old_rs("web-only", "v2", "1", 4, 4);
    annotate(&mut only, 4, 5);
    let d = deployment(
        json!({"spec": {"replicas": 6, "template": {"spec": {"containers": [{"name": "c", "image": "v9"}]}}}}),
    );
    let p = plan(&d, &[&only], now()).expect("plan");
    assert!(p.create.is_none(), "a scaling event creates nothing");
    assert_eq!(
        p.updates
            .iter()
            .map(|u| (u.name.as_str(), u.replicas))
            .collect::<Vec<_>>(),
        [("web-only", 6)]
    );
}

#[test]
fn progress_deadline_runs_out_without_progress() {
    let status = |update: &str| {
        json!({"status": {"observedGeneration": 3, "replicas": 4, "updatedReplicas": 1,
            "readyReplicas": 3, "availableReplicas": 3, "conditions": [
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
             "message": "m", "lastUpdateTime": update,
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    let mut stuck = deployment(json!({"spec": {"progressDeadlineSeconds": 60}}));
    merge_status(&mut stuck, status("2026-01-01T00:58:00Z"));
    let old = old_rs("web-old", "v1", "1", 3, 3);
    let new = current_rs(&stuck, 1, 0);
    let progressing = |p: &Plan| {
        p.status
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Progressing").cloned())
            .expect("progressing")
    };
    let p = plan(&stuck, &[&old, &new], now()).expect("plan");
    let c = progressing(&p);
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
    // Within the deadline: unchanged, looked at again when it would run out.
    let mut waiting = deployment(json!({"spec": {"progressDeadlineSeconds": 600}}));
    merge_status(&mut waiting, status("2026-01-01T00:58:00Z"));
    let p = plan(&waiting, &[&old, &new], now()).expect("plan");
    let c = progressing(&p);
    assert_eq!(c.reason.as_deref(), Some("ReplicaSetUpdated"));
    assert_eq!(
        c.last_update_time.map(|t| t.0.to_string()).as_deref(),
        Some("2026-01-01T00:58:00Z")
    );
    assert_eq!(p.requeue_after, Some(Duration::from_secs(481)));
    // A pod became available: progress, the update time moves, the clock starts again.
    let moving = current_rs(&stuck, 1, 1);
    let p = plan(&stuck, &[&old, &moving], now()).expect("plan");
    let c = progressing(&p);
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("True", Some("ReplicaSetUpdated"))
    );
    assert_eq!(c.last_update_time, Some(Time(now())));
    assert_eq!(
        c.last_transition_time.map(|t| t.0.to_string()).as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
}

fn merge_status(d: &mut Deployment, status: Value) {
    let mut value = serde_json::to_value(&*d).expect("json");
    merge(&mut value, status);
    *d = serde_json::from_value(value).expect("deployment");
}

#[test]
fn a_finished_rollout_is_not_estimated_again() {
    // Complete, then a pod is replaced and stays pending: no rollout, no deadline.
    let mut d = deployment(json!({"spec": {"progressDeadlineSeconds": 60}}));
    merge_status(
        &mut d,
        json!({"status": {"observedGeneration": 3, "replicas": 4, "updatedReplicas": 4,
            "readyReplicas": 4, "availableReplicas": 4, "conditions": [
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": "done", "lastUpdateTime": "2026-01-01T00:00:00Z",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
    );
    let rs = current_rs(&d, 4, 3);
    let p = plan(&d, &[&rs], now()).expect("plan");
    let c = p
        .status
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "Progressing").cloned())
        .expect("progressing");
    assert_eq!(c.reason.as_deref(), Some("NewReplicaSetAvailable"));
    // Without a deadline there is no Progressing condition at all.
    let none = deployment(json!({"spec": {"progressDeadlineSeconds": null}}));
    let p = plan(&none, &[&rs], now()).expect("plan");
    assert!(
        p.status
            .conditions
            .iter()
            .flatten()
            .all(|c| c.type_ != "Progressing")
    );
}
