//! `shoal apply -f FILE`: creates each object of a manifest, or updates it in place when it
//! exists (the stored object's `resourceVersion` makes the update conditional, so a concurrent
//! change is reported, not overwritten). Unlike kubectl's three-way merge it replaces the spec:
//! fields removed from the manifest are removed from the object.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::client::{self, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file (YAML or JSON; `-` reads standard input).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run(args: Args) -> Result<()> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let objects = client::parse_manifests(&text)?;
    let (api, default_namespace) = client::connect(&args.client).await?;
    for mut object in objects {
        let api_version = str_field(&object, "apiVersion")?.to_string();
        let kind = str_field(&object, "kind")?.to_string();
        let rt = client::resolve_kind(&api_version, &kind)?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{kind} has no metadata.name"))?
            .to_string();
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| default_namespace.clone());
        if rt.namespaced {
            object["metadata"]["namespace"] = Value::String(namespace.clone());
        }
        let path = client::object_path(rt, &namespace, &name);
        let display = if rt.group.is_empty() {
            format!("{}/{name}", rt.singular)
        } else {
            format!("{}.{}/{name}", rt.singular, rt.group)
        };
        // Update in place when the object exists, conditional on its resourceVersion.
        let (method, target, verb) =
            match client::send(&api, http::Method::GET, &path, None, None, Vec::new()).await {
                Ok(current) => {
                    let current: Value =
                        serde_json::from_str(&current).context("decoding the stored object")?;
                    object["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    (http::Method::PUT, path, "configured")
                }
                Err(err) if client::is_not_found(&err) => (
                    http::Method::POST,
                    client::collection_path(rt, Some(&namespace)),
                    "created",
                ),
                Err(err) => return Err(err),
            };
        let body = serde_json::to_vec(&object)?;
        client::send(&api, method, &target, Some("application/json"), None, body).await?;
        println!("{display} {verb}");
    }
    Ok(())
}

fn str_field<'a>(object: &'a Value, field: &str) -> Result<&'a str> {
    object
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("manifest object has no {field}"))
}
