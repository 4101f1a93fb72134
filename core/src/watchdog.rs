//! The watchdog: renews every held lease of a client from one task, in batches.
//!
//! A lease is due for renewal a third of its ttl after the send time of its
//! last confirmed renewal. When the earliest lease falls due, every lease due
//! within the next sixth of its ttl is renewed with it, in calls of up to
//! [`BATCH`] leases. Leases renewed together stay due together, so after one
//! period thousands of leases cost a handful of calls per period, not one each.
//!
//! A renewal that fails at the transport level is retried soon after, for as
//! long as the lease's deadline allows; one that finds the key gone or owned
//! by another token marks the lease lost at once. The watchdog holds no
//! guard: releasing or dropping a guard ends its lease, and the watchdog drops
//! it at its next due time without renewing it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Backend, Renewal, Tally};
use crate::background::Background;
use crate::lease::LeaseCell;
use crate::metrics;

/// The most leases renewed by one backend call.
pub(crate) const BATCH: usize = 1000;

#[derive(Debug)]
pub(crate) struct Watchdog {
    backend: Arc<dyn Backend>,
    task: Background<Arc<LeaseCell>>,
}

impl Watchdog {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Self {
        Watchdog {
            backend,
            task: Background::new(),
        }
    }

    /// Starts renewing `lease` a third of its ttl from now.
    pub(crate) fn watch(&self, lease: Arc<LeaseCell>) {
        let backend = self.backend.clone();
        self.task.send(lease, move |leases| run(backend, leases));
    }
}

fn period(ttl: Duration) -> Duration {
    ttl / 3
}

/// How long after a failed renewal to try again.
fn retry_delay(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

type Schedule = BTreeMap<(Instant, u64), Arc<LeaseCell>>;

/// Leases a renewal call handled, each with its next due time.
type Rescheduled = Vec<(Arc<LeaseCell>, Instant)>;

async fn run(backend: Arc<dyn Backend>, mut incoming: mpsc::UnboundedReceiver<Arc<LeaseCell>>) {
    let mut schedule = Schedule::new();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Rescheduled>> = FuturesUnordered::new();
    loop {
        let next_due = schedule.keys().next().map(|&(due, _)| due);
        tokio::select! {
            lease = incoming.recv() => match lease {
                Some(lease) => {
                    let due = Instant::now() + period(lease.ttl());
                    schedule.insert((due, lease.id), lease);
                }
                // The client and every guard are gone: nothing left to renew.
                None => return,
            },
            Some(renewed) = in_flight.next(), if !in_flight.is_empty() => {
                for (lease, due) in renewed {
                    schedule.insert((due, lease.id), lease);
                }
            }
            () = sleep_until(next_due), if next_due.is_some() => {
                for batch in take_due(&mut schedule).chunks(BATCH) {
                    in_flight.push(Box::pin(renew(backend.clone(), batch.to_vec())));
                }
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// Removes and returns the leases to renew now, dropping those that ended or
/// reached their `max_hold`.
fn take_due(schedule: &mut Schedule) -> Vec<Arc<LeaseCell>> {
    let now = Instant::now();
    let mut due = Vec::new();
    while let Some(entry) = schedule.first_entry() {
        let (at, _) = *entry.key();
        if at > now + period(entry.get().ttl()) / 2 {
            break;
        }
        let lease = entry.remove();
        let past_max_hold = lease.renew_until.is_some_and(|until| now >= until);
        if !lease.is_ended() && !past_max_hold {
            due.push(lease);
        }
    }
    due
}

/// Renews one batch; returns the leases to schedule again with their next due time.
async fn renew(backend: Arc<dyn Backend>, leases: Vec<Arc<LeaseCell>>) -> Rescheduled {
    let sent_at = Instant::now();
    let ttls: Vec<Duration> = leases.iter().map(|lease| lease.ttl()).collect();
    let renewals: Vec<Renewal<'_>> = leases
        .iter()
        .zip(&ttls)
        .map(|(lease, &ttl)| Renewal {
            key: &lease.key,
            token: &lease.token,
            ttl,
        })
        .collect();
    metrics::renewal_call();
    let outcome = backend.extend(&renewals).await;
    drop(renewals);
    let now = Instant::now();
    let outcomes = match outcome {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::debug!(error = %err, leases = leases.len(), "lease renewal failed; retrying");
            vec![Err(Tally::default()); leases.len()]
        }
    };
    let mut again = Vec::with_capacity(leases.len());
    for ((lease, ttl), outcome) in leases.into_iter().zip(ttls).zip(outcomes) {
        match outcome {
            Ok(true) => {
                metrics::renewal("renewed");
                lease.confirm(sent_at, ttl);
                again.push((lease, sent_at + period(ttl)));
            }
            Ok(false) => {
                metrics::renewal("lost");
                lease.mark_lost();
            }
            // Undecided: try again soon, while the lease's deadline allows.
            Err(_) => {
                metrics::renewal("error");
                let retry_at = now + retry_delay(ttl);
                if retry_at < lease.deadline() {
                    again.push((lease, retry_at));
                } else {
                    lease.mark_lost();
                }
            }
        }
    }
    again
}
