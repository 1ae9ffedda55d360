//! Service: a stable name and ports in front of the pods its selector picks. Named as a
//! DNS-1035 label, since it becomes a DNS name.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1 as api;
use serde_json::{Map, Value, json};

use crate::defaults::{obj_mut, set_default};
use crate::patch::ListStrategy;
use crate::registry::ResourceType;
use crate::strategy::{NameFormat, Requester, Strategy, drop_status};
use crate::table::{Column, age_col, arr, col, i, name_and_age, name_col, or_none, s};
use crate::validation::{
    DNS1123_LABEL_ERROR, FieldError, ShapeError, UnknownField, arr as arr_of, is_dns1123_label,
    is_port_name, str_of, typed, validate_labels,
};

/// `services` (`/api/v1`).
pub static SERVICE: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Service",
    list_kind: "ServiceList",
    plural: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    subresources: &["status"],
    strategy: &Service,
};

struct Service;

impl Strategy for Service {
    fn name_format(&self) -> NameFormat {
        NameFormat::Dns1035
    }

    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Service>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Service>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            let ty = spec
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if ty != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        let unset = match p.get("targetPort") {
                            None | Some(Value::Null) => true,
                            Some(Value::Number(n)) => n.as_i64() == Some(0),
                            Some(Value::String(s)) => s.is_empty(),
                            Some(_) => false,
                        };
                        if unset {
                            p.insert("targetPort".into(), port);
                        }
                    }
                }
            }
        }
        if let Some(status) = obj_mut(obj, "status") {
            set_default(status, "loadBalancer", json!({}));
        }
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_service(obj, errs);
    }

    fn list_strategy(&self, parent: &[&str], last: &str) -> Option<ListStrategy> {
        match (parent, last) {
            (["spec"], "ports") => Some(ListStrategy::MergeByKey("port")),
            _ => None,
        }
    }

    #[rustfmt::skip]
    fn columns(&self) -> Vec<Column> {
        vec![
            name_col(),
            col("Type", "string", 0, "type determines how the Service is exposed."),
            col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
            col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            age_col(),
            col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ]
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let mut cells = vec![name];
        cells.extend(service_cells(obj, age));
        cells
    }
}

fn validate_service(obj: &Value, errs: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        errs.push(FieldError::not_supported(
            "spec.type",
            &json!(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let ports = arr_of(spec, "ports");
    let headless = str_of(spec, "clusterIP") == "None";
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports", ""));
    }
    if ty == "ExternalName" && str_of(spec, "externalName").is_empty() {
        errs.push(FieldError::required("spec.externalName", ""));
    }
    let mut names = BTreeSet::new();
    let mut port_protos = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = str_of(p, "name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{pp}.name"), ""));
        } else if !name.is_empty() {
            if !is_dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{pp}.name"),
                    &json!(name),
                    DNS1123_LABEL_ERROR,
                ));
            } else if !names.insert(name) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &json!(name)));
            }
        }
        let port = p.get("port").and_then(Value::as_i64);
        match port {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => errs.push(FieldError::invalid(
                format!("{pp}.port"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(FieldError::required(format!("{pp}.port"), "")),
        }
        let proto = str_of(p, "protocol");
        if !matches!(proto, "" | "TCP" | "UDP" | "SCTP") {
            errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                &json!(proto),
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(port) = port
            && !port_protos.insert((port, proto))
        {
            errs.push(FieldError::duplicate(
                pp.clone(),
                &json!({"port": port, "protocol": proto}),
            ));
        }
        match p.get("targetPort") {
            None => {}
            Some(Value::Number(n)) if !n.as_i64().is_some_and(|n| (1..=65535).contains(&n)) => {
                errs.push(FieldError::invalid(
                    format!("{pp}.targetPort"),
                    &Value::Number(n.clone()),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Some(Value::String(s)) if !is_port_name(s) => {
                errs.push(FieldError::invalid(
                        format!("{pp}.targetPort"),
                        &json!(s),
                        "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), must be no more than 15 characters, must contain at least one letter (a-z)",
                    ));
            }
            Some(Value::Number(_) | Value::String(_)) => {}
            Some(other) => errs.push(FieldError::invalid(
                format!("{pp}.targetPort"),
                other,
                "must be a port number or name",
            )),
        }
        if let Some(n) = p.get("nodePort").and_then(Value::as_i64)
            && n != 0
            && ty == "ClusterIP"
        {
            errs.push(FieldError::forbidden(
                format!("{pp}.nodePort"),
                "may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if let Some(sel) = spec.get("selector").and_then(Value::as_object) {
        validate_labels(sel, "spec.selector", errs);
    }
}

fn service_cells(svc: &Value, age: String) -> Vec<Value> {
    let ty = s(svc, "/spec/type");
    let ty = if ty.is_empty() { "ClusterIP" } else { ty };
    let external_ips: Vec<&str> = arr(svc, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match ty {
        "ExternalName" => s(svc, "/spec/externalName").to_string(),
        "LoadBalancer" => {
            let mut ips: Vec<&str> = arr(svc, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    if s(i, "/ip").is_empty() {
                        s(i, "/hostname")
                    } else {
                        s(i, "/ip")
                    }
                })
                .filter(|x| !x.is_empty())
                .collect();
            ips.extend(external_ips.iter().copied());
            if ips.is_empty() {
                "<pending>".into()
            } else {
                ips.join(",")
            }
        }
        _ => {
            if external_ips.is_empty() {
                "<none>".into()
            } else {
                external_ips.join(",")
            }
        }
    };
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = match s(p, "/protocol") {
                "" => "TCP",
                x => x,
            };
            match i(p, "/nodePort") {
                0 => format!("{}/{proto}", i(p, "/port")),
                n => format!("{}:{n}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    let selector: Vec<String> = svc
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    vec![
        json!(ty),
        json!(or_none(s(svc, "/spec/clusterIP"))),
        json!(external),
        json!(if ports.is_empty() {
            "<none>".to_string()
        } else {
            ports.join(",")
        }),
        json!(age),
        json!(if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector.join(",")
        }),
    ]
}
