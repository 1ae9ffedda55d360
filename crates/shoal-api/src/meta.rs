//! Accessors for `metadata` and friends on objects held as `serde_json::Value`. They never
//! panic on odd shapes: a missing or mistyped field reads as absent, and setters create the
//! `metadata` map when needed (on non-objects they do nothing).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// `metadata` as a map, if present.
pub fn metadata(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.as_object()
}

/// `metadata` as a mutable map, created if missing. `None` when `obj` is not an object.
pub fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = obj.as_object_mut()?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    metadata(obj)?.get(field)?.as_str()
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(m) = metadata_mut(obj) {
        m.insert(field.to_string(), value);
    }
}

/// `metadata.name`.
pub fn name(obj: &Value) -> Option<&str> {
    meta_str(obj, "name")
}

/// `metadata.namespace`.
pub fn namespace(obj: &Value) -> Option<&str> {
    meta_str(obj, "namespace")
}

/// `metadata.generateName`.
pub fn generate_name(obj: &Value) -> Option<&str> {
    meta_str(obj, "generateName")
}

/// `metadata.uid`.
pub fn uid(obj: &Value) -> Option<&str> {
    meta_str(obj, "uid")
}

/// `metadata.resourceVersion` as sent (opaque string).
pub fn resource_version(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion")
}

/// `metadata.creationTimestamp` as sent.
pub fn creation_timestamp(obj: &Value) -> Option<&str> {
    meta_str(obj, "creationTimestamp")
}

/// `metadata.deletionTimestamp` as sent.
pub fn deletion_timestamp(obj: &Value) -> Option<&str> {
    meta_str(obj, "deletionTimestamp")
}

/// `metadata.generation`.
pub fn generation(obj: &Value) -> Option<i64> {
    metadata(obj)?.get("generation")?.as_i64()
}

/// `apiVersion`.
pub fn api_version(obj: &Value) -> Option<&str> {
    obj.get("apiVersion")?.as_str()
}

/// `kind`.
pub fn kind(obj: &Value) -> Option<&str> {
    obj.get("kind")?.as_str()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.labels` (non-string values skipped).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    string_map(metadata(obj).and_then(|m| m.get("labels")))
}

/// `metadata.annotations` (non-string values skipped).
pub fn annotations(obj: &Value) -> BTreeMap<String, String> {
    string_map(metadata(obj).and_then(|m| m.get("annotations")))
}

/// `metadata.finalizers`.
pub fn finalizers(obj: &Value) -> Vec<String> {
    metadata(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| Some(v.as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Sets `metadata.name`.
pub fn set_name(obj: &mut Value, name: &str) {
    set_meta(obj, "name", Value::from(name));
}

/// Sets `metadata.namespace`.
pub fn set_namespace(obj: &mut Value, namespace: &str) {
    set_meta(obj, "namespace", Value::from(namespace));
}

/// Sets `metadata.uid`.
pub fn set_uid(obj: &mut Value, uid: &str) {
    set_meta(obj, "uid", Value::from(uid));
}

/// Sets `metadata.resourceVersion` to the decimal revision.
pub fn set_resource_version(obj: &mut Value, revision: u64) {
    set_meta(obj, "resourceVersion", Value::from(revision.to_string()));
}

/// Sets `metadata.generation`.
pub fn set_generation(obj: &mut Value, generation: i64) {
    set_meta(obj, "generation", Value::from(generation));
}

/// Sets `metadata.creationTimestamp` (RFC 3339, seconds precision as Kubernetes writes it).
pub fn set_creation_timestamp(obj: &mut Value, now: jiff::Timestamp) {
    set_meta(obj, "creationTimestamp", Value::from(format_time(now)));
}

/// Sets `metadata.deletionTimestamp` (RFC 3339, seconds precision).
pub fn set_deletion_timestamp(obj: &mut Value, now: jiff::Timestamp) {
    set_meta(obj, "deletionTimestamp", Value::from(format_time(now)));
}

/// Removes a `metadata` field (e.g. `"resourceVersion"`, `"managedFields"`).
pub fn remove_field(obj: &mut Value, field: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.shift_remove(field);
    }
}

/// Sets (or with `None` removes) one label.
pub fn set_label(obj: &mut Value, key: &str, value: Option<&str>) {
    set_map_entry(obj, "labels", key, value);
}

/// Sets (or with `None` removes) one annotation.
pub fn set_annotation(obj: &mut Value, key: &str, value: Option<&str>) {
    set_map_entry(obj, "annotations", key, value);
}

fn set_map_entry(obj: &mut Value, field: &str, key: &str, value: Option<&str>) {
    let Some(m) = metadata_mut(obj) else { return };
    match value {
        Some(v) => {
            let entry = m.entry(field).or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Some(map) = entry.as_object_mut() {
                map.insert(key.to_string(), Value::from(v));
            }
        }
        None => {
            if let Some(map) = m.get_mut(field).and_then(Value::as_object_mut) {
                map.shift_remove(key);
            }
        }
    }
}

/// Sets `apiVersion` and `kind`, keeping them first in key order when they were absent.
pub fn set_type_meta(obj: &mut Value, api_version: &str, kind: &str) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    if map.get("apiVersion").and_then(Value::as_str) == Some(api_version)
        && map.get("kind").and_then(Value::as_str) == Some(kind)
    {
        return;
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::from(api_version));
    out.insert("kind".into(), Value::from(kind));
    for (k, v) in std::mem::take(map) {
        if k != "apiVersion" && k != "kind" {
            out.insert(k, v);
        }
    }
    *map = out;
}

/// Formats a time as Kubernetes does in `metav1.Time`: RFC 3339 in UTC, whole seconds.
pub fn format_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Formats a time as `metav1.MicroTime` (used by Lease and events.k8s.io): microseconds.
pub fn format_micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Parses an RFC 3339 timestamp; `None` when absent or malformed.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Reads a nested field by a path of keys, e.g. `get_path(obj, &["spec", "nodeName"])`.
pub fn get_path<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.get(*k))
}

/// Reads a nested string field by a path of keys.
pub fn get_str<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    get_path(obj, path)?.as_str()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accessors() {
        let mut o = json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"x": "1"}}});
        assert_eq!(name(&o), Some("a"));
        assert_eq!(namespace(&o), None);
        set_resource_version(&mut o, 42);
        assert_eq!(resource_version(&o), Some("42"));
        set_label(&mut o, "y", Some("2"));
        set_label(&mut o, "x", None);
        assert_eq!(
            labels(&o).into_iter().collect::<Vec<_>>(),
            [("y".into(), "2".into())]
        );
        set_type_meta(&mut o, "v1", "Pod");
        assert_eq!(o.as_object().unwrap().keys().next().unwrap(), "apiVersion");
        let t: jiff::Timestamp = "2024-01-02T03:04:05.123456Z".parse().unwrap();
        assert_eq!(format_time(t), "2024-01-02T03:04:05Z");
        assert_eq!(format_micro_time(t), "2024-01-02T03:04:05.123456Z");
        let mut not_obj = json!(3);
        set_name(&mut not_obj, "x");
        assert_eq!(not_obj, json!(3));
    }
}
