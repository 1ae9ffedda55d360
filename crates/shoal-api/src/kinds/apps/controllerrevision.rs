//! ControllerRevision: a snapshot of a StatefulSet's or DaemonSet's template.

use k8s_openapi::api::apps::v1 as api;

schema_kind! {
    /// `controllerrevisions` (`/apis/apps/v1`).
    CONTROLLER_REVISION: api::ControllerRevision {
        group: "apps",
        version: "v1",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        namespaced: true,
        short_names: [],
        categories: [],
        status: false,
    }
}
