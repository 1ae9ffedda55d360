//! The Endpoints and EndpointSlice controllers (kube-controller-manager's `endpoint` and
//! `endpointslice`), in one reconcile per Service: what the proxy, DNS and `kubectl describe
//! service` read.
//!
//! A Service with a selector is backed by the pods of its namespace the selector matches that
//! have an IP and are not finished. Each Service port resolves its `targetPort` on each pod (a
//! number as is, a name through the pod's container ports; a pod without that named port is
//! left out of that port). The Endpoints object (named after the Service, with its labels)
//! holds ready pods in `addresses` and the others in `notReadyAddresses`, grouped into subsets
//! by the ports they serve; terminating pods are left out unless the Service publishes
//! not-ready addresses. EndpointSlices (owned by the Service, labelled
//! `kubernetes.io/service-name` and managed by `endpointslice-controller.k8s.io`) hold at most
//! 100 endpoints each, one address type and one port set per slice, with `ready`, `serving`
//! and `terminating` conditions, node name and zone. Services without a selector are left
//! to their users; the Endpoints of a deleted Service go with it (its slices go through the
//! garbage collector).
//!
//! [`backends`], [`endpoints_for`] and [`slices_for`] are the decision as plain functions.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{debug, warn};

use crate::Error;
use crate::informer::Change;
use crate::pods::{controller_ref, is_ready};

/// The label tying a slice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice (upstream's default `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Addresses an Endpoints object holds at most; beyond, it is truncated and says so.
pub const MAX_ENDPOINTS_ADDRESSES: usize = 1000;
/// The annotation on a truncated Endpoints object.
pub const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// How long slices this controller created may stay unseen in its store before it stops
/// waiting for them.
const CREATED_SLICE_WAIT: Duration = Duration::from_secs(30);

/// A port a backend serves: the Service port's name, the resolved number, the protocol, the
/// application protocol.
pub type Port = (Option<String>, i32, String, Option<String>);

/// One pod backing a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its IP.
    pub ip: String,
    /// Ready condition True and not terminating.
    pub ready: bool,
    /// Ready condition True (whether terminating or not).
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
    /// The Service ports it serves, resolved, in the Service's order.
    pub ports: Vec<Port>,
}

fn resolve(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<i32> {
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == protocol
                })
                .map(|p| p.container_port)
        }
    }
}

/// The pods backing `svc` (none for a Service without a selector), sorted by IP then name.
pub fn backends<'a>(svc: &Service, pods: &[&'a Pod]) -> Vec<Backend<'a>> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let mut out: Vec<Backend<'a>> = pods
        .iter()
        .copied()
        .filter(|pod| pod.metadata.namespace == svc.metadata.namespace)
        .filter(|pod| {
            let labels = pod.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                return None;
            }
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let serving = is_ready(pod);
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    resolve(p, pod).map(|number| {
                        (
                            p.name.clone(),
                            number,
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            p.app_protocol.clone(),
                        )
                    })
                })
                .collect();
            Some(Backend {
                pod,
                ip,
                ready: serving && !terminating,
                serving,
                terminating,
                ports,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.ip, &a.pod.metadata.name).cmp(&(&b.ip, &b.pod.metadata.name)));
    out
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The pod's DNS hostname under `svc`: its `hostname` when its `subdomain` is the Service.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (spec.subdomain.is_some() && spec.subdomain == svc.metadata.name)
        .then(|| spec.hostname.clone())
        .flatten()
}

/// The label on the Endpoints and slices of a headless Service.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn publishes_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The Endpoints object `svc` should have.
pub fn endpoints_for(svc: &Service, backends: &[Backend<'_>]) -> Endpoints {
    let publish = publishes_not_ready(svc);
    let mut subsets: BTreeMap<Vec<Port>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    let mut kept = 0;
    let mut truncated = false;
    for backend in backends {
        if backend.terminating && !publish {
            continue;
        }
        // Upstream keeps 1000 addresses; the slices hold every endpoint.
        if kept == MAX_ENDPOINTS_ADDRESSES {
            truncated = true;
            break;
        }
        kept += 1;
        let address = EndpointAddress {
            ip: backend.ip.clone(),
            hostname: hostname(svc, backend.pod),
            node_name: backend.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(target_ref(backend.pod)),
        };
        let mut ports = backend.ports.clone();
        ports.sort();
        let entry = subsets.entry(ports).or_default();
        if backend.ready || publish {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then(|| {
                ports
                    .into_iter()
                    .map(|(name, port, protocol, app_protocol)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        app_protocol,
                    })
                    .collect()
            }),
        })
        .collect();
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: truncated
                .then(|| BTreeMap::from([(OVER_CAPACITY.to_owned(), "truncated".to_owned())])),
            ..ObjectMeta::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

/// What to do with a Service's slices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlicePlan {
    /// New slices (with `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Existing slices with new content (name and resourceVersion kept).
    pub update: Vec<EndpointSlice>,
    /// Existing slices no longer needed (names).
    pub delete: Vec<String>,
}

fn slice_key(slice: &EndpointSlice) -> (String, Vec<Port>) {
    let mut ports: Vec<Port> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone(),
                p.port.unwrap_or(0),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            )
        })
        .collect();
    ports.sort();
    (slice.address_type.clone(), ports)
}

/// Desired slices of `svc` matched against `existing` (its managed slices).
pub fn slices_for(
    svc: &Service,
    backends: &[Backend<'_>],
    zones: &dyn Fn(&str) -> Option<String>,
    existing: &[&EndpointSlice],
) -> SlicePlan {
    let svc_name = svc.metadata.name.clone().unwrap_or_default();
    let mut groups: BTreeMap<(String, Vec<Port>), Vec<Endpoint>> = BTreeMap::new();
    for backend in backends {
        let family = if backend.ip.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        };
        let mut ports = backend.ports.clone();
        ports.sort();
        let node = backend.pod.spec.as_ref().and_then(|s| s.node_name.clone());
        groups
            .entry((family.to_owned(), ports))
            .or_default()
            .push(Endpoint {
                addresses: vec![backend.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(backend.ready || publishes_not_ready(svc)),
                    serving: Some(backend.serving),
                    terminating: Some(backend.terminating),
                }),
                hostname: hostname(svc, backend.pod),
                zone: node.as_deref().and_then(zones),
                node_name: node,
                target_ref: Some(target_ref(backend.pod)),
                ..Endpoint::default()
            });
    }
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    if is_headless(svc) {
        labels.insert(HEADLESS_LABEL.into(), String::new());
    }
    labels.insert(SERVICE_NAME_LABEL.into(), svc_name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut existing_by_key: HashMap<(String, Vec<Port>), Vec<&EndpointSlice>> = HashMap::new();
    for slice in existing {
        existing_by_key
            .entry(slice_key(slice))
            .or_default()
            .push(slice);
    }
    for slices in existing_by_key.values_mut() {
        slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }
    let mut plan = SlicePlan::default();
    // A Service with ports and no backends keeps one empty slice, as upstream.
    if groups.is_empty() {
        let ports: Vec<Port> = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone(),
                    match p.target_port.as_ref() {
                        Some(IntOrString::Int(n)) => *n,
                        _ => p.port,
                    },
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.app_protocol.clone(),
                )
            })
            .collect();
        let mut ports = ports;
        ports.sort();
        groups.insert(("IPv4".into(), ports), Vec::new());
    }
    for ((family, ports), endpoints) in groups {
        let chunks: Vec<Vec<Endpoint>> = if endpoints.is_empty() {
            vec![Vec::new()]
        } else {
            endpoints
                .chunks(MAX_ENDPOINTS_PER_SLICE)
                .map(<[Endpoint]>::to_vec)
                .collect()
        };
        let mut reusable = existing_by_key
            .remove(&(family.clone(), ports.clone()))
            .unwrap_or_default()
            .into_iter();
        for chunk in chunks {
            let slice_ports: Vec<SlicePort> = ports
                .iter()
                .map(|(name, port, protocol, app_protocol)| SlicePort {
                    name: name.clone(),
                    port: Some(*port),
                    protocol: Some(protocol.clone()),
                    app_protocol: app_protocol.clone(),
                })
                .collect();
            let mut desired = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{svc_name}-")),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![controller_ref("v1", "Service", &svc.metadata)]),
                    ..ObjectMeta::default()
                },
                address_type: family.clone(),
                endpoints: chunk,
                ports: Some(slice_ports),
            };
            match reusable.next() {
                Some(old) => {
                    let same = old.endpoints == desired.endpoints
                        && old.ports == desired.ports
                        && old.metadata.labels == desired.metadata.labels;
                    if !same {
                        desired.metadata.name = old.metadata.name.clone();
                        desired.metadata.generate_name = None;
                        desired.metadata.resource_version = old.metadata.resource_version.clone();
                        plan.update.push(desired);
                    }
                }
                None => plan.create.push(desired),
            }
        }
        plan.delete
            .extend(reusable.filter_map(|s| s.metadata.name.clone()));
    }
    for slices in existing_by_key.into_values() {
        plan.delete
            .extend(slices.into_iter().filter_map(|s| s.metadata.name.clone()));
    }
    plan.delete.sort();
    plan
}

/// What the reconciler reads.
pub struct Context {
    /// API client.
    pub client: kube::Client,
    /// All pods.
    pub pods: Store<Pod>,
    /// All Endpoints.
    pub endpoints: Store<Endpoints>,
    /// All EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// All nodes (for zones).
    pub nodes: Store<Node>,
    /// All Services (to tell a deleted Service from one not yet seen).
    pub services: Store<Service>,
    /// Slices created per Service uid and not yet seen in `slices`, with when: a pass in
    /// between would create them again (upstream's endpointSliceTracker).
    pub created: std::sync::Mutex<HashMap<String, (Vec<String>, tokio::time::Instant)>>,
}

impl Context {
    /// A context over these stores.
    pub fn new(
        client: kube::Client,
        pods: Store<Pod>,
        endpoints: Store<Endpoints>,
        slices: Store<EndpointSlice>,
        nodes: Store<Node>,
        services: Store<Service>,
    ) -> Self {
        Context {
            client,
            pods,
            endpoints,
            slices,
            nodes,
            services,
            created: std::sync::Mutex::default(),
        }
    }

    /// Whether every slice created for `uid` is in the store (or waited for long enough).
    fn slices_seen(&self, uid: &str, namespace: &str) -> bool {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let Some((names, since)) = created.get(uid) else {
            return true;
        };
        let seen = names.iter().all(|name| {
            self.slices
                .get(&ObjectRef::new(name).within(namespace))
                .is_some()
        });
        if seen || since.elapsed() > CREATED_SLICE_WAIT {
            created.remove(uid);
            return true;
        }
        false
    }
}

/// Brings one Service's Endpoints and EndpointSlices in line with its pods.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    // ExternalName Services have no endpoints, whatever their selector says.
    let managed = svc.spec.as_ref().is_some_and(|s| {
        s.type_.as_deref() != Some("ExternalName")
            && s.selector.as_ref().is_some_and(|s| !s.is_empty())
    });
    if !managed || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pods = ctx
        .pods
        .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    let backends = backends(&svc, &refs);

    // A failure here must not hold the slices back (the proxy reads those): it is returned
    // after them.
    let endpoints_result = sync_endpoints(&ctx, &svc, &backends).await;

    let uid = svc.metadata.uid.clone().unwrap_or_default();
    if !ctx.slices_seen(&uid, &namespace) {
        endpoints_result?;
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let existing = ctx.slices.state_filter(|s| {
        s.metadata.namespace.as_deref() == Some(namespace.as_str())
            && s.metadata.labels.as_ref().is_some_and(|l| {
                l.get(SERVICE_NAME_LABEL) == Some(&name)
                    && l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            })
            && crate::pods::controller_of(&s.metadata).is_some_and(|o| o.uid == uid)
    });
    let existing_refs: Vec<&EndpointSlice> = existing.iter().map(AsRef::as_ref).collect();
    let zone_of = |node: &str| {
        ctx.nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.metadata.labels.clone())
            .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
    };
    let plan = slices_for(&svc, &backends, &zone_of, &existing_refs);
    let slices_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &namespace);
    for slice in &plan.update {
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        slices_api
            .replace(&slice_name, &PostParams::default(), slice)
            .await?;
    }
    let mut made = Vec::new();
    let mut create_error = None;
    for slice in &plan.create {
        match slices_api.create(&PostParams::default(), slice).await {
            Ok(created) => made.extend(created.metadata.name),
            Err(e) => {
                create_error = Some(e);
                break;
            }
        }
    }
    if !made.is_empty() {
        ctx.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.clone(), (made, tokio::time::Instant::now()));
    }
    if let Some(e) = create_error {
        return Err(e.into());
    }
    for slice_name in &plan.delete {
        match slices_api
            .delete(slice_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !plan.create.is_empty() || !plan.update.is_empty() || !plan.delete.is_empty() {
        debug!(service = %name, created = plan.create.len(), updated = plan.update.len(),
            deleted = plan.delete.len(), "synced endpoint slices");
    }
    endpoints_result?;
    Ok(Action::await_change())
}

/// Creates or rewrites the Service's Endpoints when they differ from what its pods say.
async fn sync_endpoints(
    ctx: &Context,
    svc: &Service,
    backends: &[Backend<'_>],
) -> Result<(), Error> {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let desired = endpoints_for(svc, backends);
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), namespace);
    match ctx.endpoints.get(&ObjectRef::new(name).within(namespace)) {
        None => match api.create(&PostParams::default(), &desired).await {
            Ok(_) => debug!(service = %name, "created endpoints"),
            // Our store had not seen it yet: the pass its watch event triggers updates it.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        },
        Some(current) => {
            let over = |e: &Endpoints| {
                e.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(OVER_CAPACITY).cloned())
            };
            if current.subsets != desired.subsets
                || current.metadata.labels != desired.metadata.labels
                || over(&current) != over(&desired)
            {
                let mut update = desired.clone();
                update.metadata.resource_version = current.metadata.resource_version.clone();
                // Other annotations stay; ours follows the truncation.
                let mut annotations = current.metadata.annotations.clone().unwrap_or_default();
                annotations.remove(OVER_CAPACITY);
                annotations.extend(desired.metadata.annotations.clone().unwrap_or_default());
                update.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
                api.replace(name, &PostParams::default(), &update).await?;
                debug!(service = %name, "updated endpoints");
            }
        }
    }
    Ok(())
}

/// Deletes the Endpoints of a Service that is gone (unless a Service of that name is back).
pub async fn forget(ctx: &Context, svc: &Service) {
    let (Some(namespace), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) else {
        return;
    };
    if ctx
        .services
        .get(&ObjectRef::new(name).within(namespace))
        .is_some()
    {
        return;
    }
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), namespace);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => debug!(service = %name, "deleted endpoints of a deleted service"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(error) => warn!(service = %name, %error, "deleting endpoints failed"),
    }
}

/// Conflicts come back quickly, other errors after 5 s.
pub fn error_policy(svc: Arc<Service>, error: &Error, _: Arc<Context>) -> Action {
    if error.is_conflict() {
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(service = ?svc.metadata.name, %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Whether `svc`'s Endpoints (in `endpoints`) list `pod`, or were truncated (then they may).
fn lists(endpoints: &Store<Endpoints>, svc: &Service, pod: &Pod) -> bool {
    let (Some(name), Some(namespace)) = (&svc.metadata.name, &svc.metadata.namespace) else {
        return false;
    };
    let Some(current) = endpoints.get(&ObjectRef::new(name).within(namespace)) else {
        return false;
    };
    let truncated = current
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(OVER_CAPACITY));
    truncated
        || current.subsets.iter().flatten().any(|s| {
            s.addresses
                .iter()
                .flatten()
                .chain(s.not_ready_addresses.iter().flatten())
                .any(|a| {
                    a.target_ref.as_ref().and_then(|r| r.name.as_ref())
                        == pod.metadata.name.as_ref()
                })
        })
}

/// A pod change triggers the Services of its namespace whose selector matches the pod, and
/// those whose Endpoints still list it (its labels may have changed: the informer gives no
/// old object).
pub fn trigger_services(
    services: Store<Service>,
    endpoints: Store<Endpoints>,
) -> impl FnMut(Change<Pod>) -> Vec<Result<ObjectRef<Service>, Infallible>> {
    move |change| {
        let (Change::Applied(pod) | Change::Deleted(pod)) = change else {
            return Vec::new();
        };
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        services
            .state()
            .iter()
            .filter(|s| s.metadata.namespace == pod.metadata.namespace)
            .filter(|s| {
                let Some(selector) = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .filter(|s| !s.is_empty())
                else {
                    return false;
                };
                selector.iter().all(|(k, v)| labels.get(k) == Some(v)) || lists(&endpoints, s, &pod)
            })
            .map(|s| Ok(ObjectRef::from_obj(s.as_ref())))
            .collect()
    }
}

/// An Endpoints object (by its name) or a slice (by its `kubernetes.io/service-name` label)
/// triggers its Service.
pub fn trigger_owner<K>(change: Change<K>) -> Option<Result<ObjectRef<Service>, Infallible>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let (Change::Applied(obj) | Change::Deleted(obj)) = change else {
        return None;
    };
    let meta = obj.meta();
    let name = if K::kind(&()) == "EndpointSlice" {
        meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone()
    } else {
        meta.name.clone()?
    };
    Some(Ok(ObjectRef::new(&name).within(meta.namespace.as_deref()?)))
}

#[cfg(test)]
mod tests;
