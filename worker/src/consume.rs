//! Consuming a [`Source`]: each delivery runs its keyed job, and is
//! acknowledged only once the run's outcome is recorded.
//!
//! The source delivers at least once; the job's key lock and dedupe record
//! turn that into one successful run per key: a redelivered message whose
//! key already succeeded is a duplicate, acknowledged without running.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use soloist_core::LockError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Result, WorkerError};
use crate::job::KeyedJob;
use crate::keyed;
use crate::metrics;
use crate::outcome::RunOutcome;
use crate::source::{Delivery, Source};
use crate::spec::JobSpec;
use crate::worker::Shared;

/// What running one delivery came to.
#[derive(Debug)]
pub(crate) enum Handled {
    /// Succeeded now, or had succeeded before: acknowledge.
    Done { duplicate: bool },
    /// Another consumer runs the key right now.
    Busy,
    /// An operator paused the job.
    Paused,
    /// The run failed; the reason, for the dead letters.
    Failed(String),
    /// The run did not end (lease lost, max_hold, shutdown); how, by its
    /// outcome's label.
    Unfinished(&'static str),
    /// The payload does not decode into the job's arguments.
    Malformed(String),
}

/// A keyed job with its arguments' types erased, run from a payload.
pub(crate) trait Consumed: Send + Sync {
    /// Runs the job; `started` is awaited once its body is about to run.
    fn run_payload<'a>(
        &'a self,
        shared: Arc<Shared>,
        payload: &'a [u8],
        started: BoxFuture<'a, ()>,
    ) -> BoxFuture<'a, Result<Handled>>;

    /// What a batched claim needs to run this payload (see `batch.rs`):
    /// `None` unless the payload decodes and the job's runs can be claimed
    /// in a batch (each holds its key alone, with no rate limit).
    #[cfg(feature = "streams")]
    fn prepare(&self, payload: &[u8]) -> Option<crate::batch::Prepared>;

    /// Runs the body of a run a batch claimed, its key held by `guard`.
    #[cfg(feature = "streams")]
    fn run_claimed<'a>(
        &'a self,
        shared: Arc<Shared>,
        payload: &'a [u8],
        prepared: &'a crate::batch::Prepared,
        guard: soloist_core::LockGuard,
    ) -> BoxFuture<'a, crate::batch::Finished>;

    /// Whether a run with this payload succeeded within the dedupe window;
    /// `None` if the payload does not decode.
    fn succeeded<'a>(
        &'a self,
        shared: &'a Shared,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<bool>>>;
}

pub(crate) struct Erased<J> {
    job: J,
    /// The job's spec, read once as the worker is built (as the checks of
    /// [`check`] read it), if it is valid and its runs can be claimed in a
    /// batch: what every [`prepare`](Consumed::prepare) hands out, rather
    /// than building and validating it again per delivery.
    #[cfg(feature = "streams")]
    batched: Option<JobSpec>,
}

impl<J: KeyedJob> Erased<J> {
    pub(crate) fn new(job: J) -> Self {
        #[cfg(feature = "streams")]
        let batched = job.spec().ok().filter(|spec| {
            spec.validate().is_ok()
                && spec.concurrency.is_none_or(|permits| permits <= 1)
                && spec.rate.is_none()
        });
        Erased {
            job,
            #[cfg(feature = "streams")]
            batched,
        }
    }
}

impl<J: KeyedJob + 'static> Consumed for Erased<J> {
    fn run_payload<'a>(
        &'a self,
        shared: Arc<Shared>,
        payload: &'a [u8],
        started: BoxFuture<'a, ()>,
    ) -> BoxFuture<'a, Result<Handled>> {
        Box::pin(async move {
            let args: J::Args = match serde_json::from_slice(payload) {
                Ok(args) => args,
                Err(err) => return Ok(Handled::Malformed(format!("bad arguments: {err}"))),
            };
            Ok(
                match keyed::run_noting_start(shared, &self.job, args, started).await? {
                    RunOutcome::Completed(_) => Handled::Done { duplicate: false },
                    RunOutcome::Duplicate(_) => Handled::Done { duplicate: true },
                    RunOutcome::Busy => Handled::Busy,
                    RunOutcome::Paused => Handled::Paused,
                    RunOutcome::Failed(error) => Handled::Failed(error.to_string()),
                    other => Handled::Unfinished(other.label()),
                },
            )
        })
    }

    #[cfg(feature = "streams")]
    fn prepare(&self, payload: &[u8]) -> Option<crate::batch::Prepared> {
        let spec = self.batched.as_ref()?;
        let args: J::Args = serde_json::from_slice(payload).ok()?;
        let key = self.job.key(&args);
        let record = keyed::record_name(spec, &key);
        Some(crate::batch::Prepared {
            spec: spec.clone(),
            key,
            record,
        })
    }

    #[cfg(feature = "streams")]
    fn run_claimed<'a>(
        &'a self,
        shared: Arc<Shared>,
        payload: &'a [u8],
        prepared: &'a crate::batch::Prepared,
        guard: soloist_core::LockGuard,
    ) -> BoxFuture<'a, crate::batch::Finished> {
        Box::pin(crate::batch::run_claimed(
            shared, &self.job, payload, prepared, guard,
        ))
    }

    fn succeeded<'a>(
        &'a self,
        shared: &'a Shared,
        payload: &'a [u8],
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(async move {
            let Ok(args) = serde_json::from_slice::<J::Args>(payload) else {
                return Ok(None);
            };
            keyed::succeeded(shared, &self.job, &args).await.map(Some)
        })
    }
}

/// Checks that a job can be consumed from `source`: without dedupe, a
/// redelivered message would run its job again; with a window shorter than
/// the visibility timeout, the success record could be gone by the time a
/// message whose acknowledgement was lost comes back.
pub(crate) fn check(spec: &JobSpec, source: &dyn Source) -> Result<()> {
    let Some(window) = spec.dedupe else {
        return Err(WorkerError::invalid(
            &spec.name,
            "dedupe",
            "a job consumed from a queue needs `dedupe`, or redeliveries would run it again",
        ));
    };
    let visibility = source.visibility_timeout();
    if window < visibility {
        return Err(WorkerError::invalid(
            &spec.name,
            "dedupe",
            format!(
                "the window ({window:?}) must be at least the visibility timeout of source `{}` \
                 ({visibility:?}), or a redelivered message could run again",
                source.name()
            ),
        ));
    }
    Ok(())
}

/// How often a consumer reports its source's lag.
pub(crate) const LAG_EVERY: Duration = Duration::from_secs(5);
/// The first and the longest pause after a failed read.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(50);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The reading half of every consumer loop: reports the source's lag now
/// and then, waits for a free run slot, and reads as many deliveries as
/// slots are free, pausing with jitter after a failed read.
pub(crate) struct Reader<'a> {
    shared: &'a Shared,
    source: &'a dyn Source,
    slots: &'a Arc<Semaphore>,
    lag_reported: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        source: &'a dyn Source,
        slots: &'a Arc<Semaphore>,
    ) -> Self {
        Reader {
            shared,
            source,
            slots,
            lag_reported: None,
            backoff: MIN_BACKOFF,
        }
    }

    /// The next deliveries with the run slot of the first; `None` once the
    /// worker stops claiming.
    pub(crate) async fn next(&mut self) -> Option<(OwnedSemaphorePermit, Vec<Delivery>)> {
        let (shared, source) = (self.shared, self.source);
        loop {
            if self.lag_reported.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
                self.lag_reported = Some(tokio::time::Instant::now());
                match source.lag().await {
                    Ok(Some(lag)) => metrics::lag(source.name(), lag),
                    Ok(None) => {}
                    Err(err) => {
                        tracing::debug!(source = source.name(), error = %err, "cannot read the lag")
                    }
                }
            }
            let first = tokio::select! {
                slot = self.slots.clone().acquire_owned() => slot,
                () = shared.stop_claiming.cancelled() => return None,
            };
            let first = first.ok()?;
            let free = 1 + self.slots.available_permits();
            let received = tokio::select! {
                received = source.receive(free) => received,
                () = shared.stop_claiming.cancelled() => return None,
            };
            match received {
                Ok(deliveries) => {
                    self.backoff = MIN_BACKOFF;
                    return Some((first, deliveries));
                }
                Err(err) => {
                    // The source reconnects on its next call; the jitter
                    // keeps a fleet cut off together from coming back in
                    // one instant.
                    let pause = self.backoff.mul_f64(rand::random_range(0.5..=1.0));
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!(source = source.name(), error = %err, retry_in = ?pause, "receiving failed; retrying");
                    drop(first);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shared.stop_claiming.cancelled() => return None,
                    }
                }
            }
        }
    }
}

/// Consumes `source` until the worker stops claiming, with at most
/// `in_flight` deliveries running at once.
pub(crate) async fn consume(
    shared: Arc<Shared>,
    source: Arc<dyn Source>,
    jobs: Arc<HashMap<String, Arc<dyn Consumed>>>,
    in_flight: usize,
) {
    #[cfg(feature = "streams")]
    if let Some(stream) = crate::batch::batchable(&shared, source.as_ref()).await {
        return crate::batch::consume(shared, source, stream, jobs, in_flight).await;
    }
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut reader = Reader::new(&shared, source.as_ref(), &slots);
    while let Some((first, deliveries)) = reader.next().await {
        let mut slot = Some(first);
        for delivery in deliveries {
            let permit = match slot.take() {
                Some(permit) => permit,
                None => match slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let (shared, source, jobs) = (shared.clone(), source.clone(), jobs.clone());
            let runs = shared.runs.clone();
            runs.spawn(async move {
                handle(&shared, source.as_ref(), &jobs, delivery).await;
                drop(permit);
            });
        }
    }
}

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    source: &dyn Source,
    jobs: &HashMap<String, Arc<dyn Consumed>>,
    delivery: Delivery,
) {
    let name = source.name();
    metrics::consumed(name, delivery.deliveries > 1);
    let Some(job) = jobs.get(&delivery.job) else {
        let reason = if delivery.job.is_empty() {
            "malformed entry: no job name or no arguments".to_owned()
        } else {
            format!("no job named `{}` consumes this source", delivery.job)
        };
        return dead_letter(source, &delivery, &reason).await;
    };
    // As many runs started as are allowed, and the last never reported
    // back: its consumer died (a job that crashes its process, say), or
    // died between the run's success and the acknowledgement.
    if delivery.attempts >= source.max_deliveries() {
        return match job.succeeded(shared, &delivery.payload).await {
            Ok(Some(true)) => acknowledge(source, &delivery, true).await,
            Ok(Some(false)) => {
                let reason = format!(
                    "failed {} times: started and never finished",
                    delivery.attempts
                );
                dead_letter(source, &delivery, &reason).await;
            }
            Ok(None) => dead_letter(source, &delivery, "bad arguments").await,
            Err(err) => {
                tracing::warn!(source = name, id = %delivery.id, error = %err, "cannot read the run's record; left for redelivery")
            }
        };
    }
    // The runs of this message so far, once this one has started.
    let counted = AtomicU32::new(0);
    let count = || -> BoxFuture<'_, ()> {
        Box::pin(async {
            match source.record_attempt(&delivery).await {
                Ok(attempts) => counted.store(attempts, Ordering::Relaxed),
                Err(err) => {
                    tracing::warn!(source = name, id = %delivery.id, error = %err, "cannot count the attempt")
                }
            }
        })
    };
    // A busy key is waited for (its run may well end as the success this
    // message duplicates), for at most half the visibility timeout.
    let patience = source.visibility_timeout() / 2;
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    let handled = loop {
        match job
            .run_payload(shared.clone(), &delivery.payload, count())
            .await
        {
            Ok(Handled::Busy) if started.elapsed() + pause < patience => {
                // Shutdown ends the wait: the message is left for redelivery.
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shared.stop_claiming.cancelled() => break Ok(Handled::Busy),
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => break other,
        }
    };
    match handled {
        Ok(Handled::Done { duplicate }) => acknowledge(source, &delivery, duplicate).await,
        Ok(Handled::Malformed(reason)) => dead_letter(source, &delivery, &reason).await,
        Ok(Handled::Busy) => {
            tracing::debug!(source = name, id = %delivery.id, "key still busy; left for redelivery")
        }
        // Not run, and not counted: the message comes back after the
        // visibility timeout, and runs once the job is resumed.
        Ok(Handled::Paused) => {
            tracing::debug!(source = name, id = %delivery.id, "job paused; left for redelivery")
        }
        Ok(Handled::Failed(reason)) => {
            ran_without_success(source, &delivery, counted.load(Ordering::Relaxed), &reason).await;
        }
        // It ran, to its max_hold, past its lease or into shutdown: a job
        // that always does would otherwise come back forever.
        Ok(Handled::Unfinished(how)) => {
            ran_without_success(
                source,
                &delivery,
                counted.load(Ordering::Relaxed),
                &format!("run ended {how}"),
            )
            .await;
        }
        // The lock backend is unreachable: nothing ran, and the message
        // waits for it to come back, however long that takes.
        Err(WorkerError::Lock(err)) if err.is_transient() => {
            tracing::warn!(source = name, id = %delivery.id, error = %err, "cannot run; left for redelivery")
        }
        // Recorded as a success; Redis refused one of its effects, which a
        // rerun would not change.
        Err(WorkerError::Lock(err @ LockError::EffectRefused { .. })) => {
            tracing::warn!(source = name, id = %delivery.id, error = %err, "an effect was refused");
            acknowledge(source, &delivery, false).await;
        }
        // Shutdown began before the run could start: nothing ran.
        Err(WorkerError::ShuttingDown) => {
            tracing::debug!(source = name, id = %delivery.id, "shutting down; left for redelivery")
        }
        // It ran (and was counted when it started) and succeeded, but the
        // backend kept its success from being recorded: a redelivery finds
        // out whether the record made it after all.
        Err(err @ WorkerError::Unrecorded { .. }) => {
            tracing::warn!(source = name, id = %delivery.id, error = %err, "success unrecorded; left for redelivery")
        }
        // Anything else that keeps a run from starting or finishing (a
        // record that no longer decodes) would keep doing so: it counts.
        Err(err) => {
            if counted.load(Ordering::Relaxed) == 0 {
                count().await;
            }
            ran_without_success(
                source,
                &delivery,
                counted.load(Ordering::Relaxed),
                &format!("could not run: {err}"),
            )
            .await;
        }
    }
}

/// Dead-letters a message whose run did not succeed once it has had
/// `max_deliveries` runs; otherwise it is left for redelivery.
pub(crate) async fn ran_without_success(
    source: &dyn Source,
    delivery: &Delivery,
    attempts: u32,
    reason: &str,
) {
    let name = source.name();
    if attempts >= source.max_deliveries() {
        dead_letter(
            source,
            delivery,
            &format!("failed {attempts} times: {reason}"),
        )
        .await;
    } else {
        tracing::info!(source = name, id = %delivery.id, attempts, reason, "run did not succeed; left for redelivery");
    }
}

pub(crate) async fn acknowledge(source: &dyn Source, delivery: &Delivery, duplicate: bool) {
    let name = source.name();
    if duplicate {
        metrics::duplicate_skipped(name);
    }
    match source.ack(delivery).await {
        Ok(()) => metrics::acked(name),
        Err(err) => {
            tracing::warn!(source = name, id = %delivery.id, error = %err, "ack failed; the message will come back as a duplicate")
        }
    }
}

async fn dead_letter(source: &dyn Source, delivery: &Delivery, reason: &str) {
    match source.dead_letter(delivery, reason).await {
        Ok(()) => {
            metrics::dead_lettered(source.name());
            tracing::warn!(source = source.name(), id = %delivery.id, reason, "dead-lettered");
        }
        Err(err) => {
            tracing::warn!(source = source.name(), id = %delivery.id, error = %err, "dead-lettering failed")
        }
    }
}
