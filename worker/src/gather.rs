//! Keyed runs started through a [`WorkerHandle`](crate::WorkerHandle) that
//! fit a batch share their round trips: a run is claimed in one call (its
//! dedupe record read, its key taken with its fence) and settled in one
//! more (its record and effects committed while its lock holds, the lock
//! released, its history entry written), and runs that claim or settle
//! while another call is on its way go together in the next one. A caller
//! alone pays two round trips where the path one step at a time pays five;
//! many callers at once pay about two calls per batch.
//!
//! It fits a job with dedupe, no wait for a busy key, no `rate` and a
//! `concurrency` of one, on a backend that batches
//! ([`LockClient::batches`]: one Redis server or Sentinel's primary).
//! Everything else, and a claim Redis refuses (a record of the wrong
//! type), takes the path one step at a time (`keyed.rs`).

use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use soloist_core::{Claim, Claimed, FencedWrite, LockClient, LockError, Settle, Settled, redis};
use tokio::sync::oneshot;

use crate::error::{Result, WorkerError};
use crate::inspect::RunRecord;
use crate::job::KeyedJob;
use crate::keyed::{body, run_record};
use crate::outcome::RunOutcome;
use crate::run::Ended;
use crate::spec::JobSpec;
use crate::worker::Shared;

/// The most claims or settlements sent in one call.
const MAX_BATCH: usize = 128;

type Reply<R> = oneshot::Sender<soloist_core::Result<R>>;
type Call<T, R> =
    Box<dyn Fn(Vec<T>) -> BoxFuture<'static, soloist_core::Result<Vec<R>>> + Send + Sync>;

/// The claim and settle calls a worker's gathered runs share.
pub(crate) struct Gather {
    claims: Arc<Calls<Claim, Claimed>>,
    settles: Arc<Calls<Settle, Settled>>,
}

impl std::fmt::Debug for Gather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather").finish_non_exhaustive()
    }
}

impl Gather {
    /// Calls on `locks`, from the current runtime (it must be called in one).
    pub(crate) fn new(locks: &LockClient) -> Self {
        let claimer = locks.clone();
        let settler = locks.clone();
        Gather {
            claims: Calls::new(
                Box::new(move |claims: Vec<Claim>| {
                    let locks = claimer.clone();
                    Box::pin(async move { locks.claim_all(&claims).await })
                }),
                true,
            ),
            settles: Calls::new(
                Box::new(move |settles: Vec<Settle>| {
                    let locks = settler.clone();
                    Box::pin(async move { locks.settle_all(settles).await })
                }),
                false,
            ),
        }
    }
}

/// One kind of call that callers share. A caller who finds none on its way
/// sends its own at once (no hop to another task, no wait); callers who
/// come while one is on its way queue, and go together in the next call,
/// sent by a task of its own as soon as the previous one is answered.
struct Calls<T, R> {
    call: Call<T, R>,
    queue: Mutex<Queue<T, R>>,
    /// The runtime the first call came from: the waiting are sent there
    /// even when the last answer is dropped elsewhere.
    runtime: tokio::runtime::Handle,
    /// Whether to leave out waiting items whose caller has gone: a claim
    /// nobody awaits would take a key for nothing, a settlement still
    /// carries a success record.
    skip_abandoned: bool,
}

struct Queue<T, R> {
    /// Whether a call is on its way (or about to be sent for the waiting).
    busy: bool,
    waiting: Vec<(T, Reply<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Calls<T, R> {
    fn new(call: Call<T, R>, skip_abandoned: bool) -> Arc<Self> {
        Arc::new(Calls {
            call,
            queue: Mutex::new(Queue {
                busy: false,
                waiting: Vec::new(),
            }),
            runtime: tokio::runtime::Handle::current(),
            skip_abandoned,
        })
    }

    async fn request(self: &Arc<Self>, item: T) -> soloist_core::Result<R> {
        let queued = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if queue.busy {
                let (reply, answer) = oneshot::channel();
                queue.waiting.push((item, reply));
                Err(answer)
            } else {
                queue.busy = true;
                Ok(item)
            }
        };
        match queued {
            Ok(item) => {
                // Whatever queued meanwhile is sent once this is answered,
                // or dropped (its caller gave up).
                let _next = Next(self.clone());
                let mut answers = (self.call)(vec![item]).await?;
                answers.pop().ok_or_else(gone)
            }
            Err(answer) => answer.await.map_err(|_| gone())?,
        }
    }

    /// Sends what waits as the next call, on a task of its own, or marks
    /// the calls idle.
    fn send_waiting(self: Arc<Self>) {
        let batch = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if self.skip_abandoned {
                queue.waiting.retain(|(_, reply)| !reply.is_closed());
            }
            if queue.waiting.is_empty() {
                queue.busy = false;
                return;
            }
            let count = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..count).collect::<Vec<_>>()
        };
        // Made before the task runs: a runtime shutting down drops the task
        // unrun, and with it this, which hands on to the next (whose
        // callers then hear the calls have stopped) or marks them idle.
        let next = Next(self.clone());
        let calls = self.clone();
        self.runtime.spawn(async move {
            let _next = next;
            let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
            // An answer nobody awaits any more is dropped with what it
            // holds: a guard so dropped gives its lock back.
            match (calls.call)(items).await {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(err) => {
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

/// Sends the waiting when dropped: when a call is answered, or its caller
/// gave up on it.
struct Next<T: Send + 'static, R: Send + 'static>(Arc<Calls<T, R>>);

impl<T: Send + 'static, R: Send + 'static> Drop for Next<T, R> {
    fn drop(&mut self) {
        self.0.clone().send_waiting();
    }
}

/// The calls stopped before answering (the runtime is shutting down): a
/// transient error, which a queue consumer does not count as an attempt.
fn gone() -> LockError {
    LockError::Unresponsive {
        op: "batch call",
        after: std::time::Duration::ZERO,
    }
}

/// Whether runs of `spec` take the gathered path.
pub(crate) fn fits(shared: &Shared, spec: &JobSpec) -> bool {
    spec.dedupe.is_some()
        && spec.wait.is_zero()
        && spec.rate.is_none()
        && spec.concurrency.is_none_or(|permits| permits <= 1)
        && shared.locks.batches()
}

/// What claiming a gathered run found.
pub(crate) enum Gathered<T> {
    /// Its record holds a success: the result.
    Duplicate(T),
    /// Another run holds the key.
    Busy,
    /// Taken: run it with [`run`].
    Acquired(soloist_core::LockGuard),
    /// Redis refused the claim itself: left to the path one step at a time,
    /// which reports why.
    Refused,
}

/// Claims the key of a run of `spec` whose record is `record`.
pub(crate) async fn claim<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    spec: &JobSpec,
    record: &str,
) -> Result<Gathered<T>> {
    let mut claim = Claim::new(record).ttl(spec.ttl).unless_recorded(record);
    if let Some(max_hold) = spec.max_hold {
        claim = claim.max_hold(max_hold);
    }
    let gather = shared.gather.get_or_init(|| Gather::new(&shared.locks));
    Ok(match gather.claims.request(claim).await? {
        Claimed::Recorded(found, _) => {
            Gathered::Duplicate(serde_json::from_slice(&found.value).map_err(|source| {
                WorkerError::Serde {
                    job: spec.name.clone(),
                    source,
                }
            })?)
        }
        Claimed::Acquired { guard, .. } => Gathered::Acquired(guard),
        Claimed::Failed { error } => {
            tracing::debug!(job = %spec.name, error = %error, "claim refused; run one step at a time");
            Gathered::Refused
        }
        _ => Gathered::Busy,
    })
}

/// Runs the body of a gathered run holding `guard`, and settles it: a
/// success is recorded (with its effects) only while the lock holds, as on
/// the path one step at a time, and comes to the same outcomes.
pub(crate) async fn run<J: KeyedJob>(
    shared: &Shared,
    job: &J,
    args: J::Args,
    spec: &JobSpec,
    (key, record): (&str, &str),
    guard: soloist_core::LockGuard,
) -> Result<RunOutcome<J::Output>> {
    let mut ran = body(shared, job, args, spec, key, guard.lease()).await?;
    let ended = std::mem::replace(&mut ran.ended, Ended::Cancelled);
    let last_ctx = ran.last_ctx.take();
    // The history entry as of the body's end, its outcome set when sent.
    let mut entry = run_record(shared, spec, key, guard.fence(), &ran, "", None);
    drop(ran);
    let history = |entry: &RunRecord, outcome: &str| -> Vec<redis::Cmd> {
        shared
            .fleet
            .as_ref()
            .map(|fleet| fleet.history_entry_as(entry, outcome))
            .into_iter()
            .collect()
    };
    let gather = shared.gather.get_or_init(|| Gather::new(&shared.locks));
    let (value, encoded, effects) = match ended {
        Ended::Succeeded(value) => {
            let effects = last_ctx
                .map(|ctx| ctx.take_on_success())
                .unwrap_or_default();
            match serde_json::to_vec(&value) {
                Ok(encoded) => (value, encoded, effects),
                Err(source) => {
                    let err = WorkerError::Serde {
                        job: spec.name.clone(),
                        source,
                    };
                    entry.error = Some(err.to_string());
                    release(guard, history(&entry, "unrecorded")).await;
                    return Err(err);
                }
            }
        }
        other => {
            let outcome = match other {
                Ended::Failed(error) => RunOutcome::Failed(error),
                Ended::Lost => RunOutcome::Lost,
                Ended::TimedOut => RunOutcome::TimedOut,
                _ => RunOutcome::Cancelled,
            };
            if let RunOutcome::Failed(error) = &outcome {
                entry.error = Some(error.to_string());
            }
            let settle = Settle::new(guard).otherwise(history(&entry, outcome.label()));
            match gather.settles.request(settle).await {
                Ok(settled) => warn_refused(&settled),
                Err(err) => tracing::debug!(error = %err, "releasing after the run"),
            }
            return Ok(outcome);
        }
    };
    let window = spec.dedupe.unwrap_or(spec.ttl);
    let settle = Settle::new(guard)
        .record(record, encoded, Some(window), effects)
        .if_committed(history(&entry, "success"))
        .otherwise(history(&entry, "lost"));
    if let Err(err) = settle.check() {
        // Malformed effects: a mistake in the job, refused before anything
        // was sent, as a commit refuses them.
        entry.error = Some(err.to_string());
        release(settle.into_guard(), history(&entry, "unrecorded")).await;
        return Err(err.into());
    }
    let settled =
        gather
            .settles
            .request(settle)
            .await
            .map_err(|source| WorkerError::Unrecorded {
                job: spec.name.clone(),
                source,
            })?;
    warn_refused(&settled);
    match (settled.write, settled.record_refused) {
        (Some(FencedWrite::Accepted), _) => match settled.effect_refused {
            // Recorded, an effect refused: the run counts as done, and
            // the caller hears of the refusal, as from a commit.
            Some(error) => Err(LockError::EffectRefused {
                resource: record.to_owned(),
                error,
            }
            .into()),
            None => Ok(RunOutcome::Completed(value)),
        },
        (_, Some(error)) => Err(WorkerError::Unrecorded {
            job: spec.name.clone(),
            source: LockError::Protocol(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                "the record was refused",
                error,
            ))),
        }),
        // The lock was lost before the record: nothing written, no effect.
        _ => Ok(RunOutcome::Lost),
    }
}

/// Gives the key back with the run's history entry, outside a batch.
async fn release(guard: soloist_core::LockGuard, history: Vec<redis::Cmd>) {
    if let Err(err) = guard.release_with(&history).await {
        tracing::debug!(error = %err, "releasing after the run");
    }
}

fn warn_refused(settled: &Settled) {
    if let Some(error) = &settled.command_refused {
        tracing::warn!(error = %error, "cannot record the run in the history");
    }
}
