//! Server-side `Table` output (`meta.k8s.io/v1`) for `kubectl get`: negotiation from the
//! `Accept` header and rendering of objects into rows with the columns of `shoal_api::table`.
//! Column content is `shoal_api`'s business; this module only shapes the response.

use axum::http::{HeaderMap, header};
use serde_json::{Map, Value, json};

use crate::api::registry::ResourceType;
use crate::api::table::{columns, row_cells};

/// What each row's `object` carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

/// How the client asked for a Table, if it did.
#[derive(Debug, Clone, Copy)]
pub struct TableRequest {
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
    pub api_version: &'static str,
    pub include: IncludeObject,
}

/// A Table request when some `Accept` entry names `as=Table`.
pub fn negotiate(headers: &HeaderMap, include_object: Option<&str>) -> Option<TableRequest> {
    let mut found = None;
    for value in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for entry in value.split(',') {
            let params: Vec<&str> = entry.split(';').map(str::trim).collect();
            if !params.contains(&"as=Table") {
                continue;
            }
            let version = if params.contains(&"v=v1beta1") {
                "meta.k8s.io/v1beta1"
            } else {
                "meta.k8s.io/v1"
            };
            if found.is_none() || version == "meta.k8s.io/v1" {
                found = Some(version);
            }
        }
    }
    let include = match include_object {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    };
    found.map(|api_version| TableRequest {
        api_version,
        include,
    })
}

fn column_definitions(rt: &ResourceType) -> Value {
    Value::Array(
        columns(rt)
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.type_,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

fn row(rt: &ResourceType, req: TableRequest, obj: &Value, now: jiff::Timestamp) -> Value {
    let cells = row_cells(rt, obj, now);
    let object = match req.include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| Value::Object(Map::new())),
        }),
    };
    let mut r = json!({"cells": cells});
    if !object.is_null() {
        r["object"] = object;
    }
    r
}

/// A Table of `objects`; `list_meta` becomes its `metadata` (resourceVersion, continue).
pub fn render<'a>(
    rt: &ResourceType,
    req: TableRequest,
    objects: impl IntoIterator<Item = &'a Value>,
    list_meta: Value,
    with_columns: bool,
) -> Value {
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects.into_iter().map(|o| row(rt, req, o, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": req.api_version,
        "metadata": list_meta,
        "columnDefinitions": if with_columns { column_definitions(rt) } else { Value::Array(vec![]) },
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn negotiation() {
        let kubectl = accept(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
        );
        let req = negotiate(&kubectl, None).expect("table");
        assert_eq!(req.api_version, "meta.k8s.io/v1");
        assert_eq!(req.include, IncludeObject::Metadata);
        let beta = accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io");
        assert_eq!(
            negotiate(&beta, Some("Object")).map(|r| (r.api_version, r.include)),
            Some(("meta.k8s.io/v1beta1", IncludeObject::Object))
        );
        assert!(negotiate(&accept("application/json"), None).is_none());
        assert!(negotiate(&HeaderMap::new(), None).is_none());
    }
}
