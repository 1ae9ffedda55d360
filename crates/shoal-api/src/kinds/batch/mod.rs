//! The `batch` group (`/apis/batch/v1`).

use serde_json::{Map, Value, json};

use crate::defaults::{default_pod_spec, obj_mut, set_default};
use crate::validation::{FieldError, validate_pod_spec};

pub mod cronjob;
pub mod job;

/// Validates a JobSpec at `path` (`spec`, or `spec.jobTemplate.spec` in a CronJob).
fn validate_job_spec(spec: &Value, path: &str, errs: &mut Vec<FieldError>) {
    for key in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if let Some(n) = spec.get(key).and_then(Value::as_i64)
            && n < 0
        {
            errs.push(FieldError::invalid(
                format!("{path}.{key}"),
                &json!(n),
                "must be greater than or equal to 0",
            ));
        }
    }
    let Some(pod_spec) = spec.pointer("/template/spec") else {
        errs.push(FieldError::required(
            format!("{path}.template.spec.containers"),
            "",
        ));
        return;
    };
    validate_pod_spec(pod_spec, &format!("{path}.template.spec"), errs);
    // validate_pod_spec already reported a missing or unknown restartPolicy.
    if let Some(rp) = pod_spec.get("restartPolicy")
        && rp.as_str() == Some("Always")
    {
        errs.push(FieldError::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            rp,
            &["OnFailure", "Never"],
        ));
    }
}

/// Defaults a JobSpec (a Job's, or a CronJob's template).
fn default_job_spec(spec: &mut Map<String, Value>) {
    let has_completions = spec.get("completions").is_some_and(|v| !v.is_null());
    let has_parallelism = spec.get("parallelism").is_some_and(|v| !v.is_null());
    if !has_completions && !has_parallelism {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    let template = spec.entry("template").or_insert_with(|| json!({}));
    if let Some(pod_spec) = obj_mut(template, "spec") {
        // A Job's template keeps the restartPolicy the user gave (validation insists on one).
        let rp = pod_spec.get("restartPolicy").cloned();
        default_pod_spec(pod_spec);
        match rp {
            Some(rp) => pod_spec.insert("restartPolicy".into(), rp),
            None => pod_spec.shift_remove("restartPolicy"),
        };
    }
}
