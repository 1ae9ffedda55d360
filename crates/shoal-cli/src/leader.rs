//! Leader election through a `coordination.k8s.io` Lease, as client-go's leaderelection: every
//! control-plane member runs the scheduler and the controllers, but each acts only while its
//! member holds the component's Lease in `kube-system`.
//!
//! Time is only ever measured on this member's monotonic clock: a Lease held by another member
//! is considered expired when its record has not changed for `lease_duration` as observed
//! here, never by comparing its `renewTime` with this member's wall clock. Clock skew between
//! members cannot make two of them lead at once (beyond the usual Lease caveat that a paused
//! process may act briefly after it lost the Lease).
//!
//! A leader that cannot renew within `renew_deadline` stops its component (cancels its token)
//! and goes back to waiting; on shutdown it releases the Lease so another member takes over at
//! once.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Timing of an election (kube-scheduler's defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One component's election.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's name (`kube-scheduler`, `kube-controller-manager`).
    pub lease: String,
    /// This member's identity in `holderIdentity`.
    pub identity: String,
    pub timing: Timing,
}

/// What this member last saw of the Lease, and when (on its own clock).
struct Observed {
    record: Option<(String, Option<MicroTime>, i32)>,
    at: Instant,
}

fn record(lease: &Lease) -> (String, Option<MicroTime>, i32) {
    let spec = lease.spec.clone().unwrap_or_default();
    (
        spec.holder_identity.unwrap_or_default(),
        spec.renew_time,
        spec.lease_transitions.unwrap_or(0),
    )
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Election {
    /// Takes or renews the Lease; `Ok(true)` when this member holds it afterwards.
    async fn try_acquire_or_renew(&self, api: &Api<Lease>, seen: &mut Observed) -> Result<bool> {
        let duration_seconds = self.timing.lease_duration.as_secs().max(1) as i32;
        let current = match api.get_opt(&self.lease).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease.clone()),
                        namespace: Some("kube-system".into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration_seconds),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return Ok(api.create(&PostParams::default(), &lease).await.is_ok());
            }
        };
        let observed = record(&current);
        if seen.record.as_ref() != Some(&observed) {
            seen.record = Some(observed.clone());
            seen.at = Instant::now();
        }
        let (holder, _, transitions) = observed;
        let mine = holder == self.identity;
        let free = holder.is_empty();
        if !mine && !free && seen.at.elapsed() < self.timing.lease_duration {
            return Ok(false);
        }
        let mut lease = current;
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(transitions + 1);
        }
        spec.lease_duration_seconds = Some(duration_seconds);
        spec.renew_time = Some(now());
        // A replace carries the resourceVersion read above: a competing writer makes it fail.
        match api
            .replace(&self.lease, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                seen.record = Some(record(&written));
                seen.at = Instant::now();
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up (on shutdown), if this member holds it.
    async fn release(&self, api: &Api<Lease>) {
        let Ok(Some(mut lease)) = api.get_opt(&self.lease).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        if let Err(e) = api
            .replace(&self.lease, &PostParams::default(), &lease)
            .await
        {
            warn!(lease = %self.lease, error = %e, "releasing the lease failed");
        }
    }
}

/// Runs `component` whenever this member holds the election's Lease, until `shutdown`. The
/// component gets a token cancelled when leadership is lost; if it fails while leading, the
/// error is returned.
pub async fn run_elected<F, Fut>(
    client: kube::Client,
    election: Election,
    shutdown: CancellationToken,
    component: F,
) -> Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, "kube-system");
    let mut seen = Observed {
        record: None,
        at: Instant::now(),
    };
    let retry = election.timing.retry_period;
    loop {
        // Candidate: try until the Lease is ours.
        loop {
            match election.try_acquire_or_renew(&api, &mut seen).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    warn!(lease = %election.lease, error = %e, "leader election attempt failed")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(retry) => {}
            }
        }
        info!(lease = %election.lease, identity = %election.identity, "became leader");
        let leading = shutdown.child_token();
        let mut task = tokio::spawn(component(leading.clone()));
        let mut renewed = Instant::now();
        let lost = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break false,
                done = &mut task => {
                    election.release(&api).await;
                    return match done {
                        Ok(result) => result,
                        Err(e) => Err(anyhow::anyhow!("{} panicked: {e}", election.lease)),
                    };
                }
                _ = tokio::time::sleep(retry) => {}
            }
            match election.try_acquire_or_renew(&api, &mut seen).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => break true,
                Err(e) => {
                    warn!(lease = %election.lease, error = %e, "renewing the lease failed");
                    if renewed.elapsed() >= election.timing.renew_deadline {
                        break true;
                    }
                }
            }
        };
        leading.cancel();
        let _ = task.await;
        if !lost {
            election.release(&api).await;
            return Ok(());
        }
        warn!(lease = %election.lease, "lost leadership; stopped the component");
    }
}
