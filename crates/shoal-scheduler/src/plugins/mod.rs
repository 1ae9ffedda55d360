//! The plugins of the default profile, each in kube-scheduler's shape and with its reasons
//! worded as kube-scheduler words them.

use std::sync::Arc;

use crate::framework::{Plugin, Profile};

mod image_locality;
mod inter_pod_affinity;
mod node_affinity;
mod node_basics;
mod node_ports;
mod node_resources;
mod pod_topology_spread;
mod runtime_class;
mod taint_toleration;

pub use image_locality::ImageLocality;
pub use inter_pod_affinity::InterPodAffinity;
pub use node_affinity::{NodeAffinity, matches_node_selector};
pub use node_basics::{NodeName, NodeReady, NodeUnschedulable};
pub use node_ports::NodePorts;
pub use node_resources::{BalancedAllocation, NodeResourcesFit};
pub use pod_topology_spread::PodTopologySpread;
pub use runtime_class::RuntimeClass;
pub use taint_toleration::TaintToleration;

/// The default profile in Filter order, with Score weights (kube-scheduler's defaults:
/// TaintToleration 3, NodeAffinity 2, PodTopologySpread 2, InterPodAffinity 2, the rest 1).
pub fn default_plugins(profile: &Profile) -> Vec<(Arc<dyn Plugin>, i64)> {
    vec![
        (Arc::new(NodeReady), 0),
        (Arc::new(NodeUnschedulable), 0),
        (Arc::new(NodeName), 0),
        (Arc::new(TaintToleration), 3),
        (Arc::new(NodeAffinity), 2),
        (Arc::new(RuntimeClass), 0),
        (Arc::new(NodePorts), 0),
        (
            Arc::new(NodeResourcesFit {
                strategy: profile.scoring_strategy,
            }),
            1,
        ),
        (Arc::new(PodTopologySpread), 2),
        (Arc::new(InterPodAffinity), 2),
        (Arc::new(BalancedAllocation), 1),
        (Arc::new(ImageLocality), 1),
    ]
}
