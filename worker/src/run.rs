//! Running a job's body under a held lease: attempts, retries with backoff,
//! and the ways a run is cut short.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use futures::future::BoxFuture;
use soloist_core::Lease;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::BoxError;
use crate::spec::{JobSpec, OnLost};

/// How a run under a lease ended.
#[derive(Debug)]
pub(crate) enum Ended<T> {
    Succeeded(T),
    Failed(BoxError),
    Lost,
    TimedOut,
    Cancelled,
}

impl<T> Ended<T> {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Ended::Succeeded(_) => "success",
            Ended::Failed(_) => "failure",
            Ended::Lost => "lost",
            Ended::TimedOut => "timed_out",
            Ended::Cancelled => "cancelled",
        }
    }
}

/// Why a run stopped before its body finished.
enum Interrupt {
    Lost,
    TimedOut,
    Cancelled,
}

impl Interrupt {
    fn ended<T>(self) -> Ended<T> {
        match self {
            Interrupt::Lost => Ended::Lost,
            Interrupt::TimedOut => Ended::TimedOut,
            Interrupt::Cancelled => Ended::Cancelled,
        }
    }
}

/// The most a retry waits, however many attempts came before it.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Runs `body` (given the attempt number and the run's cancellation token)
/// until it succeeds or its retries are spent, while every one of `leases`
/// holds (the run's lock, and the permit of a job with a concurrency).
///
/// The run stops early when `shutdown` is cancelled, when `max_hold` is
/// reached, and, unless the job asked only to be told, when the lease is
/// lost. A body that returns after its lease was lost counts as lost, not
/// as a success or failure: its result cannot be trusted to be the only one.
pub(crate) async fn attempts<T>(
    spec: &JobSpec,
    leases: &[Lease],
    shutdown: &CancellationToken,
    mut body: impl FnMut(u32, CancellationToken) -> BoxFuture<'static, Result<T, BoxError>>,
) -> Ended<T> {
    let cancel = shutdown.child_token();
    let hold_until = spec.max_hold.map(|max_hold| Instant::now() + max_hold);
    let watch_lost = spec.on_lost == OnLost::Cancel;
    let stop = |interrupt: Interrupt| {
        cancel.cancel();
        interrupt.ended()
    };
    let mut attempt = 1;
    loop {
        let outcome = guarded(
            body(attempt, cancel.clone()),
            leases,
            &cancel,
            hold_until,
            watch_lost,
        )
        .await;
        let error = match outcome {
            Err(interrupt) => return stop(interrupt),
            Ok(_) if !leases.iter().all(Lease::is_held) => return stop(Interrupt::Lost),
            Ok(Ok(value)) => return Ended::Succeeded(value),
            Ok(Err(error)) => error,
        };
        if attempt > spec.retries {
            return Ended::Failed(error);
        }
        tracing::info!(job = %spec.name, attempt, error = %error, "run failed; retrying");
        let delay = spec
            .backoff
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(MAX_BACKOFF);
        if let Err(interrupt) = guarded(
            tokio::time::sleep(delay),
            leases,
            &cancel,
            hold_until,
            watch_lost,
        )
        .await
        {
            return stop(interrupt);
        }
        attempt += 1;
    }
}

async fn guarded<F: Future>(
    work: F,
    leases: &[Lease],
    cancel: &CancellationToken,
    hold_until: Option<Instant>,
    watch_lost: bool,
) -> Result<F::Output, Interrupt> {
    let mut work = std::pin::pin!(work);
    // Work done at its first poll (a body that does not wait) while nothing
    // stops the run needs none of the watchers below: the select would poll
    // each (a timer for the lease's deadline, two wakers) only to find it
    // pending, then drop it. Anything else goes through the select, which
    // decides as it always has.
    let quiet = !cancel.is_cancelled()
        && hold_until.is_none_or(|at| Instant::now() < at)
        && (!watch_lost || leases.iter().all(Lease::is_held));
    if quiet {
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if let Poll::Ready(output) = first {
            return Ok(output);
        }
    }
    let max_hold = async {
        match hold_until {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Interrupt::Cancelled),
        () = any_lost(leases), if watch_lost => Err(Interrupt::Lost),
        () = max_hold => Err(Interrupt::TimedOut),
        output = work => Ok(output),
    }
}

/// Resolves once any of `leases` is lost.
async fn any_lost(leases: &[Lease]) {
    match leases {
        [] => std::future::pending().await,
        // Most runs hold one lease: no boxes and no list to poll.
        [lease] => lease.lost().await,
        _ => {
            let lost = leases.iter().map(|lease| Box::pin(lease.lost()));
            futures::future::select_all(lost).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind<T>(outcome: &Result<T, Interrupt>) -> &'static str {
        match outcome {
            Ok(_) => "done",
            Err(Interrupt::Lost) => "lost",
            Err(Interrupt::TimedOut) => "timed_out",
            Err(Interrupt::Cancelled) => "cancelled",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn work_ready_at_once_still_yields_to_what_stopped_the_run() {
        let locks = soloist_core::LockClient::memory();
        let guard = locks.lock("k").acquire().await.unwrap();
        let held = [guard.lease()];
        let ready = || std::future::ready(());
        let open = CancellationToken::new();
        let later = Some(Instant::now() + Duration::from_secs(1));
        let done = guarded(ready(), &held, &open, later, true).await;
        assert_eq!(kind(&done), "done");

        let cancelled = CancellationToken::new();
        cancelled.cancel();
        let outcome = guarded(ready(), &held, &cancelled, later, true).await;
        assert_eq!(kind(&outcome), "cancelled");

        let past = Some(Instant::now());
        tokio::time::advance(Duration::from_millis(1)).await;
        let outcome = guarded(ready(), &held, &open, past, true).await;
        assert_eq!(kind(&outcome), "timed_out");

        let lease = guard.lease();
        guard.release().await.unwrap();
        let ended = [lease];
        assert_eq!(
            kind(&guarded(ready(), &ended, &open, later, true).await),
            "lost"
        );
        // A job that asked only to be told of the loss runs on.
        assert_eq!(
            kind(&guarded(ready(), &ended, &open, later, false).await),
            "done"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_waits_is_watched_as_before() {
        let open = CancellationToken::new();
        let hold = Some(Instant::now() + Duration::from_secs(1));
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(
            kind(&guarded(slow, &[], &open, hold, true).await),
            "timed_out"
        );
        let hold = Some(Instant::now() + Duration::from_secs(1));
        let quick = tokio::time::sleep(Duration::from_millis(10));
        assert_eq!(kind(&guarded(quick, &[], &open, hold, true).await), "done");
        open.cancel();
        let slow = tokio::time::sleep(Duration::from_secs(5));
        assert_eq!(
            kind(&guarded(slow, &[], &open, None, true).await),
            "cancelled"
        );
    }
}
