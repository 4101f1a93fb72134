//! Lock behaviour every backend must show, run against real Redis and the
//! memory backend alike.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::Backend;
use soloist::LockError;
use tokio::time::{Instant, sleep};

const SECOND: Duration = Duration::from_secs(1);

on_every_backend!(
    mutual_exclusion_under_contention,
    stale_guard_cannot_release_or_extend,
    fences_increase_across_release_and_expiry,
    busy_without_wait_and_timeout_after_wait,
    release_notice_wakes_a_waiter,
    dropped_guard_releases,
    aborted_or_panicked_holder_releases,
    watchdog_keeps_the_lease_past_its_ttl,
    without_watchdog_the_lease_expires_and_lost_fires,
    max_hold_bounds_a_leaked_guard,
    extend_moves_the_deadline,
    extend_to_a_shorter_ttl_renews_sooner,
    fenced_writes_refuse_stale_fences,
    fenced_records_can_expire,
    server_time_is_the_shared_clock,
);

/// 16 tasks on 2 independent clients fight over one key for 3 s; a counter
/// outside the lock must never see two holders, and fences must rise in the
/// order the holders got the lock.
async fn mutual_exclusion_under_contention(backend: Backend) {
    let clients = [backend.client().await, backend.client().await];
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let last_fence = Arc::new(AtomicU64::new(0));
    let fence_regressions = Arc::new(AtomicUsize::new(0));
    let acquisitions = Arc::new(AtomicUsize::new(0));
    let stop_at = Instant::now() + 3 * SECOND;
    let mut tasks = Vec::new();
    for task in 0..16 {
        let locks = clients[task % 2].clone();
        let (inside, overlaps, last_fence, fence_regressions, acquisitions) = (
            inside.clone(),
            overlaps.clone(),
            last_fence.clone(),
            fence_regressions.clone(),
            acquisitions.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let guard = locks
                    .lock("contended")
                    .ttl(2 * SECOND)
                    .wait(10 * SECOND)
                    .acquire()
                    .await
                    .expect("acquire while contending");
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                if last_fence.swap(guard.fence(), Ordering::SeqCst) >= guard.fence() {
                    fence_regressions.fetch_add(1, Ordering::SeqCst);
                }
                acquisitions.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                sleep(Duration::from_micros(200)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.expect("release own lock");
            }
        }));
    }
    for task in tasks {
        task.await.expect("contender task");
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "two holders at once");
    assert_eq!(
        fence_regressions.load(Ordering::SeqCst),
        0,
        "fence did not increase"
    );
    let acquisitions = acquisitions.load(Ordering::SeqCst);
    assert!(
        acquisitions >= 100,
        "only {acquisitions} acquisitions in 3 s"
    );
}

/// A lease that expired must not let its stale guard delete or extend the
/// lock that another owner took since.
async fn stale_guard_cannot_release_or_extend(backend: Backend) {
    let (a, b) = (backend.client().await, backend.client().await);
    let stale = a
        .lock("job")
        .ttl(Duration::from_millis(150))
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    let fresh = b
        .lock("job")
        .ttl(10 * SECOND)
        .wait(2 * SECOND)
        .acquire()
        .await
        .unwrap();
    assert!(fresh.fence() > stale.fence());
    assert!(!stale.is_held());
    assert!(matches!(
        stale.extend(10 * SECOND).await,
        Err(LockError::Lost { .. })
    ));
    assert!(matches!(stale.release().await, Err(LockError::Lost { .. })));
    assert!(fresh.is_held());
    assert!(matches!(
        a.lock("job").acquire().await,
        Err(LockError::Busy { .. })
    ));
    fresh
        .extend(10 * SECOND)
        .await
        .expect("the new holder still holds it");
    fresh.release().await.expect("the new holder releases");
}

async fn fences_increase_across_release_and_expiry(backend: Backend) {
    let locks = backend.client().await;
    let first = locks.lock("fenced").acquire().await.unwrap();
    let f1 = first.fence();
    first.release().await.unwrap();
    let second = locks
        .lock("fenced")
        .ttl(Duration::from_millis(100))
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    let f2 = second.fence();
    second.lost().await;
    std::mem::forget(second);
    let third = locks.lock("fenced").wait(SECOND).acquire().await.unwrap();
    assert!(
        f1 < f2 && f2 < third.fence(),
        "{f1} < {f2} < {}",
        third.fence()
    );
    // Another key has its own counter, also strictly increasing.
    let other = locks.lock("other").acquire().await.unwrap();
    assert!(other.fence() > 0);
}

async fn busy_without_wait_and_timeout_after_wait(backend: Backend) {
    let (a, b) = (backend.client().await, backend.client().await);
    let _held = a.lock("busy").acquire().await.unwrap();
    match b.lock("busy").acquire().await {
        Err(LockError::Busy { key }) => assert_eq!(key, "busy"),
        other => panic!("expected Busy, got {other:?}"),
    }
    let started = Instant::now();
    match b
        .lock("busy")
        .wait(Duration::from_millis(300))
        .acquire()
        .await
    {
        Err(LockError::Timeout { key, waited }) => {
            assert_eq!(key, "busy");
            assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < 2 * SECOND, "the wait overran its bound");
}

/// A waiter learns of the release from the notice, not from its fallback
/// poll: a poll-only waiter would sleep at least 750 ms after its first try.
async fn release_notice_wakes_a_waiter(backend: Backend) {
    let (a, b) = (backend.client().await, backend.client().await);
    let held = a.lock("notice").ttl(30 * SECOND).acquire().await.unwrap();
    let waiter = tokio::spawn(async move {
        let guard = b.lock("notice").wait(10 * SECOND).acquire().await.unwrap();
        (Instant::now(), guard)
    });
    sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    held.release().await.unwrap();
    let (acquired_at, _guard) = waiter.await.unwrap();
    let lag = acquired_at - released_at;
    assert!(
        lag < Duration::from_millis(500),
        "woke {lag:?} after the release"
    );
}

async fn dropped_guard_releases(backend: Backend) {
    let (a, b) = (backend.client().await, backend.client().await);
    let held = a.lock("dropped").ttl(30 * SECOND).acquire().await.unwrap();
    drop(held);
    let started = Instant::now();
    let _next = b.lock("dropped").wait(5 * SECOND).acquire().await.unwrap();
    assert!(started.elapsed() < 2 * SECOND, "the drop did not release");
}

/// A holder task that is aborted or panics drops its guard, which releases.
async fn aborted_or_panicked_holder_releases(backend: Backend) {
    let locks = backend.client().await;
    for (key, panics) in [("aborted", false), ("panicked", true)] {
        let holder_locks = locks.clone();
        let holding = Arc::new(AtomicBool::new(false));
        let holding_flag = holding.clone();
        let holder = tokio::spawn(async move {
            let _guard = holder_locks
                .lock(key)
                .ttl(30 * SECOND)
                .acquire()
                .await
                .unwrap();
            holding_flag.store(true, Ordering::SeqCst);
            sleep(Duration::from_millis(100)).await;
            assert!(!panics, "holder panics while holding");
            sleep(Duration::from_secs(3600)).await;
        });
        while !holding.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(5)).await;
        }
        if !panics {
            holder.abort();
        }
        assert!(holder.await.is_err(), "holder ended abnormally");
        let started = Instant::now();
        let _next = locks.lock(key).wait(5 * SECOND).acquire().await.unwrap();
        assert!(started.elapsed() < 2 * SECOND, "{key} holder kept the lock");
    }
}

async fn watchdog_keeps_the_lease_past_its_ttl(backend: Backend) {
    let (a, b) = (backend.client().await, backend.client().await);
    let ttl = Duration::from_millis(300);
    let held = a.lock("renewed").ttl(ttl).acquire().await.unwrap();
    sleep(ttl * 4).await;
    assert!(held.is_held());
    assert!(held.remaining() > Duration::ZERO && held.remaining() <= ttl);
    assert!(matches!(
        b.lock("renewed").acquire().await,
        Err(LockError::Busy { .. })
    ));
    held.release().await.unwrap();
}

async fn without_watchdog_the_lease_expires_and_lost_fires(backend: Backend) {
    let (a, b) = (backend.client().await, backend.client().await);
    let ttl = Duration::from_millis(300);
    let started = Instant::now();
    let held = a
        .lock("fixed")
        .ttl(ttl)
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    // The deadline is at most the ttl after the request was sent (read
    // from the guard, so a loaded machine's late timers do not blur it).
    let deadline = started.elapsed() + held.remaining();
    assert!(
        deadline <= ttl,
        "the lease ends {deadline:?} after the send"
    );
    assert!(deadline >= ttl / 2, "the lease ends early: {deadline:?}");
    tokio::time::timeout(ttl + Duration::from_secs(2), held.lost())
        .await
        .expect("lost fires once the lease has run out");
    let fired = started.elapsed();
    assert!(
        fired >= deadline,
        "lost fired before the deadline: {fired:?}"
    );
    assert!(!held.is_held());
    assert_eq!(held.remaining(), Duration::ZERO);
    let next = b.lock("fixed").wait(SECOND).acquire().await.unwrap();
    assert!(started.elapsed() >= ttl - Duration::from_millis(5));
    assert!(next.fence() > held.fence());
}

/// A leaked guard keeps renewing like a held one, but never past `max_hold`:
/// then its key expires within one ttl.
async fn max_hold_bounds_a_leaked_guard(backend: Backend) {
    let (a, b) = (backend.client().await, backend.client().await);
    let ttl = Duration::from_millis(200);
    let max_hold = Duration::from_millis(600);
    let started = Instant::now();
    let leaked = a
        .lock("leaked")
        .ttl(ttl)
        .max_hold(max_hold)
        .acquire()
        .await
        .unwrap();
    let lease = leaked.lease();
    std::mem::forget(leaked);
    sleep(max_hold / 2).await;
    assert!(lease.is_held(), "renewed while inside max_hold");
    assert!(matches!(
        b.lock("leaked").acquire().await,
        Err(LockError::Busy { .. })
    ));
    let _next = b.lock("leaked").wait(5 * SECOND).acquire().await.unwrap();
    let freed = started.elapsed();
    assert!(freed >= max_hold, "freed before max_hold: {freed:?}");
    assert!(
        freed < max_hold + ttl + Duration::from_millis(300),
        "freed late: {freed:?}"
    );
    assert!(!lease.is_held());
}

async fn extend_moves_the_deadline(backend: Backend) {
    let locks = backend.client().await;
    let held = locks
        .lock("extended")
        .ttl(Duration::from_millis(200))
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    held.extend(5 * SECOND).await.unwrap();
    sleep(Duration::from_millis(400)).await;
    assert!(held.is_held());
    assert!(held.remaining() > 4 * SECOND);
    assert!(matches!(
        held.extend(Duration::ZERO).await,
        Err(LockError::InvalidArgument { name: "ttl", .. })
    ));
    held.release().await.unwrap();
}

async fn fenced_writes_refuse_stale_fences(backend: Backend) {
    let locks = backend.client().await;
    let old = locks.lock("report").acquire().await.unwrap();
    let old_fence = old.fence();
    assert!(
        locks
            .fenced_set("report", old_fence, b"v1")
            .await
            .unwrap()
            .is_accepted()
    );
    old.release().await.unwrap();
    let new = locks.lock("report").acquire().await.unwrap();
    assert!(
        locks
            .fenced_set("report", new.fence(), b"v2")
            .await
            .unwrap()
            .is_accepted()
    );
    // The same holder may write again with its fence.
    assert!(
        locks
            .fenced_set("report", new.fence(), b"v3")
            .await
            .unwrap()
            .is_accepted()
    );
    let late = locks
        .fenced_set("report", old_fence, b"stale")
        .await
        .unwrap();
    assert_eq!(
        late,
        soloist::FencedWrite::Rejected {
            highest: new.fence()
        }
    );
    let stored = locks.fenced_get("report").await.unwrap().unwrap();
    assert_eq!((stored.fence, stored.value), (new.fence(), b"v3".to_vec()));
    assert!(locks.fenced_get("never-written").await.unwrap().is_none());
    assert!(matches!(
        locks.fenced_set("", 1, b"x").await,
        Err(LockError::InvalidArgument {
            name: "resource",
            ..
        })
    ));
}

async fn fenced_records_can_expire(backend: Backend) {
    let locks = backend.client().await;
    let ttl = Duration::from_millis(200);
    assert!(
        locks
            .fenced_set_expiring("window", 5, b"v5", ttl)
            .await
            .unwrap()
            .is_accepted()
    );
    assert!(
        !locks
            .fenced_set("window", 3, b"v3")
            .await
            .unwrap()
            .is_accepted()
    );
    sleep(ttl + Duration::from_millis(100)).await;
    assert!(
        locks.fenced_get("window").await.unwrap().is_none(),
        "record outlived its ttl"
    );
    assert!(
        locks
            .fenced_set("window", 3, b"v3")
            .await
            .unwrap()
            .is_accepted()
    );
    // A plain write keeps the record for good, even over an expiring one.
    locks
        .fenced_set_expiring("kept", 1, b"a", ttl)
        .await
        .unwrap();
    locks.fenced_set("kept", 2, b"b").await.unwrap();
    sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(
        locks.fenced_get("kept").await.unwrap().map(|v| v.fence),
        Some(2)
    );
    assert!(matches!(
        locks
            .fenced_set_expiring("kept", 3, b"c", Duration::ZERO)
            .await,
        Err(LockError::InvalidArgument { name: "ttl", .. })
    ));
}

async fn server_time_is_the_shared_clock(backend: Backend) {
    let locks = backend.client().await;
    let served = locks.server_time().await.unwrap();
    match backend {
        Backend::Memory(_) => assert_eq!(served, None),
        _ => {
            let served = served.expect("redis has a clock");
            let skew = served
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_else(|behind| behind.duration());
            assert!(
                skew < 5 * SECOND,
                "server clock {skew:?} off this machine's"
            );
        }
    }
}

/// The watchdog follows an extension to a shorter ttl: the next renewal is
/// due a third of the new ttl later, not of the old one.
async fn extend_to_a_shorter_ttl_renews_sooner(backend: Backend) {
    let locks = backend.client().await;
    let held = locks
        .lock("shortened")
        .ttl(30 * SECOND)
        .acquire()
        .await
        .unwrap();
    let ttl = Duration::from_millis(300);
    held.extend(ttl).await.unwrap();
    sleep(ttl * 4).await;
    assert!(held.is_held(), "renewed at the new ttl's pace");
    assert!(held.remaining() <= ttl);
    held.release().await.unwrap();
}
