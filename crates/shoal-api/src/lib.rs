//! Shoal's resource vocabulary, with no IO: every served kind described once (`kinds/`: its
//! registration and its [`strategy::Strategy`]: defaulting, validation, create/update/delete
//! rules, field selectors, Table columns), the registry that lists them, the validation and
//! defaulting they share, label and field selectors, and JSON / merge / strategic merge patch.
//!
//! Everything works on `serde_json::Value` so that the apiserver can store and return exactly
//! what clients sent (unknown fields included); `k8s-openapi` types are used to check shapes.
//! Nothing here reads a clock, a random source or the disk: callers pass `now`, names and uids.

#![warn(missing_docs)]

pub mod cron;
pub mod custom;
pub mod defaults;
pub mod kinds;
pub mod meta;
pub mod node_selector;
pub mod patch;
pub mod quantity;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod strategy;
pub mod table;
pub mod taints;
pub mod validation;

pub use k8s_openapi;
pub use registry::ResourceType;
pub use schemars;
pub use strategy::Strategy;
