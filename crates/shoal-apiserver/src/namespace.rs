//! Namespace deletion, the apiserver's half: a deleted Namespace turns `Terminating`
//! (deletionTimestamp, `status.phase`) and stays while its `spec.finalizers` holds anything:
//! the namespace controller (in the controller manager) empties it and then removes
//! `kubernetes` through the `finalize` subresource, whose update deletes the Namespace once
//! nothing holds it. A Namespace without finalizers goes at once. Nothing can be created in a
//! terminating namespace (`resources/write.rs`).

use serde_json::{Value, json};
use shoal_store::StoreError;

use crate::api::kinds::core::namespace::NAMESPACE;
use crate::error::ApiError;
use crate::object::{decode, encode, meta_str, metadata_mut, now_rfc3339, set_resource_version};
use crate::resources::{Ctx, completes_deletion};

/// Namespaces that can never be deleted.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Marks namespace `name` as terminating (the namespace controller empties it), or deletes it
/// when nothing holds it; returns the namespace.
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
        let mut rev = kv.mod_revision;
        if meta_str(&ns, "deletionTimestamp").is_none() {
            metadata_mut(&mut ns).insert("deletionTimestamp".into(), json!(now_rfc3339()));
            if let Some(map) = ns.as_object_mut() {
                map.insert("status".into(), json!({"phase": "Terminating"}));
            }
            if ctx.params.dry_run() {
                return Ok(ns);
            }
            match store.update(&key, encode(&mut ns), Some(rev)).await {
                Ok(written) => {
                    rev = written.mod_revision;
                    set_resource_version(&mut ns, rev);
                    tracing::info!(namespace = %name, "namespace terminating");
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, ctx.target.subject(name))),
            }
        }
        // Nothing holds it (no finalizers of either kind): it goes now.
        if !ctx.params.dry_run() && completes_deletion(&NAMESPACE, &ns) {
            match store.delete(&key, Some(rev)).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {
                    tracing::info!(namespace = %name, "namespace without finalizers deleted");
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_store(e, ctx.target.subject(name))),
            }
        }
        return Ok(ns);
    }
    Err(ApiError::stale(ctx.target.subject(name)))
}
