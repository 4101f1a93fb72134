//! Acquisition without a fence (`acquire_unfenced`): the same exclusion,
//! waiting and release as a fenced lock, one `SET NX PX` on Redis, and a
//! clear refusal where it is not offered (a Redlock).

mod common;

use std::time::Duration;

use common::{Backend, command_calls};
use soloist::{LockClient, LockError};
use soloist_testkit::RedisServer;

const SECOND: Duration = Duration::from_secs(1);

on_every_backend!(excludes_like_a_fenced_lock, a_waiter_takes_it_on_release);

/// Excludes fenced and unfenced acquisitions alike while held, and leaves
/// the key's fences growing; a Redlock refuses, naming `unfenced`.
async fn excludes_like_a_fenced_lock(backend: Backend) {
    let locks = backend.client().await;
    let before = locks.lock("plain").acquire().await.unwrap();
    let issued = before.fence();
    before.release().await.unwrap();
    let outcome = locks.lock("plain").acquire_unfenced().await;
    if let Backend::Redlock(_) = backend {
        match outcome {
            Err(LockError::InvalidArgument {
                name: "unfenced", ..
            }) => return,
            other => panic!("a Redlock must refuse, got {other:?}"),
        }
    }
    let guard = outcome.expect("unfenced acquire");
    assert!(guard.is_held());
    assert_eq!(guard.key(), "plain");
    assert_eq!(guard.lease().fence(), 0, "no fence");
    assert!(matches!(
        locks.lock("plain").acquire().await,
        Err(LockError::Busy { .. })
    ));
    assert!(matches!(
        locks.lock("plain").acquire_unfenced().await,
        Err(LockError::Busy { .. })
    ));
    guard.extend(5 * SECOND).await.unwrap();
    guard.release().await.unwrap();
    let after = locks.lock("plain").acquire().await.unwrap();
    assert!(after.fence() > issued, "fences still grow");
    after.release().await.unwrap();
}

/// A waiting unfenced acquisition queues and is woken as a fenced one is.
async fn a_waiter_takes_it_on_release(backend: Backend) {
    if let Backend::Redlock(_) = backend {
        return; // refused above
    }
    let (holder, other) = (backend.client().await, backend.client().await);
    let held = holder.lock("line").acquire_unfenced().await.unwrap();
    let waiter = tokio::spawn(async move {
        other
            .lock("line")
            .wait(20 * SECOND)
            .acquire_unfenced()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    held.release().await.unwrap();
    let taken = tokio::time::timeout(10 * SECOND, waiter)
        .await
        .expect("waiter stuck")
        .unwrap()
        .expect("the waiter takes the key");
    assert!(taken.is_held());
    taken.release().await.unwrap();
}

/// On one server an unfenced acquisition that does not wait is one `SET`:
/// no script, no transaction, no fence counter.
#[tokio::test]
async fn on_redis_it_is_one_set_and_leaves_no_counter() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let calls = |command| command_calls(&server, command);
    let (set, evalsha, multi) = (calls("set"), calls("evalsha"), calls("multi"));
    let guard = locks.lock("bare").acquire_unfenced().await.unwrap();
    assert_eq!(calls("set"), set + 1);
    assert_eq!((calls("evalsha"), calls("multi")), (evalsha, multi));
    assert_eq!(server.cli(&["EXISTS", "soloist:fence:{bare}"]), "0");
    guard.release().await.unwrap();
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{bare}"]), "0");
}

/// A fence counter makes no sense without a fence: refused before anything
/// is sent.
#[tokio::test]
async fn a_fence_counter_is_refused() {
    let locks = LockClient::memory();
    match locks
        .lock("k")
        .fence_counter("family")
        .acquire_unfenced()
        .await
    {
        Err(LockError::InvalidArgument {
            name: "fence_counter",
            ..
        }) => {}
        other => panic!("expected InvalidArgument(fence_counter), got {other:?}"),
    }
}
