//! NodePorts: a pod asking for a `hostPort` fits only nodes where no other pod holds that
//! port (same protocol, and the same address or a wildcard on either side).

use crate::framework::{CycleState, NodeView, Plugin, PodView, Status};

/// The NodePorts plugin.
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn pre_filter(&self, _: &mut CycleState, _: &crate::Snapshot, pod: &PodView) -> Status {
        if pod.info.host_ports.is_empty() {
            Status::skip()
        } else {
            Status::success()
        }
    }

    fn filter(&self, _: &CycleState, pod: &PodView, node: &NodeView) -> Status {
        let taken = node
            .entry
            .used_ports()
            .any(|used| pod.info.host_ports.iter().any(|p| p.conflicts(used)));
        if taken {
            Status::unschedulable("node(s) didn't have free ports for the requested pod ports")
        } else {
            Status::success()
        }
    }
}
