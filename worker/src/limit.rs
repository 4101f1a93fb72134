//! Fleet-wide limits on a job's runs: `concurrency` (at most N runs at
//! once, held as permits of a leased semaphore) and `rate` (at most N
//! starts per period).

use std::time::Duration;

use soloist_core::{Admission, Lease, LockError, LockGuard, PermitGuard, redis};

use crate::error::WorkerError;
use crate::spec::{JobSpec, OverRate};
use crate::worker::Shared;
use soloist_parse::escaped;

/// One of the permits of `name` for a run of `spec`, waiting up to `wait`;
/// `None` when the job has no concurrency limit.
pub(crate) async fn permit(
    shared: &Shared,
    spec: &JobSpec,
    name: &str,
    wait: Duration,
) -> Result<Option<PermitGuard>, LockError> {
    let Some(permits) = spec.concurrency else {
        return Ok(None);
    };
    let mut request = shared
        .locks
        .semaphore(name, permits)
        .ttl(spec.ttl)
        .wait(wait);
    if let Some(max_hold) = spec.max_hold {
        request = request.max_hold(max_hold);
    }
    let acquire = request.acquire();
    tokio::select! {
        acquired = acquire => acquired.map(Some),
        () = shared.stop_claiming.cancelled() => Err(LockError::Timeout {
            key: name.to_owned(),
            waited: Duration::ZERO,
        }),
    }
}

/// Waits until the job's rate limit admits this run's start, as long as
/// the held key's lease lasts, or with [`OverRate::Reschedule`] returns how
/// long until it would; `None`: start now (also when there is no limit).
pub(crate) async fn admit(
    shared: &Shared,
    spec: &JobSpec,
    held: &Held,
) -> Result<Option<Duration>, WorkerError> {
    let Some((count, period)) = spec.rate else {
        return Ok(None);
    };
    let limit = shared
        .locks
        .rate_limit(format!("job:{}", escaped(&spec.name)), count, period);
    let lease = held.lease();
    let started = tokio::time::Instant::now();
    let mut waited = false;
    loop {
        match limit.check().await? {
            Admission::Limited { retry_after } if spec.over_rate == OverRate::Wait => {
                waited = true;
                tokio::select! {
                    () = tokio::time::sleep(retry_after) => {}
                    () = lease.lost() => return Ok(Some(retry_after)),
                    () = shared.stop_claiming.cancelled() => return Err(WorkerError::ShuttingDown),
                }
            }
            Admission::Limited { retry_after } => return Ok(Some(retry_after)),
            _ => {
                if waited {
                    crate::metrics::rate_wait(&spec.name, started.elapsed());
                }
                return Ok(None);
            }
        }
    }
}

/// What a keyed run holds: its key's lock (one run per key), or one of the
/// key's permits (`concurrency = N`, N runs per key).
#[derive(Debug)]
pub(crate) enum Held {
    Lock(LockGuard),
    Permit(PermitGuard),
}

impl Held {
    pub(crate) fn fence(&self) -> u64 {
        match self {
            Held::Lock(guard) => guard.fence(),
            Held::Permit(permit) => permit.fence(),
        }
    }

    pub(crate) fn lease(&self) -> Lease {
        match self {
            Held::Lock(guard) => guard.lease(),
            Held::Permit(permit) => permit.lease(),
        }
    }

    pub(crate) async fn release(self) -> Result<(), LockError> {
        match self {
            Held::Lock(guard) => guard.release().await,
            Held::Permit(permit) => permit.release().await,
        }
    }

    /// Gives the key back, sending `along` in the same round trip (see
    /// [`LockGuard::release_with`]).
    pub(crate) async fn release_with(self, along: &[redis::Cmd]) -> Result<(), LockError> {
        match self {
            Held::Lock(guard) => guard.release_with(along).await,
            Held::Permit(permit) => permit.release_with(along).await,
        }
    }

    /// Writes a successful run's `record` with the run's fence; `true` when
    /// it counts as recorded.
    ///
    /// Under a lock the record and `effects` are committed atomically while
    /// the lock holds. Under a permit, several runs of the key may finish
    /// together: the record is written while the permit's lease holds, one
    /// from a later run (a higher fence) stands, and a run whose record it
    /// is still succeeded. Effects need the lock's atomic commit, so a job
    /// with a concurrency above one refuses them.
    pub(crate) async fn record(
        &self,
        shared: &Shared,
        record: &str,
        value: Vec<u8>,
        keep: Duration,
        effects: &[redis::Cmd],
    ) -> Result<bool, LockError> {
        match self {
            Held::Lock(guard) => Ok(guard
                .commit(record, value, Some(keep), effects)
                .await?
                .is_accepted()),
            Held::Permit(permit) => {
                if !effects.is_empty() {
                    return Err(LockError::InvalidArgument {
                        name: "effects",
                        reason: "on_success effects need a run that holds its key alone; \
                                 a job with `concurrency` above 1 cannot commit them"
                            .to_owned(),
                    });
                }
                if !permit.is_held() {
                    return Ok(false);
                }
                let write = shared
                    .locks
                    .fenced_set_expiring(record, permit.fence(), value, keep)
                    .await?;
                Ok(matches!(
                    write,
                    soloist_core::FencedWrite::Accepted
                        | soloist_core::FencedWrite::Rejected { .. }
                ))
            }
        }
    }
}
