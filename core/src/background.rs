//! A background task fed through a channel, started on first use and started
//! again if its runtime went away (a client can outlive the runtime it was
//! first used on, as in tests that each build their own).

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

#[derive(Debug)]
pub(crate) struct Background<T> {
    sender: Mutex<Option<mpsc::UnboundedSender<T>>>,
}

impl<T: Send + 'static> Background<T> {
    pub(crate) fn new() -> Self {
        Background {
            sender: Mutex::new(None),
        }
    }

    /// Whether the task is running: started, and not ended with its runtime.
    pub(crate) fn is_running(&self) -> bool {
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        sender.as_ref().is_some_and(|tx| !tx.is_closed())
    }

    /// Sends `msg` to the task, spawning `start(receiver)` if it is not running.
    /// Outside a tokio runtime a message that would need a new task is dropped:
    /// there is nothing left to run it.
    pub(crate) fn send<F>(&self, msg: T, start: impl FnOnce(mpsc::UnboundedReceiver<T>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let msg = match sender.as_ref() {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::error::SendError(msg)) => msg,
            },
            None => msg,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(start(rx));
        // The receiver is alive: it was created just above.
        let _ = tx.send(msg);
        *sender = Some(tx);
    }
}
