//! Where queued runs of keyed jobs come from: a small trait any broker can
//! implement, so that at-least-once delivery meets the keyed-job lock and
//! dedupe record.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::error::BoxError;

/// One queued run of a keyed job, as a [`Source`] delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// The source's id for the message (a stream entry id, an offset, …).
    pub id: String,
    /// The job to run: its name.
    pub job: String,
    /// The job's arguments, serialized as JSON.
    pub payload: Vec<u8>,
    /// How many times this message has been delivered, this time included.
    pub deliveries: u32,
    /// How many runs of this message started before this delivery, as
    /// counted by [`Source::record_attempt`]; 0 if the source does not keep
    /// the count. A message whose runs never finished (its consumer died
    /// during each) is dead-lettered once this reaches
    /// [`Source::max_deliveries`], without running again.
    pub attempts: u32,
}

impl Delivery {
    /// A delivery, for sources and their tests.
    pub fn new(
        id: impl Into<String>,
        job: impl Into<String>,
        payload: Vec<u8>,
        deliveries: u32,
    ) -> Self {
        Delivery {
            id: id.into(),
            job: job.into(),
            payload,
            deliveries,
            attempts: 0,
        }
    }

    /// The delivery, with the number of runs that started before it.
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }
}

/// A queue of keyed-job runs with at-least-once delivery: Redis Streams
/// ([`StreamSource`](crate::StreamSource)), or Kafka, NATS, SQS, a channel.
///
/// The worker calls [`receive`](Source::receive) for work, runs each
/// delivery's job, and only once the run's outcome is recorded (a success,
/// or a duplicate of one) calls [`ack`](Source::ack). A run that fails is not
/// acknowledged; the source delivers it again (after its own visibility
/// timeout). Every run that starts (the key's lock is held and the job's
/// body is about to run) is counted with
/// [`record_attempt`](Source::record_attempt); once a run that did not
/// succeed (failed, timed out at `max_hold`, lost its lease, cancelled by
/// shutdown, or never finished because its consumer died) brings that count
/// to [`max_deliveries`](Source::max_deliveries), the worker calls
/// [`dead_letter`](Source::dead_letter) with the last error. A delivery
/// that could not run (its key busy with another consumer's run, the lock
/// backend unreachable) is not counted.
/// A message whose job is unknown or whose payload does not decode goes to
/// the dead letters at once.
///
/// An in-memory implementation over a channel, of the kind a test uses:
/// ```
/// use std::sync::Mutex;
/// use futures::future::BoxFuture;
/// use soloist::{BoxError, Delivery, Source};
///
/// #[derive(Default)]
/// struct Queue {
///     waiting: Mutex<Vec<Delivery>>,
///     acked: Mutex<Vec<String>>,
///     dead: Mutex<Vec<(String, String)>>,
/// }
///
/// impl Source for Queue {
///     fn name(&self) -> &str {
///         "in-memory"
///     }
///     fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BoxError>> {
///         Box::pin(async move {
///             let mut waiting = self.waiting.lock().unwrap();
///             let take = max.min(waiting.len());
///             Ok(waiting.drain(..take).collect())
///         })
///     }
///     fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BoxError>> {
///         self.acked.lock().unwrap().push(delivery.id.clone());
///         Box::pin(async { Ok(()) })
///     }
///     fn dead_letter<'a>(&'a self, delivery: &'a Delivery, reason: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
///         self.dead.lock().unwrap().push((delivery.id.clone(), reason.to_owned()));
///         Box::pin(async { Ok(()) })
///     }
///     fn enqueue<'a>(&'a self, job: &'a str, _key: &'a str, payload: Vec<u8>) -> BoxFuture<'a, Result<String, BoxError>> {
///         let mut waiting = self.waiting.lock().unwrap();
///         let id = format!("{}", waiting.len());
///         waiting.push(Delivery::new(id.clone(), job, payload, 1));
///         Box::pin(async move { Ok(id) })
///     }
/// }
/// ```
pub trait Source: Send + Sync + 'static {
    /// A name for logs and metrics, e.g. the stream's key.
    fn name(&self) -> &str;

    /// Up to `max` deliveries, waiting a little (a second or so) when none
    /// is ready; an empty batch is fine.
    fn receive(&self, max: usize) -> BoxFuture<'_, Result<Vec<Delivery>, BoxError>>;

    /// The delivery's outcome is recorded: never deliver it again.
    fn ack<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Gives up on the delivery: keep it aside with `reason`, and never
    /// deliver it again.
    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Counts a run of the delivery's job that is starting, and returns how
    /// many the message has had, this one included; forgotten on
    /// [`ack`](Source::ack) or [`dead_letter`](Source::dead_letter). The
    /// default counts deliveries instead, returning
    /// [`Delivery::deliveries`]: a source that can keep a counter per
    /// message should (and report it in [`Delivery::attempts`]), so that
    /// deliveries that could not run do not count.
    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<u32, BoxError>> {
        Box::pin(async move { Ok(delivery.deliveries) })
    }

    /// Queues a run of `job` with its JSON `payload`; `key` is the run's
    /// rendered key, for the record. Returns the message's id.
    fn enqueue<'a>(
        &'a self,
        job: &'a str,
        key: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<String, BoxError>>;

    /// How many messages wait to be delivered to this consumer's group, if
    /// the broker can tell; reported as a gauge. Default: unknown.
    fn lag(&self) -> BoxFuture<'_, Result<Option<u64>, BoxError>> {
        Box::pin(async { Ok(None) })
    }

    /// After how many runs that did not succeed (as counted by
    /// [`record_attempt`](Source::record_attempt)) a message goes to the
    /// dead letters; default 5.
    fn max_deliveries(&self) -> u32 {
        5
    }

    /// How long a delivered message stays invisible to other consumers
    /// before it is delivered again; the worker waits at most half of it
    /// for a key another consumer is running. Default 30 s.
    fn visibility_timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    /// The Redis stream this source reads, if it is one (or wraps one):
    /// with a lock client on the same Redis server, the worker then
    /// consumes it in batches, claiming the keys of a whole read in one
    /// call and settling every run that finished together in one more,
    /// acknowledging entries inside those calls rather than through
    /// [`ack`](Source::ack) (see [`acknowledged`](Source::acknowledged)).
    /// Default `None`; a source that wraps a [`StreamSource`](crate::StreamSource)
    /// returns the inner one to keep the batched path.
    #[cfg(feature = "streams")]
    #[cfg_attr(docsrs, doc(cfg(feature = "streams")))]
    fn as_stream(&self) -> Option<&crate::StreamSource> {
        None
    }

    /// Told of deliveries the worker acknowledged itself, in a batch's
    /// claim or settle call (see [`as_stream`](Source::as_stream)), for which
    /// [`ack`](Source::ack) is not called. Default: nothing.
    fn acknowledged(&self, deliveries: &[&Delivery]) {
        let _ = deliveries;
    }

    /// Where this source keeps its entries, for the fleet registry and
    /// inspection: a Redis stream, its consumer group and its dead-letter
    /// stream. `None` (the default) for sources that are not Redis streams,
    /// whose queues inspection cannot show.
    #[doc(hidden)]
    fn stream_names(&self) -> Option<crate::inspect::QueueDecl> {
        None
    }
}
