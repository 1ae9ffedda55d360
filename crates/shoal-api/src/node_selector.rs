//! Which nodes a pod spec selects: `nodeSelector` and required node affinity, as Kubernetes'
//! `nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)` decides. Shared by the scheduler
//! (NodeAffinity filter) and the DaemonSet controller (which nodes should run a daemon pod).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// Nodes label themselves `runtime.shoal.dev/<handler>=true` for each runtime they offer.
pub const RUNTIME_LABEL_PREFIX: &str = "runtime.shoal.dev/";

/// Whether node `node_name` with `labels` satisfies the pod's `nodeSelector` and required
/// node affinity (terms are ORed, a term's requirements ANDed, an empty term matches
/// nothing).
pub fn matches(spec: &PodSpec, node_name: &str, labels: &BTreeMap<String, String>) -> bool {
    if let Some(selector) = &spec.node_selector
        && !selector
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| matches_term(term, node_name, labels)),
    }
}

/// Whether a node matches one node selector term.
pub fn matches_term(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| matches_requirement(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node_name);
            matches_requirement(r, value)
        })
}

/// One requirement against the value of its key (`None`: the key is absent).
pub fn matches_requirement(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}
