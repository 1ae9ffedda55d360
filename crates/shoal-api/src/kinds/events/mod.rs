//! The `events.k8s.io` group (`/apis/events.k8s.io/v1`).

pub mod event;
