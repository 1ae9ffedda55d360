//! Server-side `Table` columns and cells for `kubectl get`, per kind, following Kubernetes'
//! printers (`pkg/printers/internalversion/printers.go`). As in Kubernetes the server always
//! produces the wide cells; kubectl hides columns of priority 1 unless `-o wide`. Column names
//! are Kubernetes' (`Name`, `Up-to-date`); kubectl upper-cases them. This module knows nothing
//! about HTTP or the `meta.k8s.io` Table envelope.

use std::borrow::Cow;

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// One column definition of a Table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Header as Kubernetes defines it (`"Name"`, `"Ready"`); kubectl upper-cases it.
    pub name: Cow<'static, str>,
    /// `"string"`, `"integer"`, `"number"`, `"boolean"` or `"date"`.
    pub type_: Cow<'static, str>,
    /// `"name"` for the NAME column, otherwise `""` (or a custom column's format).
    pub format: Cow<'static, str>,
    /// Human description of the column.
    pub description: Cow<'static, str>,
    /// 0 is always shown; 1 only with `-o wide`.
    pub priority: i32,
}

pub(crate) const fn col(
    name: &'static str,
    type_: &'static str,
    priority: i32,
    description: &'static str,
) -> Column {
    Column {
        name: Cow::Borrowed(name),
        type_: Cow::Borrowed(type_),
        format: Cow::Borrowed(""),
        description: Cow::Borrowed(description),
        priority,
    }
}

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

pub(crate) fn name_col() -> Column {
    Column {
        name: Cow::Borrowed("Name"),
        type_: Cow::Borrowed("string"),
        format: Cow::Borrowed("name"),
        description: Cow::Borrowed(NAME_DESC),
        priority: 0,
    }
}

pub(crate) fn age_col() -> Column {
    col("Age", "string", 0, AGE_DESC)
}

pub(crate) fn workload_wide() -> [Column; 3] {
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
/// The columns for a resource type: its strategy's.
pub fn columns(rt: &ResourceType) -> Vec<Column> {
    rt.strategy.columns()
}

/// The cells of one row, in the order of [`columns`] (wide cells included).
pub fn row_cells(rt: &ResourceType, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    rt.strategy.row(obj, now)
}

/// The name and age of a row, the two cells most kinds start and end with.
pub(crate) fn name_and_age(obj: &Value, now: jiff::Timestamp) -> (Value, String) {
    let name = crate::meta::name(obj).unwrap_or_default();
    let age = since(
        crate::meta::creation_timestamp(obj).unwrap_or_default(),
        now,
    );
    (json!(name), age)
}

pub(crate) fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(crate) fn i(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_default()
}

pub(crate) fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

pub(crate) fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// kubectl's `translateTimestampSince`: the age of an RFC 3339 time, `<unknown>` if absent.
pub(crate) fn since(ts: &str, now: jiff::Timestamp) -> String {
    match crate::meta::parse_time(ts) {
        Some(t) if !ts.is_empty() => human_age(t, now),
        _ => "<unknown>".into(),
    }
}

pub(crate) fn count_keys(obj: &Value, pointer: &str) -> usize {
    obj.pointer(pointer)
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
}

pub(crate) fn workload_wide_cells(
    obj: &Value,
    pod_spec: &str,
    selector: Option<&Value>,
) -> [Value; 3] {
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

pub(crate) fn has_condition(obj: &Value, ty: &str) -> bool {
    arr(obj, "/status/conditions")
        .iter()
        .any(|c| s(c, "/type") == ty && s(c, "/status") == "True")
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
