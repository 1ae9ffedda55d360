//! RuntimeClass (Shoal's): a pod naming `runtimeClassName` fits only nodes that offer the
//! class's handler (`status.runtimeHandlers` or a `runtime.shoal.dev/HANDLER=true` label)
//! and match its `scheduling.nodeSelector`. A class that does not exist keeps the pod
//! Pending with that said, rather than failing it, so creating the class later schedules it.

use crate::framework::{CycleState, NodeView, Plugin, PodView, Status};
use crate::snapshot::RuntimeClassInfo;

/// The RuntimeClass plugin.
pub struct RuntimeClass;

#[derive(Clone)]
struct Wanted(RuntimeClassInfo);

impl Plugin for RuntimeClass {
    fn name(&self) -> &'static str {
        "RuntimeClass"
    }

    fn pre_filter(
        &self,
        state: &mut CycleState,
        snapshot: &crate::Snapshot,
        pod: &PodView,
    ) -> Status {
        let Some(name) = pod
            .spec
            .runtime_class_name
            .as_deref()
            .filter(|n| !n.is_empty())
        else {
            return Status::skip();
        };
        match snapshot.runtime_class(name) {
            Some(class) => {
                state.write(Wanted(class.clone()));
                Status::success()
            }
            None => Status::unresolvable(format!("runtimeclass.node.k8s.io \"{name}\" not found")),
        }
    }

    fn filter(&self, state: &CycleState, _: &PodView, node: &NodeView) -> Status {
        let Some(Wanted(class)) = state.read::<Wanted>() else {
            return Status::success();
        };
        if !node.info.runtime_handlers.contains(&class.handler) {
            return Status::unresolvable(format!(
                "node(s) didn't offer runtime handler {}",
                class.handler
            ));
        }
        let selected = class
            .node_selector
            .iter()
            .all(|(k, v)| node.info.labels.get(k) == Some(v));
        if selected {
            Status::success()
        } else {
            Status::unresolvable("node(s) didn't match the RuntimeClass's node selector")
        }
    }
}
