//! Keyed jobs: one execution at a time per rendered key, and with dedupe,
//! one success per key within the window.
//!
//! Under the prefix of the worker's lock client, the run's lock is the lock
//! on `job:<name>:<key>` (Redis key `lock:{job:<name>:<key>}`), and its
//! dedupe record, written with the run's fence, is the fenced record of the
//! same name, in the same hash slot: a run whose lease ended
//! unnoticed cannot overwrite the record of the run that followed it. The
//! name is escaped like the key's arguments (see `soloist_parse::KeyPart`), so a `:` in a
//! job's name cannot make two jobs share a key.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use soloist_core::LockError;
use tokio::time::Instant;
use tracing::Instrument;

use crate::context::JobContext;
use crate::error::{Result, WorkerError};
use crate::gather::{self, Gathered};
use crate::inspect::RunRecord;
use crate::job::KeyedJob;
use crate::limit::Held;
use crate::metrics;
use crate::outcome::RunOutcome;
use crate::run::{Ended, attempts};
use crate::spec::JobSpec;
use crate::worker::Shared;
use soloist_parse::{escaped, is_plain};

pub(crate) async fn run<J: KeyedJob>(
    shared: Arc<Shared>,
    job: J,
    args: J::Args,
) -> Result<RunOutcome<J::Output>> {
    run_noting_start(shared, job, args, std::future::ready(())).await
}

/// [`run`], awaiting `started` once the key is held and the body is about
/// to run (not for a duplicate or a busy key): a queue consumer counts the
/// message's attempts there.
pub(crate) async fn run_noting_start<J: KeyedJob>(
    shared: Arc<Shared>,
    job: J,
    args: J::Args,
    started: impl Future<Output = ()>,
) -> Result<RunOutcome<J::Output>> {
    let spec = job.spec()?;
    spec.validate()?;
    let key = job.key(&args);
    let record = record_name(&spec, &key);
    let span = tracing::info_span!("soloist.job", job = %spec.name, key = %key, fence = tracing::field::Empty);
    let outcome = async {
        // Read at most a second ago (see `fleet.rs`): no round trip more
        // per run, and a pause reaches every replica within that second.
        // Not knowing is not "paused": the lock decides, and reports a
        // backend that is down as it always does.
        if let Some(fleet) = &shared.fleet {
            match fleet.is_paused_cached(&spec.name).await {
                Ok(true) => return Ok(RunOutcome::Paused),
                Ok(false) => {}
                Err(err) => tracing::debug!(error = %err, "cannot read whether the job is paused"),
            }
        }
        if gather::fits(&shared, &spec) {
            let requested = Instant::now();
            // A shutdown ends the wait, as below.
            let claimed = tokio::select! {
                claimed = gather::claim::<J::Output>(&shared, &spec, &record) => claimed?,
                () = shared.stop_claiming.cancelled() => return Err(WorkerError::ShuttingDown),
            };
            match claimed {
                Gathered::Duplicate(recorded) => return Ok(RunOutcome::Duplicate(recorded)),
                Gathered::Busy => return Ok(RunOutcome::Busy),
                Gathered::Acquired(guard) => {
                    if shared.stop_claiming.is_cancelled() {
                        let _ = guard.release().await;
                        return Err(WorkerError::ShuttingDown);
                    }
                    note_claim(&spec, requested, guard.fence());
                    started.await;
                    return gather::run(&shared, &job, args, &spec, (&key, &record), guard).await;
                }
                Gathered::Refused => {}
            }
        }
        if let Some(recorded) = recorded::<J::Output>(&shared, &spec, &record).await? {
            return Ok(RunOutcome::Duplicate(recorded));
        }
        let requested = Instant::now();
        // A shutdown ends the wait: no run starts once it has begun.
        let acquired = tokio::select! {
            acquired = hold(&shared, &spec, &record) => acquired,
            () = shared.stop_claiming.cancelled() => return Err(WorkerError::ShuttingDown),
        };
        let guard = match acquired {
            Ok(guard) => guard,
            Err(LockError::Busy { .. } | LockError::Timeout { .. }) => return Ok(RunOutcome::Busy),
            Err(err) => return Err(err.into()),
        };
        if shared.stop_claiming.is_cancelled() {
            let _ = guard.release().await;
            return Err(WorkerError::ShuttingDown);
        }
        note_claim(&spec, requested, guard.fence());
        // The record may have appeared while we waited for the lock.
        if let Some(recorded) = recorded::<J::Output>(&shared, &spec, &record).await? {
            let _ = guard.release().await;
            return Ok(RunOutcome::Duplicate(recorded));
        }
        // Counted once the run holds its key and is no duplicate: a busy
        // or duplicate request does not use the limit up.
        if let Some(retry_after) = crate::limit::admit(&shared, &spec, &guard).await? {
            let _ = guard.release().await;
            return Ok(RunOutcome::RateLimited { retry_after });
        }
        started.await;
        let (outcome, history) =
            execute(&shared, &job, args, &spec, (&key, &record), &guard).await?;
        // The run's history entry rides on the release: written in the
        // release's own script on one server, sent in the same round trip
        // on a cluster (see `LockGuard::release_with`).
        let along: Vec<soloist_core::redis::Cmd> = shared
            .fleet
            .as_ref()
            .zip(history)
            .map(|(fleet, run)| fleet.history_entry(&run))
            .into_iter()
            .collect();
        match guard.release_with(&along).await {
            // Released; the history refused its entry (a full or mistyped
            // key): an operator should hear of it, as before.
            Err(err @ LockError::AlongRefused { .. }) => {
                tracing::warn!(error = %err, "cannot record the run in the history")
            }
            Err(err) => tracing::debug!(error = %err, "releasing after the run"),
            Ok(()) => {}
        }
        outcome
    }
    .instrument(span)
    .await;
    if let Ok(outcome) = &outcome {
        metrics::run(&spec.name, outcome.label());
    }
    outcome
}

/// Notes a run's key taken, `requested` before: the claim time, and the
/// fence on the run's span.
fn note_claim(spec: &JobSpec, requested: Instant, fence: u64) {
    metrics::claim_time(&spec.name, requested.elapsed());
    tracing::Span::current().record("fence", fence);
}

/// Whether a run of `job` with `args` succeeded within the dedupe window: a
/// queue consumer asks before giving up on a message whose last run never
/// reported back.
pub(crate) async fn succeeded<J: KeyedJob>(
    shared: &Shared,
    job: &J,
    args: &J::Args,
) -> Result<bool> {
    let spec = job.spec()?;
    let record = record_name(&spec, &job.key(args));
    Ok(recorded::<J::Output>(shared, &spec, &record)
        .await?
        .is_some())
}

/// The dedupe record (and lock) of the run of `spec` with the rendered `key`.
pub(crate) fn record_name(spec: &JobSpec, key: &str) -> String {
    record_of(&spec.name, key)
}

/// The dedupe record (and lock) of a run of the job named `job` with the
/// rendered `key`.
pub(crate) fn record_of(job: &str, key: &str) -> String {
    // Built in place, without formatting: every consumed message names its
    // record. A name of plain characters only is its own escaped form.
    let mut name = String::with_capacity("job::".len() + job.len() + key.len());
    name.push_str("job:");
    if job.chars().all(is_plain) {
        name.push_str(job);
    } else {
        name.push_str(&escaped(job));
    }
    name.push(':');
    name.push_str(key);
    name
}

/// The result a successful run recorded within the dedupe window.
async fn recorded<T: DeserializeOwned>(
    shared: &Shared,
    spec: &JobSpec,
    record: &str,
) -> Result<Option<T>> {
    if spec.dedupe.is_none() {
        return Ok(None);
    }
    let Some(stored) = shared.locks.fenced_get(record).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&stored.value)
        .map(Some)
        .map_err(|source| WorkerError::Serde {
            job: spec.name.clone(),
            source,
        })
}

/// Takes what a run of the key needs: its lock, or with a concurrency
/// above one, one of its permits.
async fn hold(shared: &Shared, spec: &JobSpec, record: &str) -> soloist_core::Result<Held> {
    match spec.concurrency {
        Some(permits) if permits > 1 => {
            let mut request = shared
                .locks
                .semaphore(record, permits)
                .ttl(spec.ttl)
                .wait(spec.wait);
            if let Some(max_hold) = spec.max_hold {
                request = request.max_hold(max_hold);
            }
            request.acquire().await.map(Held::Permit)
        }
        _ => {
            let mut request = shared.locks.lock(record).ttl(spec.ttl).wait(spec.wait);
            if let Some(max_hold) = spec.max_hold {
                request = request.max_hold(max_hold);
            }
            request.acquire().await.map(Held::Lock)
        }
    }
}

/// How a run's body went, before anything is recorded.
pub(crate) struct Body<T> {
    pub(crate) ended: Ended<T>,
    pub(crate) last_ctx: Option<JobContext>,
    pub(crate) started_at: chrono::DateTime<chrono::Utc>,
    pub(crate) started: Instant,
}

/// Runs the job's body with its retries while `lease` holds.
pub(crate) async fn body<J: KeyedJob>(
    shared: &Shared,
    job: &J,
    args: J::Args,
    spec: &JobSpec,
    key: &str,
    lease: soloist_core::Lease,
) -> Result<Body<J::Output>> {
    let started_at = shared.clock.now();
    let started = Instant::now();
    // Retries need the arguments again: keep them serialized.
    let encoded = serde_json::to_vec(&args).map_err(|source| WorkerError::Serde {
        job: spec.name.clone(),
        source,
    })?;
    let mut first = Some(args);
    let mut last_ctx = None;
    let ended = attempts(
        spec,
        std::slice::from_ref(&lease),
        &shared.cancel_runs,
        |attempt, cancel| {
            let ctx = JobContext::builder(&spec.name)
                .key(key)
                .lease(lease.clone())
                .attempt(attempt)
                .replica(&shared.replica)
                .cancellation(cancel)
                .build();
            last_ctx = Some(ctx.clone());
            match first
                .take()
                .map(Ok)
                .unwrap_or_else(|| serde_json::from_slice(&encoded))
            {
                Ok(args) => job.call(ctx, args),
                Err(err) => Box::pin(futures::future::ready(Err(err.into()))),
            }
        },
    )
    .await;
    metrics::run_time(&spec.name, started.elapsed());
    Ok(Body {
        ended,
        last_ctx,
        started_at,
        started,
    })
}

/// The history entry of a keyed run of `spec` on `key` that came to
/// `outcome` (with `error`).
pub(crate) fn run_record<T>(
    shared: &Shared,
    spec: &JobSpec,
    key: &str,
    fence: u64,
    body: &Body<T>,
    outcome: &str,
    error: Option<String>,
) -> RunRecord {
    RunRecord {
        id: String::new(),
        job: spec.name.clone(),
        tick_ms: None,
        triggered: false,
        key: Some(key.to_owned()),
        replica: shared.replica.clone(),
        fence,
        outcome: outcome.to_owned(),
        started_ms: body.started_at.timestamp_millis(),
        duration_ms: u64::try_from(body.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error,
    }
}

/// Runs the job's body with its retries and records a success: the run's
/// outcome, and its history entry (on a Redis backend) for the release to
/// carry.
async fn execute<J: KeyedJob>(
    shared: &Shared,
    job: &J,
    args: J::Args,
    spec: &JobSpec,
    (key, record): (&str, &str),
    guard: &Held,
) -> Result<(Result<RunOutcome<J::Output>>, Option<RunRecord>)> {
    let mut ran = body(shared, job, args, spec, key, guard.lease()).await?;
    let ended = std::mem::replace(&mut ran.ended, Ended::Cancelled);
    let outcome = outcome_of(shared, ended, ran.last_ctx.take(), spec, record, guard).await;
    let history = shared.fleet.as_ref().map(|_| {
        run_record(
            shared,
            spec,
            key,
            guard.fence(),
            &ran,
            match &outcome {
                Ok(outcome) => outcome.label(),
                Err(_) => "unrecorded",
            },
            match &outcome {
                Ok(RunOutcome::Failed(error)) => Some(error.to_string()),
                Err(error) => Some(error.to_string()),
                Ok(_) => None,
            },
        )
    });
    Ok((outcome, history))
}

/// What the run that `ended` comes to, its success recorded.
async fn outcome_of<T: serde::Serialize>(
    shared: &Shared,
    ended: Ended<T>,
    last_ctx: Option<JobContext>,
    spec: &JobSpec,
    record: &str,
    guard: &Held,
) -> Result<RunOutcome<T>> {
    Ok(match ended {
        Ended::Succeeded(value) => {
            let effects = last_ctx
                .map(|ctx| ctx.take_on_success())
                .unwrap_or_default();
            // The success record: the result for duplicates, kept for the
            // dedupe window; without dedupe, only for a while, to carry the
            // effects.
            let kept = match spec.dedupe {
                Some(window) => Some((
                    serde_json::to_vec(&value).map_err(|source| WorkerError::Serde {
                        job: spec.name.clone(),
                        source,
                    })?,
                    window,
                )),
                // At least a minute: a commit is sent again only while its
                // record lives (see `LockGuard::commit`).
                None if !effects.is_empty() => {
                    Some((Vec::new(), spec.ttl.max(Duration::from_secs(60))))
                }
                None => None,
            };
            if let Some((encoded, keep)) = kept {
                // Only while this run still holds the key: a run whose lease
                // ended unnoticed records nothing and applies no effect.
                // `commit` sends the record again while the lease lasts; an
                // error still undecided after that is no success.
                let recorded = guard
                    .record(shared, record, encoded, keep, &effects)
                    .await
                    .map_err(|source| match source {
                        // Recorded, an effect refused: the run counts as
                        // done. Or refused before anything was sent: a
                        // mistake in the job, not the backend's doing.
                        LockError::EffectRefused { .. } | LockError::InvalidArgument { .. } => {
                            source.into()
                        }
                        source => WorkerError::Unrecorded {
                            job: spec.name.clone(),
                            source,
                        },
                    })?;
                if !recorded {
                    return Ok(RunOutcome::Lost);
                }
            }
            RunOutcome::Completed(value)
        }
        Ended::Failed(error) => RunOutcome::Failed(error),
        Ended::Lost => RunOutcome::Lost,
        Ended::TimedOut => RunOutcome::TimedOut,
        Ended::Cancelled => RunOutcome::Cancelled,
    })
}

#[cfg(test)]
mod tests {
    use super::record_of;

    #[test]
    fn a_record_names_the_escaped_job_and_the_rendered_key() {
        assert_eq!(record_of("charge", "invoice:42"), "job:charge:invoice:42");
        // A `:` in the job's name cannot make two jobs share a record.
        assert_eq!(record_of("a:b", "c"), "job:a%3Ab:c");
        assert_ne!(record_of("a:b", "c"), record_of("a", "b:c"));
        assert_eq!(record_of("ü", "k"), "job:%C3%BC:k");
    }
}
