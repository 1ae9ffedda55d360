//! The node lifecycle controller (kube-controller-manager's `node-lifecycle-controller`):
//! notices nodes whose agent went silent and taints nodes by their readiness, so that the
//! scheduler avoids them and the taint eviction ([`crate::taint_eviction`]) moves their pods.
//!
//! Every `monitor_period` it reads each node's health from the informer stores: the last
//! probe is the later of its Lease's `renewTime` and its Ready condition's
//! `lastHeartbeatTime`; older than `grace_period` (`startup_grace_period` for a node that never
//! reported), its conditions become `Unknown` ("Kubelet stopped posting node status.") and the
//! Ready condition of its pods `False`. Then taints follow readiness: `not-ready` for
//! `Ready=False`, `unreachable` for `Unknown`, each with effect `NoSchedule` (at once) and
//! `NoExecute`, plus `unschedulable:NoSchedule` for cordoned nodes. A new `NoExecute` taint is
//! rate-limited per zone (`topology.kubernetes.io/region` and `zone`) as upstream: `eviction_rate`
//! nodes per second in a healthy zone, `secondary_eviction_rate` in a zone with more than
//! `unhealthy_zone_threshold` of its nodes down (0 in zones of at most
//! `large_cluster_threshold` nodes), and none at all while every zone is entirely down (the
//! control plane is then the likelier culprit: existing `NoExecute` taints are removed).
//! Swapping `not-ready` for `unreachable` and removing taints is never rate-limited.
//!
//! The decisions are plain functions ([`observe`], [`next_taints`], [`zone_state`],
//! [`zone_rate`]); the loop keeps only the zones' rate limiters in memory, so a restarted
//! controller simply looks again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use shoal_api::taints::{NOT_READY, UNREACHABLE, UNSCHEDULABLE};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The namespace of node Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How the controller judges and taints nodes (kube-controller-manager's flags of the same
/// names).
#[derive(Clone, Debug)]
pub struct Options {
    /// How often node health is checked (`--node-monitor-period`).
    pub monitor_period: Duration,
    /// How long a node may go without a probe before it is `Unknown`
    /// (`--node-monitor-grace-period`).
    pub grace_period: Duration,
    /// The same for a node that has never reported its status (`--node-startup-grace-period`).
    pub startup_grace_period: Duration,
    /// Nodes per second that get a new `NoExecute` taint in a healthy zone
    /// (`--node-eviction-rate`).
    pub eviction_rate: f64,
    /// The same in a partially disrupted zone larger than `large_cluster_threshold`
    /// (`--secondary-node-eviction-rate`).
    pub secondary_eviction_rate: f64,
    /// Zones of at most this many nodes stop tainting when partially disrupted
    /// (`--large-cluster-size-threshold`).
    pub large_cluster_threshold: usize,
    /// The fraction of not-ready nodes (with more than 2 of them) that makes a zone partially
    /// disrupted (`--unhealthy-zone-threshold`).
    pub unhealthy_zone_threshold: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            startup_grace_period: Duration::from_secs(60),
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            large_cluster_threshold: 50,
            unhealthy_zone_threshold: 0.55,
        }
    }
}

/// A node's readiness as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// `Ready=True`, recently probed.
    Ready,
    /// `Ready=False` as its agent reports.
    NotReady,
    /// Silent for longer than the grace period, or `Unknown` already.
    Unknown,
    /// Registered but has not reported a Ready condition yet, within the startup grace:
    /// counted as not ready, never tainted.
    Starting,
}

/// What [`observe`] concludes about one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Its readiness now.
    pub readiness: Readiness,
    /// Its conditions must be written `Unknown` (it went silent and they still say otherwise).
    pub mark_unknown: bool,
}

/// The node conditions the agent reports and the controller turns `Unknown`.
const CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Reads a node's health at `now` from its status and its Lease's `renewTime`.
pub fn observe(
    node: &Node,
    lease_renewed: Option<Timestamp>,
    now: Timestamp,
    options: &Options,
) -> Observation {
    let conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    let heartbeat = ready.and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
    let (probe, grace) = match (heartbeat, lease_renewed) {
        (None, None) if ready.is_none() => (
            node.metadata.creation_timestamp.as_ref().map(|t| t.0),
            options.startup_grace_period,
        ),
        (a, b) => (a.max(b), options.grace_period),
    };
    let silent = probe.is_none_or(|probe| {
        now.duration_since(probe) > SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX)
    });
    if silent {
        let mark_unknown = CONDITIONS.iter().any(|kind| {
            conditions
                .iter()
                .find(|c| c.type_ == *kind)
                .is_none_or(|c| c.status != "Unknown")
        });
        return Observation {
            readiness: Readiness::Unknown,
            mark_unknown,
        };
    }
    let readiness = match ready.map(|c| c.status.as_str()) {
        None => Readiness::Starting,
        Some("True") => Readiness::Ready,
        Some("False") => Readiness::NotReady,
        Some(_) => Readiness::Unknown,
    };
    Observation {
        readiness,
        mark_unknown: false,
    }
}

/// The `nodes/status` patch that turns every condition the agent reports `Unknown`, keeping
/// each one's last heartbeat (the transition time is `now` where the status changes).
pub fn unknown_conditions_patch(node: &Node, now: Timestamp) -> serde_json::Value {
    let existing = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let conditions: Vec<serde_json::Value> = CONDITIONS
        .iter()
        .map(|kind| {
            let old = existing.iter().find(|c| c.type_ == *kind);
            let transition = match old {
                Some(c) if c.status == "Unknown" => c.last_transition_time.clone(),
                _ => Some(Time(now)),
            };
            json!({
                "type": kind,
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": old.and_then(|c| c.last_heartbeat_time.clone()),
                "lastTransitionTime": transition,
            })
        })
        .collect();
    json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "status": {"conditions": conditions},
    })
}

/// The `NoExecute` taint key a node of this readiness should carry, if any.
pub fn no_execute_key(readiness: Readiness) -> Option<&'static str> {
    match readiness {
        Readiness::Ready | Readiness::Starting => None,
        Readiness::NotReady => Some(NOT_READY),
        Readiness::Unknown => Some(UNREACHABLE),
    }
}

/// The taints the node should carry, or `None` when its taints are right already.
///
/// Taints other than the controller's are kept in place; the controller's keep their
/// `timeAdded` while they stay. A `NoExecute` taint is added only with `admit_no_execute` (a
/// token of the zone's limiter) unless it replaces the other readiness taint, and none is kept
/// while `disrupted` (every zone down).
pub fn next_taints(
    node: &Node,
    readiness: Readiness,
    admit_no_execute: bool,
    disrupted: bool,
    now: Timestamp,
) -> Option<Vec<Taint>> {
    let spec = node.spec.as_ref();
    let current = spec.and_then(|s| s.taints.as_deref()).unwrap_or_default();
    let managed = |t: &Taint| {
        matches!(
            (t.key.as_str(), t.effect.as_str()),
            (NOT_READY | UNREACHABLE, "NoSchedule" | "NoExecute") | (UNSCHEDULABLE, "NoSchedule")
        )
    };
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    match readiness {
        Readiness::Ready | Readiness::Starting => {}
        Readiness::NotReady => wanted.push((NOT_READY, "NoSchedule")),
        Readiness::Unknown => wanted.push((UNREACHABLE, "NoSchedule")),
    }
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        wanted.push((UNSCHEDULABLE, "NoSchedule"));
    }
    let has_no_execute = current
        .iter()
        .any(|t| t.effect == "NoExecute" && matches!(t.key.as_str(), NOT_READY | UNREACHABLE));
    if let Some(key) = no_execute_key(readiness)
        && !disrupted
        && (has_no_execute || admit_no_execute)
    {
        wanted.push((key, "NoExecute"));
    }
    let mut next: Vec<Taint> = current.iter().filter(|t| !managed(t)).cloned().collect();
    // A readiness NoExecute taint replacing the other keeps its start: tolerations count
    // from when the node first stopped being ready.
    let no_execute_since = current
        .iter()
        .find(|t| t.effect == "NoExecute" && matches!(t.key.as_str(), NOT_READY | UNREACHABLE))
        .and_then(|t| t.time_added.clone());
    for (key, effect) in &wanted {
        let kept = current
            .iter()
            .find(|t| t.key == *key && t.effect == *effect)
            .cloned()
            .or_else(|| {
                let since = no_execute_since
                    .clone()
                    .filter(|_| *effect == "NoExecute")?;
                Some(Taint {
                    key: (*key).to_owned(),
                    effect: (*effect).to_owned(),
                    time_added: Some(since),
                    value: None,
                })
            });
        next.push(kept.unwrap_or_else(|| Taint {
            key: (*key).to_owned(),
            effect: (*effect).to_owned(),
            time_added: Some(Time(now)),
            value: None,
        }));
    }
    let same = next.len() == current.len()
        && next.iter().all(|t| {
            current
                .iter()
                .any(|c| c.key == t.key && c.effect == t.effect)
        });
    (!same).then_some(next)
}

/// Whether reaching the taints `next` needs a token of the zone's limiter: it adds a
/// `NoExecute` readiness taint to a node that has none.
pub fn adds_no_execute(node: &Node, next: &[Taint]) -> bool {
    let had = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|t| t.effect == "NoExecute" && matches!(t.key.as_str(), NOT_READY | UNREACHABLE));
    !had && next
        .iter()
        .any(|t| t.effect == "NoExecute" && matches!(t.key.as_str(), NOT_READY | UNREACHABLE))
}

/// A zone's health, by the readiness of its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    /// Few nodes down.
    Normal,
    /// More than 2 nodes and at least the threshold's fraction down.
    PartialDisruption,
    /// Every node down.
    FullDisruption,
}

/// Upstream's `ComputeZoneState`.
pub fn zone_state(ready: usize, not_ready: usize, unhealthy_threshold: f64) -> ZoneState {
    let total = ready + not_ready;
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && (not_ready as f64) / (total as f64) >= unhealthy_threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// Nodes per second that may get a new `NoExecute` taint in a zone of `size` nodes.
pub fn zone_rate(state: ZoneState, size: usize, options: &Options) -> f64 {
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => options.eviction_rate,
        ZoneState::PartialDisruption if size > options.large_cluster_threshold => {
            options.secondary_eviction_rate
        }
        ZoneState::PartialDisruption => 0.0,
    }
}

/// A node's zone: its region and zone labels (empty for neither).
pub fn zone_of(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .map(String::as_str)
            .unwrap_or_default()
    };
    let region = get("topology.kubernetes.io/region");
    let zone = get("topology.kubernetes.io/zone");
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\u{0}:{zone}")
    }
}

/// A token bucket of one token: a taint may be added every `1 / rate` seconds.
#[derive(Debug)]
struct Limiter {
    rate: f64,
    next: Option<Instant>,
}

impl Limiter {
    fn try_take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return false;
        }
        if self.next.is_some_and(|next| now < next) {
            return false;
        }
        let interval = Duration::from_secs_f64((1.0 / self.rate).min(86_400.0));
        // A bucket of one: an idle limiter does not save up tokens.
        self.next = Some(now + interval);
        true
    }
}

/// How often rate-limited taints are retried while some wait.
const TAINT_RETRY: Duration = Duration::from_millis(100);

/// What the controller reads and writes with.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// Every Node.
    pub nodes: Store<Node>,
    /// The node Leases (`kube-node-lease`).
    pub leases: Store<Lease>,
    /// Every pod.
    pub pods: Store<Pod>,
    /// Its settings.
    pub options: Options,
    /// Events as `node-controller`.
    pub events: shoal_events::Recorder,
}

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let mut state = State::default();
    let mut next_monitor = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_monitor {
            state.monitor(&ctx).await;
            next_monitor = now + ctx.options.monitor_period;
        }
        let waiting = state.taint(&ctx).await;
        let wake = if waiting {
            (Instant::now() + TAINT_RETRY).min(next_monitor)
        } else {
            next_monitor
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[derive(Default)]
struct State {
    /// Each node's readiness at the last health check.
    readiness: HashMap<String, Readiness>,
    limiters: HashMap<String, Limiter>,
    /// Every zone is entirely down: no `NoExecute` taints.
    disrupted: bool,
    /// Nodes written from the resourceVersion noted, until the store shows a newer one.
    written: HashMap<String, String>,
}

impl State {
    /// Checks every node's health, marks silent nodes and their pods, and sets the zones'
    /// rates.
    async fn monitor(&mut self, ctx: &Context) {
        let now = Timestamp::now();
        let renewed: HashMap<String, Timestamp> = ctx
            .leases
            .state()
            .iter()
            .filter_map(|lease| {
                let name = lease.metadata.name.clone()?;
                let renew = lease.spec.as_ref()?.renew_time.as_ref()?.0;
                Some((name, renew))
            })
            .collect();
        let nodes = ctx.nodes.state();
        let mut zones: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut readiness = HashMap::with_capacity(nodes.len());
        let mut silent: HashSet<String> = HashSet::new();
        let api: Api<Node> = Api::all(ctx.client.clone());
        for node in &nodes {
            let Some(name) = node.metadata.name.clone() else {
                continue;
            };
            let seen = observe(node, renewed.get(&name).copied(), now, &ctx.options);
            if seen.mark_unknown {
                let patch = unknown_conditions_patch(node, now);
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                    .await
                {
                    Ok(_) => {
                        info!(node = %name, "node stopped posting its status: Ready=Unknown");
                        ctx.events.normal(
                            &shoal_events::reference(node.as_ref()),
                            "NodeNotReady",
                            format!("Node {name} status is now: NodeNotReady"),
                        );
                    }
                    Err(error) => warn!(node = %name, %error, "cannot mark node Unknown"),
                }
            }
            if seen.readiness == Readiness::Unknown {
                silent.insert(name.clone());
            }
            let counts = zones.entry(zone_of(node)).or_default();
            if seen.readiness == Readiness::Ready {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
            readiness.insert(name, seen.readiness);
        }
        self.readiness = readiness;
        let states: Vec<(String, ZoneState, usize)> = zones
            .into_iter()
            .map(|(zone, (ready, not_ready))| {
                let state = zone_state(ready, not_ready, ctx.options.unhealthy_zone_threshold);
                (zone, state, ready + not_ready)
            })
            .collect();
        let disrupted = !states.is_empty()
            && states
                .iter()
                .all(|(_, s, _)| *s == ZoneState::FullDisruption);
        if disrupted != self.disrupted {
            if disrupted {
                warn!("every node is not ready: no node gets a NoExecute taint until one is back");
            } else {
                info!("some node is ready again: NoExecute taints resume");
            }
            self.disrupted = disrupted;
        }
        self.limiters
            .retain(|zone, _| states.iter().any(|(z, _, _)| z == zone));
        for (zone, state, size) in states {
            let rate = zone_rate(state, size, &ctx.options);
            self.limiters
                .entry(zone)
                .or_insert(Limiter { rate, next: None })
                .rate = rate;
        }
        mark_pods_not_ready(ctx, &silent, now).await;
    }

    /// Brings every node's taints in line with its readiness; true when some wait for their
    /// zone's limiter.
    async fn taint(&mut self, ctx: &Context) -> bool {
        let now = Timestamp::now();
        let api: Api<Node> = Api::all(ctx.client.clone());
        let mut nodes = ctx.nodes.state();
        nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut waiting = false;
        self.written.retain(|name, rv| {
            nodes.iter().any(|n| {
                n.metadata.name.as_ref() == Some(name)
                    && n.metadata.resource_version.as_ref() == Some(rv)
            })
        });
        for node in &nodes {
            let Some(name) = node.metadata.name.as_deref() else {
                continue;
            };
            if self.written.contains_key(name) {
                continue;
            }
            let Some(readiness) = self.readiness.get(name).copied() else {
                continue;
            };
            let Some(next) = next_taints(node, readiness, true, self.disrupted, now) else {
                continue;
            };
            let next = if adds_no_execute(node, &next) {
                let limiter = self.limiters.entry(zone_of(node)).or_insert(Limiter {
                    rate: ctx.options.eviction_rate,
                    next: None,
                });
                if limiter.try_take(Instant::now()) {
                    next
                } else {
                    // A zone whose rate is 0 waits for its state to change, not for a token.
                    waiting |= limiter.rate > 0.0;
                    match next_taints(node, readiness, false, self.disrupted, now) {
                        Some(next) => next,
                        None => continue,
                    }
                }
            } else {
                next
            };
            let patch = json!({
                "metadata": {"resourceVersion": node.metadata.resource_version},
                "spec": {"taints": next},
            });
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    let keys: Vec<String> = next
                        .iter()
                        .map(|t| format!("{}:{}", t.key, t.effect))
                        .collect();
                    info!(node = %name, ?readiness, taints = ?keys, "node taints updated");
                    if let Some(rv) = node.metadata.resource_version.clone() {
                        self.written.insert(name.to_owned(), rv);
                    }
                }
                Err(error) => {
                    debug!(node = %name, %error, "cannot update node taints, retrying");
                    waiting = true;
                }
            }
        }
        waiting
    }
}

/// Turns the Ready condition of the pods on silent nodes `False` (upstream's
/// `MarkPodsNotReady`), so Services stop sending them traffic. Pods report their own
/// readiness while their agent is alive, so only silent nodes' pods are touched.
async fn mark_pods_not_ready(ctx: &Context, silent: &HashSet<String>, now: Timestamp) {
    if silent.is_empty() {
        return;
    }
    for pod in ctx.pods.state() {
        let on_silent = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| silent.contains(n));
        if !on_silent || !crate::pods::is_ready(&pod) {
            continue;
        }
        let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
            continue;
        };
        let patch = json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": {"conditions": [{
                "type": "Ready",
                "status": "False",
                "reason": "NodeNotReady",
                "lastTransitionTime": Time(now),
            }]},
        });
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
        {
            Ok(_) => {
                info!(pod = %format!("{namespace}/{name}"), "node not ready: pod marked not ready");
                ctx.events.warning(
                    &shoal_events::reference(pod.as_ref()),
                    "NodeNotReady",
                    "Node is not ready",
                );
            }
            Err(error) => debug!(pod = %name, %error, "cannot mark pod not ready, retrying later"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).expect("node")
    }

    fn ready_node(status: &str, heartbeat: &str) -> Node {
        node(json!({
            "metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"conditions": [
                {"type": "Ready", "status": status, "lastHeartbeatTime": heartbeat},
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat},
            ]},
        }))
    }

    #[test]
    fn health_follows_the_later_of_lease_and_status() {
        let options = Options::default();
        let n = ready_node("True", "2026-01-01T00:01:00Z");
        let now = ts("2026-01-01T00:01:30Z");
        assert_eq!(observe(&n, None, now, &options).readiness, Readiness::Ready);
        // 41 s after the last heartbeat, with no lease: silent.
        let late = ts("2026-01-01T00:01:41Z");
        let seen = observe(&n, None, late, &options);
        assert_eq!(
            seen,
            Observation {
                readiness: Readiness::Unknown,
                mark_unknown: true
            }
        );
        // A fresh lease keeps it alive although the status is old.
        let seen = observe(&n, Some(ts("2026-01-01T00:01:35Z")), late, &options);
        assert_eq!(seen.readiness, Readiness::Ready);
        // The agent's own NotReady is believed while it heartbeats.
        let n = ready_node("False", "2026-01-01T00:01:00Z");
        assert_eq!(
            observe(&n, None, now, &options).readiness,
            Readiness::NotReady
        );
    }

    #[test]
    fn a_silent_node_is_marked_unknown_once() {
        let options = Options::default();
        let n = ready_node("True", "2026-01-01T00:00:00Z");
        let now = ts("2026-01-01T00:10:00Z");
        let patch = unknown_conditions_patch(&n, now);
        let conditions = patch["status"]["conditions"]
            .as_array()
            .expect("conditions");
        assert_eq!(conditions.len(), 4);
        assert!(conditions.iter().all(|c| c["status"] == "Unknown"));
        assert_eq!(conditions[0]["lastHeartbeatTime"], "2026-01-01T00:00:00Z");
        assert_eq!(conditions[0]["lastTransitionTime"], "2026-01-01T00:10:00Z");
        let mut marked = n.clone();
        let status = marked.status.as_mut().expect("status");
        status.conditions = serde_json::from_value(patch["status"]["conditions"].clone()).ok();
        assert_eq!(
            observe(&marked, None, now, &options),
            Observation {
                readiness: Readiness::Unknown,
                mark_unknown: false
            }
        );
    }

    #[test]
    fn a_node_that_never_reported_gets_the_startup_grace() {
        let options = Options::default();
        let n =
            node(json!({"metadata": {"name": "n1", "creationTimestamp": "2026-01-01T00:00:00Z"}}));
        let seen = observe(&n, None, ts("2026-01-01T00:00:59Z"), &options);
        assert_eq!(
            seen,
            Observation {
                readiness: Readiness::Starting,
                mark_unknown: false
            }
        );
        assert_eq!(
            next_taints(&n, seen.readiness, true, false, ts("2026-01-01T00:00:59Z")),
            None
        );
        let seen = observe(&n, None, ts("2026-01-01T00:01:01Z"), &options);
        assert_eq!(
            seen,
            Observation {
                readiness: Readiness::Unknown,
                mark_unknown: true
            }
        );
    }

    fn keys(taints: &[Taint]) -> Vec<String> {
        taints
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect()
    }

    #[test]
    fn taints_follow_readiness() {
        let now = ts("2026-01-01T00:00:00Z");
        let mut n = node(json!({"metadata": {"name": "n1"}, "spec": {"taints": [
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}));
        assert_eq!(next_taints(&n, Readiness::Ready, true, false, now), None);
        let next = next_taints(&n, Readiness::Unknown, true, false, now).expect("taints");
        assert_eq!(
            keys(&next),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute"
            ]
        );
        assert!(adds_no_execute(&n, &next));
        // Without a token only the NoSchedule taint is added.
        let held = next_taints(&n, Readiness::Unknown, false, false, now).expect("taints");
        assert_eq!(
            keys(&held),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/unreachable:NoSchedule"
            ]
        );
        assert!(!adds_no_execute(&n, &held));
        // Unreachable -> NotReady swaps without a token, keeps no stale taint, and keeps the
        // NoExecute start so tolerations do not start over.
        n.spec.as_mut().expect("spec").taints = Some(next);
        let later = ts("2026-01-01T00:03:00Z");
        let swapped = next_taints(&n, Readiness::NotReady, false, false, later).expect("taints");
        let since = swapped
            .iter()
            .find(|t| t.effect == "NoExecute")
            .and_then(|t| t.time_added.clone());
        assert_eq!(since.map(|t| t.0), Some(now));
        assert_eq!(
            keys(&swapped),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/not-ready:NoSchedule",
                "node.kubernetes.io/not-ready:NoExecute"
            ]
        );
        assert!(!adds_no_execute(&n, &swapped));
        // Back to Ready: only the user's taint stays; while every zone is down, no NoExecute.
        let cleared = next_taints(&n, Readiness::Ready, false, false, now).expect("taints");
        assert_eq!(keys(&cleared), ["dedicated:NoSchedule"]);
        let calm = next_taints(&n, Readiness::Unknown, true, true, now).expect("taints");
        assert_eq!(
            keys(&calm),
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/unreachable:NoSchedule"
            ]
        );
    }

    #[test]
    fn kept_taints_keep_their_time_and_cordons_are_tainted() {
        let now = ts("2026-01-01T00:05:00Z");
        let n = node(
            json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true, "taints": [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}]}}),
        );
        let next = next_taints(&n, Readiness::Unknown, false, false, now).expect("taints");
        assert_eq!(
            keys(&next),
            [
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unschedulable:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute"
            ]
        );
        let kept = next.iter().find(|t| t.effect == "NoExecute").expect("kept");
        assert_eq!(
            kept.time_added.as_ref().map(|t| t.0),
            Some(ts("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn zones_slow_down_when_much_of_them_is_down() {
        let options = Options::default();
        assert_eq!(zone_state(10, 2, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(2, 3, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(0, 2, 0.55), ZoneState::FullDisruption);
        assert_eq!(zone_state(0, 0, 0.55), ZoneState::Normal);
        assert_eq!(zone_rate(ZoneState::Normal, 10, &options), 0.1);
        assert_eq!(zone_rate(ZoneState::PartialDisruption, 10, &options), 0.0);
        assert_eq!(zone_rate(ZoneState::PartialDisruption, 100, &options), 0.01);
        assert_eq!(zone_rate(ZoneState::FullDisruption, 100, &options), 0.1);
        let zoned = node(json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "a"}}}));
        assert_eq!(zone_of(&zoned), ":\u{0}:a");
        assert_eq!(zone_of(&node(json!({}))), "");
    }

    #[test]
    fn the_limiter_lets_one_through_per_interval() {
        let start = Instant::now();
        let mut limiter = Limiter {
            rate: 0.5,
            next: None,
        };
        assert!(limiter.try_take(start));
        assert!(!limiter.try_take(start + Duration::from_secs(1)));
        assert!(limiter.try_take(start + Duration::from_secs(2)));
        let mut stopped = Limiter {
            rate: 0.0,
            next: None,
        };
        assert!(!stopped.try_take(start));
    }
}
