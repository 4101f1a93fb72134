//! The fast path of an acquisition that does not wait: `SET NX PX GET` and
//! the fence counter's `INCR` in one `MULTI`/`EXEC`, and the cases it leaves
//! to the acquire script (a counter never seeded, a user that may not run
//! `MULTI`), with every fence guarantee kept.

mod common;

use std::time::Duration;

use common::{command_calls, until};
use soloist::LockClient;
use soloist_testkit::{RedisServer, SOLOIST_ACL_RULES};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
const WEEK_MS: u64 = 7 * 24 * 60 * 60 * 1000;

async fn connect(server: &RedisServer) -> LockClient {
    LockClient::connect(&server.url()).await.expect("connect")
}

/// The server's clock in microseconds.
fn server_micros(server: &RedisServer) -> u64 {
    let time = server.cli(&["TIME"]);
    let mut parts = time.lines().map(|part| part.parse::<u64>().unwrap());
    parts.next().unwrap() * 1_000_000 + parts.next().unwrap()
}

fn counter_ttl_ms(server: &RedisServer, key: &str) -> i64 {
    server
        .cli(&["PTTL", &format!("soloist:fence:{{{key}}}")])
        .parse()
        .unwrap()
}

/// A free key with a seeded counter costs one transaction and no script.
#[tokio::test]
async fn a_free_key_is_taken_in_one_transaction_without_a_script() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    // The first acquisition seeds the counter.
    locks
        .lock("fast")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let (multi, evalsha, incr) = (
        command_calls(&server, "multi"),
        command_calls(&server, "evalsha"),
        command_calls(&server, "incr"),
    );
    let guard = locks.lock("fast").acquire().await.unwrap();
    assert_eq!(command_calls(&server, "multi"), multi + 1);
    assert_eq!(command_calls(&server, "evalsha"), evalsha, "no script");
    assert_eq!(command_calls(&server, "incr"), incr + 1);
    let stored: u64 = server
        .cli(&["GET", "soloist:fence:{fast}"])
        .parse()
        .unwrap();
    assert_eq!(guard.fence(), stored);
    guard.release().await.unwrap();
}

/// A key this client never took (a lock per run, per message) costs one
/// script call, as before the fast path: no transaction that would find its
/// counter new and leave the attempt to the script anyway.
#[tokio::test]
async fn a_key_taken_for_the_first_time_costs_one_script_call() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    // Loads the script (a first `EVALSHA` answered `NOSCRIPT` counts too).
    locks
        .lock("warm")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let calls = |command| command_calls(&server, command);
    for run in 0..3 {
        let (evalsha, exec) = (calls("evalsha"), calls("exec"));
        let guard = locks.lock(format!("run:{run}")).acquire().await.unwrap();
        assert_eq!((calls("evalsha"), calls("exec")), (evalsha + 1, exec));
        guard.release().await.unwrap();
    }
}

/// A new counter is seeded from the server clock in microseconds and kept a
/// week, as the acquire script has always done: the transaction's `INCR`
/// makes it 1, which is never handed out.
#[tokio::test]
async fn a_new_counter_is_seeded_from_the_clock() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let before = server_micros(&server);
    let guard = locks.lock("fresh").acquire().await.unwrap();
    assert!(
        guard.fence() >= before,
        "fence {} below the clock {before}",
        guard.fence()
    );
    let ttl = counter_ttl_ms(&server, "fresh");
    assert!(
        ttl > 0 && ttl as u64 <= WEEK_MS && ttl as u64 > WEEK_MS - 60_000,
        "{ttl}"
    );
    let seeded = guard.fence();
    guard.release().await.unwrap();
    let next = locks.lock("fresh").acquire().await.unwrap();
    assert_eq!(next.fence(), seeded + 1, "then one up per acquisition");
}

/// The server lost the counter, and an attempt that found the key held
/// recreated it with its `INCR` (the transaction runs it whether the `SET`
/// took the key or not): the counter reads a small number without a ttl.
/// The next acquisition still gets a fence above every earlier one.
#[tokio::test]
async fn a_counter_recreated_by_a_failed_attempt_is_seeded() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    let first = locks.lock("lost").acquire().await.unwrap();
    let issued = first.fence();
    assert!(locks.lock("lost").acquire().await.is_err(), "held");
    first.release().await.unwrap();
    server.cli(&["DEL", "soloist:fence:{lost}"]);
    server.cli(&["SET", "soloist:fence:{lost}", "2"]);
    let second = locks.lock("lost").acquire().await.unwrap();
    assert!(
        second.fence() > issued,
        "fence {} not above {issued}",
        second.fence()
    );
    assert!(counter_ttl_ms(&server, "lost") > 0, "seeded with a ttl");
}

/// A waiting client queued behind a key taken by the fast path is woken by
/// its release, not by polling (a waiter polls every second at the soonest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_fast_path_holder_is_woken_by_its_release() {
    let server = RedisServer::start();
    let (holder, other) = (connect(&server).await, connect(&server).await);
    let held = holder
        .lock("queue")
        .ttl(30 * SECOND)
        .acquire()
        .await
        .unwrap();
    let waiter = tokio::spawn(async move { other.lock("queue").wait(20 * SECOND).acquire().await });
    until("the waiter queues and subscribes", || {
        common::listening(&server, "queue") == 1
    })
    .await;
    assert!(
        server.cli(&["GET", "soloist:lock:{queue}"]).ends_with('+'),
        "the waiter marked the holder's value"
    );
    let fence = held.fence();
    let released = Instant::now();
    held.release().await.unwrap();
    let taken = tokio::time::timeout(10 * SECOND, waiter)
        .await
        .expect("waiter stuck")
        .unwrap()
        .unwrap();
    assert!(
        released.elapsed() < Duration::from_millis(600),
        "woken after {:?}",
        released.elapsed()
    );
    assert!(taken.fence() > fence);
}

/// A user whose ACL lacks `MULTI` and `EXEC` (the recipe before they were
/// added) acquires through the script: the client finds out at connect,
/// with one refused `MULTI`, and never sends a transaction.
#[tokio::test]
async fn a_user_without_transactions_acquires_through_the_script() {
    let server = RedisServer::start();
    let mut command = vec!["ACL", "SETUSER", "soloist", "on", ">secret"];
    command.extend(
        SOLOIST_ACL_RULES
            .iter()
            .copied()
            .filter(|rule| !matches!(*rule, "+multi" | "+exec")),
    );
    assert_eq!(server.cli(&command), "OK");
    let url = server.url().replace("redis://", "redis://soloist:secret@");
    let locks = LockClient::connect(&url).await.expect("connect");
    let mut fences = Vec::new();
    for _ in 0..3 {
        let guard = locks.lock("acl").acquire().await.expect("acquire");
        assert!(
            locks.lock("acl").acquire().await.is_err(),
            "the key is held while the guard lives"
        );
        fences.push(guard.fence());
        guard.release().await.expect("release");
        assert_eq!(server.cli(&["EXISTS", "soloist:lock:{acl}"]), "0");
    }
    assert!(
        fences.windows(2).all(|pair| pair[0] < pair[1]),
        "{fences:?}"
    );
    assert!(fences[0] >= 1_000_000_000_000_000, "seeded: {fences:?}");
    let stats = server.cli(&["INFO", "commandstats"]);
    let refused = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_multi:"))
        .and_then(|line| {
            line.split(',')
                .find_map(|field| field.strip_prefix("rejected_calls="))
        })
        .unwrap_or("0");
    assert_eq!(refused, "1", "MULTI tried once, at connect: {stats}");
}

/// A user that may run `MULTI` but not `EXEC` would leave connections inside
/// a transaction: refused at connect, naming both.
#[tokio::test]
async fn a_user_with_multi_but_not_exec_is_refused_at_connect() {
    let server = RedisServer::start();
    let mut command = vec!["ACL", "SETUSER", "soloist", "on", ">secret"];
    command.extend(
        SOLOIST_ACL_RULES
            .iter()
            .copied()
            .filter(|rule| *rule != "+exec"),
    );
    assert_eq!(server.cli(&command), "OK");
    let url = server.url().replace("redis://", "redis://soloist:secret@");
    match LockClient::connect(&url).await {
        Err(soloist::LockError::InvalidArgument {
            name: "acl",
            reason,
        }) => {
            assert!(reason.contains("+multi +exec"), "{reason}");
        }
        other => panic!("expected InvalidArgument(acl), got {other:?}"),
    }
}

/// Connects as the user `soloist`, granted [`SOLOIST_ACL_RULES`]; the
/// default user stays on, for the test to change the grant.
async fn connect_as_acl_user(server: &RedisServer) -> LockClient {
    let mut command = vec!["ACL", "SETUSER", "soloist", "on", ">secret"];
    command.extend_from_slice(SOLOIST_ACL_RULES);
    assert_eq!(server.cli(&command), "OK");
    let url = server.url().replace("redis://", "redis://soloist:secret@");
    LockClient::connect(&url).await.expect("connect")
}

/// Takes and gives back `key` twice: the first acquisition seeds the
/// counter through the script, the second takes the fast path.
async fn warm_fast_path(server: &RedisServer, locks: &LockClient, key: &str) {
    for _ in 0..2 {
        locks
            .lock(key)
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    assert!(command_calls(server, "multi") >= 1, "the fast path ran");
}

/// How many `MULTI`s the server refused.
fn multi_rejected(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_multi:"))
        .and_then(|line| {
            line.split(',')
                .find_map(|field| field.strip_prefix("rejected_calls="))
        })
        .map_or(0, |calls| calls.parse().unwrap())
}

/// The lock takes turns with the guard: held while it lives, free after.
async fn takes_turns(server: &RedisServer, locks: &LockClient, key: &str) -> u64 {
    let guard = locks.lock(key).acquire().await.expect("acquire");
    assert!(
        matches!(
            locks.lock(key).acquire().await,
            Err(soloist::LockError::Busy { .. })
        ),
        "the key is held while the guard lives"
    );
    let fence = guard.fence();
    guard.release().await.expect("release");
    assert_eq!(
        server.cli(&["EXISTS", &format!("soloist:lock:{{{key}}}")]),
        "0"
    );
    fence
}

/// `MULTI` taken from the user while the client runs: the `SET` and `INCR`
/// sent after the refused `MULTI` run on their own, and their replies are
/// the acquisition's outcome. No panic, no lock left without a guard, and
/// the client acquires through the script from then on.
#[tokio::test]
async fn multi_revoked_at_runtime_falls_back_to_the_script() {
    let server = RedisServer::start();
    let locks = connect_as_acl_user(&server).await;
    warm_fast_path(&server, &locks, "revoked").await;
    let before = server
        .cli(&["GET", "soloist:fence:{revoked}"])
        .parse::<u64>()
        .unwrap();
    assert_eq!(server.cli(&["ACL", "SETUSER", "soloist", "-multi"]), "OK");
    let guard = tokio::time::timeout(10 * SECOND, locks.lock("revoked").acquire())
        .await
        .expect("answered")
        .expect("acquired");
    assert!(guard.fence() > before, "{} > {before}", guard.fence());
    assert_eq!(
        server.cli(&["EXISTS", "soloist:lock:{revoked}"]),
        "1",
        "the guard holds the key"
    );
    guard.release().await.expect("release");
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{revoked}"]), "0");
    let refused = multi_rejected(&server);
    let mut fences = Vec::new();
    for _ in 0..3 {
        fences.push(takes_turns(&server, &locks, "revoked").await);
    }
    assert!(
        fences.windows(2).all(|pair| pair[0] < pair[1]),
        "{fences:?}"
    );
    assert_eq!(multi_rejected(&server), refused, "no MULTI sent again");
}

/// `EXEC` taken from the user while the client runs: the server keeps the
/// connection inside the transaction, so it is retired, and the attempt and
/// those after it go through the script on a fresh connection.
#[tokio::test]
async fn exec_revoked_at_runtime_falls_back_to_the_script() {
    let server = RedisServer::start();
    let locks = connect_as_acl_user(&server).await;
    warm_fast_path(&server, &locks, "revoked").await;
    assert_eq!(server.cli(&["ACL", "SETUSER", "soloist", "-exec"]), "OK");
    let multi = command_calls(&server, "multi");
    let mut fences = Vec::new();
    for _ in 0..3 {
        let fence = tokio::time::timeout(10 * SECOND, takes_turns(&server, &locks, "revoked"))
            .await
            .expect("answered");
        fences.push(fence);
    }
    assert!(
        fences.windows(2).all(|pair| pair[0] < pair[1]),
        "{fences:?}"
    );
    assert_eq!(
        command_calls(&server, "multi"),
        multi + 1,
        "MULTI tried once"
    );
    until("no connection is left inside a transaction", || {
        !server.cli(&["CLIENT", "LIST"]).lines().any(|client| {
            client.split(' ').any(|field| {
                field
                    .strip_prefix("flags=")
                    .is_some_and(|f| f.contains('x'))
            })
        })
    })
    .await;
}

/// A passing refusal (out of memory under `noeviction`) fails the attempts
/// while it lasts and leaves the fast path on for when it is over.
#[tokio::test]
async fn a_passing_refusal_leaves_the_fast_path_on() {
    let server = RedisServer::start();
    let locks = connect(&server).await;
    warm_fast_path(&server, &locks, "full").await;
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory-policy"]),
        "maxmemory-policy\nnoeviction"
    );
    assert_eq!(server.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    for _ in 0..2 {
        match locks.lock("full").acquire().await {
            Err(soloist::LockError::Busy { .. }) | Ok(_) => {
                panic!("acquired or busy while the server refuses writes")
            }
            Err(err) => assert!(err.to_string().contains("OOM"), "{err}"),
        }
    }
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{full}"]), "0");
    assert_eq!(server.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    let multi = command_calls(&server, "multi");
    let guard = locks.lock("full").acquire().await.expect("acquire");
    // (Scripts are not counted: the failed attempts' clean-up releases may
    // still be on their way.)
    assert_eq!(
        command_calls(&server, "multi"),
        multi + 1,
        "the fast path is on again"
    );
    guard.release().await.expect("release");
    takes_turns(&server, &locks, "full").await;
}
