//! Running a job's body under a held lease: attempts, retries with backoff,
//! and the ways a run is cut short.

use std::future::Future;
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
