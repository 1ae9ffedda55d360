//! `/metrics` in the Prometheus text format, and the apiserver's own request metrics under
//! kube-apiserver's names: `apiserver_request_total{verb,resource,code}` and
//! `apiserver_request_duration_seconds{verb,resource}`. The registry is the process's: the
//! store (etcd's names) and other components register into it before the server starts.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::AppState;
use crate::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    verb: String,
    resource: String,
}

/// The apiserver's request metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<DurationLabels, Histogram>,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

impl ApiMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> ApiMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<DurationLabels, Histogram>::new_with_constructor(|| {
            // 5 ms doubling to about 80 s, close to kube-apiserver's range.
            Histogram::new(exponential_buckets(0.005, 2.0, 15))
        });
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, resource and HTTP response code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb and resource",
            durations.clone(),
        );
        ApiMetrics {
            requests,
            durations,
        }
    }
}

/// Kubernetes' verb and resource of a request, from its method and path.
fn classify(method: &Method, path: &str, query: Option<&str>) -> (String, String) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // /api/v1/..., /apis/group/version/...
    let rest: &[&str] = match segs.first() {
        Some(&"api") if segs.len() >= 2 => &segs[2..],
        Some(&"apis") if segs.len() >= 3 => &segs[3..],
        _ => {
            return (method.as_str().to_ascii_lowercase(), String::new());
        }
    };
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = rest.first().copied().unwrap_or_default().to_string();
    let named = rest.len() >= 2;
    let watch = query.is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "watch=1" | "watch=true" | "watch=True"))
    });
    let verb = match *method {
        Method::GET if watch => "WATCH",
        Method::GET if named => "GET",
        Method::GET => "LIST",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE if named => "DELETE",
        Method::DELETE => "DELETECOLLECTION",
        _ => "OTHER",
    };
    (verb.to_string(), resource)
}

/// Counts and times every request.
pub async fn middleware(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (verb, resource) = classify(
        request.method(),
        request.uri().path(),
        request.uri().query(),
    );
    let response = next.run(request).await;
    let metrics = state.api_metrics();
    let code = response.status().as_u16().to_string();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            verb: verb.clone(),
            resource: resource.clone(),
            code,
        })
        .inc();
    // A watch's duration is its whole life: not a latency.
    if verb != "WATCH" {
        metrics
            .durations
            .get_or_create(&DurationLabels { verb, resource })
            .observe(started.elapsed().as_secs_f64());
    }
    response
}

/// `GET /metrics`.
pub async fn serve(State(state): State<AppState>) -> Response {
    let mut text = String::new();
    let registry: Arc<Registry> = state.registry();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return ApiError::Internal(format!("encoding metrics: {e}")).into_response();
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_as_kubernetes_does() {
        let c = |m: Method, p: &str, q: Option<&str>| {
            let (v, r) = classify(&m, p, q);
            format!("{v} {r}")
        };
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/default/pods", None),
            "LIST pods"
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/default/pods/a", None),
            "GET pods"
        );
        assert_eq!(
            c(
                Method::GET,
                "/api/v1/pods",
                Some("watch=1&resourceVersion=5")
            ),
            "WATCH pods"
        );
        assert_eq!(
            c(Method::POST, "/apis/apps/v1/namespaces/x/deployments", None),
            "POST deployments"
        );
        assert_eq!(c(Method::PUT, "/api/v1/nodes/n1/status", None), "PUT nodes");
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/kube-system", None),
            "GET namespaces"
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces", None),
            "LIST namespaces"
        );
        assert_eq!(
            c(Method::DELETE, "/api/v1/namespaces/d/configmaps", None),
            "DELETECOLLECTION configmaps"
        );
        assert_eq!(c(Method::GET, "/healthz", None), "get ");
    }
}
