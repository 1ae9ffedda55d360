//! The `certificates.k8s.io` group (`/apis/certificates.k8s.io/v1`).

pub mod csr;
