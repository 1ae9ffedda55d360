//! DefaultPreemption, the PostFilter: when a pod fits nowhere, find the node where removing
//! the fewest and least important lower-priority pods lets it fit, as kube-scheduler does.
//!
//! On each node that Filter rejected as `Unschedulable` (never `UnschedulableAndUnresolvable`),
//! every pod of lower priority is removed in a what-if; if the pod then fits, victims are
//! reprieved one by one, most important first (those whose eviction would break a
//! PodDisruptionBudget before the others), keeping each one the pod still fits beside. The
//! node is chosen by, in order: fewest PodDisruptionBudget violations, lowest
//! highest-victim priority, lowest sum of victim priorities, fewest victims, the latest
//! start among the highest-priority victims, and name. The driver then deletes the victims
//! and records the pod's `status.nominatedNodeName`. Pure, like the rest of the decision.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::framework::{FitError, Framework, NodeView, PodView, histogram};
use crate::snapshot::{PodInfo, Snapshot, nominated_node};

/// Where the pod goes once its victims are gone.
#[derive(Clone, Debug)]
pub struct Preemption {
    /// The nominated node.
    pub node: String,
    /// Pods to delete, most important first.
    pub victims: Vec<Arc<PodInfo>>,
    /// Lower-priority pods nominated to the same node, whose nomination is withdrawn.
    pub lower_nominated: Vec<String>,
}

/// At most this many candidate nodes are evaluated (kube-scheduler's
/// `minCandidateNodesAbsolute`), or 10 % of the nodes when that is more.
const MIN_CANDIDATES: usize = 100;

#[derive(Debug)]
struct Candidate {
    node: String,
    victims: Vec<Arc<PodInfo>>,
    violations: usize,
}

/// Runs preemption for a pod that failed with `fit`; the `Err` message is appended to the
/// pod's unschedulable message.
pub fn preempt(
    framework: &Framework,
    snapshot: &Snapshot,
    pod: &Pod,
    fit: &FitError,
) -> Result<Preemption, String> {
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    if spec.preemption_policy.as_deref() == Some("Never") {
        return Err("preemption: not eligible due to preemptionPolicy=Never.".into());
    }
    let info = PodInfo::from_pod(pod);
    // Victims of an earlier preemption are still leaving the nominated node: wait for them
    // rather than evicting more, unless that node cannot take the pod any more anyway.
    if let Some(name) = nominated_node(pod)
        && fit.preemptible_nodes.iter().any(|n| n == name)
        && snapshot.node(name).is_some_and(|node| {
            node.pods
                .values()
                .any(|p| p.preempted && p.priority < info.priority)
        })
    {
        return Err(
            "preemption: not eligible due to a terminating pod on the nominated node.".into(),
        );
    }
    let view = PodView {
        pod,
        spec,
        info: &info,
    };
    let num_nodes = fit.num_nodes;
    let not_helpful = num_nodes.saturating_sub(fit.preemptible_nodes.len());
    let fail = |no_victims: usize| {
        let mut reasons = BTreeMap::new();
        if no_victims > 0 {
            reasons.insert(
                "No preemption victims found for incoming pod".to_owned(),
                no_victims,
            );
        }
        if not_helpful > 0 {
            reasons.insert(
                "Preemption is not helpful for scheduling".to_owned(),
                not_helpful,
            );
        }
        format!(
            "preemption: 0/{num_nodes} nodes are available: {}.",
            histogram(&reasons)
        )
    };
    if fit.pre_filter_message.is_some() {
        return Err(fail(0));
    }
    let Ok((state, run_filter)) = framework.pre_filter(snapshot, &view) else {
        return Err(fail(0));
    };
    let limit = (fit.preemptible_nodes.len() / 10).max(MIN_CANDIDATES);
    let pdbs: Vec<_> = snapshot.pdbs().collect();
    let mut candidates = Vec::new();
    let mut no_victims = 0;
    for name in &fit.preemptible_nodes {
        // Enough candidates, one of which breaks no budget (else keep looking for one).
        if candidates.len() >= limit && candidates.iter().any(|c: &Candidate| c.violations == 0) {
            break;
        }
        let Some(entry) = snapshot.node(name) else {
            continue;
        };
        let Some(node_info) = &entry.info else {
            continue;
        };
        let mut lower: Vec<Arc<PodInfo>> = entry
            .pods
            .values()
            .filter(|p| p.priority < info.priority)
            .cloned()
            .collect();
        if lower.is_empty() {
            no_victims += 1;
            continue;
        }
        // Most important first: higher priority, then started earlier.
        lower.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.start_time.cmp(&b.start_time))
        });
        let mut what_if = entry.clone();
        let mut what_if_state = state.clone();
        for victim in &lower {
            what_if.remove_pod(&victim.key);
            let node = NodeView {
                name,
                info: node_info,
                entry: &what_if,
            };
            framework.remove_pod(&mut what_if_state, &view, victim, &node);
        }
        let node = NodeView {
            name,
            info: node_info,
            entry: &what_if,
        };
        if !framework
            .filter_with_nominated(snapshot, &what_if_state, &run_filter, &view, &node)
            .is_success()
        {
            no_victims += 1;
            continue;
        }
        // Budgets each pod's eviction would use, in order: the ones that break one go first.
        let mut allowed: Vec<i64> = pdbs
            .iter()
            .map(|p| i64::from(p.disruptions_allowed))
            .collect();
        let (violating, fine): (Vec<_>, Vec<_>) = lower.into_iter().partition(|p| {
            let mut breaks = false;
            for (i, pdb) in pdbs.iter().enumerate() {
                if pdb.covers(p) {
                    allowed[i] -= 1;
                    breaks |= allowed[i] < 0;
                }
            }
            breaks
        });
        let mut victims = Vec::new();
        let mut violations = 0;
        for (group, breaks) in [(violating, true), (fine, false)] {
            for pod_info in group {
                what_if.add_pod(pod_info.clone());
                let node = NodeView {
                    name,
                    info: node_info,
                    entry: &what_if,
                };
                framework.add_pod(&mut what_if_state, &view, &pod_info, &node);
                if framework
                    .filter_with_nominated(snapshot, &what_if_state, &run_filter, &view, &node)
                    .is_success()
                {
                    continue;
                }
                what_if.remove_pod(&pod_info.key);
                let node = NodeView {
                    name,
                    info: node_info,
                    entry: &what_if,
                };
                framework.remove_pod(&mut what_if_state, &view, &pod_info, &node);
                violations += usize::from(breaks);
                victims.push(pod_info);
            }
        }
        if victims.is_empty() {
            // It fits without evicting anyone: nothing preemption should do here.
            no_victims += 1;
            continue;
        }
        victims.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.start_time.cmp(&b.start_time))
        });
        candidates.push(Candidate {
            node: name.clone(),
            victims,
            violations,
        });
    }
    let best = candidates.into_iter().min_by(|a, b| {
        let highest = |c: &Candidate| c.victims.first().map_or(i32::MIN, |v| v.priority);
        let sum = |c: &Candidate| -> i64 {
            c.victims
                .iter()
                .map(|v| i64::from(v.priority) + i64::from(i32::MAX) + 1)
                .sum()
        };
        // The earliest start among the highest-priority victims; later is better.
        let earliest = |c: &Candidate| {
            let top = highest(c);
            c.victims
                .iter()
                .filter(|v| v.priority == top)
                .map(|v| v.start_time.clone())
                .min()
                .unwrap_or_default()
        };
        a.violations
            .cmp(&b.violations)
            .then_with(|| highest(a).cmp(&highest(b)))
            .then_with(|| sum(a).cmp(&sum(b)))
            .then_with(|| a.victims.len().cmp(&b.victims.len()))
            .then_with(|| earliest(b).cmp(&earliest(a)))
            .then_with(|| a.node.cmp(&b.node))
    });
    match best {
        Some(best) => Ok(Preemption {
            lower_nominated: snapshot.lower_nominated(&best.node, info.priority),
            node: best.node,
            victims: best.victims,
        }),
        None => Err(fail(no_victims)),
    }
}
