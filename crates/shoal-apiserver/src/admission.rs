//! Admission that reads other objects, run on create after defaulting and the kind's own
//! `Strategy::admit_create` (which sees only the object). Each plugin says which kinds it
//! applies to, as kube-apiserver's admission plugins do.
//!
//! - **Priority** (pods): `spec.priorityClassName` resolves to `spec.priority` and
//!   `spec.preemptionPolicy` from the PriorityClass; without a name, the class marked
//!   `globalDefault` applies, if any; a name that does not exist is refused with 403.

use serde_json::{Value, json};
use shoal_api::kinds::core::pod::POD;
use shoal_api::kinds::scheduling::PRIORITY_CLASS;
use shoal_api::registry::ResourceType;

use crate::AppState;
use crate::error::ApiError;
use crate::object::{self, decode};

/// Runs every plugin that applies to `rt` on the object about to be created.
pub(crate) async fn admit_create(
    state: &AppState,
    rt: &'static ResourceType,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if std::ptr::eq(rt, &POD) {
        priority(state, obj).await?;
    }
    Ok(())
}

async fn priority(state: &AppState, pod: &mut Value) -> Result<(), ApiError> {
    let named = pod
        .pointer("/spec/priorityClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let class = match &named {
        Some(name) => {
            let key = PRIORITY_CLASS.storage_key(None, name);
            match state.store().get(&key).await? {
                Some(kv) => Some(decode(&kv)?),
                None => {
                    return Err(ApiError::Forbidden(format!(
                        "pods \"{}\" is forbidden: no PriorityClass with name {name} was found",
                        object::name(pod)
                    )));
                }
            }
        }
        None => {
            let list = state.store().list(&PRIORITY_CLASS.storage_prefix()).await?;
            let mut default = None;
            for kv in &list.items {
                let class = decode(kv)?;
                let is_default = class.get("globalDefault").and_then(Value::as_bool) == Some(true);
                // Of several defaults, the lowest value wins, as upstream picks.
                let value = class.get("value").and_then(Value::as_i64).unwrap_or(0);
                if is_default
                    && default.as_ref().is_none_or(|d: &Value| {
                        d.get("value").and_then(Value::as_i64).unwrap_or(0) > value
                    })
                {
                    default = Some(class);
                }
            }
            default
        }
    };
    let Some(class) = class else {
        return Ok(());
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let value = class.get("value").and_then(Value::as_i64).unwrap_or(0);
    spec.insert("priority".into(), json!(value));
    if named.is_none()
        && let Some(name) = class.pointer("/metadata/name")
    {
        spec.insert("priorityClassName".into(), name.clone());
    }
    let policy = class
        .get("preemptionPolicy")
        .cloned()
        .unwrap_or_else(|| json!("PreemptLowerPriority"));
    spec.insert("preemptionPolicy".into(), policy);
    Ok(())
}
