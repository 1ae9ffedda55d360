//! CertificateSigningRequests: the approver and the signer of kube-controller-manager's
//! `csrapproving` and `csrsigning`, for node client certificates (the kubelet TLS bootstrap).
//!
//! Approval: a request for the signer `kubernetes.io/kube-apiserver-client-kubelet` is approved
//! when it asks for exactly `CN=system:node:<name>, O=system:nodes` with client-auth usages,
//! and was filed by a bootstrap token (a new node) or by that node itself (a renewal); a
//! bootstrap token asking for anything else is denied with the reason. Other signers are left
//! to an administrator (`kubectl certificate approve`).
//!
//! Signing: an approved request for one of the client signers gets a certificate from the
//! cluster CA, valid one year, with only the request's subject and key (never its extensions).
//! Without a CA (`Config::certificate_authority` unset) nothing is signed.

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
/// The signer of other client certificates (approved by an administrator).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

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

/// The decision for `csr`, given the subject its PEM request names (`None`: unreadable).
pub fn decide(csr: &CertificateSigningRequest, subject: Option<(String, Vec<String>)>) -> Decision {
    let signed = csr
        .status
        .as_ref()
        .and_then(|s| s.certificate.as_ref())
        .is_some_and(|c| !c.0.is_empty());
    if signed || has_condition(csr, "Denied") || has_condition(csr, "Failed") {
        return Decision::Nothing;
    }
    let spec = &csr.spec;
    let ours = spec.signer_name == KUBELET_CLIENT_SIGNER || spec.signer_name == CLIENT_SIGNER;
    if has_condition(csr, "Approved") {
        return if ours {
            Decision::Sign
        } else {
            Decision::Nothing
        };
    }
    if spec.signer_name != KUBELET_CLIENT_SIGNER {
        return Decision::Nothing;
    }
    let requester = spec.username.clone().unwrap_or_default();
    let bootstrap = requester.starts_with("system:bootstrap:");
    let Some((user, groups)) = subject else {
        return if bootstrap {
            Decision::Deny("the request is not a valid PEM certificate request".into())
        } else {
            Decision::Nothing
        };
    };
    let Some(node) = user.strip_prefix("system:node:").filter(|n| !n.is_empty()) else {
        return if bootstrap {
            Decision::Deny(format!(
                "a node may only ask for CN=system:node:<name>, not CN={user}"
            ))
        } else {
            Decision::Nothing
        };
    };
    if groups != ["system:nodes"] {
        return if bootstrap {
            Decision::Deny(format!(
                "a node certificate is in exactly the group system:nodes, not {groups:?}"
            ))
        } else {
            Decision::Nothing
        };
    }
    let allowed = ["digital signature", "key encipherment", "client auth"];
    let usages = spec.usages.clone().unwrap_or_default();
    if !usages.iter().any(|u| u == "client auth")
        || usages.iter().any(|u| !allowed.contains(&u.as_str()))
    {
        return if bootstrap {
            Decision::Deny(format!(
                "usages must be client auth (with digital signature, key encipherment), not {usages:?}"
            ))
        } else {
            Decision::Nothing
        };
    }
    if bootstrap {
        return Decision::Approve(format!(
            "Auto approving the client certificate of node {node}, requested with a bootstrap token"
        ));
    }
    if requester == user {
        return Decision::Approve(format!(
            "Auto approving the renewal of node {node}'s client certificate"
        ));
    }
    Decision::Nothing
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
    let subject = pem
        .as_deref()
        .and_then(|p| shoal_tls::request_subject(p).ok());
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
    match decide(&csr, subject) {
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
            let signed = pem
                .as_deref()
                .map(|p| ca.sign_client_request(p, shoal_tls::CERT_VALIDITY));
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

    fn node(name: &str) -> Option<(String, Vec<String>)> {
        Some((format!("system:node:{name}"), vec!["system:nodes".into()]))
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
        let masters = Some((
            "system:node:n1".to_string(),
            vec!["system:masters".to_string()],
        ));
        assert!(matches!(decide(&c, masters), Decision::Deny(m) if m.contains("system:nodes")));
        let admin = Some(("admin".to_string(), vec!["system:nodes".to_string()]));
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
