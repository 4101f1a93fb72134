//! Extreme arguments to every public method and builder of the lock crate
//! that takes a duration or a count: zero, 1 ns, the largest values the
//! types hold, and the edges of each range. Each is either accepted, and
//! then works, or refused with [`LockError::InvalidArgument`] naming the
//! argument. Never a panic, on any thread (a panic hook counts them, in
//! background tasks too), and never a client left failing.

mod common;

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Backend;
use soloist::{LockClient, LockError, LockGuard, MAX_TTL, MIN_TTL};
use soloist_testkit::RedisServer;

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in the process, on whatever thread, from now on.
fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            report(info);
        }));
    });
}

fn assert_no_panics() {
    let panics = PANICS.load(Ordering::SeqCst);
    assert_eq!(panics, 0, "{panics} panics in this test binary, see above");
}

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
/// The longest `max_hold` and record ttl accepted.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);

fn durations() -> Vec<Duration> {
    vec![
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(1),
        MS - Duration::from_nanos(1),
        MS,
        MIN_TTL - Duration::from_nanos(1),
        MIN_TTL,
        MIN_TTL + Duration::from_micros(500),
        SECOND,
        Duration::from_secs(3600),
        Duration::from_secs(3600) + Duration::from_nanos(1),
        MAX_TTL,
        MAX_TTL + Duration::from_nanos(1),
        Duration::from_millis(u64::from(u32::MAX)),
        Duration::from_secs(u64::from(u32::MAX)),
        CENTURY,
        CENTURY + Duration::from_nanos(1),
        Duration::from_millis(u64::MAX),
        Duration::from_secs(i64::MAX as u64),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ]
}

fn fences() -> Vec<u64> {
    vec![
        0,
        1,
        u64::from(u32::MAX),
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        u64::MAX - 1,
        u64::MAX,
    ]
}

/// A release that may find a short lease already lapsed: a 10 ms lease is
/// at the mercy of a busy machine's scheduling.
async fn give_back(guard: LockGuard) {
    match guard.release().await {
        Ok(()) | Err(LockError::Lost { .. }) => {}
        Err(err) => panic!("release: {err}"),
    }
}

/// `result` is `InvalidArgument` naming `name`.
fn refused<T>(result: soloist::Result<T>, name: &str, what: &str) {
    match result {
        Err(LockError::InvalidArgument { name: got, .. }) => {
            assert_eq!(got, name, "{what}: refused, but as `{got}`");
        }
        Err(err) => panic!("{what}: expected InvalidArgument({name}), got {err:?}"),
        Ok(_) => panic!("{what}: expected InvalidArgument({name}), got Ok"),
    }
}

on_every_backend!(durations_and_counts_are_accepted_or_refused_by_name);

async fn durations_and_counts_are_accepted_or_refused_by_name(backend: Backend) {
    count_panics();
    // Two round trips to three nodes can use up a 10 ms lease's validity:
    // such a Redlock acquisition counts as failed.
    let redlock = matches!(backend, Backend::Redlock(_));
    let locks = backend.client().await;
    for d in durations() {
        let what = |method: &str| format!("{method}({d:?})");

        // The lease ttl: MIN_TTL to MAX_TTL.
        let acquired = locks.lock("ttl").ttl(d).acquire().await;
        if (MIN_TTL..=MAX_TTL).contains(&d) {
            match acquired {
                Ok(guard) => {
                    assert!(d < SECOND || guard.is_held(), "{}", what("ttl"));
                    give_back(guard).await;
                }
                Err(LockError::NoQuorum { .. }) if redlock && d < 100 * MS => {}
                Err(err) => panic!("{}: {err}", what("ttl")),
            }
        } else {
            refused(acquired, "ttl", &what("ttl"));
        }

        // max_hold: 1 ns to a century.
        let acquired = locks.lock("max_hold").max_hold(d).acquire().await;
        if d.is_zero() || d > CENTURY {
            refused(acquired, "max_hold", &what("max_hold"));
        } else {
            let guard = acquired.unwrap_or_else(|err| panic!("{}: {err}", what("max_hold")));
            give_back(guard).await;
        }

        // wait: any duration; one the clock cannot count waits without limit.
        let held = locks
            .lock("wait")
            .ttl(20 * MS)
            .watchdog(false)
            .acquire()
            .await
            .unwrap();
        let waited = locks.lock("wait").wait(d).acquire().await;
        match waited {
            Err(LockError::Busy { .. }) if d.is_zero() => {}
            Err(LockError::Timeout { .. }) if !d.is_zero() && d < SECOND => {}
            Ok(guard) if !d.is_zero() => guard.release().await.unwrap(),
            other => panic!("{}: {other:?}", what("wait")),
        }
        // Lost if the waiter took the key.
        let _ = held.release().await;

        // A fenced record's ttl: 1 ns to a century.
        let guard = locks.lock("{extend}").ttl(SECOND).acquire().await.unwrap();
        let stored = locks
            .fenced_set_expiring("record", guard.fence(), b"v", d)
            .await;
        // Beside its lock, as a cluster requires.
        let committed = guard.commit("{extend}:done", b"v", Some(d), &[]).await;
        if d.is_zero() || d > CENTURY {
            refused(stored, "ttl", &what("fenced_set_expiring"));
            refused(committed, "ttl", &what("commit"));
        } else {
            let stored =
                stored.unwrap_or_else(|err| panic!("{}: {err}", what("fenced_set_expiring")));
            assert!(stored.is_accepted(), "{}", what("fenced_set_expiring"));
            let committed = committed.unwrap_or_else(|err| panic!("{}: {err}", what("commit")));
            assert!(committed.is_accepted(), "{}", what("commit"));
        }

        // extend: the same range as the ttl.
        let extended = guard.extend(d).await;
        if (MIN_TTL..=MAX_TTL).contains(&d) {
            extended.unwrap_or_else(|err| panic!("{}: {err}", what("extend")));
            assert!(d < SECOND || guard.is_held(), "{}", what("extend"));
        } else {
            refused(extended, "ttl", &what("extend"));
        }
        give_back(guard).await;
    }

    // Fences are any u64; they compare as numbers, even past i64.
    for fence in fences() {
        let stored = locks.fenced_set("fenced", fence, fence.to_string()).await;
        assert!(
            stored
                .unwrap_or_else(|err| panic!("fence {fence}: {err}"))
                .is_accepted(),
            "fence {fence}"
        );
        let expiring = locks
            .fenced_set_expiring("expiring", fence, fence.to_string(), SECOND)
            .await
            .unwrap_or_else(|err| panic!("fence {fence}: {err}"));
        assert!(expiring.is_accepted(), "fence {fence}");
        let read = locks.fenced_get("fenced").await.unwrap().expect("stored");
        assert_eq!(read.fence, fence);
    }
    let late = locks
        .fenced_set("fenced", u64::MAX - 1, b"late")
        .await
        .unwrap();
    assert!(!late.is_accepted(), "a lower fence after u64::MAX");

    // Nothing above left the client failing.
    let ttl = 300 * MS;
    let guard = locks.lock("after").ttl(ttl).acquire().await.unwrap();
    tokio::time::sleep(2 * ttl).await;
    assert!(guard.is_held(), "the watchdog renews");
    guard.release().await.unwrap();
    assert_no_panics();
}

/// The client builder's timeout (1 ms to 1 h), for a single node and for a
/// Redlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_settings_are_accepted_or_refused_by_name() {
    count_panics();
    let server = RedisServer::start();
    let url = server.url();
    for (i, d) in durations().into_iter().enumerate() {
        let what = format!("op_timeout({d:?})");
        let single = LockClient::builder().op_timeout(d).connect(&url).await;
        let redlock = LockClient::builder()
            .op_timeout(d)
            .redlock([url.as_str()])
            .await;
        for (kind, client) in [single, redlock].into_iter().enumerate() {
            if !(MS..=Duration::from_secs(3600)).contains(&d) {
                refused(client, "op_timeout", &what);
                continue;
            }
            match client {
                Ok(locks) => {
                    // A key of its own: a short timeout can leave an earlier
                    // acquisition's key behind until it expires.
                    let key = format!("op_timeout:{i}:{kind}");
                    let cycle = async {
                        let guard = locks.lock(key.as_str()).acquire().await?;
                        guard.release().await
                    };
                    match cycle.await {
                        Ok(()) => {}
                        // A millisecond or so may be too short on a busy machine.
                        Err(err) if err.is_backend() && d < 100 * MS => {}
                        Err(err) => panic!("{what}: {err}"),
                    }
                }
                Err(err) if err.is_backend() && d < 100 * MS => {}
                Err(err) => panic!("{what}: {err}"),
            }
        }
    }
    assert_no_panics();
}
