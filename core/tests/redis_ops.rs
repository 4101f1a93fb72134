//! What the Redis backend does on the wire: where keys live, what each
//! operation costs, how renewals batch, how waiters queue and are woken.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{command_calls, listening, queued, until};
use futures::future::join_all;
use soloist::{LockClient, LockError};
use soloist_testkit::RedisServer;
use tokio::time::{Instant, sleep};

const SECOND: Duration = Duration::from_secs(1);

async fn connect(server: &RedisServer) -> LockClient {
    LockClient::connect(&server.url()).await.expect("connect")
}

/// The outcome of a spawned waiter, which must finish within 10 s.
async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(10 * SECOND, task)
        .await
        .expect("waiter stuck")
        .expect("waiter panicked")
}

/// The lock key's owner token, read straight from Redis.
fn token_of(server: &RedisServer, key: &str) -> String {
    server.cli(&["GET", &format!("soloist:lock:{{{key}}}")])
}

#[tokio::test]
async fn keys_live_under_the_prefix_and_user_strings_stay_data() {
    let server = RedisServer::start();
    let locks = LockClient::builder()
        .prefix("app:")
        .connect(&server.url())
        .await
        .unwrap();
    // Quotes, Lua syntax, braces, a newline: only ever KEYS/ARGV data.
    let key = "x\"]]) redis.call('FLUSHALL') --{tag}\n'";
    let guard = locks.lock(key).acquire().await.unwrap();
    assert!(
        locks
            .fenced_set(key, guard.fence(), b"v")
            .await
            .unwrap()
            .is_accepted()
    );
    assert_eq!(server.cli(&["DBSIZE"]), "3");
    let expected = ["lock", "fence", "fenced"].map(|space| format!("app:{space}:={key}"));
    let mut exists = vec!["EXISTS"];
    exists.extend(expected.iter().map(String::as_str));
    assert_eq!(
        server.cli(&exists),
        "3",
        "keys are not all under the prefix"
    );
    // Same prefix: one lock space. Another prefix: another lock space.
    let same = LockClient::builder()
        .prefix("app:")
        .connect(&server.url())
        .await
        .unwrap();
    assert!(matches!(
        same.lock(key).acquire().await,
        Err(LockError::Busy { .. })
    ));
    let other = connect(&server).await;
    let _other = other
        .lock(key)
        .acquire()
        .await
        .expect("another prefix, another lock");
    guard.release().await.unwrap();
}

#[tokio::test]
async fn bad_urls_and_settings_are_errors_not_panics() {
    for url in ["", "not a url", "http://127.0.0.1:1", "redis://:badport"] {
        match LockClient::connect(url).await {
            Err(LockError::InvalidArgument { name: "url", .. }) => {}
            other => panic!("{url:?}: expected InvalidArgument(url), got {other:?}"),
        }
    }
    let refused = LockClient::builder()
        .op_timeout(SECOND)
        .connect("redis://127.0.0.1:1")
        .await;
    assert!(
        matches!(refused, Err(LockError::Connection { .. })),
        "{refused:?}"
    );
    // The message says why and where, not only that it failed.
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    let worker_error = soloist::WorkerError::from(LockError::Unresponsive {
        op: "acquire",
        after: SECOND,
    });
    assert!(
        worker_error.to_string().contains("`acquire`"),
        "{worker_error}"
    );
    for (builder, name) in [(
        LockClient::builder().op_timeout(Duration::ZERO),
        "op_timeout",
    )] {
        match builder.connect("redis://127.0.0.1:1").await {
            Err(LockError::InvalidArgument { name: got, .. }) => assert_eq!(got, name),
            other => panic!("expected InvalidArgument({name}), got {other:?}"),
        }
    }
}

/// An acquire+release cycle is two round trips and nothing else: the
/// acquisition one transaction (the key's first, the acquire script), the
/// release one script call; no PING on pool check-out, no extra reads.
#[tokio::test]
async fn a_cycle_costs_two_round_trips() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    locks
        .lock("warm")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let (evalsha, exec, ping, publish) = (
        command_calls(&server, "evalsha"),
        command_calls(&server, "exec"),
        command_calls(&server, "ping"),
        command_calls(&server, "publish"),
    );
    for _ in 0..50 {
        let guard = locks.lock("cycle").watchdog(false).acquire().await.unwrap();
        guard.release().await.unwrap();
    }
    assert_eq!(command_calls(&server, "evalsha") - evalsha, 51);
    assert_eq!(command_calls(&server, "exec") - exec, 49);
    assert_eq!(command_calls(&server, "ping") - ping, 0);
    // Nobody waited, so no release published a wake-up.
    assert_eq!(command_calls(&server, "publish") - publish, 0);
    // The fence counter does not outlive its week.
    let ttl: i64 = server
        .cli(&["PTTL", "soloist:fence:{cycle}"])
        .parse()
        .unwrap();
    assert!(
        ttl > 6 * 86_400_000 && ttl <= 7 * 86_400_000,
        "fence counter ttl {ttl}"
    );
}

/// 2,500 leases held by one client cost a few script calls per renewal
/// period, not 2,500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_are_batched() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let ttl = 3 * SECOND;
    let guards: Vec<_> =
        join_all((0..2500).map(|i| locks.lock(format!("batch:{i}")).ttl(ttl).acquire()))
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
    let before = command_calls(&server, "evalsha");
    sleep(ttl).await; // three renewal periods
    let calls = command_calls(&server, "evalsha") - before;
    // ceil(2500 / 1000) = 3 calls a period once aligned; allow the first
    // period to be split by how long the acquisitions took.
    assert!(
        (3..=18).contains(&calls),
        "{calls} renewal calls in 3 periods"
    );
    assert!(guards.iter().all(|guard| guard.is_held()));
    let pttl: i64 = server
        .cli(&["PTTL", "soloist:lock:{batch:0}"])
        .parse()
        .unwrap();
    assert!(pttl > 1500, "lease not renewed: pttl {pttl}");
}

/// Ten waiters in one process put one contender on the wire, and all of
/// them get the lock in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_waiters_queue_behind_one_contender() {
    let server = RedisServer::start();
    let (holder, waiters) = (connect(&server).await, connect(&server).await);
    let held = holder.lock("line").acquire().await.unwrap();
    let before = command_calls(&server, "evalsha");
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let (locks, got) = (waiters.clone(), got.clone());
            tokio::spawn(async move {
                let guard = locks
                    .lock("line")
                    .wait(30 * SECOND)
                    .acquire()
                    .await
                    .unwrap();
                got.lock().unwrap().push((i, guard.fence()));
                guard.release().await.unwrap();
            })
        })
        .collect();
    sleep(1500 * Duration::from_millis(1)).await;
    let while_held = command_calls(&server, "evalsha") - before;
    assert!(
        while_held <= 6,
        "{while_held} attempts by 10 waiters in 1.5 s"
    );
    held.release().await.unwrap();
    for task in tasks {
        finished(task).await;
    }
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 10);
    assert!(
        got.windows(2).all(|w| w[0].1 < w[1].1),
        "fences in hand-off order"
    );
}

/// A renewal that finds the key gone fires `lost` at once, long before the
/// lease's own deadline.
#[tokio::test]
async fn lost_fires_when_a_renewal_finds_the_key_gone() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let ttl = 3 * SECOND;
    let held = locks.lock("taken").ttl(ttl).acquire().await.unwrap();
    server.cli(&["DEL", "soloist:lock:{taken}"]);
    let deleted_at = Instant::now();
    held.lost().await;
    let after = deleted_at.elapsed();
    assert!(
        after < ttl / 3 + Duration::from_millis(300),
        "lost fired {after:?} after the delete"
    );
    assert!(!held.is_held());
    assert!(matches!(held.release().await, Err(LockError::Lost { .. })));
}

/// Same when another owner holds the key under a different token.
#[tokio::test]
async fn lost_fires_when_a_renewal_finds_another_owner() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let held = locks.lock("stolen").ttl(SECOND).acquire().await.unwrap();
    server.cli(&[
        "SET",
        "soloist:lock:{stolen}",
        "someone-else",
        "PX",
        "60000",
    ]);
    tokio::time::timeout(SECOND, held.lost())
        .await
        .expect("lost fired within a period");
    assert_eq!(
        server.cli(&["GET", "soloist:lock:{stolen}"]),
        "someone-else"
    );
}

/// Renewal ends with the guard: put the released key back with the old
/// token and it must expire untouched, whether the guard was released or
/// dropped.
#[tokio::test]
async fn no_renewal_after_release_or_drop() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let ttl = Duration::from_millis(300);
    for explicit in [true, false] {
        let guard = locks.lock("ended").ttl(ttl).acquire().await.unwrap();
        let token = token_of(&server, "ended");
        assert!(soloist::parse_token(&token).is_some(), "{token}");
        if explicit {
            guard.release().await.unwrap();
        } else {
            drop(guard);
            sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(server.cli(&["EXISTS", "soloist:lock:{ended}"]), "0");
        server.cli(&["SET", "soloist:lock:{ended}", &token, "PX", "300"]);
        sleep(Duration::from_millis(700)).await;
        assert_eq!(
            server.cli(&["EXISTS", "soloist:lock:{ended}"]),
            "0",
            "a renewal revived the lease after {}",
            if explicit { "release" } else { "drop" }
        );
    }
}

/// Tokens in Redis carry a 128-bit random secret, unrelated from token to
/// token, after the holder's owner id and acquisition time, and are short
/// enough for Redis to keep the lock's value in one allocation.
#[tokio::test]
async fn owner_tokens_are_random_128_bit() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let mut tokens = Vec::new();
    for _ in 0..200 {
        let guard = locks.lock("tok").watchdog(false).acquire().await.unwrap();
        let token = token_of(&server, "tok");
        let info = soloist::parse_token(&token).expect("token with owner and time");
        assert_eq!(info.owner, soloist::owner_id());
        assert!(token.len() <= 43, "{token}");
        assert_eq!(
            server.cli(&["OBJECT", "ENCODING", "soloist:lock:{tok}"]),
            "embstr",
            "{token}"
        );
        let secret = token.rsplit('.').next().expect("secret");
        tokens.push(base64url_number(secret));
        guard.release().await.unwrap();
    }
    let mut unique = tokens.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), tokens.len());
    let differing: u32 = tokens.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
    let mean = f64::from(differing) / (tokens.len() - 1) as f64;
    assert!(
        (56.0..72.0).contains(&mean),
        "neighbouring tokens differ in {mean} bits"
    );
}

/// The number a token's part writes in base64url digits, most significant
/// first.
fn base64url_number(digits: &str) -> u128 {
    const DIGITS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_eq!(digits.len(), 22, "{digits}");
    digits.chars().fold(0, |value, digit| {
        let digit = DIGITS.find(digit).expect("a base64url digit");
        (value << 6) | digit as u128
    })
}

/// Effects committed through a guard apply exactly when its write is
/// accepted: while it holds its lock and no later fence wrote first.
#[tokio::test]
async fn commit_applies_effects_only_with_an_accepted_write() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let mut charge = soloist::redis::cmd("HINCRBY");
    charge.arg("balances").arg("customer:7").arg(-990);
    let effects = [charge];
    let balance = || server.cli(&["HGET", "balances", "customer:7"]);

    let first = locks
        .lock("invoice:42")
        .ttl(Duration::from_millis(200))
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    assert!(
        first
            .commit("charged:42", "r1", None, &effects)
            .await
            .unwrap()
            .is_accepted()
    );
    assert_eq!(balance(), "-990");
    // Its lease runs out unnoticed; the next holder commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = locks.lock("invoice:42").acquire().await.unwrap();
    assert!(
        second
            .commit("charged:42", "r2", None, &effects)
            .await
            .unwrap()
            .is_accepted()
    );
    assert_eq!(balance(), "-1980");
    // The stale holder's late commit changes nothing.
    assert_eq!(
        first
            .commit("charged:42", "late", None, &effects)
            .await
            .unwrap(),
        soloist::FencedWrite::NotHeld
    );
    assert_eq!(balance(), "-1980", "applied nothing");
    assert_eq!(
        locks.fenced_get("charged:42").await.unwrap().unwrap().value,
        b"r2"
    );
    // The record is written before the effects; a failing effect is an error.
    server.cli(&["SET", "not-a-hash", "x"]);
    let mut wrong = soloist::redis::cmd("HINCRBY");
    wrong.arg("not-a-hash").arg("f").arg(1);
    assert!(
        second
            .commit("charged:42", "r3", None, &[wrong])
            .await
            .is_err()
    );
    assert_eq!(
        locks.fenced_get("charged:42").await.unwrap().unwrap().value,
        b"r3"
    );
    // The memory backend has no Redis to apply them to.
    let memory = LockClient::memory();
    let guard = memory.lock("k").acquire().await.unwrap();
    assert!(matches!(
        guard.commit("r", "v", None, &effects).await,
        Err(LockError::InvalidArgument {
            name: "effects",
            ..
        })
    ));
}

/// Waiters in three clients queue in the order they came, and each release
/// wakes only the first of them: one `PUBLISH` per hand-off, the lock passed
/// on first come, first served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_release_wakes_the_longest_waiting_client_only() {
    let server = RedisServer::start();
    let holder = connect(&server).await;
    let held = holder.lock("turns").acquire().await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (locks, order) = (connect(&server).await, order.clone());
        tasks.push(tokio::spawn(async move {
            let guard = locks
                .lock("turns")
                .wait(30 * SECOND)
                .acquire()
                .await
                .unwrap();
            order.lock().unwrap().push(i);
            guard.release().await.unwrap();
        }));
        // Listening too: a client that queued but has not subscribed yet
        // is passed over by a release.
        until("the waiter listening", || {
            listening(&server, "turns") == i + 1
        })
        .await;
    }
    let publish = command_calls(&server, "publish");
    held.release().await.unwrap();
    for task in tasks {
        finished(task).await;
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    // The holder's release and the first two waiters' woke one client each;
    // the last release found nobody queued.
    assert_eq!(command_calls(&server, "publish") - publish, 3);
    assert_eq!(queued(&server, "turns"), 0);
}

/// A client that gave up waiting, or went away, still stands in the queue; a
/// wake-up that reaches it (or reaches nobody) goes to the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_up_skips_clients_that_stopped_waiting() {
    let server = RedisServer::start();
    let holder = connect(&server).await;
    let held = holder.lock("skip").acquire().await.unwrap();
    // One client gives up; another is dropped with its waiter.
    let quitter = connect(&server).await;
    let gave_up = quitter
        .lock("skip")
        .wait(Duration::from_millis(200))
        .acquire()
        .await;
    assert!(
        matches!(gave_up, Err(LockError::Timeout { .. })),
        "{gave_up:?}"
    );
    let gone = connect(&server).await;
    let abandoned = tokio::spawn(async move {
        let _ = gone.lock("skip").wait(30 * SECOND).acquire().await;
    });
    until("both queued", || queued(&server, "skip") == 2).await;
    abandoned.abort();
    let _ = abandoned.await;
    let gone_id = server.cli(&["LINDEX", "soloist:waiters:{skip}", "1"]);
    until("the dropped client unsubscribed", || {
        server
            .cli(&["PUBSUB", "NUMSUB", &format!("soloist:wake:{gone_id}")])
            .ends_with('0')
    })
    .await;
    let waiter = connect(&server).await;
    let task = tokio::spawn(async move {
        waiter
            .lock("skip")
            .wait(30 * SECOND)
            .acquire()
            .await
            .unwrap()
            .fence()
    });
    until("the last waiter queued and listening", || {
        queued(&server, "skip") == 3 && listening(&server, "skip") == 2
    })
    .await;
    let (held_fence, publish) = (held.fence(), command_calls(&server, "publish"));
    held.release().await.unwrap();
    let fence = finished(task).await;
    assert!(fence > held_fence);
    // Released: woke the quitter, which passed it on; the dropped client's
    // wake-up reached nobody; the waiter was woken.
    assert_eq!(command_calls(&server, "publish") - publish, 3);
    assert_eq!(queued(&server, "skip"), 0);
}

/// A waiter dropped after its wake-up arrived but before it acted on it
/// hands the wake-up to the next client rather than taking it along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_dropped_with_its_wake_up_unheeded_passes_it_on() {
    let server = RedisServer::start();
    let holder = connect(&server).await;
    let held = holder.lock("baton").acquire().await.unwrap();
    let first = connect(&server).await;
    let mut dropped = Box::pin(first.lock("baton").wait(30 * SECOND).acquire());
    // Driven only until it has queued, then left unpolled.
    let queued_first = tokio::time::timeout(5 * SECOND, async {
        loop {
            tokio::select! {
                biased;
                result = &mut dropped => panic!("the first waiter finished: {result:?}"),
                () = sleep(Duration::from_millis(10)) => {}
            }
            if listening(&server, "baton") == 1 {
                break;
            }
        }
    });
    queued_first.await.expect("the first waiter queued");
    let second = connect(&server).await;
    let task = tokio::spawn(async move {
        let guard = second.lock("baton").wait(30 * SECOND).acquire().await?;
        guard.release().await
    });
    until("the second waiter listening", || {
        listening(&server, "baton") == 2
    })
    .await;
    let publish = command_calls(&server, "publish");
    held.release().await.unwrap();
    // The wake-up reaches the first client, whose waiter is not polled.
    sleep(Duration::from_millis(200)).await;
    assert!(!task.is_finished(), "the second waiter was woken directly");
    drop(dropped);
    finished(task).await.unwrap();
    // One wake-up for the first client, one passed on to the second.
    assert_eq!(command_calls(&server, "publish") - publish, 2);
}

/// A waiter whose first attempt queued it is woken by the release that
/// comes next, even when that release lands before the waiter has gone on
/// from its attempt (a task the scheduler has not got back to yet): the
/// wake-up must not be passed over for lack of a listener, leaving the
/// waiter to its poll a second later while the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_right_after_the_first_attempt_queued_wakes_the_waiter() {
    let server = RedisServer::start();
    let holder = connect(&server).await;
    let waiter = connect(&server).await;
    // An earlier wait leaves the waiter's client subscribed to its wake-ups,
    // so the first attempt of each wait below needs no second one.
    let warm = holder.lock("warm").acquire().await.unwrap();
    let task = tokio::spawn({
        let waiter = waiter.clone();
        async move {
            let guard = waiter.lock("warm").wait(30 * SECOND).acquire().await?;
            guard.release().await
        }
    });
    until("the warm-up waiter queued", || queued(&server, "warm") == 1).await;
    warm.release().await.unwrap();
    finished(task).await.unwrap();

    for round in 0..5 {
        let key = format!("prompt:{round}");
        let held = holder.lock(&key).acquire().await.unwrap();
        let mut acquire = Box::pin(waiter.lock(&key).wait(30 * SECOND).acquire());
        // One poll sends the first attempt; the waiter is then left unpolled
        // until the release has come and gone.
        assert!(futures::poll!(&mut acquire).is_pending());
        until("the first attempt queued", || queued(&server, &key) == 1).await;
        let publish = command_calls(&server, "publish");
        let released_at = Instant::now();
        held.release().await.unwrap();
        until("the release published the wake-up", || {
            command_calls(&server, "publish") > publish
        })
        .await;
        // Time for the wake-up to reach the waiter's client.
        sleep(Duration::from_millis(50)).await;
        let guard = tokio::time::timeout(5 * SECOND, acquire)
            .await
            .expect("the waiter got the lock")
            .unwrap();
        let latency = released_at.elapsed();
        assert!(
            latency < Duration::from_millis(300),
            "round {round}: the waiter took the free lock {latency:?} after its release"
        );
        guard.release().await.unwrap();
    }
}

/// An acquisition sent again after its reply was lost (a cluster client
/// resends on a dropped connection) finds the key holding its own token:
/// it is taken, renewed, and gets a fence above the one nobody received,
/// instead of being refused and leaving the key held by no one.
#[tokio::test]
async fn a_resent_acquisition_takes_the_key_it_already_holds() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let guard = locks
        .lock("resent")
        .ttl(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    let token = token_of(&server, "resent");
    server.cli(&["PEXPIRE", "soloist:lock:{resent}", "1000"]);
    // The acquire script, run for `token` as the client runs it.
    let attempt = |token: &str| {
        server.cli(&[
            "EVAL",
            include_str!("../src/scripts/acquire.lua"),
            "3",
            "soloist:lock:{resent}",
            "soloist:fence:{resent}",
            "soloist:waiters:{resent}",
            token,
            "5000",
            "",
            "0",
            "fence",
        ])
    };
    let reply = attempt(&token);
    let mut lines = reply.lines();
    assert_eq!(lines.next(), Some("1"), "taken: {reply}");
    let fence: u64 = lines.next().unwrap().parse().unwrap();
    assert!(fence > guard.fence());
    let pttl: u64 = server
        .cli(&["PTTL", "soloist:lock:{resent}"])
        .parse()
        .unwrap();
    assert!(pttl > 1000, "renewed to the ttl asked: {pttl} ms");
    assert_eq!(token_of(&server, "resent"), token);
    // Another token is still refused.
    let other = attempt("someone-else");
    assert_eq!(other.lines().next(), Some("0"), "{other}");
}

/// The same for a read-write lock: a resent read attempt that finds its own
/// token among the readers (a writer waiting meanwhile) is taken and
/// renewed, not refused while its lease sits unrenewed in the readers.
#[tokio::test]
async fn a_resent_read_attempt_takes_the_lock_it_already_holds() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let reading = locks.rw_lock("resent").read().acquire().await.unwrap();
    let readers = "soloist:rw-readers:{resent}";
    let token = server.cli(&["ZRANGE", readers, "0", "0"]);
    assert!(!token.is_empty(), "one reader");
    // A writer has come and left its intent since.
    server.cli(&[
        "SET",
        "soloist:rw-intent:{resent}",
        "a-writer",
        "PX",
        "3000",
    ]);
    // The read-write acquire script, run for `token` as the client runs it.
    let attempt = |token: &str, request: &str| {
        server.cli(&[
            "EVAL",
            include_str!("../src/scripts/rw_acquire.lua"),
            "5",
            readers,
            "soloist:rw-writer:{resent}",
            "soloist:rw-intent:{resent}",
            "soloist:rw-fence:{resent}",
            "soloist:rw-waiters:{resent}",
            token,
            "5000",
            "read",
            request,
            "",
        ])
    };
    let reply = attempt(&token, "the-reader");
    let mut lines = reply.lines();
    assert_eq!(lines.next(), Some("1"), "taken: {reply}");
    let fence: u64 = lines.next().unwrap().parse().unwrap();
    assert!(fence > reading.fence());
    // A new reader is still kept out by the intent.
    let other = attempt("someone-else", "another-reader");
    assert_eq!(other.lines().next(), Some("0"), "{other}");
}

/// `release_with`: the commands run with the release (a waiter is still
/// woken at once), also when the key was no longer ours; a refused one is
/// reported after the release; a permit carries them too; the memory
/// backend releases and refuses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_ride_on_a_release() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let guard = locks.lock("ride").ttl(10 * SECOND).acquire().await.unwrap();
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let guard = locks.lock("ride").wait(10 * SECOND).acquire().await;
            (started.elapsed(), guard.map(drop))
        })
    };
    until("the waiter queued", || queued(&server, "ride") == 1).await;
    let mut log = soloist::redis::cmd("RPUSH");
    log.arg("ride:log").arg("done");
    guard.release_with(&[log.clone()]).await.unwrap();
    let (waited, taken) = finished(waiter).await;
    taken.unwrap();
    assert!(waited < 5 * SECOND, "the waiter was woken, not polled");
    assert_eq!(server.cli(&["LRANGE", "ride:log", "0", "-1"]), "done");

    // Not ours any more: Lost, and the command ran all the same.
    let guard = locks
        .lock("lapse")
        .ttl(Duration::from_millis(50))
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    sleep(Duration::from_millis(120)).await;
    assert!(matches!(
        guard.release_with(&[log.clone()]).await,
        Err(LockError::Lost { .. })
    ));
    assert_eq!(server.cli(&["LLEN", "ride:log"]), "2");

    // A refused command: released, reported, the next one applied.
    server.cli(&["SET", "ride:string", "x"]);
    let mut wrong = soloist::redis::cmd("RPUSH");
    wrong.arg("ride:string").arg("y");
    let guard = locks.lock("refuse").acquire().await.unwrap();
    let refused = guard.release_with(&[wrong, log.clone()]).await;
    assert!(
        matches!(refused, Err(LockError::AlongRefused { .. })),
        "{refused:?}"
    );
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{refuse}"]), "0");
    assert_eq!(server.cli(&["LLEN", "ride:log"]), "3");

    let permit = locks.semaphore("pool", 2).acquire().await.unwrap();
    permit.release_with(&[log.clone()]).await.unwrap();
    assert_eq!(server.cli(&["ZCARD", "soloist:sem:{pool}"]), "0");
    assert_eq!(server.cli(&["LLEN", "ride:log"]), "4");

    let memory = LockClient::memory();
    let guard = memory.lock("m").acquire().await.unwrap();
    assert!(matches!(
        guard.release_with(&[log]).await,
        Err(LockError::InvalidArgument { name: "along", .. })
    ));
    memory
        .lock("m")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// The lock cycle's commands write each key's name where they send it:
/// the names hold the key as the key layout says (in braces, after `=`
/// when it carries a hash tag, in `{=…}` when it holds a `}`), and the
/// release finds them, also after the server forgot its scripts.
#[tokio::test]
async fn the_cycle_names_keys_by_the_layout_and_releases_after_a_script_flush() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    for (key, name) in [
        ("plain", "soloist:lock:{plain}"),
        ("{user:7}:cart", "soloist:lock:={user:7}:cart"),
        ("a}b", "soloist:lock:{=a}b}"),
    ] {
        for fenced in [true, false] {
            let request = locks.lock(key).ttl(5 * SECOND);
            let release = if fenced {
                let guard = request.acquire().await.unwrap();
                assert_eq!(server.cli(&["EXISTS", name]), "1", "{key}: {name}");
                server.cli(&["SCRIPT", "FLUSH"]);
                guard.release().await
            } else {
                let guard = request.acquire_unfenced().await.unwrap();
                assert_eq!(server.cli(&["EXISTS", name]), "1", "{key}: {name}");
                server.cli(&["SCRIPT", "FLUSH"]);
                guard.release().await
            };
            release.unwrap_or_else(|err| panic!("{key}: release after SCRIPT FLUSH: {err}"));
            assert_eq!(server.cli(&["EXISTS", name]), "0", "{key}: released");
        }
    }
}
