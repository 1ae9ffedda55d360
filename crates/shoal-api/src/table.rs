//! Server-side `Table` columns and cells for `kubectl get`, per kind, following Kubernetes'
//! printers (`pkg/printers/internalversion/printers.go`). As in Kubernetes the server always
//! produces the wide cells; kubectl hides columns of priority 1 unless `-o wide`. Column names
//! are Kubernetes' (`Name`, `Up-to-date`); kubectl upper-cases them. This module knows nothing
//! about HTTP or the `meta.k8s.io` Table envelope.

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// One column definition of a Table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Header as Kubernetes defines it (`"Name"`, `"Ready"`); kubectl upper-cases it.
    pub name: &'static str,
    /// `"string"`, `"integer"` or `"date"`.
    pub type_: &'static str,
    /// `"name"` for the NAME column, otherwise `""`.
    pub format: &'static str,
    /// Human description of the column.
    pub description: &'static str,
    /// 0 is always shown; 1 only with `-o wide`.
    pub priority: i32,
}

const fn col(
    name: &'static str,
    type_: &'static str,
    priority: i32,
    description: &'static str,
) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority,
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

fn name_col() -> Column {
    Column {
        name: "Name",
        type_: "string",
        format: "name",
        description: NAME_DESC,
        priority: 0,
    }
}

fn age_col() -> Column {
    col("Age", "string", 0, AGE_DESC)
}

fn workload_wide() -> [Column; 3] {
    [
        col(
            "Containers",
            "string",
            1,
            "Names of each container in the template.",
        ),
        col(
            "Images",
            "string",
            1,
            "Images referenced by each container in the template.",
        ),
        col("Selector", "string", 1, "Label selector for pods."),
    ]
}

/// The columns for a resource type.
pub fn columns(rt: &ResourceType) -> Vec<Column> {
    let mut c = vec![name_col()];
    match rt.kind {
        "Pod" => {
            c.extend([
                col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
                col("Status", "string", 0, "The aggregate status of the containers in this pod."),
                col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
                age_col(),
                col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
                col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
                col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
                col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
            ]);
        }
        "Deployment" => {
            c.extend([
                col("Ready", "string", 0, "Number of the pod with ready state"),
                col("Up-to-date", "integer", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
                col("Available", "integer", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
                age_col(),
            ]);
            c.extend(workload_wide());
        }
        "ReplicaSet" => {
            c.extend([
                col("Desired", "integer", 0, "Replicas is the number of desired replicas."),
                col("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
                col("Ready", "integer", 0, "readyReplicas is the number of pods targeted by this ReplicaSet with a Ready Condition."),
                age_col(),
            ]);
            c.extend(workload_wide());
        }
        "Node" => {
            c.extend([
                col("Status", "string", 0, "The status of the node"),
                col("Roles", "string", 0, "The roles of the node"),
                age_col(),
                col("Version", "string", 0, "Kubelet Version reported by the node."),
                col("Internal-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
                col("External-IP", "string", 1, "List of addresses reachable to the node. Queried from cloud provider, if available."),
                col("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
                col("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
                col("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
            ]);
        }
        "Namespace" => {
            c.extend([
                col("Status", "string", 0, "The status of the namespace"),
                age_col(),
            ]);
        }
        "Event" => {
            // Events have no Name column first: Kubernetes lists it last, at priority 1.
            c = vec![
                col(
                    "Last Seen",
                    "string",
                    0,
                    "The time at which the most recent occurrence of this event was recorded.",
                ),
                col(
                    "Type",
                    "string",
                    0,
                    "Type of this event (Normal, Warning), new types could be added in the future",
                ),
                col(
                    "Reason",
                    "string",
                    0,
                    "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
                ),
                col(
                    "Object",
                    "string",
                    0,
                    "The object that this event is about.",
                ),
                col(
                    "Subobject",
                    "string",
                    1,
                    "The field of the object this event is about, if any.",
                ),
                col(
                    "Source",
                    "string",
                    1,
                    "The component reporting this event. Should be a short machine understandable string.",
                ),
                col(
                    "Message",
                    "string",
                    0,
                    "A human-readable description of the status of this operation.",
                ),
                col(
                    "First Seen",
                    "string",
                    1,
                    "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
                ),
                col(
                    "Count",
                    "string",
                    1,
                    "The number of times this event has occurred.",
                ),
                Column {
                    priority: 1,
                    ..name_col()
                },
            ];
        }
        "Lease" => {
            c.extend([
                col(
                    "Holder",
                    "string",
                    0,
                    "holderIdentity contains the identity of the holder of a current lease.",
                ),
                age_col(),
            ]);
        }
        "RuntimeClass" => {
            c.extend([col("Handler", "string", 0, "handler specifies the underlying runtime and configuration that the CRI implementation will use to handle pods of this class."), age_col()]);
        }
        "Service" => {
            c.extend([
                col("Type", "string", 0, "type determines how the Service is exposed."),
                col("Cluster-IP", "string", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
                col("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
                col("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
                age_col(),
                col("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
            ]);
        }
        "Job" => {
            c.extend([
                col("Status", "string", 0, "Status of the job."),
                col(
                    "Completions",
                    "string",
                    0,
                    "The completion status of the job.",
                ),
                col(
                    "Duration",
                    "string",
                    0,
                    "Time required to complete the job.",
                ),
                age_col(),
            ]);
            c.extend(workload_wide());
        }
        "CronJob" => {
            c.extend([
                col(
                    "Schedule",
                    "string",
                    0,
                    "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
                ),
                col(
                    "Timezone",
                    "string",
                    0,
                    "The time zone name for the given schedule.",
                ),
                col(
                    "Suspend",
                    "boolean",
                    0,
                    "This flag tells the controller to suspend subsequent executions.",
                ),
                col(
                    "Active",
                    "integer",
                    0,
                    "A list of pointers to currently running jobs.",
                ),
                col(
                    "Last Schedule",
                    "string",
                    0,
                    "Information when was the last time the job was successfully scheduled.",
                ),
                age_col(),
            ]);
            c.extend(workload_wide());
        }
        "ConfigMap" => {
            c.extend([
                col("Data", "string", 0, "Data contains the configuration data."),
                age_col(),
            ]);
        }
        "Secret" => {
            c.extend([
                col(
                    "Type",
                    "string",
                    0,
                    "Used to facilitate programmatic handling of secret data.",
                ),
                col("Data", "string", 0, "Data contains the secret data."),
                age_col(),
            ]);
        }
        "ServiceAccount" => {
            c.extend([col("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."), age_col()]);
        }
        "Endpoints" => {
            c.extend([
                col("Endpoints", "string", 0, "Endpoints of the service"),
                age_col(),
            ]);
        }
        _ => c.push(age_col()),
    }
    c
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn i(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_default()
}

fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// kubectl's `translateTimestampSince`: the age of an RFC 3339 time, `<unknown>` if absent.
fn since(ts: &str, now: jiff::Timestamp) -> String {
    match crate::meta::parse_time(ts) {
        Some(t) if !ts.is_empty() => human_age(t, now),
        _ => "<unknown>".into(),
    }
}

/// The cells of one row, in the order of [`columns`] (wide cells included).
pub fn row_cells(rt: &ResourceType, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = crate::meta::name(obj).unwrap_or_default();
    let age = since(
        crate::meta::creation_timestamp(obj).unwrap_or_default(),
        now,
    );
    let mut cells = vec![json!(name)];
    match rt.kind {
        "Pod" => cells.extend(pod_cells(obj, now)),
        "Deployment" => {
            cells.extend([
                json!(format!(
                    "{}/{}",
                    i(obj, "/status/readyReplicas"),
                    i(obj, "/spec/replicas")
                )),
                json!(i(obj, "/status/updatedReplicas")),
                json!(i(obj, "/status/availableReplicas")),
                json!(age),
            ]);
            cells.extend(workload_wide_cells(
                obj,
                "/spec/template/spec",
                obj.pointer("/spec/selector"),
            ));
        }
        "ReplicaSet" => {
            cells.extend([
                json!(i(obj, "/spec/replicas")),
                json!(i(obj, "/status/replicas")),
                json!(i(obj, "/status/readyReplicas")),
                json!(age),
            ]);
            cells.extend(workload_wide_cells(
                obj,
                "/spec/template/spec",
                obj.pointer("/spec/selector"),
            ));
        }
        "Node" => cells.extend(node_cells(obj, age)),
        "Namespace" => cells.extend([json!(s(obj, "/status/phase")), json!(age)]),
        "Event" => return event_cells(obj, now),
        "Lease" => cells.extend([json!(s(obj, "/spec/holderIdentity")), json!(age)]),
        "RuntimeClass" => cells.extend([json!(s(obj, "/handler")), json!(age)]),
        "Service" => cells.extend(service_cells(obj, age)),
        "Job" => cells.extend(job_cells(obj, age, now)),
        "CronJob" => {
            let last = s(obj, "/status/lastScheduleTime");
            cells.extend([
                json!(s(obj, "/spec/schedule")),
                json!(or_none(s(obj, "/spec/timeZone"))),
                json!(
                    if obj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
                        "True"
                    } else {
                        "False"
                    }
                ),
                json!(arr(obj, "/status/active").len()),
                json!(if last.is_empty() {
                    "<none>".to_string()
                } else {
                    since(last, now)
                }),
                json!(age),
            ]);
            cells.extend(workload_wide_cells(
                obj,
                "/spec/jobTemplate/spec/template/spec",
                obj.pointer("/spec/jobTemplate/spec/selector"),
            ));
        }
        "ConfigMap" => {
            let n = count_keys(obj, "/data") + count_keys(obj, "/binaryData");
            cells.extend([json!(n), json!(age)]);
        }
        "Secret" => {
            let n = count_keys(obj, "/data");
            cells.extend([json!(s(obj, "/type")), json!(n), json!(age)]);
        }
        "ServiceAccount" => cells.extend([json!(arr(obj, "/secrets").len()), json!(age)]),
        "Endpoints" => cells.extend([json!(format_endpoints(obj)), json!(age)]),
        _ => cells.push(json!(age)),
    }
    cells
}

fn count_keys(obj: &Value, pointer: &str) -> usize {
    obj.pointer(pointer)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

fn workload_wide_cells(obj: &Value, pod_spec: &str, selector: Option<&Value>) -> [Value; 3] {
    let containers = arr(obj, &format!("{pod_spec}/containers"));
    let names: Vec<&str> = containers.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| s(c, "/image")).collect();
    let selector = match crate::selector::LabelSelector::from_value(selector) {
        Ok(sel) if sel.is_empty() => "<none>".to_string(),
        Ok(sel) => sel.to_string(),
        Err(_) => "<error>".to_string(),
    };
    [
        json!(names.join(",")),
        json!(images.join(",")),
        json!(selector),
    ]
}

fn has_condition(obj: &Value, ty: &str) -> bool {
    arr(obj, "/status/conditions")
        .iter()
        .any(|c| s(c, "/type") == ty && s(c, "/status") == "True")
}

fn pod_cells(pod: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let total = arr(pod, "/spec/containers").len();
    let mut ready = 0;
    let mut restarts = 0;
    let mut last_restart: Option<jiff::Timestamp> = None;
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    for c in arr(pod, "/status/conditions") {
        if s(c, "/type") == "PodScheduled" && s(c, "/reason") == "SchedulingGated" {
            reason = "SchedulingGated".into();
        }
    }
    let note_restart = |c: &Value, last: &mut Option<jiff::Timestamp>| {
        if let Some(t) = crate::meta::parse_time(s(c, "/lastState/terminated/finishedAt"))
            && last.is_none_or(|l| t > l)
        {
            *last = Some(t);
        }
    };
    let init_specs = arr(pod, "/spec/initContainers");
    let mut initializing = false;
    let mut sidecar_restarts = 0;
    for (idx, c) in arr(pod, "/status/initContainerStatuses").iter().enumerate() {
        restarts += i(c, "/restartCount");
        note_restart(c, &mut last_restart);
        let restartable = init_specs
            .iter()
            .any(|spec| s(spec, "/name") == s(c, "/name") && s(spec, "/restartPolicy") == "Always");
        if restartable {
            sidecar_restarts += i(c, "/restartCount");
        }
        let terminated = c.pointer("/state/terminated");
        let waiting_reason = s(c, "/state/waiting/reason");
        if terminated.is_some() && i(c, "/state/terminated/exitCode") == 0 {
            continue;
        }
        if restartable && c.get("started").and_then(Value::as_bool) == Some(true) {
            if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
            continue;
        }
        if let Some(t) = terminated {
            let r = s(t, "/reason");
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if i(t, "/signal") != 0 {
                format!("Init:Signal:{}", i(t, "/signal"))
            } else {
                format!("Init:ExitCode:{}", i(t, "/exitCode"))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{idx}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }
    if !initializing || has_condition(pod, "Initialized") {
        // Once initialised, only sidecar (restartable init) restarts count, as in kubectl.
        restarts = sidecar_restarts;
        let mut has_running = false;
        for c in arr(pod, "/status/containerStatuses").iter().rev() {
            restarts += i(c, "/restartCount");
            note_restart(c, &mut last_restart);
            let waiting = s(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                let r = s(t, "/reason");
                reason = if !r.is_empty() {
                    r.to_string()
                } else if i(t, "/signal") != 0 {
                    format!("Signal:{}", i(t, "/signal"))
                } else {
                    format!("ExitCode:{}", i(t, "/exitCode"))
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready") {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    let phase = s(pod, "/status/phase");
    if crate::meta::deletion_timestamp(pod).is_some() {
        if s(pod, "/status/reason") == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    let restarts_text = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_age(t, now)),
        _ => restarts.to_string(),
    };
    let age = since(
        crate::meta::creation_timestamp(pod).unwrap_or_default(),
        now,
    );
    let ip = arr(pod, "/status/podIPs")
        .first()
        .map(|p| s(p, "/ip").to_string())
        .unwrap_or_else(|| s(pod, "/status/podIP").to_string());
    let gates = arr(pod, "/spec/readinessGates");
    let gates_text = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let ok = gates
            .iter()
            .filter(|g| has_condition(pod, s(g, "/conditionType")))
            .count();
        format!("{ok}/{}", gates.len())
    };
    vec![
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_text),
        json!(age),
        json!(or_none(&ip)),
        json!(or_none(s(pod, "/spec/nodeName"))),
        json!(or_none(s(pod, "/status/nominatedNodeName"))),
        json!(gates_text),
    ]
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

fn event_cells(ev: &Value, now: jiff::Timestamp) -> Vec<Value> {
    // Core v1 and events.k8s.io/v1 field names.
    let pick = |a: &str, b: &str| {
        let x = s(ev, a);
        if x.is_empty() { s(ev, b) } else { x }
    };
    let first_ts = pick("/firstTimestamp", "/deprecatedFirstTimestamp");
    let event_time = s(ev, "/eventTime");
    let first = if first_ts.is_empty() {
        since(event_time, now)
    } else {
        since(first_ts, now)
    };
    let last_ts = pick("/lastTimestamp", "/deprecatedLastTimestamp");
    let mut last = if last_ts.is_empty() {
        first.clone()
    } else {
        since(last_ts, now)
    };
    let mut count = ev
        .get("count")
        .or_else(|| ev.get("deprecatedCount"))
        .and_then(Value::as_i64)
        .unwrap_or_default();
    if let Some(series) = ev.get("series").filter(|v| v.is_object()) {
        last = since(s(series, "/lastObservedTime"), now);
        count = i(series, "/count");
    } else if count == 0 {
        count = 1;
    }
    let involved = ev
        .get("involvedObject")
        .or_else(|| ev.get("regarding"))
        .unwrap_or(&Value::Null);
    let kind = s(involved, "/kind").to_lowercase();
    let target = match s(involved, "/name") {
        "" => kind,
        name => format!("{kind}/{name}"),
    };
    let source_component = pick("/source/component", "/deprecatedSource/component");
    let source_host = pick("/source/host", "/deprecatedSource/host");
    let source = if !source_component.is_empty() {
        if source_host.is_empty() {
            source_component.to_string()
        } else {
            format!("{source_component}, {source_host}")
        }
    } else {
        let controller = s(ev, "/reportingController");
        let instance = s(ev, "/reportingInstance");
        if instance.is_empty() {
            controller.to_string()
        } else {
            format!("{controller}, {instance}")
        }
    };
    vec![
        json!(last),
        json!(s(ev, "/type")),
        json!(s(ev, "/reason")),
        json!(target),
        json!(s(involved, "/fieldPath")),
        json!(source),
        json!(pick("/message", "/note").trim()),
        json!(first),
        json!(count.to_string()),
        json!(crate::meta::name(ev).unwrap_or_default()),
    ]
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

fn job_cells(job: &Value, age: String, now: jiff::Timestamp) -> Vec<Value> {
    let succeeded = i(job, "/status/succeeded");
    let completions = match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match i(job, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let start = crate::meta::parse_time(s(job, "/status/startTime"));
    let end = crate::meta::parse_time(s(job, "/status/completionTime"));
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(st), None) => human_age(st, now),
        (Some(st), Some(en)) => human_age(st, en),
    };
    let status = if has_condition(job, "Complete") {
        "Complete"
    } else if has_condition(job, "Failed") {
        "Failed"
    } else if crate::meta::deletion_timestamp(job).is_some() {
        "Terminating"
    } else if has_condition(job, "Suspended") {
        "Suspended"
    } else if has_condition(job, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(job, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let mut cells = vec![
        json!(status),
        json!(completions),
        json!(duration),
        json!(age),
    ];
    cells.extend(workload_wide_cells(
        job,
        "/spec/template/spec",
        job.pointer("/spec/selector"),
    ));
    cells
}

fn format_endpoints(ep: &Value) -> String {
    let mut list = Vec::new();
    let mut more = 0;
    for subset in arr(ep, "/subsets") {
        let ports = arr(subset, "/ports");
        for addr in arr(subset, "/addresses") {
            let ip = s(addr, "/ip");
            if ports.is_empty() {
                if list.len() < 3 {
                    list.push(ip.to_string())
                } else {
                    more += 1
                }
            }
            for p in ports {
                if list.len() < 3 {
                    list.push(format!("{ip}:{}", i(p, "/port")));
                } else {
                    more += 1;
                }
            }
        }
    }
    if list.is_empty() {
        return "<none>".into();
    }
    let mut out = list.join(",");
    if more > 0 {
        out.push_str(&format!(" + {more} more..."));
    }
    out
}

/// kubectl's short human duration (`duration.HumanDuration`): `5s`, `3m2s`, `10m`, `5h3m`,
/// `2d3h`, `40d`, `3y120d`; `<invalid>` when `since` is more than a second in the future.
pub fn human_age(since: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let secs = now.as_second() - since.as_second();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::{find_by_kind, resource_types};
    use expect_test::{Expect, expect};

    fn now() -> jiff::Timestamp {
        "2024-01-01T12:00:00Z".parse().unwrap()
    }

    fn check(group: &str, kind: &str, obj: Value, want: Expect) {
        let rt = find_by_kind(group, "v1", kind).unwrap();
        let cols = columns(rt);
        let cells = row_cells(rt, &obj, now());
        assert_eq!(cols.len(), cells.len(), "{kind}");
        let rendered: Vec<String> = cols
            .iter()
            .zip(&cells)
            .map(|(c, v)| format!("{}={}", c.name.to_uppercase(), v))
            .collect();
        want.assert_eq(&rendered.join(" "));
    }

    #[test]
    fn every_kind_has_matching_cells() {
        for rt in resource_types() {
            let cells = row_cells(rt, &json!({"metadata": {"name": "x"}}), now());
            assert_eq!(columns(rt).len(), cells.len(), "{}", rt.kind);
            assert_eq!(columns(rt).iter().filter(|c| c.format == "name").count(), 1);
        }
    }

    #[test]
    fn ages() {
        let at = |s: i64| {
            now()
                .checked_sub(jiff::SignedDuration::from_secs(s))
                .unwrap()
        };
        let got: Vec<String> = [
            0,
            5,
            119,
            120,
            182,
            600,
            3600 * 3,
            3600 * 5 + 60 * 7,
            3600 * 30,
            86400 * 2 + 3600 * 3,
            86400 * 40,
            86400 * (365 * 3 + 12),
        ]
        .iter()
        .map(|s| human_age(at(*s), now()))
        .collect();
        expect![[r#"["0s", "5s", "119s", "2m", "3m2s", "10m", "3h", "5h7m", "30h", "2d3h", "40d", "3y12d"]"#]]
            .assert_eq(&format!("{got:?}"));
        assert_eq!(human_age(at(-10), now()), "<invalid>");
    }

    #[test]
    fn pod_rows() {
        check(
            "",
            "Pod",
            json!({
                "metadata": {"name": "web", "creationTimestamp": "2024-01-01T11:55:00Z"},
                "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
                "status": {"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}], "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                    {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-01-01T11:59:30Z"}}}
                ]}
            }),
            expect![[
                r#"NAME="web" READY="1/2" STATUS="CrashLoopBackOff" RESTARTS="2 (30s ago)" AGE="5m" IP="10.0.0.5" NODE="n1" NOMINATED NODE="<none>" READINESS GATES="<none>""#
            ]],
        );
        check(
            "",
            "Pod",
            json!({
                "metadata": {"name": "job", "creationTimestamp": "2024-01-01T11:00:00Z"},
                "spec": {"containers": [{"name": "a"}]},
                "status": {"phase": "Succeeded", "containerStatuses": [
                    {"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
                ]}
            }),
            expect![[
                r#"NAME="job" READY="0/1" STATUS="Completed" RESTARTS="0" AGE="60m" IP="<none>" NODE="<none>" NOMINATED NODE="<none>" READINESS GATES="<none>""#
            ]],
        );
        check(
            "",
            "Pod",
            json!({
                "metadata": {"name": "p", "creationTimestamp": "2024-01-01T11:59:58Z", "deletionTimestamp": "2024-01-01T12:00:00Z"},
                "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [{"name": "i", "restartCount": 0, "state": {"waiting": {"reason": "ErrImagePull"}}}]}
            }),
            expect![[
                r#"NAME="p" READY="0/1" STATUS="Terminating" RESTARTS="0" AGE="2s" IP="<none>" NODE="<none>" NOMINATED NODE="<none>" READINESS GATES="<none>""#
            ]],
        );
        check(
            "",
            "Pod",
            json!({
                "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}, {"name": "j"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [
                    {"name": "i", "state": {"terminated": {"exitCode": 0}}},
                    {"name": "j", "state": {"running": {}}}
                ]}
            }),
            expect![[
                r#"NAME="p" READY="0/1" STATUS="Init:1/2" RESTARTS="0" AGE="<unknown>" IP="<none>" NODE="<none>" NOMINATED NODE="<none>" READINESS GATES="<none>""#
            ]],
        );
    }

    #[test]
    fn workload_rows() {
        check(
            "apps",
            "Deployment",
            json!({
                "metadata": {"name": "web", "creationTimestamp": "2024-01-01T11:00:00Z"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}},
                "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
            }),
            expect![[
                r#"NAME="web" READY="2/3" UP-TO-DATE=3 AVAILABLE=2 AGE="60m" CONTAINERS="a,b" IMAGES="a:1,b:1" SELECTOR="app=web""#
            ]],
        );
        check(
            "apps",
            "ReplicaSet",
            json!({"metadata": {"name": "web-1"}, "spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 1}}),
            expect![[
                r#"NAME="web-1" DESIRED=2 CURRENT=2 READY=1 AGE="<unknown>" CONTAINERS="" IMAGES="" SELECTOR="<none>""#
            ]],
        );
        check(
            "batch",
            "Job",
            json!({"metadata": {"name": "j"}, "spec": {"completions": 1},
                   "status": {"succeeded": 1, "startTime": "2024-01-01T11:00:00Z", "completionTime": "2024-01-01T11:00:07Z",
                              "conditions": [{"type": "Complete", "status": "True"}]}}),
            expect![[
                r#"NAME="j" STATUS="Complete" COMPLETIONS="1/1" DURATION="7s" AGE="<unknown>" CONTAINERS="" IMAGES="" SELECTOR="<none>""#
            ]],
        );
    }

    #[test]
    fn other_rows() {
        check(
            "",
            "Node",
            json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
                   "spec": {"unschedulable": true},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.35.0-shoal"},
                              "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
            expect![[
                r#"NAME="n1" STATUS="Ready,SchedulingDisabled" ROLES="control-plane" AGE="<unknown>" VERSION="v1.35.0-shoal" INTERNAL-IP="127.0.0.1" EXTERNAL-IP="<none>" OS-IMAGE="<none>" KERNEL-VERSION="<none>" CONTAINER-RUNTIME="<none>""#
            ]],
        );
        check(
            "",
            "Event",
            json!({"metadata": {"name": "web.1"}, "type": "Normal", "reason": "Scheduled", "message": "assigned\n",
                   "involvedObject": {"kind": "Pod", "name": "web"}, "source": {"component": "default-scheduler"},
                   "firstTimestamp": "2024-01-01T11:59:00Z", "lastTimestamp": "2024-01-01T11:59:50Z", "count": 2}),
            expect![[
                r#"LAST SEEN="10s" TYPE="Normal" REASON="Scheduled" OBJECT="pod/web" SUBOBJECT="" SOURCE="default-scheduler" MESSAGE="assigned" FIRST SEEN="60s" COUNT="2" NAME="web.1""#
            ]],
        );
        check(
            "",
            "Service",
            json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                   "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}}),
            expect![[
                r#"NAME="s" TYPE="NodePort" CLUSTER-IP="10.96.0.10" EXTERNAL-IP="<none>" PORT(S)="80:30080/TCP,53/UDP" AGE="<unknown>" SELECTOR="app=web""#
            ]],
        );
        check(
            "",
            "Secret",
            json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "eA==", "b": "eA=="}}),
            expect![[r#"NAME="s" TYPE="Opaque" DATA=2 AGE="<unknown>""#]],
        );
        check(
            "coordination.k8s.io",
            "Lease",
            json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}}),
            expect![[r#"NAME="n1" HOLDER="n1" AGE="<unknown>""#]],
        );
        check(
            "",
            "Endpoints",
            json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "1.1.1.2"}], "ports": [{"port": 80}, {"port": 81}]}]}),
            expect![[
                r#"NAME="e" ENDPOINTS="1.1.1.1:80,1.1.1.1:81,1.1.1.2:80 + 1 more..." AGE="<unknown>""#
            ]],
        );
    }
}
