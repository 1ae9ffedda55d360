//! OpenAPI documents: `/openapi/v3` (root index plus one document per group-version) and
//! `/openapi/v2` (Swagger 2.0, JSON only).
//!
//! v3 documents carry every kind's schema, so `kubectl explain` works at any depth: a built-in
//! kind's is its `k8s-openapi` type's (with every type it refers to and their descriptions,
//! generated through `schemars` and rendered once per process per group-version); a custom
//! resource's is its CRD's. Each operation advertises the `fieldValidation` parameter, so
//! kubectl leaves `--validate=strict` to the server. PATCH request bodies do not list
//! strategic merge, so client-side apply computes its patches from kubectl's built-in types
//! rather than from these schemas. v2 stays minimal (objects with their GVK); kubectl reads v3.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::AppState;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

use crate::api::registry::{ResourceType, resource_types};
use crate::discovery::group_versions;
use crate::error::ApiError;

/// The OpenAPI documents of one served set.
pub struct Documents {
    v2: Vec<u8>,
    v3_root: Vec<u8>,
    /// `("api/v1" | "apis/apps/v1", document)`.
    v3: Vec<(String, V3)>,
}

/// One group-version's v3 document.
enum V3 {
    /// Built-in kinds only: the document never changes within a process, so it is rendered
    /// on its first request (full schemas are a few MiB that most servers never serve) and
    /// kept in [`builtin_v3`]'s cache across served sets.
    Builtin {
        group: &'static str,
        version: &'static str,
        types: Vec<&'static ResourceType>,
    },
    /// With custom resources: rendered with the served set, since a CRD's registration can
    /// take a new schema in place and the document must be the one its hash names.
    Rendered(Bytes),
}

fn schema_name(rt: &ResourceType) -> String {
    if rt.strategy.openapi_schema().is_some() {
        // Custom resources, as upstream: the group reversed (`com.example.v1.Widget`).
        let reversed: Vec<&str> = rt.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind);
    }
    let group = if rt.group.is_empty() {
        "core"
    } else {
        rt.group.split('.').next().unwrap_or(rt.group)
    };
    format!("io.k8s.api.{group}.{}.{}", rt.version, rt.kind)
}

fn gvk(rt: &ResourceType) -> Value {
    json!({"group": rt.group, "version": rt.version, "kind": rt.kind})
}

fn base_path(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    }
}

fn collection_path(rt: &ResourceType) -> String {
    if rt.namespaced {
        format!("{}/namespaces/{{namespace}}/{}", base_path(rt), rt.plural)
    } else {
        format!("{}/{}", base_path(rt), rt.plural)
    }
}

fn query_param(name: &str, v3: bool) -> Value {
    if v3 {
        json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
    } else {
        json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
    }
}

fn path_params(rt: &ResourceType, item: bool, v3: bool) -> Vec<Value> {
    let p = |name: &str| {
        if v3 {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
        } else {
            json!({"name": name, "in": "path", "required": true, "type": "string", "uniqueItems": true})
        }
    };
    let mut out = Vec::new();
    if item {
        out.push(p("name"));
    }
    if rt.namespaced {
        out.push(p("namespace"));
    }
    out
}

/// One operation; writes carry `dryRun`, `fieldManager` and `fieldValidation`.
fn operation(rt: &ResourceType, action: &str, kind: &Value, schema_ref: &str, v3: bool) -> Value {
    let writes = matches!(action, "post" | "put" | "patch");
    let mut params = Vec::new();
    if writes {
        for name in ["dryRun", "fieldManager", "fieldValidation"] {
            params.push(query_param(name, v3));
        }
    }
    let response = if v3 {
        json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}})
    } else {
        json!({"description": "OK", "schema": {"$ref": schema_ref}})
    };
    let mut op = json!({
        "operationId": format!("{action}{}", rt.kind),
        "parameters": params,
        "responses": {"200": response},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": kind,
    });
    if writes {
        if v3 {
            let types: &[&str] = if action == "patch" {
                &[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ]
            } else {
                &["application/json"]
            };
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": {"$ref": schema_ref}})))
                .collect();
            op["requestBody"] = json!({"content": content, "required": true});
        } else if let Some(list) = op["parameters"].as_array_mut() {
            list.push(json!({"name": "body", "in": "body", "required": true, "schema": {"$ref": schema_ref}}));
        }
    }
    op
}

fn paths_for(rt: &ResourceType, name: &str, v3: bool) -> Vec<(String, Value)> {
    let prefix = if v3 {
        "#/components/schemas/"
    } else {
        "#/definitions/"
    };
    let own = format!("{prefix}{name}");
    let kind = gvk(rt);
    let collection = collection_path(rt);
    let mut out = vec![
        (
            collection.clone(),
            json!({
                "get": operation(rt, "list", &kind, &own, v3),
                "post": operation(rt, "post", &kind, &own, v3),
                "parameters": path_params(rt, false, v3),
            }),
        ),
        (
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(rt, "get", &kind, &own, v3),
                "put": operation(rt, "put", &kind, &own, v3),
                "patch": operation(rt, "patch", &kind, &own, v3),
                "delete": operation(rt, "delete", &kind, &own, v3),
                "parameters": path_params(rt, true, v3),
            }),
        ),
    ];
    for sub in rt
        .subresources
        .iter()
        .filter(|s| matches!(**s, "status" | "scale"))
    {
        let (kind, schema) = if *sub == "scale" {
            (
                json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                format!("{prefix}io.k8s.api.autoscaling.v1.Scale"),
            )
        } else {
            (kind.clone(), own.clone())
        };
        out.push((
            format!("{collection}/{{name}}/{sub}"),
            json!({
                "get": operation(rt, "get", &kind, &schema, v3),
                "put": operation(rt, "put", &kind, &schema, v3),
                "patch": operation(rt, "patch", &kind, &schema, v3),
                "parameters": path_params(rt, true, v3),
            }),
        ));
    }
    out
}

fn schemas_for<'a>(types: impl Iterator<Item = &'a ResourceType>) -> Map<String, Value> {
    let mut schemas = Map::new();
    let mut with_scale = false;
    for rt in types {
        with_scale |= rt.subresources.contains(&"scale");
        let schema = match rt.strategy.openapi_schema() {
            Some(mut own) => {
                if let Some(map) = own.as_object_mut() {
                    let props = map.entry("properties").or_insert_with(|| json!({}));
                    if let Some(props) = props.as_object_mut() {
                        props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                        props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                        props.insert(
                            "metadata".into(),
                            json!({"type": "object", "description": "Standard object's metadata."}),
                        );
                    }
                    map.insert("x-kubernetes-group-version-kind".into(), json!([gvk(rt)]));
                }
                own
            }
            None => json!({
                "description": format!("{} ({}).", rt.kind, rt.api_version()),
                "type": "object",
                "x-kubernetes-group-version-kind": [gvk(rt)],
            }),
        };
        schemas.insert(schema_name(rt), schema);
    }
    if with_scale {
        schemas.insert(
            "io.k8s.api.autoscaling.v1.Scale".into(),
            json!({
                "description": "Scale represents a scaling request for a resource.",
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "autoscaling", "version": "v1", "kind": "Scale"}],
            }),
        );
    }
    schemas
}

/// The schemas of one group-version's kinds for OpenAPI v3, and each kind's schema name:
/// custom resources carry their CRD's schema; built-in kinds the full schema of their
/// `k8s-openapi` type with every type it refers to (descriptions included, so `kubectl explain
/// pod.spec.containers` works), each kind's marked with its group-version-kind.
fn v3_schemas(types: &[&ResourceType]) -> (Map<String, Value>, Vec<String>) {
    let mut generator = crate::api::schemars::SchemaGenerator::new(
        crate::api::schemars::generate::SchemaSettings::openapi3(),
    );
    let mut names = Vec::with_capacity(types.len());
    let mut typed = Vec::new();
    for rt in types {
        let reference = rt.strategy.type_schema(&mut generator);
        let name = reference
            .as_ref()
            .and_then(|r| r.get("$ref"))
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/components/schemas/"))
            .map(|n| n.replace("~1", "/").replace("~0", "~"));
        match name {
            Some(name) => {
                typed.push((*rt, name.clone()));
                names.push(name);
            }
            None => names.push(schema_name(rt)),
        }
    }
    let with_scale = types.iter().any(|rt| rt.subresources.contains(&"scale"));
    if with_scale {
        generator.subschema_for::<crate::api::k8s_openapi::api::autoscaling::v1::Scale>();
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (rt, name) in &typed {
        if let Some(Value::Object(schema)) = schemas.get_mut(name) {
            let list = schema
                .entry("x-kubernetes-group-version-kind")
                .or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                list.push(gvk(rt));
            }
        }
    }
    if let Some(Value::Object(scale)) = schemas.get_mut("io.k8s.api.autoscaling.v1.Scale") {
        scale.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": "autoscaling", "version": "v1", "kind": "Scale"}]),
        );
    }
    let untyped: Vec<&ResourceType> = types
        .iter()
        .copied()
        .filter(|rt| !typed.iter().any(|(t, _)| t == rt))
        .collect();
    for (name, schema) in schemas_for(untyped.into_iter()) {
        schemas.entry(name).or_insert(schema);
    }
    (schemas, names)
}

/// Whether `rt` is one of the built-in kinds (whose documents never change).
fn builtin(rt: &ResourceType) -> bool {
    resource_types().iter().any(|b| std::ptr::eq(*b, rt))
}

/// The v3 document of one group-version's kinds.
fn v3_document(in_gv: &[&ResourceType], info: &Value) -> Bytes {
    let (schemas, names) = v3_schemas(in_gv);
    let paths: Map<String, Value> = in_gv
        .iter()
        .zip(&names)
        .flat_map(|(rt, name)| paths_for(rt, name, true))
        .collect();
    let doc = json!({
        "openapi": "3.0.0",
        "info": info,
        "paths": paths,
        "components": {"schemas": schemas},
    });
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// The v3 document of a group-version of built-in kinds, rendered once per process (the
/// full schemas take tens of milliseconds, and documents are re-rendered on every CRD
/// change).
fn builtin_v3(
    group: &'static str,
    version: &'static str,
    in_gv: &[&ResourceType],
    info: &Value,
) -> Bytes {
    static CACHE: Mutex<Vec<((&str, &str), Bytes)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, doc)) = cache.iter().find(|(gv, _)| *gv == (group, version)) {
        return doc.clone();
    }
    let doc = v3_document(in_gv, info);
    cache.push(((group, version), doc.clone()));
    doc
}

/// What a built-in group-version's document is made from, for its hash without rendering
/// it: the binary's version and the kinds' registrations (their schemas come from the
/// `k8s-openapi` types compiled into this binary).
fn builtin_fingerprint(in_gv: &[&ResourceType]) -> String {
    let mut out = String::from(env!("CARGO_PKG_VERSION"));
    for rt in in_gv {
        out.push_str(&format!(
            "|{}/{}/{}/{}/{:?}/{:?}",
            rt.group, rt.version, rt.kind, rt.plural, rt.namespaced, rt.subresources
        ));
    }
    out
}

fn info() -> Value {
    json!({"title": "Kubernetes", "version": "v1.35.0-shoal"})
}

/// A short stable hash of a document, for `serverRelativeURL` (FNV-1a, hex).
fn hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

impl Documents {
    pub fn build(types: &[&'static ResourceType]) -> Documents {
        let info = info();
        let mut v3 = Vec::new();
        let mut root_paths = Map::new();
        for (group, version) in group_versions(types) {
            let in_gv: Vec<&'static ResourceType> = types
                .iter()
                .copied()
                .filter(|t| t.group == group && t.version == version)
                .collect();
            let (doc, digest) = if in_gv.iter().all(|rt| builtin(rt)) {
                let digest = hash(builtin_fingerprint(&in_gv).as_bytes());
                let doc = V3::Builtin {
                    group,
                    version,
                    types: in_gv,
                };
                (doc, digest)
            } else {
                let bytes = v3_document(&in_gv, &info);
                let digest = hash(&bytes);
                (V3::Rendered(bytes), digest)
            };
            let key = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            root_paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={digest}")}),
            );
            v3.push((key, doc));
        }
        let v2_paths: Map<String, Value> = types
            .iter()
            .flat_map(|rt| paths_for(rt, &schema_name(rt), false))
            .collect();
        let v2 = json!({
            "swagger": "2.0",
            "info": info,
            "paths": v2_paths,
            "definitions": schemas_for(types.iter().copied()),
        });
        Documents {
            v2: serde_json::to_vec(&v2).unwrap_or_default(),
            v3_root: serde_json::to_vec(&json!({"paths": root_paths})).unwrap_or_default(),
            v3,
        }
    }
}

fn json_bytes(bytes: &[u8]) -> Response {
    let mut resp = (StatusCode::OK, bytes.to_vec()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `/openapi/v2` as JSON; a client asking for protobuf only gets 406 and falls back.
pub async fn v2(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let json_ok = accept.is_empty()
        || accept
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.contains("json") || t.trim().starts_with("*/*"));
    if !json_ok {
        let mut resp = (
            StatusCode::NOT_ACCEPTABLE,
            "only application/json is served",
        )
            .into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return resp;
    }
    json_bytes(&state.served().openapi.v2)
}

pub async fn v3_root(State(state): State<AppState>) -> Response {
    json_bytes(&state.served().openapi.v3_root)
}

pub async fn v3_group_version(State(state): State<AppState>, Path(path): Path<String>) -> Response {
    let path = path.trim_matches('/');
    let served = state.served();
    match served.openapi.v3.iter().find(|(k, _)| k == path) {
        Some((_, V3::Rendered(doc))) => json_bytes(doc),
        Some((
            _,
            V3::Builtin {
                group,
                version,
                types,
            },
        )) => {
            let (group, version, types) = (*group, *version, types.clone());
            // Tens of milliseconds of CPU the first time: off the async threads.
            match tokio::task::spawn_blocking(move || builtin_v3(group, version, &types, &info()))
                .await
            {
                Ok(doc) => json_bytes(&doc),
                Err(e) => ApiError::Internal(format!("rendering OpenAPI v3: {e}")).into_response(),
            }
        }
        None => ApiError::UnknownResource.into_response(),
    }
}
