//! Watch streams: events after a revision, from the in-memory ring while the watcher keeps
//! up and from the history table on disk while it does not, then live.
//!
//! A stream never holds more than one page of events (`PAGE`) beyond what its consumer took,
//! and never decodes the whole retained history at once. It ends with `Compacted` when it
//! falls behind the compaction point (the consumer must re-list), and ends quietly when the
//! store shuts down. Resuming a stream is the caller's business.
//!
//! A progress stream ([`watch_progress`]) also says how far it has looked whenever it has
//! caught up with the newest revision: `Progress(r)` promises that every event up to `r` under
//! the prefix has been handed out (etcd's progress notifications). A cache fed by it knows it
//! reflects the store at `r` even when nothing under its prefix changed.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::events::Lookup;
use crate::state_machine::{Shared, event_key};
use crate::{StoreError, WatchEvent, WatchItem};

/// Events read from the ring or disk at a time.
const PAGE: usize = 256;

struct State {
    shared: Weak<Shared>,
    latest: watch::Receiver<u64>,
    buffer: VecDeque<WatchEvent>,
    prefix: String,
    /// Highest revision examined (handed out or skipped by prefix).
    last: u64,
    /// Whether to report progress, and the last revision reported.
    progress: bool,
    reported: u64,
    ended: bool,
}

/// The events under `prefix` after revision `after`.
pub fn watch(
    shared: &Arc<Shared>,
    prefix: &str,
    after: u64,
) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
    let items = start(shared, prefix, after, false)?;
    Ok(items
        .filter_map(|item| {
            std::future::ready(match item {
                Ok(WatchItem::Event(e)) => Some(Ok(e)),
                Ok(WatchItem::Progress(_)) => None,
                Err(e) => Some(Err(e)),
            })
        })
        .boxed())
}

/// The events under `prefix` after revision `after`, and `Progress` whenever caught up.
pub fn watch_progress(
    shared: &Arc<Shared>,
    prefix: &str,
    after: u64,
) -> Result<BoxStream<'static, Result<WatchItem, StoreError>>, StoreError> {
    start(shared, prefix, after, true)
}

fn start(
    shared: &Arc<Shared>,
    prefix: &str,
    after: u64,
    progress: bool,
) -> Result<BoxStream<'static, Result<WatchItem, StoreError>>, StoreError> {
    let compacted = shared.compacted();
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            oldest: compacted + 1,
        });
    }
    let state = State {
        shared: Arc::downgrade(shared),
        latest: shared.events.subscribe(),
        buffer: VecDeque::new(),
        prefix: prefix.to_owned(),
        last: after,
        progress,
        reported: after,
        ended: false,
    };
    Ok(futures::stream::unfold(state, next).boxed())
}

async fn next(mut st: State) -> Option<(Result<WatchItem, StoreError>, State)> {
    loop {
        if st.ended {
            return None;
        }
        if let Some(event) = st.buffer.pop_front() {
            return Some((Ok(WatchItem::Event(event)), st));
        }
        let shared = st.shared.upgrade()?;
        // Mark the current revision seen before looking, so a push after the look wakes us.
        st.latest.borrow_and_update();
        match shared.events.after(st.last, PAGE) {
            Lookup::Events(events) if events.is_empty() => {
                // Revisions are dense, so an empty look after `last` means every event up to
                // it has been examined.
                if st.progress && st.last > st.reported {
                    st.reported = st.last;
                    return Some((Ok(WatchItem::Progress(st.last)), st));
                }
                drop(shared);
                if st.latest.changed().await.is_err() {
                    return None;
                }
            }
            Lookup::Events(events) => {
                for e in events {
                    st.last = e.revision();
                    if event_key(&e).starts_with(&st.prefix) {
                        st.buffer.push_back(Arc::unwrap_or_clone(e));
                    }
                }
                // Nothing under the prefix in a whole page: say how far we looked, so a
                // quiet prefix's progress keeps up under writes elsewhere.
                if st.buffer.is_empty() && st.progress && st.last > st.reported {
                    st.reported = st.last;
                    return Some((Ok(WatchItem::Progress(st.last)), st));
                }
            }
            Lookup::Behind => {
                let (prefix, after) = (st.prefix.clone(), st.last);
                let page =
                    tokio::task::spawn_blocking(move || shared.history_page(&prefix, after, PAGE))
                        .await;
                let Ok(page) = page else {
                    return None;
                };
                match page {
                    Ok(Ok((events, scanned))) => {
                        st.last = scanned.max(st.last);
                        st.buffer.extend(events);
                    }
                    Ok(Err(oldest)) => {
                        tracing::debug!(prefix = %st.prefix, after = st.last, "watcher fell behind compaction");
                        st.ended = true;
                        return Some((
                            Err(StoreError::Compacted {
                                requested: st.last,
                                oldest,
                            }),
                            st,
                        ));
                    }
                    Err(e) => {
                        st.ended = true;
                        return Some((Err(e.into()), st));
                    }
                }
            }
        }
    }
}
