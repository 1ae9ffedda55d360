//! Translation of a pod's container spec into the runtime's vocabulary: argv, environment,
//! limits, pull policy and volume mounts.
//!
//! Pure functions only: no IO, no clock. Creating volume directories and opening mounts on disk
//! is the pod worker's job (`pods.rs`, `volumes.rs`), as is fetching ConfigMaps and Secrets: this module says which ones a container
//! needs ([`referenced_sources`]) and builds the environment and volume files from the
//! [`Sources`] it is given. Errors are [`ConfigError`]s, shown as `CreateContainerConfigError`.
//! Projected, downwardAPI and persistent volumes are not supported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use shoal_runtime::{
    ContainerPort, Limits, PodSandboxConfig, PodSandboxMetadata, PortMapping, Protocol, labels,
};

/// `imagePullPolicy` of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// Why a container's configuration cannot be built (becomes `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid quantity {value:?} for {resource}")]
    Quantity { resource: String, value: String },
    #[error("volume {0:?} referenced by a volumeMount is not defined in the pod")]
    MissingVolume(String),
}

/// Expands `$(VAR)` references the way Kubernetes does for `command`, `args` and env values:
/// `$$` is an escaped `$`, a reference to an unknown variable is kept verbatim.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's `command` and `args`, each with `$(VAR)` expanded from `env`; the runtime
/// joins them (and for a Wasm guest takes the container's name as argv[0] without a command).
pub fn container_command(
    container: &Container,
    env: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |name: &str| vars.get(name).map(|v| (*v).to_owned());
    let expand_all = |words: Option<&Vec<String>>| -> Vec<String> {
        words
            .map(|w| w.iter().map(|a| expand(a, &lookup)).collect())
            .unwrap_or_default()
    };
    (
        expand_all(container.command.as_ref()),
        expand_all(container.args.as_ref()),
    )
}

fn protocol(name: Option<&str>) -> Protocol {
    match name {
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        _ => Protocol::Tcp,
    }
}

/// The container's `ports`, for a runtime that serves the container itself.
pub fn container_ports(container: &Container) -> Vec<ContainerPort> {
    container
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ContainerPort {
                protocol: protocol(p.protocol.as_deref()),
                container_port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect()
}

/// A pod's namespace (`default` when unset), name and uid.
pub fn pod_identity(pod: &Pod) -> (String, String, String) {
    let meta = &pod.metadata;
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned()),
        meta.name.clone().unwrap_or_default(),
        meta.uid.clone().unwrap_or_default(),
    )
}

/// The sandbox of a pod: its identity, labels that let a restarted agent find it again, its log
/// directory under `logs_root`, and the host ports its containers publish.
pub fn sandbox_config(pod: &Pod, logs_root: &Path) -> PodSandboxConfig {
    let meta = &pod.metadata;
    let (namespace, name, uid) = pod_identity(pod);
    let spec = pod.spec.as_ref();
    let mut sandbox_labels: BTreeMap<String, String> = meta.labels.clone().unwrap_or_default();
    sandbox_labels.insert(labels::POD_NAME.to_owned(), name.clone());
    sandbox_labels.insert(labels::POD_NAMESPACE.to_owned(), namespace.clone());
    sandbox_labels.insert(labels::POD_UID.to_owned(), uid.clone());
    let port_mappings = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = u16::try_from(p.host_port?).ok().filter(|p| *p > 0)?;
            Some(PortMapping {
                protocol: protocol(p.protocol.as_deref()),
                container_port: u16::try_from(p.container_port).ok()?,
                host_port,
                host_ip: p.host_ip.as_deref().and_then(|ip| ip.parse().ok()),
            })
        })
        .collect();
    PodSandboxConfig {
        hostname: spec
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| name.clone()),
        log_directory: crate::logs::pod_log_dir(logs_root, &namespace, &name, &uid),
        labels: sandbox_labels,
        annotations: meta.annotations.clone().unwrap_or_default(),
        port_mappings,
        metadata: PodSandboxMetadata {
            name,
            namespace,
            uid,
            attempt: 0,
        },
    }
}

/// Values the downward API can give (`valueFrom.fieldRef`).
#[derive(Debug, Clone, Default)]
pub struct DownwardValues {
    pub pod_ip: String,
    pub host_ip: String,
}

fn field_value(pod: &Pod, path: &str, downward: &DownwardValues) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(key.to_owned())
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(downward.pod_ip.clone()),
        "status.hostIP" | "status.hostIPs" => Some(downward.host_ip.clone()),
        _ => {
            if let Some(key) = keyed("metadata.labels['") {
                return Some(meta.labels.as_ref()?.get(&key).cloned().unwrap_or_default());
            }
            if let Some(key) = keyed("metadata.annotations['") {
                return Some(
                    meta.annotations
                        .as_ref()?
                        .get(&key)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
            None
        }
    }
}

/// ConfigMap and Secret data a container refers to, fetched by the worker. A name absent from
/// the map does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub config_maps: HashMap<String, BTreeMap<String, Vec<u8>>>,
    pub secrets: HashMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Which kind of object a reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

impl SourceKind {
    fn label(self) -> &'static str {
        match self {
            SourceKind::ConfigMap => "configmap",
            SourceKind::Secret => "secret",
        }
    }
}

impl Sources {
    fn get(&self, kind: SourceKind, name: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        match kind {
            SourceKind::ConfigMap => self.config_maps.get(name),
            SourceKind::Secret => self.secrets.get(name),
        }
    }
}

/// The ConfigMaps and Secrets `container` needs: from `env`, `envFrom` and the volumes it mounts.
pub fn referenced_sources(pod: &Pod, container: &Container) -> BTreeSet<(SourceKind, String)> {
    let mut refs = BTreeSet::new();
    for var in container.env.as_deref().unwrap_or_default() {
        if let Some(source) = &var.value_from {
            if let Some(r) = &source.config_map_key_ref {
                refs.insert((SourceKind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &source.secret_key_ref {
                refs.insert((SourceKind::Secret, r.name.clone()));
            }
        }
    }
    for from in container.env_from.as_deref().unwrap_or_default() {
        if let Some(r) = &from.config_map_ref {
            refs.insert((SourceKind::ConfigMap, r.name.clone()));
        }
        if let Some(r) = &from.secret_ref {
            refs.insert((SourceKind::Secret, r.name.clone()));
        }
    }
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    for vm in container.volume_mounts.as_deref().unwrap_or_default() {
        let Some(volume) = volumes.iter().find(|v| v.name == vm.name) else {
            continue;
        };
        if let Some(cm) = &volume.config_map {
            refs.insert((SourceKind::ConfigMap, cm.name.clone()));
        }
        if let Some(secret) = &volume.secret {
            refs.insert((
                SourceKind::Secret,
                secret.secret_name.clone().unwrap_or_default(),
            ));
        }
    }
    refs
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The value of a `configMapKeyRef` / `secretKeyRef`; `None` when optional and absent.
fn key_ref(
    sources: &Sources,
    kind: SourceKind,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, ConfigError> {
    let Some(data) = sources.get(kind, name) else {
        return if optional {
            Ok(None)
        } else {
            Err(ConfigError::Unsupported(format!(
                "{} {name:?} not found",
                kind.label()
            )))
        };
    };
    match data.get(key) {
        Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
        None if optional => Ok(None),
        None => Err(ConfigError::Unsupported(format!(
            "couldn't find key {key} in {} {name}",
            kind.label()
        ))),
    }
}

/// The guest's environment: `envFrom` first, then `env` (values with `$(VAR)` expansion of
/// earlier entries, `valueFrom.fieldRef`, `resourceFieldRef`, `configMapKeyRef`,
/// `secretKeyRef`). A missing non-optional source is an error.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    downward: &DownwardValues,
    sources: &Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    for from in container.env_from.as_deref().unwrap_or_default() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
            (
                SourceKind::ConfigMap,
                r.name.as_str(),
                r.optional.unwrap_or(false),
            )
        } else if let Some(r) = &from.secret_ref {
            (
                SourceKind::Secret,
                r.name.as_str(),
                r.optional.unwrap_or(false),
            )
        } else {
            continue;
        };
        let Some(data) = sources.get(kind, name) else {
            if optional {
                continue;
            }
            return Err(ConfigError::Unsupported(format!(
                "{} {name:?} not found",
                kind.label()
            )));
        };
        for (key, value) in data {
            let var = format!("{prefix}{key}");
            if !valid_env_name(&var) {
                continue;
            }
            env.retain(|(k, _)| k != &var);
            env.push((var, String::from_utf8_lossy(value).into_owned()));
        }
    }
    for var in container.env.as_deref().unwrap_or_default() {
        let value = if let Some(source) = &var.value_from {
            if let Some(field) = &source.field_ref {
                field_value(pod, &field.field_path, downward).ok_or_else(|| {
                    ConfigError::Unsupported(format!(
                        "unsupported fieldRef {:?} in env {:?}",
                        field.field_path, var.name
                    ))
                })?
            } else if let Some(resource) = &source.resource_field_ref {
                resource_field_value(container, &resource.resource)?
            } else if let Some(r) = &source.config_map_key_ref {
                let optional = r.optional.unwrap_or(false);
                match key_ref(sources, SourceKind::ConfigMap, &r.name, &r.key, optional)? {
                    Some(value) => value,
                    None => continue,
                }
            } else if let Some(r) = &source.secret_key_ref {
                let optional = r.optional.unwrap_or(false);
                match key_ref(sources, SourceKind::Secret, &r.name, &r.key, optional)? {
                    Some(value) => value,
                    None => continue,
                }
            } else {
                return Err(ConfigError::Unsupported(format!(
                    "env {:?}: unsupported valueFrom",
                    var.name
                )));
            }
        } else {
            let current = &env;
            let lookup = |name: &str| {
                current
                    .iter()
                    .rev()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            expand(var.value.as_deref().unwrap_or_default(), &lookup)
        };
        env.retain(|(k, _)| k != &var.name);
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

fn resource_field_value(container: &Container, resource: &str) -> Result<String, ConfigError> {
    let (kind, name) = resource.split_once('.').unwrap_or(("", resource));
    let resources = container.resources.as_ref();
    let map = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    let Some(quantity) = map.and_then(|m| m.get(name)) else {
        return Ok("0".to_owned());
    };
    // With the default divisor of 1, Kubernetes rounds up to whole units (cores, bytes).
    let milli = parse_quantity_milli(&quantity.0).ok_or_else(|| ConfigError::Quantity {
        resource: resource.to_owned(),
        value: quantity.0.clone(),
    })?;
    Ok(milli
        .div_euclid(1000)
        .saturating_add(i128::from(milli.rem_euclid(1000) != 0))
        .to_string())
}

/// A Kubernetes quantity (`100m`, `1.5Gi`, `2e3`, `128974848`) in thousandths of its unit,
/// rounded up: cpu `100m` -> 100, memory `1Ki` -> 1_024_000. `None` if malformed.
pub fn parse_quantity_milli(text: &str) -> Option<i128> {
    shoal_api::quantity::parse_quantity(text.trim())
        .ok()
        .map(|q| q.millis())
}

/// Limits from `resources.limits`: cpu in millicores, memory in bytes.
pub fn container_limits(container: &Container) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    let Some(map) = container.resources.as_ref().and_then(|r| r.limits.as_ref()) else {
        return Ok(limits);
    };
    let parse = |name: &str| -> Result<Option<u64>, ConfigError> {
        let Some(q) = map.get(name) else {
            return Ok(None);
        };
        let milli = parse_quantity_milli(&q.0).ok_or_else(|| ConfigError::Quantity {
            resource: format!("limits.{name}"),
            value: q.0.clone(),
        })?;
        Ok(Some(u64::try_from(milli.max(0)).unwrap_or(u64::MAX)))
    };
    limits.cpu_millis = parse("cpu")?;
    limits.memory_bytes = parse("memory")?.map(|m| m.div_ceil(1000));
    Ok(limits)
}

/// `imagePullPolicy`, defaulted as Kubernetes does: `Always` for `:latest` or untagged images,
/// `IfNotPresent` otherwise.
pub fn pull_policy(container: &Container) -> PullPolicy {
    match container.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = container.image.as_deref().unwrap_or_default();
            if image.contains('@') {
                return PullPolicy::IfNotPresent;
            }
            let last = image.rsplit('/').next().unwrap_or(image);
            match last.split_once(':') {
                Some((_, "latest")) | None => PullPolicy::Always,
                Some(_) => PullPolicy::IfNotPresent,
            }
        }
    }
}

/// Where a mounted volume lives on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A directory the agent made for the pod (emptyDir, configMap, secret): `volumes_dir/<name>`.
    Pod(PathBuf),
    /// A `hostPath` volume: the path exactly as the pod spec gives it.
    Host(PathBuf),
}

/// One `volumeMount` of a container, checked against the pod's volumes but not yet resolved on
/// disk: the pod worker turns it into a [`shoal_runtime::Mount`] (see `volumes.rs`), opening the
/// subPath one component at a time so that symlinks a guest planted cannot redirect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    /// The volume's name in the pod spec.
    pub volume: String,
    pub source: VolumeSource,
    /// The `subPath` as given (empty: the whole volume).
    pub sub_path: String,
    /// The subPath's components: never empty, `.` or `..`.
    pub sub_components: Vec<String>,
    /// Absolute path inside the guest.
    pub container_path: String,
    pub read_only: bool,
}

/// Whether `name` can name a directory under `volumes_dir`: one plain path component.
fn valid_volume_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The components of a `subPath`: relative, without `..`; empty and `.` components are dropped.
pub fn sub_path_components(sub: &str) -> Result<Vec<String>, ConfigError> {
    if sub.starts_with('/') || sub.split('/').any(|c| c == "..") || sub.contains('\0') {
        return Err(ConfigError::Unsupported(format!(
            "subPath {sub:?} must be a relative path without '..'"
        )));
    }
    Ok(sub
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_owned)
        .collect())
}

/// The mounts of `container`: only volumes of the pod it names in `volumeMounts`. emptyDir,
/// configMap and secret volumes live under `volumes_dir/<name>`; hostPath volumes are the host
/// path itself.
pub fn container_mounts(
    pod: &Pod,
    container: &Container,
    volumes_dir: &Path,
) -> Result<Vec<PlannedMount>, ConfigError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.as_deref().unwrap_or_default() {
        let volume = volumes
            .iter()
            .find(|v| v.name == vm.name)
            .ok_or_else(|| ConfigError::MissingVolume(vm.name.clone()))?;
        if !valid_volume_name(&volume.name) {
            return Err(ConfigError::Unsupported(format!(
                "invalid volume name {:?}",
                volume.name
            )));
        }
        let projected = volume.config_map.is_some() || volume.secret.is_some();
        let source = if volume.empty_dir.is_some() || projected {
            VolumeSource::Pod(volumes_dir.join(&volume.name))
        } else if let Some(host) = &volume.host_path {
            VolumeSource::Host(PathBuf::from(&host.path))
        } else {
            return Err(ConfigError::Unsupported(format!(
                "volume {:?}: only emptyDir, hostPath, configMap and secret volumes are supported",
                volume.name
            )));
        };
        let sub_path = vm.sub_path.clone().unwrap_or_default();
        let sub_components = sub_path_components(&sub_path)?;
        mounts.push(PlannedMount {
            volume: volume.name.clone(),
            source,
            sub_path,
            sub_components,
            container_path: vm.mount_path.clone(),
            // ConfigMap and Secret volumes are always read-only, as in Kubernetes.
            read_only: projected || vm.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}

/// The files of the ConfigMap and Secret volumes `container` mounts: (volume name, relative
/// path, content). `items` select and rename keys; a missing optional source gives no files.
pub fn projected_files(
    pod: &Pod,
    container: &Container,
    sources: &Sources,
) -> Result<Vec<(String, PathBuf, Vec<u8>)>, ConfigError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    let mut files = Vec::new();
    for vm in container.volume_mounts.as_deref().unwrap_or_default() {
        let Some(volume) = volumes.iter().find(|v| v.name == vm.name) else {
            continue;
        };
        let (kind, name, optional, items) = if let Some(cm) = &volume.config_map {
            (
                SourceKind::ConfigMap,
                cm.name.clone(),
                cm.optional.unwrap_or(false),
                cm.items.as_deref(),
            )
        } else if let Some(secret) = &volume.secret {
            (
                SourceKind::Secret,
                secret.secret_name.clone().unwrap_or_default(),
                secret.optional.unwrap_or(false),
                secret.items.as_deref(),
            )
        } else {
            continue;
        };
        let Some(data) = sources.get(kind, &name) else {
            if optional {
                continue;
            }
            return Err(ConfigError::Unsupported(format!(
                "{} {name:?} not found",
                kind.label()
            )));
        };
        let selected: Vec<(&str, &str)> = match items {
            Some(items) => items
                .iter()
                .map(|i| (i.key.as_str(), i.path.as_str()))
                .collect(),
            None => data.keys().map(|k| (k.as_str(), k.as_str())).collect(),
        };
        for (key, path) in selected {
            let relative = Path::new(path);
            if relative.is_absolute() || path.split('/').any(|c| c == "..") {
                return Err(ConfigError::Unsupported(format!(
                    "volume {:?}: item path {path:?} must be relative without '..'",
                    volume.name
                )));
            }
            let Some(content) = data.get(key) else {
                if optional {
                    continue;
                }
                return Err(ConfigError::Unsupported(format!(
                    "configmap references non-existent config key: {key}"
                )));
            };
            files.push((volume.name.clone(), relative.to_path_buf(), content.clone()));
        }
    }
    Ok(files)
}

/// Names of the pod's emptyDir volumes (the worker creates and deletes their directories);
/// names that are not one plain path component are left out ([`container_mounts`] refuses them).
pub fn empty_dir_volumes(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|v| v.empty_dir.is_some() && valid_volume_name(&v.name))
        .map(|v| v.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("test pod")
    }

    #[test]
    fn expand_follows_kubernetes_rules() {
        let lookup = |name: &str| match name {
            "A" => Some("alpha".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("plain", "plain"),
            ("$(A)", "alpha"),
            ("x$(A)y$(A)", "xalphayalpha"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("a$b", "a$b"),
            ("tail$", "tail$"),
            ("$(unclosed", "$(unclosed"),
            ("[$(EMPTY)]", "[]"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &lookup), want, "input {input:?}");
        }
    }

    #[test]
    fn argv_and_env() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "main", "image": "r/i:1",
                "command": ["/bin/app", "--name=$(POD)"],
                "args": ["$(GREETING) world", "$(NOPE)", "$$(POD)"],
                "env": [
                    {"name": "GREETING", "value": "hello"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "BOTH", "value": "$(GREETING)-$(POD)"},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}
                ],
                "resources": {"limits": {"memory": "1Mi"}}
            }]}
        }));
        let container = &p.spec.as_ref().expect("spec").containers[0];
        let downward = DownwardValues {
            pod_ip: "127.0.0.1".into(),
            host_ip: "127.0.0.1".into(),
        };
        let env = container_env(&p, container, &downward, &Sources::default()).expect("env");
        let argv = container_command(container, &env);
        expect![[r#"
            (
                [
                    (
                        "GREETING",
                        "hello",
                    ),
                    (
                        "POD",
                        "web",
                    ),
                    (
                        "NODE",
                        "n1",
                    ),
                    (
                        "IP",
                        "127.0.0.1",
                    ),
                    (
                        "APP",
                        "x",
                    ),
                    (
                        "BOTH",
                        "hello-web",
                    ),
                    (
                        "MEM",
                        "1048576",
                    ),
                ],
                (
                    [
                        "/bin/app",
                        "--name=web",
                    ],
                    [
                        "hello world",
                        "$(NOPE)",
                        "$(POD)",
                    ],
                ),
            )
        "#]]
        .assert_debug_eq(&(env, argv));
    }

    #[test]
    fn command_and_args_stay_apart() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "hello", "args": ["a", "$(X)"]}]}
        }));
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let env = [("X".to_owned(), "x".to_owned())];
        let (command, args) = container_command(c, &env);
        assert!(command.is_empty());
        assert_eq!(args, ["a", "x"]);
    }

    #[test]
    fn sandbox_config_names_the_pod_and_its_host_ports() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 8080, "hostPort": 80},
                {"containerPort": 53, "protocol": "UDP"}
            ]}]}
        }));
        let config = sandbox_config(&p, Path::new("/logs"));
        assert_eq!(config.log_directory, Path::new("/logs/ns_p_u1"));
        assert_eq!(config.hostname, "p");
        assert_eq!(
            config.labels.get(labels::POD_UID).map(String::as_str),
            Some("u1")
        );
        assert_eq!(config.labels.get("app").map(String::as_str), Some("a"));
        assert_eq!(
            config.port_mappings,
            [PortMapping {
                protocol: Protocol::Tcp,
                container_port: 8080,
                host_port: 80,
                host_ip: None,
            }]
        );
    }

    #[test]
    fn missing_sources_are_config_errors() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "env": [
                {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
            ]}]}
        }));
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let err = container_env(&p, c, &DownwardValues::default(), &Sources::default())
            .expect_err("missing secret");
        expect![[r#"secret "s" not found"#]].assert_eq(&err.to_string());
    }

    #[test]
    fn config_maps_and_secrets() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "settings", "items": [{"key": "a", "path": "dir/a.txt"}]}},
                    {"name": "sec", "secret": {"secretName": "creds"}},
                    {"name": "opt", "configMap": {"name": "nothing", "optional": true}}
                ],
                "containers": [{
                    "name": "c",
                    "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                    "env": [
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "CFG_a", "value": "overridden"},
                        {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "nothing", "key": "k", "optional": true}}}
                    ],
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/cfg"},
                        {"name": "sec", "mountPath": "/sec"},
                        {"name": "opt", "mountPath": "/opt"}
                    ]
                }]
            }
        }));
        let c = &p.spec.as_ref().expect("spec").containers[0];
        expect![[r#"
            {
                (
                    ConfigMap,
                    "nothing",
                ),
                (
                    ConfigMap,
                    "settings",
                ),
                (
                    Secret,
                    "creds",
                ),
            }
        "#]]
        .assert_debug_eq(&referenced_sources(&p, c));
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "settings".into(),
            BTreeMap::from([("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]),
        );
        sources.secrets.insert(
            "creds".into(),
            BTreeMap::from([("password".into(), b"hunter2".to_vec())]),
        );
        let env = container_env(&p, c, &DownwardValues::default(), &sources).expect("env");
        expect![[r#"[("CFG_b", "2"), ("PASSWORD", "hunter2"), ("CFG_a", "overridden")]"#]]
            .assert_eq(&format!("{env:?}"));
        let files = projected_files(&p, c, &sources).expect("files");
        expect![[r#"[("cfg", "dir/a.txt", [49]), ("sec", "password", [104, 117, 110, 116, 101, 114, 50])]"#]]
            .assert_eq(&format!("{files:?}"));
        sources.secrets.clear();
        let err = projected_files(&p, c, &sources).expect_err("missing secret");
        expect![[r#"secret "creds" not found"#]].assert_eq(&err.to_string());
    }

    #[test]
    fn quantities() {
        let cases = [
            ("100m", Some(100)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("1.5", Some(1500)),
            ("1Ki", Some(1_024_000)),
            ("128Mi", Some(134_217_728_000)),
            ("1G", Some(1_000_000_000_000)),
            ("1e3", Some(1_000_000)),
            ("2E2", Some(200_000)),
            ("1u", Some(1)),
            ("10n", Some(1)),
            ("0.1m", Some(1)),
            ("-1", Some(-1000)),
            ("", None),
            ("abc", None),
            ("1Xi", None),
            ("1.2.3", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_quantity_milli(text), want, "quantity {text:?}");
        }
    }

    #[test]
    fn limits_and_pull_policy() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "a", "image": "reg/x", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "image": "reg:5000/x:latest"},
                {"name": "c", "image": "reg:5000/x:v1"},
                {"name": "d", "image": "reg/x@sha256:abc", "imagePullPolicy": "Never"},
                {"name": "e", "image": "reg/x@sha256:abc"}
            ]}
        }));
        let cs = &p.spec.as_ref().expect("spec").containers;
        assert_eq!(
            container_limits(&cs[0]).expect("limits"),
            Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(250)
            }
        );
        assert_eq!(container_limits(&cs[1]).expect("limits"), Limits::default());
        let policies: Vec<_> = cs.iter().map(pull_policy).collect();
        assert_eq!(
            policies,
            [
                PullPolicy::Always,
                PullPolicy::Always,
                PullPolicy::IfNotPresent,
                PullPolicy::Never,
                PullPolicy::IfNotPresent
            ]
        );
    }

    #[test]
    fn mounts_only_what_the_spec_grants() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "host", "hostPath": {"path": "/srv/data"}},
                    {"name": "unused", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "c"}}
                ],
                "containers": [
                    {"name": "a", "volumeMounts": [
                        {"name": "scratch", "mountPath": "/tmp"},
                        {"name": "host", "mountPath": "/data", "readOnly": true, "subPath": "sub"}
                    ]},
                    {"name": "b", "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]},
                    {"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}
                ]
            }
        }));
        let cs = &p.spec.as_ref().expect("spec").containers;
        let dir = Path::new("/var/shoal/pods/u1/volumes");
        expect![[r#"
            [
                PlannedMount {
                    volume: "scratch",
                    source: Pod(
                        "/var/shoal/pods/u1/volumes/scratch",
                    ),
                    sub_path: "",
                    sub_components: [],
                    container_path: "/tmp",
                    read_only: false,
                },
                PlannedMount {
                    volume: "host",
                    source: Host(
                        "/srv/data",
                    ),
                    sub_path: "sub",
                    sub_components: [
                        "sub",
                    ],
                    container_path: "/data",
                    read_only: true,
                },
            ]
        "#]]
        .assert_debug_eq(&container_mounts(&p, &cs[0], dir).expect("mounts"));
        let cfg = container_mounts(&p, &cs[1], dir).expect("cfg");
        assert_eq!(cfg[0].source, VolumeSource::Pod(dir.join("cfg")));
        assert!(cfg[0].read_only);
        expect![[r#"volume "nope" referenced by a volumeMount is not defined in the pod"#]]
            .assert_eq(
                &container_mounts(&p, &cs[2], dir)
                    .expect_err("nope")
                    .to_string(),
            );
        assert_eq!(empty_dir_volumes(&p), ["scratch", "unused"]);
    }

    #[test]
    fn sub_paths_and_volume_names_are_checked() {
        let cases = [
            ("a/./b//c", "Ok([\"a\", \"b\", \"c\"])"),
            ("", "Ok([])"),
            (
                "/etc",
                "Err(Unsupported(\"subPath \\\"/etc\\\" must be a relative path without '..'\"))",
            ),
            (
                "a/../b",
                "Err(Unsupported(\"subPath \\\"a/../b\\\" must be a relative path without '..'\"))",
            ),
        ];
        for (sub, want) in cases {
            assert_eq!(format!("{:?}", sub_path_components(sub)), want, "{sub:?}");
        }
        let p = pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "volumes": [{"name": "../..", "emptyDir": {}}],
                "containers": [{"name": "a", "volumeMounts": [{"name": "../..", "mountPath": "/x"}]}]
            }
        }));
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let err = container_mounts(&p, c, Path::new("/v")).expect_err("bad name");
        expect![[r#"invalid volume name "../..""#]].assert_eq(&err.to_string());
        assert!(empty_dir_volumes(&p).is_empty());
    }
}
