//! Client side of the CLI: loading a kubeconfig, resolving resource names (`po`, `pods`,
//! `deployment.apps`) against Shoal's built-in registry, and raw requests to the apiserver.
//! It does not cache discovery: Shoal's resource set is compiled into this same binary.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};
use shoal_api::registry::{ResourceType, resource_types};

/// Flags every API subcommand shares.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Path to the kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace for namespaced resources.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// Builds a client from the kubeconfig named by the flags or the environment.
pub async fn connect(args: &ClientArgs) -> Result<(kube::Client, String)> {
    let path = match &args.kubeconfig {
        Some(path) => path.clone(),
        None => default_kubeconfig()?,
    };
    let kubeconfig = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).context("building the API client")?;
    Ok((client, namespace))
}

fn default_kubeconfig() -> Result<PathBuf> {
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .as_deref()
        .and_then(|paths| std::env::split_paths(paths).next())
    {
        return Ok(first);
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("neither KUBECONFIG nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}

/// Resolves what a user types (`pods`, `pod`, `po`, `Pod`, `deployments.apps`) to a resource.
pub fn resolve(name: &str) -> Result<&'static ResourceType> {
    let lower = name.to_ascii_lowercase();
    let (resource, group) = match lower.split_once('.') {
        Some((resource, group)) => (resource.to_string(), Some(group.to_string())),
        None => (lower.clone(), None),
    };
    let mut found = resource_types().iter().copied().filter(|rt| {
        group.as_deref().is_none_or(|g| g == rt.group)
            && (rt.plural == resource
                || rt.singular == resource
                || rt.kind.eq_ignore_ascii_case(&resource)
                || rt.short_names.contains(&resource.as_str()))
    });
    // Prefer the core/preferred group when a name is ambiguous (events vs events.k8s.io).
    found
        .next()
        .ok_or_else(|| anyhow!("the server doesn't have a resource type {name:?}"))
}

/// Resolves a manifest's `apiVersion` + `kind`.
pub fn resolve_kind(api_version: &str, kind: &str) -> Result<&'static ResourceType> {
    let (group, version) = match api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", api_version),
    };
    shoal_api::registry::find_by_kind(group, version, kind)
        .ok_or_else(|| anyhow!("no matches for kind {kind:?} in version {api_version:?}"))
}

/// The collection path of `rt`, in `namespace` when it is namespaced.
pub fn collection_path(rt: &ResourceType, namespace: Option<&str>) -> String {
    let base = if rt.group.is_empty() {
        format!("/api/{}", rt.version)
    } else {
        format!("/apis/{}/{}", rt.group, rt.version)
    };
    match (rt.namespaced, namespace) {
        (true, Some(ns)) => format!("{base}/namespaces/{ns}/{}", rt.plural),
        _ => format!("{base}/{}", rt.plural),
    }
}

/// The path of one object.
pub fn object_path(rt: &ResourceType, namespace: &str, name: &str) -> String {
    format!("{}/{name}", collection_path(rt, Some(namespace)))
}

/// Sends a request and returns the body, turning a Kubernetes `Status` into an error that
/// prints its message as kubectl does.
pub async fn send(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    content_type: Option<&str>,
    accept: Option<&str>,
    body: Vec<u8>,
) -> Result<String> {
    let mut request = http::Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        request = request.header(http::header::CONTENT_TYPE, content_type);
    }
    if let Some(accept) = accept {
        request = request.header(http::header::ACCEPT, accept);
    }
    let request = request.body(body).context("building the request")?;
    client.request_text(request).await.map_err(api_error)
}

/// Whether an error is the API's 404.
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.downcast_ref::<ApiError>()
        .is_some_and(|e| e.code == 404)
}

/// A Kubernetes `Status` failure, printed like kubectl prints it.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.reason)
    }
}

impl std::error::Error for ApiError {}

fn api_error(err: kube::Error) -> anyhow::Error {
    match err {
        kube::Error::Api(status) => anyhow::Error::new(ApiError {
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
        }),
        other => anyhow::Error::new(other).context("talking to the apiserver"),
    }
}

/// Splits a multi-document YAML or JSON manifest into objects (`List` kinds are flattened).
pub fn parse_manifests(text: &str) -> Result<Vec<serde_json::Value>> {
    let docs: Vec<serde_json::Value> = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str(text).context("parsing JSON manifest")?]
    } else {
        serde_saphyr::from_multiple(text).map_err(|err| anyhow!("parsing YAML manifest: {err}"))?
    };
    let mut objects = Vec::new();
    for doc in docs {
        if doc.is_null() {
            continue;
        }
        let is_list = doc
            .get("kind")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k.ends_with("List"));
        if let Some(items) = doc
            .get("items")
            .and_then(|i| i.as_array())
            .filter(|_| is_list)
        {
            objects.extend(items.iter().cloned());
            continue;
        }
        if !doc.is_object() {
            bail!("manifest document is not an object: {doc}");
        }
        objects.push(doc);
    }
    Ok(objects)
}
