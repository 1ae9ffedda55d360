//! Boundary tests of the apiserver: requests through `app(state).oneshot(..)` against the real
//! store in a temporary folder, plus one test driving real kubectl against a served instance.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_apiserver::testing::{TestApiServer, kubectl};
use shoal_apiserver::{AppState, Config, app, bootstrap};
use shoal_store::Store;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

struct Api {
    _dir: TempDir,
    store: Store,
    router: Router,
}

async fn setup() -> Api {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).await.expect("store opens");
    bootstrap(&store).await.expect("namespaces created");
    let config = Config {
        bookmark_interval: Duration::from_millis(200),
        ..Config::default()
    };
    let state = AppState::new(store.clone(), &config, CancellationToken::new()).expect("state");
    Api {
        _dir: dir,
        store,
        router: app(state),
    }
}

struct Reply {
    status: StatusCode,
    content_type: String,
    warnings: Vec<String>,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("json body ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Newline-delimited watch events.
    fn events(&self) -> Vec<Value> {
        self.body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("watch event is json"))
            .collect()
    }
}

impl Api {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let warnings = resp
            .headers()
            .get_all(header::WARNING)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Reply {
            status,
            content_type,
            warnings,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send(Method::GET, uri, &[], Vec::new()).await
    }

    async fn json(&self, method: Method, uri: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send(method, uri, &[("content-type", "application/json")], bytes)
            .await
    }

    async fn patch(&self, uri: &str, content_type: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("json");
        self.send(Method::PATCH, uri, &[("content-type", content_type)], bytes)
            .await
    }
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "example.com/app:1"}]},
    })
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "example.com/app:1"}]},
            },
        },
    })
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

#[tokio::test]
async fn discovery_version_and_health() {
    let api = setup().await;
    let r = api.get("/api").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["versions"], json!(["v1"]));

    let v1 = api.get("/api/v1").await.json();
    let names: Vec<&str> = v1["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for want in [
        "pods",
        "pods/status",
        "pods/binding",
        "pods/log",
        "namespaces",
        "nodes",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let pods = v1["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["name"] == "pods")
        .expect("pods")
        .clone();
    assert_eq!(pods["kind"], "Pod");
    assert_eq!(pods["namespaced"], true);
    assert_eq!(pods["shortNames"], json!(["po"]));

    let groups = api.get("/apis").await.json();
    assert_eq!(groups["kind"], "APIGroupList");
    assert!(
        groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "apps")
    );
    let apps = api.get("/apis/apps/v1").await.json();
    assert!(
        apps["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r["name"] == "deployments/scale")
    );

    let agg = api
        .send(
            Method::GET,
            "/apis",
            &[("accept", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")],
            Vec::new(),
        )
        .await;
    assert!(agg.content_type.contains("as=APIGroupDiscoveryList"));
    assert_eq!(agg.json()["kind"], "APIGroupDiscoveryList");

    let version = api.get("/version").await.json();
    assert_eq!(version["major"], "1");
    assert_eq!(version["minor"], "35");
    for path in ["/healthz", "/readyz", "/livez"] {
        let r = api.get(path).await;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (StatusCode::OK, b"ok".as_slice())
        );
    }
    let openapi = api.get("/openapi/v3").await.json();
    let url = openapi["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 url")
        .to_string();
    let doc = api.get(&url).await.json();
    let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
    assert!(
        op["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );
    assert_eq!(
        api.get("/apis/nope/v1/things").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn create_get_list_with_selectors_and_pages() {
    let api = setup().await;
    let r = api.json(Method::POST, PODS, &pod("a")).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let created = r.json();
    assert_eq!(created["metadata"]["namespace"], "default");
    assert_eq!(created["metadata"]["uid"].as_str().expect("uid").len(), 36);
    let ts = created["metadata"]["creationTimestamp"]
        .as_str()
        .expect("timestamp");
    assert!(ts.ends_with('Z') && ts.len() == 20, "{ts}");
    assert!(rv(&created).parse::<u64>().is_ok());

    let got = api.get(&format!("{PODS}/a")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.json()["metadata"]["uid"], created["metadata"]["uid"]);

    let mut b = pod("b");
    b["metadata"]["labels"] = json!({"app": "db"});
    assert_eq!(
        api.json(Method::POST, PODS, &b).await.status,
        StatusCode::CREATED
    );
    let mut generated = pod("");
    generated["metadata"] = json!({"generateName": "gen-", "labels": {"app": "web"}});
    let g = api.json(Method::POST, PODS, &generated).await.json();
    let gname = g["metadata"]["name"].as_str().expect("generated name");
    assert!(gname.starts_with("gen-") && gname.len() == 9, "{gname}");

    let all = api.get(PODS).await.json();
    assert_eq!(all["kind"], "PodList");
    assert_eq!(all["items"].as_array().expect("items").len(), 3);
    assert!(all["metadata"]["resourceVersion"].as_str().is_some());
    let web = api
        .get(&format!("{PODS}?labelSelector=app%3Dweb"))
        .await
        .json();
    assert_eq!(web["items"].as_array().expect("items").len(), 2);
    let by_name = api
        .get(&format!("{PODS}?fieldSelector=metadata.name%3Db"))
        .await
        .json();
    assert_eq!(by_name["items"][0]["metadata"]["name"], "b");
    assert_eq!(by_name["items"].as_array().expect("items").len(), 1);
    // Field selectors accept only what the kind supports, as upstream: `spec.nodeName` is a
    // pod field, not a ConfigMap's (a field some other kind has is no excuse).
    let pods_on_node = api
        .get(&format!("{PODS}?fieldSelector=spec.nodeName%3Dn1"))
        .await;
    assert_eq!(pods_on_node.status, StatusCode::OK);
    let wrong_kind = api
        .get("/api/v1/namespaces/default/configmaps?fieldSelector=spec.nodeName%3Dn1")
        .await;
    assert_eq!(wrong_kind.status, StatusCode::BAD_REQUEST);
    let message = wrong_kind.json()["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        message.contains("field label not supported: spec.nodeName"),
        "{message}"
    );
    // Query parameters are checked, not ignored.
    for bad in [
        "resourceVersion=abc",
        "resourceVersionMatch=NotOlderThan",
        "resourceVersion=0&resourceVersionMatch=Exact",
        "resourceVersion=1&resourceVersionMatch=Newest",
        "labelSelector=-bad-key%3Dx",
        &format!("labelSelector=app%3D{}", "v".repeat(64)),
        "limit=-1",
    ] {
        let refused = api.get(&format!("{PODS}?{bad}")).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(refused.json()["kind"], "Status", "{bad}");
    }
    let across = api.get("/api/v1/pods").await.json();
    assert_eq!(across["items"].as_array().expect("items").len(), 3);

    let page1 = api.get(&format!("{PODS}?limit=2")).await.json();
    assert_eq!(page1["items"].as_array().expect("items").len(), 2);
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    let page2 = api
        .get(&format!("{PODS}?limit=2&continue={token}"))
        .await
        .json();
    assert_eq!(page2["items"].as_array().expect("items").len(), 1);
    assert!(page2["metadata"].get("continue").is_none());

    let namespaces = api.get("/api/v1/namespaces").await.json();
    let names: Vec<&str> = namespaces["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
}

#[tokio::test]
async fn error_statuses() {
    let api = setup().await;
    // A URI over the limit is a Status, not a bare 414.
    let long = api
        .get(&format!(
            "{PODS}?labelSelector=a%3D{}",
            "b".repeat(40 << 10)
        ))
        .await;
    assert_eq!(long.status, StatusCode::URI_TOO_LONG);
    assert_eq!(long.json()["reason"], "RequestURITooLong");

    let r = api.get(&format!("{PODS}/missing")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let s = r.json();
    assert_eq!(
        (s["kind"].as_str(), s["reason"].as_str(), s["code"].as_u64()),
        (Some("Status"), Some("NotFound"), Some(404))
    );
    assert_eq!(s["message"], "pods \"missing\" not found");

    assert_eq!(
        api.json(Method::POST, PODS, &pod("a")).await.status,
        StatusCode::CREATED
    );
    let dup = api.json(Method::POST, PODS, &pod("a")).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.json()["reason"], "AlreadyExists");
    assert_eq!(dup.json()["message"], "pods \"a\" already exists");

    let bad = api
        .send(
            Method::POST,
            PODS,
            &[("content-type", "application/json")],
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["reason"], "BadRequest");
    // Nesting deeper than the decoder's limit is a client error with a Status, not a stack
    // overflow or a 500.
    let deep = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"deep"}},"x":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let r = api
        .send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            &[("content-type", "application/json")],
            deep.into_bytes(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["kind"], "Status");

    // YAML bodies are accepted as upstream accepts them, within limits.
    let yaml = |body: &str| {
        api.send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            &[("content-type", "application/yaml")],
            body.as_bytes().to_vec(),
        )
    };
    let created = yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  a: &v \"1\"\n  b: *v\n",
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json()["data"], json!({"a": "1", "b": "1"}));
    let nameless = yaml("kind: ConfigMap").await;
    assert_eq!(nameless.status, StatusCode::UNPROCESSABLE_ENTITY);
    let two = yaml("kind: ConfigMap\n---\nkind: ConfigMap\n").await;
    assert_eq!(two.status, StatusCode::BAD_REQUEST);
    assert_eq!(two.json()["kind"], "Status");
    // Nine levels of ten aliases would expand to a billion strings: refused, not expanded.
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\nl0: &l0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..9 {
        let p = i - 1;
        bomb.push_str(&format!(
            "l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"
        ));
    }
    let refused = yaml(&bomb).await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["kind"], "Status");

    let mut other_ns = pod("x");
    other_ns["metadata"]["namespace"] = json!("kube-system");
    assert_eq!(
        api.json(Method::POST, PODS, &other_ns).await.status,
        StatusCode::BAD_REQUEST
    );

    let nowhere = api
        .json(Method::POST, "/api/v1/namespaces/nowhere/pods", &pod("x"))
        .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert_eq!(
        nowhere.json()["message"],
        "namespaces \"nowhere\" not found"
    );

    let mut huge = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}});
    huge["data"] = json!({"blob": "x".repeat(4 * 1024 * 1024)});
    let r = api
        .json(Method::POST, "/api/v1/namespaces/default/configmaps", &huge)
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["reason"], "RequestEntityTooLarge");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "big"},
        "spec": {"holderIdentity": "x".repeat(2 * 1024 * 1024)},
    });
    let r = api
        .json(
            Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            &lease,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the store refuses values over 1.5 MiB"
    );

    let mut nameless = pod("");
    nameless["metadata"] = json!({});
    let r = api.json(Method::POST, PODS, &nameless).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let s = r.json();
    assert_eq!(s["reason"], "Invalid");
    assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");

    assert_eq!(
        api.get("/api/v1/nope").await.json()["message"],
        "the server could not find the requested resource"
    );
}

#[tokio::test]
async fn invalid_deployment_names_the_field() {
    let api = setup().await;
    let mut d = deployment("x", 1);
    d["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .expect("container")
        .remove("image");
    let r = api.json(Method::POST, DEPLOYMENTS, &d).await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let s = r.json();
    assert_eq!(
        s["message"],
        "Deployment.apps \"x\" is invalid: spec.template.spec.containers[0].image: Required value"
    );
    assert_eq!(
        s["details"]["causes"][0]["field"],
        "spec.template.spec.containers[0].image"
    );
    assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");
    assert_eq!(s["details"]["causes"][0]["message"], "Required value");
    assert_eq!(s["details"]["kind"], "Deployment");
    assert_eq!(s["details"]["group"], "apps");
}

#[tokio::test]
async fn update_conflicts_generation_and_status() {
    let api = setup().await;
    let created = api
        .json(Method::POST, DEPLOYMENTS, &deployment("web", 1))
        .await
        .json();
    assert_eq!(created["metadata"]["generation"], 1);
    let url = format!("{DEPLOYMENTS}/web");

    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let r = api.json(Method::PUT, &url, &stale).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(
        r.json()["message"],
        "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply your changes to the latest version and try again"
    );

    let mut next = created.clone();
    next["spec"]["replicas"] = json!(3);
    next["status"] = json!({"replicas": 99});
    let updated = api.json(Method::PUT, &url, &next).await.json();
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["spec"]["replicas"], 3);
    assert!(
        updated.get("status").is_none() || updated["status"].get("replicas").is_none(),
        "status ignored on main PUT"
    );
    assert_ne!(rv(&updated), rv(&created));

    let mut label_only = updated.clone();
    label_only["metadata"]["labels"] = json!({"a": "b"});
    label_only["metadata"]["resourceVersion"] = json!("");
    let relabelled = api.json(Method::PUT, &url, &label_only).await.json();
    assert_eq!(
        relabelled["metadata"]["generation"], 2,
        "metadata changes keep the generation"
    );

    let mut status = relabelled.clone();
    status["status"] = json!({"replicas": 3, "readyReplicas": 3});
    status["spec"]["replicas"] = json!(7);
    let r = api
        .json(Method::PUT, &format!("{url}/status"), &status)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let after = r.json();
    assert_eq!(after["status"]["readyReplicas"], 3);
    assert_eq!(after["spec"]["replicas"], 3, "spec ignored on status PUT");

    let patched = api
        .patch(
            &format!("{url}/status"),
            "application/merge-patch+json",
            &json!({"status": {"observedGeneration": 2}}),
        )
        .await
        .json();
    assert_eq!(patched["status"]["observedGeneration"], 2);
    assert_eq!(patched["status"]["readyReplicas"], 3);
}

#[tokio::test]
async fn patch_types() {
    let api = setup().await;
    api.json(Method::POST, PODS, &pod("p")).await;
    let url = format!("{PODS}/p");
    let merged = api
        .patch(
            &url,
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"m": "1"}}}),
        )
        .await;
    assert_eq!(merged.status, StatusCode::OK);
    assert_eq!(
        merged.json()["metadata"]["labels"],
        json!({"app": "web", "m": "1"})
    );
    let strategic = api
        .patch(
            &url,
            "application/strategic-merge-patch+json",
            &json!({"metadata": {"labels": {"s": "1", "app": null}}}),
        )
        .await
        .json();
    assert_eq!(strategic["metadata"]["labels"], json!({"m": "1", "s": "1"}));
    let jp = api
        .patch(
            &url,
            "application/json-patch+json",
            &json!([{"op": "add", "path": "/metadata/annotations", "value": {"j": "1"}}]),
        )
        .await
        .json();
    assert_eq!(jp["metadata"]["annotations"], json!({"j": "1"}));
    let bad = api
        .patch(
            &url,
            "application/json-patch+json",
            &json!([{"op": "remove", "path": "/nope"}]),
        )
        .await;
    // As upstream: a JSON patch that cannot be applied is unprocessable.
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.json()["reason"], "Invalid");
    // Twenty self-doubling copies (1 GiB from 1 KiB) are refused before they grow anything.
    let mut amplifying =
        vec![json!({"op": "add", "path": "/metadata/annotations/a", "value": ["x".repeat(1024)]})];
    for _ in 0..20 {
        amplifying.push(json!({"op": "copy", "from": "/metadata/annotations/a", "path": "/metadata/annotations/a/-"}));
    }
    let refused = api
        .patch(
            &url,
            "application/json-patch+json",
            &Value::Array(amplifying),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let message = refused.json()["message"].as_str().unwrap_or("").to_string();
    assert!(
        message.contains("accumulated size increase of copy"),
        "{message}"
    );
    let too_many: Vec<Value> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/kind", "value": "Pod"}))
        .collect();
    let refused = api
        .patch(&url, "application/json-patch+json", &Value::Array(too_many))
        .await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(refused.json()["reason"], "RequestEntityTooLarge");
    let stale = api
        .patch(
            &url,
            "application/merge-patch+json",
            &json!({"metadata": {"resourceVersion": "1"}}),
        )
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    let unknown = api.patch(&url, "text/plain", &json!({})).await;
    assert_eq!(unknown.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let missing = api
        .patch(
            &format!("{PODS}/nope"),
            "application/merge-patch+json",
            &json!({}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_unbound_bound_and_finalized() {
    let api = setup().await;
    api.json(Method::POST, PODS, &pod("free")).await;
    let r = api
        .send(Method::DELETE, &format!("{PODS}/free"), &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["metadata"]["name"], "free");
    assert_eq!(
        api.get(&format!("{PODS}/free")).await.status,
        StatusCode::NOT_FOUND
    );

    // Bound pods wait for the node agent's grace-0 delete.
    api.json(Method::POST, PODS, &pod("bound")).await;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bound"}, "target": {"kind": "Node", "name": "n1"}});
    assert_eq!(
        api.json(Method::POST, &format!("{PODS}/bound/binding"), &binding)
            .await
            .status,
        StatusCode::CREATED
    );
    let r = api
        .send(Method::DELETE, &format!("{PODS}/bound"), &[], Vec::new())
        .await
        .json();
    assert!(r["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(r["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        api.get(&format!("{PODS}/bound")).await.status,
        StatusCode::OK
    );
    let zero = serde_json::to_vec(
        &json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}),
    )
    .expect("json");
    assert_eq!(
        api.send(Method::DELETE, &format!("{PODS}/bound"), &[], zero)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        api.get(&format!("{PODS}/bound")).await.status,
        StatusCode::NOT_FOUND
    );

    // Finalizers hold the object until removed.
    let mut held = pod("held");
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.json(Method::POST, PODS, &held).await;
    let r = api
        .send(Method::DELETE, &format!("{PODS}/held"), &[], Vec::new())
        .await
        .json();
    assert!(r["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        api.get(&format!("{PODS}/held")).await.status,
        StatusCode::OK
    );
    let r = api
        .patch(
            &format!("{PODS}/held"),
            "application/merge-patch+json",
            &json!({"metadata": {"finalizers": null}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        api.get(&format!("{PODS}/held")).await.status,
        StatusCode::NOT_FOUND
    );

    // Foreground propagation adds its finalizer.
    api.json(Method::POST, DEPLOYMENTS, &deployment("fg", 1))
        .await;
    let r = api
        .send(
            Method::DELETE,
            &format!("{DEPLOYMENTS}/fg?propagationPolicy=Foreground"),
            &[],
            Vec::new(),
        )
        .await
        .json();
    assert_eq!(r["metadata"]["finalizers"], json!(["foregroundDeletion"]));

    // Any kind the collector follows waits under Foreground: a ConfigMap too.
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fg-cm"}});
    assert_eq!(
        api.json(Method::POST, cms, &cm).await.status,
        StatusCode::CREATED
    );
    let r = api
        .send(
            Method::DELETE,
            &format!("{cms}/fg-cm?propagationPolicy=Orphan"),
            &[],
            Vec::new(),
        )
        .await
        .json();
    assert_eq!(r["metadata"]["finalizers"], json!(["orphan"]));

    // Events, which the collector leaves alone, are deleted at once under every policy: a
    // finalizer nobody removes would hold them forever.
    for policy in ["Foreground", "Orphan"] {
        let events = "/api/v1/namespaces/default/events";
        let event = json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "fg-event"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
            "reason": "Test", "message": "m", "type": "Normal"});
        let r = api.json(Method::POST, events, &event).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let r = api
            .send(
                Method::DELETE,
                &format!("{events}/fg-event?propagationPolicy={policy}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{policy}");
        assert_eq!(
            api.get(&format!("{events}/fg-event")).await.status,
            StatusCode::NOT_FOUND,
            "{policy}"
        );
    }

    // deletecollection with a label selector.
    api.json(Method::POST, PODS, &pod("c1")).await;
    api.json(Method::POST, PODS, &pod("c2")).await;
    let r = api
        .send(
            Method::DELETE,
            &format!("{PODS}?labelSelector=app%3Dweb"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        api.get(PODS).await.json()["items"]
            .as_array()
            .expect("items")
            .len(),
        0
    );
}

#[tokio::test]
async fn binding_and_scale() {
    let api = setup().await;
    api.json(Method::POST, PODS, &pod("p")).await;
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let r = api
        .json(Method::POST, &format!("{PODS}/p/binding"), &binding)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["status"], "Success");
    let p = api.get(&format!("{PODS}/p")).await.json();
    assert_eq!(p["spec"]["nodeName"], "n1");
    assert_eq!(p["status"]["conditions"][0]["type"], "PodScheduled");
    assert_eq!(p["status"]["conditions"][0]["status"], "True");
    let again = api
        .json(Method::POST, &format!("{PODS}/p/binding"), &binding)
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(
        again.json()["message"],
        "pod p is already assigned to node \"n1\""
    );

    api.json(Method::POST, DEPLOYMENTS, &deployment("web", 2))
        .await;
    let scale = api.get(&format!("{DEPLOYMENTS}/web/scale")).await.json();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 2);
    assert_eq!(scale["status"]["selector"], "app=web");
    let r = api
        .patch(
            &format!("{DEPLOYMENTS}/web/scale"),
            "application/merge-patch+json",
            &json!({"spec": {"replicas": 5}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["spec"]["replicas"], 5);
    let d = api.get(&format!("{DEPLOYMENTS}/web")).await.json();
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["metadata"]["generation"], 2);
    let mut put = scale.clone();
    put["spec"]["replicas"] = json!(1);
    let r = api
        .json(Method::PUT, &format!("{DEPLOYMENTS}/web/scale"), &put)
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "the Scale's resourceVersion is stale"
    );
    put["metadata"]["resourceVersion"] = json!(rv(&d));
    assert_eq!(
        api.json(Method::PUT, &format!("{DEPLOYMENTS}/web/scale"), &put)
            .await
            .json()["spec"]["replicas"],
        1
    );
}

#[tokio::test]
async fn table_output() {
    let api = setup().await;
    api.json(Method::POST, PODS, &pod("a")).await;
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let list = api
        .send(Method::GET, PODS, &[("accept", accept)], Vec::new())
        .await
        .json();
    assert_eq!(list["kind"], "Table");
    assert_eq!(list["apiVersion"], "meta.k8s.io/v1");
    assert!(list["metadata"]["resourceVersion"].is_string());
    assert_eq!(list["columnDefinitions"][0]["name"], "Name");
    assert_eq!(list["rows"][0]["cells"][0], "a");
    assert_eq!(list["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(list["rows"][0]["object"]["metadata"]["name"], "a");
    let one = api
        .send(
            Method::GET,
            &format!("{PODS}/a"),
            &[("accept", accept)],
            Vec::new(),
        )
        .await
        .json();
    assert_eq!(one["kind"], "Table");
    assert_eq!(one["rows"].as_array().expect("rows").len(), 1);
}

#[tokio::test]
async fn watch_from_resource_version_with_selectors() {
    let api = setup().await;
    let a = api.json(Method::POST, PODS, &pod("a")).await.json();
    let start = rv(&a);
    api.patch(
        &format!("{PODS}/a"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "other"}}}),
    )
    .await;
    api.json(Method::POST, PODS, &pod("b")).await;
    let deleted_b = api
        .send(Method::DELETE, &format!("{PODS}/b"), &[], Vec::new())
        .await
        .json();

    let all = api
        .get(&format!(
            "{PODS}?watch=1&resourceVersion={start}&timeoutSeconds=1"
        ))
        .await;
    assert_eq!(all.status, StatusCode::OK);
    let types: Vec<String> = all
        .events()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(types, ["MODIFIED", "ADDED", "DELETED"]);
    let events = all.events();
    let deleted = &events[2]["object"];
    assert_eq!(deleted["metadata"]["name"], "b");
    assert_eq!(
        rv(deleted),
        rv(&deleted_b),
        "DELETED carries the deletion revision"
    );
    assert!(
        rv(deleted).parse::<u64>().expect("number")
            > rv(&events[1]["object"]).parse::<u64>().expect("number")
    );

    let selected = api
        .get(&format!(
            "{PODS}?watch=true&labelSelector=app%3Dweb&resourceVersion={start}&timeoutSeconds=1"
        ))
        .await
        .events();
    let types: Vec<&str> = selected.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        types,
        ["DELETED", "ADDED", "DELETED"],
        "a leaves the selection, b comes and goes"
    );

    // No resourceVersion: current objects first.
    let fresh = api
        .get(&format!("{PODS}?watch=1&timeoutSeconds=1"))
        .await
        .events();
    assert_eq!(fresh.len(), 1);
    assert_eq!(fresh[0]["type"], "ADDED");
    assert_eq!(fresh[0]["object"]["metadata"]["name"], "a");

    let named = api
        .get(&format!("{PODS}?watch=1&fieldSelector=metadata.name%3Db&resourceVersion={start}&timeoutSeconds=1"))
        .await
        .events();
    assert_eq!(named.len(), 2);

    let marks = api
        .get(&format!(
            "{PODS}?watch=1&allowWatchBookmarks=true&timeoutSeconds=1"
        ))
        .await
        .events();
    assert!(
        marks
            .iter()
            .any(|e| e["type"] == "BOOKMARK"
                && e["object"]["metadata"]["resourceVersion"].is_string())
    );

    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let table = api
        .send(
            Method::GET,
            &format!("{PODS}?watch=1&resourceVersion={start}&timeoutSeconds=1"),
            &[("accept", accept)],
            Vec::new(),
        )
        .await
        .events();
    assert_eq!(table[0]["object"]["kind"], "Table");
    assert_eq!(
        table[0]["object"]["rows"].as_array().expect("rows").len(),
        1
    );
}

#[tokio::test]
async fn watch_after_compaction_is_gone() {
    let api = setup().await;
    let first = api.json(Method::POST, PODS, &pod("a")).await.json();
    for i in 0..5 {
        api.patch(
            &format!("{PODS}/a"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"i": i.to_string()}}}),
        )
        .await;
    }
    api.store.compact(1).await.expect("compaction");
    let old = rv(&first).parse::<u64>().expect("number") - 1;
    let r = api
        .get(&format!(
            "{PODS}?watch=1&resourceVersion={old}&timeoutSeconds=1"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let events = r.events();
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert!(
        events[0]["object"]["message"]
            .as_str()
            .expect("message")
            .starts_with("too old resource version")
    );
    // A list at a too-old resourceVersion serves the current state.
    let list = api.get(&format!("{PODS}?resourceVersion={old}")).await;
    assert_eq!(list.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_kubectl_apply_get_scale_delete() {
    assert!(
        std::path::Path::new("/usr/bin/kubectl").exists(),
        "kubectl is required at /usr/bin/kubectl (scripts/install-deps.sh checks for it)"
    );
    let server = TestApiServer::start().await.expect("apiserver");
    let addr = server.addr();
    let dir = server.dir();

    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: shoal\n  cluster:\n    server: http://{addr}\nusers:\n- name: shoal\n  user: {{}}\ncontexts:\n- name: shoal\n  context:\n    cluster: shoal\n    user: shoal\ncurrent-context: shoal\n"
        ),
    )
    .expect("kubeconfig");
    let manifest = dir.join("web.yaml");
    let yaml = |replicas: u32, image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
        )
    };
    std::fs::write(&manifest, yaml(2, "example.com/web:1")).expect("manifest");
    let k = kubeconfig.clone();
    let m = manifest.clone();
    let results = tokio::task::spawn_blocking(move || {
        let mut log = Vec::new();
        let mf = m.to_str().expect("utf-8 path");
        log.push(kubectl(&k, &["apply", "-f", mf]));
        std::fs::write(&m, yaml(3, "example.com/web:2")).expect("manifest");
        log.push(kubectl(&k, &["apply", "-f", mf]));
        log.push(kubectl(
            &k,
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}",
            ],
        ));
        log.push(kubectl(&k, &["get", "deployments"]));
        log.push(kubectl(&k, &["scale", "deployment", "web", "--replicas=4"]));
        log.push(kubectl(
            &k,
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        ));
        log.push(kubectl(&k, &["delete", "deployment", "web"]));
        log.push(kubectl(&k, &["get", "deployments"]));
        // Typed clients send protobuf bodies.
        log.push(kubectl(&k, &["create", "namespace", "demo"]));
        log.push(kubectl(
            &k,
            &[
                "create",
                "configmap",
                "cm",
                "-n",
                "demo",
                "--from-literal=a=b",
            ],
        ));
        log.push(kubectl(
            &k,
            &[
                "get",
                "configmap",
                "cm",
                "-n",
                "demo",
                "-o",
                "jsonpath={.data.a}",
            ],
        ));
        log.push(kubectl(
            &k,
            &[
                "create",
                "deployment",
                "d2",
                "-n",
                "demo",
                "--image=example.com/d:2",
            ],
        ));
        log.push(kubectl(
            &k,
            &[
                "get",
                "deployment",
                "d2",
                "-n",
                "demo",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ],
        ));
        // An invalid Deployment gets the 422 naming the field.
        let bad = m.with_file_name("bad.yaml");
        std::fs::write(&bad, yaml(1, "x").replace("        image: x\n", "")).expect("manifest");
        log.push(kubectl(
            &k,
            &["apply", "-f", bad.to_str().expect("utf-8 path")],
        ));
        log
    })
    .await
    .expect("kubectl thread");
    let _ = server.shutdown().await;
    let ok = |i: usize| assert!(results[i].0, "step {i} failed: {}", results[i].1);
    for i in 0..results.len() - 1 {
        ok(i);
    }
    assert_eq!(results[10].1.trim(), "b");
    assert_eq!(results[12].1.trim(), "example.com/d:2");
    let invalid = &results[13];
    assert!(!invalid.0);
    assert!(
        invalid.1.contains("The Deployment \"web\" is invalid: spec.template.spec.containers[0].image: Required value"),
        "{}",
        invalid.1
    );
    assert!(
        results[0].1.contains("deployment.apps/web created"),
        "{}",
        results[0].1
    );
    assert!(
        results[1].1.contains("deployment.apps/web configured"),
        "{}",
        results[1].1
    );
    assert_eq!(results[2].1.trim(), "3 example.com/web:2");
    assert!(results[3].1.contains("web"), "{}", results[3].1);
    assert!(results[4].1.contains("scaled"), "{}", results[4].1);
    assert_eq!(results[5].1.trim(), "4");
    assert!(results[6].1.contains("deleted"), "{}", results[6].1);
    assert!(
        results[7].1.contains("No resources found"),
        "{}",
        results[7].1
    );
}

/// The apiserver's half of namespace deletion: Terminating, nothing new inside, held by
/// `spec.finalizers` (which ordinary updates cannot drop) until `finalize` releases it; a
/// namespace without finalizers goes at once. Emptying it is the namespace controller's.
#[tokio::test]
async fn namespace_deletion_waits_for_its_finalizers() {
    let api = setup().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}});
    assert_eq!(
        api.json(Method::POST, "/api/v1/namespaces", &ns)
            .await
            .status,
        StatusCode::CREATED
    );
    let cms = "/api/v1/namespaces/demo/configmaps";
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    assert_eq!(
        api.json(Method::POST, cms, &cm).await.status,
        StatusCode::CREATED
    );
    let r = api
        .send(Method::DELETE, "/api/v1/namespaces/demo", &[], Vec::new())
        .await
        .json();
    assert_eq!(r["status"]["phase"], "Terminating");
    assert_eq!(r["spec"]["finalizers"], json!(["kubernetes"]));
    let created = api
        .json(
            Method::POST,
            cms,
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::FORBIDDEN);
    // An ordinary update cannot drop the finalizer; the namespace and its content stay.
    let patched = api
        .patch(
            "/api/v1/namespaces/demo",
            "application/merge-patch+json",
            &json!({"spec": {"finalizers": []}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.json()["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(api.get(&format!("{cms}/c")).await.status, StatusCode::OK);
    // `finalize` releases it.
    let mut released = api.get("/api/v1/namespaces/demo").await.json();
    released["spec"]["finalizers"] = json!([]);
    let r = api
        .json(Method::PUT, "/api/v1/namespaces/demo/finalize", &released)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        api.get("/api/v1/namespaces/demo").await.status,
        StatusCode::NOT_FOUND
    );
    // Every namespace gets the finalizer, even one created without; a finalize body without
    // finalizers releases it (defaulting does not put `kubernetes` back).
    let bare = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bare"},
        "spec": {"finalizers": []}});
    let created = api.json(Method::POST, "/api/v1/namespaces", &bare).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.json()["spec"]["finalizers"], json!(["kubernetes"]));
    let r = api
        .send(Method::DELETE, "/api/v1/namespaces/bare", &[], Vec::new())
        .await;
    assert_eq!(r.json()["status"]["phase"], "Terminating");
    let mut released = api.get("/api/v1/namespaces/bare").await.json();
    released["spec"] = json!({});
    let r = api
        .json(Method::PUT, "/api/v1/namespaces/bare/finalize", &released)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        api.get("/api/v1/namespaces/bare").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn paged_list_reports_the_first_page_revision() {
    let api = setup().await;
    for name in ["a", "b"] {
        assert_eq!(
            api.json(Method::POST, PODS, &pod(name)).await.status,
            StatusCode::CREATED
        );
    }
    let page1 = api.get(&format!("{PODS}?limit=1")).await.json();
    assert_eq!(page1["items"][0]["metadata"]["name"], "a");
    let first_rv = rv(&page1);
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();

    // `a` changes between the pages; page 2 still reports the first page's revision.
    let patched = api
        .patch(
            &format!("{PODS}/a"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"step": "2"}}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let page2 = api
        .get(&format!("{PODS}?limit=1&continue={token}"))
        .await
        .json();
    assert_eq!(page2["items"][0]["metadata"]["name"], "b");
    assert!(page2["metadata"].get("continue").is_none());
    assert_eq!(rv(&page2), first_rv);

    // A watcher starting from the last page's revision sees the change made while paging.
    let events = api
        .get(&format!(
            "{PODS}?watch=1&resourceVersion={}&timeoutSeconds=1",
            rv(&page2)
        ))
        .await
        .events();
    let modified: Vec<&Value> = events.iter().filter(|e| e["type"] == "MODIFIED").collect();
    assert_eq!(modified.len(), 1, "{events:?}");
    assert_eq!(modified[0]["object"]["metadata"]["name"], "a");
    assert_eq!(modified[0]["object"]["metadata"]["labels"]["step"], "2");

    // Once the first page's revision is compacted, the token has expired.
    for i in 0..3 {
        api.patch(
            &format!("{PODS}/b"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"i": i.to_string()}}}),
        )
        .await;
    }
    api.store.compact(1).await.expect("compaction");
    let expired = api.get(&format!("{PODS}?limit=1&continue={token}")).await;
    assert_eq!(expired.status, StatusCode::GONE);
    let status = expired.json();
    assert_eq!(status["reason"], "Expired");
    assert!(
        status["message"]
            .as_str()
            .expect("message")
            .starts_with("The provided continue parameter is too old")
    );
    let bad = api.get(&format!("{PODS}?limit=1&continue=zz")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn namespace_collection_delete_is_not_allowed() {
    let api = setup().await;
    let r = api
        .send(Method::DELETE, "/api/v1/namespaces", &[], Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["reason"], "MethodNotAllowed");
    let r = api
        .send(
            Method::DELETE,
            "/api/v1/namespaces?labelSelector=kubernetes.io%2Fmetadata.name%3Ddefault",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // The immortal namespaces refuse deletion one by one too.
    for ns in ["default", "kube-system", "kube-public"] {
        let r = api
            .send(
                Method::DELETE,
                &format!("/api/v1/namespaces/{ns}"),
                &[],
                Vec::new(),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "deleting {ns}");
        assert_eq!(
            r.json()["message"],
            format!("namespaces \"{ns}\" is forbidden: this namespace may not be deleted")
        );
    }
    let namespaces = api.get("/api/v1/namespaces").await.json();
    assert_eq!(namespaces["items"].as_array().expect("items").len(), 4);
    for item in namespaces["items"].as_array().expect("items") {
        assert!(item["metadata"].get("deletionTimestamp").is_none());
    }

    // Discovery agrees: no deletecollection on namespaces, still there on pods.
    let v1 = api.get("/api/v1").await.json();
    let verbs = |name: &str| {
        v1["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["verbs"].clone())
            .expect("resource listed")
    };
    assert!(
        !verbs("namespaces")
            .as_array()
            .expect("verbs")
            .contains(&json!("deletecollection"))
    );
    assert!(
        verbs("pods")
            .as_array()
            .expect("verbs")
            .contains(&json!("deletecollection"))
    );
}

#[tokio::test]
async fn every_page_is_read_at_the_first_page_revision() {
    let api = setup().await;
    for name in ["a", "b", "c"] {
        assert_eq!(
            api.json(Method::POST, PODS, &pod(name)).await.status,
            StatusCode::CREATED
        );
    }
    let page1 = api.get(&format!("{PODS}?limit=1")).await.json();
    assert_eq!(page1["items"][0]["metadata"]["name"], "a");
    let token = |page: &Value| {
        page["metadata"]["continue"]
            .as_str()
            .expect("continue token")
            .to_string()
    };
    let first = token(&page1);

    // Between the pages: b changes, c goes, d comes.
    let patched = api
        .patch(
            &format!("{PODS}/b"),
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"step": "2"}}}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let deleted = api
        .send(Method::DELETE, &format!("{PODS}/c"), &[], Vec::new())
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        api.json(Method::POST, PODS, &pod("d")).await.status,
        StatusCode::CREATED
    );

    // The later pages still show the collection as the first page saw it.
    let page2 = api
        .get(&format!("{PODS}?limit=1&continue={first}"))
        .await
        .json();
    assert_eq!(page2["items"][0]["metadata"]["name"], "b");
    assert!(
        page2["items"][0]["metadata"]["labels"]
            .get("step")
            .is_none()
    );
    let page3 = api
        .get(&format!("{PODS}?limit=1&continue={}", token(&page2)))
        .await
        .json();
    let names: Vec<&Value> = page3["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| &p["metadata"]["name"])
        .collect();
    assert_eq!(names, ["c"]);
    assert!(page3["metadata"].get("continue").is_none());
    assert_eq!(rv(&page3), rv(&page1));

    // A new list sees the changes.
    let now = api.get(PODS).await.json();
    let names: Vec<&Value> = now["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| &p["metadata"]["name"])
        .collect();
    assert_eq!(names, ["a", "b", "d"]);
    assert_eq!(now["items"][1]["metadata"]["labels"]["step"], "2");
}

#[tokio::test]
async fn the_kinds_charts_create_are_served() {
    let api = setup().await;
    let ns = "/apis/{g}/namespaces/default/{p}";
    let cluster = "/apis/{g}/{p}";
    let cases: Vec<(&str, &str, Value)> = vec![
        (
            "rbac.authorization.k8s.io/v1",
            "roles",
            json!({"kind": "Role", "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "clusterroles",
            json!({"kind": "ClusterRole",
            "metadata": {"name": "system:aggregate-to-view:x"}, "rules": []}),
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "rolebindings",
            json!({"kind": "RoleBinding", "metadata": {"name": "rb"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]}),
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "clusterrolebindings",
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "crb"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}),
        ),
        (
            "storage.k8s.io/v1",
            "storageclasses",
            json!({"kind": "StorageClass", "metadata": {"name": "local-path"},
            "provisioner": "shoal.dev/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
        ),
        (
            "scheduling.k8s.io/v1",
            "priorityclasses",
            json!({"kind": "PriorityClass", "metadata": {"name": "high"}, "value": 1000}),
        ),
        (
            "networking.k8s.io/v1",
            "ingresses",
            json!({"kind": "Ingress", "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        ),
        (
            "networking.k8s.io/v1",
            "ingressclasses",
            json!({"kind": "IngressClass", "metadata": {"name": "shoal"},
            "spec": {"controller": "shoal.dev/ingress"}}),
        ),
        (
            "networking.k8s.io/v1",
            "networkpolicies",
            json!({"kind": "NetworkPolicy", "metadata": {"name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        ),
        (
            "policy/v1",
            "poddisruptionbudgets",
            json!({"kind": "PodDisruptionBudget", "metadata": {"name": "pdb"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        ),
        (
            "discovery.k8s.io/v1",
            "endpointslices",
            json!({"kind": "EndpointSlice", "metadata": {"name": "web-1"},
            "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"]}]}),
        ),
        (
            "autoscaling/v2",
            "horizontalpodautoscalers",
            json!({"kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 3}}),
        ),
        (
            "admissionregistration.k8s.io/v1",
            "validatingwebhookconfigurations",
            json!({"kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "hooks"}, "webhooks": []}),
        ),
        (
            "v1",
            "persistentvolumeclaims",
            json!({"kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ),
        (
            "v1",
            "resourcequotas",
            json!({"kind": "ResourceQuota", "metadata": {"name": "q"}, "spec": {"hard": {"pods": "10"}}}),
        ),
        (
            "apps/v1",
            "statefulsets",
            json!({"kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "serviceName": "db",
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "db:1"}]}}}}),
        ),
        (
            "apps/v1",
            "daemonsets",
            json!({"kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "a:1"}]}}}}),
        ),
    ];
    for (api_version, plural, mut body) in cases {
        body["apiVersion"] = json!(api_version);
        let kind = body["kind"].as_str().expect("kind").to_string();
        let name = body["metadata"]["name"].as_str().expect("name").to_string();
        let (group, base) = match api_version.split_once('/') {
            Some((g, v)) => (format!("{g}/{v}"), "/apis"),
            None => (api_version.to_string(), "/api"),
        };
        let namespaced = !matches!(
            plural,
            "clusterroles"
                | "clusterrolebindings"
                | "storageclasses"
                | "priorityclasses"
                | "ingressclasses"
                | "validatingwebhookconfigurations"
        );
        let template = if namespaced { ns } else { cluster };
        let url = template
            .replace("/apis", base)
            .replace("{g}", &group)
            .replace("{p}", plural);
        let created = api.json(Method::POST, &url, &body).await;
        assert_eq!(
            created.status,
            StatusCode::CREATED,
            "{kind}: {}",
            created.text()
        );
        let got = api.get(&format!("{url}/{name}")).await;
        assert_eq!(got.status, StatusCode::OK, "{kind}");
        assert_eq!(got.json()["kind"], kind);
        let listed = api.get(&url).await.json();
        assert_eq!(listed["kind"], format!("{kind}List"));
        // Besides the one made here, every cluster has the two system priority classes.
        let expected = if plural == "priorityclasses" { 3 } else { 1 };
        assert_eq!(
            listed["items"].as_array().map(Vec::len),
            Some(expected),
            "{kind}"
        );
    }
    let critical = api
        .get("/apis/scheduling.k8s.io/v1/priorityclasses/system-node-critical")
        .await
        .json();
    assert_eq!(critical["value"], 2_000_001_000);
    // Defaults and validation come from each kind's own strategy.
    let sts = api
        .get("/apis/apps/v1/namespaces/default/statefulsets/db")
        .await
        .json();
    assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(sts["spec"]["template"]["spec"]["restartPolicy"], "Always");
    let bad_shape = api
        .json(
            Method::POST,
            "/apis/scheduling.k8s.io/v1/priorityclasses",
            &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": "odd"}, "value": "high"}),
        )
        .await;
    assert_eq!(bad_shape.status, StatusCode::UNPROCESSABLE_ENTITY);
    let causes = &bad_shape.json()["details"]["causes"];
    assert_eq!(causes[0]["field"], "value", "{causes}");
    let slash = api
        .json(
            Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "a/b"}}),
        )
        .await;
    assert_eq!(slash.status, StatusCode::UNPROCESSABLE_ENTITY);
    let bad_policy = api
        .json(
            Method::POST,
            "/apis/apps/v1/namespaces/default/statefulsets",
            &json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
                "spec": {"podManagementPolicy": "Sometimes", "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
        )
        .await;
    assert_eq!(bad_policy.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad_policy.text().contains("spec.podManagementPolicy"));
}

#[tokio::test]
async fn unknown_fields_are_refused_warned_or_dropped_as_asked() {
    let api = setup().await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
               "data": {"a": "1"}, "dta": {"b": "2"}})
    };
    let strict = api
        .json(
            Method::POST,
            &format!("{cms}?fieldValidation=Strict"),
            &cm("s"),
        )
        .await;
    assert_eq!(strict.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        strict.json()["message"],
        "strict decoding error: unknown field \"dta\""
    );
    assert_eq!(
        api.get(&format!("{cms}/s")).await.status,
        StatusCode::NOT_FOUND
    );

    // The default is Warn: created, said, and not stored.
    let warned = api.json(Method::POST, cms, &cm("w")).await;
    assert_eq!(warned.status, StatusCode::CREATED);
    assert_eq!(warned.warnings, ["299 - \"unknown field \\\"dta\\\"\""]);
    let stored = api.get(&format!("{cms}/w")).await.json();
    assert!(stored.get("dta").is_none(), "{stored}");
    assert_eq!(stored["data"]["a"], "1");

    let ignored = api
        .json(
            Method::POST,
            &format!("{cms}?fieldValidation=Ignore"),
            &cm("i"),
        )
        .await;
    assert_eq!(ignored.status, StatusCode::CREATED);
    assert!(ignored.warnings.is_empty());
    assert!(
        api.get(&format!("{cms}/i"))
            .await
            .json()
            .get("dta")
            .is_none()
    );

    // Duplicate keys: refused under Strict, warned about by default (the last one wins).
    let twice = br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"},
        "data": {"a": "1", "a": "2"}}"#;
    let ct = [("content-type", "application/json")];
    let strict = api
        .send(
            Method::POST,
            &format!("{cms}?fieldValidation=Strict"),
            &ct,
            twice.to_vec(),
        )
        .await;
    assert_eq!(strict.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        strict.json()["message"],
        "strict decoding error: duplicate field \"data.a\""
    );
    let warned = api.send(Method::POST, cms, &ct, twice.to_vec()).await;
    assert_eq!(warned.status, StatusCode::CREATED);
    assert_eq!(
        warned.warnings,
        ["299 - \"duplicate field \\\"data.a\\\"\""]
    );
    assert_eq!(api.get(&format!("{cms}/d")).await.json()["data"]["a"], "2");

    let bogus = api
        .json(
            Method::POST,
            &format!("{cms}?fieldValidation=Loose"),
            &cm("b"),
        )
        .await;
    assert_eq!(bogus.status, StatusCode::BAD_REQUEST);

    // A patch that adds an unknown field deep in a pod is refused under Strict.
    assert_eq!(
        api.json(Method::POST, PODS, &pod("p")).await.status,
        StatusCode::CREATED
    );
    let patched = api
        .patch(
            &format!("{PODS}/p?fieldValidation=Strict"),
            "application/strategic-merge-patch+json",
            &json!({"spec": {"containers": [{"name": "c", "imagePullPolcy": "Always"}]}}),
        )
        .await;
    assert_eq!(
        patched.status,
        StatusCode::BAD_REQUEST,
        "{}",
        patched.text()
    );
    assert!(
        patched
            .text()
            .contains("unknown field \\\"spec.containers[0].imagePullPolcy\\\"")
    );
}

#[tokio::test]
async fn dry_run_writes_nothing_on_any_verb() {
    let api = setup().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keep"}});
    assert_eq!(
        api.json(Method::POST, "/api/v1/namespaces", &ns)
            .await
            .status,
        StatusCode::CREATED
    );
    // Deleting a namespace dry: it says Terminating but stays Active.
    let dry = api
        .send(
            Method::DELETE,
            "/api/v1/namespaces/keep?dryRun=All",
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(dry.status, StatusCode::OK);
    assert_eq!(dry.json()["status"]["phase"], "Terminating");
    let kept = api.get("/api/v1/namespaces/keep").await.json();
    assert_eq!(kept["status"]["phase"], "Active");
    assert!(kept["metadata"].get("deletionTimestamp").is_none());
    // A create and a delete of a pod, dry.
    let created = api
        .json(Method::POST, &format!("{PODS}?dryRun=All"), &pod("ghost"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        api.get(&format!("{PODS}/ghost")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.json(Method::POST, PODS, &pod("real")).await.status,
        StatusCode::CREATED
    );
    let gone = api
        .send(
            Method::DELETE,
            &format!("{PODS}/real?dryRun=All"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(gone.status, StatusCode::OK);
    assert_eq!(
        api.get(&format!("{PODS}/real")).await.status,
        StatusCode::OK
    );
    // Only "All" is a dry run; anything else is refused, not taken as one or ignored.
    let odd = api
        .json(Method::POST, &format!("{PODS}?dryRun=Maybe"), &pod("odd"))
        .await;
    assert_eq!(odd.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.get(&format!("{PODS}/odd")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn eviction_honours_the_disruption_budget() {
    let api = setup().await;
    let ready = json!({"status": {"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    for name in ["a", "b", "c"] {
        assert_eq!(
            api.json(Method::POST, PODS, &pod(name)).await.status,
            StatusCode::CREATED
        );
        let url = format!("{PODS}/{name}/status");
        let made = api
            .patch(&url, "application/merge-patch+json", &ready)
            .await;
        assert_eq!(made.status, StatusCode::OK);
    }
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}});
    let pdbs = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
    assert_eq!(
        api.json(Method::POST, pdbs, &pdb).await.status,
        StatusCode::CREATED
    );
    let eviction = |name: &str| {
        (
            format!("{PODS}/{name}/eviction"),
            json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}),
        )
    };
    // Three ready, two needed: one may go; then none.
    let (url, body) = eviction("a");
    assert_eq!(
        api.json(Method::POST, &url, &body).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.get(&format!("{PODS}/a")).await.status,
        StatusCode::NOT_FOUND
    );
    let status = api.get(&format!("{pdbs}/web")).await.json()["status"].clone();
    assert_eq!(status["disruptionsAllowed"], 0, "{status}");
    let (url, body) = eviction("b");
    let refused = api.json(Method::POST, &url, &body).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    let body = refused.json();
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    assert_eq!(api.get(&format!("{PODS}/b")).await.status, StatusCode::OK);
    // A pod no budget covers goes as asked.
    let mut other = pod("other");
    other["metadata"]["labels"] = json!({"app": "db"});
    assert_eq!(
        api.json(Method::POST, PODS, &other).await.status,
        StatusCode::CREATED
    );
    let (url, body) = eviction("other");
    assert_eq!(
        api.json(Method::POST, &url, &body).await.status,
        StatusCode::CREATED
    );
}

/// Through a real listener: hyper hands a 40 KiB URI to the server, which answers a Status.
#[tokio::test]
async fn a_long_uri_over_http_gets_a_status() {
    let server = TestApiServer::start().await.expect("apiserver");
    let request = http::Request::get(format!("{PODS}?labelSelector=a%3D{}", "b".repeat(40 << 10)))
        .body(kube::client::Body::empty())
        .expect("request");
    let resp = server.client().send(request).await.expect("response");
    assert_eq!(resp.status().as_u16(), 414);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let status: Value = serde_json::from_slice(&body).expect("a Status body");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 414);
}
