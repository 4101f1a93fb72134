//! `redlock3`: the `uncontended` 1-worker cycle (acquire, then release at
//! once, one key nobody else wants) on a Redlock of three independent
//! `redis-server`s.
//!
//! Rows: soloist (`LockClient::redlock` over the three URLs, default
//! settings), rslock in its multi-node mode and the redlock crate over the
//! same three, and `soloist-1node`: soloist's single-node cycle on the first
//! of the three servers, in the same interleaved rounds, so that "one
//! Redlock cycle over three nodes / one single-node cycle" is measured on
//! the same machine at the same moments. `raw` is the floor of any Redlock
//! on three nodes: `raw`'s two commands, each sent to all three servers at
//! once. Commands and Redis CPU are summed over the three servers for every
//! row.
//!
//! The peers run in their default retry mode only: an uncontended
//! acquisition succeeds at the first try, so the retry delay never comes
//! into play.

use std::time::Instant;

use futures::FutureExt;
use futures::future::join_all;
use redis::aio::MultiplexedConnection;
use soloist_core::LockClient;

use super::raw::COMPARE_AND_DELETE;
use super::uncontended::{redlock_cycles, rslock_cycles, soloist_cycles};
use super::{Bench, CYCLE_TTL, Nodes, Scenario, key};
use crate::measure::{Samples, Window, join_tasks};
use crate::peers::Retry;
use crate::peers::redlock::RedlockPeer;
use crate::peers::rslock::RslockPeer;
use crate::rounds::Contestant;

/// The row of soloist's single-node cycle on the first node.
pub(crate) const SINGLE_NODE: &str = "soloist-1node";

/// One worker: the cycle's latency is what a Redlock adds.
const TASKS: usize = 1;

/// The raw floor, soloist over three nodes, soloist on one, then the peers
/// over three.
pub(super) async fn contestants(bench: &Bench) -> Vec<Contestant> {
    let Some(nodes) = &bench.redlock else {
        return Vec::new();
    };
    let urls: Vec<&str> = nodes.urls.iter().map(String::as_str).collect();
    let observed = |contestant: Contestant| contestant.observed_by(nodes.probe.clone());
    let mut contestants = Vec::new();
    if bench.wants("raw") {
        contestants.push(observed(raw(nodes).await));
    }
    if bench.wants("soloist") {
        let locks = LockClient::redlock(&urls)
            .await
            .expect("soloist cannot set up a Redlock over the three servers");
        contestants.push(observed(soloist_cycles(
            Scenario::Redlock3,
            "soloist",
            TASKS,
            locks,
        )));
    }
    if bench.wants("soloist") || bench.wants(SINGLE_NODE) {
        contestants.push(observed(single_node(nodes).await));
    }
    if bench.wants("rslock") {
        let peer = RslockPeer::over(&urls, Retry::Default);
        contestants.push(observed(rslock_cycles(
            Scenario::Redlock3,
            "rslock",
            TASKS,
            peer,
        )));
    }
    if bench.wants("redlock") {
        let peer = RedlockPeer::over(&urls, Retry::Default);
        contestants.push(observed(redlock_cycles(
            Scenario::Redlock3,
            "redlock",
            TASKS,
            peer,
        )));
    }
    contestants
}

/// Soloist's single-node cycle, with its defaults, on the first node.
async fn single_node(nodes: &Nodes) -> Contestant {
    let locks = LockClient::connect(&nodes.urls[0])
        .await
        .expect("soloist cannot connect to the first Redlock server");
    soloist_cycles(Scenario::Redlock3, SINGLE_NODE, TASKS, locks)
}

/// `raw`'s cycle on all three nodes at once: one connection per node, each
/// command sent to the three together, the next one once all three answered.
async fn raw(nodes: &Nodes) -> Contestant {
    let mut conns = Vec::with_capacity(nodes.urls.len());
    for url in &nodes.urls {
        let client = redis::Client::open(url.as_str()).expect("the Redis URL must parse");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|err| panic!("raw: cannot connect to Redis at {url}: {err}"));
        conns.push(conn);
    }
    let key = key(Scenario::Redlock3, "raw", TASKS, 0);
    Contestant::new(Scenario::Redlock3, TASKS, "raw", false, move |window| {
        let handle = tokio::spawn(raw_worker(conns.clone(), key.clone(), window));
        join_tasks(vec![handle]).boxed()
    })
}

/// Locks and unlocks `key` on every node in `conns` until the window closes.
async fn raw_worker(conns: Vec<MultiplexedConnection>, key: String, window: Window) -> Samples {
    let ttl_ms = u64::try_from(CYCLE_TTL.as_millis()).expect("the ttl fits in u64 milliseconds");
    let mut samples = Samples::default();
    let mut cycle = 0_u64;
    while window.is_open() {
        cycle += 1;
        let token = cycle.to_string();
        let started = Instant::now();
        let taken: Vec<Option<String>> = join_all(conns.iter().map(|conn| {
            let mut conn = conn.clone();
            let (key, token) = (&key, &token);
            async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
                    .expect("raw: SET NX PX failed")
            }
        }))
        .await;
        assert!(
            taken.iter().all(Option::is_some),
            "raw: {key} is taken on a node, yet only one worker uses it"
        );
        let deleted: Vec<i64> = join_all(conns.iter().map(|conn| {
            let mut conn = conn.clone();
            let (key, token) = (&key, &token);
            async move {
                COMPARE_AND_DELETE
                    .key(key)
                    .arg(token)
                    .invoke_async(&mut conn)
                    .await
                    .expect("raw: compare-and-delete failed")
            }
        }))
        .await;
        assert!(
            deleted.iter().all(|deleted| *deleted == 1),
            "raw: {key} lost its token on a node before the delete"
        );
        samples.record(&window, started, false);
    }
    samples
}
