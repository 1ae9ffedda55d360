//! The `discovery.k8s.io` group.

use k8s_openapi::api::discovery::v1 as api;

schema_kind! {
    /// `endpointslices` (`/apis/discovery.k8s.io/v1`).
    ENDPOINT_SLICE: api::EndpointSlice {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: [],
        categories: [],
        status: false,
    }
}
