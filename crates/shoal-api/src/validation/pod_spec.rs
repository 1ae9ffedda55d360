//! Validation of a `PodSpec`, wherever it lives (pods, and the pod templates of workloads):
//! volumes, containers, ports, environment, resources, restart policy.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::names::*;
use super::{FieldError, FieldErrorType, arr, render_value, str_of, validate_labels};
use crate::quantity::{QUANTITY_ERROR_MESSAGE, parse_quantity};

/// Validates a `PodSpec` found at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    // Volumes.
    let mut volume_names = BTreeSet::new();
    for (i, vol) in arr(spec, "volumes").iter().enumerate() {
        let p = format!("{path}.volumes[{i}].name");
        let name = str_of(vol, "name");
        if name.is_empty() {
            errs.push(FieldError::required(p, ""));
        } else if !is_dns1123_label(name) {
            errs.push(FieldError::invalid(p, &json!(name), DNS1123_LABEL_ERROR));
        } else if !volume_names.insert(name) {
            errs.push(FieldError::duplicate(p, &json!(name)));
        }
    }
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names = BTreeSet::new();
    for (field, list) in [
        ("initContainers", arr(spec, "initContainers")),
        ("containers", containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            validate_container(
                c,
                &format!("{path}.{field}[{i}]"),
                &volume_names,
                &mut names,
                errs,
            );
        }
    }
    let restart = spec.get("restartPolicy").cloned().unwrap_or(Value::Null);
    match restart.as_str() {
        Some("Always" | "OnFailure" | "Never") => {}
        None => errs.push(FieldError::required(format!("{path}.restartPolicy"), "")),
        Some(_) => errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            &restart,
            &["Always", "OnFailure", "Never"],
        )),
    }
    if let Some(dns) = spec.get("dnsPolicy")
        && !matches!(
            dns.as_str(),
            Some("ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None")
        )
    {
        errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            dns,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ));
    }
    for key in ["terminationGracePeriodSeconds", "activeDeadlineSeconds"] {
        if let Some(n) = spec.get(key).and_then(Value::as_i64) {
            let bad = if key == "activeDeadlineSeconds" {
                n < 1
            } else {
                n < 0
            };
            if bad {
                let msg = if key == "activeDeadlineSeconds" {
                    "must be between 1 and 2147483647, inclusive"
                } else {
                    "must be greater than or equal to 0"
                };
                errs.push(FieldError::invalid(format!("{path}.{key}"), &json!(n), msg));
            }
        }
    }
    for key in ["nodeName", "serviceAccountName"] {
        let v = str_of(spec, key);
        if !v.is_empty() && !is_dns1123_subdomain(v) {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                &json!(v),
                DNS1123_SUBDOMAIN_ERROR,
            ));
        }
    }
    if let Some(sel) = spec.get("nodeSelector").and_then(Value::as_object) {
        validate_labels(sel, &format!("{path}.nodeSelector"), errs);
    }
    for (i, t) in arr(spec, "tolerations").iter().enumerate() {
        let p = format!("{path}.tolerations[{i}]");
        let op = str_of(t, "operator");
        if !matches!(op, "" | "Equal" | "Exists") {
            errs.push(FieldError::not_supported(
                format!("{p}.operator"),
                &json!(op),
                &["Equal", "Exists"],
            ));
        }
        if op == "Exists" && !str_of(t, "value").is_empty() {
            errs.push(FieldError::invalid(
                format!("{p}.operator"),
                &json!(op),
                "value must be empty when `operator` is 'Exists'",
            ));
        }
        let effect = str_of(t, "effect");
        if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            errs.push(FieldError::not_supported(
                format!("{p}.effect"),
                &json!(effect),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
}

fn validate_container(
    c: &Value,
    path: &str,
    volumes: &BTreeSet<&str>,
    names: &mut BTreeSet<String>,
    errs: &mut Vec<FieldError>,
) {
    let name = str_of(c, "name");
    if name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else if !is_dns1123_label(name) {
        errs.push(FieldError::invalid(
            format!("{path}.name"),
            &json!(name),
            DNS1123_LABEL_ERROR,
        ));
    } else if !names.insert(name.to_string()) {
        errs.push(FieldError::duplicate(format!("{path}.name"), &json!(name)));
    }
    if str_of(c, "image").trim().is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    }
    if let Some(p) = c.get("imagePullPolicy")
        && !matches!(p.as_str(), Some("Always" | "IfNotPresent" | "Never"))
    {
        errs.push(FieldError::not_supported(
            format!("{path}.imagePullPolicy"),
            p,
            &["Always", "IfNotPresent", "Never"],
        ));
    }
    let mut port_names = BTreeSet::new();
    for (i, port) in arr(c, "ports").iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        match port.get("containerPort").and_then(Value::as_i64) {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => errs.push(FieldError::invalid(
                format!("{pp}.containerPort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(FieldError::required(format!("{pp}.containerPort"), "")),
        }
        if let Some(n) = port.get("hostPort").and_then(Value::as_i64)
            && !(0..=65535).contains(&n)
        {
            errs.push(FieldError::invalid(
                format!("{pp}.hostPort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(proto) = port.get("protocol")
            && !matches!(proto.as_str(), Some("TCP" | "UDP" | "SCTP"))
        {
            errs.push(FieldError::not_supported(
                format!("{pp}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        let pname = str_of(port, "name");
        if !pname.is_empty() {
            if !is_port_name(pname) {
                errs.push(FieldError::invalid(
                    format!("{pp}.name"),
                    &json!(pname),
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), must be no more than 15 characters, must contain at least one letter (a-z)",
                ));
            } else if !port_names.insert(pname) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), &json!(pname)));
            }
        }
    }
    for (i, env) in arr(c, "env").iter().enumerate() {
        let name = str_of(env, "name");
        let p = format!("{path}.env[{i}].name");
        if name.is_empty() {
            errs.push(FieldError::required(p, ""));
        } else if !is_env_var_name(name) {
            errs.push(FieldError::invalid(p, &json!(name), ENV_VAR_NAME_ERROR));
        }
    }
    let mut mount_paths = BTreeSet::new();
    for (i, m) in arr(c, "volumeMounts").iter().enumerate() {
        let p = format!("{path}.volumeMounts[{i}]");
        let name = str_of(m, "name");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name"), ""));
        } else if !volumes.contains(name) {
            errs.push(FieldError {
                field: format!("{p}.name"),
                error_type: FieldErrorType::Invalid,
                value: Some(render_value(&json!(name))),
                message: "volume not found: must match the name of a volume in spec.volumes".into(),
            });
        }
        let mount_path = str_of(m, "mountPath");
        if mount_path.is_empty() {
            errs.push(FieldError::required(format!("{p}.mountPath"), ""));
        } else if !mount_paths.insert(mount_path) {
            errs.push(FieldError::invalid(
                format!("{p}.mountPath"),
                &json!(mount_path),
                "must be unique",
            ));
        }
    }
    validate_resources(
        c.get("resources").unwrap_or(&Value::Null),
        &format!("{path}.resources"),
        errs,
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get(probe) {
            for key in [
                "timeoutSeconds",
                "periodSeconds",
                "successThreshold",
                "failureThreshold",
            ] {
                if let Some(n) = p.get(key).and_then(Value::as_i64)
                    && n < 1
                {
                    errs.push(FieldError::invalid(
                        format!("{path}.{probe}.{key}"),
                        &json!(n),
                        "must be greater than or equal to 1",
                    ));
                }
            }
            if probe != "readinessProbe"
                && p.get("successThreshold")
                    .and_then(Value::as_i64)
                    .is_some_and(|n| n != 1)
            {
                errs.push(FieldError::invalid(
                    format!("{path}.{probe}.successThreshold"),
                    p.get("successThreshold").unwrap_or(&Value::Null),
                    "must be 1",
                ));
            }
        }
    }
}

pub(crate) fn is_port_name(s: &str) -> bool {
    s.len() <= 15
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && s.bytes().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn validate_resources(res: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let mut parsed: BTreeMap<(&str, &str), crate::quantity::Quantity> = BTreeMap::new();
    for section in ["limits", "requests"] {
        let Some(map) = res.get(section).and_then(Value::as_object) else {
            continue;
        };
        for (name, q) in map {
            let p = format!("{path}.{section}[{name}]");
            let text = match q {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => {
                    errs.push(FieldError::invalid(p, other, QUANTITY_ERROR_MESSAGE));
                    continue;
                }
            };
            match parse_quantity(&text) {
                Ok(v) if v.is_negative() => errs.push(FieldError::invalid(
                    p,
                    &json!(text),
                    "must be greater than or equal to 0",
                )),
                Ok(v) => {
                    parsed.insert((section, name.as_str()), v);
                }
                Err(_) => errs.push(FieldError::invalid(p, &json!(text), QUANTITY_ERROR_MESSAGE)),
            }
        }
    }
    for ((section, name), req) in &parsed {
        if *section != "requests" {
            continue;
        }
        if let Some(limit) = parsed.get(&("limits", name))
            && req > limit
        {
            let req_text = res
                .pointer(&format!("/requests/{name}"))
                .cloned()
                .unwrap_or(Value::Null);
            let limit_text = res
                .pointer(&format!("/limits/{name}"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            errs.push(FieldError::invalid(
                format!("{path}.requests"),
                &req_text,
                format!("must be less than or equal to {name} limit of {limit_text}"),
            ));
        }
    }
}
