//! The namespace controller (kube-controller-manager's `namespace-controller`): empties a
//! namespace being deleted, then releases it.
//!
//! The apiserver marks a deleted Namespace `Terminating` and keeps it while its
//! `spec.finalizers` holds `kubernetes`. For each such namespace this controller deletes every
//! object of every namespaced kind discovery says can be listed and deleted (custom resources
//! and Events included; `deletecollection` where the kind has it), the ordinary way, so bound
//! pods still get their grace period from their agent. What is left is reported in the
//! `NamespaceContentRemaining` condition (`NamespaceDeletionContentFailure` for kinds it could
//! not empty); once nothing is left it removes `kubernetes` through the `finalize`
//! subresource and the apiserver deletes the Namespace. It requeues until done, so a
//! restarted controller manager resumes an interrupted deletion. [`conditions`] is the
//! status it reports.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::{Scope, verbs};
use kube::runtime::controller::Action;
use serde_json::json;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Error;

/// The finalizer the apiserver puts in every Namespace's `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";
/// How long a discovery result is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(10);
/// How soon a namespace with content left is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// A namespaced kind to empty.
#[derive(Clone, Debug)]
struct Kind {
    resource: ApiResource,
    collection: bool,
}

/// What the controller works with.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    discovery: Mutex<Option<(Instant, Arc<Vec<Kind>>)>>,
}

impl Context {
    /// A context over `client`.
    pub fn new(client: kube::Client) -> Context {
        Context {
            client,
            discovery: Mutex::new(None),
        }
    }

    /// The namespaced kinds to empty, from a discovery at most [`DISCOVERY_TTL`] old.
    async fn kinds(&self) -> Result<Arc<Vec<Kind>>, kube::Error> {
        {
            let cached = self
                .discovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some((at, kinds)) = cached.as_ref()
                && at.elapsed() < DISCOVERY_TTL
            {
                return Ok(Arc::clone(kinds));
            }
        }
        let discovery = kube::Discovery::new(self.client.clone())
            .run_aggregated()
            .await?;
        let mut kinds = Vec::new();
        for group in discovery.groups() {
            for (resource, caps) in group.recommended_resources() {
                if caps.scope != Scope::Namespaced
                    || !caps.supports_operation(verbs::LIST)
                    || !caps.supports_operation(verbs::DELETE)
                {
                    continue;
                }
                let collection = caps.supports_operation(verbs::DELETE_COLLECTION);
                kinds.push(Kind {
                    resource,
                    collection,
                });
            }
        }
        let kinds = Arc::new(kinds);
        *self
            .discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), Arc::clone(&kinds)));
        Ok(kinds)
    }
}

/// What one pass over a namespace found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Objects left per resource (`pods`, `widgets.example.com`), sorted.
    pub objects: Vec<(String, usize)>,
    /// Resources that could not be emptied, with why.
    pub failures: Vec<(String, String)>,
}

/// The `status.conditions` upstream reports on a terminating namespace.
pub fn conditions(remaining: &Remaining, now: Timestamp) -> serde_json::Value {
    let condition = |kind: &str, active: bool, reason: &str, message: String| {
        json!({
            "type": kind,
            "status": if active { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "lastTransitionTime": Time(now),
        })
    };
    let content = if remaining.objects.is_empty() {
        condition(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
        )
    } else {
        let counts: Vec<String> = remaining
            .objects
            .iter()
            .map(|(resource, n)| format!("{resource} has {n} resource instances"))
            .collect();
        condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", counts.join(", ")),
        )
    };
    let failure = if remaining.failures.is_empty() {
        condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
        )
    } else {
        let failed: Vec<String> = remaining
            .failures
            .iter()
            .map(|(resource, why)| format!("{resource}: {why}"))
            .collect();
        condition(
            "NamespaceDeletionContentFailure",
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                failed.len(),
                failed.join(", ")
            ),
        )
    };
    json!([content, failure])
}

/// Whether the namespace already carries `wanted` (type, status, reason and message).
fn reported(namespace: &Namespace, wanted: &serde_json::Value) -> bool {
    let current = namespace
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    wanted.as_array().into_iter().flatten().all(|want| {
        current.iter().any(|c| {
            want["type"] == c.type_.as_str()
                && want["status"] == c.status.as_str()
                && want["reason"].as_str() == c.reason.as_deref()
                && want["message"].as_str() == c.message.as_deref()
        })
    })
}

fn resource_name(resource: &ApiResource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

/// Deletes what is in `namespace` of `kind`; returns how many objects are left.
async fn empty(client: &kube::Client, namespace: &str, kind: &Kind) -> Result<usize, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &kind.resource);
    let gone = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 405);
    if kind.collection {
        match api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if gone(&e) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
    let left = match api.list_metadata(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) if gone(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    if !kind.collection {
        for object in left
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
        {
            let name = object.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(left.len())
}

/// Empties a terminating namespace and releases it once empty.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let holds = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    if namespace.metadata.deletion_timestamp.is_none() || !holds {
        return Ok(Action::await_change());
    }
    let name = namespace.metadata.name.clone().unwrap_or_default();
    let kinds = ctx.kinds().await?;
    let mut remaining = Remaining::default();
    for kind in kinds.iter() {
        match empty(&ctx.client, &name, kind).await {
            Ok(0) => {}
            Ok(n) => remaining.objects.push((resource_name(&kind.resource), n)),
            Err(error) => {
                debug!(namespace = %name, resource = %resource_name(&kind.resource), %error, "cannot empty");
                remaining
                    .failures
                    .push((resource_name(&kind.resource), error.to_string()));
            }
        }
    }
    remaining.objects.sort();
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    if !remaining.objects.is_empty() || !remaining.failures.is_empty() {
        let wanted = conditions(&remaining, Timestamp::now());
        // Written only when they say something new (their transition time stays put).
        if !reported(&namespace, &wanted) {
            let patch = json!({"status": {"conditions": wanted}});
            if let Err(error) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
            {
                debug!(namespace = %name, %error, "cannot report remaining content");
            }
        }
        return Ok(Action::requeue(RECHECK));
    }
    let mut released = (*namespace).clone();
    if let Some(spec) = released.spec.as_mut() {
        spec.finalizers = spec
            .finalizers
            .take()
            .map(|f| f.into_iter().filter(|f| f != FINALIZER).collect());
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &released)
        .await
    {
        Ok(_) => info!(namespace = %name, "namespace emptied and finalized"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(error) => return Err(error.into()),
    }
    Ok(Action::await_change())
}

/// Retries a failed pass after a pause (conflicts sooner).
pub fn error_policy(namespace: Arc<Namespace>, error: &Error, _: Arc<Context>) -> Action {
    if error.is_conflict() {
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(namespace = ?namespace.metadata.name, %error, "namespace deletion pass failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_what_is_left() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let left = Remaining {
            objects: vec![("pods".into(), 2), ("widgets.example.com".into(), 1)],
            failures: vec![("secrets".into(), "forbidden".into())],
        };
        let c = conditions(&left, now);
        assert_eq!(c[0]["status"], "True");
        assert_eq!(
            c[0]["message"],
            "Some resources are remaining: pods has 2 resource instances, widgets.example.com has 1 resource instances"
        );
        assert_eq!(c[1]["status"], "True");
        assert_eq!(
            c[1]["message"],
            "Failed to delete all resource types, 1 remaining: secrets: forbidden"
        );
        let done = conditions(&Remaining::default(), now);
        assert_eq!(done[0]["status"], "False");
        assert_eq!(done[1]["status"], "False");
        // Once reported, the same conditions are not written again.
        let mut ns = Namespace::default();
        assert!(!reported(&ns, &c));
        ns.status = Some(serde_json::from_value(json!({"conditions": c})).expect("status"));
        assert!(reported(
            &ns,
            &conditions(&left, "2026-01-01T00:01:00Z".parse().expect("time"))
        ));
        assert!(!reported(&ns, &done));
    }
}
