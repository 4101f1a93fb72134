//! A failover behind the lock client's address: the old primary becomes a
//! replica and answers writes with `READONLY`.

use std::time::Duration;

use soloist::LockClient;
use soloist_testkit::{Proxy, RedisServer};
use tokio::time::{Instant, sleep};

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
    let guard = locks.lock("before").acquire().await.expect("acquire");
    guard.release().await.expect("release");

    new.cli(&["REPLICAOF", "NO", "ONE"]);
    old.cli(&["REPLICAOF", "127.0.0.1", &new.port().to_string()]);
    proxy.retarget(new.port());
    // The open connection reaches the old primary, now read-only: the first
    // attempt may fail on it, after which a fresh one reaches the new primary.
    let deadline = Instant::now() + 10 * SECOND;
    let acquired = loop {
        match locks.lock("after").acquire().await {
            Ok(guard) => break guard,
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)).await,
            Err(err) => panic!("still failing after the failover: {err}"),
        }
    };
    assert!(acquired.is_held());
    assert_ne!(
        new.cli(&["KEYS", "*after*"]),
        "",
        "the lock key lives on the new primary"
    );
    acquired.release().await.expect("release");
}
