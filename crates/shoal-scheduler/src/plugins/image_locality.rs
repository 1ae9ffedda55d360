//! ImageLocality: prefer nodes that already hold the pod's images, weighted by image size
//! and by how many nodes share them (an image on every node says little), as
//! kube-scheduler scores: the sum of `size × nodes-with-image / nodes` over the pod's
//! images, scaled between 23 MB and 1000 MB per container.

use crate::framework::{CycleState, MAX_NODE_SCORE, NodeView, Plugin, PodView, Status};
use crate::snapshot::normalized_image;

const MIN_THRESHOLD: i64 = 23 * 1024 * 1024;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * 1024 * 1024;

/// The ImageLocality plugin.
pub struct ImageLocality;

#[derive(Clone)]
struct Images {
    /// Each image with the share of nodes holding it (per mille).
    spread: Vec<(String, i64)>,
    containers: i64,
}

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        snapshot: &crate::Snapshot,
        pod: &PodView,
        _: &[NodeView],
    ) -> Status {
        let total = snapshot.node_count().max(1) as i64;
        let spread: Vec<(String, i64)> = pod
            .spec
            .containers
            .iter()
            .chain(pod.spec.init_containers.iter().flatten())
            .filter_map(|c| c.image.as_deref())
            .map(normalized_image)
            .filter_map(|image| {
                let holders = snapshot.nodes_with_image(&image) as i64;
                (holders > 0).then(|| (image, holders * 1000 / total))
            })
            .collect();
        if spread.is_empty() {
            return Status::skip();
        }
        state.write(Images {
            spread,
            containers: (pod.spec.containers.len()
                + pod.spec.init_containers.as_ref().map_or(0, Vec::len))
                as i64,
        });
        Status::success()
    }

    fn score(&self, state: &CycleState, _: &PodView, node: &NodeView) -> i64 {
        let Some(images) = state.read::<Images>() else {
            return 0;
        };
        let sum: i64 = images
            .spread
            .iter()
            .filter_map(|(image, per_mille)| {
                node.info
                    .images
                    .get(image)
                    .map(|size| size * per_mille / 1000)
            })
            .sum();
        let max = MAX_CONTAINER_THRESHOLD * images.containers.max(1);
        let sum = sum.clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}
