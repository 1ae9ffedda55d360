//! The `networking.k8s.io` group.

use k8s_openapi::api::networking::v1 as api;

schema_kind! {
    /// `ingresses` (`/apis/networking.k8s.io/v1`).
    INGRESS: api::Ingress {
        group: "networking.k8s.io",
        version: "v1",
        kind: "Ingress",
        plural: "ingresses",
        singular: "ingress",
        namespaced: true,
        short_names: ["ing"],
        categories: [],
        status: true,
    }
}

schema_kind! {
    /// `ingressclasses`.
    INGRESS_CLASS: api::IngressClass {
        group: "networking.k8s.io",
        version: "v1",
        kind: "IngressClass",
        plural: "ingressclasses",
        singular: "ingressclass",
        namespaced: false,
        short_names: [],
        categories: [],
        status: false,
    }
}

schema_kind! {
    /// `networkpolicies`.
    NETWORK_POLICY: api::NetworkPolicy {
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        singular: "networkpolicy",
        namespaced: true,
        short_names: ["netpol"],
        categories: [],
        status: false,
    }
}
