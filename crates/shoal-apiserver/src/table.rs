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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRequest {
    /// `meta.k8s.io/v1` or `meta.k8s.io/v1beta1`.
    pub api_version: &'static str,
    pub include: IncludeObject,
}

/// What a read's response carries, from the `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The objects themselves (a list kind for lists).
    Object,
    /// A `meta.k8s.io` Table of rows (`as=Table`), as `kubectl get` asks.
    Table(TableRequest),
    /// Metadata only (`as=PartialObjectMetadata` or `as=PartialObjectMetadataList`): each
    /// object as a `PartialObjectMetadata`, lists as a `PartialObjectMetadataList`, as the
    /// metadata clients of controllers (the garbage collector's) ask.
    Metadata,
}

/// The first `Accept` entry this server can serve, in the client's order: a plain media
/// type gives the objects, `as=Table` a Table, `as=PartialObjectMetadata[List]` metadata
/// (in JSON: a protobuf entry of it is passed over for the client's next choice); entries
/// asking for other transformations are passed over. Nothing acceptable: the objects.
pub fn negotiate(headers: &HeaderMap, include_object: Option<&str>) -> Shape {
    let include = match include_object {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    };
    for value in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for entry in value.split(',') {
            let mut params = entry.split(';').map(str::trim);
            let media = params.next().unwrap_or("");
            let params: Vec<&str> = params.collect();
            let transform = params.iter().find_map(|p| p.strip_prefix("as="));
            match transform {
                None => return Shape::Object,
                Some("Table") => {
                    let api_version = if params.contains(&"v=v1beta1") {
                        "meta.k8s.io/v1beta1"
                    } else {
                        "meta.k8s.io/v1"
                    };
                    return Shape::Table(TableRequest {
                        api_version,
                        include,
                    });
                }
                Some("PartialObjectMetadata" | "PartialObjectMetadataList")
                    if !media.contains("protobuf") =>
                {
                    return Shape::Metadata;
                }
                Some(_) => {}
            }
        }
    }
    Shape::Object
}

/// Writes the stored object `json` as a `PartialObjectMetadata`, decoding only its metadata.
pub fn write_partial(json: &[u8], out: &mut Vec<u8>) {
    #[derive(serde::Deserialize)]
    struct Metadata {
        #[serde(default)]
        metadata: Map<String, Value>,
    }
    let metadata = match serde_json::from_slice::<Metadata>(json) {
        Ok(m) => m.metadata,
        Err(e) => {
            // Entries are the server's own JSON: this is corruption, said once per item.
            tracing::error!(error = %e, "undecodable object in the watch cache");
            Map::new()
        }
    };
    serde_json::to_writer(out, &partial_metadata(Value::Object(metadata))).unwrap_or_default();
}

/// `obj` as a `meta.k8s.io/v1` `PartialObjectMetadata`.
pub fn partial(obj: &Value) -> Value {
    partial_metadata(
        obj.get("metadata")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new())),
    )
}

/// A `meta.k8s.io/v1` `PartialObjectMetadata` carrying `metadata`.
pub fn partial_metadata(metadata: Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
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
        IncludeObject::Metadata => partial(obj),
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
        let table = |api_version, include| {
            Shape::Table(TableRequest {
                api_version,
                include,
            })
        };
        assert_eq!(
            negotiate(&kubectl, None),
            table("meta.k8s.io/v1", IncludeObject::Metadata)
        );
        let beta = accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io");
        assert_eq!(
            negotiate(&beta, Some("Object")),
            table("meta.k8s.io/v1beta1", IncludeObject::Object)
        );
        assert_eq!(negotiate(&accept("application/json"), None), Shape::Object);
        assert_eq!(negotiate(&HeaderMap::new(), None), Shape::Object);
        // The client's order decides: plain JSON first means the objects.
        assert_eq!(
            negotiate(
                &accept("application/json,application/json;as=Table;v=v1;g=meta.k8s.io"),
                None
            ),
            Shape::Object
        );
        // client-go's metadata client: protobuf first (not served), then JSON.
        let metadata = accept(
            "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
        );
        assert_eq!(negotiate(&metadata, None), Shape::Metadata);
        assert_eq!(
            negotiate(
                &accept("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"),
                None
            ),
            Shape::Metadata
        );
        // An unknown transformation is passed over.
        assert_eq!(
            negotiate(
                &accept(
                    "application/json;as=Unknown;g=x;v=v1,application/json;as=Table;v=v1;g=meta.k8s.io"
                ),
                None
            ),
            table("meta.k8s.io/v1", IncludeObject::Metadata)
        );
    }
}
