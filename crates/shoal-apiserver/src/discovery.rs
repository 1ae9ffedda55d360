//! Discovery documents (`/api`, `/apis`, per group-version resource lists, aggregated
//! discovery v2) and `/version`, rendered from the served set (`served.rs`) whenever it
//! changes.
//!
//! Aggregated discovery is served when the client asks for it in `Accept`; otherwise the
//! legacy documents. Nothing here reads the store.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::registry::ResourceType;
use crate::error::{ApiError, json_response};

const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Pre-rendered discovery documents.
pub struct Documents {
    api_versions: Vec<u8>,
    api_groups: Vec<u8>,
    /// `(group, document)` for `/apis/{group}`.
    groups: Vec<(String, Vec<u8>)>,
    /// `(group/version or "v1", APIResourceList)`.
    resource_lists: Vec<(String, Vec<u8>)>,
    aggregated_core: Vec<u8>,
    aggregated_groups: Vec<u8>,
}

/// `(group, version)` pairs served, core first, in registry order.
pub fn group_versions(types: &[&'static ResourceType]) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for rt in types {
        if !out.contains(&(rt.group, rt.version)) {
            out.push((rt.group, rt.version));
        }
    }
    out.sort_by_key(|(g, _)| !g.is_empty());
    out
}

/// Verbs of a resource; Namespace has no `deletecollection`, as in Kubernetes.
fn verbs(rt: &ResourceType) -> Value {
    let all = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let namespace = rt.strategy.deleted_by_termination();
    json!(
        all.iter()
            .filter(|v| !(namespace && **v == "deletecollection"))
            .collect::<Vec<_>>()
    )
}

/// `(name suffix, kind, group, version, verbs)` of a subresource.
fn subresource(
    rt: &ResourceType,
    sub: &str,
) -> (String, &'static str, &'static str, Vec<&'static str>) {
    match sub {
        "scale" => (
            "scale".into(),
            "Scale",
            "autoscaling",
            vec!["get", "patch", "update"],
        ),
        "binding" => ("binding".into(), "Binding", "", vec!["create"]),
        "eviction" => ("eviction".into(), "Eviction", "policy", vec!["create"]),
        "log" => ("log".into(), "Pod", "", vec!["get"]),
        "finalize" => ("finalize".into(), rt.kind, "", vec!["update"]),
        other => (
            other.to_string(),
            rt.kind,
            "",
            vec!["get", "patch", "update"],
        ),
    }
}

fn resource_list(types: &[&'static ResourceType], group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for rt in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs(rt),
            "shortNames": rt.short_names,
            "categories": rt.categories,
        }));
        for sub in rt.subresources {
            let (name, kind, sub_group, verbs) = subresource(rt, sub);
            let mut entry = json!({
                "name": format!("{}/{}", rt.plural, name),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !sub_group.is_empty() {
                entry["group"] = json!(sub_group);
                entry["version"] = json!("v1");
            }
            resources.push(entry);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

/// The groups of `gvs` in order of first appearance, each with its versions (the first is
/// the preferred one).
fn groups_of(gvs: &[(&'static str, &'static str)]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for (g, v) in gvs {
        match out.iter_mut().find(|(x, _)| x == g) {
            Some((_, versions)) => versions.push(v),
            None => out.push((g, vec![v])),
        }
    }
    out
}

fn aggregated(types: &[&'static ResourceType], core: bool) -> Value {
    let mut groups = Vec::new();
    let gvs = group_versions(types);
    for (group, versions) in groups_of(&gvs).iter().filter(|(g, _)| g.is_empty() == core) {
        let mut version_docs = Vec::new();
        for version in versions {
            let mut resources = Vec::new();
            for rt in types
                .iter()
                .filter(|t| t.group == *group && t.version == *version)
            {
                let subresources: Vec<Value> = rt
                .subresources
                .iter()
                .map(|sub| {
                    let (name, kind, sub_group, verbs) = subresource(rt, sub);
                    json!({
                        "subresource": name,
                        "responseKind": {"group": sub_group, "version": if sub_group.is_empty() { *version } else { "v1" }, "kind": kind},
                        "verbs": verbs,
                    })
                })
                .collect();
                resources.push(json!({
                    "resource": rt.plural,
                    "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
                    "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": rt.singular,
                    "verbs": verbs(rt),
                    "shortNames": rt.short_names,
                    "categories": rt.categories,
                    "subresources": subresources,
                }));
            }
            version_docs
                .push(json!({"version": version, "resources": resources, "freshness": "Current"}));
        }
        groups.push(json!({
            "metadata": {"name": group, "creationTimestamp": null},
            "versions": version_docs,
        }));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": groups})
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "preferredVersion": gvs.first().cloned().unwrap_or(Value::Null), "versions": gvs})
}

impl Documents {
    pub fn build(types: &[&'static ResourceType]) -> Documents {
        let to_bytes = |v: &Value| serde_json::to_vec(v).unwrap_or_default();
        let gvs = group_versions(types);
        let api_versions = json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
        });
        let groups: Vec<(String, Value)> = groups_of(&gvs)
            .iter()
            .filter(|(g, _)| !g.is_empty())
            .map(|(g, v)| (g.to_string(), group_doc(g, v)))
            .collect();
        let api_groups = json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": groups.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        });
        Documents {
            api_versions: to_bytes(&api_versions),
            api_groups: to_bytes(&api_groups),
            groups: groups
                .iter()
                .map(|(g, d)| {
                    let mut d = d.clone();
                    d["kind"] = json!("APIGroup");
                    d["apiVersion"] = json!("v1");
                    (g.clone(), to_bytes(&d))
                })
                .collect(),
            resource_lists: gvs
                .iter()
                .map(|(g, v)| {
                    let key = if g.is_empty() {
                        v.to_string()
                    } else {
                        format!("{g}/{v}")
                    };
                    (key, to_bytes(&resource_list(types, g, v)))
                })
                .collect(),
            aggregated_core: to_bytes(&aggregated(types, true)),
            aggregated_groups: to_bytes(&aggregated(types, false)),
        }
    }
}

fn raw_json(bytes: &[u8], content_type: &'static str) -> Response {
    let mut resp = (StatusCode::OK, bytes.to_vec()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=APIGroupDiscoveryList") && v.contains("v=v2"))
}

pub async fn api_versions(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let served = state.served();
    let docs = &served.docs;
    if wants_aggregated(&headers) {
        return raw_json(&docs.aggregated_core, AGGREGATED_CONTENT_TYPE);
    }
    raw_json(&docs.api_versions, "application/json")
}

pub async fn api_groups(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let served = state.served();
    let docs = &served.docs;
    if wants_aggregated(&headers) {
        return raw_json(&docs.aggregated_groups, AGGREGATED_CONTENT_TYPE);
    }
    raw_json(&docs.api_groups, "application/json")
}

pub async fn api_group(State(state): State<AppState>, Path(group): Path<String>) -> Response {
    match state.served().docs.groups.iter().find(|(g, _)| *g == group) {
        Some((_, doc)) => raw_json(doc, "application/json"),
        None => ApiError::UnknownResource.into_response(),
    }
}

pub async fn core_resources(State(state): State<AppState>) -> Response {
    resource_list_response(&state, "v1")
}

pub async fn group_resources(
    State(state): State<AppState>,
    Path((group, version)): Path<(String, String)>,
) -> Response {
    resource_list_response(&state, &format!("{group}/{version}"))
}

fn resource_list_response(state: &AppState, gv: &str) -> Response {
    match state
        .served()
        .docs
        .resource_lists
        .iter()
        .find(|(k, _)| k == gv)
    {
        Some((_, doc)) => raw_json(doc, "application/json"),
        None => ApiError::UnknownResource.into_response(),
    }
}

pub async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": "35",
            "gitVersion": "v1.35.0-shoal",
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "2026-11-23T00:00:00Z",
            "goVersion": "rust",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
        }),
    )
}
