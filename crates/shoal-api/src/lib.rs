//! Shoal's resource vocabulary, with no IO: the registry of served resource types, validation
//! and defaulting per kind, label and field selectors, JSON / merge / strategic merge patch, and
//! the server-side `Table` columns that `kubectl get` prints.
//!
//! Everything works on `serde_json::Value` so that the apiserver can store and return exactly
//! what clients sent (unknown fields included); `k8s-openapi` types are used to check shapes.
//! Nothing here reads a clock, a random source or the disk: callers pass `now`, names and uids.

#![warn(missing_docs)]

pub mod meta;
pub mod patch;
pub mod quantity;
pub mod registry;
pub mod selector;
pub mod table;
pub mod validation;

pub use k8s_openapi;
pub use registry::ResourceType;
