//! The `storage.k8s.io` group.

use k8s_openapi::api::storage::v1 as api;

schema_kind! {
    /// `storageclasses` (`/apis/storage.k8s.io/v1`).
    STORAGE_CLASS: api::StorageClass {
        group: "storage.k8s.io",
        version: "v1",
        kind: "StorageClass",
        plural: "storageclasses",
        singular: "storageclass",
        namespaced: false,
        short_names: ["sc"],
        categories: [],
        status: false,
    }
}
