//! Every served kind, one file each, grouped by API group as kube-apiserver's
//! `pkg/registry/<group>/<kind>/` is. A kind's file holds its registration (a `static`
//! [`ResourceType`](crate::registry::ResourceType)) and its [`Strategy`](crate::strategy::Strategy):
//! defaulting, validation, create/update/delete rules, field selectors, strategic-merge
//! metadata and Table columns. Code several kinds share (PodSpec validation and defaults,
//! metadata) lives in `validation` and `defaults`, as upstream's `pkg/apis/core/validation`.

use crate::strategy::{Requester, Strategy, drop_status};
use crate::validation::{ShapeError, UnknownField, typed};

/// Declares a [`Schema`] kind: its registration as a `static`, in one place.
macro_rules! schema_kind {
    (
        $(#[$doc:meta])*
        $name:ident: $ty:ty {
            group: $group:literal,
            version: $version:literal,
            kind: $kind:literal,
            plural: $plural:literal,
            singular: $singular:literal,
            namespaced: $namespaced:literal,
            short_names: [$($short:literal),*],
            categories: [$($cat:literal),*],
            status: $status:literal $(,)?
        }
    ) => {
        $(#[$doc])*
        pub static $name: $crate::registry::ResourceType = $crate::registry::ResourceType {
            group: $group,
            version: $version,
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            namespaced: $namespaced,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            subresources: if $status { &["status"] } else { &[] },
            strategy: &$crate::kinds::Schema::<$ty, $status>::NEW,
        };
    };
}

pub mod admissionregistration;
pub mod apiextensions;
pub mod apps;
pub mod autoscaling;
pub mod batch;
pub mod certificates;
pub mod coordination;
pub mod core;
pub mod discovery;
pub mod events;
pub mod networking;
pub mod node;
pub mod policy;
pub mod rbac;
pub mod scheduling;
pub mod storage;

/// A kind whose rules are its schema: the shape of its `k8s-openapi` type `T`, and (with
/// `STATUS`, for kinds with a status subresource) `status` reset on create, since a controller
/// owns it. Name and Age columns. Kinds with rules of their own have their own strategy.
pub struct Schema<T, const STATUS: bool>(std::marker::PhantomData<fn() -> T>);

impl<T, const STATUS: bool> Schema<T, STATUS> {
    /// The strategy (a constant, so a `static` registration can point at it).
    pub const NEW: Self = Schema(std::marker::PhantomData);
}

impl<T: serde::de::DeserializeOwned + schemars::JsonSchema + 'static, const STATUS: bool> Strategy
    for Schema<T, STATUS>
{
    fn check_shape(
        &self,
        obj: &serde_json::Value,
        unknown: &mut Vec<UnknownField>,
    ) -> Result<(), ShapeError> {
        typed::<T>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<T>())
    }

    fn prepare_for_create(
        &self,
        obj: &mut serde_json::Map<String, serde_json::Value>,
        _: &Requester,
    ) {
        if STATUS {
            drop_status(obj);
        }
    }
}
