//! Event expiry: Events older than the TTL (an hour, kube-apiserver's `--event-ttl`) are
//! deleted, which etcd leases do upstream. Every `period` it pages through the Events of every
//! namespace (500 at a time, so memory stays bounded) and deletes those last seen before
//! `now - ttl`. [`expired`] is the decision.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long an Event lives after it was last seen.
    pub ttl: Duration,
    /// How often expired Events are looked for.
    pub period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: Duration::from_secs(3600),
            period: Duration::from_secs(60),
        }
    }
}

/// When the Event was last seen: `lastTimestamp`, else `eventTime`, else its creation.
pub fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Whether the Event is past its TTL at `now` (one that was never seen never expires here).
pub fn expired(event: &Event, now: Timestamp, ttl: Duration) -> bool {
    let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
    last_seen(event).is_some_and(|seen| now.duration_since(seen) > ttl)
}

/// Runs until `shutdown`.
pub async fn run(client: kube::Client, options: Options, shutdown: CancellationToken) {
    let api: Api<Event> = Api::all(client.clone());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(options.period) => {}
        }
        match sweep(&client, &api, &options).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "expired events deleted"),
            Err(error) => warn!(%error, "cannot list events to expire"),
        }
    }
}

async fn sweep(
    client: &kube::Client,
    api: &Api<Event>,
    options: &Options,
) -> Result<usize, kube::Error> {
    let now = Timestamp::now();
    let mut params = ListParams::default().limit(500);
    let mut deleted = 0;
    loop {
        let page = api.list(&params).await?;
        for event in &page.items {
            if !expired(event, now, options.ttl) {
                continue;
            }
            let (Some(name), Some(namespace)) = (&event.metadata.name, &event.metadata.namespace)
            else {
                continue;
            };
            let events: Api<Event> = Api::namespaced(client.clone(), namespace);
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: None,
                    resource_version: event.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match events.delete(name, &params).await {
                Ok(_) => deleted += 1,
                // Gone already, or seen again since: both fine.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(error) => debug!(%error, %name, "cannot delete expired event"),
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(deleted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_expire_an_hour_after_they_were_last_seen() {
        let event: Event = serde_json::from_value(json!({
            "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "involvedObject": {},
            "lastTimestamp": "2026-01-01T00:30:00Z"
        }))
        .expect("event");
        let hour = Duration::from_secs(3600);
        assert!(!expired(
            &event,
            "2026-01-01T01:29:00Z".parse().expect("t"),
            hour
        ));
        assert!(expired(
            &event,
            "2026-01-01T01:31:00Z".parse().expect("t"),
            hour
        ));
        let created_only: Event = serde_json::from_value(json!({
            "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "involvedObject": {}
        }))
        .expect("event");
        assert!(expired(
            &created_only,
            "2026-01-01T01:01:00Z".parse().expect("t"),
            hour
        ));
        let unknown: Event = serde_json::from_value(json!({"involvedObject": {}})).expect("event");
        assert!(!expired(
            &unknown,
            "2030-01-01T00:00:00Z".parse().expect("t"),
            hour
        ));
    }
}
