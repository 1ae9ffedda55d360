//! Small helpers over objects held as `serde_json::Value`: metadata access, encoding to and
//! from store values, timestamps. No HTTP and no store calls here.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use shoal_store::KeyValue;

use crate::error::ApiError;

/// Now as RFC 3339 in UTC with whole seconds, as Kubernetes writes timestamps.
pub fn now_rfc3339() -> String {
    rfc3339_after(0)
}

/// Now plus `seconds`, formatted like [`now_rfc3339`].
pub fn rfc3339_after(seconds: i64) -> String {
    let now = jiff::Timestamp::now().as_second().saturating_add(seconds);
    jiff::Timestamp::from_second(now)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Decodes a stored object and sets `metadata.resourceVersion` to its revision.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("decoding {}: {e}", kv.key)))?;
    set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// Encodes an object for the store. Its `resourceVersion` is removed (the store revision is
/// the resourceVersion); callers set the new one after the write.
pub fn encode(obj: &mut Value) -> Vec<u8> {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(obj).unwrap_or_default()
}

pub fn set_resource_version(obj: &mut Value, rev: u64) {
    metadata_mut(obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
}

/// The `metadata` map, created if absent or not an object.
pub fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let map = obj.as_object_mut().expect("made an object above");
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("made an object above")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

pub fn name(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// The object's labels as a map (empty when absent).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Five random characters from the alphabet Kubernetes uses for `generateName`.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Whether two objects are equal apart from `metadata.resourceVersion` (an update that
/// changes nothing else is not written).
pub fn same_apart_from_rv(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| match y.get(k) {
                    None => false,
                    Some(w) if k == "metadata" => same_metadata(v, w),
                    Some(w) => v == w,
                })
        }
        _ => a == b,
    }
}

fn same_metadata(a: &Value, b: &Value) -> bool {
    let (Some(x), Some(y)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let significant =
        |m: &'_ Map<String, Value>| m.keys().filter(|k| *k != "resourceVersion").count();
    significant(x) == significant(y)
        && x.iter()
            .filter(|(k, _)| *k != "resourceVersion")
            .all(|(k, v)| y.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_ignores_resource_version_only() {
        let a = json!({"metadata": {"name": "a", "resourceVersion": "1"}, "spec": {"x": 1}});
        let b = json!({"metadata": {"name": "a", "resourceVersion": "7"}, "spec": {"x": 1}});
        let c = json!({"metadata": {"name": "a"}, "spec": {"x": 1}});
        let d = json!({"metadata": {"name": "a", "labels": {}}, "spec": {"x": 1}});
        assert!(same_apart_from_rv(&a, &b));
        assert!(same_apart_from_rv(&a, &c));
        assert!(!same_apart_from_rv(&a, &d));
        assert!(!same_apart_from_rv(
            &a,
            &json!({"metadata": {"name": "a"}, "spec": {"x": 2}})
        ));
    }

    #[test]
    fn timestamps_and_suffixes() {
        let ts = now_rfc3339();
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z'));
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(
            s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
    }

    #[test]
    fn encode_drops_resource_version() {
        let mut obj = json!({"metadata": {"name": "a", "resourceVersion": "3"}});
        let bytes = encode(&mut obj);
        assert_eq!(bytes, br#"{"metadata":{"name":"a"}}"#);
    }
}
