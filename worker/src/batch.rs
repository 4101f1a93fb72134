//! Consuming a Redis stream in batches: a read's deliveries are claimed in
//! one call, and the runs that finish together are settled in one more, so
//! the round trips per batch do not grow with its size.
//!
//! Used when the source is a [`StreamSource`] on the lock client's own
//! Redis server (one server or Sentinel's primary; not a cluster, where a
//! script touches one hash slot, nor a Redlock or the memory backend):
//! 1. read: `XREADGROUP` (and, now and then, the idle entries to reclaim);
//! 2. claim ([`LockClient::claim_all`](soloist_core::LockClient::claim_all)):
//!    for every delivery, its dedupe record is read and, if it holds a
//!    success, the entry is acknowledged then and there; otherwise the
//!    key's lock is taken with its fence and the run's attempt counted;
//! 3. the bodies run concurrently, up to `max_in_flight`;
//! 4. settle ([`LockClient::settle_all`](soloist_core::LockClient::settle_all)):
//!    for every run finished together (flushed once none is still running,
//!    or after a [`LINGER`]), its success record and effects are committed
//!    while its lock holds, the lock is released, the history entry
//!    written, and, only if the record was written, the entry acknowledged.
//!
//! Whatever does not fit (an unknown job, a payload that does not decode, a
//! paused job, a key another consumer holds, a message at its last attempt,
//! a job with a `rate` or a `concurrency` above 1) is handled one delivery
//! at a time as before (`consume.rs`), with the same guarantees.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use soloist_core::{Claim, Claimed, FencedWrite, LockGuard, Settle, redis};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use crate::consume::{
    Consumed, MAX_BACKOFF, MIN_BACKOFF, Reader, acknowledge, handle, ran_without_success,
};
use crate::inspect::RunRecord;
use crate::job::KeyedJob;
use crate::keyed;
use crate::metrics;
use crate::run::Ended;
use crate::source::{Delivery, Source};
use crate::spec::JobSpec;
use crate::streams::StreamSource;
use crate::worker::Shared;

/// How long finished runs wait for others still running before they are
/// settled together.
pub(crate) const LINGER: Duration = Duration::from_millis(1);

/// What a batched claim needs for one delivery.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) spec: JobSpec,
    pub(crate) key: String,
    pub(crate) record: String,
}

/// A claimed run whose body ended, to be settled.
#[derive(Debug)]
pub(crate) struct Finished {
    guard: LockGuard,
    /// The success's record value and effects; `None` if it did not succeed.
    success: Option<(Vec<u8>, Vec<redis::Cmd>)>,
    /// How the body ended (see `Ended::label`).
    label: &'static str,
    /// Why it failed.
    error: Option<String>,
    /// Its history entry, its outcome set when settled.
    history: Option<RunRecord>,
}

/// Runs the body of a claimed run of `job`.
pub(crate) async fn run_claimed<J: KeyedJob>(
    shared: Arc<Shared>,
    job: &J,
    payload: &[u8],
    prepared: &Prepared,
    guard: LockGuard,
) -> Finished {
    let failed = |guard, error: String| Finished {
        guard,
        success: None,
        label: "failure",
        error: Some(error),
        history: None,
    };
    let args: J::Args = match serde_json::from_slice(payload) {
        Ok(args) => args,
        Err(err) => return failed(guard, format!("bad arguments: {err}")),
    };
    let (spec, key) = (&prepared.spec, &prepared.key);
    let span =
        tracing::info_span!("soloist.job", job = %spec.name, key = %key, fence = guard.fence());
    let ran = tracing::Instrument::instrument(
        keyed::body(&shared, job, args, spec, key, guard.lease()),
        span,
    )
    .await;
    let mut ran = match ran {
        Ok(ran) => ran,
        Err(err) => return failed(guard, format!("could not run: {err}")),
    };
    let (success, label, error) = match std::mem::replace(&mut ran.ended, Ended::Cancelled) {
        Ended::Succeeded(value) => match serde_json::to_vec(&value) {
            Ok(encoded) => {
                let effects = ran
                    .last_ctx
                    .take()
                    .map(|ctx| ctx.take_on_success())
                    .unwrap_or_default();
                (Some((encoded, effects)), "success", None)
            }
            Err(err) => (
                None,
                "failure",
                Some(format!(
                    "could not run: the result does not serialize: {err}"
                )),
            ),
        },
        Ended::Failed(error) => (None, "failure", Some(error.to_string())),
        other => (None, other.label(), None),
    };
    let history = shared.fleet.as_ref().map(|_| {
        keyed::run_record(
            &shared,
            spec,
            key,
            guard.fence(),
            &ran,
            label,
            error.clone(),
        )
    });
    Finished {
        guard,
        success,
        label,
        error,
        history,
    }
}

/// The stream under `source`, if it can be consumed in batches: a
/// [`StreamSource`] on the lock client's Redis server, whose keys the lock
/// client's user may write and on which it may run the commands the batch
/// scripts run (`HINCRBY`, `XACK`, `HDEL`; see [`probe_commands`]). Asked
/// again while either cannot be reached (nothing can be consumed then), or
/// until shutdown begins.
pub(crate) async fn batchable(shared: &Shared, source: &dyn Source) -> Option<StreamSource> {
    let stream = source.as_stream()?.clone();
    if !shared.locks.batches() {
        return None;
    }
    let mut pause = MIN_BACKOFF;
    loop {
        let found = match stream.place_probe().await {
            Some(None) => return None,
            Some(Some((name, token))) => match shared.locks.connection().await {
                Ok(Some(mut conn)) => {
                    match redis::cmd("GETDEL")
                        .arg(&name)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                    {
                        Ok(read) if read.as_deref() == Some(token.as_str()) => {
                            probe_commands(&stream, &mut conn).await
                        }
                        Ok(_) => Some(false),
                        // Refused (an ACL without the stream's keys): the
                        // batch scripts could not acknowledge.
                        Err(err) if !(err.is_io_error() || err.is_timeout()) => Some(false),
                        Err(_) => None,
                    }
                }
                Ok(None) => return None,
                Err(_) => None,
            },
            None => None,
        };
        match found {
            Some(same) => return same.then_some(stream),
            None => {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shared.stop_claiming.cancelled() => return None,
                }
                pause = (pause * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Runs, as the lock client's user, the commands the batch scripts run on
/// the stream's keys (counting an attempt, acknowledging, forgetting the
/// count; on the entry `0-0`, which no stream holds): `Some(false)` if
/// Redis refuses one, so that a user who may not run them keeps the path
/// one delivery at a time; `None` if they cannot be sent now.
async fn probe_commands(stream: &StreamSource, conn: &mut soloist_core::Conn) -> Option<bool> {
    let mut commands = vec![stream.attempt_command("0-0", 0)];
    commands.extend(stream.ack_commands("0-0"));
    for command in commands {
        match command.query_async::<redis::Value>(conn).await {
            Ok(_) => {}
            Err(err) if !(err.is_io_error() || err.is_timeout()) => return Some(false),
            Err(_) => return None,
        }
    }
    Some(true)
}

/// A run that finished, with what its settlement needs.
struct Ran {
    delivery: Delivery,
    /// The runs of the message so far, this one included.
    attempts: u32,
    prepared: Prepared,
    finished: Finished,
}

/// Consumes `source` (whose stream is `stream`) in batches until the worker
/// stops claiming, with at most `in_flight` deliveries running at once.
pub(crate) async fn consume(
    shared: Arc<Shared>,
    source: Arc<dyn Source>,
    stream: StreamSource,
    jobs: Arc<HashMap<String, Arc<dyn Consumed>>>,
    in_flight: usize,
) {
    tracing::debug!(source = source.name(), "consuming in batches");
    let slots = Arc::new(Semaphore::new(in_flight));
    let (finished, settling) = mpsc::unbounded_channel();
    let running = Arc::new(AtomicUsize::new(0));
    // Shutdown waits for it like for a run: it ends once every run sent
    // its outcome and this loop dropped its sender.
    shared.runs.spawn(settle_loop(
        shared.clone(),
        source.clone(),
        stream.clone(),
        settling,
        running.clone(),
    ));
    let mut reader = Reader::new(&shared, source.as_ref(), &slots);
    while let Some((first, deliveries)) = reader.next().await {
        let mut claimed_slots = vec![first];
        while claimed_slots.len() < deliveries.len() {
            match slots.clone().acquire_owned().await {
                Ok(slot) => claimed_slots.push(slot),
                Err(_) => return,
            }
        }
        let batch = Batch {
            shared: &shared,
            source: &source,
            stream: &stream,
            jobs: &jobs,
            finished: &finished,
            running: &running,
        };
        batch.claim(deliveries, claimed_slots).await;
    }
}

/// What claiming one read's deliveries works with.
struct Batch<'a> {
    shared: &'a Arc<Shared>,
    source: &'a Arc<dyn Source>,
    stream: &'a StreamSource,
    jobs: &'a Arc<HashMap<String, Arc<dyn Consumed>>>,
    finished: &'a mpsc::UnboundedSender<Ran>,
    running: &'a Arc<AtomicUsize>,
}

impl Batch<'_> {
    /// Handles `delivery` on its own, as a source that cannot batch would.
    fn one_by_one(&self, delivery: Delivery, slot: OwnedSemaphorePermit) {
        let (shared, source, jobs) = (self.shared.clone(), self.source.clone(), self.jobs.clone());
        self.shared.runs.spawn(async move {
            handle(&shared, source.as_ref(), &jobs, delivery).await;
            drop(slot);
        });
    }

    /// Whether runs of `job` are paused, as known within the last second.
    async fn paused(&self, job: &str) -> bool {
        match &self.shared.fleet {
            Some(fleet) => fleet.is_paused_cached(job).await.unwrap_or(false),
            None => false,
        }
    }

    /// Claims the keys of `deliveries` in one call and starts the runs that
    /// hold theirs.
    async fn claim(&self, deliveries: Vec<Delivery>, slots: Vec<OwnedSemaphorePermit>) {
        let mut batch = Vec::with_capacity(deliveries.len());
        for (delivery, slot) in deliveries.into_iter().zip(slots) {
            let prepared = match self.jobs.get(&delivery.job) {
                Some(job) if delivery.attempts < self.source.max_deliveries() => job
                    .prepare(&delivery.payload)
                    .map(|prepared| (job.clone(), prepared)),
                _ => None,
            };
            match prepared {
                Some((job, prepared)) if !self.paused(&prepared.spec.name).await => {
                    batch.push((delivery, slot, job, prepared));
                }
                _ => self.one_by_one(delivery, slot),
            }
        }
        if batch.is_empty() {
            return;
        }
        let claims: Vec<Claim> = batch
            .iter()
            .map(|(delivery, _, _, prepared)| {
                let mut claim = Claim::new(&prepared.record)
                    .ttl(prepared.spec.ttl)
                    .unless_recorded(&prepared.record)
                    .if_recorded(self.stream.ack_commands(&delivery.id))
                    .if_acquired(vec![self.stream.attempt_command(&delivery.id, 1)])
                    .if_abandoned(vec![self.stream.attempt_command(&delivery.id, -1)]);
                if let Some(max_hold) = prepared.spec.max_hold {
                    claim = claim.max_hold(max_hold);
                }
                claim
            })
            .collect();
        let requested = Instant::now();
        let claimed = match self.shared.locks.claim_all(&claims).await {
            Ok(claimed) => claimed,
            // No body ran; the messages come back after the visibility
            // timeout. A claim Redis refused alone answers for itself
            // (`Claimed::Failed`, below); this is the whole call failing (a
            // lost reply, a timeout), after which the script may still have
            // run: each key it took is given back in the background and its
            // attempt taken back with it (`if_abandoned`). Only a call that
            // runs after that release (queued behind a stall) keeps its
            // attempts counted: such a message reaches its last attempt one
            // run earlier.
            Err(err) => {
                tracing::warn!(source = self.source.name(), error = %err, messages = batch.len(), "cannot claim; left for redelivery");
                return;
            }
        };
        let mut duplicates = Vec::new();
        for ((delivery, slot, job, prepared), claimed) in batch.into_iter().zip(claimed) {
            match claimed {
                Claimed::Recorded(_, replies) => {
                    metrics::consumed(self.source.name(), delivery.deliveries > 1);
                    metrics::run(&prepared.spec.name, "duplicate");
                    if replies.contains(&redis::Value::Nil) {
                        // Refused inside the script (an ACL, a proxy that
                        // wants every key declared): acknowledged on the
                        // stream's own connection instead.
                        tracing::warn!(source = self.source.name(), id = %delivery.id, "acknowledgement refused in the claim; acknowledging on its own");
                        acknowledge(self.source.as_ref(), &delivery, true).await;
                        continue;
                    }
                    metrics::duplicate_skipped(self.source.name());
                    metrics::acked(self.source.name());
                    duplicates.push(delivery);
                }
                Claimed::Acquired { guard, replies } => {
                    metrics::consumed(self.source.name(), delivery.deliveries > 1);
                    metrics::claim_time(&prepared.spec.name, requested.elapsed());
                    let attempts = match replies.first() {
                        Some(redis::Value::Int(count)) => u32::try_from(*count).unwrap_or(u32::MAX),
                        _ => delivery.attempts.saturating_add(1),
                    };
                    if self.shared.stop_claiming.is_cancelled() {
                        // No run starts once shutdown has begun: the key
                        // goes back, and the attempt counted with it is
                        // taken back in the same call.
                        let uncount = self.stream.attempt_command(&delivery.id, -1);
                        if let Err(err) = guard.release_with(&[uncount]).await {
                            tracing::debug!(error = %err, "releasing an unstarted run");
                        }
                        continue;
                    }
                    self.running.fetch_add(1, Ordering::SeqCst);
                    let (shared, finished, running) = (
                        self.shared.clone(),
                        self.finished.clone(),
                        self.running.clone(),
                    );
                    self.shared.runs.spawn(async move {
                        let outcome = job
                            .run_claimed(shared, &delivery.payload, &prepared, guard)
                            .await;
                        // The next read need not wait for this settlement:
                        // it overlaps with it.
                        drop(slot);
                        let _ = finished.send(Ran {
                            delivery,
                            attempts,
                            prepared,
                            finished: outcome,
                        });
                        running.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                // Redis refused this claim alone (its record or fence
                // counter is of the wrong type): nothing ran or was counted,
                // and the path one delivery at a time reports the error.
                Claimed::Failed { error } => {
                    tracing::debug!(source = self.source.name(), id = %delivery.id, error = %error, "claim refused; handled on its own");
                    self.one_by_one(delivery, slot);
                }
                // Another consumer runs the key: waited for one by one.
                _ => self.one_by_one(delivery, slot),
            }
        }
        if !duplicates.is_empty() {
            self.source
                .acknowledged(&duplicates.iter().collect::<Vec<_>>());
            self.stream.acknowledged_many(duplicates.len()).await;
        }
    }
}

/// Settles finished runs together: each batch is what finished by the time
/// no run is still going, or [`LINGER`] after the first.
async fn settle_loop(
    shared: Arc<Shared>,
    source: Arc<dyn Source>,
    stream: StreamSource,
    mut settling: mpsc::UnboundedReceiver<Ran>,
    running: Arc<AtomicUsize>,
) {
    while let Some(first) = settling.recv().await {
        let mut batch = vec![first];
        let until = Instant::now() + LINGER;
        loop {
            while let Ok(ran) = settling.try_recv() {
                batch.push(ran);
            }
            if running.load(Ordering::SeqCst) == 0 {
                break;
            }
            match tokio::time::timeout_at(until, settling.recv()).await {
                Ok(Some(ran)) => batch.push(ran),
                Ok(None) | Err(_) => break,
            }
        }
        settle(&shared, source.as_ref(), &stream, batch).await;
    }
}

/// What one settled run comes to, once its settlement is answered.
struct Settling {
    delivery: Delivery,
    attempts: u32,
    job: String,
    succeeded: bool,
    label: &'static str,
    error: Option<String>,
}

/// Settles `batch` in one call: records, effects, releases, history
/// entries and acknowledgements of successes.
async fn settle(shared: &Shared, source: &dyn Source, stream: &StreamSource, batch: Vec<Ran>) {
    let mut settles = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for ran in batch {
        let Ran {
            delivery,
            attempts,
            prepared,
            finished,
        } = ran;
        let history = |outcome: &str| -> Vec<redis::Cmd> {
            shared
                .fleet
                .as_ref()
                .zip(finished.history.as_ref())
                .map(|(fleet, run)| fleet.history_entry_as(run, outcome))
                .into_iter()
                .collect()
        };
        let succeeded = finished.success.is_some();
        let mut settle = Settle::new(finished.guard);
        if let Some((value, effects)) = finished.success {
            let keep = prepared
                .spec
                .dedupe
                .unwrap_or_else(|| prepared.spec.ttl.max(Duration::from_secs(60)));
            // The batch's acknowledgements go as one XACK and one HDEL.
            settle = settle
                .record(&prepared.record, value, Some(keep), effects)
                .if_committed(history("success"))
                .if_committed_together(stream.ack_commands(&delivery.id))
                .otherwise(history("lost"));
        } else {
            settle = settle.otherwise(history(finished.label));
        }
        if let Err(err) = settle.check() {
            // The job's effects are malformed: every run would repeat it,
            // so it counts, as on the path one delivery at a time.
            let guard = settle.into_guard();
            if let Err(err) = guard.release_with(&history("unrecorded")).await {
                tracing::debug!(error = %err, "releasing after the run");
            }
            metrics::run(&prepared.spec.name, "failure");
            ran_without_success(
                source,
                &delivery,
                attempts,
                &format!("could not run: {err}"),
            )
            .await;
            continue;
        }
        settles.push(settle);
        items.push(Settling {
            delivery,
            attempts,
            job: prepared.spec.name,
            succeeded,
            label: finished.label,
            error: finished.error,
        });
    }
    if settles.is_empty() {
        return;
    }
    let settled = shared.locks.settle_all(settles).await;
    let settled = match settled {
        Ok(settled) => settled.into_iter().map(Some).collect(),
        Err(err) => {
            tracing::warn!(source = source.name(), error = %err, runs = items.len(), "cannot settle the runs; their messages are left for redelivery");
            vec![None; items.len()]
        }
    };
    let mut acked = Vec::new();
    for (item, settled) in items.into_iter().zip(settled) {
        let Some(settled) = settled else {
            // Unknown whether it was recorded: a redelivery finds out. A
            // run that did not succeed counts as it would have.
            if !item.succeeded {
                ended_without_success(source, &item).await;
            }
            continue;
        };
        if item.succeeded {
            if settled.write == Some(FencedWrite::Accepted) {
                metrics::run(&item.job, "success");
                if let Some(error) = &settled.effect_refused {
                    tracing::warn!(source = source.name(), id = %item.delivery.id, error = %error, "an effect was refused");
                }
                if let Some(error) = &settled.command_refused {
                    // The acknowledgement (or the history entry) was
                    // refused inside the script: acknowledged on the
                    // stream's own connection, which bears a second XACK.
                    tracing::warn!(source = source.name(), id = %item.delivery.id, error = %error, "a command of the settlement was refused; acknowledging on its own");
                    acknowledge(source, &item.delivery, false).await;
                    continue;
                }
                acked.push(item.delivery);
            } else {
                metrics::run(&item.job, "lost");
                // A record Redis refused is an unrecorded success too.
                let reason = match &settled.record_refused {
                    Some(error) => format!("its record was refused: {error}"),
                    None => "run ended lost".to_owned(),
                };
                ran_without_success(source, &item.delivery, item.attempts, &reason).await;
            }
        } else {
            metrics::run(&item.job, item.label);
            ended_without_success(source, &item).await;
        }
    }
    if !acked.is_empty() {
        for _ in &acked {
            metrics::acked(source.name());
        }
        source.acknowledged(&acked.iter().collect::<Vec<_>>());
        stream.acknowledged_many(acked.len()).await;
    }
}

/// A run that failed, timed out, lost its lease or was cancelled: dead
/// letters at the last attempt, else left for redelivery.
async fn ended_without_success(source: &dyn Source, item: &Settling) {
    let reason = match (&item.error, item.label) {
        (Some(error), _) => error.clone(),
        (None, how) => format!("run ended {how}"),
    };
    ran_without_success(source, &item.delivery, item.attempts, &reason).await;
}
