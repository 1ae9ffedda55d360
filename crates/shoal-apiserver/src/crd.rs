//! CustomResourceDefinitions, as apiextensions-apiserver's controllers handle them inside the
//! apiserver: every member follows the CRDs in the store and serves the custom resources of
//! those whose names are accepted (`served.rs`), then records `NamesAccepted` and
//! `Established` in the CRD's status, so a client that waits for `Established` can use the
//! resource on this member at once. A request for an unknown resource in a group that has a
//! CRD re-reads the CRDs first (another member may have established it a moment ago).
//!
//! Names: within a group, the oldest CRD keeps a plural, singular, kind, list kind or short
//! name; a younger one claiming any of them is not served (`NamesAccepted=False`).
//!
//! Deletion: a CRD carries the `customresourcecleanup.apiextensions.k8s.io` finalizer from its
//! creation. Once it is deleted, its resources stop taking new objects (`Terminating=True`),
//! every object is deleted with the ordinary semantics (their own finalizers are waited for),
//! and the finalizer is removed, which removes the CRD. Status writes are compare-and-swaps
//! computed the same way on every member, so members converge instead of fighting.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use shoal_store::{KeyValue, StoreError, WatchEvent};

use crate::AppState;
use crate::api::custom::served_types;
use crate::api::kinds::apiextensions::{
    CLEANUP_FINALIZER, CUSTOM_RESOURCE_DEFINITION, defaulted_names,
};
use crate::api::registry::{ResourceType, resource_types};
use crate::error::ApiError;
use crate::object::{decode, encode, finalizers, meta_str, metadata_mut, now_rfc3339};
use crate::resources::{Ctx, DeleteOptions, delete};

/// The CRDs last read, by store key: the object and its revision.
type Crds = BTreeMap<String, (Value, u64)>;

/// The outcome of one pass over the CRDs: what to serve and which statuses to write.
struct Plan {
    served: Vec<&'static ResourceType>,
    terminating: Vec<&'static ResourceType>,
    /// `(key, revision, object with its new status)` for CRDs whose status changes.
    status: Vec<(String, u64, Value)>,
    /// Names of CRDs being deleted.
    deleting: Vec<String>,
}

/// The names a CRD claims in its group.
fn claims(crd: &Value) -> Vec<String> {
    let names = defaulted_names(crd.pointer("/spec/names").unwrap_or(&Value::Null));
    let s = |k: &str| names.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut out = vec![
        format!("plural:{}", s("plural")),
        format!("kind:{}", s("kind")),
        format!("singular:{}", s("singular")),
        format!("listKind:{}", s("listKind")),
    ];
    for short in names
        .get("shortNames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        out.push(format!("short:{short}"));
    }
    out
}

/// A condition as upstream writes it, keeping the transition time of an unchanged one.
fn condition(old: &[Value], type_: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let kept = old.iter().find(|c| {
        c.get("type").and_then(Value::as_str) == Some(type_)
            && c.get("status").and_then(Value::as_str) == Some(status)
    });
    let time = kept
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(now_rfc3339()));
    json!({"type": type_, "status": status, "lastTransitionTime": time, "reason": reason, "message": message})
}

fn plan(crds: &Crds) -> Plan {
    let mut out = Plan {
        served: Vec::new(),
        terminating: Vec::new(),
        status: Vec::new(),
        deleting: Vec::new(),
    };
    // Oldest first: the oldest CRD keeps contested names.
    let mut ordered: Vec<(&String, &(Value, u64))> = crds.iter().collect();
    ordered.sort_by_key(|(_, (crd, _))| {
        (
            meta_str(crd, "creationTimestamp")
                .unwrap_or_default()
                .to_string(),
            crate::object::name(crd).to_string(),
        )
    });
    let mut taken: HashSet<(String, String)> = HashSet::new();
    for rt in resource_types() {
        for claim in [
            format!("plural:{}", rt.plural),
            format!("kind:{}", rt.kind),
            format!("singular:{}", rt.singular),
            format!("listKind:{}", rt.list_kind),
        ] {
            taken.insert((rt.group.to_string(), claim));
        }
    }
    for (key, (crd, rev)) in ordered {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let wanted = claims(crd);
        let conflict = wanted
            .iter()
            .find(|c| taken.contains(&(group.clone(), (*c).clone())))
            .cloned();
        let terminating = meta_str(crd, "deletionTimestamp").is_some();
        if terminating {
            out.deleting.push(crate::object::name(crd).to_string());
        }
        let types = match conflict {
            Some(_) => Err(String::new()),
            None => served_types(crd),
        };
        let old_conditions: Vec<Value> = crd
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // (NamesAccepted, Established), each as (status, reason, message).
        let (names, established) = match (&conflict, &types) {
            (Some(c), _) => {
                let (what, name) = c.split_once(':').unwrap_or(("name", c));
                let reason = if what == "kind" || what == "listKind" {
                    "KindConflict"
                } else {
                    "PluralConflict"
                };
                (
                    (false, reason, format!("{what} {name:?} is already in use")),
                    (
                        false,
                        "NotAccepted",
                        "not all names are accepted".to_string(),
                    ),
                )
            }
            (None, Err(e)) => (
                (true, "NoConflicts", "no conflicts found".to_string()),
                (false, "Invalid", e.clone()),
            ),
            (None, Ok(list)) => {
                wanted.iter().for_each(|c| {
                    taken.insert((group.clone(), c.clone()));
                });
                if terminating {
                    out.terminating.extend(list.iter().copied());
                }
                out.served.extend(list.iter().copied());
                (
                    (true, "NoConflicts", "no conflicts found".to_string()),
                    (
                        true,
                        "InitialNamesAccepted",
                        "the initial names have been accepted".to_string(),
                    ),
                )
            }
        };
        let mut conditions = Vec::new();
        for (type_, (ok, reason, message)) in
            [("NamesAccepted", names), ("Established", established)]
        {
            conditions.push(condition(&old_conditions, type_, ok, reason, &message));
        }
        if terminating {
            conditions.push(condition(
                &old_conditions,
                "Terminating",
                true,
                "InstanceDeletionInProgress",
                "CustomResource deletion is in progress",
            ));
        }
        let mut stored: Vec<Value> = crd
            .pointer("/status/storedVersions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(storage) = crd
            .pointer("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|l| {
                l.iter()
                    .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            })
            .and_then(|v| v.get("name"))
            && !stored.contains(storage)
        {
            stored.push(storage.clone());
        }
        let accepted = defaulted_names(crd.pointer("/spec/names").unwrap_or(&Value::Null));
        let status =
            json!({"acceptedNames": accepted, "conditions": conditions, "storedVersions": stored});
        if crd.get("status") != Some(&status) {
            let mut next = crd.clone();
            if let Some(map) = next.as_object_mut() {
                map.insert("status".into(), status);
            }
            out.status.push((key.clone(), *rev, next));
        }
    }
    out
}

/// The shared state of this member's CRD follower.
#[derive(Default)]
pub struct Follower {
    /// CRDs whose custom resources are being deleted by a task of this member.
    cleaning: Mutex<HashSet<String>>,
    /// Serialises passes, so a refresh and the watch loop do not interleave.
    pass: tokio::sync::Mutex<()>,
}

/// Serves the CRDs in the store now, then follows them in a task until shutdown.
pub async fn start(state: &AppState) {
    let mut first = match list(state).await {
        Ok((crds, revision)) => {
            pass(state, &crds, revision).await;
            Some((crds, revision))
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading CustomResourceDefinitions failed; retrying in the background");
            None
        }
    };
    let state = state.clone();
    tokio::spawn(async move {
        let shutdown = state.inner.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = follow(&state, first.take()) => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "following CustomResourceDefinitions failed; starting over");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

async fn list(state: &AppState) -> Result<(Crds, u64), ApiError> {
    let list = state
        .store()
        .list(&CUSTOM_RESOURCE_DEFINITION.storage_prefix())
        .await?;
    let mut crds = Crds::new();
    for kv in &list.items {
        crds.insert(kv.key.clone(), (decode(kv)?, kv.mod_revision));
    }
    Ok((crds, list.revision))
}

/// Re-reads every CRD and serves what it finds (when a request names a resource this member
/// does not serve yet).
pub async fn refresh(state: &AppState) -> Result<(), ApiError> {
    let (crds, revision) = list(state).await?;
    pass(state, &crds, revision).await;
    Ok(())
}

/// Whether the store has a CRD for `plural` in `group` (so an unknown resource there may be
/// one this member has not caught up with).
pub async fn defined(state: &AppState, group: &str, plural: &str) -> bool {
    if !group.contains('.') {
        return false;
    }
    let key = CUSTOM_RESOURCE_DEFINITION.storage_key(None, &format!("{plural}.{group}"));
    matches!(state.store().get(&key).await, Ok(Some(_)))
}

/// Follows the CRDs from `first` (the list `start` already served) or from a new list.
async fn follow(state: &AppState, first: Option<(Crds, u64)>) -> Result<(), ApiError> {
    let (mut crds, revision) = match first {
        Some(first) => first,
        None => {
            let (crds, revision) = list(state).await?;
            pass(state, &crds, revision).await;
            (crds, revision)
        }
    };
    let mut events = state
        .store()
        .watch(&CUSTOM_RESOURCE_DEFINITION.storage_prefix(), revision)?;
    while let Some(event) = events.next().await {
        let mut last = apply(&mut crds, event?)?;
        // Take every event already waiting before one pass over them all.
        while let Some(Some(event)) = futures::FutureExt::now_or_never(events.next()) {
            last = apply(&mut crds, event?)?;
        }
        pass(state, &crds, last).await;
    }
    Ok(())
}

fn apply(crds: &mut Crds, event: WatchEvent) -> Result<u64, ApiError> {
    let revision = event.revision();
    match event {
        WatchEvent::Put { kv, .. } => {
            crds.insert(kv.key.clone(), (decode(&kv)?, kv.mod_revision));
        }
        WatchEvent::Delete { prev, .. } => {
            crds.remove(&prev.key);
        }
    }
    Ok(revision)
}

async fn pass(state: &AppState, crds: &Crds, revision: u64) {
    let follower = &state.inner.crds;
    let _one = follower.pass.lock().await;
    let plan = plan(crds);
    state
        .inner
        .served
        .set_custom(revision, plan.served, plan.terminating);
    for (key, rev, mut next) in plan.status {
        match state
            .store()
            .update(&key, encode(&mut next), Some(rev))
            .await
        {
            Ok(_) => tracing::info!(
                crd = crate::object::name(&next),
                "CustomResourceDefinition status updated"
            ),
            // Someone wrote it in between: the watch brings that write and another pass.
            Err(StoreError::Conflict { .. } | StoreError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(crd = %key, error = %e, "writing CustomResourceDefinition status failed")
            }
        }
    }
    for name in plan.deleting {
        let newly = follower
            .cleaning
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone());
        if newly {
            spawn_cleanup(state.clone(), name);
        }
    }
}

/// Deletes every custom resource of CRD `name`, then its finalizer; retried until done.
fn spawn_cleanup(state: AppState, name: String) {
    tokio::spawn(async move {
        let shutdown = state.inner.shutdown.clone();
        let mut backoff = Duration::from_millis(200);
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                result = cleanup(&state, &name) => result,
            };
            match result {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(crd = %name, error = %e, "deleting custom resources failed; retrying")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        state
            .inner
            .crds
            .cleaning
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name);
    });
}

/// One round of cleanup: `true` once the CRD is gone or no longer being deleted.
async fn cleanup(state: &AppState, name: &str) -> Result<bool, ApiError> {
    let key = CUSTOM_RESOURCE_DEFINITION.storage_key(None, name);
    let store = state.store();
    let Some(kv) = store.get(&key).await? else {
        return Ok(true);
    };
    let crd = decode(&kv)?;
    if meta_str(&crd, "deletionTimestamp").is_none() {
        return Ok(true);
    }
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let served = state.served();
    let rt = served
        .types()
        .iter()
        .copied()
        .find(|t| t.group == group && t.plural == plural);
    let prefix = format!("/registry/{group}/{plural}/");
    let remaining = store.list(&prefix).await?.items;
    for item in &remaining {
        delete_one(state, rt, item).await?;
    }
    if !remaining.is_empty() {
        return Ok(false);
    }
    // Stop serving before the definition goes, so nobody who saw it gone still finds its
    // resource here.
    state.inner.served.withdraw(group, plural);
    let mut next = crd.clone();
    let left: Vec<String> = finalizers(&crd)
        .into_iter()
        .filter(|f| f != CLEANUP_FINALIZER)
        .collect();
    let result = if left.is_empty() {
        store.delete(&key, Some(kv.mod_revision)).await.map(drop)
    } else {
        metadata_mut(&mut next).insert("finalizers".into(), json!(left));
        store
            .update(&key, encode(&mut next), Some(kv.mod_revision))
            .await
            .map(drop)
    };
    match result {
        Ok(()) => {
            tracing::info!(crd = %name, "custom resources deleted; CustomResourceDefinition finalized");
            Ok(true)
        }
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(StoreError::NotFound(_)) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Deletes one custom resource: through the ordinary delete when its type is served (its
/// finalizers are honoured), else its key (a CRD that never served cannot have finalizers
/// that anyone would remove).
async fn delete_one(
    state: &AppState,
    rt: Option<&'static ResourceType>,
    kv: &KeyValue,
) -> Result<(), ApiError> {
    let obj = decode(kv)?;
    if meta_str(&obj, "deletionTimestamp").is_some() {
        return Ok(());
    }
    let Some(rt) = rt else {
        return match state.store().delete(&kv.key, Some(kv.mod_revision)).await {
            Ok(_) | Err(StoreError::NotFound(_) | StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        };
    };
    let name = crate::object::name(&obj).to_string();
    let namespace = meta_str(&obj, "namespace").map(str::to_string);
    let ctx = Ctx::internal(state.clone(), rt, namespace, Some(name.clone()));
    match delete(&ctx, &name, &DeleteOptions::default()).await {
        Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn crd(name: &str, kind: &str, created: &str) -> Value {
        let (plural, group) = name.split_once('.').unwrap();
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "kind": kind},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]
            }
        })
    }

    fn status_of<'a>(plan: &'a Plan, name: &str) -> &'a Value {
        &plan
            .status
            .iter()
            .find(|(_, _, v)| crate::object::name(v) == name)
            .unwrap()
            .2["status"]
    }

    #[test]
    fn the_oldest_definition_keeps_contested_names() {
        let mut crds = Crds::new();
        crds.insert(
            "a".into(),
            (crd("crabs.sea.example", "Crab", "2026-01-01T00:00:00Z"), 1),
        );
        crds.insert(
            "b".into(),
            (crd("krabs.sea.example", "Crab", "2026-01-02T00:00:00Z"), 2),
        );
        let plan = plan(&crds);
        assert_eq!(plan.served.len(), 1);
        assert_eq!(plan.served[0].plural, "crabs");
        let young = status_of(&plan, "krabs.sea.example");
        assert_eq!(young["conditions"][0]["status"], "False");
        assert_eq!(young["conditions"][0]["reason"], "KindConflict");
        let old = status_of(&plan, "crabs.sea.example");
        assert_eq!(old["conditions"][1]["type"], "Established");
        assert_eq!(old["conditions"][1]["status"], "True");
        assert_eq!(old["storedVersions"], json!(["v1"]));
        assert_eq!(old["acceptedNames"]["listKind"], "CrabList");
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let mut crds = Crds::new();
        crds.insert(
            "a".into(),
            (crd("crabs.sea.example", "Crab", "2026-01-01T00:00:00Z"), 1),
        );
        let first = plan(&crds);
        let (_, _, written) = first.status.into_iter().next().unwrap();
        crds.insert("a".into(), (written, 2));
        assert!(plan(&crds).status.is_empty());
    }
}
