//! Release notices: how a waiter learns that a lock was given back without
//! polling for it.
//!
//! Every backend keeps a [`NoticeBoard`]: one watch channel per key that has
//! listeners in this process. The memory backend posts to it directly on
//! release; the Redis backend posts the wake-ups its pub/sub connection
//! receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct NoticeBoard {
    channels: Mutex<HashMap<String, Channel>>,
}

#[derive(Debug)]
struct Channel {
    notices: watch::Sender<()>,
    listeners: usize,
}

impl NoticeBoard {
    /// Registers a listener on `key`.
    pub(crate) fn join(&self, key: &str) -> watch::Receiver<()> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = channels.entry(key.to_owned()).or_insert_with(|| Channel {
            notices: watch::channel(()).0,
            listeners: 0,
        });
        channel.listeners += 1;
        channel.notices.subscribe()
    }

    /// Unregisters a listener; `true` when it was the key's last one.
    pub(crate) fn leave(&self, key: &str) -> bool {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(channel) = channels.get_mut(key) else {
            return true;
        };
        channel.listeners = channel.listeners.saturating_sub(1);
        if channel.listeners == 0 {
            channels.remove(key);
            return true;
        }
        false
    }

    /// Wakes every listener on `key`; `false` when it has none.
    pub(crate) fn notify(&self, key: &str) -> bool {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(channel) = channels.get(key) else {
            return false;
        };
        channel.notices.send_replace(());
        true
    }

    /// Wakes every listener on every key: notices may have been missed.
    pub(crate) fn notify_all(&self) {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in channels.values() {
            channel.notices.send_replace(());
        }
    }
}

/// Told when a listener goes away.
pub(crate) trait Unlisten: Send + Sync {
    /// `unheeded`: a notice reached the listener after its last attempt and
    /// it gave up without acting on it; a backend that wakes one client per
    /// release then wakes another.
    fn unlisten(&self, key: &str, unheeded: bool);
}

impl Unlisten for NoticeBoard {
    fn unlisten(&self, key: &str, _unheeded: bool) {
        self.leave(key);
    }
}

/// A subscription to one key's release notices; unsubscribes on drop.
pub(crate) struct Listener {
    key: String,
    notices: watch::Receiver<()>,
    /// Whether notices are known to arrive; if not, the waiter polls more often.
    live: bool,
    /// When the listener joined the board: no notice before reaches it.
    joined: Instant,
    /// Since when notices have been arriving without a gap, and reaching
    /// this listener, if known: a release after this instant is not missed.
    live_since: Option<Instant>,
    /// Set once the waiter took the lock: nothing is left unheeded.
    done: bool,
    owner: Arc<dyn Unlisten>,
}

impl Listener {
    pub(crate) fn new(
        key: &str,
        notices: watch::Receiver<()>,
        live: bool,
        owner: Arc<dyn Unlisten>,
    ) -> Self {
        Listener {
            key: key.to_owned(),
            notices,
            live,
            joined: Instant::now(),
            live_since: None,
            done: false,
            owner,
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live
    }

    /// Records since when notices have been arriving (`None`: not at all);
    /// they reach this listener since it joined, if that was later.
    pub(crate) fn set_live_since(&mut self, since: Option<Instant>) {
        self.live = since.is_some();
        self.live_since = since.map(|since| since.max(self.joined));
    }

    /// Whether every release after `instant` is sure to be heard.
    pub(crate) fn hears_since(&self, instant: Instant) -> bool {
        self.live_since.is_some_and(|since| since <= instant)
    }

    /// The waiter took the lock: a notice it did not wait for is no loss.
    pub(crate) fn finish(mut self) {
        self.done = true;
    }

    /// Forgets notices received so far; call before each attempt so a notice
    /// that arrives during the attempt is not lost.
    pub(crate) fn mark_seen(&mut self) {
        self.notices.borrow_and_update();
    }

    /// Resolves at the next notice after [`Listener::mark_seen`].
    pub(crate) async fn notified(&mut self) {
        if self.notices.changed().await.is_err() {
            // The board dropped the channel; never resolve, the caller's
            // fallback timer takes over.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let unheeded = !self.done && self.notices.has_changed().unwrap_or(false);
        self.owner.unlisten(&self.key, unheeded);
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("key", &self.key)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}
