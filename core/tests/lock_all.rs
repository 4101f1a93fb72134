//! `LockClient::lock_all`: several keys, all or nothing, never a deadlock,
//! on every backend; on a cluster, one hash slot or a clear error.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::Backend;
use soloist::{LockError, hash_slot};

const SECOND: Duration = Duration::from_secs(1);

/// The keys of one order, in one hash slot, so a cluster takes them too.
const ORDER: [&str; 3] = ["{order:7}:items", "{order:7}:payment", "{order:7}:stock"];

async fn all_or_nothing(backend: Backend) {
    let locks = backend.client().await;
    let other = backend.client().await;
    let payment = other.lock(ORDER[1]).acquire().await.unwrap();
    match locks.lock_all(ORDER).acquire().await {
        Err(LockError::Busy { key }) => assert_eq!(key, ORDER[1]),
        other => panic!("expected Busy, got {other:?}"),
    }
    // Nothing was kept: the free keys are free.
    for key in [ORDER[0], ORDER[2]] {
        other
            .lock(key)
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    // Waiting: taken once the held key is given back.
    let waiting = tokio::spawn({
        let locks = locks.clone();
        async move { locks.lock_all(ORDER).wait(10 * SECOND).acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    payment.release().await.unwrap();
    let held = waiting.await.unwrap().unwrap();
    assert_eq!(held.keys().collect::<Vec<_>>(), ORDER);
    assert!(held.is_held());
    for key in ORDER {
        assert!(matches!(
            other.lock(key).acquire().await,
            Err(LockError::Busy { .. })
        ));
    }
    held.release().await.unwrap();
    let _all = other.lock_all(ORDER).acquire().await.unwrap();
}

/// Requests over the same keys in opposite orders, from two clients: all
/// finish, and no two ever hold at once.
async fn opposite_orders_never_deadlock(backend: Backend) {
    let clients = [backend.client().await, backend.client().await];
    let inside = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..6)
        .map(|n| {
            let (locks, inside) = (clients[n % 2].clone(), inside.clone());
            tokio::spawn(async move {
                let mut keys = ORDER;
                if n % 2 == 1 {
                    keys.reverse();
                }
                for _ in 0..5 {
                    let held = locks
                        .lock_all(keys)
                        .wait(30 * SECOND)
                        .acquire()
                        .await
                        .unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    held.release().await.unwrap();
                }
            })
        })
        .collect();
    let done = tokio::time::timeout(60 * SECOND, futures::future::join_all(tasks)).await;
    for task in done.expect("deadlocked") {
        task.unwrap();
    }
}

/// On a cluster, keys of several slots are refused before anything is
/// taken; elsewhere they are fine.
async fn slots(backend: Backend) {
    let locks = backend.client().await;
    let apart = ["alpha", "beta"];
    assert_ne!(hash_slot(apart[0]), hash_slot(apart[1]));
    let outcome = locks.lock_all(apart).acquire().await;
    if matches!(backend, Backend::Cluster(_)) {
        match outcome {
            Err(LockError::InvalidArgument { name, .. }) => assert_eq!(name, "keys"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        let _alpha = locks.lock("alpha").acquire().await.unwrap();
    } else {
        outcome.unwrap().release().await.unwrap();
    }
}

on_every_backend!(all_or_nothing, opposite_orders_never_deadlock, slots);
