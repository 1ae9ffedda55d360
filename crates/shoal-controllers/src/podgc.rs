//! Pod garbage collection (kube-controller-manager's `pod-garbage-collector`): removes pods
//! nobody else will.
//!
//! Every `period`: pods bound to a node that does not exist (confirmed with a read of the
//! Node after `orphan_quarantine`, so a node that is just registering is not mistaken for a
//! deleted one) are failed and deleted at once; terminating pods no node runs (unscheduled,
//! or on a node tainted `node.kubernetes.io/out-of-service`) are deleted at once; finished
//! pods (Succeeded or Failed) above `terminated_threshold` are deleted oldest first. Deletion
//! here is forced (grace 0): no agent is left to confirm it. [`plan`] is the decision.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use serde_json::json;
use shoal_api::taints::OUT_OF_SERVICE;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Settings (kube-controller-manager's `--terminated-pod-gc-threshold` and its constants).
#[derive(Clone, Debug)]
pub struct Options {
    /// How often it looks.
    pub period: Duration,
    /// Finished pods kept before the oldest are deleted; 0 keeps them all.
    pub terminated_threshold: usize,
    /// How long a pod's node must be missing before the pod counts as orphaned.
    pub orphan_quarantine: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            period: Duration::from_secs(20),
            terminated_threshold: 12_500,
            orphan_quarantine: Duration::from_secs(40),
        }
    }
}

/// Why a pod is collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its node is gone.
    Orphaned,
    /// Being deleted and no agent will finish it.
    Terminating,
    /// One of the oldest finished pods above the threshold.
    Terminated,
}

/// The pods to collect now, given the nodes known and those orphan candidates whose
/// quarantine is over (`orphans_due`, by uid). Orphan candidates not yet due are returned
/// separately so the caller can time them.
pub struct Plan<'a> {
    /// Pods to delete now, with why.
    pub collect: Vec<(&'a Pod, Reason)>,
    /// Pods on nodes that do not exist, still in quarantine (uids).
    pub suspected: Vec<&'a Pod>,
}

/// Decides what to collect.
pub fn plan<'a>(
    pods: &'a [Arc<Pod>],
    nodes: &HashMap<String, Arc<Node>>,
    orphans_due: &HashSet<String>,
    terminated_threshold: usize,
) -> Plan<'a> {
    let mut out = Plan {
        collect: Vec::new(),
        suspected: Vec::new(),
    };
    let mut finished: Vec<&Pod> = Vec::new();
    for pod in pods {
        let pod = pod.as_ref();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty());
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match node {
            Some(name) => match nodes.get(name) {
                None => {
                    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                    if orphans_due.contains(uid) {
                        out.collect.push((pod, Reason::Orphaned));
                    } else {
                        out.suspected.push(pod);
                    }
                    continue;
                }
                Some(node) if deleting && out_of_service(node) => {
                    out.collect.push((pod, Reason::Terminating));
                    continue;
                }
                Some(_) => {}
            },
            None if deleting => {
                out.collect.push((pod, Reason::Terminating));
                continue;
            }
            None => {}
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !deleting && matches!(phase, Some("Succeeded" | "Failed")) {
            finished.push(pod);
        }
    }
    if terminated_threshold > 0 && finished.len() > terminated_threshold {
        finished.sort_by(|a, b| {
            let at = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            at(a)
                .cmp(&at(b))
                .then_with(|| a.metadata.name.cmp(&b.metadata.name))
        });
        let excess = finished.len() - terminated_threshold;
        out.collect.extend(
            finished
                .into_iter()
                .take(excess)
                .map(|p| (p, Reason::Terminated)),
        );
    }
    out
}

fn out_of_service(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == OUT_OF_SERVICE && t.effect == "NoExecute")
}

/// What the collector reads and writes with.
pub struct Context {
    /// The API client.
    pub client: kube::Client,
    /// Every Node.
    pub nodes: Store<Node>,
    /// Every pod.
    pub pods: Store<Pod>,
    /// Its settings.
    pub options: Options,
}

/// Runs the collector until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    // Orphan candidates (uid) -> when first seen.
    let mut suspected: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ctx.options.period) => {}
        }
        collect(&ctx, &mut suspected).await;
    }
}

async fn collect(ctx: &Context, suspected: &mut HashMap<String, Instant>) {
    let nodes: HashMap<String, Arc<Node>> = ctx
        .nodes
        .state()
        .into_iter()
        .filter_map(|n| Some((n.metadata.name.clone()?, n)))
        .collect();
    let pods = ctx.pods.state();
    let now = Instant::now();
    let mut due = HashSet::new();
    for (uid, since) in suspected.iter() {
        if now.duration_since(*since) >= ctx.options.orphan_quarantine {
            due.insert(uid.clone());
        }
    }
    // A node missing from the cache for the whole quarantine is read once more to be sure.
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    let mut confirmed = HashSet::new();
    let mut present_nodes = HashSet::new();
    for pod in &pods {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !due.contains(&uid) {
            continue;
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if present_nodes.contains(&node) {
            continue;
        }
        match node_api.get_opt(&node).await {
            Ok(None) => {
                confirmed.insert(uid);
            }
            Ok(Some(_)) => {
                present_nodes.insert(node);
            }
            Err(error) => warn!(%node, %error, "cannot check whether a node exists"),
        }
    }
    let plan = plan(&pods, &nodes, &confirmed, ctx.options.terminated_threshold);
    let still: HashSet<&str> = plan
        .suspected
        .iter()
        .filter_map(|p| p.metadata.uid.as_deref())
        .collect();
    suspected.retain(|uid, _| still.contains(uid.as_str()));
    for uid in still {
        suspected.entry(uid.to_owned()).or_insert(now);
    }
    for (pod, reason) in plan.collect {
        delete(&ctx.client, pod, reason).await;
    }
}

async fn delete(client: &kube::Client, pod: &Pod, reason: Reason) {
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let key = format!("{namespace}/{name}");
    let message = match reason {
        Reason::Orphaned => Some("PodGC: node no longer exists"),
        Reason::Terminating => Some("PodGC: no node will finish deleting this pod"),
        Reason::Terminated => None,
    };
    if let Some(message) = message {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let mut status = json!({"conditions": [{
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "DeletionByPodGC",
            "message": message,
            "lastTransitionTime": Time(Timestamp::now()),
        }]});
        if !matches!(phase, Some("Succeeded" | "Failed")) {
            status["phase"] = json!("Failed");
        }
        let patch = Patch::Strategic(json!({"status": status}));
        if let Err(error) = api
            .patch_status(name, &PatchParams::default(), &patch)
            .await
        {
            warn!(pod = %key, %error, "cannot mark pod failed before collecting it");
        }
    }
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => info!(pod = %key, ?reason, "garbage-collected pod"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(error) => warn!(pod = %key, ?reason, %error, "cannot garbage-collect pod"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, value: serde_json::Value) -> Arc<Pod> {
        let mut pod: Pod = serde_json::from_value(value).expect("pod");
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(format!("uid-{name}"));
        Arc::new(pod)
    }

    fn names(collect: &[(&Pod, Reason)]) -> Vec<(String, Reason)> {
        collect
            .iter()
            .map(|(p, r)| (p.metadata.name.clone().unwrap_or_default(), *r))
            .collect()
    }

    #[test]
    fn collects_what_nobody_else_will() {
        let nodes: HashMap<String, Arc<Node>> = [
            ("n1", json!({"metadata": {"name": "n1"}})),
            (
                "down",
                json!({"metadata": {"name": "down"}, "spec": {"taints": [
                {"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}}),
            ),
        ]
        .into_iter()
        .map(|(n, v)| {
            (
                n.to_owned(),
                Arc::new(serde_json::from_value(v).expect("node")),
            )
        })
        .collect();
        let deleting = json!("2026-01-01T00:00:00Z");
        let pods = vec![
            pod(
                "running",
                json!({"spec": {"containers": [], "nodeName": "n1"}, "status": {"phase": "Running"}}),
            ),
            pod(
                "orphan",
                json!({"spec": {"containers": [], "nodeName": "gone"}}),
            ),
            pod(
                "young-orphan",
                json!({"spec": {"containers": [], "nodeName": "gone"}}),
            ),
            pod(
                "unscheduled-deleting",
                json!({"metadata": {"deletionTimestamp": deleting}, "spec": {"containers": []}}),
            ),
            pod(
                "stuck",
                json!({"metadata": {"deletionTimestamp": deleting}, "spec": {"containers": [], "nodeName": "down"}}),
            ),
            pod(
                "stopping",
                json!({"metadata": {"deletionTimestamp": deleting}, "spec": {"containers": [], "nodeName": "n1"}}),
            ),
            pod(
                "old",
                json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"containers": [], "nodeName": "n1"}, "status": {"phase": "Succeeded"}}),
            ),
            pod(
                "new",
                json!({"metadata": {"creationTimestamp": "2026-01-02T00:00:00Z"}, "spec": {"containers": [], "nodeName": "n1"}, "status": {"phase": "Failed"}}),
            ),
        ];
        let due: HashSet<String> = ["uid-orphan".to_owned()].into();
        let out = plan(&pods, &nodes, &due, 1);
        assert_eq!(
            names(&out.collect),
            [
                ("orphan".to_owned(), Reason::Orphaned),
                ("unscheduled-deleting".to_owned(), Reason::Terminating),
                ("stuck".to_owned(), Reason::Terminating),
                ("old".to_owned(), Reason::Terminated),
            ]
        );
        let suspected: Vec<_> = out
            .suspected
            .iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(suspected, ["young-orphan"]);
        // Threshold 0 keeps every finished pod.
        let out = plan(&pods, &nodes, &HashSet::new(), 0);
        assert!(out.collect.iter().all(|(_, r)| *r != Reason::Terminated));
    }
}
