//! The registry of resource types the apiserver serves. Each kind is described once, in its
//! own file under `kinds/` (a `static` [`ResourceType`]: registration plus [`Strategy`]); this
//! module only lists them and looks them up. It owns no storage; custom resources are
//! [`crate::custom`]'s, and the apiserver looks them up beside these.

use crate::kinds;
use crate::strategy::Strategy;

/// One served resource: a kind in a group-version, with its REST names and scope, and the
/// strategy that gives it its behaviour.
#[derive(Clone, Copy)]
pub struct ResourceType {
    /// API group; `""` for the core group.
    pub group: &'static str,
    /// API version within the group, e.g. `"v1"`.
    pub version: &'static str,
    /// Kind, e.g. `"Pod"`.
    pub kind: &'static str,
    /// Kind of the list type, e.g. `"PodList"`.
    pub list_kind: &'static str,
    /// Plural resource name used in URLs, e.g. `"pods"`.
    pub plural: &'static str,
    /// Singular resource name, e.g. `"pod"`.
    pub singular: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names accepted by kubectl, e.g. `["po"]`.
    pub short_names: &'static [&'static str],
    /// Categories (`"all"` for what `kubectl get all` lists).
    pub categories: &'static [&'static str],
    /// Subresources served under the resource, e.g. `["status", "binding", "log"]`.
    pub subresources: &'static [&'static str],
    /// Defaulting, validation, create/update/delete rules, field selectors and Table output.
    pub strategy: &'static dyn Strategy,
}

impl std::fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceType")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("plural", &self.plural)
            .finish_non_exhaustive()
    }
}

/// Two resource types are the same when they are served at the same place.
impl PartialEq for ResourceType {
    fn eq(&self, other: &Self) -> bool {
        (self.group, self.version, self.plural) == (other.group, other.version, other.plural)
    }
}

impl Eq for ResourceType {}

impl ResourceType {
    /// The `apiVersion` string: `"v1"` for core, `"apps/v1"` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store key prefix for all objects of this type, ending in `/`:
    /// `/registry/core/pods/` or `/registry/apps/deployments/`.
    pub fn storage_prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The store key of one object: `{prefix}{namespace}/{name}` or `{prefix}{name}`.
    pub fn storage_key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.storage_prefix()),
            _ => format!("{}{name}", self.storage_prefix()),
        }
    }

    /// The URL path prefix of the group-version: `/api/v1` or `/apis/apps/v1`.
    pub fn api_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// Whether the type serves the named subresource.
    pub fn has_subresource(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }
}

/// Every served kind, core group first. Adding a kind: its file under `kinds/` and one line
/// here.
static RESOURCE_TYPES: &[&ResourceType] = &[
    &kinds::core::namespace::NAMESPACE,
    &kinds::core::pod::POD,
    &kinds::core::node::NODE,
    &kinds::core::event::EVENT,
    &kinds::core::configmap::CONFIG_MAP,
    &kinds::core::secret::SECRET,
    &kinds::core::serviceaccount::SERVICE_ACCOUNT,
    &kinds::core::service::SERVICE,
    &kinds::core::endpoints::ENDPOINTS,
    &kinds::core::volumes::PERSISTENT_VOLUME,
    &kinds::core::volumes::PERSISTENT_VOLUME_CLAIM,
    &kinds::core::quota::RESOURCE_QUOTA,
    &kinds::core::quota::LIMIT_RANGE,
    &kinds::apps::replicaset::REPLICA_SET,
    &kinds::apps::deployment::DEPLOYMENT,
    &kinds::apps::statefulset::STATEFUL_SET,
    &kinds::apps::daemonset::DAEMON_SET,
    &kinds::apps::controllerrevision::CONTROLLER_REVISION,
    &kinds::events::event::EVENT,
    &kinds::coordination::lease::LEASE,
    &kinds::node::runtimeclass::RUNTIME_CLASS,
    &kinds::batch::job::JOB,
    &kinds::batch::cronjob::CRON_JOB,
    &kinds::certificates::csr::CERTIFICATE_SIGNING_REQUEST,
    &kinds::rbac::ROLE,
    &kinds::rbac::CLUSTER_ROLE,
    &kinds::rbac::ROLE_BINDING,
    &kinds::rbac::CLUSTER_ROLE_BINDING,
    &kinds::storage::STORAGE_CLASS,
    &kinds::scheduling::PRIORITY_CLASS,
    &kinds::networking::INGRESS,
    &kinds::networking::INGRESS_CLASS,
    &kinds::networking::NETWORK_POLICY,
    &kinds::policy::POD_DISRUPTION_BUDGET,
    &kinds::discovery::ENDPOINT_SLICE,
    &kinds::autoscaling::HORIZONTAL_POD_AUTOSCALER,
    &kinds::admissionregistration::VALIDATING_WEBHOOK_CONFIGURATION,
    &kinds::admissionregistration::MUTATING_WEBHOOK_CONFIGURATION,
    &kinds::apiextensions::CUSTOM_RESOURCE_DEFINITION,
];

/// Every served resource type, core group first, in a stable order.
pub fn resource_types() -> &'static [&'static ResourceType] {
    RESOURCE_TYPES
}

/// Looks a type up by group, version and plural (`"", "v1", "pods"`).
pub fn find_by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCE_TYPES
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Looks a type up by group, version and kind (`"apps", "v1", "Deployment"`).
pub fn find_by_kind(group: &str, version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCE_TYPES
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// Looks a type up by its `apiVersion` string and kind (`"apps/v1", "Deployment"`).
pub fn find_by_api_version(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    let (group, version) = split_api_version(api_version);
    find_by_kind(group, version, kind)
}

/// Splits an `apiVersion` into group and version: `"v1"` gives `("", "v1")`.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// The distinct group-versions served, in registry order (`("", "v1")` first).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCE_TYPES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let pods = find_by_plural("", "v1", "pods").expect("pods registered");
        assert_eq!(pods.kind, "Pod");
        assert_eq!(pods.api_version(), "v1");
        assert_eq!(pods.storage_prefix(), "/registry/core/pods/");
        assert_eq!(
            pods.storage_key(Some("default"), "a"),
            "/registry/core/pods/default/a"
        );
        let deploy = find_by_kind("apps", "v1", "Deployment").expect("deployments registered");
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.storage_prefix(), "/registry/apps/deployments/");
        assert_eq!(deploy.api_path(), "/apis/apps/v1");
        let ns = find_by_api_version("v1", "Namespace").expect("namespaces registered");
        assert_eq!(ns.storage_key(None, "x"), "/registry/core/namespaces/x");
        assert!(find_by_plural("apps", "v1", "pods").is_none());
    }

    #[test]
    fn unique_plurals_per_group_version() {
        for (i, a) in RESOURCE_TYPES.iter().enumerate() {
            for b in &RESOURCE_TYPES[i + 1..] {
                assert!(!(a.group == b.group && a.version == b.version && a.plural == b.plural));
            }
        }
        let all: Vec<_> = RESOURCE_TYPES
            .iter()
            .filter(|r| r.categories.contains(&"all"))
            .map(|r| r.plural)
            .collect();
        assert_eq!(
            all,
            [
                "pods",
                "services",
                "replicasets",
                "deployments",
                "statefulsets",
                "daemonsets",
                "jobs",
                "cronjobs",
                "horizontalpodautoscalers"
            ]
        );
    }
}
