//! The core group (`/api/v1`).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::validation::{CONFIG_KEY_ERROR, FieldError, MAX_CONFIG_DATA_SIZE, is_config_key};

pub mod configmap;
pub mod endpoints;
pub mod event;
pub mod namespace;
pub mod node;
pub mod pod;
pub mod quota;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod volumes;

/// Validates the key-value sections of a ConfigMap or Secret: keys, total size and (for
/// ConfigMaps, whose `data` and `binaryData` share one key space) duplicates.
fn validate_data(obj: &Value, sections: &[&str], unique_keys: bool, errs: &mut Vec<FieldError>) {
    let mut total = 0;
    let mut seen = BTreeSet::new();
    for section in sections {
        let Some(map) = obj.get(*section).and_then(Value::as_object) else {
            continue;
        };
        for (k, v) in map {
            if !is_config_key(k) {
                errs.push(FieldError::invalid(
                    format!("{section}[{k}]"),
                    &json!(k),
                    CONFIG_KEY_ERROR,
                ));
            }
            if unique_keys && !seen.insert(k.as_str()) {
                errs.push(FieldError::duplicate(format!("{section}[{k}]"), &json!(k)));
            }
            total += v.as_str().map_or(0, str::len);
        }
    }
    if total > MAX_CONFIG_DATA_SIZE {
        errs.push(FieldError::too_long(sections[0], MAX_CONFIG_DATA_SIZE));
    }
}

/// Once `immutable` is set, neither it nor the data sections may change.
fn validate_immutable_data(
    obj: &Value,
    old: &Value,
    sections: &[&str],
    errs: &mut Vec<FieldError>,
) {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if obj.get("immutable").and_then(Value::as_bool) != Some(true) {
        errs.push(FieldError::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for section in sections {
        if obj.get(*section) != old.get(*section) {
            errs.push(FieldError::forbidden(
                *section,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}
