//! A [`Source`] on a Redis Stream and a consumer group.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply, StreamReadReply,
};
use redis::{AsyncConnectionConfig, Value};

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
/// dead-letter entry adds `id`, `deliveries` and `reason`.
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
    reader: MultiplexedConnection,
    writer: MultiplexedConnection,
    stream: String,
    group: String,
    consumer: String,
    dead_letters: String,
    visibility: Duration,
    max_deliveries: u32,
    block: Duration,
}

impl fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSource")
            .field("stream", &self.inner.stream)
            .field("group", &self.inner.group)
            .field("consumer", &self.inner.consumer)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`StreamSource`]; see [`StreamSource::builder`].
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

    /// The dead-letter stream's key; default `{stream}:dead`.
    pub fn dead_letters(mut self, stream: &str) -> Self {
        self.dead_letters = Some(stream.to_owned());
        self
    }

    /// How long an unacknowledged entry stays with its consumer before
    /// another may claim it; default 30 s. Longer than the slowest run.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility = timeout;
        self
    }

    /// After how many deliveries a failing entry is dead-lettered; default 5.
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = max;
        self
    }

    /// How long one read waits for new entries; default 1 s.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Connects, and creates the stream and group if they do not exist
    /// (the group then starts from the stream's first entry).
    pub async fn connect(self, url: &str) -> Result<StreamSource> {
        let invalid = |name, reason: String| WorkerError::invalid(&self.stream, name, reason);
        if self.stream.is_empty() {
            return Err(invalid("stream", "must not be empty".to_owned()));
        }
        if self.max_deliveries == 0 {
            return Err(invalid("max_deliveries", "must be at least 1".to_owned()));
        }
        if self.visibility < Duration::from_millis(10) || self.block.is_zero() {
            return Err(invalid(
                "visibility_timeout",
                "and block must be positive".to_owned(),
            ));
        }
        let client =
            redis::Client::open(url).map_err(|err| invalid("url", format!("`{url}`: {err}")))?;
        let timeout = Duration::from_secs(5);
        let config = |response| {
            AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(response))
        };
        let reader = client
            .get_multiplexed_async_connection_with_config(&config(self.block + timeout))
            .await
            .map_err(source_error)?;
        let mut writer = client
            .get_multiplexed_async_connection_with_config(&config(timeout))
            .await
            .map_err(source_error)?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut writer)
            .await;
        if let Err(err) = created
            && err.code() != Some("BUSYGROUP")
        {
            return Err(source_error(err));
        }
        let consumer = self
            .consumer
            .unwrap_or_else(|| format!("{}-{:04x}", std::process::id(), rand::random::<u16>()));
        Ok(StreamSource {
            inner: Arc::new(Inner {
                reader,
                writer,
                dead_letters: self
                    .dead_letters
                    .unwrap_or_else(|| format!("{}:dead", self.stream)),
                stream: self.stream,
                group: self.group,
                consumer,
                visibility: self.visibility,
                max_deliveries: self.max_deliveries,
                block: self.block,
            }),
        })
    }
}

fn source_error(err: redis::RedisError) -> WorkerError {
    WorkerError::Lock(err.into())
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

impl Inner {
    /// Entries idle past the visibility timeout in any consumer's hands,
    /// claimed for this consumer.
    async fn reclaim(&self, max: usize) -> redis::RedisResult<Vec<Delivery>> {
        let mut writer = self.writer.clone();
        let idle = u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX);
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("IDLE")
            .arg(idle)
            .arg("-")
            .arg("+")
            .arg(max)
            .query_async(&mut writer)
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
        let claimed: StreamClaimReply = claim.query_async(&mut writer).await?;
        Ok(claimed
            .ids
            .iter()
            .map(|entry| {
                let before = pending
                    .ids
                    .iter()
                    .find(|id| id.id == entry.id)
                    .map_or(0, |id| id.times_delivered);
                delivery(entry, u32::try_from(before + 1).unwrap_or(u32::MAX))
            })
            .collect())
    }

    /// New entries, waiting up to the block time.
    async fn read_new(&self, max: usize) -> redis::RedisResult<Vec<Delivery>> {
        let mut reader = self.reader.clone();
        let block = u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX);
        let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut reader)
            .await?;
        Ok(read
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .map(|entry| delivery(&entry, 1))
            .collect())
    }
}

impl Source for StreamSource {
    fn name(&self) -> &str {
        &self.inner.stream
    }

    fn receive(&self, max: usize) -> BoxFuture<'_, std::result::Result<Vec<Delivery>, BoxError>> {
        Box::pin(async move {
            let max = max.max(1);
            let mut batch = self.inner.reclaim(max).await?;
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
            let mut writer = self.inner.writer.clone();
            redis::cmd("XACK")
                .arg(&self.inner.stream)
                .arg(&self.inner.group)
                .arg(&delivery.id)
                .query_async::<()>(&mut writer)
                .await?;
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
            let mut writer = inner.writer.clone();
            // The original entry's fields travel along, however malformed.
            let original: Option<StreamClaimReply> = redis::cmd("XRANGE")
                .arg(&inner.stream)
                .arg(&delivery.id)
                .arg(&delivery.id)
                .query_async(&mut writer)
                .await
                .ok();
            let mut add = redis::cmd("XADD");
            add.arg(&inner.dead_letters).arg("*");
            if let Some(entry) = original.and_then(|reply| reply.ids.into_iter().next()) {
                for (field, value) in entry.map {
                    let value = match value {
                        Value::BulkString(bytes) => bytes,
                        Value::SimpleString(text) => text.into_bytes(),
                        _ => continue,
                    };
                    if !matches!(field.as_str(), "id" | "deliveries" | "reason") {
                        add.arg(field).arg(value);
                    }
                }
            }
            add.arg("id")
                .arg(&delivery.id)
                .arg("deliveries")
                .arg(delivery.deliveries)
                .arg("reason")
                .arg(reason);
            let mut atomically = redis::pipe();
            atomically
                .atomic()
                .add_command(add)
                .ignore()
                .cmd("XACK")
                .arg(&inner.stream)
                .arg(&inner.group)
                .arg(&delivery.id)
                .ignore();
            atomically.query_async::<()>(&mut writer).await?;
            Ok(())
        })
    }

    fn enqueue<'a>(
        &'a self,
        job: &'a str,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, std::result::Result<String, BoxError>> {
        Box::pin(async move {
            let mut writer = self.inner.writer.clone();
            let id: String = redis::cmd("XADD")
                .arg(&self.inner.stream)
                .arg("*")
                .arg("job")
                .arg(job)
                .arg("key")
                .arg(key)
                .arg("args")
                .arg(payload)
                .query_async(&mut writer)
                .await?;
            Ok(id)
        })
    }

    /// The group's `lag` from `XINFO GROUPS` (entries not yet delivered).
    fn lag(&self) -> BoxFuture<'_, std::result::Result<Option<u64>, BoxError>> {
        Box::pin(async move {
            let mut writer = self.inner.writer.clone();
            let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&self.inner.stream)
                .query_async(&mut writer)
                .await?;
            Ok(groups
                .groups
                .into_iter()
                .find(|group| group.name == self.inner.group)
                .and_then(|group| group.lag)
                .map(|lag| lag as u64))
        })
    }

    fn max_deliveries(&self) -> u32 {
        self.inner.max_deliveries
    }

    fn visibility_timeout(&self) -> Duration {
        self.inner.visibility
    }
}
