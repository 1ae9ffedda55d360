//! The `rbac.authorization.k8s.io` group: Roles, ClusterRoles and their bindings. Stored and
//! validated by schema; Shoal's authorization does not read them yet (see `auth.rs`).

use std::marker::PhantomData;

use k8s_openapi::api::rbac::v1 as api;
use serde_json::Value;

use crate::registry::ResourceType;
use crate::strategy::{NameFormat, Strategy};
use crate::validation::{ShapeError, UnknownField, typed};

/// RBAC objects are named like path segments (`system:controller:x` is a common role name).
struct Rbac<T>(PhantomData<fn() -> T>);

impl<T: serde::de::DeserializeOwned + schemars::JsonSchema + 'static> Strategy for Rbac<T> {
    fn name_format(&self) -> NameFormat {
        NameFormat::PathSegment
    }

    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<T>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<T>())
    }
}

const fn rbac(
    kind: &'static str,
    list_kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    strategy: &'static dyn Strategy,
) -> ResourceType {
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind,
        list_kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        categories: &[],
        subresources: &[],
        strategy,
    }
}

/// `roles` (`/apis/rbac.authorization.k8s.io/v1`).
pub static ROLE: ResourceType = rbac(
    "Role",
    "RoleList",
    "roles",
    "role",
    true,
    &Rbac::<api::Role>(PhantomData),
);
/// `clusterroles`.
pub static CLUSTER_ROLE: ResourceType = rbac(
    "ClusterRole",
    "ClusterRoleList",
    "clusterroles",
    "clusterrole",
    false,
    &Rbac::<api::ClusterRole>(PhantomData),
);
/// `rolebindings`.
pub static ROLE_BINDING: ResourceType = rbac(
    "RoleBinding",
    "RoleBindingList",
    "rolebindings",
    "rolebinding",
    true,
    &Rbac::<api::RoleBinding>(PhantomData),
);
/// `clusterrolebindings`.
pub static CLUSTER_ROLE_BINDING: ResourceType = rbac(
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "clusterrolebindings",
    "clusterrolebinding",
    false,
    &Rbac::<api::ClusterRoleBinding>(PhantomData),
);
