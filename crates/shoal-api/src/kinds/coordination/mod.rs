//! The `coordination.k8s.io` group (`/apis/coordination.k8s.io/v1`).

pub mod lease;
