//! Patches: RFC 6902 JSON patch, RFC 7386 JSON merge patch and Kubernetes strategic merge
//! patch (what `kubectl apply/edit/scale/label/annotate/set/rollout restart` send).
//!
//! Strategic merge uses a static table of list merge keys for the served kinds (see
//! [`list_strategy`]) rather than the OpenAPI `x-kubernetes-patch-*` extensions; lists not in
//! the table are replaced, as Kubernetes does for lists without a patch strategy. Supported
//! directives: `$patch: replace|delete|merge` (maps and list items), `$retainKeys`,
//! `$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>`. No directive key survives
//! into the result.

use serde_json::{Map, Value};

use crate::registry::ResourceType;

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed (wrong shape, unknown directive, missing merge key).
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch operation failed (path missing, `test` failed, too much copied).
    #[error("json patch failed: {0}")]
    JsonPatch(String),
    /// A JSON patch with more operations than allowed.
    #[error("{0}")]
    TooManyOperations(String),
}

/// Most operations one JSON patch may hold (upstream's `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// Most bytes the `copy` operations of one JSON patch may add up to (upstream caps the
/// accumulated copy size likewise): without it, twenty self-doubling copies in a 2 KB patch
/// grow an object a millionfold before anything checks its size.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 << 20;

/// Applies an RFC 6902 JSON patch (an array of operations), within the limits above.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let count = patch.as_array().map_or(0, Vec::len);
    if count > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {count}"
        )));
    }
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Invalid(e.to_string()))?;
    let mut doc = original.clone();
    let mut copied = 0usize;
    for (i, op) in ops.0.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(copy) = op
            && let Some(source) = doc.pointer(copy.from.as_str())
        {
            copied = copied.saturating_add(encoded_len(source));
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(PatchError::JsonPatch(format!(
                    "unable to complete the copy: the accumulated size increase of copy is \
                     {copied}, exceeding the limit {MAX_JSON_PATCH_COPY_BYTES}"
                )));
            }
        }
        json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|e| {
            PatchError::JsonPatch(format!("operation {i} ({}): {}", e.path, e.kind))
        })?;
    }
    Ok(doc)
}

/// Bytes of `v` encoded as JSON, counted without building the encoding.
fn encoded_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a counter cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// Applies an RFC 7386 JSON merge patch; the patch must be an object.
pub fn merge_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "a merge patch must be a JSON object".into(),
        ));
    }
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the original (no patch strategy).
    Replace,
    /// Lists of objects merged item by item on this key (`patchStrategy: merge`).
    MergeByKey(&'static str),
    /// Lists of primitives merged as a set union (`metadata.finalizers`).
    MergePrimitives,
}

/// The strategy for the list at `path` (field names from the object root, list indices
/// omitted, e.g. `["spec", "template", "spec", "containers"]`) in an object of type `rt`:
/// metadata and PodSpec lists as upstream's struct tags say wherever the kind keeps them,
/// status conditions by type, and whatever else the kind's strategy names.
pub fn list_strategy(rt: &ResourceType, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    let Some((last, parent)) = path.split_last() else {
        return Replace;
    };
    if parent == ["metadata"] || parent.ends_with(&["template", "metadata"]) {
        return match *last {
            "finalizers" => MergePrimitives,
            "ownerReferences" => MergeByKey("uid"),
            _ => Replace,
        };
    }
    if let Some(ps) = rt.strategy.pod_spec_path() {
        if parent == ps {
            return match *last {
                "containers" | "initContainers" | "ephemeralContainers" => MergeByKey("name"),
                "volumes" | "imagePullSecrets" | "schedulingGates" | "resourceClaims" => {
                    MergeByKey("name")
                }
                "hostAliases" => MergeByKey("ip"),
                "topologySpreadConstraints" => MergeByKey("topologyKey"),
                _ => Replace,
            };
        }
        if let Some(rest) = parent.strip_prefix(ps)
            && let [list, ..] = rest
            && matches!(
                *list,
                "containers" | "initContainers" | "ephemeralContainers"
            )
        {
            if rest.len() == 1 {
                return match *last {
                    "env" => MergeByKey("name"),
                    "ports" => MergeByKey("containerPort"),
                    "volumeMounts" => MergeByKey("mountPath"),
                    "volumeDevices" => MergeByKey("devicePath"),
                    _ => Replace,
                };
            }
            return Replace;
        }
    }
    if parent == ["status"] && *last == "conditions" {
        return MergeByKey("type");
    }
    rt.strategy.list_strategy(parent, last).unwrap_or(Replace)
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

fn is_directive(k: &str) -> bool {
    k == PATCH || k == RETAIN_KEYS || k.starts_with(SET_ORDER) || k.starts_with(DELETE_PRIMITIVE)
}

/// Applies a Kubernetes strategic merge patch to an object of type `rt`. The patch must be a
/// JSON object.
pub fn strategic_merge_patch(
    rt: &ResourceType,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let ctx = Ctx { rt };
    let original = match original {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let mut path = Vec::new();
    match ctx.merge_map(original, patch, &mut path)? {
        Some(m) => Ok(Value::Object(m)),
        None => Ok(Value::Object(Map::new())),
    }
}

struct Ctx<'a> {
    rt: &'a ResourceType,
}

impl Ctx<'_> {
    /// Merges `patch` into `original`; `None` means the map itself is deleted.
    fn merge_map<'p>(
        &self,
        mut original: Map<String, Value>,
        patch: &'p Map<String, Value>,
        path: &mut Vec<&'p str>,
    ) -> Result<Option<Map<String, Value>>, PatchError> {
        match patch.get(PATCH) {
            None => {}
            Some(Value::String(s)) if s == "merge" => {}
            Some(Value::String(s)) if s == "replace" => return Ok(Some(strip_map(patch))),
            Some(Value::String(s)) if s == "delete" => return Ok(None),
            Some(other) => return Err(PatchError::Invalid(format!("unknown patch type: {other}"))),
        }
        if let Some(retain) = patch.get(RETAIN_KEYS) {
            let keys = retain.as_array().ok_or_else(|| {
                PatchError::Invalid("$retainKeys must be a list of strings".into())
            })?;
            let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
            original.retain(|k, _| keys.contains(&k.as_str()));
        }
        for (k, v) in patch {
            if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
                let remove = v
                    .as_array()
                    .ok_or_else(|| PatchError::Invalid(format!("{k} must be a list")))?;
                if let Some(list) = original.get_mut(field).and_then(Value::as_array_mut) {
                    list.retain(|item| !remove.contains(item));
                }
            }
        }
        for (k, v) in patch {
            if is_directive(k) {
                continue;
            }
            if v.is_null() {
                original.shift_remove(k);
                continue;
            }
            path.push(k.as_str());
            // Merge in place so the key keeps its position.
            let slot = original.get_mut(k).map(std::mem::take);
            let merged = match (slot, v) {
                (Some(Value::Object(o)), Value::Object(p)) => {
                    self.merge_map(o, p, path)?.map(Value::Object)
                }
                (None | Some(Value::Null), Value::Object(p)) => {
                    self.merge_map(Map::new(), p, path)?.map(Value::Object)
                }
                (Some(Value::Array(o)), Value::Array(p)) => {
                    Some(Value::Array(self.merge_list(o, p, path)?))
                }
                (None | Some(Value::Null), Value::Array(p)) => {
                    Some(Value::Array(self.merge_list(Vec::new(), p, path)?))
                }
                (_, other) => Some(strip(other)),
            };
            match merged {
                Some(merged) => {
                    original.insert(k.clone(), merged);
                }
                None => {
                    original.shift_remove(k);
                }
            }
            path.pop();
        }
        for (k, v) in patch {
            if let Some(field) = k.strip_prefix(SET_ORDER) {
                let order = v
                    .as_array()
                    .ok_or_else(|| PatchError::Invalid(format!("{k} must be a list")))?;
                path.push(field);
                let strategy = list_strategy(self.rt, path);
                path.pop();
                if let Some(list) = original.get_mut(field).and_then(Value::as_array_mut) {
                    apply_order(list, order, strategy);
                }
            }
        }
        Ok(Some(original))
    }

    fn merge_list<'p>(
        &self,
        original: Vec<Value>,
        patch: &'p [Value],
        path: &mut Vec<&'p str>,
    ) -> Result<Vec<Value>, PatchError> {
        // `{"$patch": "replace"}` as an item replaces the whole list with the other items.
        let replace = patch.iter().any(|item| {
            item.as_object().is_some_and(|m| {
                m.len() == 1 && m.get(PATCH).and_then(Value::as_str) == Some("replace")
            })
        });
        if replace {
            return Ok(patch
                .iter()
                .filter(|i| {
                    i.as_object()
                        .is_none_or(|m| !m.contains_key(PATCH) || m.len() > 1)
                })
                .map(strip)
                .collect());
        }
        match list_strategy(self.rt, path) {
            ListStrategy::Replace => Ok(patch
                .iter()
                .filter(|i| !is_delete_item(i))
                .map(strip)
                .collect()),
            ListStrategy::MergePrimitives => {
                let mut out = original;
                for item in patch {
                    if !out.contains(item) {
                        out.push(strip(item));
                    }
                }
                Ok(out)
            }
            ListStrategy::MergeByKey(key) => {
                let mut out = original;
                for item in patch {
                    let Value::Object(p) = item else {
                        // A list of primitives under a merge strategy: union.
                        if !out.contains(item) {
                            out.push(item.clone());
                        }
                        continue;
                    };
                    let key_value = p.get(key);
                    let pos =
                        key_value.and_then(|kv| out.iter().position(|o| o.get(key) == Some(kv)));
                    if is_delete_item(item) {
                        match key_value {
                            Some(_) => {
                                if let Some(i) = pos {
                                    out.remove(i);
                                }
                            }
                            None => {
                                return Err(PatchError::Invalid(format!(
                                    "delete directive in list {} requires the merge key {key:?}",
                                    path.join(".")
                                )));
                            }
                        }
                        continue;
                    }
                    if key_value.is_none() {
                        return Err(PatchError::Invalid(format!(
                            "map: {} does not contain declared merge key: {key}",
                            Value::Object(p.clone())
                        )));
                    }
                    match pos {
                        Some(i) => {
                            let o = match std::mem::take(&mut out[i]) {
                                Value::Object(o) => o,
                                _ => Map::new(),
                            };
                            match self.merge_map(o, p, path)? {
                                Some(m) => out[i] = Value::Object(m),
                                None => {
                                    out.remove(i);
                                }
                            }
                        }
                        None => {
                            if let Some(m) = self.merge_map(Map::new(), p, path)? {
                                out.push(Value::Object(m));
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

fn is_delete_item(v: &Value) -> bool {
    v.get(PATCH).and_then(Value::as_str) == Some("delete")
}

/// Reorders `list` so that the items named in `order` appear in that order, in the slots they
/// already occupy; items not named keep their positions.
fn apply_order(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let identity = |v: &Value| -> Option<Value> {
        match strategy {
            ListStrategy::MergeByKey(key) => v.get(key).cloned(),
            _ => Some(v.clone()),
        }
    };
    let order_ids: Vec<Value> = order.iter().filter_map(&identity).collect();
    let rank = |v: &Value| identity(v).and_then(|id| order_ids.iter().position(|o| *o == id));
    let slots: Vec<usize> = (0..list.len())
        .filter(|i| rank(&list[*i]).is_some())
        .collect();
    let mut items: Vec<Value> = slots
        .iter()
        .map(|i| std::mem::take(&mut list[*i]))
        .collect();
    items.sort_by_key(rank);
    for (slot, item) in slots.into_iter().zip(items) {
        list[slot] = item;
    }
}

fn strip_map(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !is_directive(k))
        .map(|(k, v)| (k.clone(), strip(v)))
        .collect()
}

/// A copy of `v` without directive keys (`$patch`, `$retainKeys`, `$setElementOrder/...`,
/// `$deleteFromPrimitiveList/...`) at any depth; list items that are `$patch: delete` vanish.
pub fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_map(m)),
        Value::Array(a) => {
            Value::Array(a.iter().filter(|i| !is_delete_item(i)).map(strip).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::find_by_kind;
    use expect_test::{Expect, expect};
    use serde_json::json;

    fn check(kind: (&str, &str), original: Value, patch: Value, want: Expect) {
        let rt = find_by_kind(kind.0, "v1", kind.1).unwrap();
        let out = strategic_merge_patch(rt, &original, &patch).unwrap();
        want.assert_eq(&serde_json::to_string(&out).unwrap());
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [
                        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                        {"name": "sidecar", "image": "side:1"}
                    ]}
                }
            }
        })
    }

    #[test]
    fn apply_changes_one_container_image() {
        // What `kubectl apply` sends after editing one image in a two-container template.
        check(
            ("apps", "Deployment"),
            deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"image": "side:2", "name": "sidecar"}]
            }}}}),
            expect![[
                r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web","tier":"front"}},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"app","image":"app:1","env":[{"name":"A","value":"1"},{"name":"B","value":"2"}]},{"name":"sidecar","image":"side:2"}]}}}}"#
            ]],
        );
    }

    #[test]
    fn delete_env_var_with_patch_directive() {
        check(
            ("apps", "Deployment"),
            deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "B"}],
                    "env": [{"$patch": "delete", "name": "A"}],
                    "name": "app"
                }]
            }}}}),
            expect![[
                r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web","tier":"front"}},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"app","image":"app:1","env":[{"name":"B","value":"2"}]},{"name":"sidecar","image":"side:1"}]}}}}"#
            ]],
        );
    }

    #[test]
    fn set_element_order_reorders_and_adds() {
        check(
            ("apps", "Deployment"),
            deployment(),
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "new"}, {"name": "app"}],
                "containers": [{"name": "new", "image": "new:1"}]
            }}}}),
            expect![[
                r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web","tier":"front"}},"spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"sidecar","image":"side:1"},{"name":"new","image":"new:1"},{"name":"app","image":"app:1","env":[{"name":"A","value":"1"},{"name":"B","value":"2"}]}]}}}}"#
            ]],
        );
    }

    #[test]
    fn scale_and_restart() {
        check(
            ("apps", "Deployment"),
            deployment(),
            json!({"spec": {"replicas": 5, "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}}}}}),
            expect![[
                r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"app":"web","tier":"front"}},"spec":{"replicas":5,"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"},"annotations":{"kubectl.kubernetes.io/restartedAt":"2024-01-01T00:00:00Z"}},"spec":{"containers":[{"name":"app","image":"app:1","env":[{"name":"A","value":"1"},{"name":"B","value":"2"}]},{"name":"sidecar","image":"side:1"}]}}}}"#
            ]],
        );
    }

    #[test]
    fn labels_add_and_remove() {
        check(
            ("", "Pod"),
            json!({"metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}}),
            json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
            expect![[r#"{"metadata":{"name":"p","labels":{"b":"2","c":"3"}}}"#]],
        );
    }

    #[test]
    fn set_image_on_pod_and_finalizers() {
        check(
            ("", "Pod"),
            json!({"metadata": {"name": "p", "finalizers": ["a", "b"]}, "spec": {"containers": [{"name": "c", "image": "x:1", "ports": [{"containerPort": 80}]}], "tolerations": [{"key": "k"}]}}),
            json!({
                "metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]},
                "spec": {"containers": [{"name": "c", "image": "x:2", "ports": [{"containerPort": 8080}]}], "tolerations": [{"key": "z"}]}
            }),
            expect![[
                r#"{"metadata":{"name":"p","finalizers":["b","c"]},"spec":{"containers":[{"name":"c","image":"x:2","ports":[{"containerPort":80},{"containerPort":8080}]}],"tolerations":[{"key":"z"}]}}"#
            ]],
        );
    }

    #[test]
    fn replace_and_retain_keys_directives() {
        check(
            ("apps", "Deployment"),
            json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}, "selector": {"matchLabels": {"a": "b", "c": "d"}}}}),
            json!({"spec": {
                "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                "selector": {"$patch": "replace", "matchLabels": {"x": "y"}}
            }}),
            expect![[
                r#"{"spec":{"strategy":{"type":"Recreate"},"selector":{"matchLabels":{"x":"y"}}}}"#
            ]],
        );
        check(
            ("", "Pod"),
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            json!({"spec": {"containers": [{"name": "c"}, {"$patch": "replace"}]}}),
            expect![[r#"{"spec":{"containers":[{"name":"c"}]}}"#]],
        );
    }

    #[test]
    fn service_ports_and_status_conditions() {
        check(
            ("", "Service"),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            expect![[r#"{"spec":{"ports":[{"port":80,"targetPort":9090},{"port":443}]}}"#]],
        );
        check(
            ("", "Pod"),
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}}),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            expect![[
                r#"{"status":{"conditions":[{"type":"Ready","status":"True"},{"type":"PodScheduled","status":"True"}]}}"#
            ]],
        );
    }

    #[test]
    fn new_fields_have_no_directives() {
        check(
            ("", "Pod"),
            json!({}),
            json!({"spec": {"containers": [{"name": "a", "env": [{"$patch": "delete", "name": "x"}], "$setElementOrder/env": []}]}}),
            expect![[r#"{"spec":{"containers":[{"name":"a","env":[]}]}}"#]],
        );
    }

    #[test]
    fn errors() {
        let rt = find_by_kind("", "v1", "Pod").unwrap();
        assert!(strategic_merge_patch(rt, &json!({}), &json!([1])).is_err());
        assert!(
            strategic_merge_patch(
                rt,
                &json!({}),
                &json!({"spec": {"containers": [{"image": "x"}]}})
            )
            .is_err()
        );
        assert!(strategic_merge_patch(rt, &json!({}), &json!({"$patch": "bogus"})).is_err());
    }

    #[test]
    fn json_and_merge_patch() {
        let doc = json!({"a": 1, "b": {"c": 2}});
        assert_eq!(
            json_patch(&doc, &json!([{"op": "replace", "path": "/a", "value": 3}])).unwrap(),
            json!({"a": 3, "b": {"c": 2}})
        );
        assert!(json_patch(&doc, &json!([{"op": "remove", "path": "/zz"}])).is_err());
        assert!(json_patch(&doc, &json!({"op": "x"})).is_err());
        // Operations are applied in order; a failing one names its index.
        let err = json_patch(
            &doc,
            &json!([{"op": "add", "path": "/z", "value": 1}, {"op": "remove", "path": "/zz"}]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("operation 1"), "{err}");
        assert_eq!(
            merge_patch(&doc, &json!({"b": {"c": null, "d": 1}})).unwrap(),
            json!({"a": 1, "b": {"d": 1}})
        );
    }

    #[test]
    fn json_patches_cannot_amplify() {
        // Twenty self-doubling copies of 1 KiB would make 1 GiB.
        let doc = json!({"a": [ "x".repeat(1024) ]});
        let doubling: Vec<Value> = (0..20)
            .map(|_| json!({"op": "copy", "from": "/a", "path": "/a/-"}))
            .collect();
        let err = json_patch(&doc, &Value::Array(doubling)).unwrap_err();
        assert!(
            matches!(&err, PatchError::JsonPatch(m) if m.contains("accumulated size increase of copy")),
            "{err}"
        );
        // Small copies within the budget still work.
        let ok = json_patch(&doc, &json!([{"op": "copy", "from": "/a/0", "path": "/b"}])).unwrap();
        assert_eq!(ok["b"], doc["a"][0]);
        let many: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/a/0", "value": "x"}))
            .collect();
        assert!(matches!(
            json_patch(&doc, &Value::Array(many)),
            Err(PatchError::TooManyOperations(_))
        ));
    }
}
