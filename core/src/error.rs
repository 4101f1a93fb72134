use std::time::Duration;

use crate::backend::Tally;

/// Everything that can go wrong while taking, keeping or giving back a lock.
///
/// The variants separate the outcomes a caller reacts to differently:
/// [`Busy`](LockError::Busy) and [`Timeout`](LockError::Timeout) mean "someone
/// else has it", [`Lost`](LockError::Lost) means "you no longer have it",
/// [`InvalidArgument`](LockError::InvalidArgument) is a bug in the caller, and
/// the remaining variants are the backend failing.
///
/// ```
/// use soloist::{LockClient, LockError};
/// # async fn demo() -> Result<(), LockError> {
/// let locks = LockClient::memory();
/// let _held = locks.lock("report").acquire().await?;
/// match locks.lock("report").acquire().await {
///     Err(LockError::Busy { key }) => assert_eq!(key, "report"),
///     other => panic!("expected Busy, got {other:?}"),
/// }
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held by another owner and the request did not ask to wait.
    /// It does not say when the holder's lease ends: an acquisition that does
    /// not wait is usually decided by one `SET … NX`, which does not read it.
    #[error("lock `{key}` is held by another owner")]
    Busy {
        /// The key as the caller gave it.
        key: String,
    },
    /// The lock stayed held by another owner for the whole wait.
    #[error("lock `{key}` still held by another owner after waiting {waited:?}")]
    Timeout {
        /// The key as the caller gave it.
        key: String,
        /// How long the request waited.
        waited: Duration,
    },
    /// The lease is gone: it expired, or another owner holds the key now.
    #[error("lease on `{key}` was lost")]
    Lost {
        /// The key as the caller gave it.
        key: String,
    },
    /// Redlock: too few nodes answered to decide. Neither a majority granted
    /// the lock nor a majority refused it (which would be
    /// [`Busy`](LockError::Busy)), or a renewal or release could not reach a
    /// majority.
    #[error(
        "lock `{key}`: no majority of nodes agreed ({granted} granted, {refused} refused, {unreachable} unreachable)"
    )]
    NoQuorum {
        /// The key as the caller gave it.
        key: String,
        /// Nodes that granted the request.
        granted: usize,
        /// Nodes that refused it: held by another owner, or not ours.
        refused: usize,
        /// Nodes that failed or did not answer in time.
        unreachable: usize,
    },
    /// An argument was out of range or malformed; `name` says which.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The name of the offending argument, e.g. `ttl`.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The backend could not be reached, or the connection broke.
    #[error("connection to {server} failed: {error}")]
    Connection {
        /// Where it was to reach: a server's `host:port`, the master a
        /// Sentinel deployment names, or a cluster's nodes (never a
        /// password).
        server: String,
        /// What failed.
        error: redis::RedisError,
    },
    /// The backend answered with an error or an unexpected reply.
    #[error("the lock backend answered with an error: {0}")]
    Protocol(redis::RedisError),
    /// [`LockGuard::commit`](crate::LockGuard::commit): the record was
    /// written (the commit counts as done), but Redis refused one of its
    /// effects at run time, e.g. with `WRONGTYPE`; the refused effect
    /// changed nothing, and the others were applied.
    #[error("`{resource}` was recorded, but Redis refused one of its effects: {error}")]
    EffectRefused {
        /// The record's resource.
        resource: String,
        /// Redis' error for the first refused effect.
        error: String,
    },
    /// [`LockGuard::release_with`](crate::LockGuard::release_with): the
    /// key was given back, but Redis refused one of the commands sent along
    /// with it (or, on a cluster, could not be reached for it); that
    /// command changed nothing, and the others were applied.
    #[error("`{key}` was released, but a command sent along was refused: {error}")]
    AlongRefused {
        /// The key as the caller gave it.
        key: String,
        /// Redis' error for the first refused command.
        error: String,
    },
    /// [`ClientBuilder::min_replicas`](crate::ClientBuilder::min_replicas):
    /// fewer replicas than required acknowledged the write within the
    /// timeout. An acquisition gave the key back; a renewal or an
    /// extension did not move the lease's deadline.
    #[error("lock `{key}`: {acknowledged} of {wanted} required replicas acknowledged the write")]
    ReplicasUnconfirmed {
        /// The key as the caller gave it (the first of a renewal batch).
        key: String,
        /// Replicas required.
        wanted: u32,
        /// Replicas that acknowledged within the timeout.
        acknowledged: u32,
    },
    /// The backend did not answer within the operation timeout.
    #[error("the lock backend did not answer `{op}` within {after:?}")]
    Unresponsive {
        /// The operation that timed out.
        op: &'static str,
        /// The timeout that ran out.
        after: Duration,
    },
}

/// `Result` with [`LockError`] as the default error.
pub type Result<T, E = LockError> = std::result::Result<T, E>;

impl LockError {
    pub(crate) fn no_quorum(key: &str, tally: Tally) -> Self {
        LockError::NoQuorum {
            key: key.to_owned(),
            granted: tally.granted,
            refused: tally.refused,
            unreachable: tally.unreachable,
        }
    }

    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        LockError::InvalidArgument {
            name,
            reason: reason.into(),
        }
    }

    /// Whether the error came from the backend's transport (connection, timeout),
    /// as opposed to the lock's state or the caller's arguments.
    pub fn is_backend(&self) -> bool {
        matches!(
            self,
            LockError::Connection { .. }
                | LockError::Protocol(_)
                | LockError::Unresponsive { .. }
                | LockError::NoQuorum { .. }
        )
    }
}

impl LockError {
    /// Whether the same call may succeed if made again: the backend could
    /// not be reached or did not answer in time, too few Redlock nodes
    /// answered, or the server answered that it cannot take writes for now
    /// (`READONLY`, `MASTERDOWN`, `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`: a
    /// failover or restart in progress). A transient error says nothing
    /// about whether the call took effect.
    ///
    /// ```
    /// use std::time::Duration;
    /// use soloist::LockError;
    /// let timeout = LockError::Unresponsive { op: "release", after: Duration::from_secs(1) };
    /// assert!(timeout.is_transient());
    /// assert!(!LockError::Lost { key: "k".into() }.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            LockError::Connection { .. }
            | LockError::Unresponsive { .. }
            | LockError::NoQuorum { .. } => true,
            LockError::Protocol(err) => matches!(
                err.code(),
                Some("READONLY" | "MASTERDOWN" | "LOADING" | "TRYAGAIN" | "CLUSTERDOWN")
            ),
            _ => false,
        }
    }
}

/// For requests that go around the lock client's pool (the worker's
/// history, registry and inspection on the client's connection): the
/// deployment is not named.
impl From<redis::RedisError> for LockError {
    fn from(err: redis::RedisError) -> Self {
        LockError::from_redis("Redis", err)
    }
}

impl LockError {
    /// `err`, met talking to `server`: a [`Connection`](Self::Connection)
    /// error if the transport failed, else a [`Protocol`](Self::Protocol)
    /// one.
    pub(crate) fn from_redis(server: &str, err: redis::RedisError) -> Self {
        if crate::pool::is_transport_error(&err) {
            LockError::Connection {
                server: server.to_owned(),
                error: err,
            }
        } else {
            LockError::Protocol(err)
        }
    }
}
