//! The ServiceAccount controller (kube-controller-manager's `serviceaccount-controller`):
//! every namespace that is not being deleted has a `default` ServiceAccount, the one every
//! pod names unless it says otherwise. Level-triggered on namespaces; the deletion of a
//! `default` account reconciles its namespace again, so it comes back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{debug, info, warn};

use crate::Error;
use crate::informer::Change;

/// The account every namespace gets.
pub const DEFAULT: &str = "default";

/// What the reconciler needs.
pub struct Context {
    /// The API.
    pub client: kube::Client,
    /// Every ServiceAccount, from the informer.
    pub accounts: Store<ServiceAccount>,
}

/// What to do for a namespace: create its default account or nothing.
pub fn needs_default(namespace: &Namespace, accounts: &Store<ServiceAccount>) -> bool {
    let Some(name) = namespace.metadata.name.as_deref() else {
        return false;
    };
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    !terminating
        && accounts
            .get(&ObjectRef::<ServiceAccount>::new(DEFAULT).within(name))
            .is_none()
}

/// Ensures `namespace` has its `default` ServiceAccount.
pub async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !needs_default(&namespace, &ctx.accounts) {
        return Ok(Action::await_change());
    }
    let name = namespace.metadata.name.clone().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => info!(namespace = %name, "created the default ServiceAccount"),
        // Already there (the informer had not seen it yet), or the namespace is going.
        Err(kube::Error::Api(e)) if matches!(e.code, 409 | 403 | 404) => {
            debug!(namespace = %name, code = e.code, "default ServiceAccount not created");
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

/// Retries failed reconciles after a pause.
pub fn error_policy(namespace: Arc<Namespace>, error: &Error, _: Arc<Context>) -> Action {
    warn!(namespace = ?namespace.metadata.name, %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// A deleted `default` account triggers its namespace.
pub fn trigger_namespace(
    change: Change<ServiceAccount>,
) -> Option<Result<ObjectRef<Namespace>, Infallible>> {
    match change {
        Change::Deleted(sa) if sa.metadata.name.as_deref() == Some(DEFAULT) => sa
            .metadata
            .namespace
            .as_deref()
            .map(|ns| Ok(ObjectRef::new(ns))),
        _ => None,
    }
}
