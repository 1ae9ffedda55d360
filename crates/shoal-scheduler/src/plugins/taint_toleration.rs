//! TaintToleration: a node's `NoSchedule` and `NoExecute` taints reject pods that do not
//! tolerate them; untolerated `PreferNoSchedule` taints lower the score.

use crate::framework::{CycleState, NodeView, Plugin, PodView, Status, default_normalize};
use crate::schedule::tolerates;

/// The TaintToleration plugin.
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> Status {
        let tolerations = pod.spec.tolerations.as_deref().unwrap_or_default();
        match node
            .info
            .taints
            .iter()
            .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
        {
            None => Status::success(),
            Some(taint) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or_default()
            )),
        }
    }

    fn pre_score(
        &self,
        _: &mut CycleState,
        _: &crate::Snapshot,
        _: &PodView,
        nodes: &[NodeView],
    ) -> Status {
        if nodes.iter().any(|n| !n.info.soft_taints.is_empty()) {
            Status::success()
        } else {
            Status::skip()
        }
    }

    fn score(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> i64 {
        // Only tolerations with effect PreferNoSchedule or none count here.
        let tolerations: Vec<_> = pod
            .spec
            .tolerations
            .iter()
            .flatten()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                )
            })
            .collect();
        node.info
            .soft_taints
            .iter()
            .filter(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
            .count() as i64
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        default_normalize(scores, true);
    }
}
