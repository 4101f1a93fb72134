//! Release notices: how a waiter learns that a lock was given back without
//! polling for it.
//!
//! Every backend keeps a [`NoticeBoard`]: one watch channel per key that has
//! listeners in this process. The memory backend posts to it directly on
//! release; the Redis backend posts what its pub/sub connection receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

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

    pub(crate) fn has_listeners(&self, key: &str) -> bool {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.contains_key(key)
    }

    /// Keys that have listeners now.
    pub(crate) fn keys(&self) -> Vec<String> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.keys().cloned().collect()
    }

    /// Wakes every listener on `key`.
    pub(crate) fn notify(&self, key: &str) {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(key) {
            channel.notices.send_replace(());
        }
    }

    /// Wakes every listener on every key: notices may have been missed.
    pub(crate) fn notify_all(&self) {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        for channel in channels.values() {
            channel.notices.send_replace(());
        }
    }
}

/// Told when a listener goes away, so a backend can drop its subscription.
pub(crate) trait Unlisten: Send + Sync {
    fn unlisten(&self, key: &str);
}

impl Unlisten for NoticeBoard {
    fn unlisten(&self, key: &str) {
        self.leave(key);
    }
}

/// A subscription to one key's release notices; unsubscribes on drop.
pub(crate) struct Listener {
    key: String,
    notices: watch::Receiver<()>,
    /// Whether notices are known to arrive; if not, the waiter polls more often.
    live: bool,
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
            owner,
        }
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live
    }

    pub(crate) fn set_live(&mut self, live: bool) {
        self.live = live;
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
        self.owner.unlisten(&self.key);
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
