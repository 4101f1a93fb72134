//! The watchdog: renews every held lease of a client from one task, in batches.
//!
//! A lease is due for renewal a third of its ttl after the send time of the
//! request that set its deadline (see `lease.rs`), the acquisition's to
//! begin with. When the earliest lease falls due, every lease due within
//! the next sixth of its ttl is renewed with it, in calls of up to
//! [`BATCH`] leases. Leases renewed together stay due together, so after one
//! period thousands of leases cost a handful of calls per period, not one each.
//!
//! A renewal that fails at the transport level is retried soon after, for as
//! long as the lease's deadline allows; one that finds the key gone or owned
//! by another token marks the lease lost at once. The watchdog holds no
//! guard: releasing or dropping a guard takes its lease off the schedule, and
//! a lease that ends while its renewal is in flight is not scheduled again.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backend::{Backend, Renewal, Tally};
use crate::background::Background;
use crate::lease::{LeaseCell, period};
use crate::metrics;

/// The most leases renewed by one backend call.
pub(crate) const BATCH: usize = 1000;

#[derive(Debug)]
pub(crate) struct Watchdog {
    backend: Arc<dyn Backend>,
    schedule: Arc<Mutex<Schedule>>,
    /// Wakes the task when a lease falls due before the task's next wake.
    task: Background<()>,
}

/// The leases to renew, by due time, shared by the task and the guards:
/// a guard adds its lease and takes it out again on release, so that only
/// a lease due before everything already scheduled needs to wake the task.
#[derive(Debug, Default)]
struct Schedule {
    by_due: BTreeMap<(Instant, u64), Arc<LeaseCell>>,
    due_of: HashMap<u64, Instant, BuildHasherDefault<IdHasher>>,
    /// When the task will look at the schedule next; `None`: it is idle.
    next_wake: Option<Instant>,
}

/// Hashes a lease id, which this process hands out in sequence and no
/// input chooses: a multiplication spreads it over the table, where the
/// default hasher's SipHash, made to resist chosen keys, costs a lock
/// cycle two hashes (its lease scheduled, then forgotten) for nothing.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Schedule {
    /// Schedules `lease` at `due`, replacing any earlier entry of it.
    fn insert(&mut self, due: Instant, lease: Arc<LeaseCell>) {
        if let Some(before) = self.due_of.insert(lease.id, due) {
            self.by_due.remove(&(before, lease.id));
        }
        self.by_due.insert((due, lease.id), lease);
    }

    fn remove(&mut self, id: u64) {
        if let Some(due) = self.due_of.remove(&id) {
            self.by_due.remove(&(due, id));
        }
    }

    fn first_due(&self) -> Option<Instant> {
        self.by_due.keys().next().map(|&(due, _)| due)
    }

    /// Removes and returns the leases to renew now: those due within half a
    /// period of now, so that leases falling due together renew together.
    /// Leases that ended or reached their `max_hold` are dropped.
    fn take_due(&mut self, now: Instant) -> Vec<Arc<LeaseCell>> {
        let mut due = Vec::new();
        while let Some(entry) = self.by_due.first_entry() {
            let (at, id) = *entry.key();
            if at > now + period(entry.get().ttl()) / 2 {
                break;
            }
            let lease = entry.remove();
            self.due_of.remove(&id);
            let past_max_hold = lease.renew_until.is_some_and(|until| now >= until);
            if !lease.is_ended() && !past_max_hold {
                due.push(lease);
            }
        }
        due
    }
}

impl Watchdog {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Self {
        Watchdog {
            backend,
            schedule: Arc::default(),
            task: Background::new(),
        }
    }

    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts renewing `lease`, a third of its ttl after its acquisition was sent.
    pub(crate) fn watch(&self, lease: Arc<LeaseCell>) {
        let due = lease.renew_at();
        self.schedule_at(lease, due);
    }

    /// Renews `lease` when it says: a request just changed its ttl, or its
    /// deadline, perhaps sooner than scheduled.
    pub(crate) fn rescheduled(&self, lease: Arc<LeaseCell>) {
        let due = lease.renew_at();
        self.schedule_at(lease, due);
    }

    fn schedule_at(&self, lease: Arc<LeaseCell>, due: Instant) {
        let mut schedule = self.schedule();
        schedule.insert(due, lease);
        let wake = schedule.next_wake.is_none_or(|next| due < next) || !self.task.is_running();
        if wake {
            schedule.next_wake = Some(due);
        }
        drop(schedule);
        if wake {
            let (backend, schedule) = (self.backend.clone(), self.schedule.clone());
            self.task
                .send((), move |wakes| run(backend, schedule, wakes));
        }
    }

    /// Stops renewing `lease`: its guard was released or dropped.
    pub(crate) fn forget(&self, lease: &LeaseCell) {
        self.schedule().remove(lease.id);
    }
}

/// How long after a failed renewal to try again.
fn retry_delay(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Leases a renewal call handled, each with its next due time.
type Rescheduled = Vec<(Arc<LeaseCell>, Instant)>;

async fn run(
    backend: Arc<dyn Backend>,
    schedule: Arc<Mutex<Schedule>>,
    mut wakes: mpsc::UnboundedReceiver<()>,
) {
    let lock = || schedule.lock().unwrap_or_else(PoisonError::into_inner);
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Rescheduled>> = FuturesUnordered::new();
    loop {
        let next_due = {
            let mut schedule = lock();
            let next = next_look(schedule.first_due(), schedule.next_wake, Instant::now());
            schedule.next_wake = next;
            next
        };
        tokio::select! {
            wake = wakes.recv() => {
                // The client and every guard are gone: nothing left to renew.
                if wake.is_none() {
                    return;
                }
            }
            Some(renewed) = in_flight.next(), if !in_flight.is_empty() => {
                let mut schedule = lock();
                for (lease, due) in renewed {
                    // Released while its renewal was in flight: forget it.
                    if !lease.is_ended() {
                        schedule.insert(due, lease);
                    }
                }
            }
            () = sleep_until(next_due), if next_due.is_some() => {
                let due = lock().take_due(Instant::now());
                for batch in batches(due, |lease| backend.renewal_group(&lease.key)) {
                    in_flight.push(Box::pin(renew(backend.clone(), batch)));
                }
            }
        }
    }
}

/// When the task looks at the schedule next: when its first lease falls
/// due, or, with nothing scheduled, at the wake-up it last promised
/// (`promised`) if that is still ahead, rather than never. A lease that is
/// released before the task wakes for it leaves the schedule empty; going
/// idle then would make the next acquisition wake the task again, and a
/// client that takes and releases a lock in a loop would wake it once per
/// cycle (a thread wake-up each, most of its CPU). Sleeping on to the
/// promised time, the task wakes once per period instead: later leases are
/// due after it.
fn next_look(
    first_due: Option<Instant>,
    promised: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    first_due.or(promised.filter(|&at| at > now))
}

/// Cuts `due` into calls of up to [`BATCH`] leases, keeping the leases of
/// one renewal group (on a cluster, one hash slot) in one call unless the
/// group alone exceeds a call: a renewal period then costs one script call
/// per slot, the least a cluster allows, and on one server one call per
/// [`BATCH`] leases.
fn batches<T: Clone>(mut due: Vec<T>, group: impl Fn(&T) -> u16) -> Vec<Vec<T>> {
    due.sort_by_cached_key(|item| group(item));
    let mut calls: Vec<Vec<T>> = Vec::new();
    let mut rest = due.as_slice();
    while let Some(first) = rest.first() {
        let first = group(first);
        let len = rest.iter().take_while(|item| group(item) == first).count();
        let (members, after) = rest.split_at(len);
        for part in members.chunks(BATCH) {
            match calls.last_mut() {
                Some(call) if call.len() + part.len() <= BATCH => call.extend_from_slice(part),
                _ => calls.push(part.to_vec()),
            }
        }
        rest = after;
    }
    calls
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due).await;
    }
}

/// Renews one batch; returns the leases to schedule again with their next due time.
async fn renew(backend: Arc<dyn Backend>, leases: Vec<Arc<LeaseCell>>) -> Rescheduled {
    let mut again = Vec::with_capacity(leases.len());
    let sent: Vec<_> = leases.iter().map(|lease| lease.renewal()).collect();
    let renewals: Vec<Renewal<'_>> = leases
        .iter()
        .zip(&sent)
        .map(|(lease, sent)| Renewal {
            key: &lease.key,
            token: &lease.token,
            ttl: sent.ttl(),
            kind: lease.kind,
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
    for ((lease, sent), outcome) in leases.iter().zip(sent).zip(outcomes) {
        match outcome {
            Ok(true) => {
                metrics::renewal("renewed");
                // A renewal overtaken by a later request (an extension)
                // leaves the deadline and the schedule to that one.
                sent.confirm();
                again.push((lease.clone(), lease.renew_at()));
            }
            Ok(false) => {
                drop(sent);
                metrics::renewal("lost");
                lease.mark_lost();
            }
            // Undecided: try again soon, while the lease's deadline allows,
            // unless a later request (an extension) took over.
            Err(_) => {
                let retry_at = now + retry_delay(sent.ttl());
                metrics::renewal("error");
                if !sent.fail() {
                    again.push((lease.clone(), lease.renew_at()));
                } else if retry_at < lease.deadline() {
                    again.push((lease.clone(), retry_at));
                } else {
                    lease.mark_lost();
                }
            }
        }
    }
    again
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_schedule_keeps_the_promised_wake_up() {
        let now = Instant::now();
        let (soon, later) = (now + Duration::from_secs(1), now + Duration::from_secs(2));
        // A lease scheduled: its due time, whatever was promised.
        assert_eq!(next_look(Some(later), Some(soon), now), Some(later));
        assert_eq!(next_look(Some(soon), None, now), Some(soon));
        // Emptied before the promised wake-up: sleep on to it.
        assert_eq!(next_look(None, Some(soon), now), Some(soon));
        // Nothing scheduled and the promise kept: idle.
        assert_eq!(next_look(None, Some(now), now), None);
        assert_eq!(next_look(None, None, now), None);
    }

    #[test]
    fn the_leases_of_one_slot_share_one_call() {
        // 1500 leases in group 0, more than one call holds, and 250 in each
        // of groups 1 to 6.
        let group = |n: &u32| if *n < 1500 { 0 } else { (*n % 6 + 1) as u16 };
        let calls = batches((0..3000).collect(), group);
        assert!(
            calls
                .iter()
                .all(|call| !call.is_empty() && call.len() <= BATCH)
        );
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 3000);
        assert_eq!(calls.len(), 3, "full calls");
        for g in 1..=6 {
            let holding = calls
                .iter()
                .filter(|call| call.iter().any(|n| group(n) == g))
                .count();
            assert_eq!(holding, 1, "group {g} is split over {holding} calls");
        }
        // One server: one group, calls of BATCH.
        let calls = batches((0..2500).collect(), |_: &u32| 0);
        let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
    }
}
