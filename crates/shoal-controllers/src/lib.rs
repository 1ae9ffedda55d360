//! Shoal's controllers: ReplicaSet, Deployment, StatefulSet, DaemonSet (both with
//! ControllerRevision history), PodDisruptionBudget status, Endpoints and EndpointSlices, Job,
//! CronJob, the garbage collector, ServiceAccount (a
//! `default` account in every namespace), namespace deletion, node lifecycle with taint eviction, pod garbage
//! collection, and the approver and signer of node client certificates.
//!
//! Each controller is a level-triggered `reconcile(obj, ctx) -> Result<Action, Error>` whose
//! decision is a plain function (`plan`, `decide`) tested without tokio. [`run`] wires them
//! to the cluster through the Kubernetes API only: one watch per resource kind feeds a
//! reflector store and the triggers of every controller that needs it (see [`informer`]),
//! and kube-runtime's `applier` runs the reconcilers. Controllers never talk to each other
//! or to other components.

pub mod certificates;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod event_ttl;
pub mod garbage_collector;
pub mod history;
pub mod informer;
pub mod job;
pub mod namespace;
pub mod node_lifecycle;
pub mod podgc;
pub mod pods;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod taint_eviction;

use std::future::Future;
use std::sync::Arc;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::informer::Informer;

/// Which controllers run, and how many reconciles each may run at once.
#[derive(Clone, Debug)]
pub struct Config {
    /// Run the ReplicaSet controller.
    pub replicaset: bool,
    /// Run the Deployment controller.
    pub deployment: bool,
    /// Run the StatefulSet controller.
    pub statefulset: bool,
    /// Run the DaemonSet controller.
    pub daemonset: bool,
    /// Run the disruption controller (PodDisruptionBudget status).
    pub disruption: bool,
    /// Run the Endpoints and EndpointSlice controller.
    pub endpoints: bool,
    /// Run the Job controller (with TTL after finished).
    pub job: bool,
    /// Run the CronJob controller.
    pub cronjob: bool,
    /// Run the garbage collector.
    pub garbage_collector: bool,
    /// How the garbage collector follows kinds.
    pub garbage_collector_options: garbage_collector::Options,
    /// Run the ServiceAccount controller.
    pub service_account: bool,
    /// Run the namespace controller (empties deleted namespaces).
    pub namespace: bool,
    /// Run the node lifecycle controller (node health and readiness taints).
    pub node_lifecycle: bool,
    /// How it judges nodes.
    pub node_lifecycle_options: node_lifecycle::Options,
    /// Run the taint eviction (pods leave nodes with `NoExecute` taints).
    pub taint_eviction: bool,
    /// Delete Events older than their TTL.
    pub event_ttl: bool,
    /// Its settings.
    pub event_ttl_options: event_ttl::Options,
    /// Run the pod garbage collector.
    pub pod_gc: bool,
    /// Its settings.
    pub pod_gc_options: podgc::Options,
    /// Concurrent reconciles per controller (0 = unbounded).
    pub concurrency: u16,
    /// The cluster CA: with it, approved client certificate requests are signed (and node
    /// requests from bootstrap tokens approved); without it, CSRs are left alone.
    pub certificate_authority: Option<Arc<shoal_tls::CertificateAuthority>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            replicaset: true,
            deployment: true,
            statefulset: true,
            daemonset: true,
            disruption: true,
            endpoints: true,
            job: true,
            cronjob: true,
            garbage_collector: true,
            garbage_collector_options: garbage_collector::Options::default(),
            service_account: true,
            namespace: true,
            node_lifecycle: true,
            node_lifecycle_options: node_lifecycle::Options::default(),
            taint_eviction: true,
            event_ttl: true,
            event_ttl_options: event_ttl::Options::default(),
            pod_gc: true,
            pod_gc_options: podgc::Options::default(),
            concurrency: 16,
            certificate_authority: None,
        }
    }
}

/// Errors of a reconcile or of the controller manager.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API failed.
    #[error("kubernetes api request failed")]
    Kube(#[from] kube::Error),
    /// An object could not be turned into JSON.
    #[error("object serialization failed")]
    Serialize(#[from] serde_json::Error),
    /// A spec field the controller needs is invalid.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field path.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A ReplicaSet with the new ReplicaSet's name exists but belongs to something else.
    #[error("replicaset {0} exists and is not owned by this deployment")]
    NameTaken(String),
}

impl Error {
    /// A 409 from the API: the object changed under us; retry soon.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(s)) if s.code == 409)
    }
}

/// Runs the configured controllers until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let concurrency = config.concurrency;
    let mut pods = Informer::<Pod>::new(Api::all(client.clone()));
    let mut replicasets = Informer::<ReplicaSet>::new(Api::all(client.clone()));
    let mut deployments = Informer::<Deployment>::new(Api::all(client.clone()));
    let mut tasks = JoinSet::new();
    let applier = |name: &'static str| Applier {
        name,
        concurrency,
        shutdown: shutdown.clone(),
    };
    let recorder = |component: &str| {
        shoal_events::Recorder::start(
            client.clone(),
            shoal_events::Source {
                component: component.to_owned(),
                host: None,
            },
            shoal_events::Options::default(),
            shutdown.clone(),
        )
    };

    if config.replicaset {
        let ctx = Arc::new(replicaset::Context {
            client: client.clone(),
            pods: pods.store(),
            expectations: replicaset::Expectations::default(),
            events: recorder("replicaset-controller"),
        });
        let triggers = futures::stream::select(
            replicasets.subscribe().map(informer::trigger_self),
            pods.subscribe()
                .map(informer::trigger_controller::<_, ReplicaSet>),
        )
        .flat_map(futures::stream::iter);
        let stores = [pods.ready(), replicasets.ready()];
        let store = replicasets.store();
        tasks.spawn(applier("replicaset").start(
            stores,
            replicaset::reconcile,
            replicaset::error_policy,
            ctx,
            store,
            triggers,
        ));
    }
    if config.deployment {
        let ctx = Arc::new(deployment::Context {
            client: client.clone(),
            replicasets: replicasets.store(),
            events: recorder("deployment-controller"),
        });
        let triggers = futures::stream::select(
            deployments.subscribe().map(informer::trigger_self),
            replicasets
                .subscribe()
                .map(informer::trigger_controller::<_, Deployment>),
        )
        .flat_map(futures::stream::iter);
        let stores = [replicasets.ready(), deployments.ready()];
        let store = deployments.store();
        tasks.spawn(applier("deployment").start(
            stores,
            deployment::reconcile,
            deployment::error_policy,
            ctx,
            store,
            triggers,
        ));
    }
    let mut nodes = Informer::<Node>::new(Api::all(client.clone()));
    let mut statefulsets = Informer::<StatefulSet>::new(Api::all(client.clone()));
    if config.statefulset || config.daemonset {
        let revisions = Informer::<ControllerRevision>::new(Api::all(client.clone()));
        if config.statefulset {
            let sets = &mut statefulsets;
            let ctx = Arc::new(statefulset::Context {
                client: client.clone(),
                pods: pods.store(),
                revisions: revisions.store(),
                expectations: replicaset::Expectations::default(),
                events: recorder("statefulset-controller"),
            });
            let triggers = futures::stream::select(
                sets.subscribe().map(informer::trigger_self),
                pods.subscribe()
                    .map(informer::trigger_controller::<_, StatefulSet>),
            )
            .flat_map(futures::stream::iter);
            let store = sets.store();
            tasks.spawn(applier("statefulset").start(
                [pods.ready(), revisions.ready(), sets.ready()],
                statefulset::reconcile,
                statefulset::error_policy,
                ctx,
                store,
                triggers,
            ));
        }
        if config.daemonset {
            let mut sets = Informer::<DaemonSet>::new(Api::all(client.clone()));
            let classes = Informer::<RuntimeClass>::new(Api::all(client.clone()));
            let ctx = Arc::new(daemonset::Context {
                client: client.clone(),
                pods: pods.store(),
                nodes: nodes.store(),
                revisions: revisions.store(),
                runtime_classes: classes.store(),
                expectations: replicaset::Expectations::default(),
                backoff: daemonset::Backoff::default(),
                events: recorder("daemonset-controller"),
            });
            // Any node change may change where daemons should run: every DaemonSet looks
            // again (the applier folds repeated triggers of one object into one reconcile).
            let all_sets = sets.store();
            let mut placement = daemonset::NodePlacement::default();
            let node_triggers = nodes
                .subscribe()
                .filter(move |change| future::ready(placement.changed(change)))
                .flat_map(move |_| {
                    let refs: Vec<_> = all_sets
                        .state()
                        .iter()
                        .map(|ds| Ok(kube::runtime::reflector::ObjectRef::from_obj(ds.as_ref())))
                        .collect();
                    futures::stream::iter(refs)
                });
            let triggers = futures::stream::select(
                futures::stream::select(
                    sets.subscribe().map(informer::trigger_self),
                    pods.subscribe()
                        .map(informer::trigger_controller::<_, DaemonSet>),
                )
                .flat_map(futures::stream::iter),
                node_triggers,
            );
            // A deleted DaemonSet's back-off and expectations go with it.
            let forget_ctx = Arc::clone(&ctx);
            tasks.spawn(until(
                shutdown.clone(),
                sets.subscribe().for_each(move |change| {
                    if let informer::Change::Deleted(ds) = change {
                        daemonset::forget(&forget_ctx, &ds);
                    }
                    future::ready(())
                }),
            ));
            let store = sets.store();
            tasks.spawn(applier("daemonset").start(
                [
                    pods.ready(),
                    nodes.ready(),
                    revisions.ready(),
                    classes.ready(),
                    sets.ready(),
                ],
                daemonset::reconcile,
                daemonset::error_policy,
                ctx,
                store,
                triggers,
            ));
            tasks.spawn(until(shutdown.clone(), sets.run()));
            tasks.spawn(until(shutdown.clone(), classes.run()));
        }
        tasks.spawn(until(shutdown.clone(), revisions.run()));
    }
    if config.disruption {
        let mut budgets = Informer::<PodDisruptionBudget>::new(Api::all(client.clone()));
        let ctx = Arc::new(disruption::Context {
            client: client.clone(),
            pods: pods.store(),
            replicasets: replicasets.store(),
            deployments: deployments.store(),
            statefulsets: statefulsets.store(),
        });
        let triggers = futures::stream::select(
            budgets
                .subscribe()
                .map(informer::trigger_self)
                .flat_map(futures::stream::iter),
            pods.subscribe()
                .map(disruption::trigger_budgets(budgets.store()))
                .flat_map(futures::stream::iter),
        );
        let store = budgets.store();
        tasks.spawn(applier("disruption").start(
            [
                pods.ready(),
                replicasets.ready(),
                deployments.ready(),
                statefulsets.ready(),
                budgets.ready(),
            ],
            disruption::reconcile,
            disruption::error_policy,
            ctx,
            store,
            triggers,
        ));
        tasks.spawn(until(shutdown.clone(), budgets.run()));
    }
    if config.endpoints {
        let mut services = Informer::<Service>::new(Api::all(client.clone()));
        let mut endpoints_informer = Informer::<Endpoints>::new(Api::all(client.clone()));
        let mut slices = Informer::<EndpointSlice>::new(Api::all(client.clone()));
        let ctx = Arc::new(endpoints::Context::new(
            client.clone(),
            pods.store(),
            endpoints_informer.store(),
            slices.store(),
            nodes.store(),
            services.store(),
        ));
        let triggers = futures::stream::select(
            services
                .subscribe()
                .map(informer::trigger_self)
                .flat_map(futures::stream::iter),
            futures::stream::select(
                pods.subscribe()
                    .map(endpoints::trigger_services(
                        services.store(),
                        endpoints_informer.store(),
                    ))
                    .flat_map(futures::stream::iter),
                // Our objects changed or deleted by someone else are put back.
                futures::stream::select(
                    endpoints_informer
                        .subscribe()
                        .filter_map(|c| future::ready(endpoints::trigger_owner(c))),
                    slices
                        .subscribe()
                        .filter_map(|c| future::ready(endpoints::trigger_owner(c))),
                ),
            ),
        );
        // A deleted Service takes its Endpoints along (its slices are owned and collected).
        let deletions = services.subscribe();
        let forget_ctx = Arc::clone(&ctx);
        tasks.spawn(until(
            shutdown.clone(),
            deletions.for_each(move |change| {
                let ctx = Arc::clone(&forget_ctx);
                async move {
                    if let informer::Change::Deleted(svc) = change {
                        endpoints::forget(&ctx, &svc).await;
                    }
                }
            }),
        ));
        let store = services.store();
        tasks.spawn(applier("endpoints").start(
            [
                pods.ready(),
                nodes.ready(),
                endpoints_informer.ready(),
                slices.ready(),
                services.ready(),
            ],
            endpoints::reconcile,
            endpoints::error_policy,
            ctx,
            store,
            triggers,
        ));
        tasks.spawn(until(shutdown.clone(), services.run()));
        tasks.spawn(until(shutdown.clone(), endpoints_informer.run()));
        tasks.spawn(until(shutdown.clone(), slices.run()));
    }
    if config.statefulset || config.disruption {
        tasks.spawn(until(shutdown.clone(), statefulsets.run()));
    }
    let mut jobs = Informer::<Job>::new(Api::all(client.clone()));
    if config.cronjob {
        let mut cronjobs = Informer::<CronJob>::new(Api::all(client.clone()));
        let ctx = Arc::new(cronjob::Context {
            client: client.clone(),
            jobs: jobs.store(),
            events: recorder("cronjob-controller"),
        });
        let triggers = futures::stream::select(
            cronjobs.subscribe().map(informer::trigger_self),
            jobs.subscribe()
                .map(informer::trigger_controller::<_, CronJob>),
        )
        .flat_map(futures::stream::iter);
        let store = cronjobs.store();
        tasks.spawn(applier("cronjob").start(
            [jobs.ready(), cronjobs.ready()],
            cronjob::reconcile,
            cronjob::error_policy,
            ctx,
            store,
            triggers,
        ));
        tasks.spawn(until(shutdown.clone(), cronjobs.run()));
    }
    if config.job {
        let ctx = Arc::new(job::Context {
            client: client.clone(),
            pods: pods.store(),
            expectations: replicaset::Expectations::default(),
            events: recorder("job-controller"),
        });
        let triggers = futures::stream::select(
            jobs.subscribe().map(informer::trigger_self),
            pods.subscribe().map(informer::trigger_controller::<_, Job>),
        )
        .flat_map(futures::stream::iter);
        let store = jobs.store();
        tasks.spawn(applier("job").start(
            [pods.ready(), jobs.ready()],
            job::reconcile,
            job::error_policy,
            ctx,
            store,
            triggers,
        ));
        tasks.spawn(spawn_controller(
            "job-orphans",
            [pods.ready(), jobs.ready()],
            job::release_orphans(
                client.clone(),
                pods.store(),
                jobs.store(),
                std::time::Duration::from_secs(10),
                shutdown.clone(),
            ),
        ));
    }
    if config.job || config.cronjob {
        tasks.spawn(until(shutdown.clone(), jobs.run()));
    }
    if config.garbage_collector {
        // Its own metadata watches of every kind: it waits for their first lists itself.
        let collector = garbage_collector::GarbageCollector::new(
            client.clone(),
            config.garbage_collector_options.clone(),
        );
        tasks.spawn(collector.run(shutdown.clone()));
    }
    let mut namespaces = Informer::<Namespace>::new(Api::all(client.clone()));
    if config.namespace {
        let ctx = Arc::new(namespace::Context::new(client.clone()));
        let triggers = namespaces
            .subscribe()
            .map(informer::trigger_self)
            .flat_map(futures::stream::iter);
        let stores = [namespaces.ready()];
        let store = namespaces.store();
        tasks.spawn(applier("namespace").start(
            stores,
            namespace::reconcile,
            namespace::error_policy,
            ctx,
            store,
            triggers,
        ));
    }
    if config.service_account {
        let mut accounts = Informer::<ServiceAccount>::new(Api::all(client.clone()));
        let ctx = Arc::new(serviceaccount::Context {
            client: client.clone(),
            accounts: accounts.store(),
        });
        let triggers = futures::stream::select(
            namespaces.subscribe().map(informer::trigger_self),
            accounts.subscribe().map(serviceaccount::trigger_namespace),
        )
        .flat_map(futures::stream::iter);
        let stores = [namespaces.ready(), accounts.ready()];
        let store = namespaces.store();
        tasks.spawn(applier("serviceaccount").start(
            stores,
            serviceaccount::reconcile,
            serviceaccount::error_policy,
            ctx,
            store,
            triggers,
        ));
        tasks.spawn(until(shutdown.clone(), accounts.run()));
    }
    if config.node_lifecycle || config.taint_eviction || config.pod_gc {
        if config.node_lifecycle {
            let leases = Informer::<Lease>::new(Api::namespaced(
                client.clone(),
                node_lifecycle::LEASE_NAMESPACE,
            ));
            let ctx = node_lifecycle::Context {
                client: client.clone(),
                nodes: nodes.store(),
                leases: leases.store(),
                pods: pods.store(),
                options: config.node_lifecycle_options.clone(),
                events: recorder("node-controller"),
            };
            let stores = [nodes.ready(), leases.ready(), pods.ready()];
            tasks.spawn(spawn_controller(
                "node-lifecycle",
                stores,
                node_lifecycle::run(ctx, shutdown.clone()),
            ));
            tasks.spawn(until(shutdown.clone(), leases.run()));
        }
        if config.taint_eviction {
            let ctx = taint_eviction::Context {
                client: client.clone(),
                nodes: nodes.store(),
                pods: pods.store(),
                events: recorder("taint-eviction-controller"),
            };
            let stores = [nodes.ready(), pods.ready()];
            tasks.spawn(spawn_controller(
                "taint-eviction",
                stores,
                taint_eviction::run(ctx, shutdown.clone()),
            ));
        }
        if config.pod_gc {
            let ctx = podgc::Context {
                client: client.clone(),
                nodes: nodes.store(),
                pods: pods.store(),
                options: config.pod_gc_options.clone(),
            };
            let stores = [nodes.ready(), pods.ready()];
            tasks.spawn(spawn_controller(
                "pod-gc",
                stores,
                podgc::run(ctx, shutdown.clone()),
            ));
        }
    }
    if config.node_lifecycle
        || config.taint_eviction
        || config.pod_gc
        || config.daemonset
        || config.endpoints
    {
        tasks.spawn(until(shutdown.clone(), nodes.run()));
    }
    if config.event_ttl {
        let options = config.event_ttl_options.clone();
        tasks.spawn(event_ttl::run(client.clone(), options, shutdown.clone()));
    }
    if let Some(ca) = config.certificate_authority.clone() {
        let ctx = certificates::Context {
            client: client.clone(),
            ca: Some(ca),
        };
        tasks.spawn(certificates::run(ctx, shutdown.clone()));
    }
    tasks.spawn(until(shutdown.clone(), namespaces.run()));
    tasks.spawn(until(shutdown.clone(), pods.run()));
    tasks.spawn(until(shutdown.clone(), replicasets.run()));
    tasks.spawn(until(shutdown.clone(), deployments.run()));
    info!("controllers started");
    shutdown.cancelled().await;
    while tasks.join_next().await.is_some() {}
    info!("controllers stopped");
    Ok(())
}

async fn until(token: CancellationToken, body: impl Future<Output = ()>) {
    tokio::select! {
        () = body => {}
        () = token.cancelled() => {}
    }
}

/// Starts `body` once every store has its first list.
async fn spawn_controller<const N: usize>(
    name: &'static str,
    stores: [informer::Ready; N],
    body: impl Future<Output = ()>,
) {
    future::join_all(stores.into_iter().map(informer::Ready::wait)).await;
    info!(controller = name, "caches synced, starting");
    body.await;
}

/// How one level-triggered controller runs on kube-runtime's `applier`.
struct Applier {
    name: &'static str,
    concurrency: u16,
    shutdown: CancellationToken,
}

impl Applier {
    /// Once every store has its first list, reconciles the objects of `store` that
    /// `triggers` name until shutdown, logging what did not complete.
    fn start<const N: usize, K, C, F, Fut, S>(
        self,
        stores: [informer::Ready; N],
        mut reconcile: F,
        error_policy: fn(Arc<K>, &Error, Arc<C>) -> kube::runtime::controller::Action,
        ctx: Arc<C>,
        store: kube::runtime::reflector::Store<K>,
        triggers: S,
    ) -> impl Future<Output = ()>
    where
        K: Clone + kube::Resource<DynamicType = ()> + std::fmt::Debug + Send + Sync + 'static,
        C: Send + Sync + 'static,
        F: FnMut(Arc<K>, Arc<C>) -> Fut,
        Fut: Future<Output = Result<kube::runtime::controller::Action, Error>> + Send + 'static,
        S: futures::Stream<
                Item = Result<kube::runtime::reflector::ObjectRef<K>, std::convert::Infallible>,
            >,
    {
        let name = self.name;
        let results = kube::runtime::applier(
            move |obj, ctx| Box::pin(reconcile(obj, ctx)),
            error_policy,
            ctx,
            store,
            triggers.take_until(self.shutdown.cancelled_owned()),
            kube::runtime::Config::default().concurrency(self.concurrency),
        );
        spawn_controller(name, stores, drain(name, results))
    }
}

/// What kube-runtime's applier yields per reconcile.
type AppliedResult<K> = Result<
    (
        kube::runtime::reflector::ObjectRef<K>,
        kube::runtime::controller::Action,
    ),
    kube::runtime::controller::Error<Error, std::convert::Infallible>,
>;

async fn drain<K, S>(name: &'static str, results: S)
where
    K: kube::Resource,
    S: futures::Stream<Item = AppliedResult<K>>,
{
    results
        .for_each(|result| {
            if let Err(error) = result {
                // Failures are logged by each error policy; this is the applier's view.
                debug!(controller = name, %error, "reconcile did not complete");
            }
            future::ready(())
        })
        .await;
}

/// Helpers shared by the unit tests of several controllers.
#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::Value;

    /// Deep-merges `from` into `into`: objects key by key, anything else replaced.
    pub fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }
}
