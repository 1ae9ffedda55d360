//! CronJob: creates Jobs on a schedule.

use k8s_openapi::api::batch::v1 as api;
use serde_json::{Map, Value, json};

use super::{default_job_spec, validate_job_spec};
use crate::defaults::{obj_mut, set_default};
use crate::registry::ResourceType;
use crate::strategy::{Requester, Strategy, drop_status};
use crate::table::{
    Column, age_col, arr, col, name_and_age, name_col, or_none, s, since, workload_wide,
    workload_wide_cells,
};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `cronjobs` (`/apis/batch/v1`).
pub static CRON_JOB: ResourceType = ResourceType {
    group: "batch",
    version: "v1",
    kind: "CronJob",
    list_kind: "CronJobList",
    plural: "cronjobs",
    singular: "cronjob",
    namespaced: true,
    short_names: &["cj"],
    categories: &["all"],
    subresources: &["status"],
    strategy: &CronJob,
};

struct CronJob;

impl Strategy for CronJob {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::CronJob>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::CronJob>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj_mut(obj, "spec") {
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            let jt = spec.entry("jobTemplate").or_insert_with(|| json!({}));
            if let Some(job_spec) = obj_mut(jt, "spec") {
                default_job_spec(job_spec);
            }
        }
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        // Its Jobs are named `<name>-<minutes>` and labelled with that name (63 at most).
        if let Some(name) = crate::meta::name(obj)
            && name.len() > 52
        {
            errs.push(FieldError::invalid(
                "metadata.name",
                &json!(name),
                "must be no more than 52 characters",
            ));
        }
        let spec = obj.get("spec").unwrap_or(&Value::Null);
        match spec.get("schedule").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required("spec.schedule", "")),
            Some(schedule) => validate_schedule(schedule, spec, errs),
        }
        let job_spec = spec.pointer("/jobTemplate/spec").unwrap_or(&Value::Null);
        validate_job_spec(job_spec, "spec.jobTemplate.spec", errs);
    }

    fn pod_spec_path(&self) -> Option<&'static [&'static str]> {
        Some(&["spec", "jobTemplate", "spec", "template", "spec"])
    }

    fn columns(&self) -> Vec<Column> {
        let mut c = vec![
            name_col(),
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
        ];
        c.extend(workload_wide());
        c
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let last = s(obj, "/status/lastScheduleTime");
        let mut cells = vec![
            name,
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
        ];
        cells.extend(workload_wide_cells(
            obj,
            "/spec/jobTemplate/spec/template/spec",
            obj.pointer("/spec/jobTemplate/spec/selector"),
        ));
        cells
    }
}

/// Upstream's checks of `spec.schedule` and `spec.timeZone`: a schedule the cron parser
/// accepts, a known zone, and not both a zone field and a `TZ=` prefix.
fn validate_schedule(schedule: &str, spec: &Value, errs: &mut Vec<FieldError>) {
    let (prefix, rest) = crate::cron::split_zone(schedule);
    if let Err(message) = crate::cron::Schedule::parse(rest) {
        errs.push(FieldError::invalid(
            "spec.schedule",
            &json!(schedule),
            &message,
        ));
    }
    let field = spec.get("timeZone").and_then(Value::as_str);
    if field.is_some() && prefix.is_some() {
        errs.push(FieldError::invalid(
            "spec.schedule",
            &json!(schedule),
            "cannot use both timeZone field and TZ or CRON_TZ in schedule",
        ));
    }
    if let Some(zone) = prefix
        && let Err(message) = crate::cron::zone(zone)
    {
        errs.push(FieldError::invalid(
            "spec.schedule",
            &json!(schedule),
            &message,
        ));
    }
    if let Some(zone) = field
        && let Err(message) = crate::cron::zone(zone)
    {
        errs.push(FieldError::invalid("spec.timeZone", &json!(zone), &message));
    }
}
