//! Authentication and authorization of every request, in one middleware.
//!
//! Who: a client certificate verified by the TLS layer against the cluster CA (common name =
//! user, organizations = groups), or a bootstrap token (`Authorization: Bearer <id>.<secret>`,
//! the Secret `kube-system/bootstrap-token-<id>`, as kubeadm's), else anonymous. On the plain
//! HTTP listener (explicit, loopback only, for tests and local tools) every request acts as the
//! cluster admin, like the old insecure port.
//!
//! What: a small fixed policy, not RBAC. `system:masters`, nodes, members and the control
//! plane's own components may do anything; bootstrap tokens may read discovery and create and
//! read CertificateSigningRequests, join control-plane members when their token says so, and
//! scrape metrics when their token says so; every authenticated user may ask what it may do
//! (SelfSubjectAccessReview, answered by this same policy in `review.rs`) and who it is
//! (SelfSubjectReview); anonymous requests may reach health, version and the CA bundle only. Everything else gets 401 (no identity) or 403 (not allowed), as `Status`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::AppState;
use crate::error::ApiError;

/// Group of every authenticated user.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Group with every permission.
pub const MASTERS: &str = "system:masters";
/// Group of bootstrap-token users.
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
/// Group of node agents' certificates.
pub const NODES: &str = "system:nodes";
/// Extra group a bootstrap token carries when it may also join control-plane members.
pub const SERVER_JOINERS: &str = "system:bootstrappers:shoal:servers";
/// Extra group a bootstrap token carries when it may scrape `/metrics`.
pub const METRICS_READERS: &str = "system:bootstrappers:shoal:metrics";
/// Users of the control plane's own components.
const COMPONENTS: [&str; 2] = ["system:kube-scheduler", "system:kube-controller-manager"];

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    /// The bootstrap token id, for users authenticated by one.
    pub token_id: Option<String>,
}

impl User {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    fn admin() -> User {
        User {
            name: "system:admin".into(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
            token_id: None,
        }
    }

    /// May do anything.
    pub(crate) fn privileged(&self) -> bool {
        self.in_group(MASTERS)
            || self.in_group(NODES)
            || self.in_group(shoal_store::MEMBERS_GROUP)
            || COMPONENTS.contains(&self.name.as_str())
    }
}

/// How requests on a listener are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// TLS: client certificates and bootstrap tokens.
    Tls,
    /// Plain HTTP on loopback: every request is the admin.
    Insecure,
}

fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/livez" | "/readyz" | "/version" | "/version/" | "/cacerts"
    )
}

fn is_discovery(path: &str) -> bool {
    path == "/api"
        || path == "/apis"
        || path.starts_with("/openapi/")
        || path == "/api/v1"
        || (path.starts_with("/apis/") && path.trim_end_matches('/').split('/').count() <= 4)
}

/// What a bootstrap-token user may do.
fn bootstrapper_may(user: &User, method: &Method, path: &str) -> bool {
    if is_discovery(path) && method == Method::GET {
        return true;
    }
    if path.starts_with("/apis/certificates.k8s.io/v1/certificatesigningrequests") {
        return matches!(*method, Method::GET | Method::POST);
    }
    if (path == "/shoal/v1/join" || path == "/shoal/v1/members") && method == Method::POST {
        return user.in_group(SERVER_JOINERS);
    }
    if path == "/metrics" && method == Method::GET {
        return user.in_group(METRICS_READERS);
    }
    false
}

/// Paths every authenticated user may post to: asking what they may do and who they are
/// (upstream's `system:basic-user`).
fn is_self_review(path: &str) -> bool {
    matches!(
        path,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
            | "/apis/authentication.k8s.io/v1/selfsubjectreviews"
    )
}

/// The policy: whether `user` (`None`: anonymous) may send `method` to `path`.
pub fn allowed(user: Option<&User>, method: &Method, path: &str) -> bool {
    match user {
        _ if is_public(path) => true,
        None => false,
        Some(u) if u.privileged() => true,
        Some(_) if is_self_review(path) && method == Method::POST => true,
        Some(u) if u.in_group(BOOTSTRAPPERS) => bootstrapper_may(u, method, path),
        Some(_) => false,
    }
}

/// Authenticates and authorizes each request; puts the [`User`] into its extensions.
pub async fn middleware(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let user = match state.auth_mode() {
        Mode::Insecure => Some(User::admin()),
        Mode::Tls => match authenticate(&state, &request_credentials(&request)).await {
            Ok(user) => user,
            Err(e) => return e.into_response(),
        },
    };
    if user.is_none() && !is_public(&path) {
        return ApiError::Unauthorized.into_response();
    }
    if !allowed(user.as_ref(), request.method(), &path) {
        let who = user
            .as_ref()
            .map_or("system:anonymous", |u| u.name.as_str());
        return ApiError::Forbidden(format!(
            "User \"{who}\" cannot {} path \"{path}\"",
            request.method().as_str().to_ascii_lowercase()
        ))
        .into_response();
    }
    if let Some(user) = user {
        request.extensions_mut().insert(user);
    }
    next.run(request).await
}

/// What a request presents to prove who it is.
struct Credentials {
    certificate: Option<shoal_tls::ClientIdentity>,
    bearer: Option<String>,
}

fn request_credentials(request: &Request) -> Credentials {
    Credentials {
        certificate: request
            .extensions()
            .get::<shoal_tls::ConnectionInfo>()
            .and_then(|c| c.identity.clone()),
        bearer: bearer(request.headers()).map(str::to_owned),
    }
}

/// The user of a request: its client certificate, else its bearer token, else none.
async fn authenticate(
    state: &AppState,
    credentials: &Credentials,
) -> Result<Option<User>, ApiError> {
    if let Some(identity) = credentials.certificate.clone() {
        let mut groups = identity.groups;
        groups.push(AUTHENTICATED.into());
        return Ok(Some(User {
            name: identity.user,
            groups,
            token_id: None,
        }));
    }
    match &credentials.bearer {
        Some(token) => bootstrap_user(state, token).await.map(Some),
        None => Ok(None),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Checks a bootstrap token against its Secret. Any failure is 401 with a reason that does
/// not tell a wrong secret from a missing token.
async fn bootstrap_user(state: &AppState, token: &str) -> Result<User, ApiError> {
    let refused = |why: &str| {
        tracing::info!(reason = why, "bootstrap token refused");
        ApiError::Unauthorized
    };
    let token = shoal_tls::BootstrapToken::parse(token).map_err(|_| refused("malformed"))?;
    let key = format!(
        "/registry/core/secrets/kube-system/bootstrap-token-{}",
        token.id
    );
    let Some(kv) = state.store().get(&key).await? else {
        return Err(refused("no such token"));
    };
    let secret: Value = serde_json::from_slice(&kv.value).map_err(|_| refused("unreadable"))?;
    let data = |k: &str| -> Option<String> {
        let encoded = secret.pointer(&format!("/data/{k}"))?.as_str()?;
        decode_base64(encoded)
    };
    if secret.pointer("/type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
        return Err(refused("wrong secret type"));
    }
    if data("token-id").as_deref() != Some(token.id.as_str()) {
        return Err(refused("token id mismatch"));
    }
    if !data("token-secret").is_some_and(|s| token.secret_matches(&s)) {
        return Err(refused("wrong secret"));
    }
    if data("usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(refused("not for authentication"));
    }
    if let Some(expiration) = data("expiration") {
        let expires: jiff::Timestamp = expiration.parse().map_err(|_| refused("bad expiration"))?;
        if expires <= jiff::Timestamp::now() {
            return Err(refused("expired"));
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_string(), AUTHENTICATED.to_string()];
    if let Some(extra) = data("auth-extra-groups") {
        groups.extend(
            extra
                .split(',')
                .map(str::trim)
                .filter(|g| g.starts_with("system:bootstrappers:"))
                .map(str::to_owned),
        );
    }
    Ok(User {
        name: format!("system:bootstrap:{}", token.id),
        groups,
        token_id: Some(token.id),
    })
}

fn decode_base64(s: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(bytes).ok()
}

/// A user with these groups and no token (for tests of the policy).
#[cfg(test)]
pub(crate) fn user(name: &str, groups: &[&str]) -> User {
    User {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        token_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrappers_may_only_bootstrap() {
        let agent = user("system:bootstrap:abcdef", &[BOOTSTRAPPERS]);
        let csrs = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
        assert!(bootstrapper_may(&agent, &Method::POST, csrs));
        assert!(bootstrapper_may(
            &agent,
            &Method::GET,
            &format!("{csrs}/node-csr-x")
        ));
        assert!(bootstrapper_may(&agent, &Method::GET, "/apis"));
        assert!(bootstrapper_may(
            &agent,
            &Method::GET,
            "/apis/certificates.k8s.io/v1"
        ));
        assert!(!bootstrapper_may(&agent, &Method::POST, "/shoal/v1/join"));
        assert!(!bootstrapper_may(&agent, &Method::DELETE, csrs));
        assert!(!bootstrapper_may(&agent, &Method::GET, "/api/v1/secrets"));
        assert!(!bootstrapper_may(
            &agent,
            &Method::GET,
            "/api/v1/namespaces/kube-system/secrets"
        ));
        assert!(!bootstrapper_may(
            &agent,
            &Method::POST,
            "/shoal/v1/members"
        ));
        assert!(!bootstrapper_may(&agent, &Method::GET, "/metrics"));
        let server = user("system:bootstrap:abcdef", &[BOOTSTRAPPERS, SERVER_JOINERS]);
        assert!(bootstrapper_may(
            &server,
            &Method::POST,
            "/shoal/v1/members"
        ));
        assert!(bootstrapper_may(&server, &Method::POST, "/shoal/v1/join"));
        let scraper = user("system:bootstrap:abcdef", &[BOOTSTRAPPERS, METRICS_READERS]);
        assert!(bootstrapper_may(&scraper, &Method::GET, "/metrics"));
    }

    #[test]
    fn who_is_privileged() {
        assert!(user("system:admin", &[MASTERS]).privileged());
        assert!(user("system:node:n1", &[NODES]).privileged());
        assert!(user("system:kube-scheduler", &[]).privileged());
        assert!(!user("system:bootstrap:abcdef", &[BOOTSTRAPPERS]).privileged());
        assert!(!user("alice", &["devs"]).privileged());
    }
}
