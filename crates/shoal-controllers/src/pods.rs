//! Facts about pods and owner references that several controllers share.
//!
//! Pure functions over `k8s-openapi` types (no IO, no clock: callers pass `now`), and the two
//! writes every pod-owning controller makes: claiming pods and deleting them.

use std::sync::Arc;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tracing::info;

/// Not being deleted and not finished (phase Succeeded or Failed).
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// When the pod's Ready condition turned True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (a Ready condition without a transition
/// time counts as ready long enough).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => true,
        Some(Some(since)) => now.as_second() - since.as_second() >= i64::from(min_ready_seconds),
    }
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller owner reference to an object of `kind` in `api_version`.
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Concurrent deletions within one reconcile.
const PARALLEL_DELETES: usize = 32;

/// Adopts the orphans named in `adopt` (adding `owner` to their owner references) and
/// releases the pods named in `release` (removing references to `owner`'s uid); each patch
/// carries the pod's resourceVersion, so a pod that changed meanwhile is left for the next
/// pass (409).
pub async fn claim(
    api: &Api<Pod>,
    pods: &[Arc<Pod>],
    adopt: &[String],
    release: &[String],
    owner: &OwnerReference,
) -> Result<(), kube::Error> {
    let find = |name: &str| {
        pods.iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    };
    for name in adopt {
        if let Some(pod) = find(name) {
            let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
            refs.push(owner.clone());
            let patch = json!({"metadata": {"ownerReferences": refs,
                "resourceVersion": pod.metadata.resource_version}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            info!(owner = %owner.name, kind = %owner.kind, pod = %name, "adopted pod");
        }
    }
    for name in release {
        if let Some(pod) = find(name) {
            let refs: Vec<&OwnerReference> = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|r| r.uid != owner.uid)
                .collect();
            let patch = json!({"metadata": {"ownerReferences": refs,
                "resourceVersion": pod.metadata.resource_version}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            info!(owner = %owner.name, kind = %owner.kind, pod = %name, "released pod");
        }
    }
    Ok(())
}

/// Deletes the pods named in `names`, each guarded by the uid it has in `pods` (a pod made
/// again under the same name is not touched); a pod already gone counts as deleted.
pub async fn delete_pods(
    api: &Api<Pod>,
    pods: &[Arc<Pod>],
    names: &[String],
) -> Vec<(String, Result<(), kube::Error>)> {
    let targets: Vec<(String, Option<String>)> = names
        .iter()
        .map(|name| {
            let uid = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|p| p.metadata.uid.clone());
            (name.clone(), uid)
        })
        .collect();
    stream::iter(targets)
        .map(|(name, uid)| {
            let api = api.clone();
            async move {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid,
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let result = match api.delete(&name, &params).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e),
                };
                (name, result)
            }
        })
        .buffer_unordered(PARALLEL_DELETES)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    #[test]
    fn activity_readiness_and_availability() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("time");
        let ready = pod(json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:30Z"}]}}));
        assert!(is_active(&ready));
        assert!(is_ready(&ready));
        assert!(is_available(&ready, 30, now));
        assert!(!is_available(&ready, 31, now));
        let done = pod(json!({"status": {"phase": "Succeeded"}}));
        assert!(!is_active(&done));
        let deleting = pod(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert!(!is_active(&deleting));
        assert!(!is_ready(&deleting));
    }
}
