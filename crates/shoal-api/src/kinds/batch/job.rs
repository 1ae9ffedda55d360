//! Job: runs pods to completion.

use k8s_openapi::api::batch::v1 as api;
use serde_json::{Map, Value, json};

use super::{default_job_spec, validate_job_spec};
use crate::defaults::obj_mut;
use crate::registry::ResourceType;
use crate::strategy::{Requester, Strategy, drop_status};
use crate::table::{
    Column, age_col, col, has_condition, human_age, i, name_and_age, name_col, s, workload_wide,
    workload_wide_cells,
};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `jobs` (`/apis/batch/v1`).
pub static JOB: ResourceType = ResourceType {
    group: "batch",
    version: "v1",
    kind: "Job",
    list_kind: "JobList",
    plural: "jobs",
    singular: "job",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    subresources: &["status"],
    strategy: &Job,
};

struct Job;

impl Strategy for Job {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Job>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Job>())
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj_mut(obj, "spec") {
            default_job_spec(spec);
        }
    }

    /// As upstream's Job strategy: unless `spec.manualSelector`, the selector is generated
    /// from the Job's uid and its template gets the matching labels (`controller-uid`,
    /// `job-name`, with and without the `batch.kubernetes.io/` prefix).
    fn prepare_for_create(&self, obj: &mut Map<String, Value>, _: &Requester) {
        drop_status(obj);
        let uid = obj
            .get("metadata")
            .and_then(|m| m.get("uid"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = obj
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
            return;
        }
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let template = spec.entry("template").or_insert_with(|| json!({}));
        let Some(metadata) = obj_mut(template, "metadata") else {
            return;
        };
        let labels = metadata.entry("labels").or_insert_with(|| json!({}));
        if labels.is_null() {
            *labels = json!({});
        }
        if let Some(labels) = labels.as_object_mut() {
            for (key, value) in [
                ("batch.kubernetes.io/controller-uid", &uid),
                ("controller-uid", &uid),
                ("batch.kubernetes.io/job-name", &name),
                ("job-name", &name),
            ] {
                labels.insert(key.into(), json!(value));
            }
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_job_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        &["status.successful"]
    }

    fn pod_spec_path(&self) -> Option<&'static [&'static str]> {
        Some(&["spec", "template", "spec"])
    }

    fn columns(&self) -> Vec<Column> {
        let mut c = vec![
            name_col(),
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
        ];
        c.extend(workload_wide());
        c
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let (name, age) = name_and_age(obj, now);
        let mut cells = vec![name];
        cells.extend(job_cells(obj, age, now));
        cells
    }
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
