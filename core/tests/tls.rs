//! Locks over TLS (`rediss://`) with a private CA and mutual TLS, and over
//! an ACL user, against real redis-server processes.

use std::error::Error as _;
use std::time::Duration;

use soloist::{Deployment, LockClient, LockError};
use soloist_testkit::{RedisServer, SOLOIST_ACL_RULES, TestCertificates};

const SECOND: Duration = Duration::from_secs(1);

/// The error and its sources, one line, for assertions on what a user reads.
fn chain(err: &LockError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Connects, failing the test if connecting takes more than 10 s (a hang).
async fn connect(redis: Deployment) -> Result<LockClient, LockError> {
    tokio::time::timeout(10 * SECOND, LockClient::builder().open(redis))
        .await
        .expect("connect hung instead of failing")
}

/// Acquire (with a renewal by the watchdog and one by hand), write fenced,
/// release, and take the key again with a higher fence.
async fn exercise(locks: &LockClient, key: &str) {
    let first = locks
        .lock(key)
        .ttl(SECOND)
        .acquire()
        .await
        .expect("acquire");
    // Past two ttls: only the watchdog's renewals keep it.
    tokio::time::sleep(2500 * Duration::from_millis(1)).await;
    assert!(first.is_held(), "the watchdog renewed over TLS");
    first.extend(2 * SECOND).await.expect("extend");
    assert!(
        locks
            .fenced_set(key, first.fence(), b"one")
            .await
            .unwrap()
            .is_accepted()
    );
    assert!(matches!(
        locks.lock(key).acquire().await,
        Err(LockError::Busy { .. })
    ));
    let fence = first.fence();
    first.release().await.expect("release");
    let second = locks.lock(key).acquire().await.expect("acquire again");
    assert!(second.fence() > fence, "fences increase");
    assert!(
        locks
            .fenced_set(key, second.fence(), b"two")
            .await
            .unwrap()
            .is_accepted()
    );
    assert!(
        !locks
            .fenced_set(key, fence, b"stale")
            .await
            .unwrap()
            .is_accepted(),
        "the stale fence is refused"
    );
    second.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_over_tls_with_a_private_ca() {
    let server = RedisServer::builder().tls().start();
    let ca = server.certificates().ca_pem().to_owned();
    let locks = connect(Deployment::server(server.tls_url()).tls_root_certificate(ca))
        .await
        .expect("connect over TLS");
    exercise(&locks, "tls").await;
    let clients = server.cli(&["CLIENT", "LIST"]);
    assert!(
        clients.lines().any(|line| line.contains(&format!(
            "laddr=127.0.0.1:{}",
            server.tls_url().rsplit(':').next().unwrap()
        ))),
        "the client talks to the TLS port: {clients}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_over_tls() {
    let servers: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::builder().tls().start())
        .collect();
    // Three servers, three private CAs: each node trusts its own.
    let locks = LockClient::redlock(servers.iter().map(|server| {
        Deployment::server(server.tls_url()).tls_root_certificate(server.certificates().ca_pem())
    }))
    .await
    .expect("redlock over TLS");
    let guard = locks.lock("tls").acquire().await.expect("acquire");
    let holding = servers
        .iter()
        .filter(|server| server.cli(&["EXISTS", "soloist:lock:{tls}"]) == "1")
        .count();
    assert!(holding >= 2, "a majority holds the key over TLS: {holding}");
    guard.release().await.expect("release");
    for server in &servers {
        assert_eq!(server.cli(&["EXISTS", "soloist:lock:{tls}"]), "0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_identity() {
    let server = RedisServer::builder().tls_auth_clients(true).start();
    let certs = server.certificates();
    let url = server.tls_url();
    let with_identity = Deployment::server(&url)
        .tls_root_certificate(certs.ca_pem())
        .tls_client_identity(certs.client_cert_pem(), certs.client_key_pem());
    let locks = connect(with_identity)
        .await
        .expect("connect with a client certificate");
    exercise(&locks, "mtls").await;

    let without = Deployment::server(&url).tls_root_certificate(certs.ca_pem());
    let err = connect(without)
        .await
        .expect_err("the server requires a client certificate");
    assert!(
        matches!(err, LockError::Connection { .. }),
        "{}",
        chain(&err)
    );

    // A certificate from another CA is no identity either.
    let stranger = TestCertificates::generate();
    let foreign = Deployment::server(&url)
        .tls_root_certificate(certs.ca_pem())
        .tls_client_identity(stranger.client_cert_pem(), stranger.client_key_pem());
    let err = connect(foreign)
        .await
        .expect_err("a client certificate of another CA is refused");
    assert!(
        matches!(err, LockError::Connection { .. }),
        "{}",
        chain(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_ca_is_not_trusted_is_refused() {
    let server = RedisServer::builder().tls().start();
    let other = TestCertificates::generate();
    let err = connect(Deployment::server(server.tls_url()).tls_root_certificate(other.ca_pem()))
        .await
        .expect_err("a server certificate of an untrusted CA");
    let text = chain(&err);
    assert!(matches!(err, LockError::Connection { .. }), "{text}");
    assert!(text.contains("certificate"), "says why: {text}");

    // Without a root certificate only the system's roots count, which do
    // not include the test CA: refused too, no fallback to no verification.
    let err = connect(Deployment::server(server.tls_url()))
        .await
        .expect_err("a private CA not in the system's roots");
    assert!(
        matches!(err, LockError::Connection { .. }),
        "{}",
        chain(&err)
    );
    assert_eq!(
        server.cli(&["DBSIZE"]),
        "0",
        "nothing was written over an unverified connection"
    );
}

#[tokio::test]
async fn tls_settings_are_checked_by_name() {
    let certs = TestCertificates::generate();
    let cases = [
        (
            Deployment::server("rediss://127.0.0.1:1").tls_root_certificate("not pem"),
            "tls_root_certificate",
        ),
        (
            Deployment::server("rediss://127.0.0.1:1")
                .tls_client_identity(certs.client_cert_pem(), "no key here"),
            "tls_client_identity",
        ),
        (
            Deployment::server("redis://127.0.0.1:1").tls_root_certificate(certs.ca_pem()),
            "url",
        ),
        (
            Deployment::cluster(["rediss://127.0.0.1:1"]).tls_root_certificate("not pem"),
            "tls_root_certificate",
        ),
    ];
    for (redis, expected) in cases {
        match LockClient::builder().open(redis.clone()).await {
            Err(LockError::InvalidArgument { name, .. }) => assert_eq!(name, expected, "{redis:?}"),
            other => panic!("expected InvalidArgument({expected}), got {other:?}"),
        }
    }
}

/// A server whose default user is off and whose only user is `soloist`,
/// with the least privileges of the README's recipe.
fn acl_server() -> RedisServer {
    let server = RedisServer::builder().tls().start();
    server.only_user("soloist", "secret");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_over_plain_and_tls_connections() {
    let server = acl_server();
    let plain = server.url().replace("redis://", "redis://soloist:secret@");
    let tls = server
        .tls_url()
        .replace("rediss://", "rediss://soloist:secret@");
    let ca = server.certificates().ca_pem().to_owned();
    for redis in [
        Deployment::server(&plain),
        Deployment::server(tls).tls_root_certificate(ca),
    ] {
        let locks = connect(redis).await.expect("connect as the ACL user");
        exercise(&locks, "acl").await;
        // A waiter is woken over pub/sub, which the user may use (`&*`).
        let held = locks.lock("acl").acquire().await.unwrap();
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock("acl").wait(10 * SECOND).acquire().await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        held.release().await.unwrap();
        let woken = tokio::time::timeout(5 * SECOND, waiter)
            .await
            .expect("the waiter was woken")
            .unwrap()
            .expect("the waiter took the lock");
        woken.release().await.unwrap();
    }

    let wrong = plain.replace(":secret@", ":wrong@");
    let err = connect(Deployment::server(wrong))
        .await
        .expect_err("a wrong password");
    let text = chain(&err);
    assert!(!text.contains("wrong@"), "the password stays out: {text}");
}

/// The recipe's user without `&soloist:*`: refused at connect, saying what
/// is missing; and a release whose wake-up the server refuses (the channel
/// permission revoked while a client waits) still reports the key it
/// deleted as released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wake_channel_permission() {
    let server = RedisServer::start();
    let mut rules = vec!["SETUSER", "soloist", "on", ">secret"];
    rules.extend(
        SOLOIST_ACL_RULES
            .iter()
            .copied()
            .filter(|rule| !rule.starts_with('&')),
    );
    let mut command = vec!["ACL"];
    command.extend(rules);
    assert_eq!(server.cli(&command), "OK");
    let url = server.url().replace("redis://", "redis://soloist:secret@");

    match connect(Deployment::server(&url)).await {
        Err(LockError::InvalidArgument {
            name: "acl",
            reason,
        }) => {
            assert!(reason.contains("&soloist:*"), "{reason}");
        }
        other => panic!("expected InvalidArgument(acl), got {other:?}"),
    }

    assert_eq!(
        server.cli(&["ACL", "SETUSER", "soloist", "&soloist:*"]),
        "OK"
    );
    let locks = connect(Deployment::server(&url)).await.expect("connect");
    let held = locks.lock("k").acquire().await.expect("acquire");
    let waiter = {
        let other = connect(Deployment::server(&url)).await.expect("connect");
        tokio::spawn(async move { other.lock("k").wait(20 * SECOND).acquire().await })
    };
    while server.cli(&["LLEN", "soloist:waiters:{k}"]) != "1" {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.cli(&["ACL", "SETUSER", "soloist", "resetchannels"]),
        "OK"
    );
    // Ok only if the script deleted the key (else `Lost`); the waiter may
    // have polled its way in already, so the key itself says nothing.
    held.release().await.expect("the key was deleted: released");
    let next = tokio::time::timeout(20 * SECOND, waiter)
        .await
        .expect("the waiter polls its way in")
        .unwrap()
        .expect("acquired");
    assert!(next.fence() > 0);
}
