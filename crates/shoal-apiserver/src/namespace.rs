//! Namespace deletion: a deleted Namespace turns `Terminating` (deletionTimestamp,
//! `status.phase`), a task owned by the server's shutdown token deletes everything in it with
//! the ordinary delete semantics (bound pods still get their grace period from the node agent)
//! and removes the Namespace once nothing is left. Failures are retried with backoff until
//! done or shutdown; interrupted terminations resume at start.

use std::time::Duration;

use serde_json::{Value, json};
use shoal_store::StoreError;

use crate::AppState;
use crate::api::kinds::core::namespace::NAMESPACE;
use crate::error::ApiError;
use crate::object::{decode, encode, meta_str, metadata_mut, now_rfc3339, set_resource_version};
use crate::resources::{Ctx, DeleteOptions, delete};

/// Namespaces that can never be deleted.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Marks namespace `name` as terminating and starts emptying it; returns the namespace.
pub async fn terminate(ctx: &Ctx, name: &str) -> Result<Value, ApiError> {
    // As Kubernetes' NamespaceLifecycle admission: these are immortal.
    if IMMORTAL_NAMESPACES.contains(&name) {
        return Err(ApiError::Forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    let key = NAMESPACE.storage_key(None, name);
    let store = ctx.state.store();
    for _ in 0..32 {
        let kv = store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::NotFound(ctx.target.subject(name)))?;
        let mut ns = decode(&kv)?;
        if meta_str(&ns, "deletionTimestamp").is_some() {
            return Ok(ns);
        }
        metadata_mut(&mut ns).insert("deletionTimestamp".into(), json!(now_rfc3339()));
        if let Some(map) = ns.as_object_mut() {
            map.insert("status".into(), json!({"phase": "Terminating"}));
        }
        if ctx.params.dry_run() {
            return Ok(ns);
        }
        match store
            .update(&key, encode(&mut ns), Some(kv.mod_revision))
            .await
        {
            Ok(written) => {
                set_resource_version(&mut ns, written.mod_revision);
                tracing::info!(namespace = %name, "namespace terminating");
                spawn_finalizer(ctx.state.clone(), name.to_string());
                return Ok(ns);
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, ctx.target.subject(name))),
        }
    }
    Err(ApiError::stale(ctx.target.subject(name)))
}

/// Restarts the finalizer of every namespace left terminating by a previous run.
pub async fn resume(state: &AppState) {
    let Ok(list) = state.store().list(&NAMESPACE.storage_prefix()).await else {
        return;
    };
    for kv in &list.items {
        if let Ok(ns) = decode(kv)
            && meta_str(&ns, "deletionTimestamp").is_some()
        {
            spawn_finalizer(state.clone(), crate::object::name(&ns).to_string());
        }
    }
}

/// First and largest pause before the finalizer retries after a failure.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Empties and removes namespace `name` in a task that retries failures (backing off from
/// `RETRY_FIRST` to `RETRY_MAX`) until it is done or the server shuts down.
fn spawn_finalizer(state: AppState, name: String) {
    let shutdown = state.inner.shutdown.clone();
    tokio::spawn(async move {
        let mut backoff = RETRY_FIRST;
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = finalize(&state, &name) => result,
            };
            let Err(e) = result else {
                return;
            };
            tracing::warn!(
                namespace = %name,
                error = %e,
                retry_in_secs = backoff.as_secs(),
                "namespace finalizer failed, retrying"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    });
}

async fn finalize(state: &AppState, name: &str) -> Result<(), ApiError> {
    let store = state.store();
    loop {
        let mut remaining = 0usize;
        let served = state.served();
        for rt in served.types().iter().copied().filter(|t| t.namespaced) {
            let prefix = format!("{}{name}/", rt.storage_prefix());
            for kv in store.list(&prefix).await?.items {
                remaining += 1;
                let obj = decode(&kv)?;
                if meta_str(&obj, "deletionTimestamp").is_some() {
                    continue;
                }
                let object_name = crate::object::name(&obj).to_string();
                let ctx = Ctx::internal(
                    state.clone(),
                    rt,
                    Some(name.to_string()),
                    Some(object_name.clone()),
                );
                match delete(&ctx, &object_name, &DeleteOptions::default()).await {
                    Ok(_) | Err(ApiError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if remaining == 0 {
            let key = NAMESPACE.storage_key(None, name);
            match store.delete(&key, None).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {
                    tracing::info!(namespace = %name, "namespace deleted");
                    return Ok(());
                }
                Err(e) => {
                    return Err(ApiError::from_store(
                        e,
                        crate::error::Subject::new(&NAMESPACE, name),
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
