//! # soloist: run a job once across a fleet
//!
//! Teams run the same service on many replicas; some work must happen on
//! only one of them at a time: a nightly report, a cron sweep, the charge
//! for invoice 42 that a queue delivered twice. soloist takes an
//! auto-renewing Redis lock — watchdog extension, fencing token, lost-lease
//! signal — around that work.
//!
//! This crate is the facade: depend on it alone. It re-exports the lock
//! primitives of `soloist-core`.
//!
//! ```no_run
//! use std::time::Duration;
//! use soloist::{LockClient, LockError};
//!
//! # async fn demo() -> Result<(), LockError> {
//! let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
//! let guard = locks
//!     .lock("orders:42")
//!     .ttl(Duration::from_secs(30))
//!     .wait(Duration::from_secs(5))
//!     .acquire()
//!     .await?;
//! // ... the work only one replica may do, writing with guard.fence() ...
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! What a lock promises, and what it cannot, is set out in the
//! [`soloist_core`] crate documentation; the short form: at most one holder
//! at a time while Redis keeps its data, a lost signal that fires before the
//! server can hand the key to someone else, and fencing tokens that let the
//! resource itself refuse a stale holder's writes.

pub use soloist_core::{
    ClientBuilder, DEFAULT_TTL, FencedValue, FencedWrite, Lease, LockClient, LockError, LockGuard,
    LockRequest, MAX_TTL, MIN_TTL, Result, metrics,
};
