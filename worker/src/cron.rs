//! Cron jobs: every replica tries to claim each tick; one runs it.
//!
//! # The claim protocol
//! For each tick `T` of job `name` (escaped, see `soloist_parse::KeyPart`), under the prefix
//! of the worker's lock client, with the name as the hash tag of every key
//! so that on a Redis Cluster they all share one slot:
//! - the lock on `cron:{name}:T` (T in Unix milliseconds; Redis key
//!   `lock:=cron:{name}:T`) admits one run of the tick at a time, renewed
//!   by the watchdog while it runs; its fence comes from the job's one
//!   counter, `cron:{name}`, so fences increase from tick to tick and no
//!   counter is kept per tick;
//! - the fenced record `cron:{name}:T`, the tick's done-marker, is
//!   written with the run's fence when the run ends for good (success,
//!   failure after its retries, or `max_hold`), and kept for the misfire
//!   grace plus a margin, so that a replica arriving late does not run it
//!   again;
//! - the fenced record `cron:{name}:last` holds the latest claimed tick
//!   (its fence is the tick itself, so it only moves forward); it is how a
//!   replica that starts learns which ticks the whole fleet missed. A tick
//!   runs only after this record holds it (or a later tick), so recovery
//!   never runs a tick that ran.
//!
//! A replica that finds the tick's lock held waits on it until the grace
//! ends. When the holder finishes, the waiter finds the done-marker and
//! stands down; when the holder dies or loses its lease, no marker is
//! written and the waiter takes the tick over, as a new attempt.
//!
//! What this adds up to: at most one attempt of a tick at a time, at most
//! one success per tick, and a tick is lost only if no replica is up to
//! claim it during its whole grace (then the missed-tick policy applies).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use soloist_core::{LockError, LockGuard, PermitGuard};
use tokio::time::Instant;
use tracing::Instrument;

use crate::context::JobContext;
use crate::fleet::TRIGGER_POLL;
use crate::inspect::RunRecord;
use crate::job::CronJob;
use crate::limit;
use crate::metrics;
use crate::run::{Ended, attempts};
use crate::spec::{JobSpec, MissedTicks};
use crate::worker::Shared;
use soloist_parse::CronSchedule;
use soloist_parse::escaped;

/// A registered cron job.
pub(crate) struct CronEntry {
    pub(crate) job: Arc<dyn CronJob>,
    pub(crate) schedule: CronSchedule,
    pub(crate) spec: JobSpec,
}

impl std::fmt::Debug for CronEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronEntry")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// How many missed ticks are counted, at most, when a replica starts.
const MISSED_SCAN_LIMIT: usize = 5_000_000;
/// How long a done-marker outlives the tick's grace.
const MARKER_MARGIN: Duration = Duration::from_secs(300);

/// Runs the job's schedule until the worker stops claiming.
pub(crate) async fn schedule(shared: Arc<Shared>, entry: Arc<CronEntry>) {
    let now = shared.clock.now();
    let misfire = TimeDelta::from_std(entry.spec.misfire).unwrap_or(TimeDelta::MAX);
    // Ticks still inside their grace are claimed as usual, claimed by a
    // peer or not: one whose runner dies is taken over, one that is done
    // is skipped. Older ticks after the last one the fleet claimed, which
    // the whole fleet missed, are the job's missed-tick policy's. A job the
    // fleet never ran starts now.
    let grace_start = now - misfire;
    let recent_start = match last_claimed(&shared, &entry.spec).await {
        Some(last) if last < grace_start => {
            // A tick still inside its grace runs anyway; under `RunOnce` it
            // stands for the missed ones, rather than run beside one of them.
            let due_now = entry
                .schedule
                .ticks_after(grace_start)
                .next()
                .is_some_and(|tick| tick <= now);
            recover_missed(&shared, &entry, last, grace_start, now, due_now);
            grace_start
        }
        Some(_) => grace_start,
        None => now,
    };
    let ticks = async {
        let mut after = recent_start;
        loop {
            let Some(tick) = entry.schedule.ticks_after(after).next() else {
                return; // the expression names no further time
            };
            tokio::select! {
                () = shared.clock.sleep_until(tick) => {}
                () = shared.stop_claiming.cancelled() => return,
            }
            after = tick;
            let grace_end = tick + misfire;
            let (shared, entry) = (shared.clone(), entry.clone());
            let runs = shared.runs.clone();
            runs.spawn(
                async move { claim(&shared, &entry, Occasion::Tick(tick), grace_end).await },
            );
        }
    };
    ticks.await;
}

/// What a claim is for: a tick of the schedule, or a run an operator
/// asked for at the given time.
#[derive(Debug, Clone, Copy)]
enum Occasion {
    Tick(DateTime<Utc>),
    Triggered(DateTime<Utc>),
}

impl Occasion {
    fn at(self) -> DateTime<Utc> {
        match self {
            Occasion::Tick(at) | Occasion::Triggered(at) => at,
        }
    }
}

/// Claims every run operators trigger (see `Inspector::trigger`) for this
/// replica's cron jobs, each like a tick of its own: its lock and
/// done-marker are `cron:{name}:now:T`, so whichever replica claims it first
/// runs it and the others stand down, as for a tick. One request a second
/// looks for the triggers of all the jobs; a trigger older than its job's
/// misfire grace is not claimed.
pub(crate) async fn triggers(shared: Arc<Shared>, jobs: HashMap<String, Arc<CronEntry>>) {
    let Some(fleet) = shared.fleet.clone() else {
        return;
    };
    if jobs.is_empty() {
        return;
    }
    // Triggers are read again for a while after the newest one seen: one
    // added in the very millisecond of a read, or by a server whose clock
    // is behind (after a failover), scores no higher than what was seen.
    // Those handled here are remembered as long; claiming dedupes across
    // replicas anyway.
    const LOOK_BACK_MS: i64 = 10_000;
    let mut handled: HashSet<(i64, String)> = HashSet::new();
    let mut seen = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(TRIGGER_POLL) => {}
            () = shared.stop_claiming.cancelled() => return,
        }
        handled.retain(|(at_ms, _)| *at_ms >= seen - LOOK_BACK_MS);
        let asked = match fleet.triggers_since(seen - LOOK_BACK_MS).await {
            Ok(asked) => asked,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the triggered runs");
                continue;
            }
        };
        for (at_ms, job) in asked {
            seen = seen.max(at_ms);
            if !handled.insert((at_ms, job.clone())) {
                continue;
            }
            let (Some(entry), Some(at)) = (jobs.get(&job), DateTime::from_timestamp_millis(at_ms))
            else {
                continue;
            };
            let misfire = TimeDelta::from_std(entry.spec.misfire).unwrap_or(TimeDelta::MAX);
            let grace_end = at + misfire;
            if grace_end < shared.clock.now() {
                continue;
            }
            let (shared, entry) = (shared.clone(), entry.clone());
            let runs = shared.runs.clone();
            runs.spawn(async move {
                claim(&shared, &entry, Occasion::Triggered(at), grace_end).await;
            });
        }
    }
}

/// The latest tick any replica claimed, from the `last` record.
async fn last_claimed(shared: &Shared, spec: &JobSpec) -> Option<DateTime<Utc>> {
    let record = shared.locks.fenced_get(&last_record(spec)).await;
    let stored = match record {
        Ok(stored) => stored?,
        Err(err) => {
            tracing::warn!(job = %spec.name, error = %err, "cannot read the last claimed tick; not looking for missed ticks");
            return None;
        }
    };
    DateTime::from_timestamp_millis(i64::try_from(stored.fence).ok()?)
}

/// `cron:{name}`: the counter every tick's fence of the job named `job`
/// comes from, and the start of every other key of the job, whose hash tag
/// they all carry.
pub(crate) fn job_key(job: &str) -> String {
    format!("cron:{{{}}}", escaped(job))
}

fn last_record(spec: &JobSpec) -> String {
    format!("{}:last", job_key(&spec.name))
}

/// Applies the missed-tick policy to the ticks in `(last, before]`;
/// `due_now` says a tick inside its grace runs anyway.
fn recover_missed(
    shared: &Arc<Shared>,
    entry: &Arc<CronEntry>,
    last: DateTime<Utc>,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    due_now: bool,
) {
    // Count every missed tick, keeping only the latest ones the policy runs.
    let keep = match entry.spec.missed {
        MissedTicks::Skip => 0,
        MissedTicks::RunOnce if due_now => 0,
        MissedTicks::RunOnce => 1,
        MissedTicks::CatchUp(max) => max as usize,
    };
    let mut latest = std::collections::VecDeque::with_capacity(keep.min(1024));
    let mut count = 0usize;
    for tick in entry
        .schedule
        .ticks_after(last)
        .take_while(|tick| *tick <= before)
        .take(MISSED_SCAN_LIMIT)
    {
        count += 1;
        if keep > 0 {
            if latest.len() == keep {
                latest.pop_front();
            }
            latest.push_back(tick);
        }
    }
    if count == 0 {
        return;
    }
    let to_run: Vec<DateTime<Utc>> = latest.into();
    let skipped = count - to_run.len();
    tracing::warn!(
        job = %entry.spec.name,
        missed = count,
        running = to_run.len(),
        policy = ?entry.spec.missed,
        "the fleet missed ticks"
    );
    metrics::missed(&entry.spec.name, skipped as u64);
    if to_run.is_empty() {
        return;
    }
    // Missed ticks run one after the other, each with a fresh grace.
    let misfire = TimeDelta::from_std(entry.spec.misfire).unwrap_or(TimeDelta::MAX);
    let (shared, entry) = (shared.clone(), entry.clone());
    let runs = shared.runs.clone();
    runs.spawn(async move {
        for tick in to_run {
            let grace_end = shared.clock.now().max(now) + misfire;
            claim(&shared, &entry, Occasion::Tick(tick), grace_end).await;
        }
    });
}

/// Claims `occasion` until it is done (here or elsewhere) or its grace
/// ends; a paused job claims nothing.
async fn claim(shared: &Shared, entry: &CronEntry, occasion: Occasion, grace_end: DateTime<Utc>) {
    let spec = &entry.spec;
    let tick = occasion.at();
    let tick_ms = tick.timestamp_millis();
    let key = match occasion {
        Occasion::Tick(_) => format!("{}:{tick_ms}", job_key(&spec.name)),
        Occasion::Triggered(_) => format!("{}:now:{tick_ms}", job_key(&spec.name)),
    };
    let span = tracing::info_span!("soloist.job", job = %spec.name, tick = %tick, fence = tracing::field::Empty);
    async {
        if let Some(fleet) = &shared.fleet {
            match fleet.is_paused(&spec.name).await {
                Ok(true) => {
                    skip_paused(shared, spec, occasion).await;
                    return metrics::run(&spec.name, "paused");
                }
                Ok(false) => {}
                // Not knowing is not "paused": the claim decides, as always.
                Err(err) => tracing::debug!(error = %err, "cannot read whether the job is paused"),
            }
        }
        loop {
            if shared.stop_claiming.is_cancelled() {
                return;
            }
            match done(shared, &key).await {
                Ok(true) => return metrics::run(&spec.name, "skipped_by_peer"),
                Ok(false) => {}
                Err(err) => tracing::debug!(error = %err, "cannot read the done-marker"),
            }
            let Ok(left) = (grace_end - shared.clock.now()).to_std() else {
                // The grace is over and no run finished the tick here or
                // elsewhere: a holder may still be at it; if not, it is lost.
                return metrics::run(&spec.name, "skipped_by_peer");
            };
            let requested = Instant::now();
            // One fence counter per job, not one per tick: fences increase
            // from tick to tick, and no counter is left behind per tick.
            let mut request = shared
                .locks
                .lock(&key)
                .fence_counter(job_key(&spec.name))
                .ttl(spec.ttl)
                .wait(left);
            if let Some(max_hold) = spec.max_hold {
                request = request.max_hold(max_hold);
            }
            let acquired = tokio::select! {
                acquired = request.acquire() => acquired,
                () = shared.stop_claiming.cancelled() => return,
            };
            match acquired {
                Ok(guard) => {
                    metrics::claim_time(&spec.name, requested.elapsed());
                    tracing::Span::current().record("fence", guard.fence());
                    match run_tick(shared, entry, occasion, left, &key, guard).await {
                        Handled::Yes => return,
                        // Not run: the claim could not be recorded. Try
                        // again while the grace lasts.
                        Handled::No => tokio::time::sleep(retry_pause()).await,
                    }
                }
                Err(LockError::Busy { .. } | LockError::Timeout { .. }) => {
                    // Waited out the grace behind another holder.
                    return metrics::run(&spec.name, "skipped_by_peer");
                }
                Err(err) => {
                    tracing::debug!(error = %err, "claim failed; retrying");
                    tokio::time::sleep(retry_pause()).await;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// A tick of a paused job is not run, and not left for the missed-tick
/// policy either: it is recorded as the latest claimed tick, as if it had
/// run, so that a replica starting after the job is resumed does not
/// recover it. Every replica that finds the job paused records the same
/// tick, which the record's fence (the tick itself) makes harmless.
async fn skip_paused(shared: &Shared, spec: &JobSpec, occasion: Occasion) {
    let Occasion::Tick(tick) = occasion else {
        return;
    };
    let tick_ms = u64::try_from(tick.timestamp_millis()).unwrap_or(0);
    if let Err(err) = shared
        .locks
        .fenced_set(&last_record(spec), tick_ms, tick_ms.to_string())
        .await
    {
        tracing::debug!(error = %err, "cannot record the paused tick as passed");
    }
}

/// A jittered pause before a claim is tried again.
fn retry_pause() -> Duration {
    Duration::from_millis(100 + u64::from(rand::random::<u8>()))
}

/// Whether a claimed tick was dealt with: run, or found done.
enum Handled {
    Yes,
    No,
}

/// Records `tick` as the job's latest claimed tick, asking again while the
/// lease holds. A tick already recorded as later is no error.
async fn record_claim(shared: &Shared, spec: &JobSpec, tick_ms: u64, guard: &LockGuard) -> bool {
    loop {
        let written = shared
            .locks
            .fenced_set(&last_record(spec), tick_ms, tick_ms.to_string())
            .await;
        match written {
            Ok(_) => return true,
            Err(err) if err.is_transient() && guard.is_held() => {
                tracing::debug!(error = %err, "cannot record the claimed tick; asking again");
                tokio::time::sleep(retry_pause()).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot record the claimed tick; not running it");
                return false;
            }
        }
    }
}

async fn done(shared: &Shared, key: &str) -> soloist_core::Result<bool> {
    Ok(shared.locks.fenced_get(key).await?.is_some())
}

/// Runs the claimed tick and records how it ended; `Handled::No` when it
/// could not run because its claim could not be recorded.
async fn run_tick(
    shared: &Shared,
    entry: &CronEntry,
    occasion: Occasion,
    grace: Duration,
    key: &str,
    guard: LockGuard,
) -> Handled {
    let spec = &entry.spec;
    let tick = occasion.at();
    // Finished by another holder while we waited for the lock? Not knowing
    // is not "no": ask again while the lease lasts.
    let finished = loop {
        match done(shared, key).await {
            Ok(finished) => break finished,
            Err(err) if guard.is_held() => {
                tracing::debug!(error = %err, "cannot read the done-marker; asking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => {
                metrics::run(&spec.name, "lost");
                return Handled::Yes;
            }
        }
    };
    if finished {
        let _ = guard.release().await;
        metrics::run(&spec.name, "skipped_by_peer");
        return Handled::Yes;
    }
    // A job with a concurrency runs only with one of its permits, waited
    // for while the tick's grace lasts: at most that many runs of the job
    // at once across the fleet, however long each takes.
    let permit = match limit::permit(shared, spec, &job_key(&spec.name), grace).await {
        Ok(permit) => permit,
        Err(err) => {
            if !matches!(err, LockError::Busy { .. } | LockError::Timeout { .. }) {
                tracing::warn!(error = %err, "cannot take a permit for the tick");
            }
            let _ = guard.release().await;
            metrics::run(&spec.name, "busy");
            return Handled::Yes;
        }
    };
    // A tick runs only once it is recorded as claimed: a replica that
    // starts after a fleet-wide outage runs only ticks after that record,
    // so no tick that ran here is run again, however long ago it was.
    // A triggered run is no tick: the latest claimed tick stays as it is.
    let tick_ms = u64::try_from(tick.timestamp_millis()).unwrap_or(0);
    if matches!(occasion, Occasion::Tick(_)) && !record_claim(shared, spec, tick_ms, &guard).await {
        let _ = guard.release().await;
        return Handled::No;
    }
    let started_at = shared.clock.now();
    let started = Instant::now();
    let mut last_ctx = None;
    let mut leases = vec![guard.lease()];
    leases.extend(permit.as_ref().map(PermitGuard::lease));
    let ended = attempts(spec, &leases, &shared.cancel_runs, |attempt, cancel| {
        let ctx = JobContext::builder(&spec.name)
            .lease(guard.lease())
            .attempt(attempt)
            .replica(&shared.replica)
            .scheduled_at(tick)
            .cancellation(cancel)
            .build();
        last_ctx = Some(ctx.clone());
        entry.job.call(ctx)
    })
    .await;
    let effects = match &ended {
        Ended::Succeeded(()) => last_ctx
            .map(|ctx| ctx.take_on_success())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    metrics::run_time(&spec.name, started.elapsed());
    let mut history = shared.fleet.as_ref().map(|_| RunRecord {
        id: String::new(),
        job: spec.name.clone(),
        tick_ms: Some(tick.timestamp_millis()),
        triggered: matches!(occasion, Occasion::Triggered(_)),
        key: None,
        replica: shared.replica.clone(),
        fence: guard.fence(),
        outcome: ended.label().to_owned(),
        started_ms: started_at.timestamp_millis(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error: match &ended {
            Ended::Failed(error) => Some(error.to_string()),
            _ => None,
        },
    });
    let marker = match &ended {
        Ended::Succeeded(()) => Some("success"),
        Ended::Failed(error) => {
            tracing::error!(error = %error, "run failed after its retries");
            Some("failure")
        }
        Ended::TimedOut => Some("timed_out"),
        // Lost or cancelled: leave the tick to whoever claims it next.
        Ended::Lost | Ended::Cancelled => None,
    };
    let mut outcome = ended.label();
    if let Some(marker) = marker {
        let keep = spec.misfire.saturating_add(MARKER_MARGIN + spec.ttl);
        // Only while this run still holds the tick: a run whose lease ended
        // unnoticed must not mark the tick done (or apply its effects).
        // `commit` sends the marker again while the lease lasts. Without
        // it the tick is not done: a peer still inside the grace runs it.
        // The run's history entry goes with the marker, in the same
        // request: recorded exactly when the tick is.
        let entry_for = |outcome: &str| {
            shared
                .fleet
                .as_ref()
                .zip(history.as_ref())
                .map(|(fleet, run)| {
                    let mut run = run.clone();
                    run.outcome = outcome.to_owned();
                    fleet.history_entry(&run)
                })
        };
        let with_history = |mut effects: Vec<redis::Cmd>, outcome: &str| {
            effects.extend(entry_for(outcome));
            effects
        };
        let mut committed = guard
            .commit(key, marker, Some(keep), &with_history(effects, marker))
            .await;
        if let Err(err @ LockError::InvalidArgument { .. }) = &committed {
            // Refused before anything was written: the job's effects are
            // a mistake (on a cluster, a key outside the tick's hash slot;
            // a backend that cannot apply them) that every run of the
            // tick would repeat. Left undone, the tick would be taken
            // over and run again by each waiting peer: it is marked
            // failed instead, without its effects.
            tracing::error!(error = %err, "the tick's effects were refused; recording it as failed");
            outcome = "failure";
            committed = guard
                .commit(
                    key,
                    "failure",
                    Some(keep),
                    &with_history(Vec::new(), "failure"),
                )
                .await;
        }
        match committed {
            Ok(write) if write.is_accepted() => history = None,
            Ok(_) => outcome = "lost",
            // Marked done; an effect was refused.
            Err(err @ LockError::EffectRefused { .. }) => {
                tracing::warn!(error = %err, "an effect of the tick was refused");
                history = None;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot record the tick's outcome; the tick is not done");
                outcome = "unrecorded";
            }
        }
    }
    metrics::run(&spec.name, outcome);
    if let Err(err) = guard.release().await {
        tracing::debug!(error = %err, "releasing the tick");
    }
    if let Some(permit) = permit
        && let Err(err) = permit.release().await
    {
        tracing::debug!(error = %err, "releasing the job's permit");
    }
    // No marker carried the entry (lost, cancelled, or not recorded):
    // written on its own.
    if let (Some(fleet), Some(mut run)) = (&shared.fleet, history) {
        run.outcome = outcome.to_owned();
        fleet.record(&run).await;
    }
    Handled::Yes
}
