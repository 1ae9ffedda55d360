//! InterPodAffinity: required pod affinity (the node's domain must already hold a pod every
//! term selects, unless no such pod exists anywhere and the pod selects itself: the first
//! of a group), required anti-affinity (no selected pod in the domain), and existing pods'
//! required anti-affinity against the incoming pod; preferred terms of both sides, and
//! existing pods' required affinity terms (weight 1), rank nodes.
//!
//! A term's `namespaceSelector` other than `{}` (every namespace) is not evaluated: the
//! scheduler does not watch Namespaces, so such a term looks only at its `namespaces`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::framework::{CycleState, MAX_NODE_SCORE, NodeView, Plugin, PodView, Status};
use crate::snapshot::{AffinityTerm, NodeInfo, PodInfo, Snapshot};

/// The InterPodAffinity plugin.
pub struct InterPodAffinity;

/// Counts per topology key, then per topology value: looked up by borrowed label pairs, so
/// filtering and scoring a node allocate nothing.
type Pair = HashMap<String, HashMap<String, i64>>;

fn get(map: &Pair, key: &str, value: &str) -> i64 {
    map.get(key)
        .and_then(|m| m.get(value))
        .copied()
        .unwrap_or(0)
}

#[derive(Clone, Default)]
struct Counts {
    /// Existing pods' required anti-affinity terms that select the incoming pod.
    existing_anti: Pair,
    /// Pods selected by every required affinity term of the incoming pod.
    affinity: Pair,
    /// Pods selected by a required anti-affinity term of the incoming pod.
    anti: Pair,
}

fn matches_all(terms: &[AffinityTerm], pod: &PodInfo) -> bool {
    terms.iter().all(|t| t.matches(pod))
}

fn bump(map: &mut Pair, key: &str, info: &NodeInfo, by: i64) {
    let Some(value) = info.labels.get(key) else {
        return;
    };
    let values = match map.get_mut(key) {
        Some(values) => values,
        None => map.entry(key.to_owned()).or_default(),
    };
    let slot = match values.get_mut(value.as_str()) {
        Some(slot) => slot,
        None => values.entry(value.clone()).or_default(),
    };
    *slot = slot.saturating_add(by);
}

impl Counts {
    /// Adds (`by` 1) or removes (`by` -1) `other`, on a node labelled `info`.
    fn account(&mut self, pod: &PodInfo, other: &PodInfo, info: &NodeInfo, by: i64) {
        for term in &other.affinity.required_anti {
            if term.matches(pod) {
                bump(&mut self.existing_anti, &term.topology_key, info, by);
            }
        }
        let affinity = &pod.affinity.required;
        if !affinity.is_empty() && matches_all(affinity, other) {
            for term in affinity {
                bump(&mut self.affinity, &term.topology_key, info, by);
            }
        }
        for term in &pod.affinity.required_anti {
            if term.matches(other) {
                bump(&mut self.anti, &term.topology_key, info, by);
            }
        }
    }
}

fn any_label_counted(map: &Pair, info: &NodeInfo) -> bool {
    map.iter().any(|(key, values)| {
        info.labels
            .get(key)
            .and_then(|v| values.get(v.as_str()))
            .is_some_and(|n| *n > 0)
    })
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, state: &mut CycleState, snapshot: &Snapshot, pod: &PodView) -> Status {
        let own = &pod.info.affinity;
        let has_required = !own.required.is_empty() || !own.required_anti.is_empty();
        let mut counts = Counts::default();
        let node_info = |node: &str| snapshot.node(node).and_then(|e| e.info.clone());
        if has_required {
            for (_, entry) in snapshot.nodes() {
                let Some(info) = &entry.info else {
                    continue;
                };
                for other in entry.pods.values() {
                    counts.account(pod.info, other, info, 1);
                }
            }
        } else {
            for (node, other) in snapshot.pods_with_affinity() {
                if let Some(info) = node_info(node) {
                    for term in &other.affinity.required_anti {
                        if term.matches(pod.info) {
                            bump(&mut counts.existing_anti, &term.topology_key, &info, 1);
                        }
                    }
                }
            }
            if counts.existing_anti.is_empty() {
                return Status::skip();
            }
        }
        state.write(counts);
        Status::success()
    }

    fn filter(&self, state: &CycleState, pod: &PodView, node: &NodeView) -> Status {
        let Some(counts) = state.read::<Counts>() else {
            return Status::success();
        };
        let required = &pod.info.affinity.required;
        if !required.is_empty() {
            let mut found = true;
            for term in required {
                let Some(value) = node.info.labels.get(&term.topology_key) else {
                    return Status::unresolvable("node(s) didn't match pod affinity rules");
                };
                if get(&counts.affinity, &term.topology_key, value) <= 0 {
                    found = false;
                }
            }
            let first_of_group = counts
                .affinity
                .values()
                .flat_map(HashMap::values)
                .all(|n| *n <= 0)
                && matches_all(required, pod.info);
            if !found && !first_of_group {
                return Status::unresolvable("node(s) didn't match pod affinity rules");
            }
        }
        if any_label_counted(&counts.anti, node.info) {
            return Status::unschedulable("node(s) didn't match pod anti-affinity rules");
        }
        if any_label_counted(&counts.existing_anti, node.info) {
            return Status::unschedulable(
                "node(s) didn't satisfy existing pods anti-affinity rules",
            );
        }
        Status::success()
    }

    fn remove_pod(&self, state: &mut CycleState, pod: &PodView, victim: &PodInfo, node: &NodeView) {
        if let Some(counts) = state.read_mut::<Counts>() {
            counts.account(pod.info, victim, node.info, -1);
        }
    }

    fn add_pod(&self, state: &mut CycleState, pod: &PodView, other: &PodInfo, node: &NodeView) {
        if let Some(counts) = state.read_mut::<Counts>() {
            counts.account(pod.info, other, node.info, 1);
        }
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        snapshot: &Snapshot,
        pod: &PodView,
        _: &[NodeView],
    ) -> Status {
        let own = &pod.info.affinity;
        let has_preferred = !own.preferred.is_empty() || !own.preferred_anti.is_empty();
        let mut scores: Pair = HashMap::new();
        let mut add = |other: &PodInfo, info: &NodeInfo| {
            for term in &own.preferred {
                if term.matches(other) {
                    bump(
                        &mut scores,
                        &term.topology_key,
                        info,
                        i64::from(term.weight),
                    );
                }
            }
            for term in &own.preferred_anti {
                if term.matches(other) {
                    bump(
                        &mut scores,
                        &term.topology_key,
                        info,
                        -i64::from(term.weight),
                    );
                }
            }
            for term in &other.affinity.preferred {
                if term.matches(pod.info) {
                    bump(
                        &mut scores,
                        &term.topology_key,
                        info,
                        i64::from(term.weight),
                    );
                }
            }
            for term in &other.affinity.preferred_anti {
                if term.matches(pod.info) {
                    bump(
                        &mut scores,
                        &term.topology_key,
                        info,
                        -i64::from(term.weight),
                    );
                }
            }
            for term in &other.affinity.required {
                if term.matches(pod.info) {
                    bump(&mut scores, &term.topology_key, info, 1);
                }
            }
        };
        if has_preferred {
            for (_, entry) in snapshot.nodes() {
                if let Some(info) = &entry.info {
                    entry.pods.values().for_each(|other| add(other, info));
                }
            }
        } else {
            for (node, other) in snapshot.pods_with_affinity() {
                let info: Option<Arc<NodeInfo>> = snapshot.node(node).and_then(|e| e.info.clone());
                if let Some(info) = info {
                    add(other, &info);
                }
            }
        }
        if scores.values().flat_map(HashMap::values).all(|s| *s == 0) {
            return Status::skip();
        }
        state.write(Scores(scores));
        Status::success()
    }

    fn score(&self, state: &CycleState, _: &PodView, node: &NodeView) -> i64 {
        let Some(Scores(scores)) = state.read::<Scores>() else {
            return 0;
        };
        scores
            .iter()
            .filter_map(|(key, values)| values.get(node.info.labels.get(key)?.as_str()))
            .fold(0i64, |sum, s| sum.saturating_add(*s))
    }

    fn normalize(&self, _: &CycleState, scores: &mut [i64]) {
        let min = scores.iter().copied().min().unwrap_or(0);
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max > min {
                let scaled = i128::from(MAX_NODE_SCORE) * (i128::from(*s) - i128::from(min))
                    / (i128::from(max) - i128::from(min));
                i64::try_from(scaled).unwrap_or(0)
            } else {
                0
            };
        }
    }
}

#[derive(Clone)]
struct Scores(Pair);
