//! The `policy` group.

use k8s_openapi::api::policy::v1 as api;

schema_kind! {
    /// `poddisruptionbudgets` (`/apis/policy/v1`).
    POD_DISRUPTION_BUDGET: api::PodDisruptionBudget {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        namespaced: true,
        short_names: ["pdb"],
        categories: [],
        status: true,
    }
}
