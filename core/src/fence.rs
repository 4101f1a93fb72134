//! Fenced writes: the end-to-end use of a fencing token.
//!
//! A lease can end without its holder noticing in time: a stop-the-world
//! pause, a swapped-out process, a network partition. When the holder resumes
//! it may still believe it holds the lock. The fencing token closes that gap
//! only if the *resource* checks it: every write carries the writer's fence,
//! and the resource refuses a fence lower than the highest it has accepted.

use std::time::Duration;

use crate::backend::Record;
use crate::error::{LockError, Result};

/// The longest a fenced record may be kept before it expires: a century.
pub const MAX_RECORD_TTL: Duration = crate::request::LONGEST;

/// The most arguments (the command's name included) one effect of
/// [`LockGuard::commit`](crate::LockGuard::commit) may have: a Lua script
/// unpacks a command's arguments onto its stack, which holds about 8,000.
pub const MAX_EFFECT_ARGS: usize = 4096;

/// Checks a fenced write before anything is sent, so that nothing the
/// server could refuse halfway is ever written in part.
pub(crate) fn check_record(resource: &str, record: &Record<'_>) -> Result<()> {
    if resource.is_empty() {
        return Err(LockError::invalid("resource", "must not be empty"));
    }
    // A ttl under a millisecond is kept for one: Redis counts whole ones.
    if let Some(ttl) = record.ttl
        && (ttl.is_zero() || ttl > MAX_RECORD_TTL)
    {
        return Err(LockError::invalid(
            "ttl",
            format!("must be from 1 ns to a century ({MAX_RECORD_TTL:?}), got {ttl:?}"),
        ));
    }
    for effect in record.effects {
        if effect.is_empty() {
            return Err(LockError::invalid("effects", "a command has no name"));
        }
        if effect.len() > MAX_EFFECT_ARGS {
            return Err(LockError::invalid(
                "effects",
                format!(
                    "a command has {} arguments; at most {MAX_EFFECT_ARGS} fit one effect",
                    effect.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The outcome of [`LockClient::fenced_set`](crate::LockClient::fenced_set).
///
/// ```
/// use soloist::{FencedWrite, LockClient};
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// assert_eq!(locks.fenced_set("report", 7, b"new").await?, FencedWrite::Accepted);
/// assert_eq!(
///     locks.fenced_set("report", 6, b"stale").await?,
///     FencedWrite::Rejected { highest: 7 }
/// );
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FencedWrite {
    /// The fence was at least the highest seen; the value is stored.
    Accepted,
    /// A higher fence was seen before: the writer's lease is stale, nothing was stored.
    Rejected {
        /// The highest fence the resource has accepted.
        highest: u64,
    },
    /// The guard no longer holds its lock ([`LockGuard::commit`](crate::LockGuard::commit)):
    /// nothing was stored and no effect applied.
    NotHeld,
}

impl FencedWrite {
    /// Whether the value was stored.
    pub fn is_accepted(self) -> bool {
        matches!(self, FencedWrite::Accepted)
    }
}

/// What a fenced resource holds: the last accepted value and its fence.
///
/// ```
/// use soloist::LockClient;
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::memory();
/// locks.fenced_set("report", 3, b"v3").await?;
/// let stored = locks.fenced_get("report").await?.expect("written above");
/// assert_eq!((stored.fence, stored.value.as_slice()), (3, &b"v3"[..]));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FencedValue {
    /// The fence of the write that stored `value`.
    pub fence: u64,
    /// The stored bytes.
    pub value: Vec<u8>,
}
