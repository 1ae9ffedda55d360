//! CertificateSigningRequests: the approver and the signer of kube-controller-manager's
//! `csrapproving` and `csrsigning`, for node client certificates (the kubelet TLS bootstrap)
//! and node serving certificates (the agent's log endpoint).
//!
//! Approval of `kubernetes.io/kube-apiserver-client-kubelet`: a request is approved when it
//! asks for exactly `CN=system:node:<name>, O=system:nodes` with client-auth usages, and was
//! filed by a bootstrap token (a new node) or by that node itself (a renewal); a bootstrap
//! token asking for anything else is denied with the reason.
//!
//! Approval of `kubernetes.io/kubelet-serving`: a request is approved when the node itself
//! (`system:node:<name>`, never a bootstrap token) asks for `CN=system:node:<name>,
//! O=system:nodes` with server-auth usages and names the DNS name `<name>` and no other DNS
//! name (IP addresses may be added). The apiserver dials agents with the node's name as the
//! TLS server name, so a node can never answer for another; upstream leaves these requests to
//! an administrator or an external approver, which would leave a new node's logs unreachable.
//!
//! Other signers are left to an administrator (`kubectl certificate approve`).
//!
//! Signing: an approved request for one of these signers gets a certificate from the cluster
//! CA, valid one year, with only the request's subject, key and (serving) hosts, never its
//! other extensions. Without a CA (`Config::certificate_authority` unset) nothing is signed.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Error;

/// The signer of kubelet client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet (node agent) serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The signer of other client certificates (approved by an administrator).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// What a PEM certificate request asks for, read after checking its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    pub user: String,
    pub groups: Vec<String>,
    /// DNS names and IP addresses; `Err` when it names something else.
    pub hosts: Result<Vec<String>, String>,
}

impl Requested {
    /// Reads `pem`; `None` when it is not a valid request.
    pub fn read(pem: &str) -> Option<Requested> {
        let (user, groups) = shoal_tls::request_subject(pem).ok()?;
        let hosts = shoal_tls::request_hosts(pem).map_err(|e| e.to_string());
        Some(Requested {
            user,
            groups,
            hosts,
        })
    }
}

/// What to do with a request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approve(String),
    Deny(String),
    Sign,
    Nothing,
}

fn has_condition(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// The decision for `csr`, given what its PEM request asks for (`None`: unreadable).
pub fn decide(csr: &CertificateSigningRequest, request: Option<Requested>) -> Decision {
    let signed = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if signed || has_condition(csr, "Denied") || has_condition(csr, "Failed") {
        return Decision::Nothing;
    }
    let spec = &csr.spec;
    let ours = [KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, CLIENT_SIGNER]
        .contains(&spec.signer_name.as_str());
    if has_condition(csr, "Approved") {
        return if ours {
            Decision::Sign
        } else {
            Decision::Nothing
        };
    }
    let requester = spec.username.clone().unwrap_or_default();
    let usages = spec.usages.clone().unwrap_or_default();
    match spec.signer_name.as_str() {
        KUBELET_CLIENT_SIGNER => decide_client(&requester, &usages, request),
        KUBELET_SERVING_SIGNER => decide_serving(&requester, &usages, request),
        _ => Decision::Nothing,
    }
}

/// The node `request` is for, if it asks for exactly `CN=system:node:<name>, O=system:nodes`;
/// else why not.
fn node_subject(request: &Requested) -> Result<String, String> {
    let Some(node) = request
        .user
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
    else {
        return Err(format!(
            "a node may only ask for CN=system:node:<name>, not CN={}",
            request.user
        ));
    };
    if request.groups != ["system:nodes"] {
        return Err(format!(
            "a node certificate is in exactly the group system:nodes, not {:?}",
            request.groups
        ));
    }
    Ok(node.to_owned())
}

/// Whether `usages` include `needed` and nothing beyond it, digital signature and key
/// encipherment.
fn usages_fit(usages: &[String], needed: &str) -> bool {
    let allowed = ["digital signature", "key encipherment", needed];
    usages.iter().any(|u| u == needed) && usages.iter().all(|u| allowed.contains(&u.as_str()))
}

fn decide_client(requester: &str, usages: &[String], request: Option<Requested>) -> Decision {
    let bootstrap = requester.starts_with("system:bootstrap:");
    // Only a bootstrap token is told why; anything else waits for an administrator.
    let refuse = |why: String| {
        if bootstrap {
            Decision::Deny(why)
        } else {
            Decision::Nothing
        }
    };
    let Some(request) = request else {
        return refuse("the request is not a valid PEM certificate request".into());
    };
    let node = match node_subject(&request) {
        Ok(node) => node,
        Err(why) => return refuse(why),
    };
    if !usages_fit(usages, "client auth") {
        return refuse(format!(
            "usages must be client auth (with digital signature, key encipherment), not {usages:?}"
        ));
    }
    if bootstrap {
        return Decision::Approve(format!(
            "Auto approving the client certificate of node {node}, requested with a bootstrap token"
        ));
    }
    if requester == request.user {
        return Decision::Approve(format!(
            "Auto approving the renewal of node {node}'s client certificate"
        ));
    }
    Decision::Nothing
}

fn decide_serving(requester: &str, usages: &[String], request: Option<Requested>) -> Decision {
    // Only a node asking for its own certificate is decided here, either way.
    let Some(own) = requester
        .strip_prefix("system:node:")
        .filter(|n| !n.is_empty())
    else {
        return Decision::Nothing;
    };
    let Some(request) = request else {
        return Decision::Deny("the request is not a valid PEM certificate request".into());
    };
    let node = match node_subject(&request) {
        Ok(node) => node,
        Err(why) => return Decision::Deny(why),
    };
    if node != own {
        return Decision::Deny(format!(
            "node {own} may only ask for its own serving certificate, not {node}'s"
        ));
    }
    if !usages_fit(usages, "server auth") {
        return Decision::Deny(format!(
            "usages must be server auth (with digital signature, key encipherment), not {usages:?}"
        ));
    }
    let hosts = match &request.hosts {
        Ok(hosts) => hosts,
        Err(why) => return Decision::Deny(why.clone()),
    };
    let names: Vec<&String> = hosts
        .iter()
        .filter(|h| h.parse::<std::net::IpAddr>().is_err())
        .collect();
    if names.is_empty() || names.iter().any(|n| **n != node) {
        return Decision::Deny(format!(
            "a serving certificate names the DNS name {node} and no other, not {names:?}"
        ));
    }
    Decision::Approve(format!(
        "Auto approving the serving certificate of node {node}, requested by the node"
    ))
}

/// What the controller needs.
pub struct Context {
    pub client: kube::Client,
    pub ca: Option<Arc<shoal_tls::CertificateAuthority>>,
}

fn request_pem(csr: &CertificateSigningRequest) -> Option<String> {
    String::from_utf8(csr.spec.request.0.clone()).ok()
}

async fn reconcile(
    csr: Arc<CertificateSigningRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = csr.metadata.name.clone().unwrap_or_default();
    let pem = request_pem(&csr);
    let request = pem.as_deref().and_then(Requested::read);
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    let condition = |kind: &str, reason: &str, message: &str| {
        json!({
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastUpdateTime": jiff::Timestamp::now().to_string(),
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        })
    };
    match decide(&csr, request) {
        Decision::Nothing => {}
        Decision::Approve(message) => {
            info!(csr = %name, "approving certificate signing request");
            let patch = json!({"status": {"conditions": [condition("Approved", "AutoApproved", &message)]}});
            api.patch_subresource(
                "approval",
                &name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        }
        Decision::Deny(message) => {
            warn!(csr = %name, reason = %message, "denying certificate signing request");
            let patch =
                json!({"status": {"conditions": [condition("Denied", "AutoDenied", &message)]}});
            api.patch_subresource(
                "approval",
                &name,
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await?;
        }
        Decision::Sign => {
            let Some(ca) = &ctx.ca else {
                return Ok(Action::await_change());
            };
            let serving = csr.spec.signer_name == KUBELET_SERVING_SIGNER;
            let signed = pem.as_deref().map(|p| {
                if serving {
                    ca.sign_serving_request(p, shoal_tls::CERT_VALIDITY)
                } else {
                    ca.sign_client_request(p, shoal_tls::CERT_VALIDITY)
                }
            });
            let mut conditions = csr
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .map(|cs| serde_json::to_value(cs).unwrap_or_default())
                .unwrap_or_else(|| json!([]));
            let patch = match signed {
                Some(Ok(cert)) => {
                    use base64::Engine;
                    info!(csr = %name, "signed certificate");
                    json!({"status": {"certificate": base64::engine::general_purpose::STANDARD.encode(cert)}})
                }
                other => {
                    let why = match other {
                        Some(Err(e)) => e.to_string(),
                        _ => "the request is not PEM text".into(),
                    };
                    warn!(csr = %name, error = %why, "cannot sign certificate signing request");
                    if let Some(list) = conditions.as_array_mut() {
                        list.push(condition("Failed", "SigningError", &why));
                    }
                    json!({"status": {"conditions": conditions}})
                }
            };
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
    }
    Ok(Action::await_change())
}

fn error_policy(_csr: Arc<CertificateSigningRequest>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(%error, "certificate signing request reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the approver and signer until `shutdown`.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestSpec,
        CertificateSigningRequestStatus,
    };

    use super::*;

    fn csr(signer: &str, username: &str, usages: &[&str]) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                signer_name: signer.into(),
                username: Some(username.into()),
                usages: Some(usages.iter().map(|u| u.to_string()).collect()),
                request: ByteString(b"pem".to_vec()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn requested(user: &str, groups: &[&str], hosts: &[&str]) -> Option<Requested> {
        Some(Requested {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hosts: Ok(hosts.iter().map(|h| h.to_string()).collect()),
        })
    }

    fn node(name: &str) -> Option<Requested> {
        requested(&format!("system:node:{name}"), &["system:nodes"], &[])
    }

    fn serving(name: &str, hosts: &[&str]) -> Option<Requested> {
        requested(&format!("system:node:{name}"), &["system:nodes"], hosts)
    }

    const SERVER: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

    #[test]
    fn a_node_asking_for_its_own_serving_certificate_is_approved() {
        let c = csr(KUBELET_SERVING_SIGNER, "system:node:n1", &SERVER);
        assert!(matches!(
            decide(&c, serving("n1", &["n1", "10.0.0.1"])),
            Decision::Approve(_)
        ));
    }

    #[test]
    fn serving_requests_for_other_names_or_from_others_are_refused() {
        let c = csr(KUBELET_SERVING_SIGNER, "system:node:n1", &SERVER);
        // Another node's name, as subject or as DNS name: denied with the reason.
        assert!(
            matches!(decide(&c, serving("n2", &["n2"])), Decision::Deny(m) if m.contains("own"))
        );
        assert!(matches!(
            decide(&c, serving("n1", &["n1", "n2"])),
            Decision::Deny(m) if m.contains("no other")
        ));
        assert!(matches!(
            decide(&c, serving("n1", &["10.0.0.1"])),
            Decision::Deny(_)
        ));
        // Client usages on the serving signer: denied.
        let client = csr(KUBELET_SERVING_SIGNER, "system:node:n1", &CLIENT);
        assert!(
            matches!(decide(&client, serving("n1", &["n1"])), Decision::Deny(m) if m.contains("usages"))
        );
        // A bootstrap token or a user never gets one automatically.
        for who in ["system:bootstrap:abcdef", "alice"] {
            let c = csr(KUBELET_SERVING_SIGNER, who, &SERVER);
            assert_eq!(
                decide(&c, serving("n1", &["n1"])),
                Decision::Nothing,
                "{who}"
            );
        }
        // Names of another kind than DNS and IP: denied.
        let mut odd = serving("n1", &["n1"]).expect("request");
        odd.hosts = Err("only DNS names and IP addresses may be named".into());
        assert!(matches!(decide(&c, Some(odd)), Decision::Deny(_)));
    }

    const CLIENT: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

    #[test]
    fn a_bootstrapping_node_is_approved() {
        let c = csr(KUBELET_CLIENT_SIGNER, "system:bootstrap:abcdef", &CLIENT);
        assert!(matches!(decide(&c, node("n1")), Decision::Approve(_)));
    }

    #[test]
    fn a_node_renewing_its_own_certificate_is_approved_another_is_not() {
        let c = csr(KUBELET_CLIENT_SIGNER, "system:node:n1", &CLIENT);
        assert!(matches!(decide(&c, node("n1")), Decision::Approve(_)));
        assert_eq!(decide(&c, node("n2")), Decision::Nothing);
    }

    #[test]
    fn a_bootstrap_token_asking_for_more_is_denied_with_the_reason() {
        let c = csr(KUBELET_CLIENT_SIGNER, "system:bootstrap:abcdef", &CLIENT);
        let masters = requested("system:node:n1", &["system:masters"], &[]);
        assert!(matches!(decide(&c, masters), Decision::Deny(m) if m.contains("system:nodes")));
        let admin = requested("admin", &["system:nodes"], &[]);
        assert!(matches!(decide(&c, admin), Decision::Deny(m) if m.contains("CN=admin")));
        let server = csr(
            KUBELET_CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &["digital signature", "server auth"],
        );
        assert!(matches!(decide(&server, node("n1")), Decision::Deny(m) if m.contains("usages")));
        assert!(matches!(decide(&c, None), Decision::Deny(_)));
    }

    #[test]
    fn other_signers_wait_for_an_administrator_then_get_signed() {
        let mut c = csr(CLIENT_SIGNER, "alice", &["client auth"]);
        assert_eq!(decide(&c, node("n1")), Decision::Nothing);
        c.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(decide(&c, node("n1")), Decision::Sign);
        c.status.as_mut().expect("status").certificate = Some(ByteString(b"cert".to_vec()));
        assert_eq!(decide(&c, node("n1")), Decision::Nothing);
    }

    #[test]
    fn denied_requests_are_left_alone() {
        let mut c = csr(KUBELET_CLIENT_SIGNER, "system:bootstrap:abcdef", &CLIENT);
        c.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Denied".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(decide(&c, node("n1")), Decision::Nothing);
    }
}
