//! In-process waiting line per key, so that however many tasks of one process
//! wait for a key, only the one at the head talks to the backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default)]
pub(crate) struct LocalQueues {
    lines: Mutex<Lines>,
}

#[derive(Debug, Default)]
struct Lines {
    by_key: HashMap<String, Weak<AsyncMutex<()>>>,
    /// Size after the last purge of abandoned lines.
    purged_at: usize,
}

impl LocalQueues {
    /// Waits (first come, first served) until this task heads `key`'s line.
    pub(crate) async fn head_of_line(&self, key: &str) -> OwnedMutexGuard<()> {
        self.line(key).lock_owned().await
    }

    fn line(&self, key: &str) -> Arc<AsyncMutex<()>> {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(line) = lines.by_key.get(key).and_then(Weak::upgrade) {
            return line;
        }
        if lines.by_key.len() >= 2 * lines.purged_at.max(64) {
            lines.by_key.retain(|_, line| line.strong_count() > 0);
            lines.purged_at = lines.by_key.len();
        }
        let line = Arc::new(AsyncMutex::new(()));
        lines.by_key.insert(key.to_owned(), Arc::downgrade(&line));
        line
    }
}
