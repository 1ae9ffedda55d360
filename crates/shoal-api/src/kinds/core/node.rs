//! Node: registered by its agent (with its status), cluster-scoped.

use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};

use crate::patch::ListStrategy;
use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, age_col, arr, col, name_and_age, name_col, or_none, s};
use crate::validation::{ShapeError, UnknownField, typed};

/// `nodes` (`/api/v1`).
pub static NODE: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Node",
    list_kind: "NodeList",
    plural: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    subresources: &["status"],
    strategy: &Node,
};

struct Node;

/// A node agent registers its Node with the status it observed, so create keeps `status`.
impl Strategy for Node {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Node>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Node>())
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["spec.unschedulable"]
    }

    fn list_strategy(&self, parent: &[&str], last: &str) -> Option<ListStrategy> {
        match (parent, last) {
            (["status"], "addresses") => Some(ListStrategy::MergeByKey("type")),
            _ => None,
        }
    }

    #[rustfmt::skip]
    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            age_col(),
            col("Version", "string", 0, "Kubelet Version reported by the node."),
            col("Internal-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
            col("External-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
            col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            col("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let mut cells = vec![name];
        cells.extend(node_cells(obj, age));
        cells
    }
}

fn node_cells(node: &Value, age: String) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    for c in arr(node, "/status/conditions") {
        if s(c, "/type") == "Ready" {
            status.push(match s(c, "/status") {
                "True" => "Ready".into(),
                "False" => "NotReady".into(),
                _ => "Unknown".into(),
            });
        }
    }
    if status.is_empty() {
        status.push("Unknown".into());
    }
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = Vec::new();
    for (k, v) in crate::meta::labels(node) {
        if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
            if !role.is_empty() {
                roles.push(role.to_string());
            }
        } else if k == "kubernetes.io/role" && !v.is_empty() {
            roles.push(v);
        }
    }
    roles.sort();
    roles.dedup();
    let address = |ty: &str| {
        arr(node, "/status/addresses")
            .iter()
            .find(|a| s(a, "/type") == ty)
            .map(|a| s(a, "/address").to_string())
            .unwrap_or_else(|| "<none>".into())
    };
    vec![
        json!(status.join(",")),
        json!(if roles.is_empty() {
            "<none>".to_string()
        } else {
            roles.join(",")
        }),
        json!(age),
        json!(s(node, "/status/nodeInfo/kubeletVersion")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(or_none(s(node, "/status/nodeInfo/osImage"))),
        json!(or_none(s(node, "/status/nodeInfo/kernelVersion"))),
        json!(or_none(s(node, "/status/nodeInfo/containerRuntimeVersion"))),
    ]
}
