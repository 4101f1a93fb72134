//! `SentinelGroup` against real `redis-server --sentinel` processes: discovery, failover, and
//! the old primary coming back as a replica.

use std::time::{Duration, Instant};

use soloist_testkit::SentinelGroup;

/// Generous for a loaded machine: with `down-after-milliseconds 1000` a failover usually
/// takes two to five seconds.
const PROMOTION_BOUND: Duration = Duration::from_secs(20);

#[test]
fn sentinels_agree_on_the_primary() {
    let group = SentinelGroup::start("soloist-test");
    assert_eq!(group.master_name(), "soloist-test");
    let urls = group.sentinel_urls();
    assert_eq!(urls.len(), 3);
    for (url, sentinel) in urls.iter().zip(group.sentinels()) {
        assert_eq!(*url, format!("redis://127.0.0.1:{}", sentinel.port()));
        let reply = sentinel.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "soloist-test"]);
        assert_eq!(
            reply,
            format!("127.0.0.1\n{}", group.primary().port()),
            "sentinel on port {}",
            sentinel.port()
        );
    }
    assert_eq!(group.current_primary_port(), group.primary().port());
    assert!(group.primary().cli(&["ROLE"]).starts_with("master"));
    assert!(group.replica().cli(&["ROLE"]).starts_with("slave"));
    // Unknown names get a nil reply.
    assert_eq!(
        group.sentinels()[0].cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "nobody"]),
        ""
    );
}

#[test]
fn a_killed_primary_is_replaced_and_comes_back_as_a_replica() {
    let started = Instant::now();
    let mut group = SentinelGroup::start("orders");
    let (old, promoted) = (group.primary().port(), group.replica().port());
    let acknowledged =
        group
            .primary()
            .write_and_wait(&["SET", "before", "1"], 1, Duration::from_secs(2));
    assert_eq!(acknowledged, 1, "the replica has the write");

    let took = group.kill_primary_and_wait_failover();
    assert!(took < PROMOTION_BOUND, "promotion took {took:?}");
    assert_eq!(group.primary().port(), promoted);
    assert_eq!(group.replica().port(), old);
    assert!(!group.replica().is_running());
    assert_eq!(group.current_primary_port(), promoted);
    assert_eq!(group.primary().get("before").as_deref(), Some("1"));
    assert_eq!(group.primary().cli(&["SET", "after", "1"]), "OK");

    group.restart_old_primary();
    let demoted = group.replica();
    assert_eq!(demoted.port(), old);
    assert!(demoted.cli(&["ROLE"]).starts_with("slave"));
    let refused = demoted.cli(&["SET", "k", "v"]);
    assert!(refused.starts_with("READONLY"), "{refused}");
    // It resynchronised from the new primary.
    assert_eq!(demoted.get("after").as_deref(), Some("1"));
    assert_eq!(group.current_primary_port(), promoted);
    eprintln!("failover in {took:?}, whole test {:?}", started.elapsed());
}

#[test]
fn a_paused_sentinel_is_skipped_by_the_group() {
    let group = SentinelGroup::start("paused");
    let frozen = &group.sentinels()[2];
    frozen.pause();
    assert!(frozen.is_paused() && frozen.is_running());
    assert_eq!(group.current_primary_port(), group.primary().port());
    frozen.resume();
    assert!(!frozen.is_paused());
}
