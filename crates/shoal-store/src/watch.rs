//! Watch streams: retained history from disk, then live events from the broadcast channel.
//!
//! The stream subscribes to live events before it reads history, so no event can fall between
//! the two; live events at or below the last replayed revision are dropped as duplicates. A
//! watcher that falls more than the channel's capacity behind gets `WatchLagged` and its
//! stream ends: it must re-list. Resuming a stream is the caller's business.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::state_machine::{Shared, event_key};
use crate::{StoreError, WatchEvent};

struct State {
    history: VecDeque<WatchEvent>,
    live: broadcast::Receiver<Arc<WatchEvent>>,
    prefix: String,
    /// Highest revision handed out (or `after`).
    last: u64,
    ended: bool,
}

pub fn watch(
    shared: &Shared,
    prefix: &str,
    after: u64,
) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
    let live = shared.events.subscribe();
    let history = match shared.history(prefix, after)? {
        Ok(h) => h,
        Err(oldest) => {
            return Err(StoreError::Compacted {
                requested: after,
                oldest,
            });
        }
    };
    let state = State {
        history: history.into(),
        live,
        prefix: prefix.to_owned(),
        last: after,
        ended: false,
    };
    Ok(futures::stream::unfold(state, next).boxed())
}

async fn next(mut st: State) -> Option<(Result<WatchEvent, StoreError>, State)> {
    if st.ended {
        return None;
    }
    if let Some(event) = st.history.pop_front() {
        st.last = event.revision();
        return Some((Ok(event), st));
    }
    loop {
        match st.live.recv().await {
            Ok(event) => {
                if event.revision() <= st.last || !event_key(&event).starts_with(&st.prefix) {
                    continue;
                }
                st.last = event.revision();
                return Some((Ok(Arc::unwrap_or_clone(event)), st));
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::debug!(missed, prefix = %st.prefix, "watcher lagged");
                st.ended = true;
                return Some((Err(StoreError::WatchLagged), st));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}
