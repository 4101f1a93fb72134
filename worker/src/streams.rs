//! A [`Source`] on a Redis Stream and a consumer group.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::streams::{StreamClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply};
use redis::{Script, Value};
use soloist_core::{Deployment, SharedConnection, colocated, hash_slot};

use crate::error::{BoxError, Result, WorkerError};
use crate::source::{Delivery, Source};

/// Queued runs of keyed jobs on a Redis Stream, read through a consumer
/// group: `XREADGROUP` with blocking reads for new entries, `XPENDING` +
/// `XCLAIM` for entries a consumer took and never acknowledged (it died, or
/// the run failed) once they have been idle for the visibility timeout,
/// `XACK` once a run's outcome is recorded, and a dead-letter stream for
/// entries that fail `max_deliveries` times or cannot be decoded.
///
/// An entry has the fields `job` (the job's name), `key` (the run's
/// rendered key, for the record) and `args` (the arguments as JSON); the
/// dead-letter entry carries the entry's fields (the first 1000 of an
/// entry with more) and adds `id`, `deliveries` and `reason`. It is added
/// and the entry acknowledged in one script, which on a Redis Cluster
/// waits out a migration of the stream's slot (`TRYAGAIN`, `ASK`) where a
/// transaction would be aborted; an entry no longer pending (acknowledged,
/// or dead-lettered by a consumer that reclaimed it meanwhile) is not
/// added again.
///
/// Both connections (one for blocking reads, one for everything else)
/// replace themselves after a transport error or a `READONLY` /
/// `MASTERDOWN` reply, so the source carries on after a Redis restart or a
/// failover behind the same address; the worker retries a failed read with
/// a jittered backoff.
///
/// Memory stays bounded under `noeviction`: every so many acknowledgements
/// the stream is trimmed of the entries every consumer group has finished
/// with, keeping the newest [`retain_acknowledged`](StreamSourceBuilder::retain_acknowledged)
/// of them (never an entry still pending or not yet delivered), and the
/// dead-letter stream is capped at about
/// [`dead_letter_limit`](StreamSourceBuilder::dead_letter_limit) entries.
///
/// Toward `max_deliveries` count the runs that started (the key's lock held,
/// the job's body about to run), kept per entry in the hash
/// `{orders}:<group>:attempts` for a stream `orders` (a name in the stream's
/// hash slot, see [`colocated`]) until the entry is acknowledged or dead-lettered; a
/// delivery that could not run (the key busy with a peer's run, the lock
/// backend unreachable) does not count.
///
/// ```no_run
/// use soloist::{LockClient, StreamSource, Worker};
/// # use soloist::{JobContext, exclusive_job};
/// # #[exclusive_job(key = "invoice:{invoice_id}", dedupe = "24h")]
/// # async fn charge(ctx: JobContext, invoice_id: u64) -> Result<u64, std::io::Error> { Ok(invoice_id) }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let url = "redis://127.0.0.1:6379";
/// let invoices = StreamSource::builder("invoices").connect(url).await?;
/// let worker = Worker::builder(LockClient::connect(url).await?)
///     .consume(invoices, charge)
///     .build()?;
/// worker.handle().enqueue(charge, 42).await?; // from any replica
/// worker.run_until(tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct StreamSource {
    inner: Arc<Inner>,
}

struct Inner {
    /// For blocking reads only: a blocked read holds up a connection's replies.
    reader: SharedConnection,
    writer: SharedConnection,
    stream: String,
    group: String,
    consumer: String,
    dead_letters: String,
    /// The hash of runs started, by entry id.
    attempts: String,
    visibility: Duration,
    max_deliveries: u32,
    block: Duration,
    retain: u64,
    dead_letter_limit: u64,
    /// Acknowledgements since the source started, to trim every so many.
    acked: AtomicU64,
    /// When idle entries are next looked for; see [`Inner::reclaim_due`].
    reclaim_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Trims the entries every group has finished with.
static TRIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/trim_stream.lua")));

/// Adds a dead letter and acknowledges its entry, atomically.
static DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/dead_letter.lua")));

/// How many of an entry's fields its dead letter carries, at most: the
/// script hands them to `XADD` with Lua's `unpack`, which takes about 8000
/// values.
const MAX_DEAD_LETTER_FIELDS: usize = 1000;

/// The stream is trimmed once per this many acknowledgements (by this
/// consumer) at least, not per message: a trim walks the groups and their
/// pending entries, then reads back the entries it keeps to find where to
/// cut. With more kept, it trims once per half as many acknowledgements as
/// it keeps (up to [`TRIM_EVERY_MAX`]), so what it reads stays at two
/// entries per acknowledgement, and the stream at most half as many
/// finished entries over what it keeps.
const TRIM_EVERY: u64 = 100;
const TRIM_EVERY_MAX: u64 = 50_000;

/// A read that blocks longer than this holds up shutdown for nothing.
const MAX_BLOCK: Duration = Duration::from_secs(60);
/// Longer than any run a queue should hand out; keeps the arithmetic on it finite.
const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// More runs than this is retrying forever by another name.
const MAX_DELIVERIES: u32 = 1000;
/// Retention and dead-letter counts; beyond this the bound is no bound.
const MAX_ENTRIES: u64 = 100_000_000;
/// Connecting, and every reply but a blocking read's.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

impl fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("stream", &self.inner.stream)
            .field("group", &self.inner.group)
            .field("consumer", &self.inner.consumer)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`StreamSource`]; see [`StreamSource::builder`]. Every
/// setting is checked by [`connect`](StreamSourceBuilder::connect), which
/// refuses one out of range with an error naming it.
///
/// ```no_run
/// use std::time::Duration;
/// use soloist::StreamSource;
/// # async fn demo() -> Result<(), soloist::WorkerError> {
/// let orders = StreamSource::builder("orders")
///     .visibility_timeout(Duration::from_secs(60)) // the jobs' dedupe windows are longer
///     .max_deliveries(3)
///     .retain_acknowledged(10_000)
///     .dead_letter_limit(1_000)
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # let _ = orders;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct StreamSourceBuilder {
    stream: String,
    group: String,
    consumer: Option<String>,
    dead_letters: Option<String>,
    visibility: Duration,
    max_deliveries: u32,
    block: Duration,
    retain: u64,
    dead_letter_limit: u64,
}

impl StreamSource {
    /// Settings for the stream at key `stream`.
    pub fn builder(stream: &str) -> StreamSourceBuilder {
        StreamSourceBuilder {
            stream: stream.to_owned(),
            group: "soloist".to_owned(),
            consumer: None,
            dead_letters: None,
            visibility: Duration::from_secs(30),
            max_deliveries: 5,
            block: Duration::from_secs(1),
            retain: 1000,
            dead_letter_limit: 10_000,
        }
    }
}

impl StreamSourceBuilder {
    /// The consumer group; default `soloist`. Replicas that share the work
    /// use the same group.
    pub fn group(mut self, group: &str) -> Self {
        self.group = group.to_owned();
        self
    }

    /// This consumer's name in the group; default the process id and a
    /// random suffix. Names must differ between live consumers.
    pub fn consumer(mut self, consumer: &str) -> Self {
        self.consumer = Some(consumer.to_owned());
        self
    }

    /// The dead-letter stream's key; default the stream's key with `:dead`
    /// after it, in a name that shares the stream's hash slot:
    /// `{orders}:dead` for `orders`, `{shop}:orders:dead` for
    /// `{shop}:orders` (see [`colocated`](soloist_core::colocated)). On a
    /// cluster, a name given here must share the stream's hash slot too.
    pub fn dead_letters(mut self, stream: &str) -> Self {
        self.dead_letters = Some(stream.to_owned());
        self
    }

    /// How long an unacknowledged entry stays with its consumer before
    /// another may claim it; default 30 s, between 10 ms and 7 days. Longer
    /// than the slowest run; a consumed job's dedupe window must be at least
    /// this long.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility = timeout;
        self
    }

    /// After how many runs that started and did not succeed an entry is
    /// dead-lettered; default 5, between 1 and 1000. Deliveries that could
    /// not run (a busy key, an unreachable lock backend) do not count.
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = max;
        self
    }

    /// How long one read waits for new entries; default 1 s, between 1 ms
    /// and 60 s.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// How many entries that every group has finished with stay in the
    /// stream, newest first, for inspection; default 1000, at most 10^8.
    /// Older ones are trimmed every 100 acknowledgements, or every half as
    /// many as it keeps if that is more (at most every 50,000), so between
    /// trims it may hold up to half as many finished entries more: the
    /// stream keeps this many, then everything from the oldest entry still pending (or
    /// not yet delivered) on, so one entry left pending for long holds the
    /// stream at its length from there.
    pub fn retain_acknowledged(mut self, entries: u64) -> Self {
        self.retain = entries;
        self
    }

    /// About how many entries the dead-letter stream keeps, the oldest
    /// dropped first (`XADD MAXLEN ~`, so it can exceed this by up to one
    /// stream node, 100 entries by default); default 10,000, at least 1.
    pub fn dead_letter_limit(mut self, entries: u64) -> Self {
        self.dead_letter_limit = entries;
        self
    }

    /// Connects to the Redis server at `url`, and creates the stream and
    /// group if they do not exist (the group then starts from the stream's
    /// first entry); the same as [`open`](Self::open) with
    /// [`Deployment::server`].
    ///
    /// # Errors
    /// [`WorkerError::InvalidJob`] naming the setting that is out of range
    /// (`stream`, `group`, `consumer`, `visibility_timeout`, `block`,
    /// `max_deliveries`, `retain_acknowledged`, `dead_letter_limit`), the
    /// `url` (also a `rediss://` one without the `tls-rustls` feature) or
    /// the TLS certificates; [`WorkerError::Lock`] if Redis cannot be
    /// reached.
    pub async fn connect(self, url: &str) -> Result<StreamSource> {
        self.open(Deployment::server(url)).await
    }

    /// Connects to `deployment` (one server, a Sentinel-managed primary or a
    /// Redis Cluster, with its TLS settings), as
    /// [`ClientBuilder::open`](soloist_core::ClientBuilder::open) does for
    /// locks, and creates the stream and group if they do not exist. Errors
    /// as for [`connect`](Self::connect), and a `dead_letters` stream
    /// outside the stream's hash slot on a cluster.
    ///
    /// ```no_run
    /// use soloist::{Deployment, StreamSource};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = Deployment::server("rediss://redis.internal:6380")
    ///     .tls_root_certificate(std::fs::read("ca.pem")?);
    /// let orders = StreamSource::builder("orders").open(redis).await?;
    /// # let _ = orders; Ok(()) }
    /// ```
    pub async fn open(self, deployment: impl Into<Deployment>) -> Result<StreamSource> {
        let deployment = deployment.into();
        self.validate()?;
        let invalid = |name, reason: String| WorkerError::invalid(&self.stream, name, reason);
        let dead_letters = match &self.dead_letters {
            Some(dead) if deployment.is_cluster() && hash_slot(dead) != hash_slot(&self.stream) => {
                return Err(invalid(
                    "dead_letters",
                    format!(
                        "`{dead}` is in another hash slot than the stream; on a cluster give it the stream's hash tag, e.g. `{}`",
                        colocated(&self.stream, ":dead").unwrap_or_default()
                    ),
                ));
            }
            Some(dead) => dead.clone(),
            None => self.beside(":dead", &deployment)?,
        };
        // Per group: each group runs every entry on its own.
        let attempts = self.beside(&format!(":{}:attempts", self.group), &deployment)?;
        let open = |response| {
            SharedConnection::open(&deployment, OP_TIMEOUT, response).map_err(|err| match err {
                soloist_core::LockError::InvalidArgument { name, reason } => invalid(name, reason),
                other => WorkerError::Lock(other),
            })
        };
        // A blocking read may take the block time before its reply starts.
        let reader = open(self.block + OP_TIMEOUT)?;
        let writer = open(OP_TIMEOUT)?;
        let mut create = redis::cmd("XGROUP");
        create
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM");
        let created = writer
            .run(async |conn| create.query_async::<()>(conn).await)
            .await;
        match created {
            Ok(()) => {}
            Err(soloist_core::LockError::Protocol(err)) if err.code() == Some("BUSYGROUP") => {}
            Err(err) => return Err(WorkerError::Lock(err)),
        }
        let consumer = self
            .consumer
            .unwrap_or_else(|| format!("{}-{:04x}", std::process::id(), rand::random::<u16>()));
        Ok(StreamSource {
            inner: Arc::new(Inner {
                reader,
                writer,
                dead_letters,
                attempts,
                stream: self.stream,
                group: self.group,
                consumer,
                visibility: self.visibility,
                max_deliveries: self.max_deliveries,
                block: self.block,
                retain: self.retain,
                dead_letter_limit: self.dead_letter_limit,
                acked: AtomicU64::new(0),
                reclaim_at: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The name of a key kept beside the stream, in its hash slot. A stream
    /// named with a `}` outside a hash tag has no such name: on one server
    /// (or Sentinel) the suffix is appended as it is, and a cluster refuses it.
    fn beside(&self, suffix: &str, deployment: &Deployment) -> Result<String> {
        match colocated(&self.stream, suffix) {
            Some(name) => Ok(name),
            None if !deployment.is_cluster() => Ok(format!("{}{suffix}", self.stream)),
            None => Err(WorkerError::invalid(
                &self.stream,
                "stream",
                "holds a `}` outside a hash tag, so on a cluster no key can share its hash slot"
                    .to_owned(),
            )),
        }
    }

    /// Every setting in range, or the first that is not.
    fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(WorkerError::invalid(&self.stream, name, reason));
        if self.stream.is_empty() {
            return invalid("stream", "must not be empty".to_owned());
        }
        if self.group.is_empty() {
            return invalid("group", "must not be empty".to_owned());
        }
        if self.consumer.as_deref() == Some("") {
            return invalid("consumer", "must not be empty".to_owned());
        }
        if !(Duration::from_millis(10)..=MAX_VISIBILITY).contains(&self.visibility) {
            return invalid(
                "visibility_timeout",
                format!(
                    "must be between 10ms and {MAX_VISIBILITY:?}, got {:?}",
                    self.visibility
                ),
            );
        }
        if !(Duration::from_millis(1)..=MAX_BLOCK).contains(&self.block) {
            return invalid(
                "block",
                format!(
                    "must be between 1ms and {MAX_BLOCK:?}, got {:?}",
                    self.block
                ),
            );
        }
        if !(1..=MAX_DELIVERIES).contains(&self.max_deliveries) {
            return invalid(
                "max_deliveries",
                format!(
                    "must be between 1 and {MAX_DELIVERIES}, got {}",
                    self.max_deliveries
                ),
            );
        }
        if self.retain > MAX_ENTRIES {
            return invalid(
                "retain_acknowledged",
                format!("must be at most {MAX_ENTRIES}, got {}", self.retain),
            );
        }
        if !(1..=MAX_ENTRIES).contains(&self.dead_letter_limit) {
            return invalid(
                "dead_letter_limit",
                format!(
                    "must be between 1 and {MAX_ENTRIES}, got {}",
                    self.dead_letter_limit
                ),
            );
        }
        Ok(())
    }
}

/// A delivery from a stream entry; a missing field leaves `job` empty,
/// which the worker dead-letters as malformed.
fn delivery(entry: &StreamId, deliveries: u32) -> Delivery {
    let field = |name: &str| match entry.map.get(name) {
        Some(Value::BulkString(bytes)) => Some(bytes.clone()),
        Some(Value::SimpleString(text)) => Some(text.clone().into_bytes()),
        _ => None,
    };
    let job = field("job").map(|job| String::from_utf8_lossy(&job).into_owned());
    match (job, field("args")) {
        (Some(job), Some(args)) if !job.is_empty() => {
            Delivery::new(&entry.id, job, args, deliveries)
        }
        _ => Delivery::new(&entry.id, "", Vec::new(), deliveries),
    }
}

/// The deliveries of an `XREADGROUP` reply (`Nil` when the read timed out;
/// per stream, its name and its entries: an array of pairs in RESP2, a map
/// in RESP3), taken from the reply as it is: an entry's id, job name and
/// arguments move into its delivery, with the same outcome as [`delivery`]
/// (the last of a repeated field counts; a missing one leaves `job` empty).
fn read_reply(reply: Value) -> std::result::Result<Vec<Delivery>, UnexpectedReply> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) => pair.into_iter().nth(1).ok_or(UnexpectedReply("a stream")),
                _ => Err(UnexpectedReply("a stream")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err(UnexpectedReply("the reply")),
    };
    let mut deliveries = Vec::new();
    for entries in streams {
        match entries {
            Value::Array(entries) => {
                deliveries.reserve(entries.len());
                for entry in entries {
                    deliveries.push(entry_delivery(entry, 1)?);
                }
            }
            Value::Nil => {}
            _ => return Err(UnexpectedReply("a stream's entries")),
        }
    }
    Ok(deliveries)
}

/// The delivery of one stream entry, `[id, [field, value, ...]]` (the
/// fields a map in RESP3, `Nil` for an entry deleted since), as
/// [`delivery`] reads it.
fn entry_delivery(entry: Value, deliveries: u32) -> std::result::Result<Delivery, UnexpectedReply> {
    let Value::Array(parts) = entry else {
        return Err(UnexpectedReply("an entry"));
    };
    let mut parts = parts.into_iter();
    let id = match parts.next() {
        Some(Value::BulkString(bytes)) => {
            String::from_utf8(bytes).map_err(|_| UnexpectedReply("an entry's id"))?
        }
        Some(Value::SimpleString(text)) => text,
        _ => return Err(UnexpectedReply("an entry's id")),
    };
    let (mut job, mut args) = (None, None);
    let mut field = |name: Value, value: Value| {
        let slot = match &name {
            Value::BulkString(bytes) if bytes == b"job" => &mut job,
            Value::SimpleString(text) if text == "job" => &mut job,
            Value::BulkString(bytes) if bytes == b"args" => &mut args,
            Value::SimpleString(text) if text == "args" => &mut args,
            _ => return,
        };
        *slot = match value {
            Value::BulkString(bytes) => Some(bytes),
            Value::SimpleString(text) => Some(text.into_bytes()),
            _ => None,
        };
    };
    match parts.next() {
        Some(Value::Array(fields)) => {
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                field(name, value);
            }
        }
        Some(Value::Map(fields)) => {
            for (name, value) in fields {
                field(name, value);
            }
        }
        Some(Value::Nil) | None => {}
        Some(_) => return Err(UnexpectedReply("an entry's fields")),
    }
    let job = job.map(|job| match String::from_utf8(job) {
        Ok(job) => job,
        Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
    });
    Ok(match (job, args) {
        (Some(job), Some(args)) if !job.is_empty() => Delivery::new(id, job, args, deliveries),
        _ => Delivery::new(id, "", Vec::new(), deliveries),
    })
}

/// A reply of a shape no stream command gives, naming the part that was not.
#[derive(Debug)]
struct UnexpectedReply(&'static str);

impl fmt::Display for UnexpectedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unexpected XREADGROUP reply: {} is not as Redis sends it",
            self.0
        )
    }
}

impl std::error::Error for UnexpectedReply {}

impl StreamSource {
    /// The commands that acknowledge the entry `id` and forget its count of
    /// attempts, for a batch's claim or settle call to run.
    pub(crate) fn ack_commands(&self, id: &str) -> Vec<redis::Cmd> {
        let inner = &self.inner;
        // Sized up front: a batch builds these for every message it claims
        // and settles, and a command grown argument by argument reallocates.
        let mut ack = redis::Cmd::with_capacity(
            4,
            "XACK".len() + inner.stream.len() + inner.group.len() + id.len(),
        );
        ack.arg("XACK").arg(&inner.stream).arg(&inner.group).arg(id);
        let mut forget =
            redis::Cmd::with_capacity(3, "HDEL".len() + inner.attempts.len() + id.len());
        forget.arg("HDEL").arg(&inner.attempts).arg(id);
        vec![ack, forget]
    }

    /// The command that counts a run of the entry `id` starting (`by` 1),
    /// or takes back one that did not start (`by` -1).
    pub(crate) fn attempt_command(&self, id: &str, by: i64) -> redis::Cmd {
        // An i64 takes at most 20 bytes.
        let mut count = redis::Cmd::with_capacity(
            4,
            "HINCRBY".len() + self.inner.attempts.len() + id.len() + 20,
        );
        count
            .arg("HINCRBY")
            .arg(&self.inner.attempts)
            .arg(id)
            .arg(by);
        count
    }

    /// Counts `count` acknowledgements made in batch calls, trimming as
    /// [`ack`](Source::ack) does.
    pub(crate) async fn acknowledged_many(&self, count: usize) {
        for _ in 0..count {
            self.inner.acknowledged().await;
        }
    }

    /// Leaves a random token under a name beside the stream, kept for a
    /// minute, for the lock client to read: if it finds the token (and may
    /// delete it), the stream is on its server and the batch scripts may
    /// touch the stream's keys. Returns the name and the token; `Some(None)`
    /// on a cluster; `None` if it cannot be written now.
    pub(crate) async fn place_probe(&self) -> Option<Option<(String, String)>> {
        let token = format!("{:016x}", rand::random::<u64>());
        let suffix = format!(":probe:{token}");
        let name = colocated(&self.inner.stream, &suffix)
            .unwrap_or_else(|| format!("{}{suffix}", self.inner.stream));
        let placed: bool = self
            .inner
            .writer
            .run(async |conn| match conn {
                soloist_core::Conn::Server(_) => redis::cmd("SET")
                    .arg(&name)
                    .arg(&token)
                    .arg("PX")
                    .arg(60_000)
                    .query_async::<()>(conn)
                    .await
                    .map(|()| true),
                #[allow(unreachable_patterns)]
                _ => Ok(false),
            })
            .await
            .ok()?;
        Some(placed.then_some((name, token)))
    }
}

impl Inner {
    /// Whether to look for idle entries before this read: not on every
    /// read, which would cost each batch a round trip more, but at least
    /// every quarter of the visibility timeout (and every half second), and
    /// at once again after a look that found a full batch.
    fn reclaim_due(&self) -> bool {
        let at = *self
            .reclaim_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        at.is_none_or(|at| tokio::time::Instant::now() >= at)
    }

    fn reclaimed(&self, full: bool) {
        let next = if full {
            tokio::time::Instant::now()
        } else {
            tokio::time::Instant::now() + (self.visibility / 4).min(Duration::from_millis(500))
        };
        *self
            .reclaim_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(next);
    }

    /// Entries idle past the visibility timeout in any consumer's hands,
    /// claimed for this consumer.
    async fn reclaim(&self, max: usize) -> Result<Vec<Delivery>, BoxError> {
        let idle = u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX);
        let mut list = redis::cmd("XPENDING");
        list.arg(&self.stream)
            .arg(&self.group)
            .arg("IDLE")
            .arg(idle)
            .arg("-")
            .arg("+")
            .arg(max);
        let pending: StreamPendingCountReply = self
            .writer
            .run(async |conn| list.query_async(conn).await)
            .await?;
        if pending.ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut claim = redis::cmd("XCLAIM");
        claim
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle);
        for id in &pending.ids {
            claim.arg(&id.id);
        }
        let claimed: StreamClaimReply = self
            .writer
            .run(async |conn| claim.query_async(conn).await)
            .await?;
        if claimed.ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut counts = redis::cmd("HMGET");
        counts.arg(&self.attempts);
        for entry in &claimed.ids {
            counts.arg(&entry.id);
        }
        let attempts: Vec<Option<u32>> = self
            .writer
            .run(async |conn| counts.query_async(conn).await)
            .await?;
        Ok(claimed
            .ids
            .iter()
            .zip(attempts)
            .map(|(entry, attempts)| {
                let before = pending
                    .ids
                    .iter()
                    .find(|id| id.id == entry.id)
                    .map_or(0, |id| id.times_delivered);
                delivery(entry, u32::try_from(before + 1).unwrap_or(u32::MAX))
                    .with_attempts(attempts.unwrap_or(0))
            })
            .collect())
    }

    /// Counts an acknowledgement, and on the first and every so many
    /// after it trims the stream: a consumer that restarts often still
    /// trims once per start.
    async fn acknowledged(&self) {
        let acked = self.acked.fetch_add(1, Ordering::Relaxed) + 1;
        let every = (self.retain / 2).clamp(TRIM_EVERY, TRIM_EVERY_MAX);
        if acked != 1 && !acked.is_multiple_of(every) {
            return;
        }
        let mut trim = TRIM.key(&self.stream);
        trim.arg(self.retain);
        let trimmed = self
            .writer
            .run(async |conn| soloist_core::invoke_script::<u64>(conn, &TRIM, &trim).await)
            .await;
        match trimmed {
            Ok(removed) => tracing::debug!(stream = %self.stream, removed, "trimmed"),
            // The next trim catches up.
            Err(err) => tracing::debug!(stream = %self.stream, error = %err, "trimming failed"),
        }
    }

    /// New entries, waiting up to the block time.
    async fn read_new(&self, max: usize) -> Result<Vec<Delivery>, BoxError> {
        let block = u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX);
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">");
        let read: Value = self
            .reader
            .run(async |conn| read.query_async(conn).await)
            .await?;
        Ok(read_reply(read)?)
    }
}

impl Source for StreamSource {
    fn name(&self) -> &str {
        &self.inner.stream
    }

    fn receive(&self, max: usize) -> BoxFuture<'_, std::result::Result<Vec<Delivery>, BoxError>> {
        Box::pin(async move {
            let max = max.max(1);
            let mut batch = if self.inner.reclaim_due() {
                let reclaimed = self.inner.reclaim(max).await?;
                self.inner.reclaimed(reclaimed.len() >= max);
                reclaimed
            } else {
                Vec::new()
            };
            if batch.len() < max {
                batch.extend(self.inner.read_new(max - batch.len()).await?);
            }
            Ok(batch)
        })
    }

    fn ack<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut ack = redis::cmd("XACK");
            ack.arg(&inner.stream).arg(&inner.group).arg(&delivery.id);
            let mut forget = redis::cmd("HDEL");
            forget.arg(&inner.attempts).arg(&delivery.id);
            // Two commands sent together rather than one pipeline: the
            // connection still writes them back to back, but on a cluster
            // each follows its own redirection. While the stream's slot
            // migrates, its keys can be on two nodes, and a pipeline is
            // redirected as a whole: `ASKING` covers only its first command.
            inner
                .writer
                .run(async |conn| {
                    let mut other = conn.clone();
                    futures::try_join!(
                        ack.query_async::<()>(conn),
                        forget.query_async::<()>(&mut other)
                    )
                    .map(|_| ())
                })
                .await?;
            inner.acknowledged().await;
            Ok(())
        })
    }

    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, std::result::Result<(), BoxError>> {
        Box::pin(async move {
            let inner = &self.inner;
            // The original entry's fields travel along, however malformed.
            let mut range = redis::cmd("XRANGE");
            range.arg(&inner.stream).arg(&delivery.id).arg(&delivery.id);
            // Not read, not dead-lettered: the entry stays pending rather
            // than reach the dead letters without its payload.
            let original: StreamClaimReply = inner
                .writer
                .run(async |conn| range.query_async(conn).await)
                .await?;
            let mut move_entry = DEAD_LETTER.prepare_invoke();
            move_entry
                .key(&inner.dead_letters)
                .key(&inner.stream)
                .key(&inner.attempts)
                .arg(inner.dead_letter_limit)
                .arg(&inner.group)
                .arg(&delivery.id);
            if let Some(entry) = original.ids.into_iter().next() {
                let fields = entry
                    .map
                    .into_iter()
                    .filter(|(field, _)| !matches!(field.as_str(), "id" | "deliveries" | "reason"))
                    .filter_map(|(field, value)| match value {
                        Value::BulkString(bytes) => Some((field, bytes)),
                        Value::SimpleString(text) => Some((field, text.into_bytes())),
                        _ => None,
                    })
                    .take(MAX_DEAD_LETTER_FIELDS);
                for (field, value) in fields {
                    move_entry.arg(field).arg(value);
                }
            }
            move_entry
                .arg("id")
                .arg(&delivery.id)
                .arg("deliveries")
                .arg(delivery.deliveries)
                .arg("reason")
                .arg(reason);
            inner
                .writer
                .run(async |conn| {
                    soloist_core::invoke_script::<()>(conn, &DEAD_LETTER, &move_entry).await
                })
                .await?;
            inner.acknowledged().await;
            Ok(())
        })
    }

    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, std::result::Result<u32, BoxError>> {
        Box::pin(async move {
            let mut count = redis::cmd("HINCRBY");
            count.arg(&self.inner.attempts).arg(&delivery.id).arg(1);
            let attempts: u64 = self
                .inner
                .writer
                .run(async |conn| count.query_async(conn).await)
                .await?;
            Ok(u32::try_from(attempts).unwrap_or(u32::MAX))
        })
    }

    fn enqueue<'a>(
        &'a self,
        job: &'a str,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, std::result::Result<String, BoxError>> {
        Box::pin(async move {
            let mut add = redis::cmd("XADD");
            add.arg(&self.inner.stream)
                .arg("*")
                .arg("job")
                .arg(job)
                .arg("key")
                .arg(key)
                .arg("args")
                .arg(payload);
            let id: String = self
                .inner
                .writer
                .run(async |conn| add.query_async(conn).await)
                .await?;
            Ok(id)
        })
    }

    /// The group's `lag` from `XINFO GROUPS` (entries not yet delivered).
    fn lag(&self) -> BoxFuture<'_, std::result::Result<Option<u64>, BoxError>> {
        Box::pin(async move {
            let mut info = redis::cmd("XINFO");
            info.arg("GROUPS").arg(&self.inner.stream);
            let groups: StreamInfoGroupsReply = self
                .inner
                .writer
                .run(async |conn| info.query_async(conn).await)
                .await?;
            Ok(groups
                .groups
                .into_iter()
                .find(|group| group.name == self.inner.group)
                .and_then(|group| group.lag)
                .map(|lag| lag as u64))
        })
    }

    fn as_stream(&self) -> Option<&StreamSource> {
        Some(self)
    }

    fn stream_names(&self) -> Option<crate::inspect::QueueDecl> {
        Some(crate::inspect::QueueDecl {
            stream: self.inner.stream.clone(),
            group: self.inner.group.clone(),
            dead_letters: self.inner.dead_letters.clone(),
        })
    }

    fn max_deliveries(&self) -> u32 {
        self.inner.max_deliveries
    }

    fn visibility_timeout(&self) -> Duration {
        self.inner.visibility
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let fields = fields
            .iter()
            .flat_map(|(name, value)| [bulk(name), bulk(value)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    /// The deliveries as read through redis-rs's `StreamReadReply`, where
    /// it can read the reply.
    fn through_stream_read_reply(reply: Value) -> Option<Vec<Delivery>> {
        let read: Option<redis::streams::StreamReadReply> = redis::from_redis_value(reply).ok()?;
        Some(
            read.into_iter()
                .flat_map(|reply| reply.keys)
                .flat_map(|key| key.ids)
                .map(|entry| delivery(&entry, 1))
                .collect(),
        )
    }

    #[test]
    fn deliveries_are_those_stream_read_reply_gives() {
        let replies = [
            Value::Nil,
            Value::Array(vec![Value::Array(vec![
                bulk("orders"),
                Value::Array(vec![
                    entry("1-0", &[("job", "charge"), ("key", "k"), ("args", "[1]")]),
                    entry("2-0", &[("job", "charge")]),
                    entry("3-0", &[("args", "[3]"), ("job", "")]),
                    entry("4-0", &[("job", "a"), ("args", "1"), ("job", "b")]),
                ]),
            ])]),
        ];
        for reply in replies {
            let expected = through_stream_read_reply(reply.clone()).expect("redis-rs reads it");
            assert_eq!(read_reply(reply).unwrap(), expected);
        }
    }

    #[test]
    fn a_timed_out_read_has_no_deliveries() {
        assert_eq!(read_reply(Value::Nil).unwrap(), Vec::new());
    }

    #[test]
    fn entries_become_deliveries_in_order_in_resp2_and_resp3() {
        let entries = || {
            Value::Array(vec![
                entry("1-0", &[("job", "charge"), ("key", "k1"), ("args", "[1]")]),
                entry("2-0", &[("args", "[2]"), ("job", "refund")]),
            ])
        };
        let expected = vec![
            Delivery::new("1-0", "charge", b"[1]".to_vec(), 1),
            Delivery::new("2-0", "refund", b"[2]".to_vec(), 1),
        ];
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("orders"), entries()])]);
        assert_eq!(read_reply(resp2).unwrap(), expected);
        let resp3 = Value::Map(vec![(bulk("orders"), entries())]);
        assert_eq!(read_reply(resp3).unwrap(), expected);
    }

    #[test]
    fn fields_read_as_a_map_of_the_entry_would_be() {
        let map_fields = Value::Array(vec![
            bulk("3-0"),
            Value::Map(vec![
                (bulk("job"), Value::SimpleString("charge".into())),
                (Value::SimpleString("args".into()), bulk("{}")),
            ]),
        ]);
        let repeated = entry("4-0", &[("job", "a"), ("args", "1"), ("job", "b")]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("orders"),
            Value::Array(vec![map_fields, repeated]),
        ])]);
        assert_eq!(
            read_reply(reply).unwrap(),
            vec![
                Delivery::new("3-0", "charge", b"{}".to_vec(), 1),
                // The last of a repeated field counts, as in a map.
                Delivery::new("4-0", "b", b"1".to_vec(), 1),
            ]
        );
    }

    #[test]
    fn entries_missing_a_field_are_left_without_a_job() {
        let non_utf8_job = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![
                bulk("job"),
                Value::BulkString(vec![b'j', 0xff]),
                bulk("args"),
                bulk("[]"),
            ]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("orders"),
            Value::Array(vec![
                entry("1-0", &[("job", "charge")]),
                entry("2-0", &[("args", "[]")]),
                entry("3-0", &[("job", ""), ("args", "[]")]),
                Value::Array(vec![bulk("4-0"), Value::Nil]),
                Value::Array(vec![
                    bulk("6-0"),
                    Value::Array(vec![bulk("job"), Value::Int(1), bulk("args"), bulk("[]")]),
                ]),
                non_utf8_job,
            ]),
        ])]);
        let malformed = |id: &str| Delivery::new(id, "", Vec::new(), 1);
        assert_eq!(
            read_reply(reply).unwrap(),
            vec![
                malformed("1-0"),
                malformed("2-0"),
                malformed("3-0"),
                malformed("4-0"),
                malformed("6-0"),
                Delivery::new("5-0", "j\u{fffd}", b"[]".to_vec(), 1),
            ]
        );
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error_not_a_panic() {
        for reply in [
            Value::Int(3),
            Value::Array(vec![Value::Int(3)]),
            Value::Array(vec![Value::Array(vec![bulk("orders")])]),
            Value::Array(vec![Value::Array(vec![bulk("orders"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("orders"),
                Value::Array(vec![Value::Int(1)]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("orders"),
                Value::Array(vec![Value::Array(vec![Value::Nil])]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("orders"),
                Value::Array(vec![Value::Array(vec![bulk("1-0"), Value::Int(2)])]),
            ])]),
        ] {
            let err = read_reply(reply).unwrap_err();
            assert!(
                err.to_string().starts_with("unexpected XREADGROUP reply"),
                "{err}"
            );
        }
    }
}
