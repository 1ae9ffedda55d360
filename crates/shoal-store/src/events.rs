//! The newest watch events in memory, bounded in bytes.
//!
//! The state machine pushes every applied event here after its transaction committed, in
//! revision order; revisions are dense (every successful write takes one and makes one event),
//! so the ring covers one contiguous range. Watchers read from it by revision and wait on the
//! latest revision for more. A watcher that falls behind the ring is not an error: the same
//! events are in the history table on disk, which it reads instead until it catches up. The
//! ring only bounds how much memory the live path holds; the disk history bounds how far back a
//! watcher may be.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::WatchEvent;

/// What [`EventRing::after`] found.
pub enum Lookup {
    /// The events after the asked revision that are in memory (empty: none yet).
    Events(Vec<Arc<WatchEvent>>),
    /// The asked revision is older than the ring: read the history on disk.
    Behind,
}

struct Ring {
    events: VecDeque<(Arc<WatchEvent>, usize)>,
    bytes: usize,
    /// Revision of the newest event pushed (or of the state the ring started from).
    last: u64,
}

/// Bounded in-memory tail of the watch history.
pub struct EventRing {
    ring: Mutex<Ring>,
    latest: watch::Sender<u64>,
    limit: usize,
}

fn event_size(e: &WatchEvent) -> usize {
    match e {
        WatchEvent::Put { kv, prev } => {
            96 + kv.key.len() + kv.value.len() + prev.as_ref().map_or(0, |p| p.value.len())
        }
        WatchEvent::Delete { prev, .. } => 96 + prev.key.len() + prev.value.len(),
    }
}

impl EventRing {
    /// An empty ring holding at most `limit` bytes of events (and always the newest one),
    /// starting after `revision`.
    pub fn new(limit: usize, revision: u64) -> EventRing {
        EventRing {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                bytes: 0,
                last: revision,
            }),
            latest: watch::channel(revision).0,
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends events (in revision order, continuing the ring) and wakes the watchers.
    pub fn push(&self, events: Vec<WatchEvent>) {
        let Some(last) = events.last().map(WatchEvent::revision) else {
            return;
        };
        {
            let mut ring = self.lock();
            for e in events {
                let size = event_size(&e);
                ring.bytes += size;
                ring.events.push_back((Arc::new(e), size));
            }
            while ring.bytes > self.limit && ring.events.len() > 1 {
                if let Some((_, size)) = ring.events.pop_front() {
                    ring.bytes -= size;
                }
            }
            ring.last = last;
        }
        self.latest.send_replace(last);
    }

    /// Forgets every event: the state was replaced (a snapshot was installed) at `revision`.
    pub fn reset(&self, revision: u64) {
        {
            let mut ring = self.lock();
            ring.events.clear();
            ring.bytes = 0;
            ring.last = revision;
        }
        self.latest.send_replace(revision);
    }

    /// Up to `max` events with revision > `after`.
    pub fn after(&self, after: u64, max: usize) -> Lookup {
        let ring = self.lock();
        if after >= ring.last {
            return Lookup::Events(Vec::new());
        }
        let Some(first) = ring.events.front().map(|(e, _)| e.revision()) else {
            return Lookup::Behind;
        };
        if after + 1 < first {
            return Lookup::Behind;
        }
        let skip = (after + 1 - first) as usize;
        Lookup::Events(
            ring.events
                .iter()
                .skip(skip)
                .take(max)
                .map(|(e, _)| Arc::clone(e))
                .collect(),
        )
    }

    /// Follows the newest revision pushed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Bytes of events held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::KeyValue;

    fn put(rev: u64, size: usize) -> WatchEvent {
        WatchEvent::Put {
            kv: KeyValue {
                key: format!("/k/{rev}"),
                value: Bytes::from(vec![0u8; size]),
                create_revision: rev,
                mod_revision: rev,
            },
            prev: None,
        }
    }

    fn revisions(l: Lookup) -> Option<Vec<u64>> {
        match l {
            Lookup::Events(v) => Some(v.iter().map(|e| e.revision()).collect()),
            Lookup::Behind => None,
        }
    }

    #[test]
    fn holds_the_newest_events_within_its_byte_limit() {
        let ring = EventRing::new(10_000, 0);
        ring.push((1..=100).map(|r| put(r, 1000)).collect());
        assert!(ring.bytes() <= 10_000, "{}", ring.bytes());
        // Old revisions are behind; the newest are there, in order.
        assert!(revisions(ring.after(0, 10)).is_none());
        assert_eq!(revisions(ring.after(97, 10)), Some(vec![98, 99, 100]));
        assert_eq!(revisions(ring.after(100, 10)), Some(vec![]));
        assert_eq!(revisions(ring.after(98, 1)), Some(vec![99]));
    }

    #[test]
    fn keeps_one_event_larger_than_the_limit() {
        let ring = EventRing::new(100, 0);
        ring.push(vec![put(1, 5000)]);
        assert_eq!(revisions(ring.after(0, 10)), Some(vec![1]));
    }

    #[test]
    fn reset_starts_over_at_a_revision() {
        let ring = EventRing::new(10_000, 0);
        ring.push(vec![put(1, 10), put(2, 10)]);
        ring.reset(50);
        assert_eq!(revisions(ring.after(50, 10)), Some(vec![]));
        assert!(revisions(ring.after(2, 10)).is_none());
        ring.push(vec![put(51, 10)]);
        assert_eq!(revisions(ring.after(50, 10)), Some(vec![51]));
        assert_eq!(*ring.subscribe().borrow(), 51);
    }
}
