//! Event (events.k8s.io/v1): the newer shape of core Events (`regarding`, `note`), printed
//! with the same columns.

use k8s_openapi::api::events::v1 as api;
use serde_json::{Value, json};

use crate::kinds::core::event::{EVENT_FIELDS, event_cells, event_columns};
use crate::registry::ResourceType;
use crate::strategy::Strategy;
use crate::table::Column;
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `events` (`/apis/events.k8s.io/v1`).
pub static EVENT: ResourceType = ResourceType {
    group: "events.k8s.io",
    version: "v1",
    kind: "Event",
    list_kind: "EventList",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
    strategy: &Event,
};

struct Event;

impl Strategy for Event {
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
