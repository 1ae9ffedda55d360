//! NodeResourcesFit (requests against allocatable; LeastAllocated or MostAllocated scoring)
//! and NodeResourcesBalancedAllocation (prefer nodes whose CPU and memory use stay even).

use crate::framework::{
    CycleState, MAX_NODE_SCORE, NodeView, Plugin, PodView, ScoringStrategy, Status,
};
use crate::snapshot::Resources;

/// The NodeResourcesFit plugin.
pub struct NodeResourcesFit {
    /// How fitting nodes are ranked.
    pub strategy: ScoringStrategy,
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> Status {
        let wanted = &pod.info.requests.requests;
        let allocatable = &node.info.allocatable;
        let requested = &node.entry.requested;
        let free = |allocatable: i128, requested: i128| allocatable - requested;
        let mut reasons = Vec::new();
        if wanted.pods > free(allocatable.pods, requested.pods) {
            reasons.push("Too many pods".to_owned());
        }
        if wanted.cpu_millis > 0
            && wanted.cpu_millis > free(allocatable.cpu_millis, requested.cpu_millis)
        {
            reasons.push("Insufficient cpu".to_owned());
        }
        if wanted.memory_bytes > 0
            && wanted.memory_bytes > free(allocatable.memory_bytes, requested.memory_bytes)
        {
            reasons.push("Insufficient memory".to_owned());
        }
        if reasons.is_empty() {
            Status::success()
        } else {
            Status {
                code: crate::framework::Code::Unschedulable,
                reasons,
            }
        }
    }

    fn score(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> i64 {
        let shares = shares(&pod.info.requests.scoring, node);
        if shares.is_empty() {
            return 0;
        }
        let count = shares.len() as i64;
        match self.strategy {
            ScoringStrategy::LeastAllocated => {
                shares.iter().map(|used| MAX_NODE_SCORE - used).sum::<i64>() / count
            }
            ScoringStrategy::MostAllocated => shares.iter().sum::<i64>() / count,
        }
    }
}

/// The used share (0..=100) of CPU and memory after placing, for each the node has any of
/// (a resource with nothing allocatable does not count, as upstream skips it).
fn shares(wanted: &Resources, node: &NodeView) -> Vec<i64> {
    let allocatable = &node.info.allocatable;
    let scoring = &node.entry.scoring;
    [
        (
            allocatable.cpu_millis,
            scoring.cpu_millis + wanted.cpu_millis,
        ),
        (
            allocatable.memory_bytes,
            scoring.memory_bytes + wanted.memory_bytes,
        ),
    ]
    .into_iter()
    .filter(|(capacity, _)| *capacity > 0)
    .map(|(capacity, used)| {
        let used = used.clamp(0, capacity);
        i64::try_from(used * i128::from(MAX_NODE_SCORE) / capacity).unwrap_or(MAX_NODE_SCORE)
    })
    .collect()
}

/// The NodeResourcesBalancedAllocation plugin: `(1 - |cpu - memory| / 2) * 100` of the
/// fractions in use after placing (the standard deviation of two values).
pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn score(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> i64 {
        match shares(&pod.info.requests.scoring, node).as_slice() {
            [cpu, memory] => MAX_NODE_SCORE - (cpu - memory).abs() / 2,
            _ => MAX_NODE_SCORE,
        }
    }
}
