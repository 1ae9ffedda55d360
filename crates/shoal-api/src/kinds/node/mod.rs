//! The `node.k8s.io` group (`/apis/node.k8s.io/v1`).

pub mod runtimeclass;
