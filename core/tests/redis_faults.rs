//! Faults a Redis-backed lock must survive: a paused or restarted server, a
//! stalled or cut network, and lock holders that are killed or frozen.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{command_calls, eventually, listening, queued, until};
use soloist::{FencedWrite, LockClient, LockError};
use soloist_testkit::{
    ChildProcess, Proxy, RedisServer, child_role, read_from_parent, send_to_parent,
};
use tokio::time::{Instant, sleep, timeout};

const SECOND: Duration = Duration::from_secs(1);

async fn connect(url: &str, op_timeout: Duration) -> LockClient {
    LockClient::builder()
        .op_timeout(op_timeout)
        .connect(url)
        .await
        .expect("connect")
}

/// With the server frozen, renewals hang; `lost` must still fire before the
/// server could expire the key and give it to someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_before_the_deadline_when_redis_is_paused() {
    let server = RedisServer::start();
    let locks = connect(&server.url(), Duration::from_millis(500)).await;
    let ttl = Duration::from_millis(1500);
    let guard = locks.lock("frozen").ttl(ttl).acquire().await.unwrap();
    sleep(Duration::from_millis(700)).await; // one renewal lands
    assert!(guard.is_held());
    server.pause();
    let paused_at = Instant::now();
    timeout(5 * SECOND, guard.lost()).await.expect("lost fired");
    let fired = paused_at.elapsed();
    server.resume();
    // Every confirmed renewal was sent before the pause, so the key lives on
    // the server until at least `paused_at + ttl`.
    assert!(
        fired < ttl,
        "lost fired {fired:?} into the pause, ttl {ttl:?}"
    );
    assert!(fired > ttl / 3, "lost fired too early: {fired:?}");
    assert!(!guard.is_held());
    assert_eq!(guard.remaining(), Duration::ZERO);
}

/// A server killed and restarted (empty) mid-run: errors while it is down,
/// then recovery; no panic, no stuck waiter, and fences do not go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_run_gives_errors_then_recovery() {
    let mut server = RedisServer::start();
    let url = server.url();
    let op_timeout = Duration::from_millis(500);
    let locks = connect(&url, op_timeout).await;
    let held = locks.lock("held").ttl(SECOND).acquire().await.unwrap();
    let fence_before = held.fence();

    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let restarted = Arc::new(AtomicBool::new(false));
    let mut contenders = Vec::new();
    for client in 0..2 {
        let locks = connect(&url, op_timeout).await;
        for _ in 0..2 {
            let (locks, stop, errors, restarted) = (
                locks.clone(),
                stop.clone(),
                errors.clone(),
                restarted.clone(),
            );
            contenders.push(tokio::spawn(async move {
                let mut after_restart = 0;
                while !stop.load(Ordering::SeqCst) {
                    match locks
                        .lock("contended")
                        .ttl(SECOND)
                        .wait(SECOND)
                        .acquire()
                        .await
                    {
                        Ok(guard) => {
                            sleep(Duration::from_millis(2)).await;
                            let _ = guard.release().await;
                            if restarted.load(Ordering::SeqCst) {
                                after_restart += 1;
                            }
                        }
                        Err(err) => {
                            assert!(err.is_backend(), "client {client}: {err}");
                            errors.fetch_add(1, Ordering::SeqCst);
                            sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                after_restart
            }));
        }
    }
    sleep(Duration::from_millis(500)).await;
    server.kill();
    sleep(Duration::from_millis(700)).await;
    server.start_again();
    restarted.store(true, Ordering::SeqCst);

    timeout(5 * SECOND, held.lost())
        .await
        .expect("the holder learns its key is gone");
    let after = eventually("acquire again after the restart", || {
        locks.lock("held").wait(SECOND).acquire()
    })
    .await;
    assert!(
        after.fence() > fence_before,
        "fence went back after the restart: {} <= {fence_before}",
        after.fence()
    );

    sleep(2 * SECOND).await;
    stop.store(true, Ordering::SeqCst);
    for contender in contenders {
        let after_restart = timeout(5 * SECOND, contender)
            .await
            .expect("a contender is stuck")
            .expect("contender task");
        assert!(after_restart > 0, "a contender never recovered");
    }
    assert!(
        errors.load(Ordering::SeqCst) > 0,
        "the outage went unnoticed"
    );
}

/// The connection a restart broke is replaced: at most one operation sees
/// the broken connection, the next ones run on a fresh one.
#[tokio::test]
async fn pool_replaces_connections_broken_by_a_restart() {
    let mut server = RedisServer::start();
    let locks = connect(&server.url(), SECOND).await;
    locks
        .lock("k")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    server.restart();
    let mut failures = 0;
    for _ in 0..5 {
        match locks.lock("k").acquire().await {
            Ok(guard) => {
                guard.release().await.unwrap();
                break;
            }
            Err(err) => {
                assert!(matches!(err, LockError::Connection { .. }), "{err:?}");
                failures += 1;
            }
        }
    }
    assert!(
        failures <= 1,
        "{failures} operations failed after the restart"
    );
    for _ in 0..5 {
        locks
            .lock("k")
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
}

/// A stalled network: operations fail within the operation timeout and the
/// holder's `lost` fires within its ttl. A cut network: connection errors.
/// Both recover when the network does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_or_cut_network_fails_fast_and_recovers() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let op_timeout = Duration::from_millis(300);
    let locks = connect(&proxy.url(), op_timeout).await;
    let ttl = SECOND;
    let held = locks.lock("held").ttl(ttl).acquire().await.unwrap();

    proxy.stall();
    let stalled_at = Instant::now();
    match locks.lock("other").acquire().await {
        Err(LockError::Unresponsive { .. }) => {}
        other => panic!("expected Unresponsive, got {other:?}"),
    }
    assert!(stalled_at.elapsed() < op_timeout * 3);
    timeout(2 * ttl, held.lost()).await.expect("lost fired");
    assert!(stalled_at.elapsed() < ttl, "lost fired after the ttl");
    proxy.restore();
    eventually_acquires(&locks).await;

    proxy.cut();
    let err = locks
        .lock("other")
        .acquire()
        .await
        .expect_err("network is cut");
    assert!(err.is_backend(), "{err:?}");
    proxy.restore();
    eventually_acquires(&locks).await;
}

/// Retries until a full acquire and release cycle succeeds.
async fn eventually_acquires(locks: &LockClient) {
    let guard = eventually("recover", || locks.lock("after").acquire()).await;
    guard.release().await.expect("release after recovering");
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A holder process killed with SIGKILL stops renewing: its key expires
/// within one ttl, while a live holder's key outlives the ttl.
#[test]
fn killed_holder_process_key_expires_within_ttl() {
    let ttl = 2 * SECOND;
    if child_role().as_deref() == Some("holder") {
        block_on(async {
            let url = std::env::var("REDIS_URL").expect("REDIS_URL");
            let locks = connect(&url, SECOND).await;
            let guard = locks.lock("job").ttl(ttl).acquire().await.unwrap();
            send_to_parent(&format!("locked {}", guard.fence()));
            tokio::task::spawn_blocking(read_from_parent).await.unwrap();
        });
        return;
    }
    let server = RedisServer::start();
    let mut holder = ChildProcess::spawn(
        "killed_holder_process_key_expires_within_ttl",
        "holder",
        &[("REDIS_URL", &server.url())],
    );
    assert!(holder.read_line().starts_with("locked "));
    std::thread::sleep(ttl + ttl / 2);
    assert_eq!(
        server.cli(&["EXISTS", "soloist:lock:{job}"]),
        "1",
        "a live holder renews"
    );
    holder.kill();
    let killed_at = std::time::Instant::now();
    while server.cli(&["EXISTS", "soloist:lock:{job}"]) == "1" {
        assert!(
            killed_at.elapsed() < ttl + SECOND / 10,
            "key outlived its ttl"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        killed_at.elapsed() > ttl / 3,
        "the key vanished without expiring"
    );
}

/// The end-to-end fencing story: a holder frozen past its ttl resumes and
/// writes; the write is refused because the next holder wrote with a
/// higher fence.
#[test]
fn paused_holders_late_write_is_rejected() {
    const TEST: &str = "paused_holders_late_write_is_rejected";
    let ttl = SECOND;
    if child_role().as_deref() == Some("holder") {
        block_on(async {
            let url = std::env::var("REDIS_URL").expect("REDIS_URL");
            let locks = connect(&url, SECOND).await;
            let guard = locks.lock("report").ttl(ttl).acquire().await.unwrap();
            let early = locks
                .fenced_set("report", guard.fence(), "holder-early")
                .await
                .unwrap();
            assert!(early.is_accepted());
            send_to_parent(&format!("locked {}", guard.fence()));
            tokio::task::spawn_blocking(read_from_parent).await.unwrap();
            // Resumed: write at once, as a holder that does not look would.
            let late = locks
                .fenced_set("report", guard.fence(), "holder-late")
                .await
                .unwrap();
            send_to_parent(&match late {
                FencedWrite::Accepted => "accepted".to_owned(),
                FencedWrite::Rejected { highest } => format!("rejected {highest}"),
                other => format!("{other:?}"),
            });
            tokio::task::spawn_blocking(read_from_parent).await.unwrap();
        });
        return;
    }
    let server = RedisServer::start();
    let mut holder = ChildProcess::spawn(TEST, "holder", &[("REDIS_URL", &server.url())]);
    let old_fence: u64 = holder
        .read_line()
        .strip_prefix("locked ")
        .and_then(|fence| fence.parse().ok())
        .expect("the holder reports its fence");
    holder.pause();
    block_on(async {
        let locks = connect(&server.url(), SECOND).await;
        let started = Instant::now();
        let guard = locks
            .lock("report")
            .wait(5 * SECOND)
            .acquire()
            .await
            .unwrap();
        assert!(
            started.elapsed() > ttl / 2,
            "taken while the frozen holder's lease was valid"
        );
        assert!(guard.fence() > old_fence);
        let write = locks
            .fenced_set("report", guard.fence(), "successor")
            .await
            .unwrap();
        assert!(write.is_accepted());

        holder.resume();
        holder.write_line("write now");
        assert_eq!(holder.read_line(), format!("rejected {}", guard.fence()));
        let stored = locks.fenced_get("report").await.unwrap().expect("stored");
        assert_eq!(stored.value, b"successor");
        assert_eq!(stored.fence, guard.fence());
    });
}

/// A waiting client frozen when its turn comes takes that wake-up with it:
/// the next waiter gets the lock at its next poll, not at the key's expiry,
/// and the frozen client gets its turn once it runs again.
#[test]
fn a_frozen_waiter_holds_up_the_queue_for_one_poll_only() {
    const TEST: &str = "a_frozen_waiter_holds_up_the_queue_for_one_poll_only";
    if child_role().as_deref() == Some("waiter") {
        block_on(async {
            let url = std::env::var("REDIS_URL").expect("REDIS_URL");
            let locks = connect(&url, SECOND).await;
            let guard = locks
                .lock("turn")
                .wait(60 * SECOND)
                .acquire()
                .await
                .unwrap();
            send_to_parent(&format!("got {}", guard.fence()));
            tokio::task::spawn_blocking(read_from_parent).await.unwrap();
        });
        return;
    }
    let server = RedisServer::start();
    block_on(async {
        let holder = connect(&server.url(), SECOND).await;
        let held = holder.lock("turn").acquire().await.unwrap();
        let mut frozen = ChildProcess::spawn(TEST, "waiter", &[("REDIS_URL", &server.url())]);
        // Paused only once its wake channel is subscribed: a client caught
        // between queueing and subscribing is passed over by the release.
        until("the child queued and listening", || {
            listening(&server, "turn") == 1
        })
        .await;
        frozen.pause();
        let next = connect(&server.url(), SECOND).await;
        let waiter = tokio::spawn(async move {
            // Far shorter than the holder's 30 s lease: only a poll can make it.
            let guard = next.lock("turn").wait(5 * SECOND).acquire().await?;
            let fence = guard.fence();
            guard.release().await?;
            Ok::<_, LockError>(fence)
        });
        until("the next waiter queued", || queued(&server, "turn") == 2).await;
        let (held_fence, publish) = (held.fence(), command_calls(&server, "publish"));
        held.release().await.unwrap();
        let fence = waiter
            .await
            .unwrap()
            .expect("the next waiter polled its way in");
        assert!(fence > held_fence);
        // The release woke the frozen client alone: its connection was open.
        assert_eq!(command_calls(&server, "publish") - publish, 1);
        frozen.resume();
        let got: u64 = frozen
            .read_line()
            .strip_prefix("got ")
            .and_then(|fence| fence.parse().ok())
            .expect("the frozen client gets its turn");
        assert!(got > fence);
    });
}

/// A current-thread runtime on a thread of its own, running until `stop` is
/// sent or dropped: tasks spawned there can be held up as a whole.
fn side_runtime() -> (tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = stopped.await;
        });
    });
    (handle, stop)
}

/// Holds up every task of `runtime` until the returned sender is used or
/// dropped; returns once they are held.
async fn hold_up(runtime: &tokio::runtime::Handle) -> std::sync::mpsc::Sender<()> {
    let (held, holding) = tokio::sync::oneshot::channel();
    let (thaw, thawed) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        let _ = held.send(());
        // Blocks the runtime's only thread: nothing else there runs meanwhile.
        let _ = thawed.recv();
    });
    holding.await.expect("the runtime is held up");
    thaw
}

/// The watchdog's renewal R (the lease's ttl) reaches Redis just before an
/// `extend` E to a shorter ttl, but R's reply is handled after E's. Redis
/// applied R, then E, so the key dies at E's ttl: the late reply must not
/// put R's longer deadline back, and `lost` must fire before another client
/// can take the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_renewal_reply_does_not_undo_a_shorter_extend() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    // The connection, and the task that reads its replies, live on this runtime.
    let locks = connect(&proxy.url(), 2 * SECOND).await;
    // The watchdog runs on the runtime its first lease was taken on: here
    // one of its own, which the test can hold up while the connection's
    // replies keep arriving.
    let (watchdog_runtime, _stop) = side_runtime();
    // Long enough that a busy machine still keeps to the steps below.
    let ttl = 3 * SECOND;
    let guard = watchdog_runtime
        .spawn({
            let locks = locks.clone();
            async move { locks.lock("k").ttl(ttl).acquire().await }
        })
        .await
        .unwrap()
        .unwrap();
    // Loads the renewal script, so that each renewal below is one call; the
    // next renewal is due a third of the ttl after it.
    let acquired_at = Instant::now();
    guard.extend(ttl).await.unwrap();
    // Awaited from the start: a deadline that moves closer must wake it.
    let lease = guard.lease();
    let lost = tokio::spawn(async move {
        lease.lost().await;
        Instant::now()
    });
    // The first renewal is due a third of the ttl in; it goes out into the
    // stalled network, and the watchdog is held up before its reply comes.
    tokio::time::sleep_until(acquired_at + ttl / 6).await;
    proxy.stall();
    let calls = command_calls(&server, "evalsha");
    tokio::time::sleep_until(acquired_at + ttl / 2).await;
    let thaw = hold_up(&watchdog_runtime).await;
    let short = Duration::from_millis(200);
    let (extended, ()) = tokio::join!(guard.extend(short), async {
        sleep(Duration::from_millis(50)).await;
        proxy.restore();
    });
    extended.expect("extend");
    assert_eq!(
        command_calls(&server, "evalsha") - calls,
        2,
        "the renewal and the extension both reached Redis"
    );
    // No renewal gets through from here on; the watchdog now handles the
    // renewal's reply, which Redis sent before the extension's.
    proxy.stall();
    drop(thaw);

    let other = connect(&server.url(), SECOND).await;
    let taken = tokio::time::timeout(5 * SECOND, async {
        loop {
            if let Ok(guard) = other.lock("k").acquire().await {
                return (Instant::now(), guard);
            }
        }
    })
    .await
    .expect("the key expires");
    let (taken_at, _taken) = taken;
    assert!(
        !guard.is_held(),
        "another client took the key while is_held() was true"
    );
    assert!(
        lost.is_finished(),
        "another client took the key before lost() fired"
    );
    let lost_at = lost.await.unwrap();
    assert!(lost_at < taken_at);
    proxy.restore();
}
