//! The queue of pods waiting for a node: active (ready to try), in flight (a decision or a
//! binding is running), and backing off after a failed attempt. Active pods come out by
//! priority, highest first, then in the order they became active (kube-scheduler's
//! PrioritySort), so a high-priority pod is decided before lower ones take its room.
//!
//! Owns only ordering and retry timing; it never looks at nodes. A failed pod waits 1 s,
//! doubling to 60 s, unless the cluster changes (a node appears or changes, a bound pod
//! releases resources), which moves every waiting pod back to active, at most every
//! [`FLUSH_INTERVAL`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

/// First retry delay after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Minimum time between two moves of all waiting pods back to active.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    InFlight,
    Backoff(Instant),
}

#[derive(Debug)]
struct Entry {
    pod: Arc<Pod>,
    state: State,
    attempts: u32,
    /// Which activation of this entry its place in `active` belongs to.
    seq: u64,
}

/// Pending pods by `namespace/name`.
#[derive(Debug, Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    /// (priority, activation order, key); entries no longer active are skipped on pop.
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    next_seq: u64,
    backoff: BTreeSet<(Instant, String)>,
    flush_requested: bool,
    last_flush: Option<Instant>,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of pending pods in any state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys of all pending pods.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    /// Adds a new pending pod as active, or refreshes the object of a known one without
    /// changing its state.
    pub fn upsert(&mut self, key: String, pod: Arc<Pod>) {
        match self.entries.get_mut(&key) {
            Some(entry) => entry.pod = pod,
            None => {
                self.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        state: State::Active,
                        attempts: 0,
                        seq: 0,
                    },
                );
                self.activate(key);
            }
        }
    }

    fn activate(&mut self, key: String) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        self.next_seq += 1;
        entry.state = State::Active;
        entry.seq = self.next_seq;
        let priority = entry
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.priority)
            .unwrap_or(0);
        self.active.insert((Reverse(priority), entry.seq, key));
    }

    /// Forgets a pod (bound, deleted, or no longer ours).
    pub fn remove(&mut self, key: &str) {
        if let Some(Entry {
            state: State::Backoff(at),
            ..
        }) = self.entries.remove(key)
        {
            self.backoff.remove(&(at, key.to_owned()));
        }
    }

    /// Takes the next active pod and marks it in flight.
    pub fn pop(&mut self) -> Option<(String, Arc<Pod>)> {
        while let Some((_, seq, key)) = self.active.pop_first() {
            if let Some(entry) = self.entries.get_mut(&key)
                && entry.state == State::Active
                && entry.seq == seq
            {
                entry.state = State::InFlight;
                let pod = Arc::clone(&entry.pod);
                return Some((key, pod));
            }
        }
        None
    }

    /// Puts a pod that failed to schedule or bind back, to retry after its backoff.
    pub fn back_off(&mut self, key: &str, now: Instant) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let State::Backoff(at) = entry.state {
            self.backoff.remove(&(at, key.to_owned()));
        }
        let delay = INITIAL_BACKOFF
            .saturating_mul(1u32 << entry.attempts.min(16))
            .min(MAX_BACKOFF);
        entry.attempts = entry.attempts.saturating_add(1);
        let at = now + delay;
        entry.state = State::Backoff(at);
        self.backoff.insert((at, key.to_owned()));
    }

    /// Asks for every backing-off pod to be retried soon: the cluster changed.
    pub fn request_flush(&mut self) {
        self.flush_requested = true;
    }

    /// When the caller should next call [`Queue::wake`], if ever.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let backoff = self.backoff.first().map(|(at, _)| *at);
        let flush = (self.flush_requested && !self.backoff.is_empty()).then(|| {
            self.last_flush
                .map_or_else(Instant::now, |t| t + FLUSH_INTERVAL)
        });
        match (backoff, flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves pods whose backoff expired, or all of them if a flush is due, to active.
    pub fn wake(&mut self, now: Instant) {
        let flush_due =
            self.flush_requested && self.last_flush.is_none_or(|t| now >= t + FLUSH_INTERVAL);
        if flush_due {
            self.flush_requested = false;
            self.last_flush = Some(now);
        }
        while let Some((at, key)) = self.backoff.first().cloned() {
            if at > now && !flush_due {
                break;
            }
            self.backoff.pop_first();
            if self
                .entries
                .get(&key)
                .is_some_and(|entry| entry.state == State::Backoff(at))
            {
                self.activate(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Arc<Pod> {
        Arc::new(Pod::default())
    }

    #[test]
    fn pops_in_order_and_skips_removed() {
        let mut q = Queue::new();
        q.upsert("a".into(), pod());
        q.upsert("b".into(), pod());
        q.upsert("a".into(), pod());
        q.remove("a");
        assert_eq!(q.pop().map(|(k, _)| k).as_deref(), Some("b"));
        assert!(q.pop().is_none());
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn higher_priority_first_then_in_arrival_order() {
        let with_priority = |p: i32| {
            Arc::new(Pod {
                spec: Some(k8s_openapi::api::core::v1::PodSpec {
                    priority: Some(p),
                    ..Default::default()
                }),
                ..Pod::default()
            })
        };
        let mut q = Queue::new();
        q.upsert("low".into(), with_priority(0));
        q.upsert("high".into(), with_priority(100));
        q.upsert("low2".into(), with_priority(0));
        q.upsert("mid".into(), with_priority(50));
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|(k, _)| k)).collect();
        assert_eq!(order, ["high", "mid", "low", "low2"]);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.upsert("a".into(), pod());
        let mut delays = Vec::new();
        for _ in 0..9 {
            q.pop();
            q.back_off("a", now);
            delays.push(q.next_wakeup().map(|t| (t - now).as_secs()));
            q.wake(now + MAX_BACKOFF);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60].map(Some),);
    }

    #[test]
    fn flush_moves_waiting_pods_to_active() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.upsert("a".into(), pod());
        q.pop();
        q.back_off("a", now);
        q.wake(now);
        assert!(q.pop().is_none());
        q.request_flush();
        q.wake(now);
        assert_eq!(q.pop().map(|(k, _)| k).as_deref(), Some("a"));
        // An in-flight pod is not disturbed by updates.
        q.upsert("a".into(), pod());
        assert!(q.pop().is_none());
    }
}
