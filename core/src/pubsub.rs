//! Wake-ups over Redis pub/sub: one subscriber connection per client and
//! node, subscribed to the one channel that names this client.
//!
//! A waiter that finds a key held puts its client in the key's queue (see
//! `scripts/acquire.lua`); a release wakes the first client of the queue
//! that still listens, by publishing the key on that client's channel. So a
//! release wakes one client rather than every client that waits, and waiting
//! for a new key costs no `SUBSCRIBE`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

use crate::background::Background;
use crate::node::RedisNode;
use crate::notice::{Listener, NoticeBoard, Unlisten};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Wake-ups from one or more Redis nodes, posted to one board.
#[derive(Debug)]
pub(crate) struct ReleaseNotices {
    board: Arc<NoticeBoard>,
    hubs: Vec<PubSubHub>,
}

impl ReleaseNotices {
    /// One subscriber per node.
    pub(crate) fn new(nodes: Vec<Arc<RedisNode>>, op_timeout: Duration) -> Arc<Self> {
        let board = Arc::new(NoticeBoard::default());
        let hubs = nodes
            .into_iter()
            .map(|node| PubSubHub::new(node, op_timeout, board.clone()))
            .collect();
        Arc::new(ReleaseNotices { board, hubs })
    }

    /// Listens for `key`'s wake-ups that reach this process from now on;
    /// not live until [`subscribe`](Self::subscribe) confirms they can.
    pub(crate) fn listen(self: &Arc<Self>, key: &str) -> Listener {
        Listener::new(key, self.board.join(key), false, self.clone())
    }

    /// Makes sure every node's subscription is up. The listener is live when
    /// at least one node's subscription is confirmed; if none is, its waiter
    /// polls.
    pub(crate) async fn subscribe(&self, listener: &mut Listener) {
        let confirmed = futures::future::join_all(self.hubs.iter().map(PubSubHub::ensure)).await;
        // Every node must be heard from for a release anywhere not to be missed.
        let since = confirmed.iter().copied().flatten().max();
        listener.set_live_since(since);
    }
}

impl Unlisten for ReleaseNotices {
    fn unlisten(&self, key: &str, unheeded: bool) {
        if self.board.leave(key) && unheeded {
            // This client was woken and will not take the lock: the next
            // client in line gets the wake-up instead.
            for hub in &self.hubs {
                hub.core.pass_on(key);
            }
        }
    }
}

/// The subscriber connection to one node, run by a background task.
#[derive(Debug)]
struct PubSubHub {
    core: Arc<Core>,
    task: Background<Ensure>,
}

/// What the subscriber task needs. It holds this, not the hub, so that
/// dropping the last client closes the command channel and ends the task.
#[derive(Debug)]
struct Core {
    node: Arc<RedisNode>,
    board: Arc<NoticeBoard>,
    op_timeout: Duration,
}

/// Asks the task to be subscribed; answered with the instant the current
/// subscription was confirmed, or `None` if there is none.
#[derive(Debug)]
struct Ensure(oneshot::Sender<Option<Instant>>);

impl PubSubHub {
    fn new(node: Arc<RedisNode>, op_timeout: Duration, board: Arc<NoticeBoard>) -> Self {
        PubSubHub {
            core: Arc::new(Core {
                node,
                board,
                op_timeout,
            }),
            task: Background::new(),
        }
    }

    /// Since when this client's wake channel has been subscribed, starting
    /// the subscriber if it is not running.
    async fn ensure(&self) -> Option<Instant> {
        let (done, confirmed) = oneshot::channel();
        let core = self.core.clone();
        self.task
            .send(Ensure(done), move |commands| run(core, commands));
        // Connecting gets one op timeout, the answer another.
        timeout(2 * self.core.op_timeout, confirmed)
            .await
            .ok()?
            .ok()?
    }
}

impl Core {
    /// Opens a subscriber connection and subscribes to this client's channel.
    async fn connect(&self) -> Option<Subscription> {
        let demotions = self.node.demotions();
        let client = self.node.subscriber().await.ok()?;
        let pubsub = timeout(self.op_timeout, client.get_async_pubsub())
            .await
            .ok()?
            .ok()?;
        let (mut sink, stream) = pubsub.split();
        timeout(self.op_timeout, sink.subscribe(self.node.wake_channel()))
            .await
            .ok()?
            .ok()?;
        Some(Subscription {
            _sink: sink,
            stream,
            since: Instant::now(),
            demotions,
        })
    }

    /// Hands a wake-up nobody here waits for to the next client, in the background.
    fn pass_on(self: &Arc<Self>, key: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (core, key) = (self.clone(), key.to_owned());
        runtime.spawn(async move {
            if let Err(err) = core.node.pass_on(&key).await {
                tracing::debug!(error = %err, key = %key, "could not pass a wake-up on");
            }
        });
    }
}

/// A confirmed subscription to this client's wake channel.
struct Subscription {
    /// Kept: the connection closes with it.
    _sink: PubSubSink,
    stream: PubSubStream,
    since: Instant,
    /// The node's demotion count when this subscription was made: once it
    /// moves, a failover has happened behind the node's address, and this
    /// connection may be listening on the old primary, where releases no
    /// longer publish.
    demotions: u64,
}

async fn run(core: Arc<Core>, mut commands: mpsc::UnboundedReceiver<Ensure>) {
    let mut conn: Option<Subscription> = None;
    let mut retry_at = Instant::now();
    let mut backoff = MIN_BACKOFF;
    loop {
        if conn.is_none() && Instant::now() >= retry_at {
            match core.connect().await {
                Some(subscription) => {
                    conn = Some(subscription);
                    backoff = MIN_BACKOFF;
                    // Wake-ups sent while we were not subscribed went unheard.
                    core.board.notify_all();
                }
                None => {
                    // Jittered, so that clients cut off together do not all
                    // reconnect in the same instant.
                    let pause = backoff.mul_f64(rand::random_range(0.5..=1.0));
                    retry_at = Instant::now() + pause;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::debug!("wake-up connection unavailable, retrying in {pause:?}");
                }
            }
        }
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Ensure(done)) => {
                    if conn.as_ref().is_some_and(|c| c.demotions != core.node.demotions()) {
                        // Subscribe again, at the address's new primary; the
                        // waiter polls meanwhile.
                        conn = None;
                        retry_at = Instant::now();
                        backoff = MIN_BACKOFF;
                        core.board.notify_all();
                    }
                    let _ = done.send(conn.as_ref().map(|c| c.since));
                }
            },
            message = next_message(conn.as_mut()) => match message {
                Some(message) => {
                    if let Ok(key) = message.get_payload::<String>()
                        && !core.board.notify(&key)
                    {
                        core.pass_on(&key);
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

async fn next_message(conn: Option<&mut Subscription>) -> Option<redis::Msg> {
    match conn {
        Some(c) => c.stream.next().await,
        None => std::future::pending().await,
    }
}
