//! Read-write locks on every backend: readers overlap, a writer excludes
//! everyone, and a waiting writer is not starved by a stream of readers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::Backend;
use soloist::LockError;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

/// A Redlock refuses read-write locks, saying so; `true` when `backend` is
/// one.
async fn refused_on_redlock(backend: &Backend) -> bool {
    if !matches!(backend, Backend::Redlock(_)) {
        return false;
    }
    let locks = backend.client().await;
    match locks.rw_lock("cache").read().acquire().await {
        Err(LockError::InvalidArgument { name, .. }) => assert_eq!(name, "rw_lock"),
        other => panic!("a Redlock handed out a read lock: {other:?}"),
    }
    true
}

async fn readers_overlap_and_a_writer_is_alone(backend: Backend) {
    if refused_on_redlock(&backend).await {
        return;
    }
    let (a, b) = (backend.client().await, backend.client().await);
    let first = a.rw_lock("cache").read().acquire().await.unwrap();
    let second = b.rw_lock("cache").read().acquire().await.unwrap();
    assert!(second.fence() > first.fence());
    assert!(matches!(
        b.rw_lock("cache").write().acquire().await,
        Err(LockError::Busy { .. })
    ));
    first.release().await.unwrap();
    second.release().await.unwrap();
    let writer = a.rw_lock("cache").write().acquire().await.unwrap();
    for request in [b.rw_lock("cache").read(), b.rw_lock("cache").write()] {
        assert!(matches!(
            request.acquire().await,
            Err(LockError::Busy { .. })
        ));
    }
    // Released, the writer wakes a waiting reader at once.
    let waiting = tokio::spawn({
        let b = b.clone();
        async move {
            let guard = b.rw_lock("cache").read().wait(10 * SECOND).acquire().await;
            (Instant::now(), guard)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released_at = Instant::now();
    writer.release().await.unwrap();
    let (woken_at, reader) = waiting.await.unwrap();
    let reader = reader.unwrap();
    assert!(
        woken_at - released_at < Duration::from_millis(500),
        "woke {:?} after the release",
        woken_at - released_at
    );
    assert!(!reader.is_write());
    // A held read, once its lease ran out, is an error to give back.
    let stale = a
        .rw_lock("other")
        .read()
        .ttl(Duration::from_millis(50))
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(stale.release().await, Err(LockError::Lost { .. })));
    reader.release().await.unwrap();
}

/// Four readers on two clients keep the lock read without a gap; a writer
/// that asks gets it within a read's length, long before the readers
/// stop, and nobody reads while it writes.
async fn a_writer_is_not_starved_by_readers(backend: Backend) {
    if refused_on_redlock(&backend).await {
        return;
    }
    let clients = [backend.client().await, backend.client().await];
    let readers_inside = Arc::new(AtomicUsize::new(0));
    let writing = Arc::new(AtomicBool::new(false));
    let stop_at = Instant::now() + 5 * SECOND;
    let readers: Vec<_> = (0..4)
        .map(|n| {
            let locks = clients[n % 2].clone();
            let (inside, writing) = (readers_inside.clone(), writing.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(25 * n as u64)).await;
                let mut reads = 0;
                while Instant::now() < stop_at {
                    let guard = locks
                        .rw_lock("cache")
                        .read()
                        .wait(10 * SECOND)
                        .acquire()
                        .await
                        .unwrap();
                    assert!(!writing.load(Ordering::SeqCst), "read while a writer wrote");
                    inside.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await.unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        readers_inside.load(Ordering::SeqCst) > 0,
        "readers are reading"
    );
    let asked = Instant::now();
    let writer = clients[0]
        .rw_lock("cache")
        .write()
        .wait(10 * SECOND)
        .acquire()
        .await
        .unwrap();
    let waited = asked.elapsed();
    writing.store(true, Ordering::SeqCst);
    assert_eq!(readers_inside.load(Ordering::SeqCst), 0, "a reader inside");
    assert!(
        waited < SECOND,
        "the writer waited {waited:?} behind readers"
    );
    assert!(
        Instant::now() < stop_at,
        "the writer got in only when readers stopped"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    writing.store(false, Ordering::SeqCst);
    writer.release().await.unwrap();
    for reader in readers {
        assert!(
            reader.await.unwrap() > 3,
            "readers kept reading after the write"
        );
    }
}

on_every_backend!(
    readers_overlap_and_a_writer_is_alone,
    a_writer_is_not_starved_by_readers,
);
