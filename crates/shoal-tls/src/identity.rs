//! Who a verified client certificate names: the common name is the user, each organization a
//! group, as the Kubernetes apiserver reads client certificates.

use rustls::pki_types::CertificateDer;

/// The user and groups of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub user: String,
    pub groups: Vec<String>,
}

/// The identity in `der`, or `None` when it cannot be parsed or has no common name. Call it
/// only on a certificate the TLS layer has verified.
pub fn identity_of_certificate(der: &CertificateDer<'_>) -> Option<ClientIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some(ClientIdentity { user, groups })
}
