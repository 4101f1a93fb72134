//! In-process waiting line per key, so that however many tasks of one process
//! wait for a key, only the one at the head talks to the backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::notice::Listener;

/// One key's line. It holds what a head that took the lock hands to the
/// next: its listener, with the process already queued for the next release.
type Line = AsyncMutex<Option<Listener>>;

#[derive(Debug, Default)]
pub(crate) struct LocalQueues {
    lines: Mutex<Lines>,
}

#[derive(Debug, Default)]
struct Lines {
    by_key: HashMap<String, Weak<Line>>,
    /// Size after the last purge of abandoned lines.
    purged_at: usize,
}

/// Being at the head of a key's line.
#[derive(Debug)]
pub(crate) struct Head(OwnedMutexGuard<Option<Listener>>);

impl Head {
    /// Whether other tasks wait in the line behind this one.
    pub(crate) fn others_waiting(&self) -> bool {
        // The head's guard holds one reference; every task still waiting
        // for the line holds another.
        Arc::strong_count(OwnedMutexGuard::mutex(&self.0)) > 1
    }

    /// The listener the previous head handed on, if it did.
    pub(crate) fn take_handed_on(&mut self) -> Option<Listener> {
        self.0.take()
    }

    /// Hands `listener` to the next head, which waits for the next release
    /// instead of trying at once.
    pub(crate) fn hand_on(&mut self, listener: Listener) {
        *self.0 = Some(listener);
    }
}

impl LocalQueues {
    /// Waits (first come, first served) until this task heads `key`'s line.
    pub(crate) async fn head_of_line(&self, key: &str) -> Head {
        Head(self.line(key).lock_owned().await)
    }

    fn line(&self, key: &str) -> Arc<Line> {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(line) = lines.by_key.get(key).and_then(Weak::upgrade) {
            return line;
        }
        if lines.by_key.len() >= 2 * lines.purged_at.max(64) {
            lines.by_key.retain(|_, line| line.strong_count() > 0);
            lines.purged_at = lines.by_key.len();
        }
        let line = Arc::new(AsyncMutex::new(None));
        lines.by_key.insert(key.to_owned(), Arc::downgrade(&line));
        line
    }
}
