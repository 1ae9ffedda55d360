//! ResourceQuota and LimitRange, by schema (not yet enforced by admission).

use k8s_openapi::api::core::v1 as api;

schema_kind! {
    /// `resourcequotas` (`/api/v1`).
    RESOURCE_QUOTA: api::ResourceQuota {
        group: "",
        version: "v1",
        kind: "ResourceQuota",
        plural: "resourcequotas",
        singular: "resourcequota",
        namespaced: true,
        short_names: ["quota"],
        categories: [],
        status: true,
    }
}

schema_kind! {
    /// `limitranges` (`/api/v1`).
    LIMIT_RANGE: api::LimitRange {
        group: "",
        version: "v1",
        kind: "LimitRange",
        plural: "limitranges",
        singular: "limitrange",
        namespaced: true,
        short_names: ["limits"],
        categories: [],
        status: false,
    }
}
