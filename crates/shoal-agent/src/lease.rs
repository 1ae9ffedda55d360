//! The node's heartbeat: a `coordination.k8s.io/v1` Lease named after the node in
//! `kube-node-lease`, owned by the Node, renewed every quarter of its duration (10 s of the
//! default 40 s, as the kubelet's `--node-lease-duration-seconds`).
//!
//! Updates carry the resourceVersion read just before (optimistic concurrency); a conflict is
//! retried at once with a fresh read. This module does not watch other nodes' leases.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backoff::BackoffPolicy;

/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The default `leaseDurationSeconds` of the node lease.
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// How often a lease of `duration_seconds` is renewed: a quarter of it (at least 1 s).
pub(crate) fn renew_interval(duration_seconds: i32) -> Duration {
    Duration::from_millis((u64::try_from(duration_seconds).unwrap_or(0) * 250).max(1000))
}

/// The lease as this node wants it, keeping `existing`'s metadata (resourceVersion included).
pub(crate) fn desired_lease(
    node: &str,
    node_uid: &str,
    existing: Option<Lease>,
    duration_seconds: i32,
    now: Timestamp,
) -> Lease {
    let mut lease = existing.unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(node.to_owned()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    lease.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Node".to_owned(),
        name: node.to_owned(),
        uid: node_uid.to_owned(),
        block_owner_deletion: None,
        controller: None,
    }]);
    let mut spec = lease.spec.take().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(node) || spec.acquire_time.is_none() {
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.holder_identity = Some(node.to_owned());
    spec.lease_duration_seconds = Some(duration_seconds);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    lease
}

async fn renew(
    client: &kube::Client,
    node: &str,
    node_uid: &str,
    duration_seconds: i32,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    match api.get_opt(node).await? {
        Some(existing) => {
            let lease = desired_lease(
                node,
                node_uid,
                Some(existing),
                duration_seconds,
                Timestamp::now(),
            );
            api.replace(node, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = desired_lease(node, node_uid, None, duration_seconds, Timestamp::now());
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    // The namespace is missing (an apiserver that does not create it).
                    let namespaces: Api<Namespace> = Api::all(client.clone());
                    let ns = Namespace {
                        metadata: ObjectMeta {
                            name: Some(LEASE_NAMESPACE.to_owned()),
                            ..ObjectMeta::default()
                        },
                        ..Namespace::default()
                    };
                    match namespaces.create(&PostParams::default(), &ns).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(error) => return Err(error),
                    }
                    api.create(&PostParams::default(), &lease).await?;
                }
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

/// Renews a lease of `duration_seconds` every [`renew_interval`] once the node's uid is
/// known, until `shutdown`.
pub(crate) async fn run(
    client: kube::Client,
    node: String,
    mut node_uid: watch::Receiver<Option<String>>,
    api_backoff: BackoffPolicy,
    duration_seconds: i32,
    shutdown: CancellationToken,
) {
    let interval = renew_interval(duration_seconds);
    let uid = tokio::select! {
        _ = shutdown.cancelled() => return,
        uid = node_uid.wait_for(Option::is_some) => match uid {
            Ok(uid) => uid.clone().unwrap_or_default(),
            Err(_) => return,
        },
    };
    let mut retry = crate::ApiRetry::new(api_backoff);
    loop {
        let outcome = match renew(&client, &node, &uid, duration_seconds).await {
            Ok(()) => {
                debug!(node = %node, "renewed node lease");
                retry.reset();
                Ok(interval)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(node = %node, "lease conflict, retrying");
                Ok(Duration::from_millis(50))
            }
            Err(error) => Err(error),
        };
        if !retry
            .wait(outcome, &node, "cannot renew node lease", &shutdown)
            .await
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn lease_shape() {
        let t0: Timestamp = "2026-11-23T19:00:00Z".parse().expect("ts");
        let t1: Timestamp = "2026-11-23T19:00:10Z".parse().expect("ts");
        let first = desired_lease("n1", "uid-n1", None, 40, t0);
        expect![[r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"n1","namespace":"kube-node-lease","ownerReferences":[{"apiVersion":"v1","kind":"Node","name":"n1","uid":"uid-n1"}]},"spec":{"acquireTime":"2026-11-23T19:00:00.000000Z","holderIdentity":"n1","leaseDurationSeconds":40,"renewTime":"2026-11-23T19:00:00.000000Z"}}"#]]
            .assert_eq(&serde_json::to_string(&first).expect("json"));
        let mut stored = first;
        stored.metadata.resource_version = Some("7".into());
        let second = desired_lease("n1", "uid-n1", Some(stored), 40, t1);
        let json = serde_json::to_value(&second).expect("json");
        assert_eq!(json["metadata"]["resourceVersion"], "7");
        assert_eq!(json["spec"]["acquireTime"], "2026-11-23T19:00:00.000000Z");
        assert_eq!(json["spec"]["renewTime"], "2026-11-23T19:00:10.000000Z");
    }
}
