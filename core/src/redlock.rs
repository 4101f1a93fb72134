//! Redlock: one lock over N independent Redis masters.
//!
//! # Acquisition
//! Every node is asked at once, each request bounded by the node timeout,
//! and the answer is decided as soon as it is known: a majority (N/2 + 1)
//! granted, or so many refused or failed that no majority can grant. Slow
//! or frozen nodes therefore add no latency to a decided acquisition. A
//! failed attempt is given back on every node, including those that said
//! no or did not answer, before the caller retries after a random delay;
//! each attempt uses a fresh owner token, so a late release can never
//! delete a later attempt's grant.
//!
//! The lease's validity is `ttl - elapsed - drift`, with `elapsed` measured
//! from the moment the first request was sent and `drift = ttl/100 + 3 ms`
//! (see `lease.rs`); an acquisition whose validity is used up counts as
//! failed.
//!
//! # Renewal and release
//! A renewal counts once a majority renewed the lease, and finds it lost
//! once so many nodes no longer hold it for this owner that no majority
//! can. A release is the same: released once a majority released the key,
//! [`LockError::Lost`] once too many nodes found it gone or taken, and
//! [`LockError::NoQuorum`] when the nodes that did not answer leave it open.
//! A release that found the key on a minority only does not count: the
//! lease had already ended.
//!
//! # Renewal and release
//! A renewal counts once a majority renewed the lease, and finds it lost
//! once so many nodes no longer hold it for this owner that no majority
//! can. A release is the same: released once a majority released the key,
//! [`LockError::Lost`] once too many nodes found it gone or taken, and
//! [`LockError::NoQuorum`] when the nodes that did not answer leave it open.
//! A release that found the key on a minority only does not count: the
//! lease had already ended.
//!
//! # Fencing across nodes
//! No node sees every acquisition, so a per-node counter and "take the
//! largest" is not enough: two majorities can each see a different node's
//! count. Fences are therefore chosen and committed in two phases:
//!
//! 1. *Grant.* Each node that grants the lock returns its fence counter,
//!    read in the same script as the `SET NX`.
//! 2. *Commit.* With a majority `G` granted, the fence is
//!    `F = max(counters of G) + 1`. Every node is asked to raise its counter
//!    to `F`, but only while it still holds the lock for this acquisition's
//!    token; the acquisition counts only once a majority `C` acknowledged.
//!
//! **Claim:** if acquisition A (fence `F_A`, commit majority `C_A`) precedes
//! acquisition B (grant majority `G_B`) in lock order, then `F_B > F_A`.
//!
//! **Proof.** Two majorities intersect: take `n` in `C_A ∩ G_B`. On `n`,
//! A's commit ran while A's key was present (the commit is token-checked),
//! so it ran after A's `SET NX` on `n` and before A's key left `n`. B's
//! `SET NX` on `n` succeeded, so no key was present then. B's key on `n`
//! cannot predate A's: B's keys live at least until B's validity ends, and
//! B's validity starts after A's ends (mutual exclusion), which is after A's
//! key was set on `n`. So B's grant on `n` ran after A's key left `n`, hence
//! after A's commit there, and the counter B read on `n` is at least `F_A`.
//! Then `F_B >= counter(n) + 1 > F_A`. ∎
//!
//! The proof needs `n` to remember A's commit. A node restarted without
//! persistence forgets its counter; such a node reports its clock in
//! microseconds instead of zero. Fences grow by one per acquisition from a
//! clock-seeded start, and no acquisition completes in under a microsecond,
//! so every fence issued so far is below the current time in microseconds:
//! the forgetful node's report still exceeds `F_A` as long as its clock is
//! not behind the clocks that seeded earlier counters by more than the
//! restart took. Operators must in any case keep a restarted node out for
//! one maximum ttl before it rejoins (the Redlock requirement for mutual
//! exclusion), which widens that margin to at least a ttl.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::backend::{Attempt, Backend, Record, Renewal, Renewed, Tally, Waiting};
use crate::deployment::Deployment;
use crate::error::{LockError, Result};
use crate::fence::{FencedValue, FencedWrite};
use crate::lease::drift;
use crate::node::{Grant, RedisNode, RedisSettings};
use crate::notice::Listener;
use crate::pubsub::ReleaseNotices;
use crate::tls::Target;

#[derive(Debug)]
pub(crate) struct RedlockBackend {
    nodes: Arc<[Arc<RedisNode>]>,
    quorum: usize,
    notices: Arc<ReleaseNotices>,
}

impl RedlockBackend {
    /// Sets up every node and succeeds when a majority is reachable; the
    /// others join when they come back.
    pub(crate) async fn connect(
        deployments: &[Deployment],
        settings: &RedisSettings,
    ) -> Result<Arc<Self>> {
        if deployments.is_empty() {
            return Err(LockError::invalid(
                "urls",
                "a Redlock needs at least one node",
            ));
        }
        let mut nodes = Vec::with_capacity(deployments.len());
        let mut servers = HashSet::new();
        for deployment in deployments {
            let target = Target::open(deployment, settings.op_timeout, settings.op_timeout)?;
            let Some(server) = target.address() else {
                return Err(LockError::invalid(
                    "urls",
                    format!(
                        "{deployment:?} is not a single server; Redlock nodes are independent servers"
                    ),
                ));
            };
            if !servers.insert(server) {
                return Err(LockError::invalid(
                    "urls",
                    format!(
                        "{deployment:?} names a server already in the list; Redlock nodes must be independent"
                    ),
                ));
            }
            nodes.push(Arc::new(RedisNode::new(target, settings)));
        }
        let quorum = nodes.len() / 2 + 1;
        let mut checks =
            futures::future::join_all(nodes.iter().map(|node| node.check_server())).await;
        // A refusal that is not about reachability (an ACL without the wake
        // channels) would hold on every node: report it.
        if let Some(at) = checks
            .iter()
            .position(|check| matches!(check, Err(LockError::InvalidArgument { .. })))
            && let Err(refusal) = checks.swap_remove(at)
        {
            return Err(refusal);
        }
        let reachable = checks.iter().filter(|check| check.is_ok()).count();
        if reachable < quorum {
            let first_failure = checks.into_iter().find_map(Result::err);
            return Err(first_failure.unwrap_or_else(|| {
                LockError::invalid("urls", "no majority of the nodes is reachable")
            }));
        }
        let notices = ReleaseNotices::new(nodes.clone(), settings.op_timeout);
        Ok(Arc::new(RedlockBackend {
            nodes: nodes.into(),
            quorum,
            notices,
        }))
    }

    /// Runs `op` on every node at once; outcomes arrive as nodes answer.
    /// Each node's request is bounded by the node timeout.
    fn fan_out<'a, T, F>(&'a self, op: impl Fn(&'a RedisNode) -> F) -> FuturesUnordered<F>
    where
        F: Future<Output = Result<T>> + 'a,
    {
        self.nodes.iter().map(|node| op(node)).collect()
    }

    /// Whether no majority can be reached any more.
    fn hopeless(&self, granted: usize, answered: usize) -> bool {
        granted + (self.nodes.len() - answered) < self.quorum
    }

    /// Phase two: raises the counters to `fence` on every node still ours;
    /// `true` once a majority acknowledged.
    async fn commit_fence(&self, key: &str, counter: &str, token: &str, fence: u64) -> bool {
        let mut commits = self.fan_out(|node| node.commit_fence(key, counter, token, fence));
        let (mut acked, mut answered) = (0, 0);
        while let Some(outcome) = commits.next().await {
            answered += 1;
            acked += usize::from(matches!(outcome, Ok(true)));
            if acked >= self.quorum {
                return true;
            }
            if self.hopeless(acked, answered) {
                return false;
            }
        }
        false
    }

    /// Gives a failed attempt back on every node, in the background: the
    /// attempt's token is never used again, so nothing can race with it.
    fn abandon(&self, key: &str, token: &str) {
        let nodes = self.nodes.clone();
        let (key, token) = (key.to_owned(), token.to_owned());
        tokio::spawn(async move {
            let releases = nodes.iter().map(|node| node.release(&key, &token));
            futures::future::join_all(releases).await;
        });
    }
}

impl Backend for RedlockBackend {
    fn try_acquire<'a>(
        &'a self,
        key: &'a str,
        counter: &'a str,
        token: &'a str,
        ttl: Duration,
        waiting: Option<Waiting>,
    ) -> BoxFuture<'a, Result<Attempt>> {
        async move {
            let started = Instant::now();
            let mut grants = self.fan_out(|node| node.grant(key, counter, token, ttl, waiting));
            let mut tally = Tally::default();
            let mut highest = 0;
            let mut expires_in: Option<Duration> = None;
            while let Some(outcome) = grants.next().await {
                match outcome {
                    Ok(Grant::Granted { counter }) => {
                        tally.granted += 1;
                        highest = highest.max(counter);
                    }
                    Ok(Grant::Refused { expires_in: left }) => {
                        tally.refused += 1;
                        expires_in = expires_in.max(left);
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "redlock node failed to answer a grant");
                        tally.unreachable += 1;
                    }
                }
                let answered = tally.granted + tally.refused + tally.unreachable;
                if tally.granted >= self.quorum || self.hopeless(tally.granted, answered) {
                    break;
                }
            }
            drop(grants);
            if tally.granted >= self.quorum {
                let fence = highest + 1;
                let committed = self.commit_fence(key, counter, token, fence).await;
                let validity = ttl.saturating_sub(started.elapsed() + drift(ttl));
                if committed && !validity.is_zero() {
                    return Ok(Attempt::Acquired(fence));
                }
            }
            self.abandon(key, token);
            Ok(if tally.refused >= self.quorum {
                Attempt::Held { expires_in }
            } else {
                Attempt::NoQuorum(tally)
            })
        }
        .boxed()
    }

    fn extend<'a>(&'a self, leases: &'a [Renewal<'a>]) -> BoxFuture<'a, Result<Vec<Renewed>>> {
        async move {
            let answers: Vec<Result<Vec<bool>>> =
                self.fan_out(|node| node.extend(leases)).collect().await;
            let outcomes = (0..leases.len())
                .map(|lease| {
                    let mut tally = Tally::default();
                    for answer in &answers {
                        match answer.as_ref().map(|renewed| renewed[lease]) {
                            Ok(true) => tally.granted += 1,
                            Ok(false) => tally.refused += 1,
                            Err(_) => tally.unreachable += 1,
                        }
                    }
                    if tally.granted >= self.quorum {
                        Ok(true)
                    } else if self.hopeless(tally.granted, tally.granted + tally.refused) {
                        // Even the nodes that did not answer could not make a majority.
                        Ok(false)
                    } else {
                        Err(tally)
                    }
                })
                .collect();
            Ok(outcomes)
        }
        .boxed()
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool>> {
        async move {
            // Every node is asked, in a task of its own, so that a release
            // decided by a majority does not wait for the slowest node, and
            // that node still gets its release.
            let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
            let nodes = self.nodes.clone();
            let (key_owned, token_owned) = (key.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let mut releases: FuturesUnordered<_> = nodes
                    .iter()
                    .map(|node| node.release(&key_owned, &token_owned))
                    .collect();
                while let Some(answer) = releases.next().await {
                    let _ = answers.send(answer);
                }
            });
            // Released once a majority released it: the lease was still
            // ours. Lost once so many nodes found it gone (or another
            // owner's) that no majority could still hold it for us. Neither
            // with every answer in: some node did not answer either way.
            let lost_at = self.nodes.len() - self.quorum + 1;
            let mut tally = Tally::default();
            while let Some(answer) = answered.recv().await {
                match answer {
                    Ok(true) => tally.granted += 1,
                    Ok(false) => tally.refused += 1,
                    Err(_) => tally.unreachable += 1,
                }
                if tally.granted >= self.quorum {
                    return Ok(true);
                }
                if tally.refused >= lost_at {
                    return Ok(false);
                }
            }
            Err(LockError::no_quorum(key, tally))
        }
        .boxed()
    }

    fn listen(&self, key: &str) -> Listener {
        self.notices.listen(key)
    }

    fn subscribe<'a>(&'a self, listener: &'a mut Listener) -> BoxFuture<'a, ()> {
        self.notices.subscribe(listener).boxed()
    }

    /// A quorum register: accepted once a majority accepted.
    fn fenced_set<'a>(
        &'a self,
        resource: &'a str,
        fence: u64,
        record: Record<'a>,
    ) -> BoxFuture<'a, Result<FencedWrite>> {
        async move {
            if !record.effects.is_empty() {
                return Err(LockError::invalid(
                    "effects",
                    "a Redlock cannot apply effects atomically across its nodes; use a single node",
                ));
            }
            let answers: Vec<Result<FencedWrite>> = self
                .fan_out(|node| node.fenced_set(resource, fence, record))
                .collect()
                .await;
            let mut tally = Tally::default();
            let mut highest = None;
            let mut not_held = false;
            for answer in answers {
                match answer {
                    Ok(FencedWrite::Rejected { highest: seen }) => {
                        tally.refused += 1;
                        highest = highest.max(Some(seen));
                    }
                    Ok(FencedWrite::NotHeld) => {
                        tally.refused += 1;
                        not_held = true;
                    }
                    Ok(_) => tally.granted += 1,
                    Err(_) => tally.unreachable += 1,
                }
            }
            match highest {
                _ if tally.granted >= self.quorum => Ok(FencedWrite::Accepted),
                Some(highest) => Ok(FencedWrite::Rejected { highest }),
                None if not_held => Ok(FencedWrite::NotHeld),
                None => Err(LockError::no_quorum(resource, tally)),
            }
        }
        .boxed()
    }

    /// The median of the clocks of the nodes that answer, at least a majority.
    fn server_time(&self) -> BoxFuture<'_, Result<Option<SystemTime>>> {
        async move {
            let answers: Vec<Result<SystemTime>> =
                self.fan_out(RedisNode::server_time).collect().await;
            let mut times: Vec<SystemTime> = answers.into_iter().filter_map(Result::ok).collect();
            if times.len() < self.quorum {
                let tally = Tally {
                    granted: times.len(),
                    refused: 0,
                    unreachable: self.nodes.len() - times.len(),
                };
                return Err(LockError::no_quorum("TIME", tally));
            }
            times.sort_unstable();
            Ok(Some(times[times.len() / 2]))
        }
        .boxed()
    }

    /// Reads a majority and returns the value with the highest fence.
    fn fenced_get<'a>(&'a self, resource: &'a str) -> BoxFuture<'a, Result<Option<FencedValue>>> {
        async move {
            let answers: Vec<Result<Option<FencedValue>>> = self
                .fan_out(|node| node.fenced_get(resource))
                .collect()
                .await;
            let answered = answers.iter().filter(|answer| answer.is_ok()).count();
            if answered < self.quorum {
                let tally = Tally {
                    granted: answered,
                    refused: 0,
                    unreachable: answers.len() - answered,
                };
                return Err(LockError::no_quorum(resource, tally));
            }
            Ok(answers
                .into_iter()
                .filter_map(|answer| answer.ok().flatten())
                .max_by_key(|stored| stored.fence))
        }
        .boxed()
    }
}
