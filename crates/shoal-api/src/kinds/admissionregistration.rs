//! The `admissionregistration.k8s.io` group. Stored and validated by schema; Shoal does not
//! call webhooks yet.

use k8s_openapi::api::admissionregistration::v1 as api;

schema_kind! {
    /// `validatingwebhookconfigurations` (`/apis/admissionregistration.k8s.io/v1`).
    VALIDATING_WEBHOOK_CONFIGURATION: api::ValidatingWebhookConfiguration {
        group: "admissionregistration.k8s.io",
        version: "v1",
        kind: "ValidatingWebhookConfiguration",
        plural: "validatingwebhookconfigurations",
        singular: "validatingwebhookconfiguration",
        namespaced: false,
        short_names: [],
        categories: [],
        status: false,
    }
}

schema_kind! {
    /// `mutatingwebhookconfigurations`.
    MUTATING_WEBHOOK_CONFIGURATION: api::MutatingWebhookConfiguration {
        group: "admissionregistration.k8s.io",
        version: "v1",
        kind: "MutatingWebhookConfiguration",
        plural: "mutatingwebhookconfigurations",
        singular: "mutatingwebhookconfiguration",
        namespaced: false,
        short_names: [],
        categories: [],
        status: false,
    }
}
