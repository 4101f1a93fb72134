//! Lock primitives for [soloist](https://docs.rs/soloist): leases on a key
//! that at most one owner holds at a time, renewed by a watchdog while their
//! guard lives, each carrying a fencing token.
//!
//! Most users depend on the `soloist` facade crate, which re-exports
//! everything here.
//!
//! What a lock promises, and what it cannot, and where its keys live, is
//! set out in the
//! [soloist documentation](https://docs.rs/soloist/latest/soloist/#locks).
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

mod along;
mod backend;
mod background;
mod batch;
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
#[cfg(feature = "redlock")]
mod redlock;
mod request;
mod rwlock;
mod semaphore;
#[cfg(feature = "sentinel")]
mod sentinel;
mod single;
mod slot;
mod table;
mod tls;
mod token;
mod watchdog;

pub use batch::{Claim, Claimed, Settle, Settled};
pub use client::{ClientBuilder, LockClient};
pub use deployment::Deployment;
pub use error::{LockError, Result};
pub use fence::{FencedValue, FencedWrite, MAX_EFFECT_ARGS, MAX_RECORD_TTL};
pub use guard::{LockGuard, UnfencedGuard};
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
pub use token::{TokenInfo, owner_id, parse_token};
