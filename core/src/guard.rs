//! The guard of a held lock.

use std::time::Duration;

use tokio::time::Instant;

use crate::along::check_along;
use crate::backend::{Backend, LeaseKind, Record, Renewal};
use crate::client::LockClient;
use crate::error::{LockError, Result};
use crate::fence::{FencedWrite, check_record};
use crate::lease::{Lease, LeaseCell};
use crate::metrics;
use crate::request::check_ttl;
use crate::token::new_token;

/// Proof of holding a lock. While it lives the watchdog renews the lease
/// (unless the request turned it off); [`release`](LockGuard::release) gives
/// the lock back, and dropping the guard releases it in the background.
/// Renewal stops the moment the guard is released or dropped.
///
/// ```
/// use std::time::Duration;
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let guard = locks.lock("orders:42").ttl(Duration::from_secs(30)).acquire().await?;
/// assert_eq!(guard.key(), "orders:42");
/// assert!(guard.is_held());
/// assert!(guard.remaining() <= Duration::from_secs(30));
/// guard.extend(Duration::from_secs(60)).await?;
/// guard.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    client: LockClient,
    pub(crate) lease: Lease,
    /// Set once `release` took over; `Drop` then has nothing to do.
    pub(crate) released: bool,
}

impl LockGuard {
    pub(crate) fn new(client: LockClient, lease: Lease) -> Self {
        LockGuard {
            client,
            lease,
            released: false,
        }
    }

    /// The key as the caller gave it.
    pub fn key(&self) -> &str {
        self.lease.key()
    }

    /// The fencing token: issued atomically with this acquisition, strictly
    /// greater than every fence issued for the key before, by any holder,
    /// and kept across releases and expiries. Pass it to the resource you
    /// write (see [`LockClient::fenced_set`]) so it can refuse late writes.
    pub fn fence(&self) -> u64 {
        self.lease.fence()
    }

    /// Whether the lease is still guaranteed; see [`Lease::is_held`].
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How much of the lease is still guaranteed locally; see [`Lease::remaining`].
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// Resolves once the lease can no longer be guaranteed; see [`Lease::lost`].
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// A cloneable view of this lease, to hand the lost signal to other tasks.
    pub fn lease(&self) -> Lease {
        self.lease.clone()
    }

    /// Sets the lease to `ttl` from now, if it is still ours; the watchdog
    /// renews to `ttl` from then on. `ttl` counts in whole milliseconds, as
    /// [`LockRequest::ttl`](crate::LockRequest::ttl) does. Fails with
    /// [`LockError::Lost`] if the lease already ended or another owner holds
    /// the key, and marks the lease lost.
    ///
    /// From the moment it is sent the lease counts as no longer than the
    /// extension makes it, and a renewal sent before it that is answered
    /// after it changes nothing: Redis applied that renewal first.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        extend_lease(&self.client, &self.lease, ttl).await
    }

    /// Gives the lock back now. Fails with [`LockError::Lost`] if the key
    /// was no longer ours (it expired, and perhaps another owner took it;
    /// theirs is left untouched; on a Redlock, unless a majority of the
    /// nodes still held it for us), or with a backend error, in which case
    /// the key expires within its ttl.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        release_lease(&self.client, &self.lease).await
    }

    /// Gives the lock back, as [`release`](Self::release) does, and sends
    /// the Redis commands `along` in the same round trip: a record of the
    /// work done under the lock (a history entry, a metric) costs no
    /// request of its own.
    ///
    /// On one Redis server (or the primary Sentinel names) they run in the
    /// release's script, right after the release and atomically with it,
    /// in order, whether or not the key was still ours. On a Redis Cluster,
    /// where a script may only touch keys of one hash slot, each command is
    /// sent at the same time as the release instead (the cluster connection
    /// pipelines what goes to one node): same round trip, but not atomic
    /// with it; one can apply while the release fails, or the other way
    /// round.
    ///
    /// Errors as for [`release`](Self::release) first; then, the lock
    /// given back, [`LockError::AlongRefused`] for the first command that
    /// Redis refused (it changed nothing; the others were applied). The
    /// memory backend and a Redlock have no one Redis to send them to:
    /// they release the lock without them and return
    /// [`LockError::InvalidArgument`], as does a command without a name or
    /// with more than [`MAX_EFFECT_ARGS`](crate::MAX_EFFECT_ARGS) arguments.
    ///
    /// ```no_run
    /// use soloist::{LockClient, redis};
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
    /// let guard = locks.lock("report:monday").acquire().await?;
    /// // ... the work ...
    /// let mut done = redis::cmd("XADD");
    /// done.arg("reports:log").arg("*").arg("report").arg("monday");
    /// guard.release_with(&[done]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn release_with(mut self, along: &[redis::Cmd]) -> Result<()> {
        self.released = true;
        release_lease_with(&self.client, &self.lease, along).await
    }

    /// Stores `value` for `resource` with this guard's fence, as
    /// [`LockClient::fenced_set`] does, but only while this guard still
    /// holds its lock, and applies the Redis `effects` in the same atomic
    /// step: a commit that is refused (not held, a higher fence) writes
    /// nothing and applies nothing. A holder whose lease ended unnoticed gets [`FencedWrite::NotHeld`]
    /// (or `Rejected`, if a later holder wrote first) and changes nothing,
    /// so effects committed this way by successive holders of a key are
    /// applied once. `ttl` expires the record; it is from 1 ns (kept for at
    /// least 1 ms) to [`MAX_RECORD_TTL`](crate::MAX_RECORD_TTL).
    ///
    /// Everything is checked before anything is sent: an empty `resource`,
    /// an out-of-range `ttl`, or an effect without a name or with more than
    /// [`MAX_EFFECT_ARGS`](crate::MAX_EFFECT_ARGS) arguments is an
    /// [`LockError::InvalidArgument`] and writes nothing.
    ///
    /// A commit whose reply is lost or late (a timeout, a broken
    /// connection, a server failing over) is sent again while the lease is
    /// held and, for a record with a `ttl`, during the first half of it;
    /// each commit carries an id that the record keeps, so a later copy
    /// finds the first applied and applies nothing again (the record must
    /// still exist for that: hence the bound). When the retries end first,
    /// the last error is returned, and whether the commit took effect is
    /// unknown until [`LockClient::fenced_get`] says.
    ///
    /// Effects that Redis refuses at run time (a `WRONGTYPE`, an unknown
    /// command) do not undo the commit: the record is written first, every
    /// effect is then run in order, a refused one changes nothing and the
    /// ones after it still run, and the call returns
    /// [`LockError::EffectRefused`] with the first refusal. Effects need a single
    /// Redis node: the memory backend has no Redis to apply them to, and a
    /// Redlock cannot apply them atomically across nodes; both refuse with
    /// [`LockError::InvalidArgument`].
    ///
    /// ```no_run
    /// use soloist::{LockClient, redis};
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
    /// let guard = locks.lock("invoice:42").acquire().await?;
    /// let mut charge = redis::cmd("HINCRBY");
    /// charge.arg("balances").arg("customer:7").arg(-990);
    /// guard.commit("charged:invoice:42", "receipt-1", None, &[charge]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn commit(
        &self,
        resource: &str,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
        effects: &[redis::Cmd],
    ) -> Result<FencedWrite> {
        let effects: Vec<Vec<Vec<u8>>> = effects.iter().map(command_args).collect();
        let cell = &self.lease.cell;
        let commit = new_token();
        let record = Record {
            value: value.as_ref(),
            ttl,
            effects: &effects,
            owner: Some((&cell.key, &cell.token)),
            commit: Some(&commit),
        };
        check_record(resource, &record)?;
        let backend = &self.client.inner.backend;
        // A copy must reach Redis while the first one's record (and so its
        // commit id) still exists; half the record's life leaves a margin
        // for a copy that is slow on its way.
        let retry_until = ttl.map(|ttl| Instant::now() + ttl / 2);
        let mut pause = COMMIT_RETRY_FIRST;
        loop {
            let may_retry =
                || cell.is_held() && retry_until.is_none_or(|until| Instant::now() + pause < until);
            match backend.fenced_set(resource, cell.fence, record).await {
                Err(err) if err.is_transient() && may_retry() => {
                    tracing::debug!(key = %cell.key, error = %err, "commit undecided; sending it again");
                    let jitter = pause.mul_f64(rand::random::<f64>() / 2.0);
                    tokio::time::sleep((pause + jitter).min(cell.remaining())).await;
                    pause = (pause * 2).min(COMMIT_RETRY_MAX);
                }
                outcome => return outcome,
            }
        }
    }
}

fn lost_error(cell: &LeaseCell) -> LockError {
    LockError::Lost {
        key: cell.key.clone(),
    }
}

/// [`LockGuard::extend`] for any lease: a lock's or a permit's.
pub(crate) async fn extend_lease(client: &LockClient, lease: &Lease, ttl: Duration) -> Result<()> {
    let ttl = check_ttl(ttl)?;
    let cell = &lease.cell;
    if !cell.is_held() {
        cell.mark_lost();
        return Err(lost_error(cell));
    }
    let sent = cell.extension(ttl);
    let watchdog = cell.watched.then_some(&client.inner.watchdog);
    if let Some(watchdog) = watchdog {
        // The next renewal may now be due sooner than scheduled.
        watchdog.rescheduled(cell.clone());
    }
    let renewal = [Renewal {
        key: &cell.key,
        token: &cell.token,
        ttl: sent.ttl(),
        kind: cell.kind,
    }];
    let renewed = client.inner.backend.extend(&renewal).await?;
    match renewed.first() {
        Some(Ok(true)) => {
            if sent.confirm()
                && let Some(watchdog) = watchdog
            {
                watchdog.rescheduled(cell.clone());
            }
            Ok(())
        }
        Some(Err(tally)) => Err(LockError::no_quorum(&cell.key, *tally)),
        Some(Ok(false)) | None => {
            drop(sent);
            cell.mark_lost();
            Err(lost_error(cell))
        }
    }
}

/// [`LockGuard::release`] for any lease: renewals stop, and the backend
/// gives the key or the permit back.
pub(crate) async fn release_lease(client: &LockClient, lease: &Lease) -> Result<()> {
    let cell = &lease.cell;
    cell.mark_released();
    client.inner.watchdog.forget(cell);
    let outcome = give_back(client.inner.backend.as_ref(), cell).await;
    record_release(&outcome);
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(lost_error(cell)),
        Err(err) => Err(err),
    }
}

/// [`LockGuard::release_with`] for any lease: renewals stop, and the
/// backend gives the key or the permit back with `along`.
pub(crate) async fn release_lease_with(
    client: &LockClient,
    lease: &Lease,
    along: &[redis::Cmd],
) -> Result<()> {
    if along.is_empty() {
        return release_lease(client, lease).await;
    }
    let along: Vec<Vec<Vec<u8>>> = along.iter().map(command_args).collect();
    if let Err(err) = check_along(&along) {
        release_lease(client, lease).await?;
        return Err(err);
    }
    let cell = &lease.cell;
    let backend = client.inner.backend.as_ref();
    let Some(sent) = backend.release_with(cell.kind, &cell.key, &cell.token, &along) else {
        release_lease(client, lease).await?;
        return Err(LockError::invalid(
            "along",
            "only one Redis deployment (a server, Sentinel or a Cluster) can carry commands along a release; the lock was released without them",
        ));
    };
    cell.mark_released();
    client.inner.watchdog.forget(cell);
    let outcome = sent.await;
    metrics::release(match &outcome {
        Ok((true, _)) => "released",
        Ok((false, _)) => "lost",
        Err(_) => "error",
    });
    match outcome? {
        (false, _) => Err(lost_error(cell)),
        (true, Some(error)) => Err(LockError::AlongRefused {
            key: cell.key.clone(),
            error,
        }),
        (true, None) => Ok(()),
    }
}

/// What dropping an unreleased guard does: renewals stop at once and the
/// release is sent in the background.
pub(crate) fn drop_lease(client: &LockClient, lease: &Lease) {
    let cell = lease.cell.clone();
    cell.mark_released();
    client.inner.watchdog.forget(&cell);
    // Without a runtime there is nothing to send the release with; the
    // lease is no longer renewed and expires within its ttl.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let backend = client.inner.backend.clone();
    runtime.spawn(async move {
        record_release(&give_back(backend.as_ref(), &cell).await);
    });
}

/// Deletes the lease's key, or gives its permit back; `false` if not ours.
pub(crate) async fn give_back(backend: &dyn Backend, cell: &LeaseCell) -> Result<bool> {
    match cell.kind {
        LeaseKind::Lock => backend.release(&cell.key, &cell.token).await,
        LeaseKind::Permit => backend.release_permit(&cell.key, &cell.token).await,
        LeaseKind::Read => backend.release_rw(&cell.key, &cell.token, false).await,
        LeaseKind::Write => backend.release_rw(&cell.key, &cell.token, true).await,
    }
}

/// The first pause before a commit is sent again; it doubles up to
/// [`COMMIT_RETRY_MAX`], with jitter, while the lease lasts.
pub(crate) const COMMIT_RETRY_FIRST: Duration = Duration::from_millis(20);
pub(crate) const COMMIT_RETRY_MAX: Duration = Duration::from_millis(500);

/// A command's arguments, its name first, each copied (see
/// [`args_of`](crate::table::args_of) for them in place).
pub(crate) fn command_args(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
    crate::table::args_of(cmd).map(<[u8]>::to_vec).collect()
}

fn record_release(outcome: &Result<bool>) {
    metrics::release(match outcome {
        Ok(true) => "released",
        Ok(false) => "lost",
        Err(_) => "error",
    });
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            drop_lease(&self.client, &self.lease);
        }
    }
}

/// Proof of holding a lock taken without a fencing token, by
/// [`LockRequest::acquire_unfenced`](crate::LockRequest::acquire_unfenced):
/// a [`LockGuard`] without [`fence`](LockGuard::fence) and
/// [`commit`](LockGuard::commit). Renewed, released and dropped as a
/// [`LockGuard`] is; its [`Lease`]'s [`fence`](Lease::fence) is 0, which no
/// fenced acquisition is ever given.
///
/// ```
/// use std::time::Duration;
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// let guard = locks.lock("orders:sweep").ttl(Duration::from_secs(30)).acquire_unfenced().await?;
/// assert_eq!(guard.key(), "orders:sweep");
/// guard.extend(Duration::from_secs(60)).await?;
/// guard.release().await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct UnfencedGuard {
    guard: LockGuard,
}

impl UnfencedGuard {
    pub(crate) fn new(guard: LockGuard) -> Self {
        UnfencedGuard { guard }
    }

    /// The key as the caller gave it.
    pub fn key(&self) -> &str {
        self.guard.key()
    }

    /// Whether the lease is still guaranteed; see [`Lease::is_held`].
    pub fn is_held(&self) -> bool {
        self.guard.is_held()
    }

    /// How much of the lease is still guaranteed locally; see [`Lease::remaining`].
    pub fn remaining(&self) -> Duration {
        self.guard.remaining()
    }

    /// Resolves once the lease can no longer be guaranteed; see
    /// [`Lease::lost`]. Without a fence, stopping by then is what keeps
    /// this holder's writes from overlapping the next holder's.
    pub async fn lost(&self) {
        self.guard.lost().await;
    }

    /// A cloneable view of this lease, to hand the lost signal to other tasks.
    pub fn lease(&self) -> Lease {
        self.guard.lease()
    }

    /// Sets the lease to `ttl` from now, if it is still ours; see [`LockGuard::extend`].
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        self.guard.extend(ttl).await
    }

    /// Gives the lock back now; see [`LockGuard::release`].
    pub async fn release(self) -> Result<()> {
        self.guard.release().await
    }
}
