//! The scheduling framework: a profile of plugins run at kube-scheduler's extension points
//! for one pod at a time, over a [`Snapshot`].
//!
//! A cycle runs every plugin's PreFilter (per-pod state into the [`CycleState`]; `Skip`
//! means its Filter has nothing to check), then Filter on each node in turn (the first
//! plugin that rejects a node decides its status), then, with more than one feasible node,
//! PreScore, Score (0 to [`MAX_NODE_SCORE`]) and NormalizeScore, weighted and summed. The
//! highest total wins; ties go to the node whose name sorts first, so the same snapshot and
//! pod always give the same answer (kube-scheduler picks among ties at random). When no node
//! fits, the [`FitError`] carries each node's status for PostFilter (preemption, in
//! [`crate::preemption`]). Reserve is the snapshot's assumption of the pod on its node and
//! Bind the driver's `binding` write (see `driver.rs`).
//!
//! Everything here is pure: no IO, no clock, no randomness.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::plugins;
use crate::snapshot::{NodeEntry, NodeInfo, PodInfo, Snapshot};

/// The highest score a Score plugin gives a node (after normalization).
pub const MAX_NODE_SCORE: i64 = 100;

/// The outcome class of a plugin call, as kube-scheduler's status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// Go on.
    Success,
    /// The node does not fit now; removing pods (preemption) may help.
    Unschedulable,
    /// The node does not fit and preemption cannot change that.
    UnschedulableAndUnresolvable,
    /// The plugin has nothing to do for this pod (PreFilter, PreScore).
    Skip,
}

/// A plugin's answer: a code and the reasons shown to users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// What happened.
    pub code: Code,
    /// Why, in kube-scheduler's words ("Insufficient cpu").
    pub reasons: Vec<String>,
}

impl Status {
    /// Go on.
    pub fn success() -> Self {
        Status {
            code: Code::Success,
            reasons: Vec::new(),
        }
    }

    /// Nothing to do for this pod.
    pub fn skip() -> Self {
        Status {
            code: Code::Skip,
            reasons: Vec::new(),
        }
    }

    /// Does not fit; preemption may help.
    pub fn unschedulable(reason: impl Into<String>) -> Self {
        Status {
            code: Code::Unschedulable,
            reasons: vec![reason.into()],
        }
    }

    /// Does not fit; preemption cannot help.
    pub fn unresolvable(reason: impl Into<String>) -> Self {
        Status {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
        }
    }

    /// Whether the code is `Success`.
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    /// Whether the node (or the pod) was rejected.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable
        )
    }
}

/// State one plugin keeps for the pod being scheduled, written at PreFilter or PreScore and
/// read at Filter or Score. Clonable because preemption works on copies.
pub trait StateData: Any + Send + Sync {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn StateData>;
    /// For downcasting.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any + Clone + Send + Sync> StateData for T {
    fn clone_box(&self) -> Box<dyn StateData> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The per-cycle state of all plugins, one value per type.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<TypeId, Box<dyn StateData>>,
}

impl Clone for CycleState {
    fn clone(&self) -> Self {
        CycleState {
            data: self
                .data
                .iter()
                .map(|(k, v)| (*k, (**v).clone_box()))
                .collect(),
        }
    }
}

impl CycleState {
    /// Stores a plugin's state, replacing any of the same type.
    pub fn write<T: StateData + Clone>(&mut self, value: T) {
        self.data.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// A plugin's state.
    pub fn read<T: 'static>(&self) -> Option<&T> {
        self.data
            .get(&TypeId::of::<T>())
            .and_then(|v| v.as_ref().as_any().downcast_ref())
    }

    /// A plugin's state, to change.
    pub fn read_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.data
            .get_mut(&TypeId::of::<T>())
            .and_then(|v| v.as_mut().as_any_mut().downcast_mut())
    }
}

/// The pod being scheduled.
pub struct PodView<'a> {
    /// The pod as stored.
    pub pod: &'a Pod,
    /// Its spec (empty when missing).
    pub spec: &'a PodSpec,
    /// What scheduling extracted from it.
    pub info: &'a PodInfo,
}

/// One candidate node.
#[derive(Clone, Copy)]
pub struct NodeView<'a> {
    /// The node's name.
    pub name: &'a str,
    /// The Node's scheduling view.
    pub info: &'a NodeInfo,
    /// What runs (or is assumed) there.
    pub entry: &'a NodeEntry,
}

/// A plugin: one piece of scheduling policy, hooked into the extension points it needs.
/// Every method has the default of a plugin that does not use that point.
pub trait Plugin: Send + Sync {
    /// The plugin's name, as in kube-scheduler's configuration.
    fn name(&self) -> &'static str;

    /// Runs once per pod before any Filter. `Skip` means Filter has nothing to check; a
    /// rejection rejects the pod on every node (the message becomes the pre-filter message).
    fn pre_filter(&self, _state: &mut CycleState, _snapshot: &Snapshot, _pod: &PodView) -> Status {
        Status::success()
    }

    /// Whether `pod` may run on `node`.
    fn filter(&self, _state: &CycleState, _pod: &PodView, _node: &NodeView) -> Status {
        Status::success()
    }

    /// Preemption removed `victim` from `node` in a what-if: update PreFilter state
    /// (kube-scheduler's `PreFilterExtensions.RemovePod`).
    fn remove_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodView,
        _victim: &PodInfo,
        _node: &NodeView,
    ) {
    }

    /// Preemption put `other` back on `node` in a what-if (`PreFilterExtensions.AddPod`).
    fn add_pod(&self, _state: &mut CycleState, _pod: &PodView, _other: &PodInfo, _node: &NodeView) {
    }

    /// Runs once per pod before Score over the feasible nodes; `Skip` means no Score.
    fn pre_score(
        &self,
        _state: &mut CycleState,
        _snapshot: &Snapshot,
        _pod: &PodView,
        _nodes: &[NodeView],
    ) -> Status {
        Status::success()
    }

    /// A node's raw score.
    fn score(&self, _state: &CycleState, _pod: &PodView, _node: &NodeView) -> i64 {
        0
    }

    /// Maps raw scores (one per feasible node, in order) to 0..=[`MAX_NODE_SCORE`].
    fn normalize(&self, _state: &CycleState, _scores: &mut [i64]) {}
}

/// kube-scheduler's `DefaultNormalizeScore`: scale so the highest is [`MAX_NODE_SCORE`],
/// reversed (the lowest raw score best) when `reverse`.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max <= 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = i64::try_from(i128::from(MAX_NODE_SCORE) * i128::from(*s) / i128::from(max))
            .unwrap_or(0);
        if reverse {
            *s = MAX_NODE_SCORE - *s;
        }
    }
}

/// How resources are scored (`NodeResourcesFit`'s `scoringStrategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScoringStrategy {
    /// Prefer the node with the most free resources: spreads pods.
    #[default]
    LeastAllocated,
    /// Prefer the node with the least free resources: packs pods, freeing whole nodes.
    MostAllocated,
}

impl std::str::FromStr for ScoringStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "LeastAllocated" => Ok(ScoringStrategy::LeastAllocated),
            "MostAllocated" => Ok(ScoringStrategy::MostAllocated),
            other => Err(format!(
                "unknown scoring strategy {other:?} (LeastAllocated or MostAllocated)"
            )),
        }
    }
}

/// How much of the cluster one decision examines, as Kubernetes'
/// `percentageOfNodesToScore`: start after a node name (rotating through the cluster) and
/// stop once enough feasible nodes were found. The default examines every node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sampling {
    /// Start with the first node whose name sorts after this one (wrapping around).
    pub start_after: Option<String>,
    /// Stop after this many feasible nodes.
    pub max_feasible: Option<usize>,
}

impl Sampling {
    /// Kubernetes' adaptive number of feasible nodes to find in a cluster of `nodes`:
    /// all below 100 nodes, otherwise `50 - nodes/125` percent (at least 5 %, at least 100).
    pub fn adaptive(nodes: usize, start_after: Option<String>) -> Self {
        let max_feasible = (nodes >= 100).then(|| {
            let percentage = 50usize.saturating_sub(nodes / 125).max(5);
            (nodes * percentage / 100).max(100)
        });
        Sampling {
            start_after,
            max_feasible,
        }
    }
}

/// A placement and where the scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The chosen node.
    pub node: String,
    /// The last node examined: where the next sampled decision should start after.
    pub last_examined: Option<String>,
}

/// No node can take the pod. The Display form is the Kubernetes message written to the
/// pod's `PodScheduled` condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FitError {
    /// Nodes considered.
    pub num_nodes: usize,
    /// Why nodes were rejected, with how many nodes gave each reason (a node can give
    /// several resource reasons).
    pub reasons: BTreeMap<String, usize>,
    /// Set when a PreFilter rejected the pod outright.
    pub pre_filter_message: Option<String>,
    /// Nodes rejected with `Unschedulable` (not `UnschedulableAndUnresolvable`): where
    /// preemption may help.
    pub preemptible_nodes: Vec<String>,
    /// What PostFilter (preemption) found, appended to the message.
    pub post_filter_message: Option<String>,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 && self.pre_filter_message.is_none() {
            return f.write_str("0/0 nodes are available: no nodes available to schedule pods.");
        }
        write!(f, "0/{} nodes are available:", self.num_nodes)?;
        if let Some(message) = &self.pre_filter_message {
            write!(f, " {message}.")?;
        } else {
            write!(f, " {}.", histogram(&self.reasons))?;
        }
        if let Some(message) = &self.post_filter_message {
            write!(f, " {message}")?;
        }
        Ok(())
    }
}

/// `"3 Insufficient memory, 2 node(s) had untolerated taint {a: b}"`: counts and reasons,
/// sorted as text as kube-scheduler sorts them.
pub fn histogram(reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    parts.join(", ")
}

impl std::error::Error for FitError {}

/// A profile: the plugins in their Filter order, and each one's Score weight (0: does not
/// score).
pub struct Framework {
    plugins: Vec<(Arc<dyn Plugin>, i64)>,
}

/// What the scheduler can be told about its profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// `NodeResourcesFit`'s scoring strategy.
    pub scoring_strategy: ScoringStrategy,
}

impl Default for Framework {
    fn default() -> Self {
        Framework::new(&Profile::default())
    }
}

impl Framework {
    /// The default profile, as kube-scheduler's, plus Shoal's NodeReady and RuntimeClass.
    pub fn new(profile: &Profile) -> Self {
        Framework {
            plugins: plugins::default_plugins(profile),
        }
    }

    /// A profile of exactly these plugins and weights (tests, benchmarks).
    pub fn with_plugins(plugins: Vec<(Arc<dyn Plugin>, i64)>) -> Self {
        Framework { plugins }
    }

    /// The plugins in order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.plugins.iter().map(|(p, _)| p)
    }

    /// Runs PreFilter. `Err` is the rejection of the pod on every node.
    pub fn pre_filter(
        &self,
        snapshot: &Snapshot,
        pod: &PodView,
    ) -> Result<(CycleState, Vec<bool>), Status> {
        let mut state = CycleState::default();
        let mut run_filter = Vec::with_capacity(self.plugins.len());
        for (plugin, _) in &self.plugins {
            let status = plugin.pre_filter(&mut state, snapshot, pod);
            if status.is_rejection() {
                return Err(status);
            }
            run_filter.push(status.code != Code::Skip);
        }
        Ok((state, run_filter))
    }

    /// Runs Filter on one node: the first rejection, or success.
    pub fn filter(
        &self,
        state: &CycleState,
        run_filter: &[bool],
        pod: &PodView,
        node: &NodeView,
    ) -> Status {
        for ((plugin, _), run) in self.plugins.iter().zip(run_filter) {
            if !run {
                continue;
            }
            let status = plugin.filter(state, pod, node);
            if !status.is_success() {
                return status;
            }
        }
        Status::success()
    }

    /// Filter on a node as it will be once pods nominated there with at least this pod's
    /// priority arrive (kube-scheduler's `addNominatedPods`: they join the node and every
    /// plugin's state), then as it is.
    pub fn filter_with_nominated(
        &self,
        snapshot: &Snapshot,
        state: &CycleState,
        run_filter: &[bool],
        pod: &PodView,
        node: &NodeView,
    ) -> Status {
        if snapshot.has_nominations() {
            let nominated: Vec<&Arc<PodInfo>> = snapshot
                .nominated_on(node.name, pod.info.priority, &pod.info.key)
                .collect();
            if !nominated.is_empty() {
                let mut entry = node.entry.clone();
                let mut with_state = state.clone();
                for other in nominated {
                    entry.add_pod(other.clone());
                    let with = NodeView {
                        entry: &entry,
                        ..*node
                    };
                    self.add_pod(&mut with_state, pod, other, &with);
                }
                let with = NodeView {
                    entry: &entry,
                    ..*node
                };
                let status = self.filter(&with_state, run_filter, pod, &with);
                if !status.is_success() {
                    return status;
                }
            }
        }
        self.filter(state, run_filter, pod, node)
    }

    /// Tells every plugin that `victim` left `node` in a what-if (preemption).
    pub fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodView,
        victim: &PodInfo,
        node: &NodeView,
    ) {
        for (plugin, _) in &self.plugins {
            plugin.remove_pod(state, pod, victim, node);
        }
    }

    /// Tells every plugin that `other` came back to `node` in a what-if (preemption).
    pub fn add_pod(&self, state: &mut CycleState, pod: &PodView, other: &PodInfo, node: &NodeView) {
        for (plugin, _) in &self.plugins {
            plugin.add_pod(state, pod, other, node);
        }
    }

    /// One scheduling decision for `pod` (see the module documentation). A pod whose
    /// `spec.nodeName` is already set is returned as is.
    pub fn schedule(
        &self,
        snapshot: &Snapshot,
        pod: &Pod,
        sampling: &Sampling,
    ) -> Result<Placement, FitError> {
        let empty = PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&empty);
        if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
            return Ok(Placement {
                node: node.to_owned(),
                last_examined: sampling.start_after.clone(),
            });
        }
        let info = PodInfo::from_pod(pod);
        let view = PodView {
            pod,
            spec,
            info: &info,
        };
        let (state, run_filter) = match self.pre_filter(snapshot, &view) {
            Ok(ok) => ok,
            Err(status) => {
                return Err(FitError {
                    num_nodes: snapshot.node_count(),
                    pre_filter_message: Some(status.reasons.join(", ")),
                    ..FitError::default()
                });
            }
        };
        // A pod nominated by an earlier preemption goes to its node if it fits there now,
        // without scanning (kube-scheduler's evaluateNominatedNode).
        if let Some(name) = crate::snapshot::nominated_node(pod)
            && let Some((name, entry)) = snapshot.node_entry(name)
            && let Some(node_info) = &entry.info
        {
            let node = NodeView {
                name,
                info: node_info,
                entry,
            };
            if self
                .filter_with_nominated(snapshot, &state, &run_filter, &view, &node)
                .is_success()
            {
                return Ok(Placement {
                    node: name.to_owned(),
                    last_examined: sampling.start_after.clone(),
                });
            }
        }
        let mut num_nodes = 0;
        let mut last_examined = None;
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut preemptible_nodes = Vec::new();
        let mut feasible: Vec<NodeView> = Vec::new();
        for (name, entry) in snapshot.nodes_after(sampling.start_after.as_deref()) {
            let Some(node_info) = &entry.info else {
                continue;
            };
            if sampling
                .max_feasible
                .is_some_and(|max| feasible.len() >= max)
            {
                break;
            }
            num_nodes += 1;
            last_examined = Some(name);
            let node = NodeView {
                name,
                info: node_info,
                entry,
            };
            let status = self.filter_with_nominated(snapshot, &state, &run_filter, &view, &node);
            if status.is_success() {
                feasible.push(node);
                continue;
            }
            for reason in status.reasons {
                *reasons.entry(reason).or_default() += 1;
            }
            if status.code == Code::Unschedulable {
                preemptible_nodes.push(name.to_owned());
            }
        }
        let last_examined = last_examined.map(str::to_owned);
        let node = match feasible.len() {
            0 => {
                return Err(FitError {
                    num_nodes,
                    reasons,
                    preemptible_nodes,
                    ..FitError::default()
                });
            }
            1 => feasible[0].name,
            _ => self.select(state, snapshot, &view, &feasible),
        };
        Ok(Placement {
            node: node.to_owned(),
            last_examined,
        })
    }

    /// PreScore, Score, NormalizeScore and the weighted sum; the best node's name.
    fn select<'a>(
        &self,
        mut state: CycleState,
        snapshot: &Snapshot,
        pod: &PodView,
        feasible: &[NodeView<'a>],
    ) -> &'a str {
        let mut totals = vec![0i64; feasible.len()];
        let mut scores = vec![0i64; feasible.len()];
        for (plugin, weight) in &self.plugins {
            if *weight == 0 {
                continue;
            }
            if plugin.pre_score(&mut state, snapshot, pod, feasible).code == Code::Skip {
                continue;
            }
            for (score, node) in scores.iter_mut().zip(feasible) {
                *score = plugin.score(&state, pod, node);
            }
            plugin.normalize(&state, &mut scores);
            for (total, score) in totals.iter_mut().zip(&scores) {
                *total += (*score).clamp(0, MAX_NODE_SCORE) * weight;
            }
        }
        let mut best = 0;
        for (i, node) in feasible.iter().enumerate().skip(1) {
            let (score, name) = (totals[i], node.name);
            if score > totals[best] || (score == totals[best] && name < feasible[best].name) {
                best = i;
            }
        }
        feasible[best].name
    }
}
