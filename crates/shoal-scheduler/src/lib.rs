//! The Shoal scheduler: assigns pending pods to nodes.
//!
//! The decision is the pure [`Framework::schedule`] over a [`Snapshot`]: plugins at
//! kube-scheduler's extension points (`framework.rs`, `plugins/`), with
//! [`preemption::preempt`] as the PostFilter. [`run`] is the IO shell that keeps the snapshot
//! from watches of Nodes, Pods, RuntimeClasses and PodDisruptionBudgets, binds through the
//! `binding` subresource, deletes preemption victims, and reports unschedulable pods
//! through their `PodScheduled` condition and a `FailedScheduling` Event (bound ones get
//! `Scheduled`, victims `Preempted`). It talks to the cluster only through the Kubernetes API
//! and never to other components.

mod driver;
pub mod framework;
pub mod plugins;
pub mod preemption;
pub mod quantity;
pub mod queue;
mod schedule;
pub mod snapshot;

pub use driver::{run, unschedulable_patch};
pub use framework::{Framework, Profile, ScoringStrategy};
pub use schedule::{FitError, Placement, Sampling, schedule, schedule_sampled, tolerates};
pub use snapshot::{NodeEntry, NodeInfo, PodRequests, Resources, Snapshot, pod_requests};

/// What the scheduler is told at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pods whose `spec.schedulerName` equals this (or is unset, for the default name) are
    /// ours; Kubernetes' default is `default-scheduler`.
    pub scheduler_name: String,
    /// Record `Scheduled` and `FailedScheduling` Events on pods.
    pub record_events: bool,
    /// The plugin profile's settings.
    pub profile: Profile,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scheduler_name: DEFAULT_SCHEDULER_NAME.to_owned(),
            record_events: true,
            profile: Profile::default(),
        }
    }
}

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A watch stream ended, which kube's watcher never does on its own.
    #[error("watch of {0} ended")]
    WatchEnded(&'static str),
}
