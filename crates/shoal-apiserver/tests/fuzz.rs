//! Request decoding under random input, in a bounded property run (proptest, a fixed number
//! of cases and a fixed seed, so a run takes seconds and a failure reproduces): random
//! methods, paths, query parameters, media types and bodies (raw bytes, random JSON, mutated
//! valid objects, YAML, protobuf-framed bytes, JSON patches) through the whole router over a
//! real store. Whatever comes in, the server never panics and never answers a client's
//! mistake with a 5xx, and every refusal is a Kubernetes `Status` carrying its own code.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use shoal_apiserver::{AppState, app, bootstrap};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const PATHS: &[&str] = &[
    "/api/v1/namespaces/default/pods",
    "/api/v1/namespaces/default/pods/{n}",
    "/api/v1/namespaces/default/pods/{n}/status",
    "/api/v1/namespaces/default/pods/{n}/eviction",
    "/api/v1/namespaces/default/pods/{n}/binding",
    "/api/v1/namespaces/default/configmaps",
    "/api/v1/namespaces/default/configmaps/{n}",
    "/api/v1/namespaces/default/secrets",
    "/api/v1/namespaces/default/services",
    "/api/v1/namespaces",
    "/api/v1/namespaces/{n}",
    "/api/v1/nodes/{n}",
    "/apis/apps/v1/namespaces/default/deployments",
    "/apis/apps/v1/namespaces/default/deployments/{n}",
    "/apis/apps/v1/namespaces/default/deployments/{n}/scale",
    "/apis/batch/v1/namespaces/default/jobs",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}",
    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    "/apis/{n}/v1/namespaces/default/{n}",
    "/api/v1/{n}",
    "/apis/{n}",
    "/openapi/v3/{n}",
];

const PARAMS: &[&str] = &[
    "labelSelector",
    "fieldSelector",
    "resourceVersion",
    "resourceVersionMatch",
    "limit",
    "continue",
    "dryRun",
    "fieldValidation",
    "propagationPolicy",
    "gracePeriodSeconds",
    "fieldManager",
    "force",
    "includeObject",
    "timeoutSeconds",
];

const MEDIA: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/merge-patch+json",
    "application/json-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
    "application/vnd.kubernetes.protobuf",
    "text/plain",
    "",
];

const ACCEPT: &[&str] = &[
    "application/json",
    "application/json;as=Table;v=v1;g=meta.k8s.io",
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
    "*/*",
];

/// Random JSON, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-zA-Z0-9./:=_-]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z$]{1,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Valid objects and the collections they are created in.
fn bases() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/api/v1/namespaces/default/pods",
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}}),
        ),
        (
            "/api/v1/namespaces/default/configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a"}, "data": {"k": "v"}}),
        ),
        (
            "/apis/apps/v1/namespaces/default/deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "a"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        ),
        (
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            json!({"apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition", "metadata": {"name": "things.fuzz.example"},
            "spec": {"group": "fuzz.example", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object"}}}}}]}}),
        ),
    ]
}

const POINTERS: &[&str] = &[
    "/metadata/name",
    "/metadata/labels",
    "/metadata/labels/a",
    "/metadata",
    "/spec",
    "/spec/containers/0",
    "/spec/containers/0/ports/0/containerPort",
    "/spec/replicas",
    "/spec/template/spec",
    "/spec/versions/0/schema/openAPIV3Schema",
    "/data",
    "/data/k",
    "/kind",
    "/apiVersion",
];

/// `base` with the field at `pointer` (if it has one) replaced by `value`.
fn mutate(mut base: Value, pointer: &str, value: Value) -> Value {
    if let Some(slot) = base.pointer_mut(pointer) {
        *slot = value;
    }
    base
}

/// A valid-looking object with one field replaced by random JSON.
fn mutated_object() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(bases()),
        prop::sample::select(POINTERS.to_vec()),
        json_value(),
    )
        .prop_map(|((_, base), pointer, value)| mutate(base, pointer, value))
}

/// Requests aimed at what exists: an object of a served kind, written to its own collection
/// or item (create, replace, patch) with one field (often) made random.
fn aimed() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(bases()),
        prop::sample::select(POINTERS.to_vec()),
        prop_oneof![json_value(), Just(Value::Null)],
        prop::bool::ANY,
        prop::sample::select(vec![
            ("POST", "application/json"),
            ("POST", "application/yaml"),
            ("PUT", "application/json"),
            ("PATCH", "application/merge-patch+json"),
            ("PATCH", "application/strategic-merge-patch+json"),
            ("PATCH", "application/apply-patch+yaml"),
        ]),
        prop::sample::select(vec!["Strict", "Warn", "Ignore"]),
    )
        .prop_map(
            |((collection, base), pointer, value, keep, (method, media), fields)| {
                let name = base["metadata"]["name"].as_str().unwrap_or("a").to_string();
                let object = if keep {
                    base
                } else {
                    mutate(base, pointer, value)
                };
                // JSON text is YAML too, so one body serves both media types.
                let body = object.to_string().into_bytes();
                Case {
                    method,
                    path: if method == "POST" {
                        collection.to_string()
                    } else {
                        format!("{collection}/{name}")
                    },
                    query: vec![
                        ("fieldValidation", fields.to_string()),
                        ("fieldManager", "fuzz".into()),
                    ],
                    media,
                    accept: "application/json",
                    body,
                }
            },
        )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        mutated_object().prop_map(|v| v.to_string().into_bytes()),
        // YAML-ish text with anchors and aliases.
        "[a-z: &*\\[\\]{}\n -]{0,200}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..128).prop_map(|b| [b"k8s\x00".as_slice(), &b].concat()),
        prop::collection::vec(
            (prop::sample::select(vec!["add", "remove", "replace", "move", "copy", "test", "bogus"]),
             "(/[a-z0-9~]{0,6}){0,4}", json_value()),
            0..8,
        )
        .prop_map(|ops| {
            let ops: Vec<Value> = ops
                .into_iter()
                .map(|(op, path, value)| json!({"op": op, "path": path, "from": path, "value": value}))
                .collect();
            Value::Array(ops).to_string().into_bytes()
        }),
    ]
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    query: Vec<(&'static str, String)>,
    media: &'static str,
    accept: &'static str,
    body: Vec<u8>,
}

fn random_case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE"]),
        prop::sample::select(PATHS.to_vec()),
        "[a-z0-9.-]{1,12}|[^/?#]{0,12}",
        prop::collection::vec(
            (
                prop::sample::select(PARAMS.to_vec()),
                prop_oneof![
                    "[a-z0-9=!,()._/-]{0,24}".boxed(),
                    any::<String>().boxed(),
                    prop::sample::select(vec![
                        "0",
                        "-1",
                        "1",
                        "All",
                        "Strict",
                        "Foreground",
                        "NotOlderThan",
                        "Exact",
                        "true"
                    ])
                    .prop_map(str::to_string)
                    .boxed(),
                ],
            ),
            0..4,
        ),
        prop::sample::select(MEDIA.to_vec()),
        prop::sample::select(ACCEPT.to_vec()),
        body(),
    )
        .prop_map(|(method, path, name, query, media, accept, body)| Case {
            method,
            path: path.replace("{n}", &encode(&name)),
            query,
            media,
            accept,
            body,
        })
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![random_case(), aimed()]
}

#[test]
fn random_requests_get_statuses_never_5xx_or_panics() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let router = rt.block_on(async {
        let store = shoal_store::Store::open(dir.path()).await.expect("store");
        bootstrap(&store).await.expect("bootstrap");
        let state = AppState::new(
            store,
            &shoal_apiserver::Config::default(),
            CancellationToken::new(),
        )
        .expect("state");
        app(state)
    });
    // A fixed seed and count by default; `SHOAL_FUZZ_SEED` / `SHOAL_FUZZ_CASES` explore more.
    let seed: u8 = std::env::var("SHOAL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let cases: u32 = std::env::var("SHOAL_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let seen = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    let result = runner.run(&case(), |case| {
        let query: Vec<String> = case
            .query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let uri = if query.is_empty() {
            case.path.clone()
        } else {
            format!("{}?{}", case.path, query.join("&"))
        };
        let mut request = Request::builder()
            .method(case.method)
            .uri(&uri)
            .header("accept", case.accept);
        if !case.media.is_empty() {
            request = request.header("content-type", case.media);
        }
        // Every part of the URI is percent-encoded and the header values are fixed, so the
        // request always builds.
        let request = request
            .body(Body::from(case.body.clone()))
            .expect("a well-formed request");
        let (status, body) = rt.block_on(async {
            let response =
                tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(request))
                    .await
                    .expect("answered within 10 s")
                    .expect("infallible");
            let status = response.status().as_u16();
            let body =
                tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
                    .await
                    .expect("body within 10 s")
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
            (status, body)
        });
        *seen.lock().expect("lock").entry(status).or_default() += 1;
        prop_assert!(
            status < 500,
            "{} {uri} ({}) answered {status}: {}",
            case.method,
            case.media,
            String::from_utf8_lossy(&body)
        );
        if status >= 400 {
            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            prop_assert_eq!(
                &parsed["kind"],
                "Status",
                "{} {} answered {} without a Status: {}",
                case.method,
                uri,
                status,
                String::from_utf8_lossy(&body)
            );
            prop_assert_eq!(parsed["code"].as_u64(), Some(u64::from(status)));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The run reached past decoding: writes succeeded and every kind of refusal happened.
    let seen = seen.into_inner().expect("lock");
    eprintln!("statuses: {seen:?}");
    for code in [200, 201, 400, 404, 405, 409, 415, 422] {
        assert!(seen.contains_key(&code), "no request got {code}: {seen:?}");
    }
}
