//! Lock primitives for [soloist](https://docs.rs/soloist): leases on a key
//! that at most one owner holds at a time, renewed by a watchdog while their
//! guard lives, each carrying a fencing token.
//!
//! Most users depend on the `soloist` facade crate, which re-exports
//! everything here.
//!
//! # Backends
//! - [`LockClient::connect`]: one Redis server. `SET NX PX` takes the key;
//!   release and renewal are Lua scripts that act only while the caller's
//!   128-bit owner token still matches, so no client can delete or extend a
//!   lock it does not hold.
//! - [`LockClient::sentinel`]: the primary that Redis Sentinel names, asked
//!   again whenever a connection breaks or reaches a demoted server, so the
//!   client follows failovers.
//! - [`LockClient::cluster`]: a Redis Cluster; every key of a lock lives in
//!   its key's hash slot (see the [key layout](#key-layout)) and each
//!   request goes to that slot's primary, following `MOVED` and `ASK`.
//!   [`Deployment`] describes any of these (and TLS) in one value, for
//!   [`ClientBuilder::open`] and the worker's stream sources alike.
//! - [`LockClient::redlock`]: one lock over N independent Redis masters: a
//!   majority must grant an acquisition and confirm every renewal, and
//!   fences are chosen and committed so that they still increase though no
//!   node sees every acquisition (the design and its proof are in the
//!   module's source, `redlock.rs`). A node that restarts without its data
//!   must stay out for one maximum ttl before it rejoins.
//! - [`LockClient::memory`]: the same semantics inside one process, for
//!   single-process deployments and for testing code that takes locks.
//!
//! # Guarantees, and their limits
//! - **Mutual exclusion** holds as long as the Redis server (for Redlock, a
//!   majority of the nodes) keeps its data:
//!   a lock key is never handed to a second owner while the first owner's
//!   lease is valid. One Redis node cannot promise more than it keeps: with
//!   asynchronous replication, a failover to a replica that had not yet
//!   received the lock key can hand it to a second owner
//!   ([`ClientBuilder::min_replicas`] narrows that window, and says what it
//!   cannot close), and an eviction
//!   policy other than `noeviction` can delete a held key under memory
//!   pressure (the client warns about the latter on connect).
//! - **The lost signal** ([`LockGuard::lost`]) fires before the server can
//!   give the key away: its deadline counts from the *send* time of the last
//!   confirmed renewal, with the ttl in whole milliseconds as Redis takes
//!   it, and keeps a drift margin (1 % of the ttl + 3 ms). When an
//!   [`extend`](LockGuard::extend) overlaps a renewal, only the newest
//!   request sent moves the deadline. It cannot stop a process that is
//!   paused (GC, swap, SIGSTOP) from acting after the deadline without
//!   looking.
//! - **Fencing tokens** ([`LockGuard::fence`]) are issued in the same atomic
//!   step as the acquisition and strictly increase per key across all
//!   holders, releases and expiries. They close the gap the lost signal
//!   cannot: a resource that remembers the highest fence it accepted refuses
//!   a paused holder's late write ([`LockClient::fenced_set`] does this for a
//!   Redis value; the same check works as `WHERE fence <= $1` in SQL). A
//!   fence counter the server loses (restart without persistence, failover)
//!   restarts from the server's clock in microseconds, so fences keep
//!   increasing as long as that clock does not step back. Counters expire a
//!   week after they were started, and start again from the clock the same
//!   way, so a lock on every order id does not leave a key per id forever.
//! - **Liveness**: a holder that crashes, panics or is aborted stops renewing
//!   and its key expires within one ttl; a dropped guard releases at once.
//!   A *leaked* guard (`std::mem::forget`) looks exactly like a guard held on
//!   purpose and keeps renewing; bound that with [`LockRequest::max_hold`].
//! - **Waiting** is woken by the holder's release, not by polling: waiting
//!   clients queue per key in Redis, and a release wakes the first of them
//!   still listening (Redis pub/sub, one channel per client), so the lock
//!   passes between clients first come, first served and one release sets
//!   off one retry. Jittered polling is only the fallback for a lost wake-up
//!   or an expired key; tasks of one process queue locally, so a process
//!   puts one contender on the wire per key.
//!
//! # Key layout
//! Under the client's prefix (default `soloist:`), a lock on key `K` keeps
//! `lock:T` (the owner token), `fence:T` (the fence counter, when `K` names
//! its own), `waiters:T` (the queue of waiting clients) and the fenced
//! records written under `K` as `fenced:T`, where `T` is `K` written so that
//! every one of these keys lands in the Redis Cluster hash slot of `K`
//! itself ([`hash_slot`]`(K)`):
//! - `{K}` for a key without a hash tag: `orders:42` → `soloist:lock:{orders:42}`;
//! - `=K` for a key with one, whose tag then decides: `{report}:monday` →
//!   `soloist:lock:={report}:monday`, in the slot of `report`;
//! - `{=K}` for a key with a `}` outside a hash tag, which gets a slot of
//!   its own.
//!
//! So everything one lock needs is one slot, and keys meant to be used
//! together are put in one slot by giving them one hash tag: a fence
//! counter shared by several keys
//! ([`LockRequest::fence_counter`]`("{report}")` for `{report}:monday`), a
//! fenced record or an effect beside its lock
//! ([`colocated`]`("orders:42", ":receipt")` names `{orders:42}:receipt`).
//! On a Redis Cluster a request that would need two slots in one script is
//! refused with [`LockError::InvalidArgument`] before anything is written;
//! on a single server every name works. Wake-ups go over the channel
//! `wake:<client id>` under the same prefix.
//!
//! A semaphore named `S` ([`LockClient::semaphore`]) keeps `sem:T` (its
//! holders: a sorted set of owner tokens scored by when each lease runs
//! out on the server's clock), `sem-fence:T` (its fence counter) and
//! `sem-waiters:T` (its queue of waiting clients), `T` being `S` written as
//! above: one slot per semaphore. Its wake-ups carry the name after a NUL
//! byte and `semaphore:`, which keeps them apart from a lock's.
//!
//! # Semaphores
//! [`LockClient::semaphore`]`(name, n)` lets at most `n` holders in at once.
//! Each [`PermitGuard`] is a lease as a [`LockGuard`] is (renewed by the
//! watchdog, a lost signal, a fence, release on drop), and a dead holder's
//! permit comes back within one ttl: each holder is a member of its own,
//! dropped by the next acquisition once its lease runs out, never a shared
//! counter that a crash leaks or a double release inflates. Releases wake
//! waiting clients as a lock's do. Semaphores work on one server,
//! Sentinel, a Cluster and the memory backend; a Redlock refuses them with
//! [`LockError::InvalidArgument`] (a count kept on independent masters has
//! no majority that could agree on it).
//!
//! A read-write lock named `R` ([`LockClient::rw_lock`]) keeps
//! `rw-readers:T`, `rw-writer:T`, `rw-intent:T` (a waiting writer's),
//! `rw-fence:T` and `rw-waiters:T`, one slot per lock.
//!
//! # Which primitives work where
//! | primitive | one server, Sentinel | Cluster | memory | Redlock |
//! | --- | --- | --- | --- | --- |
//! | [`LockClient::lock`] | yes | yes | yes | yes |
//! | [`LockClient::lock_all`] | yes | keys of one slot | yes | yes |
//! | [`LockClient::semaphore`] | yes | yes | yes | refused |
//! | [`LockClient::rw_lock`] | yes | yes | yes | refused |
//! | [`LockClient::rate_limit`] | yes | yes | yes | refused |
//!
//! What this is not: exactly-once execution. A lock gives "at most one
//! holder at a time"; whether protected work runs once depends on what the
//! work does when its lease is lost, which is what fencing is for.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use soloist::{LockClient, LockError};
//! # async fn demo() -> Result<(), LockError> {
//! let locks = LockClient::memory(); // or LockClient::connect("redis://127.0.0.1:6379").await?
//! let guard = locks.lock("orders:42").ttl(Duration::from_secs(30)).acquire().await?;
//! tokio::select! {
//!     () = guard.lost() => eprintln!("lease lost; stop before doing harm"),
//!     () = tokio::time::sleep(Duration::from_millis(10)) => {} // the protected work
//! }
//! guard.release().await?;
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod background;
mod client;
mod deployment;
mod error;
mod fence;
mod guard;
mod lease;
mod memory;
pub mod metrics;
mod multi;
mod node;
mod notice;
mod pool;
mod pubsub;
mod queue;
mod rate;
mod redlock;
mod request;
mod rwlock;
mod semaphore;
mod sentinel;
mod single;
mod slot;
mod tls;
mod token;
mod watchdog;

pub use client::{ClientBuilder, LockClient};
pub use deployment::Deployment;
pub use error::{LockError, Result};
pub use fence::{FencedValue, FencedWrite, MAX_EFFECT_ARGS, MAX_RECORD_TTL};
pub use guard::LockGuard;
pub use lease::Lease;
pub use multi::{MAX_KEYS, MultiLockGuard, MultiLockRequest};
#[doc(hidden)]
pub use node::invoke_script;
#[doc(hidden)]
pub use pool::{Conn, SharedConnection};
pub use rate::{Admission, MAX_RATE_COUNT, MAX_RATE_PERIOD, RateLimit};
/// The redis crate this one speaks through, for [`LockGuard::commit`]'s effects.
#[doc(no_inline)]
pub use redis;
pub use request::{DEFAULT_TTL, LockRequest, MAX_TTL, MIN_TTL};
pub use rwlock::{RwLock, RwLockGuard, RwLockRequest};
pub use semaphore::{MAX_PERMITS, PermitGuard, SemaphoreRequest};
pub use slot::{colocated, hash_slot};
