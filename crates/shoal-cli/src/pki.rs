//! The files a server keeps under `DIR/pki` and the credentials made from them.
//!
//! `ca.crt`/`ca.key` is the cluster CA (created by the first server, copied to every member
//! that joins). Certificates for this member's listeners and for the in-process components are
//! issued from it at every start (so new addresses and SANs take effect) and kept in memory;
//! only the admin's kubeconfig (`DIR/kubeconfig`) and an agent's node certificate are written
//! out.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};
use shoal_tls::{CertificateAuthority, IssuedCertificate};

/// `DIR/pki`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Loads the CA of `data_dir`, creating it when `create` and it does not exist yet.
pub fn load_or_create_ca(data_dir: &Path, create: bool) -> Result<Arc<CertificateAuthority>> {
    let pki = dir(data_dir);
    if pki.join("ca.crt").exists() {
        let ca = CertificateAuthority::load(&pki)
            .with_context(|| format!("loading the cluster CA from {}", pki.display()))?;
        return Ok(Arc::new(ca));
    }
    anyhow::ensure!(
        create,
        "{} has no cluster CA (ca.crt): this data dir was never part of a cluster",
        pki.display()
    );
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    set_mode(&pki, 0o700)?;
    let ca = CertificateAuthority::generate("shoal-ca").context("creating the cluster CA")?;
    ca.save(&pki)
        .with_context(|| format!("writing the cluster CA to {}", pki.display()))?;
    tracing::info!(fingerprint = %ca.fingerprint(), "created the cluster CA");
    Ok(Arc::new(ca))
}

/// Saves a CA received when joining.
pub fn save_ca(
    data_dir: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<CertificateAuthority>> {
    let pki = dir(data_dir);
    std::fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    set_mode(&pki, 0o700)?;
    let ca = CertificateAuthority::from_pem(cert_pem, key_pem).context("reading the cluster CA")?;
    ca.save(&pki)
        .with_context(|| format!("writing the cluster CA to {}", pki.display()))?;
    Ok(Arc::new(ca))
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// The names a member's certificate is valid for: the given hosts, loopback, `localhost`, the
/// host name, and the extra SANs.
pub fn hosts(addresses: &[IpAddr], extra: &[String]) -> Vec<String> {
    let mut hosts: Vec<String> = addresses
        .iter()
        .filter(|ip| !ip.is_unspecified())
        .map(ToString::to_string)
        .collect();
    hosts.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
    if let Some(name) = crate::process::hostname_opt() {
        hosts.push(name);
    }
    hosts.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    hosts.retain(|h| seen.insert(h.clone()));
    hosts
}

/// A kubeconfig for `server` with embedded CA and client credentials, as kubectl reads it.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &IssuedCertificate, user_name: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user_name}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: {user_name}\n    namespace: default\ncurrent-context: shoal\n",
        b64(ca_pem),
        b64(&user.cert_pem),
        b64(&user.key_pem),
    )
}

/// Writes a kubeconfig (mode 0600: it holds a private key).
pub fn write_kubeconfig(path: &Path, text: &str) -> Result<()> {
    shoal_tls::write_file(path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// A kube-rs client from kubeconfig text.
pub async fn client_from_kubeconfig(text: &str) -> Result<kube::Client> {
    client_from_kubeconfig_at(text, None).await
}

/// A kube-rs client from kubeconfig text, talking to `server` instead of the kubeconfig's.
pub async fn client_from_kubeconfig_at(text: &str, server: Option<&str>) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::from_yaml(text).context("parsing a kubeconfig")?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading a kubeconfig")?;
    if let Some(server) = server {
        config.cluster_url = server.parse().context("API address")?;
    }
    kube::Client::try_from(config).context("building the API client")
}

/// A client of `server` acting as `user` in `groups`, with a certificate issued now.
pub async fn client_as(
    ca: &CertificateAuthority,
    server: &str,
    user: &str,
    groups: &[&str],
) -> Result<kube::Client> {
    let issued = ca
        .issue_client(user, groups)
        .with_context(|| format!("issuing a certificate for {user}"))?;
    client_from_kubeconfig(&kubeconfig(server, ca.cert_pem(), &issued, user)).await
}
