//! What a kind does, as opposed to what it is called: the per-kind strategy the apiserver
//! applies to every request, modelled on kube-apiserver's `pkg/registry/<group>/<kind>/
//! strategy.go` (`PrepareForCreate`, `Validate`, `ValidateUpdate`, `GetAttrs`) together with
//! the kind's defaulting, Table printer and strategic-merge metadata.
//!
//! Each served kind implements [`Strategy`] once, in its own file under `kinds/`, and its
//! [`ResourceType`](crate::registry::ResourceType) carries it: the apiserver, the validation,
//! the selectors, the patcher and the Table printer all ask the strategy and never match on
//! kind names. The generic parts (metadata, shape, names, immutability of identity) live in
//! `validation`; a strategy adds only what is particular to its kind.

use serde_json::{Map, Value};

use crate::patch::ListStrategy;
use crate::table::{Column, age_col, name_col, since};
use crate::validation::{FieldError, ShapeError, UnknownField};

/// Which format `metadata.name` must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameFormat {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (Namespace).
    Label,
    /// A DNS-1035 label (Service: it becomes a DNS name under the namespace).
    Dns1035,
    /// Anything that is a path segment: not `.` or `..`, no `/` or `%` (RBAC objects, named
    /// like `system:controller:x`).
    PathSegment,
}

/// Where the `scale` subresource of a kind reads and writes, as JSON pointers (a custom
/// resource's `specReplicasPath`, `statusReplicasPath` and `labelSelectorPath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// The desired replicas (`/spec/replicas`).
    pub spec_replicas: String,
    /// The observed replicas (`/status/replicas`).
    pub status_replicas: String,
    /// A label selector in its string form (`/status/selector`), if the kind has one.
    pub selector: Option<String>,
}

/// Who makes a request, as the apiserver authenticated it. Kinds that record their requester
/// (CertificateSigningRequest) take it from here, never from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The user name (`system:node:n1`, `system:anonymous`).
    pub name: String,
    /// The user's groups.
    pub groups: Vec<String>,
}

impl Requester {
    /// The anonymous user, for requests nobody authenticated (tests of handlers).
    pub fn anonymous() -> Self {
        Requester {
            name: "system:anonymous".into(),
            groups: Vec::new(),
        }
    }
}

/// Cluster-wide settings of the admission steps kinds run on create (kube-apiserver's
/// admission plugin flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// DefaultTolerationSeconds: how long a new pod stays on a node tainted
    /// `node.kubernetes.io/not-ready:NoExecute` (`--default-not-ready-toleration-seconds`).
    pub not_ready_toleration_seconds: i64,
    /// The same for `node.kubernetes.io/unreachable:NoExecute`
    /// (`--default-unreachable-toleration-seconds`).
    pub unreachable_toleration_seconds: i64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            not_ready_toleration_seconds: 300,
            unreachable_toleration_seconds: 300,
        }
    }
}

/// The behaviour of one kind. Every method but [`Strategy::check_shape`] has the default of a
/// kind with no particular rule.
pub trait Strategy: Send + Sync + 'static {
    /// The format `metadata.name` (and `generateName`'s prefix) must have.
    fn name_format(&self) -> NameFormat {
        NameFormat::Subdomain
    }

    /// Checks that `obj` (with its `kind`/`apiVersion` set) fits the kind's typed schema and
    /// notes the fields the schema does not know in `unknown`; usually
    /// `validation::typed::<k8s_openapi::...>(obj, unknown)`.
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError>;

    /// Fills the kind's defaults (schema defaults and the default admission plugins').
    /// Idempotent; never removes what the client set, except write-only fields (`stringData`).
    fn default(&self, _obj: &mut Value) {}

    /// Resets what a client may not set on create (usually `status`, which belongs to the
    /// controllers and agents that write the status subresource) and records the requester
    /// where the kind keeps it.
    fn prepare_for_create(&self, _obj: &mut Map<String, Value>, _requester: &Requester) {}

    /// The mutating admission a new object goes through after defaulting, with the
    /// cluster's settings (pods: DefaultTolerationSeconds). Create only, as upstream's
    /// admission plugins.
    fn admit_create(&self, _obj: &mut Value, _admission: &Admission) {}

    /// Kind-specific checks of a new or updated object; metadata and shape are already checked.
    fn validate(&self, _obj: &Value, _errs: &mut Vec<FieldError>) {}

    /// Resets what an ordinary update (not a subresource) may not change, from the stored
    /// object (a Namespace's `spec.finalizers`, which only `finalize` writes).
    fn prepare_for_update(&self, _obj: &mut Value, _old: &Value) {}

    /// Whether something besides `metadata.finalizers` still holds a deleted object (a
    /// Namespace's `spec.finalizers`): it is removed only once this is false too.
    fn deletion_held(&self, _obj: &Value) -> bool {
        false
    }

    /// Kind-specific checks of an update against the stored object (immutable fields), after
    /// [`Strategy::validate`] of the new object.
    fn validate_update(&self, _obj: &Value, _old: &Value, _errs: &mut Vec<FieldError>) {}

    /// The grace period a DELETE of `obj` gets, given the one the client asked for: 0 deletes
    /// at once; more marks it deleted and leaves the removal to whoever stops it (the node
    /// agent, for bound pods). Kinds nobody stops ignore the request.
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> i64 {
        0
    }

    /// Whether deletion goes through termination (a Namespace is emptied by its finalizer
    /// and removed only then; it has no `deletecollection`), instead of the ordinary path.
    fn deleted_by_termination(&self) -> bool {
        false
    }

    /// Whether a write changes what `metadata.generation` counts (`old` is `None` on create:
    /// whether the new object has a generation at all). Built-in kinds count changes of
    /// `spec`.
    fn generation_changed(&self, old: Option<&Value>, new: &Value) -> bool {
        match old {
            None => new.get("spec").is_some(),
            Some(old) => old.get("spec") != new.get("spec"),
        }
    }

    /// Whether strategic merge patches apply to the kind (custom resources: no, as upstream,
    /// which answers 415).
    fn strategic_merge(&self) -> bool {
        true
    }

    /// Where the `scale` subresource reads and writes; `None`: `spec.replicas`,
    /// `status.replicas` and the `spec.selector` label selector of the workload kinds.
    fn scale_paths(&self) -> Option<ScalePaths> {
        None
    }

    /// The kind's OpenAPI v3 schema, for `/openapi` documents, where the kind has one of its
    /// own (custom resources).
    fn openapi_schema(&self) -> Option<Value> {
        None
    }

    /// The schema of the kind's `k8s-openapi` type, registered in `generator` (which collects
    /// every type it refers to, with their descriptions); returns the reference to it. Used for
    /// the `/openapi` documents that `kubectl explain` reads.
    fn type_schema(&self, _generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        None
    }

    /// Whether the garbage collector follows this kind, so a `Foreground` or `Orphan`
    /// deletion can wait on it (the apiserver adds the `foregroundDeletion` or `orphan`
    /// finalizer, which the collector removes). It follows every kind but Events, as
    /// upstream's; for those both policies delete at once, as `Background` does: a finalizer
    /// nobody removes would keep the object forever.
    fn garbage_collected(&self) -> bool {
        true
    }

    /// Fields a field selector may name besides `metadata.name` and `metadata.namespace`
    /// (upstream's `GetAttrs`/field label conversion for the kind; others get 400).
    fn selectable_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// A field whose exact value most watchers of the kind select on (`spec.nodeName`: each
    /// node agent watches its own pods); the watch cache indexes watchers by it so a change
    /// wakes only the watchers of its value.
    fn watch_index(&self) -> Option<&'static str> {
        None
    }

    /// Where the kind holds a PodSpec (`["spec"]` for pods, `["spec", "template", "spec"]`
    /// for workloads), so strategic merge treats its containers and volumes as upstream does.
    fn pod_spec_path(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// The strategic-merge strategy of a kind-specific list at `parent.last` (path from the
    /// object's root, list indices omitted), or `None` to replace the list as a whole.
    fn list_strategy(&self, _parent: &[&str], _last: &str) -> Option<ListStrategy> {
        None
    }

    /// The Table columns `kubectl get` prints, wide columns included (kubectl hides priority
    /// 1 unless `-o wide`). Exactly one column has format `name`.
    fn columns(&self) -> Vec<Column> {
        vec![name_col(), age_col()]
    }

    /// One Table row for `obj`, matching [`Strategy::columns`].
    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        vec![
            Value::from(crate::meta::name(obj).unwrap_or_default()),
            Value::from(since(
                crate::meta::creation_timestamp(obj).unwrap_or_default(),
                now,
            )),
        ]
    }
}

/// Drops `status` from a new object: it belongs to whoever writes the status subresource.
pub fn drop_status(obj: &mut Map<String, Value>) {
    obj.remove("status");
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::registry::resource_types;

    /// A client may not set what a status writer owns: create resets `status` on every kind
    /// with a status subresource, except Node, whose agent registers it with its status.
    #[test]
    fn create_resets_status_only_where_a_status_writer_owns_it() {
        let requester = Requester {
            name: "alice".into(),
            groups: vec!["team".into()],
        };
        let claimed = json!({"claimed": true});
        for rt in resource_types() {
            let mut obj = json!({"spec": {}, "status": claimed.clone()});
            let map = obj.as_object_mut().unwrap();
            rt.strategy.prepare_for_create(map, &requester);
            let kept = map.get("status") == Some(&claimed);
            let owned = rt.has_subresource("status") && rt.kind != "Node";
            assert_eq!(kept, !owned, "{} {}", rt.group, rt.kind);
        }
    }

    #[test]
    fn a_job_gets_its_selector_from_its_uid_unless_manual() {
        let job = crate::registry::find_by_kind("batch", "v1", "Job").unwrap();
        let mut obj = json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"metadata": {"labels": {"app": "pi"}}}}});
        job.strategy
            .prepare_for_create(obj.as_object_mut().unwrap(), &Requester::anonymous());
        assert_eq!(
            obj["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = &obj["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["app"], "pi");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["controller-uid"], "u-1");
        let mut manual = json!({"metadata": {"uid": "u-2"}, "spec": {"manualSelector": true,
            "selector": {"matchLabels": {"app": "x"}}}});
        job.strategy
            .prepare_for_create(manual.as_object_mut().unwrap(), &Requester::anonymous());
        assert_eq!(
            manual["spec"]["selector"],
            json!({"matchLabels": {"app": "x"}})
        );
    }

    #[test]
    fn a_csr_records_who_filed_it_not_what_the_body_claims() {
        let csr =
            crate::registry::find_by_kind("certificates.k8s.io", "v1", "CertificateSigningRequest")
                .unwrap();
        let mut obj =
            json!({"spec": {"username": "admin", "groups": ["system:masters"], "uid": "0"}});
        let requester = Requester {
            name: "system:node:n1".into(),
            groups: vec!["system:nodes".into()],
        };
        csr.strategy
            .prepare_for_create(obj.as_object_mut().unwrap(), &requester);
        assert_eq!(
            obj["spec"],
            json!({"username": "system:node:n1", "groups": ["system:nodes"]})
        );
    }

    #[test]
    fn only_bound_pods_are_deleted_gracefully() {
        for rt in resource_types() {
            let obj = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 7}});
            let grace = rt.strategy.grace_period(&obj, None);
            assert_eq!(grace, if rt.kind == "Pod" { 7 } else { 0 }, "{}", rt.kind);
            let asked = rt.strategy.grace_period(&obj, Some(3));
            assert_eq!(asked, if rt.kind == "Pod" { 3 } else { 0 }, "{}", rt.kind);
        }
        let pod = crate::registry::find_by_kind("", "v1", "Pod").unwrap();
        assert_eq!(pod.strategy.grace_period(&json!({"spec": {}}), Some(30)), 0);
        let bound = json!({"spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 0}});
        assert_eq!(pod.strategy.grace_period(&bound, Some(30)), 30);
        assert_eq!(pod.strategy.grace_period(&bound, None), 0);
        let plain = json!({"spec": {"nodeName": "n1"}});
        assert_eq!(pod.strategy.grace_period(&plain, None), 30);
    }

    #[test]
    fn field_selectors_are_declared_once_per_kind() {
        for rt in resource_types() {
            let fields = rt.strategy.selectable_fields();
            for (i, f) in fields.iter().enumerate() {
                assert!(!fields[i + 1..].contains(f), "{} lists {f} twice", rt.kind);
                assert!(!f.starts_with("metadata."), "{}: {f} is common", rt.kind);
            }
        }
    }
}
