//! The Job controller: runs a Job's pods to completion (kube-controller-manager's
//! `job-controller`, with the TTL-after-finished controller folded in).
//!
//! Pods are made from the template with a controller reference and the
//! `batch.kubernetes.io/job-tracking` finalizer. A finished pod is counted durably the way
//! upstream does: its uid first goes into `status.uncountedTerminatedPods` (one status
//! write), then its finalizer is removed, then it moves into `succeeded`/`failed`; a restarted
//! controller resumes at whichever step it stopped, so no pod is counted twice or lost even if
//! it is deleted meanwhile. `NonIndexed` Jobs keep `min(parallelism, completions -
//! succeeded)` pods active (work-queue Jobs without `completions` stop creating once one
//! succeeded and finish when none is active); `Indexed` Jobs give each pod an index
//! (`batch.kubernetes.io/job-completion-index`, `JOB_COMPLETION_INDEX`, hostname
//! `<job>-<index>`) and are done when every index succeeded (`status.completedIndexes`).
//! Failed pods are replaced after an exponential back-off (10 s doubling, at most 6 min) until
//! `backoffLimit` is exceeded (`Failed`, `BackoffLimitExceeded`); `podFailurePolicy` rules
//! (exit codes, pod conditions) fail the Job at once (`PodFailurePolicy`), ignore a failure
//! (not counted, the pod replaced) or count it; `activeDeadlineSeconds` fails it with
//! `DeadlineExceeded`; `suspend` deletes its active pods. Upstream's terminal
//! conditions come in pairs (`SuccessCriteriaMet` then `Complete`, `FailureTarget` then
//! `Failed`). A finished Job with `ttlSecondsAfterFinished` is deleted (background) that long
//! after it finished. [`plan`] is the decision.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use serde_json::json;
use tracing::{debug, info};

use crate::Error;
use crate::pods::{controller_of, controller_ref, is_ready};
use crate::replicaset::Expectations;

/// The finalizer that keeps a Job's finished pod until it is counted.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// Annotation and label of an Indexed Job's pod index.
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// First pause before a failed pod is replaced; it doubles per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest such pause.
const BACKOFF_MAX: Duration = Duration::from_secs(360);
/// At most this many pods are created in one pass (the ReplicaSet controller's burst).
const BURST: usize = crate::replicaset::BURST_REPLICAS;
/// Pod writes in flight at once within one reconcile.
const PARALLEL_WRITES: usize = 32;

/// What one reconcile should do for a Job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Pods to create: `Some(index)` for Indexed Jobs.
    pub create: Vec<Option<i32>>,
    /// Active pods to delete (names).
    pub delete: Vec<String>,
    /// Finished pods recorded as uncounted whose finalizer is to be removed (names), once the
    /// status is written.
    pub release: Vec<String>,
    /// The status to write.
    pub status: JobStatus,
    /// A terminal condition reached now: (event type is Warning, reason, message).
    pub finished: Option<(bool, String, String)>,
    /// Delete the Job: its TTL after finishing ran out.
    pub expire: bool,
    /// Look again then although nothing changed (back-off, deadline, TTL).
    pub requeue: Option<Duration>,
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn tracked(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == TRACKING_FINALIZER))
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(INDEX_KEY)?
        .parse()
        .ok()
}

fn has_condition(status: &JobStatus, kind: &str) -> bool {
    status
        .conditions
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.type_ == kind && c.status == "True"))
}

fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> JobCondition {
    JobCondition {
        type_: kind.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn set_condition(status: &mut JobStatus, new: JobCondition) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) if old.status == new.status => {}
        Some(old) => *old = new,
        None => conditions.push(new),
    }
}

/// `"0-2,4"` into its indexes.
pub fn parse_indexes(text: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Indexes in upstream's compressed form (`"0-2,4"`).
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                parts.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    parts.join(",")
}

/// When a pod finished: its containers' latest `finishedAt`, else its start.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| status.start_time.as_ref().map(|t| t.0))
}

fn seconds(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// What a Job's `podFailurePolicy` says of one failed pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// `FailJob`: the Job fails now, with this message.
    FailJob(String),
    /// `Ignore`: the failure does not count towards `backoffLimit`; the pod is replaced.
    Ignore,
    /// `Count` (or no rule matched, or no policy): the default handling.
    Count,
}

/// Upstream's pod failure policy: the first rule whose `onExitCodes` (a terminated container,
/// `containerName` if set, exit code `In` the values, or non-zero and `NotIn` them) or
/// `onPodConditions` (a condition of that type and status) matches the pod decides.
/// `FailIndex` counts as `Count` here (no `backoffLimitPerIndex` yet).
pub fn pod_failure_verdict(job: &Job, pod: &Pod) -> PolicyVerdict {
    let Some(policy) = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref())
    else {
        return PolicyVerdict::Count;
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut message = None;
        if let Some(on) = &rule.on_exit_codes {
            let containers = status
                .into_iter()
                .flat_map(|s| {
                    s.init_container_statuses
                        .iter()
                        .flatten()
                        .chain(s.container_statuses.iter().flatten())
                })
                .filter(|c| on.container_name.as_ref().is_none_or(|n| *n == c.name));
            for container in containers {
                let Some(code) = container
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                let listed = on.values.contains(&code);
                let matched = match on.operator.as_str() {
                    "In" => listed,
                    "NotIn" => code != 0 && !listed,
                    _ => false,
                };
                if matched {
                    message = Some(format!(
                        "Container {} for pod {namespace}/{name} failed with exit code {code} matching {} rule at index {i}",
                        container.name, rule.action
                    ));
                    break;
                }
            }
        }
        if message.is_none() {
            for pattern in rule.on_pod_conditions.iter().flatten() {
                let want = pattern
                    .status
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("True");
                let has = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == pattern.type_ && c.status == want)
                });
                if has {
                    message = Some(format!(
                        "Pod {namespace}/{name} has condition {} matching {} rule at index {i}",
                        pattern.type_, rule.action
                    ));
                    break;
                }
            }
        }
        if let Some(message) = message {
            return match rule.action.as_str() {
                "FailJob" => PolicyVerdict::FailJob(message),
                "Ignore" => PolicyVerdict::Ignore,
                _ => PolicyVerdict::Count,
            };
        }
    }
    PolicyVerdict::Count
}

/// Computes what to do for `job` given its pods (those it controls) at `now`; with `manage`
/// false (pod writes not yet visible) it only does the bookkeeping.
pub fn plan(job: &Job, pods: &[&Pod], now: Timestamp, manage: bool) -> Plan {
    let mut out = Plan::default();
    let spec = job.spec.clone().unwrap_or_default();
    let mut status = job.status.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let by_uid: HashMap<&str, &Pod> = pods
        .iter()
        .filter_map(|p| Some((p.metadata.uid.as_deref()?, *p)))
        .collect();

    // Counting: flush uncounted pods whose finalizer is gone, record newly finished ones.
    let uncounted = status.uncounted_terminated_pods.take().unwrap_or_default();
    let mut uncounted_ok: BTreeSet<String> = uncounted
        .succeeded
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut uncounted_failed: BTreeSet<String> =
        uncounted.failed.unwrap_or_default().into_iter().collect();
    let mut succeeded = status.succeeded.unwrap_or(0);
    let mut failed = status.failed.unwrap_or(0);
    let settled = |uid: &String| by_uid.get(uid.as_str()).is_none_or(|p| !tracked(p));
    let before = uncounted_ok.len();
    uncounted_ok.retain(|uid| !settled(uid));
    succeeded += i32::try_from(before - uncounted_ok.len()).unwrap_or(i32::MAX);
    let before = uncounted_failed.len();
    uncounted_failed.retain(|uid| !settled(uid));
    failed += i32::try_from(before - uncounted_failed.len()).unwrap_or(i32::MAX);
    let mut completed = parse_indexes(status.completed_indexes.as_deref().unwrap_or_default());
    let mut policy_failure: Option<String> = None;
    // A failed pod is recorded unless the pod failure policy ignores it.
    let mut record_failure =
        |pod: &Pod, uid: String, uncounted: &mut BTreeSet<String>| match pod_failure_verdict(
            job, pod,
        ) {
            PolicyVerdict::Ignore => {}
            PolicyVerdict::FailJob(message) => {
                policy_failure.get_or_insert(message);
                uncounted.insert(uid);
            }
            PolicyVerdict::Count => {
                uncounted.insert(uid);
            }
        };
    for pod in pods.iter().filter(|p| tracked(p)) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let unscheduled = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty);
        match phase(pod) {
            Some("Succeeded") => {
                if indexed && let Some(i) = index_of(pod) {
                    completed.insert(i);
                }
                uncounted_ok.insert(uid);
            }
            Some("Failed") => record_failure(pod, uid, &mut uncounted_failed),
            // Deleted before any node ran it: it will never finish.
            _ if pod.metadata.deletion_timestamp.is_some() && unscheduled => {
                record_failure(pod, uid, &mut uncounted_failed);
            }
            _ => continue,
        }
        out.release
            .push(pod.metadata.name.clone().unwrap_or_default());
    }
    let succeeded_total = succeeded + i32::try_from(uncounted_ok.len()).unwrap_or(i32::MAX);
    let failed_total = failed + i32::try_from(uncounted_failed.len()).unwrap_or(i32::MAX);
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
        succeeded: Some(uncounted_ok.into_iter().collect()),
        failed: Some(uncounted_failed.into_iter().collect()),
    });
    if indexed {
        status.completed_indexes = Some(format_indexes(&completed));
    }

    let active: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(phase(p), Some("Succeeded" | "Failed"))
        })
        .collect();
    status.active = Some(i32::try_from(active.len()).unwrap_or(i32::MAX));
    status.ready =
        Some(i32::try_from(active.iter().filter(|p| is_ready(p)).count()).unwrap_or(i32::MAX));
    let names = |pods: &[&Pod]| -> Vec<String> {
        pods.iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    };

    let done = has_condition(&status, "Complete") || has_condition(&status, "Failed");
    if done {
        out.delete = names(&active);
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let finished = status.completion_time.as_ref().map(|t| t.0).or_else(|| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Failed" && c.status == "True")
                    .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
            });
            if let Some(finished) = finished {
                let due = finished + SignedDuration::from_secs(i64::from(ttl.max(0)));
                if now >= due {
                    out.expire = true;
                } else {
                    out.requeue = Some(seconds(due.duration_since(now)));
                }
            }
        }
        out.status = status;
        return out;
    }

    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let suspended = spec.suspend == Some(true);
    if !suspended && has_condition(&status, "Suspended") {
        // Resumed: the deadline's clock starts again.
        set_condition(
            &mut status,
            condition("Suspended", "False", "JobResumed", "Job resumed", now),
        );
        status.start_time = Some(Time(now));
    }
    // A suspended Job's deadline does not run (its clock restarts on resume).
    let deadline = spec
        .active_deadline_seconds
        .filter(|_| !suspended)
        .and_then(|s| {
            let start = status.start_time.as_ref()?.0;
            Some(start + SignedDuration::from_secs(s))
        });
    let failure = if let Some(message) = policy_failure {
        Some(("PodFailurePolicy", message))
    } else if failed_total > backoff_limit {
        Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit".to_owned(),
        ))
    } else if deadline.is_some_and(|d| now >= d) {
        Some((
            "DeadlineExceeded",
            "Job was active longer than specified deadline".to_owned(),
        ))
    } else {
        None
    };
    let success = match (indexed, completions) {
        (true, Some(c)) => i32::try_from(completed.len()).unwrap_or(i32::MAX) >= c,
        (_, Some(c)) => succeeded_total >= c,
        (_, None) => succeeded_total > 0 && active.is_empty(),
    };
    if let Some((reason, message)) = failure {
        out.delete = names(&active);
        set_condition(
            &mut status,
            condition("FailureTarget", "True", reason, &message, now),
        );
        set_condition(
            &mut status,
            condition("Failed", "True", reason, &message, now),
        );
        out.finished = Some((true, reason.to_owned(), message));
        out.status = status;
        return out;
    }
    if success {
        let message = "Reached expected number of succeeded pods";
        out.delete = names(&active);
        set_condition(
            &mut status,
            condition(
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                message,
                now,
            ),
        );
        set_condition(
            &mut status,
            condition("Complete", "True", "CompletionsReached", message, now),
        );
        status.completion_time = Some(Time(now));
        out.finished = Some((false, "Completed".to_owned(), "Job completed".to_owned()));
        out.status = status;
        return out;
    }
    if suspended {
        out.delete = names(&active);
        set_condition(
            &mut status,
            condition("Suspended", "True", "JobSuspended", "Job suspended", now),
        );
        out.status = status;
        return out;
    }
    if status.start_time.is_none() {
        status.start_time = Some(Time(now));
    }
    if let Some(d) = deadline {
        out.requeue = Some(seconds(d.duration_since(now)));
    }
    if !manage {
        out.status = status;
        return out;
    }

    // How many pods should run, and which indexes.
    let active_count = i32::try_from(active.len()).unwrap_or(i32::MAX);
    let wanted = if indexed {
        let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
        let room = usize::try_from((parallelism - active_count).max(0))
            .unwrap_or(0)
            .min(BURST);
        // Lazily: only as far as the first `room` pending indexes.
        out.create = (0..completions.unwrap_or(0))
            .filter(|i| !completed.contains(i) && !running.contains(i))
            .take(room)
            .map(Some)
            .collect();
        active_count + i32::try_from(out.create.len()).unwrap_or(0)
    } else {
        let wanted = match completions {
            Some(c) => parallelism.min((c - succeeded_total).max(0)),
            None if succeeded_total > 0 => 0,
            None => parallelism,
        };
        let missing = usize::try_from((wanted - active_count).max(0))
            .unwrap_or(0)
            .min(BURST);
        out.create = vec![None; missing];
        wanted
    };
    if active_count > wanted {
        let mut extra: Vec<&Pod> = active.clone();
        // Not-ready and newest first.
        extra.sort_by(|a, b| {
            is_ready(a).cmp(&is_ready(b)).then_with(|| {
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp)
            })
        });
        let excess = usize::try_from(active_count - wanted).unwrap_or(0);
        out.delete = names(&extra[..excess.min(extra.len())]);
    }
    // Failed pods are replaced only after their back-off.
    if !out.create.is_empty() && failed_total > 0 {
        let exponent = u32::try_from(failed_total - 1).unwrap_or(0).min(16);
        let delay = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX);
        let last_failure = pods
            .iter()
            .filter(|p| phase(p) == Some("Failed"))
            .filter_map(|p| finished_at(p))
            .max();
        if let Some(last) = last_failure {
            let due = last + SignedDuration::try_from(delay).unwrap_or(SignedDuration::ZERO);
            if now < due {
                out.create.clear();
                let wait = seconds(due.duration_since(now));
                out.requeue = Some(out.requeue.map_or(wait, |r| r.min(wait)));
            }
        }
    }
    out.status = status;
    out
}

/// The pod to create for `job` (at `index` for Indexed Jobs).
pub fn pod_for(job: &Job, index: Option<i32>) -> Pod {
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    for (k, v) in [
        ("batch.kubernetes.io/job-name", &name),
        ("job-name", &name),
        ("batch.kubernetes.io/controller-uid", &uid),
        ("controller-uid", &uid),
    ] {
        labels.entry(k.to_owned()).or_insert_with(|| v.clone());
    }
    let mut annotations = meta.annotations.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    let generate_name = match index {
        Some(i) => {
            annotations.insert(INDEX_KEY.to_owned(), i.to_string());
            labels.insert(INDEX_KEY.to_owned(), i.to_string());
            spec.hostname.get_or_insert_with(|| format!("{name}-{i}"));
            for container in spec.containers.iter_mut() {
                let env = container.env.get_or_insert_with(Vec::new);
                if !env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    env.push(EnvVar {
                        name: "JOB_COMPLETION_INDEX".to_owned(),
                        value: Some(i.to_string()),
                        value_from: None,
                    });
                }
            }
            format!("{name}-{i}-")
        }
        None => format!("{name}-"),
    };
    let mut finalizers = meta.finalizers.unwrap_or_default();
    finalizers.push(TRACKING_FINALIZER.to_owned());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_ref("batch/v1", "Job", &job.metadata)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// What the Job reconciler shares across calls.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All pods, kept by a reflector.
    pub pods: Store<Pod>,
    /// Outstanding creations and deletions.
    pub expectations: Expectations,
    /// Events as `job-controller`.
    pub events: shoal_events::Recorder,
}

/// Brings one Job's pods and status in line with its spec.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(namespace.as_str())
            && controller_of(&p.metadata).is_some_and(|o| o.uid == uid)
    });
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    if job.metadata.deletion_timestamp.is_some() {
        // Nothing will count them any more: let the pods go.
        for pod in pods.iter().filter(|p| tracked(p)) {
            release(&pod_api, pod).await?;
        }
        return Ok(Action::await_change());
    }
    let settled = ctx.expectations.satisfied(&uid, &pods);
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let plan = plan(&job, &refs, Timestamp::now(), settled);
    let job_ref = shoal_events::reference(job.as_ref());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);

    if plan.expire {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match jobs.delete(&name, &params).await {
            Ok(_) => info!(job = %name, "finished job deleted after its TTL"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(error) => return Err(error.into()),
        }
        return Ok(Action::await_change());
    }
    // The status first: finished pods must be recorded before their finalizers go.
    if job.status.as_ref() != Some(&plan.status) {
        let patch = json!({
            "metadata": {"resourceVersion": job.metadata.resource_version},
            "status": plan.status,
        });
        jobs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if let Some((warning, reason, message)) = &plan.finished {
            info!(job = %name, %reason, "job finished");
            if *warning {
                ctx.events.warning(&job_ref, reason, message.clone());
            } else {
                ctx.events.normal(&job_ref, reason, message.clone());
            }
        }
    }
    for pod_name in &plan.release {
        if let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.name.as_ref() == Some(pod_name))
        {
            release(&pod_api, pod).await?;
        }
    }
    let mut first_error = None;
    if !plan.create.is_empty() {
        let results: Vec<Result<Pod, kube::Error>> = stream::iter(plan.create.iter().copied())
            .map(|index| {
                let api = pod_api.clone();
                let pod = pod_for(&job, index);
                async move { api.create(&PostParams::default(), &pod).await }
            })
            .buffer_unordered(PARALLEL_WRITES)
            .collect()
            .await;
        let mut created = Vec::new();
        for result in results {
            match result {
                Ok(pod) => {
                    let pod_name = pod.metadata.name.unwrap_or_default();
                    ctx.events.normal(
                        &job_ref,
                        "SuccessfulCreate",
                        format!("Created pod: {pod_name}"),
                    );
                    created.push(pod_name);
                }
                Err(error) => {
                    ctx.events.warning(
                        &job_ref,
                        "FailedCreate",
                        format!("Error creating: {error}"),
                    );
                    first_error.get_or_insert(error);
                }
            }
        }
        debug!(job = %name, count = created.len(), "created pods");
        ctx.expectations.expect(&uid, created, Vec::new());
    }
    let mut deleted = Vec::new();
    for pod_name in &plan.delete {
        match pod_api.delete(pod_name, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.events.normal(
                    &job_ref,
                    "SuccessfulDelete",
                    format!("Deleted pod: {pod_name}"),
                );
                deleted.push(pod_name.clone());
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    ctx.expectations.expect(&uid, Vec::new(), deleted);
    if let Some(error) = first_error {
        return Err(error.into());
    }
    // Released pods come back as updates; a pending back-off, deadline or TTL is timed.
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after.max(Duration::from_millis(100))),
        None => Action::await_change(),
    })
}

/// Removes the tracking finalizer from `pod` (a conflict is retried by the caller's requeue).
async fn release(api: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let finalizers: Vec<&String> = pod
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != TRACKING_FINALIZER)
        .collect();
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": pod.metadata.resource_version,
    }});
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Every `period`, lets go of tracked pods whose Job is gone (deleted while the controller
/// was down, or before it could release them) or that no Job controls any more (orphaned).
pub async fn release_orphans(
    client: kube::Client,
    pods: Store<Pod>,
    jobs: Store<Job>,
    period: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let live: std::collections::HashSet<String> = jobs
            .state()
            .iter()
            .filter_map(|j| j.metadata.uid.clone())
            .collect();
        for pod in pods.state() {
            // Orphaned (its Job deleted with propagation Orphan) or its Job gone.
            let orphan = tracked(&pod)
                && controller_of(&pod.metadata)
                    .is_none_or(|o| o.kind == "Job" && !live.contains(&o.uid));
            if !orphan {
                continue;
            }
            let api: Api<Pod> = Api::namespaced(
                client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
            );
            if let Err(error) = release(&api, &pod).await {
                debug!(pod = ?pod.metadata.name, %error, "cannot release pod of a deleted job");
            }
        }
    }
}

/// Requeues a failed reconcile; conflicts come back quickly, other errors after a pause.
pub fn error_policy(job: Arc<Job>, error: &Error, ctx: Arc<Context>) -> Action {
    crate::replicaset::requeue_after_error("job", &job.metadata, error, &ctx.expectations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "job-uid"},
            "spec": spec, "status": status,
        }))
        .expect("job")
    }

    fn pod(name: &str, phase: &str, tracked: bool, index: Option<i32>) -> Pod {
        let mut meta = json!({"name": name, "uid": format!("uid-{name}")});
        if tracked {
            meta["finalizers"] = json!([TRACKING_FINALIZER]);
        }
        if let Some(i) = index {
            meta["annotations"] = json!({INDEX_KEY: i.to_string()});
        }
        serde_json::from_value(json!({"metadata": meta, "spec": {"containers": []},
            "status": {"phase": phase}}))
        .expect("pod")
    }

    fn now() -> Timestamp {
        "2026-01-01T00:10:00Z".parse().expect("time")
    }

    #[test]
    fn keeps_parallelism_pods_until_completions_succeed() {
        let j = job(json!({"completions": 3, "parallelism": 2}), json!({}));
        let p = plan(&j, &[], now(), true);
        assert_eq!(p.create, [None, None]);
        assert!(p.status.start_time.is_some());
        // One succeeded (recorded, not yet counted), one running: one more to create, the
        // finished one released once recorded.
        let done = pod("a", "Succeeded", true, None);
        let running = pod("b", "Running", true, None);
        let p = plan(&j, &[&done, &running], now(), true);
        assert_eq!(p.create, [None]);
        assert_eq!(p.release, ["a"]);
        let uncounted = p
            .status
            .uncounted_terminated_pods
            .clone()
            .expect("uncounted");
        assert_eq!(uncounted.succeeded, Some(vec!["uid-a".to_owned()]));
        assert_eq!(p.status.succeeded, Some(0));
        // Released: it moves into the count.
        let j = job(
            json!({"completions": 3, "parallelism": 2}),
            serde_json::to_value(&p.status).expect("status"),
        );
        let released = pod("a", "Succeeded", false, None);
        let p = plan(&j, &[&released, &running], now(), true);
        assert_eq!(p.status.succeeded, Some(1));
        assert_eq!(
            p.status.uncounted_terminated_pods.and_then(|u| u.succeeded),
            Some(vec![])
        );
        assert!(p.release.is_empty());
        // The last two succeed: Complete.
        let j = job(
            json!({"completions": 3, "parallelism": 2}),
            json!({"succeeded": 1}),
        );
        let b = pod("b", "Succeeded", true, None);
        let c = pod("c", "Succeeded", true, None);
        let p = plan(&j, &[&b, &c], now(), true);
        assert!(
            has_condition(&p.status, "Complete") && has_condition(&p.status, "SuccessCriteriaMet")
        );
        assert_eq!(p.finished.as_ref().map(|f| f.1.as_str()), Some("Completed"));
        assert!(p.create.is_empty());
    }

    #[test]
    fn failures_back_off_then_exceed_the_limit() {
        let spec = json!({"completions": 1, "parallelism": 1, "backoffLimit": 1});
        let failed: Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "uid": "uid-a"},
            "spec": {"containers": []},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "c", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:09:55Z"}}}]}
        }))
        .expect("pod");
        let j = job(
            spec.clone(),
            json!({"failed": 1, "startTime": "2026-01-01T00:00:00Z"}),
        );
        let p = plan(&j, &[&failed], now(), true);
        // 10 s after a first failure: 5 s to go.
        assert!(p.create.is_empty());
        assert_eq!(p.requeue, Some(Duration::from_secs(5)));
        let j = job(
            spec,
            json!({"failed": 2, "startTime": "2026-01-01T00:00:00Z"}),
        );
        let p = plan(&j, &[], now(), true);
        assert!(has_condition(&p.status, "Failed"));
        assert_eq!(
            p.finished.as_ref().map(|f| f.1.as_str()),
            Some("BackoffLimitExceeded")
        );
        let j = job(
            json!({"completions": 1, "parallelism": 1, "activeDeadlineSeconds": 60}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let running = pod("r", "Running", true, None);
        let p = plan(&j, &[&running], now(), true);
        assert_eq!(
            p.finished.as_ref().map(|f| f.1.as_str()),
            Some("DeadlineExceeded")
        );
        assert_eq!(p.delete, ["r"]);
        // Suspended, the deadline does not run; resumed, its clock starts again.
        let j = job(
            json!({"completions": 1, "activeDeadlineSeconds": 60, "suspend": true}),
            json!({"startTime": "2026-01-01T00:00:00Z"}),
        );
        let p = plan(&j, &[], now(), true);
        assert!(p.finished.is_none() && has_condition(&p.status, "Suspended"));
        let resumed = job(
            json!({"completions": 1, "activeDeadlineSeconds": 60}),
            serde_json::to_value(&p.status).expect("status"),
        );
        let p = plan(&resumed, &[], now(), true);
        assert!(p.finished.is_none());
        assert_eq!(p.status.start_time.map(|t| t.0), Some(now()));
        assert_eq!(p.create, [None]);
    }

    #[test]
    fn pod_failure_policy_fails_ignores_or_counts() {
        let spec = json!({"completions": 1, "parallelism": 1, "backoffLimit": 3,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}}]}});
        let failed = |name: &str, code: i32, disrupted: bool| -> Pod {
            let mut conditions = vec![json!({"type": "Ready", "status": "False"})];
            if disrupted {
                conditions.push(json!({"type": "DisruptionTarget", "status": "True"}));
            }
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                    "finalizers": [TRACKING_FINALIZER]},
                "spec": {"containers": []},
                "status": {"phase": "Failed", "conditions": conditions,
                    "containerStatuses": [{"name": "main", "image": "i", "imageID": "",
                        "ready": false, "restartCount": 0,
                        "state": {"terminated": {"exitCode": code,
                            "finishedAt": "2026-01-01T00:09:55Z"}}}]}
            }))
            .expect("pod")
        };
        let j = job(spec.clone(), json!({"startTime": "2026-01-01T00:00:00Z"}));
        // Exit code 42: the Job fails at once, whatever the backoff limit.
        let p = plan(&j, &[&failed("a", 42, false)], now(), true);
        assert!(has_condition(&p.status, "Failed") && has_condition(&p.status, "FailureTarget"));
        let (warning, reason, message) = p.finished.clone().expect("finished");
        assert!(warning);
        assert_eq!(reason, "PodFailurePolicy");
        assert_eq!(
            message,
            "Container main for pod ns/a failed with exit code 42 matching FailJob rule at index 0"
        );
        assert_eq!(
            p.status.uncounted_terminated_pods.and_then(|u| u.failed),
            Some(vec!["uid-a".to_owned()])
        );
        // A disrupted pod is not counted, but released and replaced.
        let p = plan(&j, &[&failed("b", 1, true)], now(), true);
        assert!(p.finished.is_none());
        assert_eq!(p.release, ["b"]);
        assert_eq!(
            p.status.uncounted_terminated_pods.and_then(|u| u.failed),
            Some(vec![])
        );
        assert_eq!(p.create, [None]);
        // Anything else counts.
        let p = plan(&j, &[&failed("c", 1, false)], now(), true);
        assert_eq!(
            p.status.uncounted_terminated_pods.and_then(|u| u.failed),
            Some(vec!["uid-c".to_owned()])
        );
        assert_eq!(
            pod_failure_verdict(&j, &failed("d", 7, false)),
            PolicyVerdict::Count
        );
    }

    #[test]
    fn indexed_jobs_run_each_index_once() {
        let spec = json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"});
        let j = job(spec.clone(), json!({}));
        assert_eq!(
            plan(&j, &[], now(), true).create,
            [Some(0), Some(1), Some(2)]
        );
        let one = pod("one", "Succeeded", true, Some(1));
        let zero = pod("zero", "Running", true, Some(0));
        let p = plan(&j, &[&one, &zero], now(), true);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("1"));
        assert_eq!(p.create, [Some(2)]);
        let made = pod_for(&j, Some(2));
        assert_eq!(made.metadata.generate_name.as_deref(), Some("j-2-"));
        assert_eq!(
            made.spec.as_ref().and_then(|s| s.hostname.as_deref()),
            Some("j-2")
        );
        let j = job(spec, json!({"completedIndexes": "0-2"}));
        assert!(has_condition(
            &plan(&j, &[], now(), true).status,
            "Complete"
        ));
    }

    #[test]
    fn finished_jobs_expire_after_their_ttl_and_indexes_round_trip() {
        let j = job(
            json!({"completions": 1, "ttlSecondsAfterFinished": 100}),
            json!({"completionTime": "2026-01-01T00:05:00Z", "conditions": [
                {"type": "Complete", "status": "True"}]}),
        );
        let p = plan(&j, &[], now(), true);
        assert!(p.expire);
        let later = job(
            json!({"completions": 1, "ttlSecondsAfterFinished": 600}),
            json!({"completionTime": "2026-01-01T00:05:00Z", "conditions": [
                {"type": "Complete", "status": "True"}]}),
        );
        let p = plan(&later, &[], now(), true);
        assert!(!p.expire);
        assert_eq!(p.requeue, Some(Duration::from_secs(300)));
        let set = parse_indexes("0-2,4,6-7");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 1, 2, 4, 6, 7]);
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }
}
