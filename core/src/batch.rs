//! Many locks claimed in one call, and many settled in one call: the
//! round trips of a batch of short runs (a queue consumer's) do not grow
//! with the batch.
//!
//! Both calls are scripts built around the single-key scripts' own text
//! (`acquire.lua`, `fenced_set.lua`, `release.lua`), so every key is taken,
//! recorded and given back exactly as on its own: the same fences, the same
//! waiting-queue marks, the same commit ids. They need one Redis server
//! (or the primary Sentinel names), where one script may touch any key.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use crate::backend::{LeaseKind, Record};
use crate::client::LockClient;
use crate::error::{LockError, Result};
use crate::fence::{FencedValue, FencedWrite, check_record};
use crate::guard::{COMMIT_RETRY_FIRST, COMMIT_RETRY_MAX, LockGuard, command_args};
use crate::lease::{Lease, LeaseCell};
use crate::metrics;
use crate::node::{RawClaim, RawSettle};
use crate::request::{Abandon, check_ttl};
use crate::token::new_token;

/// One key of [`LockClient::claim_all`]: take its lock unless its record
/// already holds a value, and the commands that go with either outcome.
///
/// ```
/// use std::time::Duration;
/// use soloist::{Claim, redis};
/// let mut ack = redis::cmd("XACK");
/// ack.arg("orders").arg("workers").arg("1-0");
/// let claim = Claim::new("order:42")
///     .ttl(Duration::from_secs(30))
///     .unless_recorded("order:42")
///     .if_recorded(vec![ack]);
/// # let _ = claim;
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Claim {
    key: String,
    ttl: Duration,
    max_hold: Option<Duration>,
    record: Option<String>,
    if_recorded: Vec<redis::Cmd>,
    if_acquired: Vec<redis::Cmd>,
    if_abandoned: Vec<redis::Cmd>,
}

impl Claim {
    /// A claim of the lock on `key`, with the default ttl.
    pub fn new(key: impl Into<String>) -> Self {
        Claim {
            key: key.into(),
            ttl: crate::request::DEFAULT_TTL,
            max_hold: None,
            record: None,
            if_recorded: Vec::new(),
            if_acquired: Vec::new(),
            if_abandoned: Vec::new(),
        }
    }

    /// The lease's ttl, renewed by the watchdog, as
    /// [`LockRequest::ttl`](crate::LockRequest::ttl).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Stop renewing after this long, as
    /// [`LockRequest::max_hold`](crate::LockRequest::max_hold).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// Read the fenced record `resource` first (see
    /// [`LockClient::fenced_set`]): when it holds a value, the lock is not
    /// taken and the claim comes back [`Claimed::Recorded`]. On a cluster
    /// it would have to share the key's hash slot; batches run on one
    /// server only.
    pub fn unless_recorded(mut self, resource: impl Into<String>) -> Self {
        self.record = Some(resource.into());
        self
    }

    /// Commands run in the same call when the record is found.
    pub fn if_recorded(mut self, commands: Vec<redis::Cmd>) -> Self {
        self.if_recorded = commands;
        self
    }

    /// Commands run in the same call when the lock is taken; their replies
    /// come back with the guard.
    pub fn if_acquired(mut self, commands: Vec<redis::Cmd>) -> Self {
        self.if_acquired = commands;
        self
    }

    /// Commands that undo the commands `if_acquired` (a counter's
    /// decrement) when the call fails as a whole (a lost reply, a timeout):
    /// they run, atomically with the key's release in the background, only
    /// if the key is found held by this claim, that is only if the call did
    /// take it. A call that runs only after that release was tried (still
    /// queued behind a stall) keeps its key until its ttl and its commands
    /// `if_acquired` stay done.
    pub fn if_abandoned(mut self, commands: Vec<redis::Cmd>) -> Self {
        self.if_abandoned = commands;
        self
    }
}

/// What [`LockClient::claim_all`] found for one claim.
#[derive(Debug)]
#[non_exhaustive]
pub enum Claimed {
    /// The record holds a value; the lock was not taken. Then the replies
    /// of the claim's commands `if_recorded`, in order (`Value::Nil` for
    /// one Redis refused).
    Recorded(FencedValue, Vec<Value>),
    /// The lock is held, with a fresh fence, and renewed while the guard lives.
    Acquired {
        /// The held lock.
        guard: LockGuard,
        /// The replies of the claim's commands `if_acquired`, in order
        /// (`Value::Nil` for one Redis refused).
        replies: Vec<Value>,
    },
    /// Another owner holds the key; its lease runs out in `expires_in`.
    Held {
        /// The holder's remaining ttl, if Redis knew it.
        expires_in: Option<Duration>,
    },
    /// Redis refused this claim (its record or fence counter holds a value
    /// of the wrong type, say): the lock was not kept (given back in the
    /// same call if it had been taken), its commands did not run, and the
    /// other claims of the call were made as if it were not there.
    Failed {
        /// Redis' error.
        error: String,
    },
}

/// One held lock to settle with [`LockClient::settle_all`]: its record
/// written (if any), the lock given back, and commands that depend on
/// whether the record was written.
///
/// ```no_run
/// use soloist::{LockClient, Settle, redis};
/// # async fn demo() -> Result<(), soloist::LockError> {
/// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
/// let guard = locks.lock("order:42").acquire().await?;
/// let mut ack = redis::cmd("XACK");
/// ack.arg("orders").arg("workers").arg("1-0");
/// let settle = Settle::new(guard)
///     .record("order:42", b"receipt-1".to_vec(), None, Vec::new())
///     .if_committed(vec![ack]);
/// let settled = locks.settle_all(vec![settle]).await?;
/// assert!(settled[0].write.is_some_and(|w| w.is_accepted()));
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct Settle {
    guard: LockGuard,
    record: Option<SettleRecord>,
    if_committed: Vec<redis::Cmd>,
    otherwise: Vec<redis::Cmd>,
    together: Vec<Vec<Vec<u8>>>,
    commit: String,
}

impl Settle {
    /// Settles `guard`'s lock: given back, nothing else unless asked.
    pub fn new(guard: LockGuard) -> Self {
        Settle {
            guard,
            record: None,
            if_committed: Vec::new(),
            otherwise: Vec::new(),
            together: Vec::new(),
            commit: new_token(),
        }
    }

    /// Commit `value` to `resource` with the guard's fence and apply
    /// `effects`, as [`LockGuard::commit`] does (only while the guard still
    /// holds its lock, atomically, once even if sent again).
    pub fn record(
        mut self,
        resource: impl Into<String>,
        value: Vec<u8>,
        ttl: Option<Duration>,
        effects: Vec<redis::Cmd>,
    ) -> Self {
        self.record = Some(SettleRecord(
            resource.into(),
            value,
            ttl,
            effects.iter().map(command_args).collect(),
        ));
        self
    }

    /// Commands run after the release when the record was written.
    pub fn if_committed(mut self, commands: Vec<redis::Cmd>) -> Self {
        self.if_committed = commands;
        self
    }

    /// Commands run once for the whole [`LockClient::settle_all`] call, at
    /// its end, gathered from every settlement whose record was written:
    /// the commands that share all their arguments but the last run as one
    /// command with every last argument, in the order of the settlements
    /// (`XACK orders workers 1-0` and `XACK orders workers 2-0` run as
    /// `XACK orders workers 1-0 2-0`). Only for commands where that is the
    /// same as running each (`XACK`, `HDEL`, `SREM`, `DEL`); each needs a
    /// name and at least one argument. A refused gathered command is
    /// reported in [`Settled::command_refused`] of every settlement it
    /// gathered from.
    ///
    /// ```
    /// # use soloist::{LockGuard, Settle, redis};
    /// # fn demo(guard: LockGuard) -> Settle {
    /// let mut ack = redis::cmd("XACK");
    /// ack.arg("orders").arg("workers").arg("1-0");
    /// Settle::new(guard)
    ///     .record("order:42", b"receipt-1".to_vec(), None, Vec::new())
    ///     .if_committed_together(vec![ack])
    /// # }
    /// ```
    pub fn if_committed_together(mut self, commands: Vec<redis::Cmd>) -> Self {
        self.together = commands.iter().map(command_args).collect();
        self
    }

    /// Commands run after the release when the record was not written, or
    /// there was none.
    pub fn otherwise(mut self, commands: Vec<redis::Cmd>) -> Self {
        self.otherwise = commands;
        self
    }

    /// Checks the settlement as [`LockClient::settle_all`] will, before
    /// anything is sent: a record with an empty resource or an out-of-range
    /// ttl, a command without a name or with too many arguments, or a
    /// command gathered over the call without an argument, is an
    /// [`LockError::InvalidArgument`].
    pub fn check(&self) -> Result<()> {
        if let Some(SettleRecord(resource, value, ttl, effects)) = &self.record {
            check_record(resource, &self.raw_record(value, *ttl, effects))?;
        }
        crate::along::check_commands(&self.if_committed)?;
        crate::along::check_commands(&self.otherwise)?;
        crate::along::check_along(&self.together)?;
        if self.together.iter().any(|command| command.len() < 2) {
            return Err(LockError::invalid(
                "together",
                "a command gathered over the call needs a name and at least one argument",
            ));
        }
        Ok(())
    }

    /// The guard being settled.
    pub fn guard(&self) -> &LockGuard {
        &self.guard
    }

    /// The guard back, for a settlement that will not be sent.
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }

    fn raw_record<'a>(
        &'a self,
        value: &'a [u8],
        ttl: Option<Duration>,
        effects: &'a [Vec<Vec<u8>>],
    ) -> Record<'a> {
        let cell = &self.guard.lease.cell;
        Record {
            value,
            ttl,
            effects,
            owner: Some((&cell.key, &cell.token)),
            commit: Some(&self.commit),
        }
    }
}

/// A settlement's record: its resource, value, ttl and effects (each as
/// its arguments).
#[derive(Debug)]
struct SettleRecord(String, Vec<u8>, Option<Duration>, Vec<Vec<Vec<u8>>>);

/// What [`LockClient::settle_all`] did for one settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settled {
    /// The record's write, as [`LockGuard::commit`] reports it; `None` when
    /// the settlement had no record.
    pub write: Option<FencedWrite>,
    /// Redis' error for the first effect of the record it refused (the
    /// record was written all the same; see [`LockError::EffectRefused`]).
    pub effect_refused: Option<String>,
    /// Whether the lock was still ours when given back.
    pub released: bool,
    /// Redis' error for the first refused command sent along.
    pub command_refused: Option<String>,
    /// Redis' error when it refused the record itself (its resource holds a
    /// value of the wrong type, say): nothing was written (`write` is
    /// `None`), and the other settlements of the call went on.
    pub record_refused: Option<String>,
}

impl LockClient {
    /// Whether [`claim_all`](Self::claim_all) and
    /// [`settle_all`](Self::settle_all) work on this client's backend: one
    /// Redis server, or the primary Sentinel names. A Redis Cluster (where
    /// a script touches one hash slot), a Redlock and the memory backend
    /// refuse them.
    pub fn batches(&self) -> bool {
        self.inner.backend.batch_node().is_some()
    }

    /// Claims the lock of every key in `claims` in one call, without
    /// waiting: for each, in order, its record is read if asked (found: not
    /// taken), else the key is taken as
    /// [`LockRequest::acquire`](crate::LockRequest::acquire) with no wait
    /// would take it, and the claim's commands for that outcome run, all in
    /// one atomic script call.
    ///
    /// The fences come from the server's clock (in microseconds) and the
    /// last fence a call issued, kept in one key (`fence-clock` under the
    /// client's prefix), not from a counter per key, so keys taken once (a
    /// queue's key per message) leave no counter behind; keys taken in one
    /// call may share a fence. Each is above every fence the key had before
    /// (a key with a counter of its own gets one above it, and the counter
    /// follows) and below any later acquisition's, as long as the server's
    /// clock does not go back: the same assumption a new key's counter
    /// rests on.
    ///
    /// A claim Redis refuses (a record or fence counter holding a value of
    /// the wrong type) comes back [`Claimed::Failed`], its key not kept and
    /// its commands not run; the others are made all the same.
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`] when the backend cannot batch (see
    /// [`batches`](Self::batches)), a ttl is out of range or a command is
    /// malformed; a backend error, in which case every key the call may
    /// have taken is given back in the background, with its commands
    /// [`if_abandoned`](Claim::if_abandoned) if it had been taken.
    ///
    /// ```no_run
    /// use soloist::{Claim, Claimed, LockClient};
    /// # async fn demo() -> Result<(), soloist::LockError> {
    /// let locks = LockClient::connect("redis://127.0.0.1:6379").await?;
    /// let claims = [Claim::new("a"), Claim::new("b")];
    /// for claimed in locks.claim_all(&claims).await? {
    ///     if let Claimed::Acquired { guard, .. } = claimed {
    ///         guard.release().await?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn claim_all(&self, claims: &[Claim]) -> Result<Vec<Claimed>> {
        let node = self.batch_node()?;
        let mut prepared = Vec::with_capacity(claims.len());
        for claim in claims {
            check_ttl(claim.ttl)?;
            crate::along::check_commands(&claim.if_recorded)?;
            crate::along::check_commands(&claim.if_acquired)?;
            crate::along::check_commands(&claim.if_abandoned)?;
            if claim.key.is_empty() {
                return Err(LockError::invalid("key", "must not be empty"));
            }
            prepared.push(new_token());
        }
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // Until the replies are in, every key the call may have taken is
        // given back if it fails (as a single acquisition does).
        let mut pending: Vec<Abandon<'_>> = claims
            .iter()
            .zip(&prepared)
            .map(|(claim, token)| Abandon {
                client: self,
                key: &claim.key,
                token,
                kind: LeaseKind::Lock,
                armed: true,
            })
            .collect();
        let raw: Vec<RawClaim<'_>> = claims
            .iter()
            .zip(&prepared)
            .map(|(claim, token)| RawClaim {
                key: &claim.key,
                token,
                ttl: claim.ttl,
                record: claim.record.as_deref(),
                if_recorded: &claim.if_recorded,
                if_acquired: &claim.if_acquired,
            })
            .collect();
        let sent_at = Instant::now();
        let replies = match node.claim_all(&raw).await {
            Ok(replies) => replies,
            Err(err) => {
                for (abandon, claim) in pending.iter_mut().zip(claims) {
                    if claim.if_abandoned.is_empty() {
                        continue;
                    }
                    // Given back with its undo instead of plainly.
                    abandon.armed = false;
                    let undo: Vec<_> = claim.if_abandoned.iter().map(command_args).collect();
                    let (client, key, token) =
                        (self.clone(), claim.key.clone(), abandon.token.to_owned());
                    tokio::spawn(async move {
                        if let Some(node) = client.inner.backend.batch_node() {
                            let _ = node.abandon_claim(&key, &token, &undo).await;
                        }
                    });
                }
                return Err(err);
            }
        };
        for abandon in &mut pending {
            abandon.armed = false;
        }
        drop(pending);
        let mut claimed = Vec::with_capacity(claims.len());
        for ((claim, token), reply) in claims.iter().zip(prepared).zip(replies) {
            claimed.push(self.claimed(claim, token, reply, sent_at)?);
        }
        Ok(claimed)
    }

    fn claimed(
        &self,
        claim: &Claim,
        token: String,
        reply: Value,
        sent_at: Instant,
    ) -> Result<Claimed> {
        let bad = || unexpected("claim_all returned a malformed reply");
        let Value::Array(parts) = reply else {
            return Err(bad());
        };
        let number = |value: Option<&Value>| -> Option<i64> {
            match value? {
                Value::Int(n) => Some(*n),
                Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
                Value::SimpleString(text) => text.parse().ok(),
                _ => None,
            }
        };
        Ok(match number(parts.first()).ok_or_else(bad)? {
            0 => Claimed::Recorded(
                FencedValue {
                    fence: number(parts.get(1))
                        .and_then(|f| u64::try_from(f).ok())
                        .ok_or_else(bad)?,
                    value: match parts.get(2) {
                        Some(Value::BulkString(bytes)) => bytes.clone(),
                        _ => return Err(bad()),
                    },
                },
                match parts.into_iter().nth(3) {
                    Some(Value::Array(replies)) => replies,
                    _ => Vec::new(),
                },
            ),
            1 => {
                let fence = number(parts.get(1))
                    .and_then(|f| u64::try_from(f).ok())
                    .ok_or_else(bad)?;
                let replies = match parts.into_iter().nth(2) {
                    Some(Value::Array(replies)) => replies,
                    _ => Vec::new(),
                };
                let renew_until = claim.max_hold.and_then(|hold| sent_at.checked_add(hold));
                let cell = Arc::new(LeaseCell::new(
                    claim.key.clone(),
                    token,
                    fence,
                    claim.ttl,
                    sent_at,
                    renew_until,
                    true,
                ));
                self.inner.watchdog.watch(cell.clone());
                metrics::acquisition("acquired", sent_at.elapsed());
                Claimed::Acquired {
                    guard: LockGuard::new(self.clone(), Lease { cell }),
                    replies,
                }
            }
            3 => Claimed::Failed {
                error: match parts.get(1) {
                    Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                    Some(Value::SimpleString(text)) => text.clone(),
                    _ => String::new(),
                },
            },
            _ => {
                metrics::acquisition("busy", sent_at.elapsed());
                Claimed::Held {
                    expires_in: number(parts.get(1))
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map(Duration::from_millis),
                }
            }
        })
    }

    /// Settles every held lock of `settles` in one call: for each, in
    /// order, its record is committed as [`LockGuard::commit`] would (only
    /// while the guard holds the lock, effects applied once), the lock is
    /// given back as [`LockGuard::release`] would (waking a waiting
    /// client), then its commands `if_committed` or `otherwise` run; last,
    /// the commands gathered with
    /// [`if_committed_together`](Settle::if_committed_together) run once
    /// each. All in one atomic script call. The guards' renewals stop once
    /// it is answered. A record Redis refuses (see
    /// [`Settled::record_refused`]) answers for its settlement alone: its
    /// lock is still given back and its commands `otherwise` run.
    ///
    /// A call whose reply is lost (a timeout, a broken connection) is sent
    /// again while any of its leases is held and, for records with a ttl,
    /// during the first half of the shortest; a copy finds each record's
    /// commit id and neither writes it nor applies its effects again, but
    /// the commands sent along run again: they must bear it (an `XACK`, an
    /// `HDEL`; an `XADD` adds its entry twice). When the retries end first, the last error is
    /// returned, whether it took effect is unknown, and the guards are
    /// dropped (their locks given back in the background, or expired).
    ///
    /// # Errors
    /// [`LockError::InvalidArgument`], sending nothing, when the backend
    /// cannot batch or a settlement fails [`Settle::check`]; a backend
    /// error as said above.
    pub async fn settle_all(&self, settles: Vec<Settle>) -> Result<Vec<Settled>> {
        let node = self.batch_node()?;
        for settle in &settles {
            settle.check()?;
        }
        if settles.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Vec<RawSettle<'_>> = settles
            .iter()
            .map(|settle| {
                let cell = &settle.guard.lease.cell;
                RawSettle {
                    key: &cell.key,
                    token: &cell.token,
                    record: settle.record.as_ref().map(
                        |SettleRecord(resource, value, ttl, effects)| {
                            (
                                resource.as_str(),
                                cell.fence,
                                settle.raw_record(value, *ttl, effects),
                            )
                        },
                    ),
                    if_committed: &settle.if_committed,
                    otherwise: &settle.otherwise,
                    together: &settle.together,
                }
            })
            .collect();
        let retry_until = settles
            .iter()
            .filter_map(|settle| settle.record.as_ref().and_then(|record| record.2))
            .min()
            .map(|ttl| Instant::now() + ttl / 2);
        let mut pause = COMMIT_RETRY_FIRST;
        let replies = loop {
            let any_held = || settles.iter().any(|settle| settle.guard.is_held());
            let may_retry =
                || any_held() && retry_until.is_none_or(|until| Instant::now() + pause < until);
            match node.settle_all(&raw).await {
                Err(err) if err.is_transient() && may_retry() => {
                    tracing::debug!(error = %err, "settlement undecided; sending it again");
                    let jitter = pause.mul_f64(rand::random::<f64>() / 2.0);
                    tokio::time::sleep(pause + jitter).await;
                    pause = (pause * 2).min(COMMIT_RETRY_MAX);
                }
                outcome => break outcome,
            }
        };
        drop(raw);
        let replies = replies?;
        let mut settled = Vec::with_capacity(settles.len());
        for (mut settle, (code, fence, refused, released, failed)) in
            settles.into_iter().zip(replies)
        {
            let cell = settle.guard.lease.cell.clone();
            settle.guard.released = true;
            cell.mark_released();
            self.inner.watchdog.forget(&cell);
            metrics::release(if released == 1 { "released" } else { "lost" });
            let write = match code.as_str() {
                "A" => Some(FencedWrite::Accepted),
                "N" => Some(FencedWrite::NotHeld),
                "R" => Some(FencedWrite::Rejected {
                    highest: fence
                        .parse()
                        .map_err(|_| unexpected("a record holds a fence that is not a number"))?,
                }),
                _ => None,
            };
            let (refused, record_refused) = match code.as_str() {
                "E" => (String::new(), Some(refused)),
                _ => (refused, None),
            };
            settled.push(Settled {
                write,
                record_refused,
                effect_refused: (!refused.is_empty()).then_some(refused),
                released: released == 1,
                command_refused: (!failed.is_empty()).then_some(failed),
            });
        }
        Ok(settled)
    }

    fn batch_node(&self) -> Result<&crate::node::RedisNode> {
        self.inner.backend.batch_node().ok_or_else(|| {
            LockError::invalid(
                "backend",
                "claim_all and settle_all need one Redis server (or Sentinel's primary); a cluster, a Redlock and the memory backend cannot batch",
            )
        })
    }
}

fn unexpected(what: &'static str) -> LockError {
    LockError::Protocol(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        what,
    )))
}
