//! `raw`: the physical limit. Per cycle, a bare `SET key token NX PX 30000`
//! and a compare-and-delete script (`GET` equals token, then `DEL`) over one
//! redis-rs multiplexed connection, with no lock library in between.

use std::sync::LazyLock;
use std::time::Instant;

use futures::FutureExt;
use redis::Script;
use redis::aio::MultiplexedConnection;

use super::{Bench, CYCLE_TTL, Scenario, key};
use crate::measure::{Samples, Window, join_tasks};
use crate::rounds::Contestant;

/// Deletes the key only while it still holds the caller's token.
pub(super) static COMPARE_AND_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// One worker, then 64 workers on distinct keys, sharing one connection.
pub(super) async fn contestants(bench: &Bench) -> Vec<Contestant> {
    let mut contestants = Vec::new();
    if bench.wants("raw") {
        for tasks in [1, 64] {
            contestants.push(cycles(bench, tasks).await);
        }
    }
    contestants
}

async fn cycles(bench: &Bench, tasks: usize) -> Contestant {
    let client = redis::Client::open(bench.url.as_str()).expect("the Redis URL must parse");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("raw: cannot connect to Redis");
    let keys: Vec<String> = (0..tasks)
        .map(|worker| key(Scenario::Raw, "raw", tasks, worker))
        .collect();
    Contestant::new(Scenario::Raw, tasks, "raw", false, move |window| {
        let handles = keys
            .iter()
            .map(|key| tokio::spawn(worker(conn.clone(), key.clone(), window)))
            .collect();
        join_tasks(handles).boxed()
    })
}

/// Locks and unlocks `key` until the window closes.
async fn worker(mut conn: MultiplexedConnection, key: String, window: Window) -> Samples {
    let ttl_ms = u64::try_from(CYCLE_TTL.as_millis()).expect("the ttl fits in u64 milliseconds");
    let mut samples = Samples::default();
    let mut cycle = 0_u64;
    while window.is_open() {
        cycle += 1;
        let token = cycle.to_string();
        let started = Instant::now();
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .expect("raw: SET NX PX failed");
        assert!(
            taken.is_some(),
            "raw: {key} is taken, yet only one worker uses it"
        );
        let deleted: i64 = COMPARE_AND_DELETE
            .key(&key)
            .arg(&token)
            .invoke_async(&mut conn)
            .await
            .expect("raw: compare-and-delete failed");
        assert_eq!(deleted, 1, "raw: {key} lost its token before the delete");
        samples.record(&window, started, false);
    }
    samples
}
