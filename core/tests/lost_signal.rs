//! The lost signal's arithmetic against a real redis-server: at every ttl
//! the API accepts, down to `MIN_TTL` and with fractions of a millisecond,
//! `lost()` fires and `is_held()` turns false before another client can
//! take the key.
//!
//! Another client polls `SET NX` on the lock key in a tight loop, on a
//! thread of its own, and notes when it first succeeds, and when `lost()`
//! fired.

use std::time::{Duration, Instant};

use soloist::{Lease, LockClient, MAX_TTL, MIN_TTL};
use soloist_testkit::{Proxy, RedisServer};

/// A spread of the ttls the API accepts: the shortest, fractions of a
/// millisecond over whole ones, odd values, and longer ones.
fn ttls() -> Vec<Duration> {
    let ms = Duration::from_millis;
    let mut ttls = vec![
        MIN_TTL,
        MIN_TTL + Duration::from_nanos(1),
        MIN_TTL + Duration::from_micros(500),
        MIN_TTL + Duration::from_nanos(999_999),
        ms(11),
        ms(13) + Duration::from_micros(370),
        ms(17),
        ms(29) + Duration::from_micros(999),
        ms(50) + Duration::from_micros(500),
        ms(101),
        ms(257) + Duration::from_micros(300),
        ms(1000) + Duration::from_micros(700),
    ];
    // And some that follow no pattern a hand would pick.
    ttls.extend((1..=6_u32).map(|i| MIN_TTL + ms(7) * i * i + Duration::from_nanos(123_457) * i));
    assert!(ttls.iter().all(|ttl| (MIN_TTL..=MAX_TTL).contains(ttl)));
    ttls
}

/// Another client: `SET NX` on the lock key, again and again until it takes
/// the key, while awaiting `lease.lost()` on the same thread, first. Returns
/// when it took the key, whether `lease` was still held then, and when
/// `lost()` fired, if it had.
///
/// One thread does both: a thread of its own for `lost()` could be
/// scheduled late on a busy machine, and no margin covers that; here the
/// timer and the replies are seen by the one thread, in the order they
/// come.
fn take_when_free(url: &str, key: &str, lease: &Lease) -> (Instant, bool, Option<Instant>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut conn = soloist::redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect the other client");
        let lost = lease.lost();
        tokio::pin!(lost);
        let mut lost_at = None;
        let started = Instant::now();
        loop {
            let mut set = soloist::redis::cmd("SET");
            set.arg(format!("soloist:lock:{{{key}}}"))
                .arg("the-other-client")
                .arg("NX")
                .arg("PX")
                .arg(60_000);
            let attempt = set.query_async::<Option<String>>(&mut conn);
            tokio::pin!(attempt);
            let taken = loop {
                tokio::select! {
                    biased;
                    () = &mut lost, if lost_at.is_none() => lost_at = Some(Instant::now()),
                    taken = &mut attempt => break taken.expect("SET NX"),
                }
            };
            if taken.is_some() {
                return (Instant::now(), lease.is_held(), lost_at);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the key never came free"
            );
        }
    })
}

/// Checks one lease whose renewals stopped reaching the server: `lost()`
/// fired strictly before the other client took the key, and `is_held()` was
/// false by then.
fn check(what: &str, ttl: Duration, url: &str, key: &str, lease: &Lease) {
    let (taken_at, held, lost_at) = take_when_free(url, key, lease);
    assert!(
        !held,
        "{what}, ttl {ttl:?}: is_held() when the key was taken"
    );
    let lost_at = lost_at.unwrap_or_else(|| {
        panic!("{what}, ttl {ttl:?}: lost() had not fired when the key was taken")
    });
    assert!(lost_at < taken_at, "{what}, ttl {ttl:?}");
    eprintln!(
        "{what}, ttl {ttl:?}: lost() fired {:?} before the key was taken",
        taken_at - lost_at
    );
}

/// Without a watchdog the lease is what the acquisition bought: its deadline
/// counts from the acquisition's send time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_before_an_unrenewed_key_can_be_taken() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    for (i, ttl) in ttls().into_iter().enumerate() {
        let key = format!("unrenewed:{i}");
        let guard = locks
            .lock(&key)
            .ttl(ttl)
            .watchdog(false)
            .acquire()
            .await
            .unwrap();
        let (url, lease) = (server.url(), guard.lease());
        tokio::task::spawn_blocking(move || check("unrenewed", ttl, &url, &key, &lease))
            .await
            .unwrap();
    }
}

/// With the watchdog renewing until the network stalls: the deadline counts
/// from the send time of the last renewal confirmed before the stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_fires_before_a_key_whose_renewals_stalled_can_be_taken() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port());
    let locks = LockClient::connect(&proxy.url()).await.unwrap();
    for (i, ttl) in ttls().into_iter().enumerate() {
        let key = format!("stalled:{i}");
        let guard = locks.lock(&key).ttl(ttl).acquire().await.unwrap();
        // A few renewals, then none gets through.
        tokio::time::sleep(ttl.max(Duration::from_millis(30))).await;
        proxy.stall();
        let (url, lease) = (server.url(), guard.lease());
        tokio::task::spawn_blocking(move || check("stalled", ttl, &url, &key, &lease))
            .await
            .unwrap();
        proxy.restore();
        drop(guard);
    }
}
