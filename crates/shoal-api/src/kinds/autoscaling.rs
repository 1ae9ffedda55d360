//! The `autoscaling` group.

use k8s_openapi::api::autoscaling::v2 as api;

schema_kind! {
    /// `horizontalpodautoscalers` (`/apis/autoscaling/v2`).
    HORIZONTAL_POD_AUTOSCALER: api::HorizontalPodAutoscaler {
        group: "autoscaling",
        version: "v2",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        namespaced: true,
        short_names: ["hpa"],
        categories: ["all"],
        status: true,
    }
}
