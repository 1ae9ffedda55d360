//! Asking the apiserver about oneself: `SelfSubjectAccessReview` (authorization.k8s.io/v1,
//! what `kubectl auth can-i` sends) is answered by the same policy that guards every request
//! (`auth::allowed`), applied to the request the attributes describe; `SelfSubjectReview`
//! (authentication.k8s.io/v1, `kubectl auth whoami`) returns the authenticated user. Neither is
//! stored.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::{User, allowed};
use crate::error::{ApiError, MAX_REQUEST_BYTES, json_response};

async fn body_of(req: Request, kind: &str) -> Result<(Option<User>, Value), ApiError> {
    let (parts, body) = req.into_parts();
    let user = parts.extensions.get::<User>().cloned();
    let bytes = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge {
            size: MAX_REQUEST_BYTES + 1,
            limit: MAX_REQUEST_BYTES,
        })?;
    let value = crate::resources::parse_json(&parts.headers, &bytes)?;
    let got = value.get("kind").and_then(Value::as_str).unwrap_or(kind);
    if got != kind {
        return Err(ApiError::BadRequest(format!(
            "the kind of the provided object ({got}) does not match the kind of the resource ({kind})"
        )));
    }
    Ok((user, value))
}

/// The method a verb stands for.
fn method_of(verb: &str) -> Option<Method> {
    Some(match verb {
        "get" | "list" | "watch" => Method::GET,
        "create" => Method::POST,
        "update" => Method::PUT,
        "patch" => Method::PATCH,
        "delete" | "deletecollection" => Method::DELETE,
        _ => return None,
    })
}

/// The request path resource attributes describe.
fn path_of(attrs: &Value) -> String {
    let s = |k: &str| attrs.get(k).and_then(Value::as_str).unwrap_or_default();
    let version = if s("version").is_empty() {
        "v1"
    } else {
        s("version")
    };
    let mut path = if s("group").is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{}/{version}", s("group"))
    };
    if !s("namespace").is_empty() {
        path.push_str(&format!("/namespaces/{}", s("namespace")));
    }
    for part in [s("resource"), s("name"), s("subresource")] {
        if !part.is_empty() {
            path.push('/');
            path.push_str(part);
        }
    }
    path
}

/// Whether `user` may do what the review's spec asks, and why.
fn decide(user: Option<&User>, spec: &Value) -> Result<(bool, String), ApiError> {
    let (verb, path) = if let Some(attrs) = spec.get("resourceAttributes") {
        let verb = attrs
            .get("verb")
            .and_then(Value::as_str)
            .unwrap_or_default();
        (verb, path_of(attrs))
    } else if let Some(attrs) = spec.get("nonResourceAttributes") {
        let verb = attrs
            .get("verb")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let path = attrs.get("path").and_then(Value::as_str).unwrap_or("/");
        (verb, path.to_string())
    } else {
        return Err(ApiError::Invalid {
            kind: "SelfSubjectAccessReview",
            subject: crate::error::Subject {
                group: "authorization.k8s.io",
                resource: "selfsubjectaccessreviews",
                name: String::new(),
            },
            causes: vec![crate::api::validation::FieldError::invalid(
                "spec.resourceAttributes",
                &Value::Null,
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        });
    };
    let privileged = user.is_some_and(User::privileged);
    // A wildcard, or a verb with no method, is allowed only to whoever may do anything.
    let wildcard = verb == "*" || path.split('/').any(|p| p == "*");
    let ok = match method_of(verb) {
        _ if wildcard => privileged,
        Some(method) => allowed(user, &method, &path),
        None => privileged,
    };
    // As upstream's RBAC: a reason when allowed, none when denied (kubectl prints "no").
    let reason = if ok {
        "allowed by Shoal's fixed policy"
    } else {
        ""
    };
    Ok((ok, reason.to_string()))
}

/// `POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews`.
pub async fn access(State(_state): State<AppState>, req: Request) -> Response {
    let result = async {
        let (user, review) = body_of(req, "SelfSubjectAccessReview").await?;
        let spec = review.get("spec").cloned().unwrap_or_else(|| json!({}));
        let (ok, reason) = decide(user.as_ref(), &spec)?;
        Ok::<_, ApiError>(json_response(
            StatusCode::CREATED,
            &json!({
                "kind": "SelfSubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "spec": spec,
                "status": {"allowed": ok, "reason": reason},
            }),
        ))
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews`.
pub async fn whoami(State(_state): State<AppState>, req: Request) -> Response {
    let result = async {
        let (user, _) = body_of(req, "SelfSubjectReview").await?;
        let user = user.ok_or(ApiError::Unauthorized)?;
        Ok::<_, ApiError>(json_response(
            StatusCode::CREATED,
            &json!({
                "kind": "SelfSubjectReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": null},
                "status": {"userInfo": {"username": user.name, "groups": user.groups}},
            }),
        ))
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::user;

    #[test]
    fn reviews_follow_the_policy() {
        let admin = user("admin", &["system:masters"]);
        let boot = user("system:bootstrap:abc", &["system:bootstrappers"]);
        let pods = json!({"resourceAttributes": {"verb": "create", "resource": "pods", "namespace": "default"}});
        let csrs = json!({"resourceAttributes": {"verb": "create", "group": "certificates.k8s.io", "resource": "certificatesigningrequests"}});
        let all = json!({"resourceAttributes": {"verb": "*", "resource": "*"}});
        assert!(decide(Some(&admin), &pods).unwrap().0);
        assert!(decide(Some(&admin), &all).unwrap().0);
        assert!(!decide(Some(&boot), &pods).unwrap().0);
        assert!(decide(Some(&boot), &csrs).unwrap().0);
        assert!(!decide(Some(&boot), &all).unwrap().0);
        assert!(!decide(None, &pods).unwrap().0);
        assert!(decide(Some(&boot), &json!({})).is_err());
        assert_eq!(
            path_of(
                &json!({"group": "apps", "resource": "deployments", "namespace": "a", "name": "web", "subresource": "scale"})
            ),
            "/apis/apps/v1/namespaces/a/deployments/web/scale"
        );
    }
}
