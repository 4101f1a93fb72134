//! `queue`: messages per second through ONE Redis Streams consumer group,
//! with 1 and with 4 consumers.
//!
//! Each run of a contestant drains a stream: a fresh stream is filled with
//! N entries of distinct keys, the consumers start, and the run lasts until
//! the last of the N is acknowledged, when the group's pending count and lag
//! are 0 (both checked afterwards, with nothing left in the dead letters);
//! messages/s is N over that time. Commands per message come from
//! `INFO commandstats` read as the consumers start and again once the last
//! message is acknowledged; filling the stream happens before.
//!
//! - `raw`: the floor of any consumer group. Each consumer loops over a
//!   bare `XREADGROUP … COUNT 16 BLOCK 1000` and one `XACK` of the whole
//!   batch, on a redis-rs connection of its own; no job runtime.
//! - `handrolled`: what a careful user writes for idempotent consumption
//!   without a job runtime. Each consumer reads like `raw`, then sends one
//!   pipelined request with a `SET dedupe:<key> 1 NX PX <window>` per
//!   entry, runs the (no-op) work for the entries whose `SET` succeeded,
//!   and sends one `XACK` of the whole batch: three requests per batch,
//!   the acknowledgement only after the work. `handrolled-fused` puts the
//!   `XACK` in the same pipeline as the `SET`s, which only a no-op body
//!   allows: two requests per batch, the floor of this design.
//! - `apalis`: apalis-redis workers (see `peers::apalis`), one per
//!   consumer, running a no-op job. Its queue is no stream: each drain
//!   pushes N jobs through apalis's own `push_bulk` into a fresh queue
//!   beforehand, and a message counts when apalis publishes that its job is
//!   recorded done (the `PUBLISH` of its result script, received on a
//!   pub/sub connection of lockbench's). Afterwards the done set must hold
//!   N jobs, with none left queued or in flight. Its drains hold at most
//!   7,000 jobs (see [`APALIS_MAX_DRAIN`]).
//! - `soloist`: one `Worker` per consumer, each with its own `StreamSource`
//!   consumer name and its own `LockClient`, consuming a keyed job with
//!   dedupe whose body only returns. Per message the worker checks the
//!   dedupe record, takes the key's lock, checks the record again, runs the
//!   body, records the success with the run's fence, releases the lock and
//!   acknowledges the entry. It reads up to its `max_in_flight` (16, the
//!   default) entries at once, the same `COUNT` as `raw`.
//!
//! Like the lock-cycle runs, the runs are interleaved: after warm-up
//! drains, each drains about a second's worth of messages per round, round
//! robin (odd rounds reversed), for `--secs` rounds. Filling a stream takes
//! longer than the lead-in of a slice of the lock-cycle rounds, so `queue`
//! runs in rounds of its own, after them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoGroupsReply, StreamReadReply};
use soloist_core::LockClient;
use soloist_worker::{
    BoxError, Delivery, JobContext, JobSpec, KeyedJob, Source, StreamSource, Worker, keyed_job,
};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::{Bench, Scenario, key};
use crate::peers::apalis::ApalisPeer;
use crate::probe::Cost;
use crate::report::Row;

/// The consumers in the group, one run each.
const CONSUMERS: [usize; 2] = [1, 4];
/// Entries one read asks for: soloist's default `max_in_flight`, the most
/// its consume loop reads at once.
const COUNT: usize = 16;
/// How long a raw read blocks when the stream is empty, in milliseconds
/// (the `StreamSource` default, 1 s).
const BLOCK_MS: u64 = 1000;
/// The consumer group every run reads through.
const GROUP: &str = "lockbench";
/// The keyed job's name, which the entries name.
const JOB: &str = "lb-queue";
/// The dedupe window: longer than the whole run, so no record expires
/// while it measures.
const DEDUPE: Duration = Duration::from_secs(600);
/// About how long one measured drain lasts.
const SLICE: Duration = Duration::from_secs(1);
/// The size of the first warm-up drain, before the rate is known.
const FIRST_DRAIN: u64 = 2_000;
/// The smallest drain.
const MIN_DRAIN: u64 = 1_000;
/// Entries added per pipelined round trip while filling a stream.
const FILL_BATCH: u64 = 1_000;
/// The longest a drain may take before the run is abandoned.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// The hand-rolled idempotent consumer, acknowledging after the work.
const HANDROLLED: &str = "handrolled";
/// The hand-rolled consumer with the acknowledgement in the dedupe pipeline.
const HANDROLLED_FUSED: &str = "handrolled-fused";
/// apalis-redis workers.
const APALIS: &str = "apalis";
/// The most jobs an apalis drain holds. apalis-redis 1.0 pushes every job
/// to its scheduled set, and its fetch script moves all those due to the
/// queue in one `RPUSH` of `unpack(ids)`, which fails with "too many results
/// to unpack" past Lua's stack limit of 8,000 values.
const APALIS_MAX_DRAIN: u64 = 7_000;

/// Raw and soloist, at one consumer and then at four, drained in rounds.
pub(super) async fn run(bench: &Bench) -> Vec<Row> {
    let mut queue = Queue::connect(bench).await;
    let mut runs = Vec::new();
    for consumers in CONSUMERS {
        if bench.wants("raw") {
            runs.push(Run::new("raw", consumers, Kind::Raw));
        }
        for (library, fused) in [(HANDROLLED, false), (HANDROLLED_FUSED, true)] {
            if bench.wants(library) {
                runs.push(Run::new(library, consumers, Kind::Handrolled { fused }));
            }
        }
        if bench.wants(APALIS) {
            let peer = ApalisPeer::connect(&bench.url).await;
            runs.push(Run::new(APALIS, consumers, Kind::Apalis(Box::new(peer))));
        }
        if bench.wants("soloist") {
            let mut locks = Vec::with_capacity(consumers);
            for _ in 0..consumers {
                locks.push(
                    LockClient::connect(&bench.url)
                        .await
                        .expect("soloist cannot connect to Redis"),
                );
            }
            runs.push(Run::new("soloist", consumers, Kind::Soloist(locks)));
        }
    }
    if runs.is_empty() {
        return Vec::new();
    }
    eprintln!("  warm-up, {} s each", bench.warmup.as_secs());
    for run in &mut runs {
        let deadline = Instant::now() + bench.warmup;
        let mut size = FIRST_DRAIN;
        loop {
            let drained = queue.drain(bench, &mut *run, size).await;
            run.rate = drained.messages as f64 / drained.secs;
            if Instant::now() >= deadline {
                break;
            }
            size = run.size(SLICE / 2);
        }
    }
    let rounds = (bench.secs.as_secs_f64() / SLICE.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    for round in 0..rounds {
        eprintln!("  round {}/{rounds}", round + 1);
        let mut order: Vec<usize> = (0..runs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let run = &mut runs[index];
            let size = run.size(SLICE);
            let drained = queue.drain(bench, &mut *run, size).await;
            run.add(drained);
        }
    }
    let mut rows = Vec::new();
    for run in runs {
        let totals = run.totals;
        let row = Row::messages(
            run.consumers,
            run.library,
            totals.messages,
            totals.secs,
            totals.cost,
            &totals.calls,
            totals.dead,
        );
        bench.done(row, &mut rows);
        if let Some(per_message) = rows
            .last()
            .and_then(|row| row.cmds_per_op_by_command.as_ref())
        {
            let calls: Vec<String> = per_message
                .iter()
                .map(|(name, calls)| format!("{name} {calls:.3}"))
                .collect();
            eprintln!("    per message: {}", calls.join(", "));
        }
    }
    rows
}

/// What consumes the stream in a run.
enum Kind {
    /// Bare `XREADGROUP` + `XACK` loops.
    Raw,
    /// Hand-rolled idempotent consumers: `SET NX` dedupe keys, then `XACK`;
    /// `fused` sends both in one pipeline.
    Handrolled {
        /// Whether the `XACK` rides in the dedupe request.
        fused: bool,
    },
    /// Soloist workers, one lock client per consumer, kept across drains.
    Soloist(Vec<LockClient>),
    /// apalis-redis workers on a queue of its own kind.
    Apalis(Box<ApalisPeer>),
}

/// One contestant: a library at a number of consumers.
struct Run {
    /// The row's library label.
    library: &'static str,
    /// Consumers in the group.
    consumers: usize,
    /// What consumes.
    kind: Kind,
    /// Messages per second so far, to size the next drain.
    rate: f64,
    /// What the measured drains added up to.
    totals: Drained,
}

impl Run {
    /// A run of `library` with `consumers` consumers, not yet measured.
    fn new(library: &'static str, consumers: usize, kind: Kind) -> Run {
        Run {
            library,
            consumers,
            kind,
            rate: 0.0,
            totals: Drained::default(),
        }
    }

    /// How many messages take about `span` at the rate seen so far.
    fn size(&self, span: Duration) -> u64 {
        let size = ((self.rate * span.as_secs_f64()) as u64).max(MIN_DRAIN);
        match self.kind {
            Kind::Apalis(_) => size.min(APALIS_MAX_DRAIN),
            _ => size,
        }
    }

    /// Adds a measured drain to the totals and the rate.
    fn add(&mut self, drained: Drained) {
        let totals = &mut self.totals;
        totals.messages += drained.messages;
        totals.secs += drained.secs;
        totals.cost += drained.cost;
        totals.dead += drained.dead;
        for (name, calls) in drained.calls {
            *totals.calls.entry(name).or_insert(0) += calls;
        }
        self.rate = totals.messages as f64 / totals.secs;
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("library", &self.library)
            .field("consumers", &self.consumers)
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

/// What one drain, or several added up, came to.
#[derive(Debug, Default)]
struct Drained {
    /// Messages acknowledged (or dead-lettered).
    messages: u64,
    /// From the consumers' start to the last acknowledgement.
    secs: f64,
    /// Commands and CPU over the same span.
    cost: Cost,
    /// Calls of each command over the same span.
    calls: BTreeMap<String, u64>,
    /// Messages dead-lettered instead of acknowledged.
    dead: u64,
}

/// The streams lockbench fills and drains, and a connection to fill them.
struct Queue {
    /// Opens the raw consumers' connections.
    client: redis::Client,
    /// Creates, fills, checks and deletes the streams.
    setup: MultiplexedConnection,
    /// Distinguishes this process's streams and message keys from those of
    /// earlier runs on the same server.
    nonce: String,
    /// Drains so far, to give each its own stream.
    drains: usize,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("nonce", &self.nonce)
            .field("drains", &self.drains)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Connects to the bench's server.
    async fn connect(bench: &Bench) -> Queue {
        let client = redis::Client::open(bench.url.as_str()).expect("the Redis URL must parse");
        let setup = client
            .get_multiplexed_async_connection()
            .await
            .expect("queue: cannot connect to Redis");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        Queue {
            client,
            setup,
            nonce: format!("{nanos:x}"),
            drains: 0,
        }
    }

    /// Fills a fresh stream with `messages` entries, lets `run`'s consumers
    /// drain it, checks that nothing is left, and deletes it.
    async fn drain(&mut self, bench: &Bench, run: &mut Run, messages: u64) -> Drained {
        self.drains += 1;
        let stream = format!(
            "{}:{}",
            key(Scenario::Queue, run.library, run.consumers, self.drains),
            self.nonce
        );
        if let Kind::Apalis(peer) = &mut run.kind {
            return drain_apalis(bench, peer, &stream, run.consumers, messages).await;
        }
        let run = &*run;
        let tag = format!("{}.{}", self.nonce, self.drains);
        self.fill(&stream, &tag, messages).await;
        let tally = Arc::new(Tally::new(messages));
        let (stop, stopped) = watch::channel(false);
        let (mark, started, handles) = if let Kind::Raw | Kind::Handrolled { .. } = run.kind {
            let mut conns = Vec::with_capacity(run.consumers);
            for _ in 0..run.consumers {
                conns.push(
                    self.client
                        .get_multiplexed_async_connection()
                        .await
                        .expect("queue: cannot connect to Redis"),
                );
            }
            let mark = bench.probe.mark().await;
            let started = Instant::now();
            let handles: Vec<JoinHandle<()>> = conns
                .into_iter()
                .enumerate()
                .map(|(index, conn)| {
                    let consumer = format!("{}-{index}", run.library);
                    match run.kind {
                        Kind::Handrolled { fused } => tokio::spawn(handrolled_consumer(
                            conn,
                            stream.clone(),
                            consumer,
                            fused,
                            tally.clone(),
                            stopped.clone(),
                        )),
                        _ => tokio::spawn(raw_consumer(
                            conn,
                            stream.clone(),
                            consumer,
                            tally.clone(),
                            stopped.clone(),
                        )),
                    }
                })
                .collect();
            (mark, started, handles)
        } else {
            let Kind::Soloist(clients) = &run.kind else {
                unreachable!("raw, hand-rolled and apalis runs are handled above");
            };
            let mut workers = Vec::with_capacity(run.consumers);
            for (index, locks) in clients.iter().enumerate() {
                let consumer = format!("soloist-{index}");
                let source = StreamSource::builder(&stream)
                    .group(GROUP)
                    .consumer(&consumer)
                    .connect(&bench.url)
                    .await
                    .expect("queue: cannot connect the stream source");
                let counted = Counted {
                    inner: source,
                    tally: tally.clone(),
                };
                workers.push(
                    Worker::builder(locks.clone())
                        .consume(counted, job())
                        .replica_id(consumer)
                        .build()
                        .expect("queue: the worker's settings are valid"),
                );
            }
            let mark = bench.probe.mark().await;
            let started = Instant::now();
            let handles: Vec<JoinHandle<()>> = workers
                .into_iter()
                .map(|worker| {
                    let mut stopped = stopped.clone();
                    tokio::spawn(async move {
                        worker
                            .run_until(async move {
                                let _ = stopped.changed().await;
                            })
                            .await
                            .expect("queue: the soloist worker failed");
                    })
                })
                .collect();
            (mark, started, handles)
        };
        let drained = tokio::time::timeout(DRAIN_LIMIT, tally.done.notified()).await;
        let (cost, calls) = bench.probe.since(&mark).await;
        stop.send_replace(true);
        for handle in handles {
            if let Err(err) = handle.await {
                if err.is_panic() {
                    std::panic::resume_unwind(err.into_panic());
                }
                panic!("a queue consumer was cancelled: {err}");
            }
        }
        let settled = tally.settled.load(Ordering::Relaxed);
        assert!(
            drained.is_ok(),
            "queue: {} with {} consumers settled {settled} of {messages} messages in {DRAIN_LIMIT:?}",
            run.library,
            run.consumers
        );
        assert_eq!(
            settled, messages,
            "queue: {} settled more messages than the stream held",
            run.library
        );
        let finished = tally
            .finished
            .lock()
            .expect("the tally's lock is never poisoned")
            .expect("a drained tally knows when it finished");
        let dead = tally.dead.load(Ordering::Relaxed);
        if let Kind::Handrolled { .. } = run.kind {
            assert_eq!(
                tally.ran.load(Ordering::Relaxed),
                messages,
                "queue: {} did not run each message exactly once",
                run.library
            );
        }
        self.check_empty(&stream, dead, run.library).await;
        Drained {
            messages,
            secs: (finished - started).as_secs_f64(),
            cost,
            calls,
            dead,
        }
    }

    /// Creates `stream` and its group, then adds `messages` entries of the
    /// form `StreamSource::enqueue` writes, each with a key of its own.
    async fn fill(&mut self, stream: &str, tag: &str, messages: u64) {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<()>(&mut self.setup)
            .await
            .expect("queue: XGROUP CREATE failed");
        let mut next = 0;
        while next < messages {
            let end = (next + FILL_BATCH).min(messages);
            let mut pipe = redis::pipe();
            for index in next..end {
                let id = format!("{tag}.{index}");
                let args = serde_json::to_vec(&id).expect("a string always serializes");
                pipe.cmd("XADD")
                    .arg(stream)
                    .arg("*")
                    .arg("job")
                    .arg(JOB)
                    .arg("key")
                    .arg(message_key(&id))
                    .arg("args")
                    .arg(args)
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.setup)
                .await
                .expect("queue: filling the stream failed");
            next = end;
        }
    }

    /// Checks that the group has nothing pending and nothing left to read,
    /// and that `dead` entries went to the dead letters; then deletes both
    /// streams.
    async fn check_empty(&mut self, stream: &str, dead: u64, library: &str) {
        let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.setup)
            .await
            .expect("queue: XINFO GROUPS failed");
        let group = groups
            .groups
            .iter()
            .find(|group| group.name == GROUP)
            .expect("queue: the consumer group exists");
        assert_eq!(
            (group.pending, group.lag),
            (0, Some(0)),
            "queue: {library} left entries pending or unread in {stream}"
        );
        let dead_letters =
            soloist_core::colocated(stream, ":dead").expect("queue: a plain stream name");
        let dead_entries: u64 = redis::cmd("XLEN")
            .arg(&dead_letters)
            .query_async(&mut self.setup)
            .await
            .expect("queue: XLEN failed");
        assert_eq!(
            dead_entries, dead,
            "queue: {library} dead-lettered entries the tally missed"
        );
        redis::cmd("UNLINK")
            .arg(stream)
            .arg(&dead_letters)
            .query_async::<()>(&mut self.setup)
            .await
            .expect("queue: UNLINK failed");
    }
}

/// Pushes `messages` jobs to a fresh apalis queue named `queue`, lets
/// `consumers` apalis workers drain it, checks that every job is done and
/// none is left, and deletes the queue's keys.
async fn drain_apalis(
    bench: &Bench,
    peer: &mut ApalisPeer,
    queue: &str,
    consumers: usize,
    messages: u64,
) -> Drained {
    peer.fill(queue, messages).await;
    let tally = Arc::new(Tally::new(messages));
    let (stop, stopped) = watch::channel(false);
    let counter = tally.clone();
    let watcher = peer
        .watch_done(queue, move |count| counter.settle(count), stopped.clone())
        .await;
    let workers = peer.workers(queue, consumers, COUNT).await;
    let mark = bench.probe.mark().await;
    let started = Instant::now();
    let handles = workers.start(&stopped);
    let drained = tokio::time::timeout(DRAIN_LIMIT, tally.done.notified()).await;
    let (cost, calls) = bench.probe.since(&mark).await;
    stop.send_replace(true);
    for handle in handles.into_iter().chain([watcher]) {
        if let Err(err) = handle.await {
            if err.is_panic() {
                std::panic::resume_unwind(err.into_panic());
            }
            panic!("an apalis worker was cancelled: {err}");
        }
    }
    let settled = tally.settled.load(Ordering::Relaxed);
    assert!(
        drained.is_ok(),
        "queue: apalis with {consumers} workers settled {settled} of {messages} jobs in {DRAIN_LIMIT:?}"
    );
    assert_eq!(
        settled, messages,
        "queue: apalis recorded more jobs done than it held"
    );
    let finished = tally
        .finished
        .lock()
        .expect("the tally's lock is never poisoned")
        .expect("a drained tally knows when it finished");
    peer.check_and_delete(queue, consumers, messages).await;
    Drained {
        messages,
        secs: (finished - started).as_secs_f64(),
        cost,
        calls,
        dead: 0,
    }
}

/// The key a message's run locks and records under, rendered from its id.
fn message_key(id: &str) -> String {
    format!("msg:{id}")
}

/// The consumed job: keyed by message, with dedupe, and a body that only
/// returns.
fn job() -> impl KeyedJob<Args = String, Output = ()> {
    keyed_job(
        JobSpec::keyed(JOB, "msg:{id}")
            .expect("the job's key template is valid")
            .dedupe(DEDUPE),
        |id: &String| message_key(id),
        |_ctx: JobContext, _id: String| async { Ok::<(), Infallible>(()) },
    )
}

/// Counts the messages of one drain as they are settled, and notes when
/// the last one was.
#[derive(Debug)]
struct Tally {
    /// The messages the stream holds.
    target: u64,
    /// Messages acknowledged or dead-lettered so far.
    settled: AtomicU64,
    /// Of those, dead-lettered.
    dead: AtomicU64,
    /// Bodies run, counted by the hand-rolled consumers only (each entry's
    /// dedupe key is new, so each must run exactly once).
    ran: AtomicU64,
    /// When the last message was settled.
    finished: Mutex<Option<Instant>>,
    /// Notified once every message is settled.
    done: Notify,
}

impl Tally {
    /// A tally of a drain of `target` messages.
    fn new(target: u64) -> Tally {
        Tally {
            target,
            settled: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            ran: AtomicU64::new(0),
            finished: Mutex::new(None),
            done: Notify::new(),
        }
    }

    /// Counts `count` messages whose acknowledgement (or dead-lettering)
    /// has just returned.
    fn settle(&self, count: u64) {
        let at = Instant::now();
        let before = self.settled.fetch_add(count, Ordering::Relaxed);
        if before < self.target && before + count >= self.target {
            *self
                .finished
                .lock()
                .expect("the tally's lock is never poisoned") = Some(at);
            self.done.notify_one();
        }
    }
}

/// One raw consumer: reads up to [`COUNT`] entries, acknowledges them all
/// in one `XACK`, and loops until told to stop.
async fn raw_consumer(
    mut conn: MultiplexedConnection,
    stream: String,
    consumer: String,
    tally: Arc<Tally>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(GROUP)
        .arg(&consumer)
        .arg("COUNT")
        .arg(COUNT)
        .arg("BLOCK")
        .arg(BLOCK_MS)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">");
    loop {
        let reply: Option<StreamReadReply> = tokio::select! {
            reply = read.query_async(&mut conn) => reply.expect("raw: XREADGROUP failed"),
            _ = stopped.changed() => return,
        };
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| entry.id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let acked: usize = redis::cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .expect("raw: XACK failed");
        assert_eq!(acked, ids.len(), "raw: an entry read was not pending");
        tally.settle(ids.len() as u64);
    }
}

/// One hand-rolled idempotent consumer: reads up to [`COUNT`] entries like
/// [`raw_consumer`], then sends one pipelined request with a
/// `SET dedupe:<key> 1 NX PX <window>` per entry, runs the work (none) for
/// those whose `SET` succeeded, and acknowledges the whole batch in one
/// `XACK`: in a request of its own after the work, or when `fused` at the
/// end of the dedupe pipeline. Loops until told to stop.
///
/// This is the shape a user writes to skip redeliveries without a job
/// runtime. It is cheaper than soloist's path because it promises less: a
/// consumer that dies between its `SET` and its work leaves the message
/// marked done though its work never ran, and nothing keeps two deliveries
/// of one key from running at once.
async fn handrolled_consumer(
    mut conn: MultiplexedConnection,
    stream: String,
    consumer: String,
    fused: bool,
    tally: Arc<Tally>,
    mut stopped: watch::Receiver<bool>,
) {
    let window_ms = u64::try_from(DEDUPE.as_millis()).unwrap_or(u64::MAX);
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(GROUP)
        .arg(&consumer)
        .arg("COUNT")
        .arg(COUNT)
        .arg("BLOCK")
        .arg(BLOCK_MS)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">");
    loop {
        let reply: Option<StreamReadReply> = tokio::select! {
            reply = read.query_async(&mut conn) => reply.expect("handrolled: XREADGROUP failed"),
            _ = stopped.changed() => return,
        };
        let entries: Vec<(String, String)> = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| {
                let key: String = entry
                    .get("key")
                    .expect("handrolled: every entry names its key");
                (entry.id, key)
            })
            .collect();
        if entries.is_empty() {
            continue;
        }
        let ids: Vec<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
        let mut pipe = redis::pipe();
        for (_, key) in &entries {
            pipe.cmd("SET")
                .arg(format!("dedupe:{key}"))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(window_ms);
        }
        if fused {
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(&ids);
        }
        let replies: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .expect("handrolled: the dedupe request failed");
        let (sets, ack) = replies.split_at(entries.len());
        // `SET NX` answers OK when it set the key, nil when a delivery of
        // the same key already did: only the former run the work.
        let fresh = sets
            .iter()
            .filter(|reply| !matches!(reply, redis::Value::Nil))
            .count();
        tally.ran.fetch_add(fresh as u64, Ordering::Relaxed);
        let acked: usize = if fused {
            redis::from_redis_value(ack[0].clone()).expect("handrolled: XACK answers a count")
        } else {
            redis::cmd("XACK")
                .arg(&stream)
                .arg(GROUP)
                .arg(&ids)
                .query_async(&mut conn)
                .await
                .expect("handrolled: XACK failed")
        };
        assert_eq!(
            acked,
            ids.len(),
            "handrolled: an entry read was not pending"
        );
        tally.settle(ids.len() as u64);
    }
}

/// A [`StreamSource`] that counts what it acknowledges and dead-letters;
/// everything else passes straight through.
#[derive(Debug)]
struct Counted {
    /// The source that does the work.
    inner: StreamSource,
    /// Where its acknowledgements are counted.
    tally: Arc<Tally>,
}

impl Source for Counted {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BoxError>> {
        self.inner.receive(max)
    }

    fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            self.inner.ack(delivery).await?;
            self.tally.settle(1);
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            eprintln!("lockbench: queue: {} dead-lettered: {reason}", delivery.id);
            self.inner.dead_letter(delivery, reason).await?;
            self.tally.dead.fetch_add(1, Ordering::Relaxed);
            self.tally.settle(1);
            Ok(())
        })
    }

    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<u32, BoxError>> {
        self.inner.record_attempt(delivery)
    }

    fn enqueue<'a>(
        &'a self,
        job: &'a str,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, BoxError>> {
        self.inner.enqueue(job, key, payload)
    }

    fn lag(&self) -> BoxFuture<'_, Result<Option<u64>, BoxError>> {
        self.inner.lag()
    }

    fn max_deliveries(&self) -> u32 {
        self.inner.max_deliveries()
    }

    fn visibility_timeout(&self) -> Duration {
        self.inner.visibility_timeout()
    }

    // The worker's batched path: it acknowledges inside its claim and
    // settle calls, and says so here instead of calling `ack`.
    fn as_stream(&self) -> Option<&StreamSource> {
        Some(&self.inner)
    }

    fn acknowledged(&self, deliveries: &[&Delivery]) {
        self.tally.settle(deliveries.len() as u64);
    }
}
