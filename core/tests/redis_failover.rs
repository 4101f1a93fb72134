//! A failover behind the lock client's address: the old primary becomes a
//! replica and answers writes with `READONLY`.

mod common;

use std::time::Duration;

use common::{eventually, until};
use soloist::LockClient;
use soloist_testkit::{Proxy, RedisServer};

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_a_demoted_primary_is_replaced() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    new.cli(&["REPLICAOF", "127.0.0.1", &old.port().to_string()]);
    // The client reaches the primary through one address, as through a
    // virtual IP or a DNS name that a failover moves.
    let proxy = Proxy::start(old.port());
    let locks = LockClient::connect(&proxy.url()).await.expect("connect");
    wait_for_a_release(&locks, &old).await;

    new.cli(&["REPLICAOF", "NO", "ONE"]);
    old.cli(&["REPLICAOF", "127.0.0.1", &new.port().to_string()]);
    proxy.retarget(new.port());
    // The open connection reaches the old primary, now read-only: the first
    // attempt may fail on it, after which a fresh one reaches the new primary.
    let acquired = eventually("a lock after the failover", || {
        locks.lock("after").acquire()
    })
    .await;
    assert_ne!(
        new.cli(&["KEYS", "*after*"]),
        "",
        "the lock key lives on the new primary"
    );
    acquired.release().await.expect("release");
    // The wake-up subscription moves to the new primary too, where releases
    // now publish.
    wait_for_a_release(&locks, &new).await;
}

/// Waits through `locks` for a key another client holds on `primary`, once
/// the waiter's wake-up channel is subscribed there.
async fn wait_for_a_release(locks: &LockClient, primary: &RedisServer) {
    let holder = LockClient::connect(&primary.url()).await.expect("connect");
    let held = holder.lock("held").acquire().await.expect("acquire");
    let waiter = tokio::spawn({
        let locks = locks.clone();
        async move { locks.lock("held").wait(10 * SECOND).acquire().await }
    });
    until("the waiter listens on the primary", || {
        primary
            .cli(&["PUBSUB", "CHANNELS", "*wake*"])
            .contains("wake")
    })
    .await;
    held.release().await.expect("release");
    let taken = waiter
        .await
        .expect("waiter")
        .expect("the waiter got the lock");
    taken.release().await.expect("release");
}
