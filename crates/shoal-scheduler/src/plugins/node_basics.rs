//! NodeReady (Shoal's: a node whose Ready condition is not `True` takes no new pod even
//! before the node lifecycle controller taints it), NodeUnschedulable and NodeName.

use k8s_openapi::api::core::v1::Taint;

use crate::framework::{CycleState, NodeView, Plugin, PodView, Status};
use crate::schedule::tolerates;

/// Rejects nodes that are not Ready.
pub struct NodeReady;

impl Plugin for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn filter(&self, _: &CycleState, _: &PodView, node: &NodeView) -> Status {
        if node.info.ready {
            Status::success()
        } else {
            Status::unresolvable("node(s) were not ready")
        }
    }
}

/// Rejects cordoned nodes (`spec.unschedulable`) unless the pod tolerates
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> Status {
        if !node.info.unschedulable {
            return Status::success();
        }
        let taint = Taint {
            key: shoal_api::taints::UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        };
        let tolerations = pod.spec.tolerations.as_deref().unwrap_or_default();
        if tolerations.iter().any(|t| tolerates(t, &taint)) {
            Status::success()
        } else {
            Status::unresolvable("node(s) were unschedulable")
        }
    }
}

/// Rejects every node but the one `spec.nodeName` names (seen only in what-ifs: a pod with
/// a node name is never scheduled).
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn pre_filter(&self, _: &mut CycleState, _: &crate::Snapshot, pod: &PodView) -> Status {
        if pod.spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
            Status::success()
        } else {
            Status::skip()
        }
    }

    fn filter(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> Status {
        match pod.spec.node_name.as_deref() {
            Some(name) if name != node.name => {
                Status::unresolvable("node(s) didn't match the requested node name")
            }
            _ => Status::success(),
        }
    }
}
