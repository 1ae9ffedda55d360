//! CertificateSigningRequest: who filed it is recorded by the apiserver, never taken from the
//! body; its spec never changes; approval and the certificate are status writes.

use k8s_openapi::api::certificates::v1 as api;
use serde_json::{Map, Value, json};

use crate::registry::ResourceType;
use crate::strategy::{Requester, Strategy, drop_status};
use crate::validation::{FieldError, ShapeError, UnknownField, typed};

/// `certificatesigningrequests` (`/apis/certificates.k8s.io/v1`).
pub static CERTIFICATE_SIGNING_REQUEST: ResourceType = ResourceType {
    group: "certificates.k8s.io",
    version: "v1",
    kind: "CertificateSigningRequest",
    list_kind: "CertificateSigningRequestList",
    plural: "certificatesigningrequests",
    singular: "certificatesigningrequest",
    namespaced: false,
    short_names: &["csr"],
    categories: &[],
    subresources: &["status", "approval"],
    strategy: &CertificateSigningRequest,
};

struct CertificateSigningRequest;

impl Strategy for CertificateSigningRequest {
    fn check_shape(&self, obj: &Value, unknown: &mut Vec<UnknownField>) -> Result<(), ShapeError> {
        typed::<api::CertificateSigningRequest>(obj, unknown)
    }

    fn type_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(generator.subschema_for::<api::CertificateSigningRequest>())
    }

    fn prepare_for_create(&self, obj: &mut Map<String, Value>, requester: &Requester) {
        drop_status(obj);
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("username".into(), json!(requester.name));
            spec.insert("groups".into(), json!(requester.groups));
            spec.remove("uid");
            spec.remove("extra");
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_spec(obj.get("spec").unwrap_or(&Value::Null), errs);
    }

    fn validate_update(&self, obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
        if old.get("spec") != obj.get("spec") {
            errs.push(FieldError::invalid(
                "spec",
                &Value::Null,
                "field is immutable",
            ));
        }
    }
}

fn validate_spec(spec: &Value, errs: &mut Vec<FieldError>) {
    match spec.get("signerName").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("spec.signerName", "")),
        Some(name) if !name.contains('/') => errs.push(FieldError::invalid(
            "spec.signerName",
            &json!(name),
            "must be a fully qualified domain and path of the form 'example.com/signer-name'",
        )),
        Some(_) => {}
    }
    if spec
        .get("request")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        errs.push(FieldError::required("spec.request", ""));
    }
}
