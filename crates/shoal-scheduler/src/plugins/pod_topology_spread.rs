//! PodTopologySpread: `topologySpreadConstraints` with `whenUnsatisfiable: DoNotSchedule`
//! filter nodes whose domain would exceed `maxSkew` over the least loaded domain (with
//! `minDomains`); `ScheduleAnyway` constraints rank nodes, emptier domains first. Counted
//! pods: in the pod's namespace, not terminating, selected by the constraint (with
//! `matchLabelKeys`), on nodes that have every constraint's topology key and pass
//! `nodeAffinityPolicy` (Honor by default) and `nodeTaintsPolicy` (Ignore by default).
//! kube-scheduler's cluster-level default constraints are not applied.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use shoal_api::selector::{LabelSelector, Operator, Requirement};

use crate::framework::{CycleState, MAX_NODE_SCORE, NodeView, Plugin, PodView, Status};
use crate::plugins::matches_node_selector;
use crate::schedule::tolerates;
use crate::snapshot::{NodeInfo, PodInfo, Snapshot};

/// The PodTopologySpread plugin.
pub struct PodTopologySpread;

#[derive(Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    selector: LabelSelector,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
    /// The incoming pod matches its own selector.
    self_match: i64,
}

#[derive(Clone)]
struct Spread {
    constraints: Vec<Constraint>,
    /// Per constraint: pods counted in each domain (every eligible domain present).
    counts: Vec<HashMap<String, i64>>,
    /// Per constraint: the smallest count (0 below `minDomains` domains).
    minimum: Vec<i64>,
}

#[derive(Clone)]
struct SoftSpread(Spread, Vec<f64>);

fn constraints(pod: &PodView, hard: bool) -> Vec<Constraint> {
    pod.spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .filter(|c| (c.when_unsatisfiable == "DoNotSchedule") == hard)
        .map(|c| constraint(c, pod.info))
        .collect()
}

fn constraint(c: &TopologySpreadConstraint, pod: &PodInfo) -> Constraint {
    // A missing or empty selector selects nothing (upstream counts no pod for it): a
    // requirement no label can meet.
    let nothing = || LabelSelector {
        requirements: vec![Requirement {
            key: String::new(),
            operator: Operator::In,
            values: Vec::new(),
        }],
    };
    let mut selector = c
        .label_selector
        .as_ref()
        .and_then(|s| LabelSelector::from_api(s).ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(nothing);
    for key in c.match_label_keys.iter().flatten() {
        if let Some(value) = pod.labels.get(key) {
            selector.requirements.push(Requirement {
                key: key.clone(),
                operator: Operator::In,
                values: vec![value.clone()],
            });
        }
    }
    let self_match = i64::from(selector.matches(&pod.labels));
    Constraint {
        max_skew: i64::from(c.max_skew.max(1)),
        key: c.topology_key.clone(),
        selector,
        min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
        honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
        honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        self_match,
    }
}

fn counts_pod(c: &Constraint, pod: &PodInfo, other: &PodInfo) -> bool {
    other.namespace == pod.namespace && !other.terminating && c.selector.matches(&other.labels)
}

fn eligible(c: &Constraint, pod: &PodView, name: &str, info: &NodeInfo) -> bool {
    if c.honor_affinity && !matches_node_selector(pod.spec, name, info) {
        return false;
    }
    if c.honor_taints {
        let tolerations = pod.spec.tolerations.as_deref().unwrap_or_default();
        if !info
            .taints
            .iter()
            .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
        {
            return false;
        }
    }
    true
}

fn count(constraints: Vec<Constraint>, snapshot: &Snapshot, pod: &PodView) -> Spread {
    let mut counts = vec![HashMap::<String, i64>::new(); constraints.len()];
    for (name, entry) in snapshot.nodes() {
        let Some(info) = &entry.info else {
            continue;
        };
        // A node counts only when it has every constraint's key.
        if !constraints.iter().all(|c| info.labels.contains_key(&c.key)) {
            continue;
        }
        for (c, counts) in constraints.iter().zip(counts.iter_mut()) {
            if !eligible(c, pod, name, info) {
                continue;
            }
            let value = &info.labels[&c.key];
            let n = entry
                .pods
                .values()
                .filter(|other| counts_pod(c, pod.info, other))
                .count() as i64;
            *counts.entry(value.clone()).or_default() += n;
        }
    }
    let mut spread = Spread {
        minimum: vec![0; constraints.len()],
        constraints,
        counts,
    };
    spread.refresh_minimum();
    spread
}

impl Spread {
    fn refresh_minimum(&mut self) {
        for (i, c) in self.constraints.iter().enumerate() {
            let counts = &self.counts[i];
            self.minimum[i] = if counts.len() < c.min_domains {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            };
        }
    }

    /// Counts `other` in (`by` 1) or out (`by` -1) of `node`'s domains. The minimum is
    /// kept without rescanning every domain unless the changed one held it and grew.
    fn add(&mut self, pod: &PodView, other: &PodInfo, node: &NodeView, by: i64) {
        for i in 0..self.constraints.len() {
            let c = &self.constraints[i];
            if !counts_pod(c, pod.info, other) {
                continue;
            }
            let Some(n) = node
                .info
                .labels
                .get(&c.key)
                .and_then(|value| self.counts[i].get_mut(value))
            else {
                continue;
            };
            let old = *n;
            *n += by;
            let new = *n;
            if self.counts[i].len() < c.min_domains {
                continue;
            }
            if new < self.minimum[i] {
                self.minimum[i] = new;
            } else if old == self.minimum[i] && new > old {
                self.minimum[i] = self.counts[i].values().copied().min().unwrap_or(0);
            }
        }
    }
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn pre_filter(&self, state: &mut CycleState, snapshot: &Snapshot, pod: &PodView) -> Status {
        let hard = constraints(pod, true);
        if hard.is_empty() {
            return Status::skip();
        }
        state.write(count(hard, snapshot, pod));
        Status::success()
    }

    fn filter(&self, state: &CycleState, _: &PodView, node: &NodeView) -> Status {
        let Some(spread) = state.read::<Spread>() else {
            return Status::success();
        };
        for (i, c) in spread.constraints.iter().enumerate() {
            let Some(value) = node.info.labels.get(&c.key) else {
                return Status::unresolvable(
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                );
            };
            let here = spread.counts[i].get(value).copied().unwrap_or(0);
            if here + c.self_match - spread.minimum[i] > c.max_skew {
                return Status::unschedulable(
                    "node(s) didn't match pod topology spread constraints",
                );
            }
        }
        Status::success()
    }

    fn remove_pod(&self, state: &mut CycleState, pod: &PodView, victim: &PodInfo, node: &NodeView) {
        if let Some(spread) = state.read_mut::<Spread>() {
            spread.add(pod, victim, node, -1);
        }
    }

    fn add_pod(&self, state: &mut CycleState, pod: &PodView, other: &PodInfo, node: &NodeView) {
        if let Some(spread) = state.read_mut::<Spread>() {
            spread.add(pod, other, node, 1);
        }
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        snapshot: &Snapshot,
        pod: &PodView,
        _: &[NodeView],
    ) -> Status {
        let soft = constraints(pod, false);
        if soft.is_empty() {
            return Status::skip();
        }
        let spread = count(soft, snapshot, pod);
        // Each constraint weighs by how many domains it has (upstream: ln(domains + 2)).
        let weights = spread
            .counts
            .iter()
            .map(|domains| ((domains.len() + 2) as f64).ln())
            .collect();
        state.write(SoftSpread(spread, weights));
        Status::success()
    }

    fn score(&self, state: &CycleState, _: &PodView, node: &NodeView) -> i64 {
        let Some(SoftSpread(spread, weights)) = state.read::<SoftSpread>() else {
            return 0;
        };
        let mut total = 0.0;
        for (i, c) in spread.constraints.iter().enumerate() {
            let Some(value) = node.info.labels.get(&c.key) else {
                // Nodes without the key rank last.
                return i64::MIN;
            };
            let here = spread.counts[i].get(value).copied().unwrap_or(0);
            // maxSkew - 1 softens the preference, as upstream scores.
            total += here as f64 * weights[i] + (c.max_skew - 1) as f64;
        }
        (total * 1000.0).round() as i64
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        let counted = scores.iter().copied().filter(|s| *s != i64::MIN);
        let (min, max) = counted.fold((i64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
        for s in scores.iter_mut() {
            *s = if *s == i64::MIN {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}
