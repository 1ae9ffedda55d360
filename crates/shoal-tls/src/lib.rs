//! The cluster's certificate authority, join tokens, and TLS serving for the apiserver and the
//! store's member-to-member port.
//!
//! Owns: creating and loading the cluster CA (`ca.crt`/`ca.key`), issuing server and client
//! certificates from it, signing and inspecting PKCS#10 requests (the kubelet TLS-bootstrap
//! flow), parsing the join token (`SHOAL1<ca-hash>::<id>.<secret>`, the CA pin and a bootstrap
//! token), rustls configurations for servers and clients (including a client that trusts a
//! server only when its chain carries the pinned CA), and one accept loop that serves an axum
//! `Router` over TLS with HTTP/1.1 and HTTP/2, handing each request the verified client
//! certificate's identity.
//!
//! Deliberately absent: authorization (the apiserver decides what an identity may do),
//! certificate rotation and revocation lists. Keys are ECDSA P-256.

mod ca;
mod config;
mod identity;
mod serve;
mod token;

pub use ca::{
    CERT_VALIDITY, CertificateAuthority, IssuedCertificate, certificate_serves, new_private_key,
    request_certificate, request_hosts, request_serving_certificate, request_subject,
};
pub use config::{client_config, pinned_client_config, server_config};
pub use identity::{ClientIdentity, identity_of_certificate};
pub use serve::{ConnectionInfo, serve};
pub use token::{BootstrapToken, JoinToken};

/// Failures of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating or signing a certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("building the TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("building the client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("reading {path}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("no certificate in PEM data")]
    NoCertificate,
    #[error("invalid PEM data: {0}")]
    Pem(String),
    #[error("invalid join token: {0}")]
    Token(String),
    #[error("certificate request refused: {0}")]
    Request(String),
}

/// SHA-256 of DER bytes as `sha256:<hex>`, the form a join token pins the CA with.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// The DER certificates in a PEM bundle, in order.
pub fn certificates_from_pem(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn private_key_from_pem(
    pem: &str,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pem(e.to_string()))
}

/// Writes `contents` to `path` atomically (temp file, fsync, rename) with mode `mode`.
pub fn write_file(path: &std::path::Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Reads a text file, naming it in the error.
pub fn read_file(path: &std::path::Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}
