//! The one internal interface every lock backend implements, so that guards,
//! the watchdog and waiting are written once for all of them.

use std::fmt;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::error::Result;
use crate::fence::{FencedValue, FencedWrite};
use crate::notice::Listener;
use crate::pool::Conn;

/// What one acquisition attempt found; `A` is what an acquisition yields:
/// the fence from a backend, the guard from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt<A = u64> {
    /// The lock is ours.
    Acquired(A),
    /// Another owner holds it; its lease runs out in `expires_in` if known.
    /// Only a waiting attempt uses it (to sleep no longer than the lease),
    /// so the single-node fast path, which never serves a waiting attempt,
    /// does not read it: `None` there saves a `PTTL` per acquisition.
    Held { expires_in: Option<Duration> },
    /// Redlock only: neither a majority granted it nor a majority refused it.
    #[cfg_attr(not(feature = "redlock"), allow(dead_code))]
    NoQuorum(Tally),
}

/// How the nodes of a Redlock answered one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) granted: usize,
    pub(crate) refused: usize,
    pub(crate) unreachable: usize,
}

/// What a renewal found for one lease: `Ok(true)` renewed, `Ok(false)` not
/// ours any more, `Err` undecided (too few Redlock nodes answered either way).
pub(crate) type Renewed = std::result::Result<bool, Tally>;

/// What one fenced write stores, for how long, and what it applies with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub(crate) value: &'a [u8],
    /// Expire the record after this long; `None`: keep it.
    pub(crate) ttl: Option<Duration>,
    /// Commands (each as its arguments) to run atomically with the write,
    /// and only if it is accepted. Only a single Redis node can do this.
    pub(crate) effects: &'a [Vec<Vec<u8>>],
    /// Write only while this (key, owner token) still holds its lock.
    pub(crate) owner: Option<(&'a str, &'a str)>,
    /// Names one commit, so that sending it again after a lost reply finds
    /// it applied instead of applying its effects twice.
    pub(crate) commit: Option<&'a str>,
}

/// What a release with commands sent along found: whether the lease was
/// ours, and the first refusal of a command.
pub(crate) type ReleasedWith = (bool, Option<String>);

/// The error of a backend that keeps no read-write locks (a Redlock).
pub(crate) fn no_rw_locks() -> crate::error::LockError {
    crate::error::LockError::invalid(
        "rw_lock",
        "a Redlock cannot hold read-write locks; use one Redis server, Sentinel, a Cluster or the memory backend",
    )
}

/// How an attempt that is prepared to wait stands in its process's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waiting {
    /// More of this process's waiters for the key queue behind this one:
    /// if it takes the lock, the process stays in the key's queue for them.
    pub(crate) more: bool,
}

/// What a lease holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum LeaseKind {
    /// A lock key, held by one owner at a time.
    #[default]
    Lock,
    /// One permit of a semaphore, whose name is the lease's key.
    Permit,
    /// A read-write lock held for reading, named by the lease's key.
    Read,
    /// A read-write lock held for writing, named by the lease's key.
    Write,
}

/// One lease to renew in a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Renewal<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    pub(crate) ttl: Duration,
    pub(crate) kind: LeaseKind,
}

/// The error of a backend that keeps no semaphores (a Redlock).
pub(crate) fn no_semaphores() -> crate::error::LockError {
    crate::error::LockError::invalid(
        "semaphore",
        "a Redlock cannot hold semaphore permits (a permit counted on independent masters has no majority to agree on); use one Redis server, Sentinel, a Cluster or the memory backend",
    )
}

pub(crate) trait Backend: Send + Sync + fmt::Debug + 'static {
    /// Takes `key` for `token` if free, issuing a fence from the counter
    /// named `counter` (usually the key itself) atomically with it.
    /// A `waiting` caller that finds it held joins the key's queue, to be
    /// woken by the holder's release.
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        counter: &'a str,
        token: &'a str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>>;

    /// As [`try_acquire`](Backend::try_acquire), issuing no fence: an
    /// acquisition yields `Acquired(0)`. Backends whose fence is part of
    /// how they take a key (a Redlock) refuse.
    fn try_acquire_unfenced<'a>(
        &'a self,
        _key: &'a str,
        _token: &'a str,
        _ttl: Duration,
        _waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(futures::future::ready(Err(
            crate::error::LockError::invalid(
                "unfenced",
                "a Redlock takes a key and chooses its fence in the same two phases, so an unfenced acquisition saves it nothing and is not offered; use `acquire`",
            ),
        )))
    }

    /// Takes one of `permits` permits of the semaphore `name` for `token`
    /// if fewer are held, issuing a fence from the semaphore's own counter
    /// atomically with it; holders whose lease ran out are dropped first.
    /// A `waiting` caller that finds every permit held joins the
    /// semaphore's queue, to be woken by a release.
    fn try_acquire_permit<'a>(
        &'a self,
        _name: &'a str,
        _token: &'a str,
        _permits: u32,
        _ttl: Duration,
        _waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(futures::future::ready(Err(no_semaphores())))
    }

    /// Gives back `token`'s permit of `name` and wakes a waiter; `false`,
    /// changing nothing, when `token` holds none (released before, expired).
    fn release_permit<'a>(
        &'a self,
        _name: &'a str,
        _token: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(futures::future::ready(Err(no_semaphores())))
    }

    /// Admits one start under the rate limit `name`, whose starts are at
    /// least `interval` apart (see `scripts/rate_gcra.lua`): `None` when
    /// admitted, or how long until a start would be.
    fn admit<'a>(
        &'a self,
        _name: &'a str,
        _interval: Duration,
    ) -> BoxFuture<'a, Result<Option<Duration>>> {
        Box::pin(futures::future::ready(Err(
            crate::error::LockError::invalid(
                "rate_limit",
                "a Redlock cannot keep a rate limit (its nodes have no common clock and no majority over a count); use one Redis server, Sentinel, a Cluster or the memory backend",
            ),
        )))
    }

    /// Takes the read-write lock `name` for `token`, for writing if
    /// `write`, else for reading (see `scripts/rw_acquire.lua`); `request`
    /// names the acquisition over all its attempts, so that a waiting
    /// writer's intent is recognised as its own.
    #[allow(clippy::too_many_arguments)]
    fn try_acquire_rw<'a>(
        &'a self,
        _name: &'a str,
        _token: &'a str,
        _request: &'a str,
        _write: bool,
        _ttl: Duration,
        _waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        Box::pin(futures::future::ready(Err(no_rw_locks())))
    }

    /// Gives back `token`'s hold of the read-write lock `name` and wakes its
    /// waiters; `false`, changing nothing, when `token` holds nothing.
    fn release_rw<'a>(
        &'a self,
        _name: &'a str,
        _token: &'a str,
        _write: bool,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(futures::future::ready(Err(no_rw_locks())))
    }

    /// Renews every lease still owned by its token; one outcome per lease, in order.
    fn extend<'a>(&'a self, leases: &'a [Renewal<'a>]) -> BoxFuture<'a, Result<Vec<Renewed>>>;

    /// Deletes `key` if `token` still owns it and wakes its waiters; `false` if not ours.
    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>>;

    /// Gives back `token`'s lease of `key` (a lock's or a permit's, by
    /// `kind`) and runs the commands `along` (each as its arguments) in the
    /// same round trip: whether the lease was ours, and the first refusal
    /// of a command. `None` where commands cannot go along: only one Redis
    /// deployment carries them (see `along.rs`).
    fn release_with<'a>(
        &'a self,
        _kind: LeaseKind,
        _key: &'a str,
        _token: &'a str,
        _along: &'a [Vec<Vec<u8>>],
    ) -> Option<BoxFuture<'a, Result<ReleasedWith>>> {
        None
    }

    /// The one Redis server this backend talks to, when batched claims and
    /// settlements can run there (see `batch.rs`): not on a cluster, a
    /// Redlock or the memory backend.
    fn batch_node(&self) -> Option<&crate::node::RedisNode> {
        None
    }

    /// Starts listening for the wake-ups of `key`'s waiters, at once: a
    /// wake-up that reaches this process from now on reaches the listener.
    /// A waiter listens before the attempt that queues it.
    fn listen(&self, key: &str) -> Listener;

    /// Makes sure wake-ups can reach this process (a Redis backend
    /// subscribes), and records on `listener` since when they can.
    fn subscribe<'a>(&'a self, listener: &'a mut Listener) -> BoxFuture<'a, ()>;

    /// Stores `record` under `resource` unless a higher fence was seen there.
    fn fenced_set<'a>(
        &'a self,
        resource: &'a str,
        fence: u64,
        record: Record<'a>,
    ) -> BoxFuture<'a, Result<FencedWrite>>;

    /// The backend's clock, which every client of it shares; `None` when the
    /// backend lives in this process and the local clock is that clock.
    fn server_time(&self) -> BoxFuture<'_, Result<Option<SystemTime>>>;

    /// Leases whose renewals can share one call are in the same group: on a
    /// Redis Cluster those whose keys share a hash slot; everywhere else all.
    fn renewal_group(&self, _key: &str) -> u16 {
        0
    }

    /// Reads what [`Backend::fenced_set`] stored: the fence and the value.
    fn fenced_get<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<FencedValue>>>;

    /// The connection this backend's requests go over, for commands of
    /// other parts (the worker's run history and registry, inspection);
    /// `None` unless the backend is one Redis deployment.
    fn connection(&self) -> BoxFuture<'_, Result<Option<Conn>>> {
        Box::pin(async { Ok(None) })
    }

    /// The prefix of every key this backend writes; `None` unless the
    /// backend is one Redis deployment.
    fn key_prefix(&self) -> Option<&str> {
        None
    }
}
