//! NodeAffinity: `nodeSelector` and required node affinity filter nodes; preferred terms add
//! their weights to the score of the nodes they match.

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

use crate::framework::{CycleState, NodeView, Plugin, PodView, Status, default_normalize};
use crate::snapshot::NodeInfo;

/// The NodeAffinity plugin.
pub struct NodeAffinity;

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn pre_filter(&self, _: &mut CycleState, _: &crate::Snapshot, pod: &PodView) -> Status {
        let required = pod
            .spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .is_some_and(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .is_some()
            });
        if required
            || pod
                .spec
                .node_selector
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        {
            Status::success()
        } else {
            Status::skip()
        }
    }

    fn filter(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> Status {
        if matches_node_selector(pod.spec, node.name, node.info) {
            Status::success()
        } else {
            Status::unresolvable("node(s) didn't match Pod's node affinity/selector")
        }
    }

    fn pre_score(
        &self,
        _: &mut CycleState,
        _: &crate::Snapshot,
        pod: &PodView,
        _: &[NodeView],
    ) -> Status {
        if preferred(pod.spec).is_empty() {
            Status::skip()
        } else {
            Status::success()
        }
    }

    fn score(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> i64 {
        preferred(pod.spec)
            .iter()
            .filter(|p| matches_term(&p.preference, node.name, node.info))
            .map(|p| i64::from(p.weight))
            .sum()
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        default_normalize(scores, false);
    }
}

fn preferred(spec: &PodSpec) -> &[k8s_openapi::api::core::v1::PreferredSchedulingTerm] {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

/// Whether a node satisfies the pod's `nodeSelector` and required node affinity.
pub fn matches_node_selector(spec: &PodSpec, node_name: &str, info: &NodeInfo) -> bool {
    if let Some(selector) = &spec.node_selector
        && !selector
            .iter()
            .all(|(k, v)| info.labels.get(k).is_some_and(|have| have == v))
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
            .any(|term| matches_term(term, node_name, info)),
    }
}

fn matches_term(term: &NodeSelectorTerm, node_name: &str, info: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| matches_requirement(r, info.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(node_name);
            matches_requirement(r, value)
        })
}

fn matches_requirement(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
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
