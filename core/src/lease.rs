//! The state one held lease shares between its guard, the watchdog and
//! anyone watching for its loss.
//!
//! # The deadline
//! The lost signal must fire before the server can hand the key to someone
//! else. A request that sets the key's ttl (the acquisition, a renewal, an
//! extension) is applied after it was sent, and Redis keeps the key at
//! least the ttl from then; so the lease is guaranteed until the request's
//! *send* time plus the ttl it sent, in whole milliseconds as Redis takes
//! it, minus [`drift`].
//!
//! # Requests that overlap
//! A renewal from the watchdog and an [`extend`](crate::LockGuard::extend)
//! can be on their way at once, and their replies can be handled in either
//! order. Each request therefore takes a sequence number when it is sent
//! ([`LeaseCell::renewal`], [`LeaseCell::extension`]), and:
//! - sending lowers the deadline at once to what the request would leave if
//!   applied, as it may be applied before its reply comes, or without one
//!   (and an extension to a shorter ttl brings the next renewal forward);
//! - only a confirmation of the *newest* request sent moves the deadline and
//!   the renewal schedule, so a late reply to an earlier, longer request
//!   cannot undo a shorter one that Redis applied after it; a renewal that
//!   fails after a later request was sent is not retried for that reason;
//! - a request still unanswered when the newest was sent may reach Redis
//!   after it (a different connection), so the newest request's
//!   confirmation counts with the shortest ttl among them: if applied later,
//!   they were applied after the newest was sent.
//!
//! A request that failed (a timeout, a broken connection) is taken not to
//! reach Redis after a request sent later. On one connection, requests
//! reach Redis in order; one left on a connection that broke could arrive
//! later, and that matters only if it asked for a shorter ttl than a later
//! one: an extension to a shorter ttl that failed, then one to a longer ttl.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::LeaseKind;
use crate::metrics;

/// How much of a lease is given up so that the lost signal fires before the
/// server can hand the key to another owner:
/// - 1 % of the ttl for the clocks of this process and the server running
///   at different rates (the Redlock analysis' figure);
/// - 2 ms, Redlock's fixed part: 1 ms because Redis keeps expiry times in
///   whole milliseconds of its clock, 1 ms of minimum drift for short ttls;
/// - 1 ms for tokio's timer, which counts whole milliseconds and rounds a
///   deadline up, so `lost()` resolves up to 1 ms after the deadline.
///
/// No margin covers a task that is not scheduled for longer than that after
/// its timer fired (a starved runtime, a paused process); fencing does.
pub(crate) fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(3)
}

/// The ttl as a request sends it: Redis takes expiry times in whole
/// milliseconds, so the fraction of one is cut off.
pub(crate) fn whole_millis(ttl: Duration) -> Duration {
    Duration::from_millis(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// How long after its send time a request to `ttl` guarantees the lease.
pub(crate) fn validity(ttl: Duration) -> Duration {
    let sent = whole_millis(ttl);
    sent.saturating_sub(drift(sent))
}

/// How long after its send time a request to `ttl` is renewed: a third of
/// the ttl, leaving two thirds for the renewal's round trip and retries.
pub(crate) fn period(ttl: Duration) -> Duration {
    whole_millis(ttl) / 3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Held,
    Lost,
    Released,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Until when the lease is guaranteed; see the module docs.
    deadline: Instant,
    /// When the watchdog renews next.
    renew_at: Instant,
    /// The ttl renewals ask for: the acquisition's, or the last extension's.
    ttl: Duration,
    /// The sequence number of the newest request sent; the acquisition is 0.
    newest: u64,
    /// Requests sent and not yet answered, with the ttl each asked for.
    unanswered: Vec<(u64, Duration)>,
}

#[derive(Debug)]
pub(crate) struct LeaseCell {
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) fence: u64,
    /// Identifies the lease in the watchdog's schedule.
    pub(crate) id: u64,
    /// The watchdog renews only until then (`max_hold`); `None`: while held.
    pub(crate) renew_until: Option<Instant>,
    /// Whether the watchdog renews this lease at all.
    pub(crate) watched: bool,
    /// A lock's lease or a semaphore permit's.
    pub(crate) kind: LeaseKind,
    state: Mutex<State>,
    ended: CancellationToken,
    /// Wakes those waiting for the deadline when it moves closer.
    closer: Notify,
}

/// A renewal or extension on its way to the backend, with the sequence
/// number it was sent with. [`Sent::confirm`] reports that the backend
/// applied it; dropped unconfirmed, it counts as answered without effect.
#[derive(Debug)]
pub(crate) struct Sent<'a> {
    cell: &'a LeaseCell,
    seq: u64,
    at: Instant,
    ttl: Duration,
    /// The shortest ttl among this request and those still unanswered when
    /// it was sent.
    shortest: Duration,
}

impl Sent<'_> {
    /// The ttl to send, in whole milliseconds.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The request failed (it may still have been applied): `true` if it is
    /// the newest sent for the lease, `false` if a later request took over.
    pub(crate) fn fail(self) -> bool {
        let mut state = self.cell.state();
        state.unanswered.retain(|&(seq, _)| seq != self.seq);
        self.seq == state.newest
    }

    /// The backend applied the request: if it is the newest sent for the
    /// lease, the deadline and the next renewal count from it, and `true`
    /// is returned; an earlier request's confirmation changes nothing.
    pub(crate) fn confirm(self) -> bool {
        let mut state = self.cell.state();
        state.unanswered.retain(|&(seq, _)| seq != self.seq);
        if state.phase != Phase::Held || self.seq != state.newest {
            return false;
        }
        self.cell
            .move_deadline(&mut state, self.at + validity(self.shortest));
        state.renew_at = self.at + period(self.shortest);
        true
    }
}

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        let mut state = self.cell.state();
        state.unanswered.retain(|&(seq, _)| seq != self.seq);
    }
}

impl LeaseCell {
    /// A lease acquired by a request to `ttl` sent at `sent_at`.
    pub(crate) fn new(
        key: String,
        token: String,
        fence: u64,
        ttl: Duration,
        sent_at: Instant,
        renew_until: Option<Instant>,
        watched: bool,
    ) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let ttl = whole_millis(ttl);
        LeaseCell {
            key,
            token,
            fence,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            renew_until,
            watched,
            kind: LeaseKind::Lock,
            state: Mutex::new(State {
                phase: Phase::Held,
                deadline: sent_at + validity(ttl),
                renew_at: sent_at + period(ttl),
                ttl,
                newest: 0,
                unanswered: Vec::new(),
            }),
            ended: CancellationToken::new(),
            closer: Notify::new(),
        }
    }

    /// The same lease, holding a semaphore permit named by its key.
    pub(crate) fn permit(self) -> Self {
        self.of_kind(LeaseKind::Permit)
    }

    /// The same lease, holding what `kind` says.
    pub(crate) fn of_kind(mut self, kind: LeaseKind) -> Self {
        self.kind = kind;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease length renewals ask for.
    pub(crate) fn ttl(&self) -> Duration {
        self.state().ttl
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.state().deadline
    }

    /// When the watchdog should renew the lease next.
    pub(crate) fn renew_at(&self) -> Instant {
        self.state().renew_at
    }

    /// A renewal to the lease's ttl is sent now; the next is due a period
    /// after it, unless it fails.
    pub(crate) fn renewal(&self) -> Sent<'_> {
        let mut state = self.state();
        let ttl = state.ttl;
        let sent = self.send(&mut state, ttl);
        state.renew_at = sent.at + period(ttl);
        sent
    }

    /// An extension to `ttl` is sent now; renewals ask for `ttl` from here
    /// on, and come sooner if `ttl` is shorter. (Later, if longer: only
    /// once it is confirmed.)
    pub(crate) fn extension(&self, ttl: Duration) -> Sent<'_> {
        let mut state = self.state();
        state.ttl = whole_millis(ttl);
        let ttl = state.ttl;
        let sent = self.send(&mut state, ttl);
        state.renew_at = state.renew_at.min(sent.at + period(ttl));
        sent
    }

    fn send(&self, state: &mut State, ttl: Duration) -> Sent<'_> {
        let at = Instant::now();
        state.newest += 1;
        let seq = state.newest;
        let shortest = state
            .unanswered
            .iter()
            .map(|&(_, ttl)| ttl)
            .fold(ttl, Duration::min);
        state.unanswered.push((seq, ttl));
        if state.phase == Phase::Held {
            // Applied, it leaves the key at least this long, perhaps less
            // than before; its reply may come late or never.
            let deadline = state.deadline.min(at + validity(ttl));
            self.move_deadline(state, deadline);
        }
        Sent {
            cell: self,
            seq,
            at,
            ttl,
            shortest,
        }
    }

    fn move_deadline(&self, state: &mut State, deadline: Instant) {
        let closer = deadline < state.deadline;
        state.deadline = deadline;
        if closer {
            self.closer.notify_waiters();
        }
    }

    /// Still ours as far as this process can tell: not released, not lost,
    /// and inside its guaranteed validity.
    pub(crate) fn is_held(&self) -> bool {
        let now = Instant::now();
        let state = self.state();
        state.phase == Phase::Held && now < state.deadline
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state().phase != Phase::Held
    }

    pub(crate) fn remaining(&self) -> Duration {
        let state = self.state();
        if state.phase == Phase::Held {
            state.deadline.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        }
    }

    /// Marks the lease lost; `true` if it was held until now.
    pub(crate) fn mark_lost(&self) -> bool {
        let mut state = self.state();
        if state.phase != Phase::Held {
            return false;
        }
        state.phase = Phase::Lost;
        drop(state);
        metrics::lost();
        tracing::warn!(key = %self.key, fence = self.fence, "lease lost");
        self.ended.cancel();
        true
    }

    /// Marks the lease released by its owner; renewals stop from here on.
    pub(crate) fn mark_released(&self) {
        let mut state = self.state();
        if state.phase == Phase::Held {
            state.phase = Phase::Released;
        }
        drop(state);
        self.ended.cancel();
    }

    /// Resolves once the lease ends: released, found lost, or past its
    /// deadline with no renewal confirmed in time (then it is marked lost).
    pub(crate) async fn ended(&self) {
        loop {
            // Listening before the deadline is read: a move closer in
            // between still wakes us.
            let closer = self.closer.notified();
            tokio::pin!(closer);
            closer.as_mut().enable();
            let deadline = self.deadline();
            tokio::select! {
                () = self.ended.cancelled() => return,
                () = closer => {}
                () = tokio::time::sleep_until(deadline) => {
                    if Instant::now() >= self.deadline() {
                        self.mark_lost();
                        return;
                    }
                }
            }
        }
    }
}

/// A cloneable view of a held lease: its key, fence, and whether it is still
/// guaranteed. Hand it to the tasks that do the protected work so they can
/// stop when the lease is lost.
///
/// ```
/// use std::time::Duration;
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let guard = locks.lock("sweep").ttl(Duration::from_secs(10)).acquire().await?;
/// let lease = guard.lease();
/// let worker = tokio::spawn(async move {
///     tokio::select! {
///         () = lease.lost() => "stopped: lease lost",
///         () = tokio::time::sleep(Duration::from_millis(10)) => "finished",
///     }
/// });
/// assert_eq!(worker.await.unwrap(), "finished");
/// guard.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Lease {
    pub(crate) cell: Arc<LeaseCell>,
}

impl Lease {
    /// The key as the caller gave it.
    pub fn key(&self) -> &str {
        &self.cell.key
    }

    /// The fencing token issued with this acquisition: strictly greater than
    /// every fence issued for the same key before it. 0 for the lease of an
    /// [`UnfencedGuard`](crate::UnfencedGuard), which has none: no
    /// acquisition that issues a fence is given 0.
    pub fn fence(&self) -> u64 {
        self.cell.fence
    }

    /// Whether the lease is still guaranteed: not released, not lost, and
    /// inside the validity of its last confirmed renewal.
    pub fn is_held(&self) -> bool {
        self.cell.is_held()
    }

    /// How much of the lease is still guaranteed locally; zero once it has
    /// ended. Work that would outlast this may run unprotected.
    pub fn remaining(&self) -> Duration {
        self.cell.remaining()
    }

    /// Resolves once the lease can no longer be guaranteed: at once when a
    /// renewal finds the key gone or owned by someone else, at the local
    /// deadline when renewals keep failing, and when the guard is released or
    /// dropped. The deadline is the send time of the last confirmed renewal
    /// plus its ttl minus a drift margin, so this fires before the backend
    /// can hand the key to another owner.
    pub async fn lost(&self) {
        self.cell.ended().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{MAX_TTL, MIN_TTL};

    const MS: Duration = Duration::from_millis(1);

    /// Ttls from the shortest to the longest accepted, with fractions of a
    /// millisecond and odd values.
    fn ttls() -> Vec<Duration> {
        let mut ttls = vec![
            MIN_TTL,
            MIN_TTL + Duration::from_nanos(1),
            MIN_TTL + Duration::from_micros(500),
            MIN_TTL + Duration::from_nanos(999_999),
            MAX_TTL - Duration::from_nanos(1),
            MAX_TTL,
        ];
        let mut ttl = MIN_TTL;
        while ttl < MAX_TTL {
            ttls.push(ttl);
            // Grows by a seventh plus an odd fraction of a millisecond.
            ttl += ttl / 7 + Duration::from_nanos(123_457);
        }
        ttls.sort();
        ttls
    }

    fn cell(ttl: Duration, sent_at: Instant) -> LeaseCell {
        LeaseCell::new("k".into(), "t".into(), 1, ttl, sent_at, None, true)
    }

    #[test]
    fn the_deadline_leaves_every_margin_at_every_ttl() {
        let mut previous = Duration::ZERO;
        for ttl in ttls() {
            // Counted from the ttl that is sent: Redis' whole milliseconds.
            let sent = whole_millis(ttl);
            assert_eq!(sent, Duration::from_millis(crate::node::millis(ttl)));
            assert!(sent <= ttl && ttl - sent < MS, "{ttl:?}");
            let valid = validity(ttl);
            // Once the key is set it lives `sent` from when Redis applied the
            // request, after it was sent. Before that: 1 % for clock rates,
            // 1 ms for Redis' millisecond clock, 1 ms of minimum drift, and
            // `lost()` firing up to 1 ms late (tokio's timer).
            assert!(
                valid + sent / 100 + 3 * MS <= sent,
                "ttl {ttl:?}: valid for {valid:?} of {sent:?}"
            );
            // A renewal falls due well before the deadline: two thirds of the
            // ttl minus the margins, at least 2 ms, for its round trip.
            assert!(
                valid >= period(ttl) + 2 * MS,
                "ttl {ttl:?}: renewed at {:?}, valid for {valid:?}",
                period(ttl)
            );
            assert!(valid >= previous, "validity shrinks at {ttl:?}");
            previous = valid;
        }
    }

    /// Per tokio's own timer: is_held() turns false at the deadline, and
    /// `lost()` resolves within a tick of it, both counted from the
    /// acquisition's send time, and that still leaves 1 % and 2 ms before
    /// the key can lapse.
    #[tokio::test(start_paused = true)]
    async fn lost_resolves_at_the_deadline_counted_from_the_send_time() {
        for ttl in ttls().into_iter().take(12) {
            let sent_at = Instant::now();
            tokio::time::advance(MS / 3).await; // the reply comes later
            let lease = Arc::new(cell(ttl, sent_at));
            let deadline = sent_at + validity(ttl);
            assert_eq!(lease.deadline(), deadline);
            assert_eq!(lease.renew_at(), sent_at + period(ttl));
            let lost = tokio::spawn({
                let lease = lease.clone();
                async move {
                    lease.ended().await;
                    Instant::now()
                }
            });
            tokio::time::advance(deadline - Duration::from_nanos(1) - Instant::now()).await;
            assert!(lease.is_held(), "{ttl:?}");
            tokio::time::advance(Duration::from_nanos(1)).await;
            assert!(!lease.is_held(), "{ttl:?}");
            let fired = lost.await.unwrap();
            assert!(fired >= deadline && fired <= deadline + MS, "{ttl:?}");
            // The key lives `whole_millis(ttl)` from its send time at least.
            let sent = whole_millis(ttl);
            assert!(fired + sent / 100 + 2 * MS <= sent_at + sent, "{ttl:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_to_an_earlier_longer_renewal_changes_nothing() {
        let lease = cell(30 * 1000 * MS, Instant::now());
        let renewal = lease.renewal();
        tokio::time::advance(MS).await;
        let short = 200 * MS;
        let extension = lease.extension(short);
        let extended_at = Instant::now();
        // Sent, the shorter extension already bounds the lease.
        assert_eq!(lease.deadline(), extended_at + validity(short));
        assert_eq!(lease.renew_at(), extended_at + period(short));
        assert_eq!(lease.ttl(), short);
        tokio::time::advance(MS).await;
        assert!(extension.confirm());
        assert!(
            !renewal.confirm(),
            "an earlier request's reply moved the deadline"
        );
        assert_eq!(lease.deadline(), extended_at + validity(short));
        assert_eq!(lease.renew_at(), extended_at + period(short));
        assert_eq!(lease.ttl(), short);
        // The next renewal asks for the extension's ttl, and counts.
        let next = lease.renewal();
        assert_eq!(next.ttl(), short);
        let renewed_at = Instant::now();
        assert!(next.confirm());
        assert_eq!(lease.deadline(), renewed_at + validity(short));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_shorter_request_bounds_a_later_longer_one() {
        let one_second = 1000 * MS;
        let lease = cell(one_second, Instant::now());
        let renewal = lease.renewal();
        tokio::time::advance(MS).await;
        let extension = lease.extension(30 * one_second);
        let extended_at = Instant::now();
        // The renewal may reach Redis after the extension: a one-second
        // lease counted from the extension's send time at most.
        drop(renewal);
        assert!(extension.confirm());
        assert_eq!(lease.deadline(), extended_at + validity(one_second));
        assert_eq!(lease.renew_at(), extended_at + period(one_second));
        // A renewal on its own gets the whole new ttl.
        let next = lease.renewal();
        let renewed_at = Instant::now();
        assert!(next.confirm());
        assert_eq!(lease.deadline(), renewed_at + validity(30 * one_second));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_fails_after_a_later_extension_does_not_count() {
        let lease = cell(1000 * MS, Instant::now());
        let renewal = lease.renewal();
        let extension = lease.extension(2000 * MS);
        assert!(extension.confirm());
        assert!(!renewal.fail(), "the extension took over");
        let renewal = lease.renewal();
        assert!(renewal.fail(), "the newest request failed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_extension_leaves_the_lease_no_longer_than_it_asked() {
        let lease = cell(30 * 1000 * MS, Instant::now());
        let extension = lease.extension(20 * MS);
        let extended_at = Instant::now();
        drop(extension); // failed: perhaps applied, perhaps not
        assert_eq!(lease.deadline(), extended_at + validity(20 * MS));
        assert!(lease.deadline() > Instant::now());
        lease.mark_lost();
        assert!(!lease.renewal().confirm(), "a lost lease came back");
        assert!(!lease.is_held());
    }

    /// `lost()` awaited before an extension shortens the lease fires at the
    /// new deadline, not the old one.
    #[tokio::test(start_paused = true)]
    async fn lost_follows_a_deadline_that_moves_closer() {
        let lease = Arc::new(cell(30 * 1000 * MS, Instant::now()));
        let lost = tokio::spawn({
            let lease = lease.clone();
            async move {
                lease.ended().await;
                Instant::now()
            }
        });
        tokio::time::advance(MS).await;
        let short = 50 * MS;
        let extended_at = Instant::now();
        drop(lease.extension(short));
        let fired = lost.await.unwrap();
        let deadline = extended_at + validity(short);
        assert!(
            fired >= deadline && fired <= deadline + MS,
            "{:?}",
            fired - extended_at
        );
    }
}
