//! `Sentinels` against real sentinels (the testkit's `SentinelGroup`).
//!
//! Here rather than in `core/tests/`: the resolver is crate-private until
//! the pool resolves its primary through it.

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use redis::ConnectionAddr;
use soloist_testkit::SentinelGroup;

use super::Sentinels;
use crate::error::LockError;
use crate::tls::TlsOptions;

const CONNECT: Duration = Duration::from_secs(1);
const RESPONSE: Duration = Duration::from_secs(1);
/// Room for a loaded machine on top of the timeouts a lookup may spend.
const SLACK: Duration = Duration::from_millis(1500);

fn sentinels(urls: &[String], master: &str) -> Sentinels {
    Sentinels::new(urls, master, &TlsOptions::default()).expect("valid sentinels")
}

fn port_of(client: &redis::Client) -> u16 {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(_, port) => *port,
        other => panic!("not a TCP address: {other:?}"),
    }
}

async fn resolve(sentinels: &Sentinels) -> redis::Client {
    sentinels
        .primary(CONNECT, RESPONSE)
        .await
        .expect("resolve the primary")
}

/// Writes through `client`: it reaches a writable primary.
async fn write(client: &redis::Client) {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the primary");
    let reply: String = redis::cmd("SET")
        .arg("soloist:sentinel-test")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("SET on the primary");
    assert_eq!(reply, "OK");
}

/// The message of a `Connection` error.
fn connection_failure(result: crate::Result<redis::Client>) -> String {
    match result {
        Err(err @ LockError::Connection { .. }) => err.to_string(),
        other => panic!("expected LockError::Connection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_the_primary_and_follows_a_failover() {
    let mut group = SentinelGroup::start("soloist");
    let sentinels = sentinels(&group.sentinel_urls(), group.master_name());
    let client = resolve(&sentinels).await;
    assert_eq!(port_of(&client), group.primary().port());
    write(&client).await;

    group.kill_primary_and_wait_failover();
    let client = resolve(&sentinels).await;
    assert_eq!(
        port_of(&client),
        group.primary().port(),
        "the promoted node"
    );
    write(&client).await;

    // The old primary is back, as a replica: still the promoted node.
    group.restart_old_primary();
    let client = resolve(&sentinels).await;
    assert_eq!(port_of(&client), group.primary().port());
    write(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sentinel_costs_one_timeout_once() {
    let group = SentinelGroup::start("soloist");
    let sentinels = sentinels(&group.sentinel_urls(), group.master_name());
    // The first sentinel is asked first.
    group.sentinels()[0].pause();

    let started = Instant::now();
    let client = resolve(&sentinels).await;
    let first = started.elapsed();
    assert_eq!(port_of(&client), group.primary().port());
    assert!(
        first < CONNECT.max(RESPONSE) + SLACK,
        "took {first:?} past a frozen sentinel"
    );

    // The sentinel that answered is asked first now.
    let started = Instant::now();
    let client = resolve(&sentinels).await;
    let second = started.elapsed();
    assert_eq!(port_of(&client), group.primary().port());
    assert!(
        second < CONNECT.min(RESPONSE),
        "took {second:?}: the frozen sentinel was asked again"
    );
    group.sentinels()[0].resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_name_nobody_knows_is_named_in_the_error() {
    let group = SentinelGroup::start("soloist");
    let urls = group.sentinel_urls();
    let result = sentinels(&urls, "no-such-master")
        .primary(CONNECT, RESPONSE)
        .await;
    match result {
        Err(LockError::InvalidArgument { name, reason }) => {
            assert_eq!(name, "master");
            assert!(reason.contains("`no-such-master`"), "{reason}");
            for url in &urls {
                assert!(reason.contains(url.as_str()), "{url} missing: {reason}");
            }
        }
        other => panic!("expected InvalidArgument(master), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_naming_a_replica_is_not_believed() {
    let group = SentinelGroup::start("soloist");
    let sentinels = sentinels(&group.sentinel_urls(), group.master_name());
    // Swap the roles behind the sentinels' back: for a few seconds they
    // still name the old primary, now a replica.
    group.replica().cli(&["REPLICAOF", "NO", "ONE"]);
    let replica_port = group.replica().port().to_string();
    group
        .primary()
        .cli(&["REPLICAOF", "127.0.0.1", &replica_port]);

    let detail = connection_failure(sentinels.primary(CONNECT, RESPONSE).await);
    assert!(
        detail.contains("the primary of `soloist` failed: no sentinel named a reachable primary"),
        "{detail}"
    );
    let named = format!("named 127.0.0.1:{}", group.primary().port());
    assert_eq!(detail.matches(&named).count(), 3, "{detail}");
    assert!(detail.contains("says its role is `slave`"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_sentinels_fail_within_the_timeouts() {
    // Nothing listens on `refused`; `silent` accepts connections (the kernel
    // completes the handshake) and never answers, like a frozen sentinel.
    let refused = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    let urls = [
        format!("redis://127.0.0.1:{refused}"),
        format!("redis://:sentinel-secret@127.0.0.1:{silent_port}"),
    ];
    let sentinels = sentinels(&urls, "soloist");

    let started = Instant::now();
    let detail = connection_failure(sentinels.primary(CONNECT, RESPONSE).await);
    let took = started.elapsed();
    assert!(took < (CONNECT + RESPONSE) * 2 + SLACK, "took {took:?}");
    assert!(
        detail.contains("the primary of `soloist` failed: no sentinel named a reachable primary"),
        "{detail}"
    );
    assert!(
        detail.contains(&format!(
            "redis://127.0.0.1:{refused} cannot be connected to"
        )),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("redis://127.0.0.1:{silent_port} did not answer")),
        "{detail}"
    );
    assert!(!detail.contains("secret"), "{detail}");
    drop(silent);
}
