//! Release notices over Redis pub/sub: one subscriber connection per client,
//! one channel per key that has a waiter in this process.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

use crate::background::Background;
use crate::notice::{Listener, NoticeBoard, Unlisten};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Release notices from one or more Redis nodes, posted to one board.
#[derive(Debug)]
pub(crate) struct ReleaseNotices {
    board: Arc<NoticeBoard>,
    hubs: Vec<PubSubHub>,
}

impl ReleaseNotices {
    /// One subscriber per node; `clients` and their order match the nodes.
    pub(crate) fn new(
        clients: Vec<redis::Client>,
        channel_prefix: &str,
        op_timeout: Duration,
    ) -> Arc<Self> {
        let board = Arc::new(NoticeBoard::default());
        let hubs = clients
            .into_iter()
            .map(|client| {
                PubSubHub::new(client, channel_prefix.to_owned(), op_timeout, board.clone())
            })
            .collect();
        Arc::new(ReleaseNotices { board, hubs })
    }

    /// Wakes this process's waiters on `key` at once, ahead of the notice
    /// that travels through Redis.
    pub(crate) fn notify_local(&self, key: &str) {
        self.board.notify(key);
    }

    /// Subscribes to `key`'s release notices on every node. The listener is
    /// live when at least one subscription was confirmed in time; if none
    /// was, its waiter polls.
    pub(crate) async fn listen(self: &Arc<Self>, key: &str) -> Listener {
        // The listener exists before anything is awaited, so a waiter that
        // gives up mid-subscription still leaves the board (on drop).
        let mut listener = Listener::new(key, self.board.join(key), false, self.clone());
        let confirmed =
            futures::future::join_all(self.hubs.iter().map(|hub| hub.subscribe(key))).await;
        listener.set_live(confirmed.into_iter().any(|live| live));
        listener
    }
}

impl Unlisten for ReleaseNotices {
    fn unlisten(&self, key: &str) {
        if self.board.leave(key) {
            for hub in &self.hubs {
                hub.unsubscribe(key);
            }
        }
    }
}

/// The subscriber connection to one node, run by a background task.
#[derive(Debug)]
struct PubSubHub {
    core: Arc<Core>,
    task: Background<Command>,
}

/// What the subscriber task needs. It holds this, not the hub, so that
/// dropping the last client closes the command channel and ends the task.
#[derive(Debug)]
struct Core {
    client: redis::Client,
    board: Arc<NoticeBoard>,
    channel_prefix: String,
    op_timeout: Duration,
}

#[derive(Debug)]
enum Command {
    Subscribe {
        key: String,
        done: oneshot::Sender<bool>,
    },
    Unsubscribe {
        key: String,
    },
}

impl PubSubHub {
    fn new(
        client: redis::Client,
        channel_prefix: String,
        op_timeout: Duration,
        board: Arc<NoticeBoard>,
    ) -> Self {
        PubSubHub {
            core: Arc::new(Core {
                client,
                board,
                channel_prefix,
                op_timeout,
            }),
            task: Background::new(),
        }
    }

    /// Subscribes to `key`'s channel; `true` once the server confirmed it.
    async fn subscribe(&self, key: &str) -> bool {
        let (done, confirmed) = oneshot::channel();
        self.send(Command::Subscribe {
            key: key.to_owned(),
            done,
        });
        matches!(timeout(self.core.op_timeout, confirmed).await, Ok(Ok(true)))
    }

    /// Drops the subscription to `key` unless a listener joined since.
    fn unsubscribe(&self, key: &str) {
        self.send(Command::Unsubscribe {
            key: key.to_owned(),
        });
    }

    fn send(&self, command: Command) {
        let core = self.core.clone();
        self.task.send(command, move |commands| run(core, commands));
    }
}

impl Core {
    fn channel(&self, key: &str) -> String {
        format!("{}{key}", self.channel_prefix)
    }

    /// Opens a subscriber connection and subscribes every key that has listeners.
    async fn connect(
        &self,
        subscribed: &mut HashSet<String>,
    ) -> Option<(PubSubSink, PubSubStream)> {
        let pubsub = timeout(self.op_timeout, self.client.get_async_pubsub())
            .await
            .ok()?
            .ok()?;
        let (mut sink, stream) = pubsub.split();
        for key in self.board.keys() {
            timeout(self.op_timeout, sink.subscribe(self.channel(&key)))
                .await
                .ok()?
                .ok()?;
            subscribed.insert(key);
        }
        Some((sink, stream))
    }
}

struct Connection {
    sink: PubSubSink,
    stream: PubSubStream,
    subscribed: HashSet<String>,
}

async fn run(core: Arc<Core>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut conn: Option<Connection> = None;
    let mut retry_at = Instant::now();
    let mut backoff = MIN_BACKOFF;
    loop {
        if conn.is_none() && Instant::now() >= retry_at {
            let mut subscribed = HashSet::new();
            match core.connect(&mut subscribed).await {
                Some((sink, stream)) => {
                    conn = Some(Connection {
                        sink,
                        stream,
                        subscribed,
                    });
                    backoff = MIN_BACKOFF;
                    // Releases while we were not subscribed went unheard.
                    core.board.notify_all();
                }
                None => {
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::debug!(
                        "release-notice connection unavailable, retrying in {backoff:?}"
                    );
                }
            }
        }
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Subscribe { key, done }) => {
                    let live = match conn.as_mut() {
                        Some(c) if c.subscribed.contains(&key) => true,
                        Some(c) => {
                            let channel = core.channel(&key);
                            let ok = matches!(
                                timeout(core.op_timeout, c.sink.subscribe(channel)).await,
                                Ok(Ok(()))
                            );
                            if ok {
                                c.subscribed.insert(key);
                            } else {
                                conn = None;
                            }
                            ok
                        }
                        None => false,
                    };
                    let _ = done.send(live);
                }
                Some(Command::Unsubscribe { key }) => {
                    if let Some(c) = conn.as_mut()
                        && !core.board.has_listeners(&key)
                        && c.subscribed.remove(&key)
                    {
                        let channel = core.channel(&key);
                        let ok = matches!(
                            timeout(core.op_timeout, c.sink.unsubscribe(channel)).await,
                            Ok(Ok(()))
                        );
                        if !ok {
                            conn = None;
                        }
                    }
                }
            },
            message = next_message(conn.as_mut()) => match message {
                Some(message) => {
                    if let Some(key) = message.get_channel_name().strip_prefix(&core.channel_prefix) {
                        core.board.notify(key);
                    }
                }
                None => {
                    conn = None;
                    retry_at = Instant::now();
                    core.board.notify_all();
                }
            },
            () = tokio::time::sleep_until(retry_at), if conn.is_none() => {}
        }
    }
}

async fn next_message(conn: Option<&mut Connection>) -> Option<redis::Msg> {
    match conn {
        Some(c) => c.stream.next().await,
        None => std::future::pending().await,
    }
}
