//! Taints and tolerations: the well-known taint keys and Kubernetes' `ToleratesTaint`, shared
//! by the scheduler (which nodes a pod may land on) and the controllers (which pods a
//! `NoExecute` taint evicts, and when).

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// A node whose agent reports `Ready=False`.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// A node whose agent stopped renewing its Lease (`Ready=Unknown`).
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// A cordoned node (`spec.unschedulable`).
pub const UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Set by an administrator on a node known to be down for good: its terminating pods are
/// removed without waiting for the agent.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

/// Kubernetes' `ToleratesTaint`: effect (if set) and key (if set) must match; `Exists`
/// ignores the value, `Equal` (the default) compares it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    if let Some(key) = toleration.key.as_deref().filter(|k| !k.is_empty())
        && key != taint.key
    {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}
