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
        let free = |allocatable: i64, requested: i64| allocatable.saturating_sub(requested);
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
        let (cpu, memory) = fractions(&pod.info.requests.scoring, node);
        let least = (cpu.free + memory.free) / 2;
        match self.strategy {
            ScoringStrategy::LeastAllocated => least,
            ScoringStrategy::MostAllocated => (cpu.used + memory.used) / 2,
        }
    }
}

/// A resource's use after placing, in 0..=100, as used and free shares.
struct Share {
    used: i64,
    free: i64,
}

fn share(capacity: i64, used: i64) -> Share {
    if capacity <= 0 || used >= capacity {
        return Share {
            used: MAX_NODE_SCORE,
            free: 0,
        };
    }
    let used =
        i64::try_from(i128::from(used.max(0)) * i128::from(MAX_NODE_SCORE) / i128::from(capacity))
            .unwrap_or(MAX_NODE_SCORE);
    Share {
        used,
        free: MAX_NODE_SCORE - used,
    }
}

fn fractions(wanted: &Resources, node: &NodeView) -> (Share, Share) {
    let allocatable = &node.info.allocatable;
    let scoring = &node.entry.scoring;
    (
        share(
            allocatable.cpu_millis,
            scoring.cpu_millis.saturating_add(wanted.cpu_millis),
        ),
        share(
            allocatable.memory_bytes,
            scoring.memory_bytes.saturating_add(wanted.memory_bytes),
        ),
    )
}

/// The NodeResourcesBalancedAllocation plugin: `(1 - |cpu - memory| / 2) * 100` of the
/// fractions in use after placing (the standard deviation of two values).
pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn score(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> i64 {
        let (cpu, memory) = fractions(&pod.info.requests.scoring, node);
        MAX_NODE_SCORE - (cpu.used - memory.used).abs() / 2
    }
}
