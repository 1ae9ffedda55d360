//! Decoding of Kubernetes' protobuf request bodies (`application/vnd.kubernetes.protobuf`)
//! into JSON, for what kubectl's typed clients send: `kubectl create namespace|configmap|
//! secret|serviceaccount|deployment|job`. Field numbers follow k8s.io/api `generated.proto`;
//! only the fields those commands set are decoded (pod templates: containers with name, image,
//! command, args, ports, env). Other kinds are refused with 415; responses are always JSON,
//! which client-go accepts.

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\x00";

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let (b, rest) = self.buf.split_first()?;
            self.buf = rest;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }

    /// The next `(field number, value)`, `None` at the end, `Some(Err)` when malformed.
    fn next_field(&mut self) -> Option<Result<(u64, Field<'a>), ()>> {
        if self.buf.is_empty() {
            return None;
        }
        Some(self.read_field().ok_or(()))
    }

    fn read_field(&mut self) -> Option<(u64, Field<'a>)> {
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                if len > self.buf.len() {
                    return None;
                }
                let (bytes, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(bytes)
            }
            1 => {
                self.buf = self.buf.get(8..)?;
                Field::Varint(0)
            }
            5 => {
                self.buf = self.buf.get(4..)?;
                Field::Varint(0)
            }
            _ => return None,
        };
        Some((tag >> 3, value))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ()> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next_field() {
        out.push(f?);
    }
    Ok(out)
}

fn string(bytes: &[u8]) -> Result<Value, ()> {
    std::str::from_utf8(bytes)
        .map(|s| Value::String(s.to_string()))
        .map_err(|_| ())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A map entry message (`key = 1`, `value = 2`); `bytes_value` base64-encodes the value.
fn map_entry(buf: &[u8], bytes_value: bool, into: &mut Map<String, Value>) -> Result<(), ()> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => key = std::str::from_utf8(b).map_err(|_| ())?.to_string(),
            (2, Field::Bytes(b)) if bytes_value => value = Value::String(base64(b)),
            (2, Field::Bytes(b)) => value = string(b)?,
            _ => {}
        }
    }
    into.insert(key, value);
    Ok(())
}

fn map_field<'m>(obj: &'m mut Map<String, Value>, name: &str) -> &'m mut Map<String, Value> {
    let entry = obj.entry(name).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("made an object above")
}

fn push(obj: &mut Map<String, Value>, name: &str, value: Value) {
    let entry = obj.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if let Some(list) = entry.as_array_mut() {
        list.push(value);
    }
}

fn owner_reference(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                drop_insert(&mut out, "kind", string(b)?);
            }
            (3, Field::Bytes(b)) => {
                drop_insert(&mut out, "name", string(b)?);
            }
            (4, Field::Bytes(b)) => {
                drop_insert(&mut out, "uid", string(b)?);
            }
            (5, Field::Bytes(b)) => {
                drop_insert(&mut out, "apiVersion", string(b)?);
            }
            (6, Field::Varint(v)) => {
                out.insert("controller".into(), json!(v != 0));
            }
            (7, Field::Varint(v)) => {
                out.insert("blockOwnerDeletion".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn object_meta(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                drop_insert(&mut out, "name", string(b)?);
            }
            (2, Field::Bytes(b)) => {
                drop_insert(&mut out, "generateName", string(b)?);
            }
            (3, Field::Bytes(b)) => {
                drop_insert(&mut out, "namespace", string(b)?);
            }
            (5, Field::Bytes(b)) => {
                drop_insert(&mut out, "uid", string(b)?);
            }
            (6, Field::Bytes(b)) => {
                drop_insert(&mut out, "resourceVersion", string(b)?);
            }
            (11, Field::Bytes(b)) => map_entry(b, false, map_field(&mut out, "labels"))?,
            (12, Field::Bytes(b)) => map_entry(b, false, map_field(&mut out, "annotations"))?,
            (13, Field::Bytes(b)) => push(&mut out, "ownerReferences", owner_reference(b)?),
            (14, Field::Bytes(b)) => push(&mut out, "finalizers", string(b)?),
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn strings(buf: &[u8], out: &mut Map<String, Value>, name: &str) -> Result<(), ()> {
    push(out, name, string(buf)?);
    Ok(())
}

fn int(v: u64) -> Value {
    // int32/int64 fields: negative values are sign-extended to 64 bits.
    json!(v as i64)
}

fn label_selector(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            map_entry(b, false, map_field(&mut out, "matchLabels"))?;
        }
    }
    Ok(Value::Object(out))
}

fn container(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                drop_insert(&mut out, "name", string(b)?);
            }
            (2, Field::Bytes(b)) => {
                drop_insert(&mut out, "image", string(b)?);
            }
            (3, Field::Bytes(b)) => strings(b, &mut out, "command")?,
            (4, Field::Bytes(b)) => strings(b, &mut out, "args")?,
            (5, Field::Bytes(b)) => {
                drop_insert(&mut out, "workingDir", string(b)?);
            }
            (6, Field::Bytes(b)) => {
                let mut port = Map::new();
                for (n, f) in fields(b)? {
                    match (n, f) {
                        (1, Field::Bytes(s)) => drop_insert(&mut port, "name", string(s)?),
                        (2, Field::Varint(v)) => drop_insert(&mut port, "hostPort", int(v)),
                        (3, Field::Varint(v)) => drop_insert(&mut port, "containerPort", int(v)),
                        (4, Field::Bytes(s)) => drop_insert(&mut port, "protocol", string(s)?),
                        _ => {}
                    }
                }
                push(&mut out, "ports", Value::Object(port));
            }
            (7, Field::Bytes(b)) => {
                let mut env = Map::new();
                for (n, f) in fields(b)? {
                    match (n, f) {
                        (1, Field::Bytes(s)) => drop_insert(&mut env, "name", string(s)?),
                        (2, Field::Bytes(s)) => drop_insert(&mut env, "value", string(s)?),
                        _ => {}
                    }
                }
                push(&mut out, "env", Value::Object(env));
            }
            (14, Field::Bytes(b)) => {
                drop_insert(&mut out, "imagePullPolicy", string(b)?);
            }
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// Inserts a decoded field, leaving out the empty strings and zero ports that protobuf
/// carries for unset non-pointer fields (JSON would have omitted them).
fn drop_insert(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = value.as_str() == Some("") || (key == "hostPort" && value.as_i64() == Some(0));
    if !empty {
        map.insert(key.into(), value);
    }
}

fn pod_spec(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (2, Field::Bytes(b)) => push(&mut out, "containers", container(b)?),
            (3, Field::Bytes(b)) => drop_insert(&mut out, "restartPolicy", string(b)?),
            (4, Field::Varint(v)) => drop_insert(&mut out, "terminationGracePeriodSeconds", int(v)),
            (7, Field::Bytes(b)) => map_entry(b, false, map_field(&mut out, "nodeSelector"))?,
            (8, Field::Bytes(b)) => drop_insert(&mut out, "serviceAccountName", string(b)?),
            (20, Field::Bytes(b)) => push(&mut out, "initContainers", container(b)?),
            (29, Field::Bytes(b)) => drop_insert(&mut out, "runtimeClassName", string(b)?),
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn pod_template(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => drop_insert(&mut out, "metadata", object_meta(b)?),
            (2, Field::Bytes(b)) => drop_insert(&mut out, "spec", pod_spec(b)?),
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn deployment_spec(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Varint(v)) => drop_insert(&mut out, "replicas", int(v)),
            (2, Field::Bytes(b)) => drop_insert(&mut out, "selector", label_selector(b)?),
            (3, Field::Bytes(b)) => drop_insert(&mut out, "template", pod_template(b)?),
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn job_spec(buf: &[u8]) -> Result<Value, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Varint(v)) => drop_insert(&mut out, "parallelism", int(v)),
            (2, Field::Varint(v)) => drop_insert(&mut out, "completions", int(v)),
            (6, Field::Bytes(b)) => drop_insert(&mut out, "template", pod_template(b)?),
            (7, Field::Varint(v)) => drop_insert(&mut out, "backoffLimit", int(v)),
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

/// `SelfSubjectAccessReviewSpec`: resource attributes (namespace, verb, group, version,
/// resource, subresource, name) or non-resource attributes (path, verb).
fn access_review_spec(buf: &[u8]) -> Result<Value, ()> {
    const RESOURCE: [&str; 7] = [
        "namespace",
        "verb",
        "group",
        "version",
        "resource",
        "subresource",
        "name",
    ];
    const NON_RESOURCE: [&str; 2] = ["path", "verb"];
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        let (key, names): (&str, &[&str]) = match n {
            1 => ("resourceAttributes", &RESOURCE),
            2 => ("nonResourceAttributes", &NON_RESOURCE),
            _ => continue,
        };
        let Field::Bytes(b) = f else { continue };
        let mut attrs = Map::new();
        for (n, f) in fields(b)? {
            if let (Some(name), Field::Bytes(s)) = (names.get((n as usize).wrapping_sub(1)), f) {
                drop_insert(&mut attrs, name, string(s)?);
            }
        }
        out.insert(key.into(), Value::Object(attrs));
    }
    Ok(Value::Object(out))
}

/// The body of one kind: `metadata = 1` plus the kind's own fields this decoder knows.
fn object(kind: &str, buf: &[u8]) -> Result<Map<String, Value>, ()> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        match (kind, n, f) {
            (_, 1, Field::Bytes(b)) => {
                out.insert("metadata".into(), object_meta(b)?);
            }
            ("Namespace", 2, Field::Bytes(b)) => {
                let spec = map_field(&mut out, "spec");
                for (n, f) in fields(b)? {
                    if let (1, Field::Bytes(s)) = (n, f) {
                        push(spec, "finalizers", string(s)?);
                    }
                }
            }
            ("ConfigMap", 2, Field::Bytes(b)) => map_entry(b, false, map_field(&mut out, "data"))?,
            ("ConfigMap", 3, Field::Bytes(b)) => {
                map_entry(b, true, map_field(&mut out, "binaryData"))?
            }
            ("ConfigMap", 4, Field::Varint(v)) => {
                out.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", 2, Field::Bytes(b)) => map_entry(b, true, map_field(&mut out, "data"))?,
            ("Secret", 3, Field::Bytes(b)) => {
                drop_insert(&mut out, "type", string(b)?);
            }
            ("Secret", 4, Field::Bytes(b)) => {
                map_entry(b, false, map_field(&mut out, "stringData"))?
            }
            ("Secret", 5, Field::Varint(v)) => {
                out.insert("immutable".into(), json!(v != 0));
            }
            ("Deployment", 2, Field::Bytes(b)) => {
                drop_insert(&mut out, "spec", deployment_spec(b)?)
            }
            ("Job", 2, Field::Bytes(b)) => drop_insert(&mut out, "spec", job_spec(b)?),
            ("SelfSubjectAccessReview", 2, Field::Bytes(b)) => {
                drop_insert(&mut out, "spec", access_review_spec(b)?)
            }
            ("ServiceAccount", 4, Field::Varint(v)) => {
                out.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Why a protobuf body was not decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum ProtobufError {
    /// Not a well-formed `runtime.Unknown` envelope or message.
    Malformed,
    /// A kind this decoder does not know.
    Unsupported(String),
}

/// Decodes a protobuf-encoded object into the JSON Kubernetes would have received.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::Malformed)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(envelope).map_err(|_| ProtobufError::Malformed)? {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta).map_err(|_| ProtobufError::Malformed)? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => {
                            api_version = String::from_utf8_lossy(b).into_owned()
                        }
                        (2, Field::Bytes(b)) => kind = String::from_utf8_lossy(b).into_owned(),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let known = matches!(
        (api_version.as_str(), kind.as_str()),
        (
            "v1",
            "Namespace" | "ConfigMap" | "Secret" | "ServiceAccount"
        ) | ("apps/v1", "Deployment")
            | ("batch/v1", "Job")
            | ("authorization.k8s.io/v1", "SelfSubjectAccessReview")
            | ("authentication.k8s.io/v1", "SelfSubjectReview")
    );
    if !known {
        return Err(ProtobufError::Unsupported(format!("{api_version} {kind}")));
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    obj.extend(object(&kind, raw).map_err(|_| ProtobufError::Malformed)?);
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![
            u8::try_from((n << 3) | 2).expect("small tag"),
            u8::try_from(bytes.len()).expect("short"),
        ];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn decodes_a_configmap() {
        let meta = [
            tagged(1, b"cm1"),
            tagged(11, &[tagged(1, b"a"), tagged(2, b"b")].concat()),
        ]
        .concat();
        let raw = [
            tagged(1, &meta),
            tagged(2, &[tagged(1, b"k"), tagged(2, b"v")].concat()),
        ]
        .concat();
        let type_meta = [tagged(1, b"v1"), tagged(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), tagged(1, &type_meta), tagged(2, &raw)].concat();
        assert_eq!(
            decode(&body),
            Ok(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "labels": {"a": "b"}}, "data": {"k": "v"}})
            )
        );
    }

    #[test]
    fn refuses_other_kinds_and_garbage() {
        let type_meta = [tagged(1, b"apps/v1"), tagged(2, b"DaemonSet")].concat();
        let body = [MAGIC.to_vec(), tagged(1, &type_meta)].concat();
        assert!(matches!(decode(&body), Err(ProtobufError::Unsupported(_))));
        assert_eq!(decode(b"{}"), Err(ProtobufError::Malformed));
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
