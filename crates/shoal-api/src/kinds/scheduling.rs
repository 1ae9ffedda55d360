//! The `scheduling.k8s.io` group.

use k8s_openapi::api::scheduling::v1 as api;

schema_kind! {
    /// `priorityclasses` (`/apis/scheduling.k8s.io/v1`).
    PRIORITY_CLASS: api::PriorityClass {
        group: "scheduling.k8s.io",
        version: "v1",
        kind: "PriorityClass",
        plural: "priorityclasses",
        singular: "priorityclass",
        namespaced: false,
        short_names: ["pc"],
        categories: [],
        status: false,
    }
}
