//! Event (core/v1): what happened to an object, as kubelets, controllers and `kubectl
//! describe` use it. Its Table columns are shared with `events.k8s.io/v1` Events.

use k8s_openapi::api::core::v1 as api;
use serde_json::{Value, json};

use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::{Column, col, i, name_col, s, since};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `events` (`/api/v1`).
pub static EVENT: ResourceType = ResourceType {
    group: "",
    version: "v1",
    kind: "Event",
    list_kind: "EventList",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
    strategy: &CoreEvent,
};

struct CoreEvent;

/// The field selectors Events support in either API version.
pub(crate) const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
];

impl Strategy for CoreEvent {
    /// Events are many and short-lived: the garbage collector leaves them alone.
    fn garbage_collected(&self) -> bool {
        false
    }

    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::Event>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::Event>())
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_core_event(obj, errs);
    }

    fn selectable_fields(&self) -> &'static [&'static str] {
        EVENT_FIELDS
    }

    fn columns(&self) -> Vec<Column> {
        event_columns()
    }

    fn row(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        event_cells(obj, now)
    }
}

/// Events have no Name column first: Kubernetes lists it last, at priority 1.
pub(crate) fn event_columns() -> Vec<Column> {
    vec![
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
    ]
}

fn validate_core_event(obj: &Value, errs: &mut Vec<FieldError>) {
    let ns = crate::meta::namespace(obj).unwrap_or_default();
    let involved_ns = obj
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !involved_ns.is_empty() && involved_ns != ns {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(involved_ns),
            "does not match event.namespace",
        ));
    }
    if let Some(t) = obj.get("type").and_then(Value::as_str)
        && !t.is_empty()
        && t != "Normal"
        && t != "Warning"
    {
        errs.push(FieldError::not_supported(
            "type",
            &json!(t),
            &["Normal", "Warning"],
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Defaulting

pub(crate) fn event_cells(ev: &Value, now: jiff::Timestamp) -> Vec<Value> {
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
