//! One watch per resource kind, shared by every controller that needs the kind.
//!
//! An [`Informer`] runs a kube-runtime watcher into a reflector store and fans each change
//! out to its subscribers, after the store has applied it, so a reconcile triggered by a
//! change always finds that change (or a newer one) in the store. It does no filtering and
//! keeps no history; a subscriber that needs deletions it missed during a re-list rescans
//! on [`Change::Synced`].

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event, watcher};
use serde::de::DeserializeOwned;
use tracing::warn;

/// What a subscriber hears.
#[derive(Debug)]
pub enum Change<K> {
    /// An object was created or changed (or listed).
    Applied(Arc<K>),
    /// An object was deleted; this is its last known state.
    Deleted(Arc<K>),
    /// A (re-)list finished: the store is complete again.
    Synced,
}

/// Resolves once a store holds its first complete list.
pub struct Ready(BoxFuture<'static, ()>);

impl Ready {
    /// Waits for the store.
    pub async fn wait(self) {
        self.0.await;
    }
}

/// A watch of one kind feeding a store and subscribers.
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    writer: Writer<K>,
    store: Store<K>,
    subscribers: Vec<UnboundedSender<Change<K>>>,
    // Not `Store::wait_until_ready`: its one-shot wakes only one of several waiters.
    synced: tokio::sync::watch::Sender<bool>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// An informer over `api` (not started until [`Informer::run`] is polled).
    pub fn new(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        Informer {
            api,
            writer,
            store,
            subscribers: Vec::new(),
            synced: tokio::sync::watch::Sender::new(false),
        }
    }

    /// A reader of the store.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Resolves when the store has its first list.
    pub fn ready(&self) -> Ready {
        let mut synced = self.synced.subscribe();
        Ready(
            async move {
                // An error means the informer is gone; the caller then simply starts.
                let _ = synced.wait_for(|done| *done).await;
            }
            .boxed(),
        )
    }

    /// A new stream of changes (unbounded: the informer never waits for a subscriber).
    pub fn subscribe(&mut self) -> UnboundedReceiver<Change<K>> {
        let (tx, rx) = unbounded();
        self.subscribers.push(tx);
        rx
    }

    /// Runs the watch forever (it retries with backoff on errors).
    pub fn run(self) -> impl Future<Output = ()> + Send {
        let Informer {
            api,
            mut writer,
            subscribers,
            synced,
            ..
        } = self;
        let kind = K::kind(&()).into_owned();
        async move {
            let mut events =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
            let mut listed: Vec<ObjectRef<K>> = Vec::new();
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        warn!(%kind, %error, "watch failed, retrying");
                        continue;
                    }
                };
                let reader = writer.as_reader();
                let before = matches!(event, Event::InitDone).then(|| reader.state());
                writer.apply_watcher_event(&event);
                // Objects of a (re-)list reach the store only at InitDone, so subscribers
                // hear of them then, followed by what vanished during the gap.
                let changes: Vec<Change<K>> = match event {
                    Event::Apply(obj) => vec![Change::Applied(Arc::new(obj))],
                    Event::Delete(obj) => vec![Change::Deleted(Arc::new(obj))],
                    Event::Init => {
                        listed.clear();
                        continue;
                    }
                    Event::InitApply(obj) => {
                        listed.push(ObjectRef::from_obj(&obj));
                        continue;
                    }
                    Event::InitDone => {
                        let mut changes: Vec<Change<K>> = listed
                            .drain(..)
                            .filter_map(|r| reader.get(&r))
                            .map(Change::Applied)
                            .collect();
                        for old in before.into_iter().flatten() {
                            if reader.get(&ObjectRef::from_obj(old.as_ref())).is_none() {
                                changes.push(Change::Deleted(old));
                            }
                        }
                        changes.push(Change::Synced);
                        synced.send_replace(true);
                        changes
                    }
                };
                for change in changes {
                    broadcast(&subscribers, &change);
                }
            }
        }
    }
}

fn broadcast<K>(subscribers: &[UnboundedSender<Change<K>>], change: &Change<K>) {
    for subscriber in subscribers {
        let copy = match change {
            Change::Applied(obj) => Change::Applied(Arc::clone(obj)),
            Change::Deleted(obj) => Change::Deleted(Arc::clone(obj)),
            Change::Synced => Change::Synced,
        };
        // A closed subscriber (its controller stopped) is simply skipped.
        let _ = subscriber.unbounded_send(copy);
    }
}

/// Trigger for the changed object itself (deletions need no reconcile).
pub fn trigger_self<K>(change: Change<K>) -> Option<Result<ObjectRef<K>, Infallible>>
where
    K: Resource<DynamicType = ()>,
{
    match change {
        Change::Applied(obj) => Some(Ok(ObjectRef::from_obj(obj.as_ref()))),
        Change::Deleted(_) | Change::Synced => None,
    }
}

/// Trigger for the controller (owner reference with `controller: true`) of kind `Owner`
/// of the changed child, on any change including deletion.
pub fn trigger_controller<Child, Owner>(
    change: Change<Child>,
) -> Option<Result<ObjectRef<Owner>, Infallible>>
where
    Child: Resource<DynamicType = ()>,
    Owner: Resource<DynamicType = ()>,
{
    let (Change::Applied(obj) | Change::Deleted(obj)) = change else {
        return None;
    };
    let meta = obj.meta();
    let owner = crate::pods::controller_of(meta)?;
    if owner.kind != Owner::kind(&()) || owner.api_version != Owner::api_version(&()) {
        return None;
    }
    let reference = ObjectRef::new(&owner.name);
    Some(Ok(match meta.namespace.as_deref() {
        Some(ns) => reference.within(ns),
        None => reference,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    #[test]
    fn triggers_the_controller_of_the_right_kind() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns",
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "other", "uid": "1"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "2", "controller": true}
            ]}}))
        .expect("pod");
        let pod = Arc::new(pod);
        let reference = trigger_controller::<Pod, ReplicaSet>(Change::Deleted(Arc::clone(&pod)));
        assert_eq!(reference, Some(Ok(ObjectRef::new("rs").within("ns"))));
        assert_eq!(
            trigger_controller::<Pod, Deployment>(Change::Applied(Arc::clone(&pod))),
            None
        );
        assert_eq!(trigger_controller::<Pod, ReplicaSet>(Change::Synced), None);
        assert_eq!(
            trigger_self::<Pod>(Change::Applied(pod)),
            Some(Ok(ObjectRef::new("p").within("ns")))
        );
    }
}
