//! PersistentVolume and PersistentVolumeClaim, by schema (no provisioner yet).

use k8s_openapi::api::core::v1 as api;

schema_kind! {
    /// `persistentvolumes` (`/api/v1`).
    PERSISTENT_VOLUME: api::PersistentVolume {
        group: "",
        version: "v1",
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        namespaced: false,
        short_names: ["pv"],
        categories: [],
        status: true,
    }
}

schema_kind! {
    /// `persistentvolumeclaims` (`/api/v1`).
    PERSISTENT_VOLUME_CLAIM: api::PersistentVolumeClaim {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        namespaced: true,
        short_names: ["pvc"],
        categories: [],
        status: true,
    }
}
