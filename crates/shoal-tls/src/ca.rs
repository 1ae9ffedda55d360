//! The cluster certificate authority: one self-signed ECDSA P-256 CA per cluster, stored as
//! `ca.crt` and `ca.key` (mode 0600) in a directory of the caller's choosing, and the
//! certificates it issues.
//!
//! Client certificates carry the Kubernetes identity as the apiserver reads it: the common
//! name is the user, each organization a group (`CN=system:node:n1, O=system:nodes`).
//! Certificate requests are never signed as they come: only their subject and public key are
//! taken, and the usages are the signer's.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::{TlsError, read_file, write_file};

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long issued certificates are valid (a year, as kubeadm's).
pub const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Slack for clocks that run a little behind the issuer's.
const BACKDATE: Duration = Duration::from_secs(3600);

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The cluster CA, able to issue certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

fn validity(length: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - BACKDATE, now + length)
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A new private key, PEM (PKCS#8).
pub fn new_private_key() -> Result<String, TlsError> {
    Ok(KeyPair::generate()?.serialize_pem())
}

/// A PKCS#10 request for a client certificate of `user` in `groups`, signed by `key_pem`.
pub fn request_certificate(key_pem: &str, user: &str, groups: &[&str]) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(user, groups);
    Ok(params.serialize_request(&key)?.pem()?)
}

/// A PKCS#10 request for a serving certificate of `user` in `groups` for `hosts` (DNS names or
/// IP addresses), signed by `key_pem`: what a node agent files for its own endpoint.
pub fn request_serving_certificate(
    key_pem: &str,
    user: &str,
    groups: &[&str],
    hosts: &[String],
) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(user, groups);
    params.subject_alt_names = subject_alt_names(hosts)?;
    Ok(params.serialize_request(&key)?.pem()?)
}

fn subject_alt_names(hosts: &[String]) -> Result<Vec<SanType>, TlsError> {
    hosts
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(h.clone().try_into()?)),
        })
        .collect()
}

/// The hosts a PKCS#10 request names in its subject alternative names, after checking its
/// signature: DNS names and IP addresses; any other kind of name is refused.
pub fn request_hosts(request_pem: &str) -> Result<Vec<String>, TlsError> {
    let request = CertificateSigningRequestParams::from_pem(request_pem)?;
    request
        .params
        .subject_alt_names
        .iter()
        .map(|san| match san {
            SanType::DnsName(name) => Ok(name.as_str().to_owned()),
            SanType::IpAddress(ip) => Ok(ip.to_string()),
            other => Err(TlsError::Request(format!(
                "only DNS names and IP addresses may be named, not {other:?}"
            ))),
        })
        .collect()
}

/// Whether the first certificate of `cert_pem` names `host` (DNS name or IP address) and is
/// still valid `margin` from now: a kept serving certificate is reused only then.
pub fn certificate_serves(cert_pem: &str, host: &str, margin: Duration) -> bool {
    let Ok(certs) = crate::certificates_from_pem(cert_pem) else {
        return false;
    };
    let Some(der) = certs.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let deadline = OffsetDateTime::now_utc() + margin;
    if cert.validity().not_after.to_datetime() < deadline {
        return false;
    }
    let Ok(Some(names)) = cert.subject_alternative_name() else {
        return false;
    };
    names.value.general_names.iter().any(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => *d == host,
        x509_parser::extensions::GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                _ => None,
            };
            ip.is_some_and(|ip| ip.to_string() == host)
        }
        _ => false,
    })
}

impl CertificateAuthority {
    /// A new CA named `common_name`, kept in memory only.
    pub fn generate(common_name: &str) -> Result<CertificateAuthority, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority {
            cert_der: cert.der().to_vec(),
            cert_pem,
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = crate::certificates_from_pem(cert_pem)?
            .into_iter()
            .next()
            .ok_or(TlsError::NoCertificate)?
            .to_vec();
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Loads `dir/ca.crt` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<CertificateAuthority, TlsError> {
        let cert = read_file(&dir.join("ca.crt"))?;
        let key = read_file(&dir.join("ca.key"))?;
        CertificateAuthority::from_pem(&cert, &key)
    }

    /// Writes `dir/ca.crt` (0644) and `dir/ca.key` (0600).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        write_file(&dir.join("ca.key"), self.key_pem.as_bytes(), 0o600)?;
        write_file(&dir.join("ca.crt"), self.cert_pem.as_bytes(), 0o644)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (handed to servers that join the cluster).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// `sha256:<hex>` of the CA certificate: what join tokens pin.
    pub fn fingerprint(&self) -> String {
        crate::fingerprint(&self.cert_der)
    }

    /// A serving certificate for `hosts` (IP addresses or DNS names) that is also good for
    /// client authentication as `common_name` in `organizations` (members use one certificate
    /// to serve and to call each other).
    pub fn issue_server(
        &self,
        common_name: &str,
        organizations: &[&str],
        hosts: &[String],
    ) -> Result<IssuedCertificate, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, organizations);
        params.subject_alt_names = subject_alt_names(hosts)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(CERT_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `user` in `groups`.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<IssuedCertificate, TlsError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let params = client_params(name(user, groups), CERT_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// Signs a PKCS#10 request as a client certificate valid for `validity`. Only the
    /// request's subject and public key are used; the request's own extensions are ignored.
    pub fn sign_client_request(
        &self,
        request_pem: &str,
        validity: Duration,
    ) -> Result<String, TlsError> {
        let request = CertificateSigningRequestParams::from_pem(request_pem)?;
        let params = client_params(request.params.distinguished_name.clone(), validity);
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }

    /// Signs a PKCS#10 request as a serving certificate (server auth only) for the request's
    /// subject and the DNS names and IP addresses it names, valid for `validity`. Whether
    /// those hosts are the requester's to have is the approver's decision, made before.
    pub fn sign_serving_request(
        &self,
        request_pem: &str,
        validity: Duration,
    ) -> Result<String, TlsError> {
        let hosts = request_hosts(request_pem)?;
        let request = CertificateSigningRequestParams::from_pem(request_pem)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = request.params.distinguished_name.clone();
        params.subject_alt_names = subject_alt_names(&hosts)?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = self::validity(validity);
        Ok(params.signed_by(&request.public_key, &self.issuer)?.pem())
    }
}

fn client_params(subject: DistinguishedName, length: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(length);
    params
}

/// The subject of a PKCS#10 request (user, groups), after checking its signature.
pub fn request_subject(request_pem: &str) -> Result<(String, Vec<String>), TlsError> {
    let request = CertificateSigningRequestParams::from_pem(request_pem)?;
    let text = |v: &DnValue| match v {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        _ => None,
    };
    let mut user = None;
    let mut groups = Vec::new();
    for (ty, value) in request.params.distinguished_name.iter() {
        match ty {
            DnType::CommonName => user = text(value),
            DnType::OrganizationName => groups.extend(text(value)),
            _ => {}
        }
    }
    let user = user.ok_or_else(|| TlsError::Request("the request has no common name".into()))?;
    Ok((user, groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity_of_certificate;

    #[test]
    fn issued_client_certificates_carry_user_and_groups() {
        let ca = CertificateAuthority::generate("test-ca").expect("ca");
        let issued = ca
            .issue_client("system:admin", &["system:masters"])
            .expect("issue");
        let der = crate::certificates_from_pem(&issued.cert_pem).expect("pem")[0].clone();
        let id = identity_of_certificate(&der).expect("identity");
        assert_eq!(id.user, "system:admin");
        assert_eq!(id.groups, vec!["system:masters".to_string()]);
    }

    #[test]
    fn requests_are_signed_with_their_subject_only() {
        let ca = CertificateAuthority::generate("test-ca").expect("ca");
        let key = new_private_key().expect("key");
        let csr = request_certificate(&key, "system:node:n1", &["system:nodes"]).expect("request");
        assert_eq!(
            request_subject(&csr).expect("subject"),
            (
                "system:node:n1".to_string(),
                vec!["system:nodes".to_string()]
            )
        );
        let cert = ca
            .sign_client_request(&csr, Duration::from_secs(3600))
            .expect("sign");
        let der = crate::certificates_from_pem(&cert).expect("pem")[0].clone();
        let id = identity_of_certificate(&der).expect("identity");
        assert_eq!(id.user, "system:node:n1");
        assert_eq!(id.groups, vec!["system:nodes".to_string()]);
    }

    #[test]
    fn serving_requests_are_signed_for_their_hosts_and_verify_by_name() {
        let ca = CertificateAuthority::generate("test-ca").expect("ca");
        let key = new_private_key().expect("key");
        let hosts = vec!["n1".to_string(), "10.0.0.7".to_string()];
        let csr = request_serving_certificate(&key, "system:node:n1", &["system:nodes"], &hosts)
            .expect("request");
        assert_eq!(request_hosts(&csr).expect("hosts"), hosts);
        let cert = ca
            .sign_serving_request(&csr, Duration::from_secs(3600))
            .expect("sign");
        let der = crate::certificates_from_pem(&cert).expect("pem")[0].clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = parsed
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(certificate_serves(&cert, "n1", Duration::from_secs(60)));
        assert!(certificate_serves(
            &cert,
            "10.0.0.7",
            Duration::from_secs(60)
        ));
        assert!(!certificate_serves(&cert, "n2", Duration::from_secs(60)));
        assert!(!certificate_serves(&cert, "n1", Duration::from_secs(7200)));
        // A client that trusts the CA accepts it for the name `n1`, and not for `n2`.
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(crate::certificates_from_pem(ca.cert_pem()).expect("ca")[0].clone())
                .expect("root");
            std::sync::Arc::new(r)
        };
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        use rustls::client::danger::ServerCertVerifier;
        let now = rustls::pki_types::UnixTime::now();
        for (host, ok) in [("n1", true), ("n2", false)] {
            let name = rustls::pki_types::ServerName::try_from(host).expect("name");
            assert_eq!(
                verifier
                    .verify_server_cert(&der, &[], &name, &[], now)
                    .is_ok(),
                ok,
                "{host}"
            );
        }
    }

    #[test]
    fn a_tampered_request_is_refused() {
        use base64::Engine;
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject;
        let key = new_private_key().expect("key");
        let csr = request_certificate(&key, "system:node:n1", &["system:nodes"]).expect("csr");
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .expect("pem")
            .as_ref()
            .to_vec();
        // Change one byte of the subject: the signature no longer matches.
        let at = der
            .windows(4)
            .position(|w| w == b"node")
            .expect("subject in the request");
        der[at] = b'm';
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert!(request_subject(&tampered).is_err());
    }

    #[test]
    fn the_ca_round_trips_through_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate("test-ca").expect("ca");
        ca.save(dir.path()).expect("save");
        let back = CertificateAuthority::load(dir.path()).expect("load");
        assert_eq!(back.fingerprint(), ca.fingerprint());
        // The loaded CA still issues certificates that chain to the same root.
        let issued = back.issue_client("u", &[]).expect("issue");
        assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
    }
}
