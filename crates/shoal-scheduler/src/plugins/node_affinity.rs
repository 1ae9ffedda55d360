//! NodeAffinity: `nodeSelector` and required node affinity filter nodes; preferred terms add
//! their weights to the score of the nodes they match.

use k8s_openapi::api::core::v1::{NodeSelectorTerm, PodSpec};

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
    shoal_api::node_selector::matches(spec, node_name, &info.labels)
}

fn matches_term(term: &NodeSelectorTerm, node_name: &str, info: &NodeInfo) -> bool {
    shoal_api::node_selector::matches_term(term, node_name, &info.labels)
}
