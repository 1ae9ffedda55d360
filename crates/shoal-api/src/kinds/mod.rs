//! Every served kind, one file each, grouped by API group as kube-apiserver's
//! `pkg/registry/<group>/<kind>/` is. A kind's file holds its registration (a `static`
//! [`ResourceType`](crate::registry::ResourceType)) and its [`Strategy`](crate::strategy::Strategy):
//! defaulting, validation, create/update/delete rules, field selectors, strategic-merge
//! metadata and Table columns. Code several kinds share (PodSpec validation and defaults,
//! metadata) lives in `validation` and `defaults`, as upstream's `pkg/apis/core/validation`.

pub mod apps;
pub mod batch;
pub mod certificates;
pub mod coordination;
pub mod core;
pub mod events;
pub mod node;
