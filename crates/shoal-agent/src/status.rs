//! Pod status computed from container states: phase, conditions and QoS class, the way kubelet
//! computes them.
//!
//! Pure functions: the caller passes the container statuses it tracks and `now`. Writing the
//! result to the API server is the pod worker's job (`pods.rs`). Init containers, probes and
//! readiness gates are not modelled yet: a container is ready when it is running.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::spec::parse_quantity_milli;

/// Pod phases, as in the API.
pub const PENDING: &str = "Pending";
pub const RUNNING: &str = "Running";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";

/// A container waiting to start, e.g. `ContainerCreating` or `CrashLoopBackOff`.
pub fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// A container running since `started_at`.
pub fn running(started_at: Timestamp) -> ContainerState {
    ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(Time(started_at)),
        }),
        ..ContainerState::default()
    }
}

/// A container that ended.
pub fn terminated(
    exit_code: i32,
    reason: &str,
    message: Option<String>,
    started_at: Option<Timestamp>,
    finished_at: Timestamp,
    container_id: Option<String>,
) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            container_id,
            exit_code,
            finished_at: Some(Time(finished_at)),
            message,
            reason: Some(reason.to_owned()),
            signal: None,
            started_at: started_at.map(Time),
        }),
        ..ContainerState::default()
    }
}

/// The phase kubelet reports for these container statuses (`getPhase`). `terminal` means the
/// pod is being torn down: nothing will restart any more.
pub fn pod_phase(spec: &PodSpec, statuses: &[ContainerStatus], terminal: bool) -> &'static str {
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for container in &spec.containers {
        let Some(status) = statuses.iter().find(|s| s.name == container.name) else {
            unknown += 1;
            continue;
        };
        let state = status.state.as_ref();
        if state.is_some_and(|s| s.running.is_some()) {
            running += 1;
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if state.is_some_and(|s| s.waiting.is_some()) {
            if status
                .last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
            {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    if waiting > 0 {
        PENDING
    } else if running > 0 && unknown == 0 {
        RUNNING
    } else if running == 0 && stopped > 0 && unknown == 0 {
        if terminal {
            if stopped == succeeded {
                SUCCEEDED
            } else {
                FAILED
            }
        } else if policy == "Always" {
            RUNNING
        } else if stopped == succeeded {
            SUCCEEDED
        } else if policy == "Never" {
            FAILED
        } else {
            RUNNING
        }
    } else {
        PENDING
    }
}

/// The QoS class (`BestEffort`, `Burstable`, `Guaranteed`) as Kubernetes computes it from cpu
/// and memory requests and limits of all containers. Requests default to limits.
pub fn qos_class(spec: &PodSpec) -> &'static str {
    let mut requests: BTreeMap<&str, i128> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i128> = BTreeMap::new();
    let mut guaranteed = true;
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for container in all {
        let resources = container.resources.as_ref();
        let container_limits = resources.and_then(|r| r.limits.as_ref());
        let container_requests = resources.and_then(|r| r.requests.as_ref());
        let mut limits_found = 0;
        for name in ["cpu", "memory"] {
            let limit = container_limits
                .and_then(|m| m.get(name))
                .and_then(|q| parse_quantity_milli(&q.0))
                .filter(|v| *v != 0);
            let request = container_requests
                .and_then(|m| m.get(name))
                .and_then(|q| parse_quantity_milli(&q.0))
                .or(limit)
                .filter(|v| *v != 0);
            if let Some(r) = request {
                *requests.entry(name).or_default() += r;
            }
            if let Some(l) = limit {
                limits_found += 1;
                *limits.entry(name).or_default() += l;
            }
        }
        if limits_found < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed
        && requests.len() == limits.len()
        && requests.iter().all(|(k, v)| limits.get(k) == Some(v))
    {
        return "Guaranteed";
    }
    "Burstable"
}

/// Everything the pod status is computed from.
#[derive(Debug)]
pub struct StatusInput<'a> {
    /// The pod as last seen (spec, and the status to keep fields and transition times from).
    pub pod: &'a Pod,
    /// One status per container the worker tracks, in spec order.
    pub containers: &'a [ContainerStatus],
    /// The pod is being torn down; nothing restarts.
    pub terminal: bool,
    pub host_ip: &'a str,
    pub pod_ip: &'a str,
    /// When the worker first accepted the pod.
    pub start_time: Timestamp,
    pub now: Timestamp,
}

const OUR_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// The full pod status to write: the pod's current status with phase, conditions, container
/// statuses, IPs, start time and QoS class replaced. Conditions keep their
/// `lastTransitionTime` while their status does not change.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let default_spec = PodSpec::default();
    let spec = input.pod.spec.as_ref().unwrap_or(&default_spec);
    let current = input.pod.status.clone().unwrap_or_default();
    let phase = pod_phase(spec, input.containers, input.terminal);
    let unready: Vec<&str> = spec
        .containers
        .iter()
        .filter(|c| !input.containers.iter().any(|s| s.name == c.name && s.ready))
        .map(|c| c.name.as_str())
        .collect();
    let completed = phase == SUCCEEDED || phase == FAILED;
    let (is_ready, reason, message) = if completed {
        (false, Some("PodCompleted".to_owned()), None)
    } else if unready.is_empty() {
        (true, None, None)
    } else {
        (
            false,
            Some("ContainersNotReady".to_owned()),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let sandbox_ready = !completed || !input.terminal;
    let existing = current.conditions.clone().unwrap_or_default();
    let condition = |kind: &str, status: bool, reason: Option<String>, message: Option<String>| {
        let status = if status { "True" } else { "False" }.to_owned();
        let previous = existing.iter().find(|c| c.type_ == kind);
        let last_transition_time = match previous {
            Some(p) if p.status == status && p.last_transition_time.is_some() => {
                p.last_transition_time.clone()
            }
            _ => Some(Time(input.now)),
        };
        PodCondition {
            last_probe_time: None,
            last_transition_time,
            message,
            observed_generation: None,
            reason,
            status,
            type_: kind.to_owned(),
        }
    };
    let mut conditions = vec![
        condition("PodReadyToStartContainers", sandbox_ready, None, None),
        condition("Initialized", true, None, None),
        condition("Ready", is_ready, reason.clone(), message.clone()),
        condition("ContainersReady", is_ready, reason, message),
        condition("PodScheduled", true, None, None),
    ];
    conditions.extend(
        existing
            .iter()
            .filter(|c| !OUR_CONDITIONS.contains(&c.type_.as_str()))
            .cloned(),
    );
    PodStatus {
        phase: Some(phase.to_owned()),
        conditions: Some(conditions),
        container_statuses: Some(input.containers.to_vec()),
        host_ip: Some(input.host_ip.to_owned()),
        host_ips: Some(vec![HostIP {
            ip: input.host_ip.to_owned(),
        }]),
        pod_ip: Some(input.pod_ip.to_owned()),
        pod_ips: Some(vec![PodIP {
            ip: input.pod_ip.to_owned(),
        }]),
        start_time: current.start_time.clone().or(Some(Time(input.start_time))),
        qos_class: Some(qos_class(spec).to_owned()),
        ..current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn spec(policy: &str, names: &[&str]) -> PodSpec {
        serde_json::from_value(serde_json::json!({
            "restartPolicy": policy,
            "containers": names.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>()
        }))
        .expect("spec")
    }

    fn status(name: &str, state: ContainerState, last: Option<ContainerState>) -> ContainerStatus {
        ContainerStatus {
            name: name.to_owned(),
            ready: state.running.is_some(),
            state: Some(state),
            last_state: last,
            ..ContainerStatus::default()
        }
    }

    fn exited(code: i32) -> ContainerState {
        terminated(code, "Completed", None, None, Timestamp::UNIX_EPOCH, None)
    }

    #[test]
    fn phases() {
        let creating = || waiting("ContainerCreating", None);
        let crashloop = || waiting("CrashLoopBackOff", None);
        let run = || running(Timestamp::UNIX_EPOCH);
        let cases: [(&str, Vec<ContainerStatus>, bool, &str); 10] = [
            ("Always", vec![], false, PENDING),
            (
                "Always",
                vec![status("a", creating(), None)],
                false,
                PENDING,
            ),
            ("Always", vec![status("a", run(), None)], false, RUNNING),
            (
                "Always",
                vec![status("a", crashloop(), Some(exited(1)))],
                false,
                RUNNING,
            ),
            (
                "Never",
                vec![status("a", exited(0), None)],
                false,
                SUCCEEDED,
            ),
            ("Never", vec![status("a", exited(2), None)], false, FAILED),
            (
                "OnFailure",
                vec![status("a", exited(0), None)],
                false,
                SUCCEEDED,
            ),
            (
                "OnFailure",
                vec![status("a", crashloop(), Some(exited(1)))],
                false,
                RUNNING,
            ),
            (
                "Always",
                vec![status("a", exited(0), None)],
                true,
                SUCCEEDED,
            ),
            ("Always", vec![status("a", exited(137), None)], true, FAILED),
        ];
        for (policy, statuses, terminal, want) in cases {
            let got = pod_phase(&spec(policy, &["a"]), &statuses, terminal);
            assert_eq!(got, want, "{policy} {statuses:?} terminal={terminal}");
        }
        // Two containers: one done, one running.
        let two = spec("Never", &["a", "b"]);
        assert_eq!(
            pod_phase(
                &two,
                &[status("a", exited(0), None), status("b", run(), None)],
                false
            ),
            RUNNING
        );
        assert_eq!(
            pod_phase(
                &two,
                &[status("a", exited(0), None), status("b", exited(1), None)],
                false
            ),
            FAILED
        );
        assert_eq!(
            pod_phase(
                &two,
                &[status("a", exited(0), None), status("b", creating(), None)],
                false
            ),
            PENDING
        );
    }

    fn status_simple(name: &str, state: ContainerState) -> ContainerStatus {
        status(name, state, None)
    }

    #[test]
    fn qos_classes() {
        let pod = |resources: serde_json::Value| -> PodSpec {
            serde_json::from_value(serde_json::json!({
                "containers": resources.as_array().expect("array").iter().enumerate()
                    .map(|(i, r)| serde_json::json!({"name": format!("c{i}"), "resources": r}))
                    .collect::<Vec<_>>()
            }))
            .expect("spec")
        };
        let cases = [
            (serde_json::json!([{}]), "BestEffort"),
            (
                serde_json::json!([{"limits": {"cpu": "1", "memory": "1Gi"}}]),
                "Guaranteed",
            ),
            (
                serde_json::json!([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}]),
                "Guaranteed",
            ),
            (
                serde_json::json!([{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}]),
                "Burstable",
            ),
            (
                serde_json::json!([{"requests": {"memory": "10Mi"}}]),
                "Burstable",
            ),
            (serde_json::json!([{"limits": {"cpu": "1"}}]), "Burstable"),
            (
                serde_json::json!([{"limits": {"cpu": "1", "memory": "1Gi"}}, {}]),
                "Burstable",
            ),
        ];
        for (resources, want) in cases {
            assert_eq!(qos_class(&pod(resources.clone())), want, "{resources}");
        }
    }

    #[test]
    fn full_status_keeps_transition_times_and_foreign_fields() {
        let t0: Timestamp = "2026-11-23T19:00:00Z".parse().expect("ts");
        let t1: Timestamp = "2026-11-23T19:00:05Z".parse().expect("ts");
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {
                "nominatedNodeName": "n9",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-23T18:59:00Z"},
                    {"type": "example.com/Custom", "status": "True"}
                ]
            }
        }))
        .expect("pod");
        let containers = [
            status_simple("a", running(t0)),
            status_simple("b", waiting("ContainerCreating", None)),
        ];
        let input = StatusInput {
            pod: &pod,
            containers: &containers,
            terminal: false,
            host_ip: "127.0.0.1",
            pod_ip: "127.0.0.1",
            start_time: t0,
            now: t0,
        };
        let first = pod_status(&input);
        expect![[r#"
            {
              "conditions": [
                {
                  "lastTransitionTime": "2026-11-23T19:00:00Z",
                  "status": "True",
                  "type": "PodReadyToStartContainers"
                },
                {
                  "lastTransitionTime": "2026-11-23T19:00:00Z",
                  "status": "True",
                  "type": "Initialized"
                },
                {
                  "lastTransitionTime": "2026-11-23T19:00:00Z",
                  "message": "containers with unready status: [b]",
                  "reason": "ContainersNotReady",
                  "status": "False",
                  "type": "Ready"
                },
                {
                  "lastTransitionTime": "2026-11-23T19:00:00Z",
                  "message": "containers with unready status: [b]",
                  "reason": "ContainersNotReady",
                  "status": "False",
                  "type": "ContainersReady"
                },
                {
                  "lastTransitionTime": "2026-11-23T18:59:00Z",
                  "status": "True",
                  "type": "PodScheduled"
                },
                {
                  "status": "True",
                  "type": "example.com/Custom"
                }
              ],
              "containerStatuses": [
                {
                  "image": "",
                  "imageID": "",
                  "name": "a",
                  "ready": true,
                  "restartCount": 0,
                  "state": {
                    "running": {
                      "startedAt": "2026-11-23T19:00:00Z"
                    }
                  }
                },
                {
                  "image": "",
                  "imageID": "",
                  "name": "b",
                  "ready": false,
                  "restartCount": 0,
                  "state": {
                    "waiting": {
                      "reason": "ContainerCreating"
                    }
                  }
                }
              ],
              "hostIP": "127.0.0.1",
              "hostIPs": [
                {
                  "ip": "127.0.0.1"
                }
              ],
              "nominatedNodeName": "n9",
              "phase": "Pending",
              "podIP": "127.0.0.1",
              "podIPs": [
                {
                  "ip": "127.0.0.1"
                }
              ],
              "qosClass": "BestEffort",
              "startTime": "2026-11-23T19:00:00Z"
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&first).expect("json"));

        pod.status = Some(first);
        let containers = [
            status_simple("a", running(t0)),
            status_simple("b", running(t1)),
        ];
        let second = pod_status(&StatusInput {
            pod: &pod,
            containers: &containers,
            terminal: false,
            host_ip: "127.0.0.1",
            pod_ip: "127.0.0.1",
            start_time: t0,
            now: t1,
        });
        let conditions: Vec<String> = second
            .conditions
            .iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} {} {}",
                    c.type_,
                    c.status,
                    c.last_transition_time
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default()
                )
            })
            .collect();
        expect![[r#"
            [
                "PodReadyToStartContainers True 2026-11-23T19:00:00Z",
                "Initialized True 2026-11-23T19:00:00Z",
                "Ready True 2026-11-23T19:00:05Z",
                "ContainersReady True 2026-11-23T19:00:05Z",
                "PodScheduled True 2026-11-23T18:59:00Z",
                "example.com/Custom True ",
            ]
        "#]]
        .assert_debug_eq(&conditions);
        assert_eq!(second.phase.as_deref(), Some(RUNNING));
    }
}
