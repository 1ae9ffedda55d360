//! Custom resources: the [`ResourceType`]s a CustomResourceDefinition serves, one per served
//! version, each with a [`Strategy`] made from the version's structural schema (pruning,
//! defaulting, validation), its `additionalPrinterColumns` and its `status`/`scale`
//! subresources.
//!
//! Registrations are `&'static` like the built-in kinds', so the apiserver treats both alike.
//! They are interned: one leaked registration per distinct set of names ever served in the
//! process (a CRD that is deleted and created again gets the same one back), and a CRD update
//! that changes only the schema or columns swaps them inside the registration instead of
//! making a new one. Memory is bounded by the number of distinct CRD names and versions, not
//! by the number of writes.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde_json::{Map, Value, json};

use crate::registry::ResourceType;
use crate::schema::{Schema, json_path};
use crate::strategy::{Requester, ScalePaths, Strategy, drop_status};
use crate::table::{Column, human_age, name_col};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// Group, version and names of one served version: what makes a registration distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    group: String,
    version: String,
    kind: String,
    list_kind: String,
    plural: String,
    singular: String,
    namespaced: bool,
    short_names: Vec<String>,
    categories: Vec<String>,
    subresources: Vec<&'static str>,
}

/// An `additionalPrinterColumns` entry.
#[derive(Debug, Clone)]
struct PrinterColumn {
    name: String,
    type_: String,
    format: String,
    description: String,
    priority: i32,
    json_path: String,
}

/// What a served version does with its objects; swapped when the CRD changes.
#[derive(Debug)]
struct Behaviour {
    schema: Schema,
    columns: Vec<PrinterColumn>,
    status: bool,
    scale: Option<ScalePaths>,
}

/// The strategy of one served version of a CRD.
struct Custom {
    behaviour: RwLock<Arc<Behaviour>>,
}

impl Custom {
    fn get(&self) -> Arc<Behaviour> {
        Arc::clone(
            &self
                .behaviour
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

/// Every registration made so far, with its strategy (to swap its behaviour).
static INTERNED: Mutex<Vec<(Names, &'static ResourceType, &'static Custom)>> =
    Mutex::new(Vec::new());

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn leak_list(list: &[String]) -> &'static [&'static str] {
    Box::leak(
        list.iter()
            .map(|s| leak(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

fn intern(names: Names, behaviour: Behaviour) -> &'static ResourceType {
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, rt, custom)) = interned.iter().find(|(n, _, _)| *n == names) {
        *custom
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(behaviour);
        return rt;
    }
    let custom: &'static Custom = Box::leak(Box::new(Custom {
        behaviour: RwLock::new(Arc::new(behaviour)),
    }));
    let rt: &'static ResourceType = Box::leak(Box::new(ResourceType {
        group: leak(&names.group),
        version: leak(&names.version),
        kind: leak(&names.kind),
        list_kind: leak(&names.list_kind),
        plural: leak(&names.plural),
        singular: leak(&names.singular),
        namespaced: names.namespaced,
        short_names: leak_list(&names.short_names),
        categories: leak_list(&names.categories),
        subresources: Box::leak(names.subresources.clone().into_boxed_slice()),
        strategy: custom,
    }));
    interned.push((names, rt, custom));
    rt
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A `.spec.replicas`-style path of a scale subresource as a JSON pointer.
fn pointer(path: &str) -> String {
    path.split('.')
        .filter(|s| !s.is_empty())
        .fold(String::new(), |mut out, seg| {
            out.push('/');
            out.push_str(seg);
            out
        })
}

/// The served versions of a CRD, registered: one [`ResourceType`] per version with `served:
/// true`, storage version first. The CRD must be valid (its strategy checked it); an error
/// names what cannot be served.
pub fn served_types(crd: &Value) -> Result<Vec<&'static ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec is missing")?;
    let names = Value::Object(crate::kinds::apiextensions::defaulted_names(
        spec.get("names").ok_or("spec.names is missing")?,
    ));
    let names = &names;
    let str_at = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let group = str_at(spec, "group");
    let kind = str_at(names, "kind");
    let plural = str_at(names, "plural");
    let singular = str_at(names, "singular");
    let list_kind = str_at(names, "listKind");
    let namespaced = str_at(spec, "scope") != "Cluster";
    let mut versions: Vec<&Value> = spec
        .get("versions")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(false))
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| !v.get("storage").and_then(Value::as_bool).unwrap_or(false));
    let mut out = Vec::new();
    for v in versions {
        let version = str_at(v, "name");
        let schema_src = v
            .pointer("/schema/openAPIV3Schema")
            .ok_or_else(|| format!("version {version} has no schema"))?;
        let schema = Schema::compile(schema_src)
            .map_err(|e| format!("version {version}: {}: {}", e.path, e.message))?;
        let status = v
            .pointer("/subresources/status")
            .is_some_and(Value::is_object);
        let scale = v
            .pointer("/subresources/scale")
            .filter(|s| s.is_object())
            .map(|s| ScalePaths {
                spec_replicas: pointer(
                    s.get("specReplicasPath")
                        .and_then(Value::as_str)
                        .unwrap_or(".spec.replicas"),
                ),
                status_replicas: pointer(
                    s.get("statusReplicasPath")
                        .and_then(Value::as_str)
                        .unwrap_or(".status.replicas"),
                ),
                selector: s
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .map(pointer),
            });
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|c| PrinterColumn {
                        name: str_at(c, "name"),
                        type_: str_at(c, "type"),
                        format: str_at(c, "format"),
                        description: str_at(c, "description"),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0) as i32,
                        json_path: str_at(c, "jsonPath"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut subresources = Vec::new();
        if status {
            subresources.push("status");
        }
        if scale.is_some() {
            subresources.push("scale");
        }
        let names = Names {
            group: group.clone(),
            version,
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            subresources,
        };
        out.push(intern(
            names,
            Behaviour {
                schema,
                columns,
                status,
                scale,
            },
        ));
    }
    Ok(out)
}

impl Strategy for Custom {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        if let Some(meta) = obj.get("metadata") {
            let mut in_meta = Vec::new();
            typed::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(meta, &mut in_meta)
                .map_err(|e| ShapeError {
                    field: format!("metadata.{}", e.field),
                    ..e
                })?;
            for mut field in in_meta {
                field
                    .0
                    .insert(0, crate::validation::Step::Key("metadata".into()));
                unknown.push(field);
            }
        }
        self.get().schema.unknown_fields(obj, unknown);
        Ok(())
    }

    fn default(&self, obj: &mut Value) {
        self.get().schema.apply_defaults(obj);
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        if self.get().status {
            drop_status(obj);
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        self.get().schema.validate(obj, errs);
    }

    /// Custom resources count every change outside `metadata` and `status` as a new
    /// generation, as upstream.
    fn generation_changed(&self, old: Option<&Value>, new: &Value) -> bool {
        let Some(old) = old else {
            return true;
        };
        let strip = |v: &Value| -> Map<String, Value> {
            let mut m = v.as_object().cloned().unwrap_or_default();
            for k in ["metadata", "status", "apiVersion", "kind"] {
                m.remove(k);
            }
            m
        };
        strip(old) != strip(new)
    }

    fn strategic_merge(&self) -> bool {
        false
    }

    fn scale_paths(&self) -> Option<ScalePaths> {
        self.get().scale.clone()
    }

    fn openapi_schema(&self) -> Option<Value> {
        Some(self.get().schema.source().clone())
    }

    fn columns(&self) -> Vec<Column> {
        let behaviour = self.get();
        let mut out = vec![name_col()];
        if behaviour.columns.is_empty() {
            out.push(crate::table::age_col());
        }
        for c in &behaviour.columns {
            out.push(Column {
                name: Cow::Owned(c.name.clone()),
                type_: Cow::Owned(c.type_.clone()),
                format: Cow::Owned(c.format.clone()),
                description: Cow::Owned(c.description.clone()),
                priority: c.priority,
            });
        }
        out
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let behaviour = self.get();
        let mut out = vec![json!(crate::meta::name(obj).unwrap_or_default())];
        if behaviour.columns.is_empty() {
            out.push(json!(crate::table::since(
                crate::meta::creation_timestamp(obj).unwrap_or_default(),
                now
            )));
        }
        for c in &behaviour.columns {
            let found = json_path(obj, &c.json_path);
            let cell = match found.as_slice() {
                [] => Value::Null,
                [one] if c.type_ == "date" => {
                    match one.as_str().and_then(crate::meta::parse_time) {
                        Some(t) => json!(human_age(t, now)),
                        None => (*one).clone(),
                    }
                }
                [one] => (*one).clone(),
                many => json!(
                    many.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            out.push(cell);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn crd(schema_extra: Value) -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.test.shoal.dev"},
            "spec": {
                "group": "test.shoal.dev",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "properties": {"size": {"type": "integer"}}},
                        "status": schema_extra}}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size"}},
                     "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]},
                    {"name": "v1beta1", "served": false, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}}
                ]
            }
        })
    }

    #[test]
    fn served_versions_are_interned_and_take_the_new_schema() {
        let first = served_types(&crd(json!({"type": "object"}))).unwrap();
        assert_eq!(first.len(), 1);
        let rt = first[0];
        assert_eq!(
            (rt.group, rt.version, rt.kind, rt.list_kind),
            ("test.shoal.dev", "v1", "Widget", "WidgetList")
        );
        assert_eq!(
            (rt.plural, rt.singular, rt.namespaced),
            ("widgets", "widget", true)
        );
        assert_eq!(rt.short_names, ["wd"]);
        assert_eq!(rt.subresources, ["status", "scale"]);
        assert_eq!(
            rt.strategy.scale_paths().unwrap().spec_replicas,
            "/spec/size"
        );
        let mut errs = Vec::new();
        rt.strategy
            .validate(&json!({"status": {"n": 1}}), &mut errs);
        assert!(errs.is_empty());
        // The same names again: the same registration, with the new schema.
        let again = served_types(&crd(
            json!({"type": "object", "properties": {"n": {"type": "string"}}}),
        ))
        .unwrap();
        assert!(std::ptr::eq(again[0], rt));
        rt.strategy
            .validate(&json!({"status": {"n": 1}}), &mut errs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        let cells = rt.strategy.row(
            &json!({"metadata": {"name": "a"}, "spec": {"size": 3}}),
            jiff::Timestamp::now(),
        );
        assert_eq!(cells, [json!("a"), json!(3)]);
    }
}
