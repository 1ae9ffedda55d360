//! The CronJob controller (kube-controller-manager's `cronjob-controller`, v2): creates a Job
//! for each scheduled time.
//!
//! Each pass reads the CronJob's Jobs from the shared Job store and [`plan`]s: the most recent
//! scheduled time not yet run since `status.lastScheduleTime` (or creation), in `timeZone`
//! (the controller's local zone without one), so runs missed while the controller was down are
//! handled on its return as upstream does: only the latest one runs, and not at all once more
//! than `startingDeadlineSeconds` late. A Job is named after its scheduled minute
//! (`<cronjob>-<unix minutes>`), so a pass repeated after a crash finds it instead of running
//! it twice. `concurrencyPolicy` Forbid skips a run while a Job is active, Replace deletes the
//! active ones first; `suspend` stops new runs; finished Jobs beyond the history limits are
//! deleted oldest first. The controller wakes again at the next scheduled time.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use serde_json::json;
use shoal_api::cron::Schedule;
use tracing::{info, warn};

use crate::Error;
use crate::pods::{controller_of, controller_ref};

/// Annotation of a Job with the time it was scheduled for.
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// What one pass should do for a CronJob.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Create the Job for this scheduled time.
    pub create: Option<Timestamp>,
    /// Active Jobs to delete first (Replace).
    pub replace: Vec<String>,
    /// Finished Jobs beyond the history limits.
    pub prune: Vec<String>,
    /// The status to write.
    pub status: CronJobStatus,
    /// A run was skipped: (reason, message) for a Warning event.
    pub missed: Option<(String, String)>,
    /// When to look again (the next scheduled time).
    pub requeue: Option<Duration>,
}

fn finished(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

/// The Job name for a run scheduled at `at`.
pub fn job_name(cronjob: &str, at: Timestamp) -> String {
    format!("{cronjob}-{}", at.as_second().div_euclid(60))
}

/// Decides what to do at `now` for `cj` given the Jobs it controls; `Err` when its schedule or
/// time zone cannot be used (admission refuses those; this guards older objects).
pub fn plan(cj: &CronJob, jobs: &[&Job], now: Timestamp) -> Result<Plan, String> {
    let spec = cj.spec.clone().unwrap_or_default();
    let (prefix, text) = shoal_api::cron::split_zone(&spec.schedule);
    let schedule = Schedule::parse(text)?;
    let tz = match spec.time_zone.as_deref().or(prefix) {
        Some(name) => shoal_api::cron::zone(name)?,
        None => k8s_openapi::jiff::tz::TimeZone::system(),
    };
    let mut out = Plan::default();
    let mut status = cj.status.clone().unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();

    let reference = |job: &Job| ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        field_path: None,
    };
    let active: Vec<&Job> = jobs
        .iter()
        .copied()
        .filter(|j| finished(j).is_none())
        .collect();
    status.active = (!active.is_empty()).then(|| active.iter().map(|j| reference(j)).collect());
    let last_success = jobs
        .iter()
        .filter(|j| finished(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.as_ref().map(|t| t.0))
        .max();
    if let Some(t) = last_success
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|old| old.0 < t)
    {
        status.last_successful_time = Some(Time(t));
    }

    // History: oldest finished Jobs beyond the limits.
    for (kind, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| finished(j) == Some(kind))
            .collect();
        done.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        out.prune.extend(
            done.iter()
                .take(excess)
                .filter_map(|j| j.metadata.name.clone()),
        );
    }

    // The most recent scheduled time due and not yet run.
    let created = cj
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now);
    let mut earliest = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
    let deadline = spec
        .starting_deadline_seconds
        .map(|s| SignedDuration::from_secs(s.max(0)));
    if let Some(d) = deadline
        && let Ok(cutoff) = now.checked_sub(d)
        && cutoff > earliest
    {
        earliest = cutoff;
    }
    out.requeue = schedule
        .next_after(now, &tz)
        .and_then(|next| Duration::try_from(next.duration_since(now)).ok());
    if spec.suspend == Some(true) {
        out.status = status;
        return Ok(out);
    }
    let mut most_recent = None;
    let mut missed = 0usize;
    let mut first = None;
    let mut t = schedule.next_after(earliest, &tz);
    while let Some(at) = t.filter(|at| *at <= now) {
        most_recent = Some(at);
        first.get_or_insert(at);
        missed += 1;
        t = schedule.next_after(at, &tz);
        // Past 100 misses, jump to two average intervals before now and walk from there.
        if missed.is_multiple_of(100)
            && let Some(first) = first
        {
            let span = at.duration_since(first) / 99 * 2;
            if let Ok(from) = now.checked_sub(span)
                && from > at
            {
                t = schedule.next_after(from, &tz);
            }
        }
    }
    if missed > 100 {
        out.missed = Some((
            "TooManyMissedTimes".into(),
            format!("too many missed start times: {missed}; only the most recent runs"),
        ));
    }
    out.status = status;
    let Some(at) = most_recent else {
        return Ok(out);
    };
    if deadline.is_some_and(|d| now.duration_since(at) > d) {
        out.missed = Some((
            "MissSchedule".into(),
            format!("Missed scheduled time to start a job: {at}"),
        ));
        return Ok(out);
    }
    let wanted = job_name(&name, at);
    if jobs
        .iter()
        .any(|j| j.metadata.name.as_deref() == Some(wanted.as_str()))
    {
        out.status.last_schedule_time = Some(Time(at));
        return Ok(out);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => return Ok(out),
        Some("Replace") => {
            out.replace = active
                .iter()
                .filter_map(|j| j.metadata.name.clone())
                .collect();
        }
        _ => {}
    }
    out.create = Some(at);
    out.status.last_schedule_time = Some(Time(at));
    Ok(out)
}

/// The Job of the run scheduled at `at`.
pub fn job_for(cj: &CronJob, at: Timestamp) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_AT.to_owned(), at.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(
                cj.metadata.name.as_deref().unwrap_or_default(),
                at,
            )),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref("batch/v1", "CronJob", &cj.metadata)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// What the CronJob reconciler shares across calls.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All Jobs, kept by a reflector.
    pub jobs: Store<Job>,
    /// Events as `cronjob-controller`.
    pub events: shoal_events::Recorder,
}

/// Runs one CronJob's schedule.
pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = cj.metadata.namespace.clone().unwrap_or_default();
    let name = cj.metadata.name.clone().unwrap_or_default();
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs: Vec<Arc<Job>> = ctx.jobs.state_filter(|j| {
        j.metadata.namespace.as_deref() == Some(namespace.as_str())
            && controller_of(&j.metadata).is_some_and(|o| o.uid == uid)
    });
    let refs: Vec<&Job> = jobs.iter().map(|j| j.as_ref()).collect();
    let cj_ref = shoal_events::reference(cj.as_ref());
    let plan = match plan(&cj, &refs, Timestamp::now()) {
        Ok(plan) => plan,
        Err(message) => {
            warn!(cronjob = %name, %message, "cannot schedule");
            ctx.events.warning(&cj_ref, "InvalidSchedule", message);
            return Ok(Action::await_change());
        }
    };
    let job_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some((reason, message)) = &plan.missed {
        ctx.events.warning(&cj_ref, reason, message.clone());
    }
    for job in plan.replace.iter().chain(&plan.prune) {
        match job_api.delete(job, &DeleteParams::background()).await {
            Ok(_) => ctx
                .events
                .normal(&cj_ref, "SuccessfulDelete", format!("Deleted job {job}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    if let Some(at) = plan.create {
        let job = job_for(&cj, at);
        let job_name = job.metadata.name.clone().unwrap_or_default();
        match job_api.create(&PostParams::default(), &job).await {
            Ok(_) => {
                info!(cronjob = %name, job = %job_name, scheduled = %at, "created job");
                ctx.events.normal(
                    &cj_ref,
                    "SuccessfulCreate",
                    format!("Created job {job_name}"),
                );
            }
            // Made by an earlier pass whose status write was lost.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(error) => {
                ctx.events.warning(
                    &cj_ref,
                    "FailedCreate",
                    format!("Error creating job: {error}"),
                );
                return Err(error.into());
            }
        }
    }
    if cj.status.as_ref() != Some(&plan.status) {
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({"status": plan.status});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(match plan.requeue {
        Some(after) => Action::requeue(after + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

/// Retries a failed pass after a pause (conflicts sooner).
pub fn error_policy(cj: Arc<CronJob>, error: &Error, _: Arc<Context>) -> Action {
    if error.is_conflict() {
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(cronjob = ?cj.metadata.name, %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn cronjob(spec: serde_json::Value, status: serde_json::Value) -> CronJob {
        let mut spec = spec;
        spec["jobTemplate"] = json!({"spec": {"template": {"spec": {"containers": []}}}});
        spec["timeZone"] = json!("UTC");
        serde_json::from_value(json!({
            "metadata": {"name": "cj", "namespace": "ns", "uid": "cj-uid",
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec, "status": status,
        }))
        .expect("cronjob")
    }

    fn job(name: &str, done: Option<&str>, created: &str) -> Job {
        let conditions = done.map(|d| json!([{"type": d, "status": "True"}]));
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "status": {"conditions": conditions, "completionTime": created},
        }))
        .expect("job")
    }

    #[test]
    fn runs_the_most_recent_missed_time_once() {
        let cj = cronjob(json!({"schedule": "*/10 * * * *"}), json!({}));
        // Down from 00:00 to 00:35: only 00:30 runs.
        let p = plan(&cj, &[], ts("2026-01-01T00:35:00Z")).expect("plan");
        assert_eq!(p.create, Some(ts("2026-01-01T00:30:00Z")));
        assert_eq!(p.requeue, Some(Duration::from_secs(300)));
        let name = job_name("cj", ts("2026-01-01T00:30:00Z"));
        // The Job exists already (a pass repeated after a crash): nothing more.
        let made = job(&name, None, "2026-01-01T00:30:01Z");
        let p = plan(&cj, &[&made], ts("2026-01-01T00:35:00Z")).expect("plan");
        assert_eq!(p.create, None);
        assert_eq!(
            p.status.last_schedule_time.map(|t| t.0),
            Some(ts("2026-01-01T00:30:00Z"))
        );
        assert_eq!(p.status.active.map(|a| a.len()), Some(1));
    }

    #[test]
    fn deadlines_policies_and_suspension() {
        let late = cronjob(
            json!({"schedule": "0 * * * *", "startingDeadlineSeconds": 60}),
            json!({}),
        );
        let p = plan(&late, &[], ts("2026-01-01T01:05:00Z")).expect("plan");
        assert_eq!(p.create, None);
        let in_time = plan(&late, &[], ts("2026-01-01T01:00:30Z")).expect("plan");
        assert_eq!(in_time.create, Some(ts("2026-01-01T01:00:00Z")));
        let running = job("cj-old", None, "2026-01-01T00:00:00Z");
        let forbid = cronjob(
            json!({"schedule": "0 * * * *", "concurrencyPolicy": "Forbid"}),
            json!({}),
        );
        assert_eq!(
            plan(&forbid, &[&running], ts("2026-01-01T01:00:10Z"))
                .expect("plan")
                .create,
            None
        );
        let replace = cronjob(
            json!({"schedule": "0 * * * *", "concurrencyPolicy": "Replace"}),
            json!({}),
        );
        let p = plan(&replace, &[&running], ts("2026-01-01T01:00:10Z")).expect("plan");
        assert_eq!(p.replace, ["cj-old"]);
        assert!(p.create.is_some());
        let suspended = cronjob(json!({"schedule": "0 * * * *", "suspend": true}), json!({}));
        assert_eq!(
            plan(&suspended, &[], ts("2026-01-01T01:00:10Z"))
                .expect("plan")
                .create,
            None
        );
        let bad = cronjob(json!({"schedule": "nonsense"}), json!({}));
        assert!(plan(&bad, &[], ts("2026-01-01T01:00:10Z")).is_err());
    }

    #[test]
    fn history_keeps_the_newest_finished_jobs() {
        let cj = cronjob(
            json!({"schedule": "0 0 1 1 *", "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 1}),
            json!({}),
        );
        let jobs = [
            job("a", Some("Complete"), "2026-01-01T00:01:00Z"),
            job("b", Some("Complete"), "2026-01-01T00:02:00Z"),
            job("c", Some("Failed"), "2026-01-01T00:03:00Z"),
            job("d", Some("Failed"), "2026-01-01T00:04:00Z"),
        ];
        let refs: Vec<&Job> = jobs.iter().collect();
        let p = plan(&cj, &refs, ts("2026-01-01T00:05:00Z")).expect("plan");
        assert_eq!(p.prune, ["a", "c"]);
        assert_eq!(
            p.status.last_successful_time.map(|t| t.0),
            Some(ts("2026-01-01T00:02:00Z"))
        );
    }
}
