//! CustomResourceDefinitions end to end, over HTTP against a served apiserver on a real
//! store: establishing, discovery, OpenAPI, schema defaulting/pruning/validation, the status
//! and scale subresources, printer columns, name conflicts, and deletion (of the CRD itself,
//! which waits for its custom resources' finalizers).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_apiserver::testing::TestApiServer;

struct Reply {
    status: u16,
    warnings: Vec<String>,
    body: Value,
}

async fn send(
    server: &TestApiServer,
    method: &str,
    path: &str,
    content_type: &str,
    accept: &str,
    body: Option<&Value>,
) -> Reply {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .header("accept", accept)
        .body(kube::client::Body::from(
            body.map(|b| serde_json::to_vec(b).expect("json"))
                .unwrap_or_default(),
        ))
        .expect("request");
    let resp = server.client().send(request).await.expect("response");
    let status = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        warnings,
        body,
    }
}

async fn call(server: &TestApiServer, method: &str, path: &str, body: Option<&Value>) -> Reply {
    send(
        server,
        method,
        path,
        "application/json",
        "application/json",
        body,
    )
    .await
}

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
const WIDGETS: &str = "/apis/test.shoal.dev/v1/namespaces/default/widgets";

fn widget_crd() -> Value {
    let schema = json!({"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "minimum": 0, "maximum": 100},
                    "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                }
            },
            "status": {
                "type": "object",
                "properties": {"ready": {"type": "integer"}, "selector": {"type": "string"}}
            }
        }
    }});
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.shoal.dev"},
        "spec": {
            "group": "test.shoal.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": schema,
                 "subresources": {"status": {}, "scale": {
                     "specReplicasPath": ".spec.size", "statusReplicasPath": ".status.ready",
                     "labelSelectorPath": ".status.selector"}},
                 "additionalPrinterColumns": [
                     {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                     {"name": "Mode", "type": "string", "jsonPath": ".spec.mode", "priority": 1},
                 ]},
                {"name": "v1beta1", "served": true, "storage": false, "schema": schema},
            ]
        }
    })
}

/// Waits until the CRD reports condition `type_` with `status` (polling its status).
async fn wait_condition(server: &TestApiServer, name: &str, type_: &str, status: &str) -> Value {
    for _ in 0..200 {
        let r = call(server, "GET", &format!("{CRDS}/{name}"), None).await;
        let hit = r.body["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == type_ && c["status"] == status);
        if hit {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("CRD {name} never reported {type_}={status}");
}

async fn wait_gone(server: &TestApiServer, path: &str) {
    for _ in 0..200 {
        if call(server, "GET", path, None).await.status == 404 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} was never deleted");
}

fn widget(name: &str, size: Value) -> Value {
    json!({"apiVersion": "test.shoal.dev/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": {"size": size}})
}

#[tokio::test]
async fn custom_resources_are_served_validated_and_deleted_with_their_definition() {
    let server = TestApiServer::start().await.expect("apiserver");

    // An unknown resource before its definition exists.
    assert_eq!(call(&server, "GET", WIDGETS, None).await.status, 404);

    let r = call(&server, "POST", CRDS, Some(&widget_crd())).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["metadata"]["finalizers"],
        json!(["customresourcecleanup.apiextensions.k8s.io"])
    );
    assert_eq!(r.body["spec"]["names"]["singular"], "widget");
    assert_eq!(r.body["spec"]["names"]["listKind"], "WidgetList");
    let crd = wait_condition(&server, "widgets.test.shoal.dev", "Established", "True").await;
    assert_eq!(crd["status"]["acceptedNames"]["kind"], "Widget");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));

    // Discovery and OpenAPI.
    let r = call(&server, "GET", "/apis/test.shoal.dev/v1", None).await;
    assert_eq!(r.status, 200);
    let names: Vec<&str> = r.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["widgets", "widgets/status", "widgets/scale"]);
    let r = call(&server, "GET", "/apis/test.shoal.dev", None).await;
    assert_eq!(r.body["preferredVersion"]["version"], "v1");
    assert_eq!(r.body["versions"].as_array().unwrap().len(), 2);
    let r = send(
        &server,
        "GET",
        "/apis",
        "application/json",
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        None,
    )
    .await;
    let group = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "test.shoal.dev")
        .expect("group in aggregated discovery");
    assert_eq!(
        group["versions"][0]["resources"][0]["shortNames"],
        json!(["wd"])
    );
    let r = call(&server, "GET", "/openapi/v3/apis/test.shoal.dev/v1", None).await;
    let schema = &r.body["components"]["schemas"]["dev.shoal.test.v1.Widget"];
    assert_eq!(
        schema["properties"]["spec"]["properties"]["size"]["type"],
        "integer"
    );

    // Create: defaults filled, unknown fields pruned with a warning, status dropped.
    let mut w = widget("w1", json!(3));
    w["spec"]["bogus"] = json!(true);
    w["spec"]["extra"] = json!({"anything": {"goes": 1}});
    w["status"] = json!({"ready": 9});
    let r = call(&server, "POST", WIDGETS, Some(&w)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["spec"]["mode"], "fast");
    assert!(r.body["spec"].get("bogus").is_none());
    assert_eq!(r.body["spec"]["extra"]["anything"]["goes"], 1);
    assert!(r.body.get("status").is_none());
    assert_eq!(r.body["metadata"]["generation"], 1);
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("unknown field \\\"spec.bogus\\\"")),
        "{:?}",
        r.warnings
    );
    // Strict refuses the unknown field; invalid values are a 422 naming every field.
    let r = call(
        &server,
        "POST",
        &format!("{WIDGETS}?fieldValidation=Strict"),
        Some(&w),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let mut bad = widget("w2", json!("three"));
    bad["spec"]["mode"] = json!("odd");
    let r = call(&server, "POST", WIDGETS, Some(&bad)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let fields: Vec<&str> = r.body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["spec.size", "spec.mode"], "{}", r.body);
    let r = call(&server, "POST", WIDGETS, Some(&widget("w3", json!(101)))).await;
    assert_eq!(r.status, 422);
    let r = call(&server, "POST", WIDGETS, Some(&json!({"apiVersion": "test.shoal.dev/v1", "kind": "Widget", "metadata": {"name": "w4"}, "spec": {}}))).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["details"]["causes"][0]["field"], "spec.size");

    // The other served version reads the same storage.
    let r = call(
        &server,
        "GET",
        "/apis/test.shoal.dev/v1beta1/namespaces/default/widgets/w1",
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["spec"]["size"], 3);

    // Printer columns.
    let r = send(
        &server,
        "GET",
        WIDGETS,
        "application/json",
        "application/json;as=Table;v=v1;g=meta.k8s.io",
        None,
    )
    .await;
    let columns: Vec<&str> = r.body["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Size", "Mode"]);
    assert_eq!(r.body["rows"][0]["cells"], json!(["w1", 3, "fast"]));

    // Status subresource: status writes change only status, and no generation.
    let mut current = call(&server, "GET", &format!("{WIDGETS}/w1"), None)
        .await
        .body;
    current["status"] = json!({"ready": 2, "selector": "app=w1"});
    current["spec"]["size"] = json!(50);
    let r = call(
        &server,
        "PUT",
        &format!("{WIDGETS}/w1/status"),
        Some(&current),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"]["ready"], 2);
    assert_eq!(r.body["spec"]["size"], 3);
    assert_eq!(r.body["metadata"]["generation"], 1);
    // Main writes keep status and count a generation.
    let mut main = r.body.clone();
    main["spec"]["size"] = json!(4);
    main["status"] = json!({"ready": 0});
    let r = call(&server, "PUT", &format!("{WIDGETS}/w1"), Some(&main)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"]["ready"], 2);
    assert_eq!(r.body["metadata"]["generation"], 2);

    // Scale subresource at the definition's paths.
    let r = call(&server, "GET", &format!("{WIDGETS}/w1/scale"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["spec"]["replicas"], 4);
    assert_eq!(r.body["status"]["replicas"], 2);
    assert_eq!(r.body["status"]["selector"], "app=w1");
    let r = send(
        &server,
        "PATCH",
        &format!("{WIDGETS}/w1/scale"),
        "application/merge-patch+json",
        "application/json",
        Some(&json!({"spec": {"replicas": 7}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(&server, "GET", &format!("{WIDGETS}/w1"), None).await;
    assert_eq!(r.body["spec"]["size"], 7);

    // Patches: merge works, strategic merge is refused as upstream.
    let r = send(
        &server,
        "PATCH",
        &format!("{WIDGETS}/w1"),
        "application/merge-patch+json",
        "application/json",
        Some(&json!({"spec": {"mode": "slow"}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["spec"]["mode"], "slow");
    let r = send(
        &server,
        "PATCH",
        &format!("{WIDGETS}/w1"),
        "application/strategic-merge-patch+json",
        "application/json",
        Some(&json!({"spec": {"mode": "fast"}})),
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.body);

    // A definition that is not structural is refused; one whose kind is taken is not served.
    let mut bad_crd = widget_crd();
    bad_crd["metadata"]["name"] = json!("gadgets.test.shoal.dev");
    bad_crd["spec"]["names"] = json!({"plural": "gadgets", "kind": "Gadget"});
    bad_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] = json!({});
    let r = call(&server, "POST", CRDS, Some(&bad_crd)).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let mut twin = widget_crd();
    twin["metadata"]["name"] = json!("widgetzs.test.shoal.dev");
    twin["spec"]["names"] = json!({"plural": "widgetzs", "kind": "Widget"});
    let r = call(&server, "POST", CRDS, Some(&twin)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let twin = wait_condition(&server, "widgetzs.test.shoal.dev", "NamesAccepted", "False").await;
    assert_eq!(twin["status"]["conditions"][0]["reason"], "KindConflict");
    assert_eq!(
        call(&server, "GET", "/apis/test.shoal.dev/v1/widgetzs", None)
            .await
            .status,
        404
    );
    assert_eq!(
        call(
            &server,
            "DELETE",
            &format!("{CRDS}/widgetzs.test.shoal.dev"),
            None
        )
        .await
        .status,
        200
    );
    wait_gone(&server, &format!("{CRDS}/widgetzs.test.shoal.dev")).await;

    // (Deleting a namespace empties it of custom resources too: the namespace controller's
    // test, `shoal-controllers/tests/apiserver.rs`.)

    // Deleting the definition: new objects are refused while its objects go (one waits for
    // its own finalizer), then the definition and its resource are gone.
    let mut held = widget("held", json!(1));
    held["metadata"]["finalizers"] = json!(["test.shoal.dev/hold"]);
    assert_eq!(
        call(&server, "POST", WIDGETS, Some(&held)).await.status,
        201
    );
    let r = call(
        &server,
        "DELETE",
        &format!("{CRDS}/widgets.test.shoal.dev"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_condition(&server, "widgets.test.shoal.dev", "Terminating", "True").await;
    let r = call(&server, "POST", WIDGETS, Some(&widget("late", json!(1)))).await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("terminating"));
    for _ in 0..200 {
        if call(&server, "GET", &format!("{WIDGETS}/w1"), None)
            .await
            .status
            == 404
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        call(&server, "GET", &format!("{WIDGETS}/w1"), None)
            .await
            .status,
        404
    );
    let r = call(&server, "GET", &format!("{WIDGETS}/held"), None).await;
    assert!(
        r.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        r.body
    );
    assert_eq!(
        call(
            &server,
            "GET",
            &format!("{CRDS}/widgets.test.shoal.dev"),
            None
        )
        .await
        .status,
        200
    );
    let r = send(
        &server,
        "PATCH",
        &format!("{WIDGETS}/held"),
        "application/merge-patch+json",
        "application/json",
        Some(&json!({"metadata": {"finalizers": null}})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_gone(&server, &format!("{CRDS}/widgets.test.shoal.dev")).await;
    wait_gone(&server, WIDGETS).await;
    assert_eq!(
        server
            .store()
            .list("/registry/test.shoal.dev/")
            .await
            .unwrap()
            .items
            .len(),
        0
    );
}
