//! `LockGuard::commit` through faults, against real Redis: a commit whose
//! reply is lost is sent again and applied once, and a commit that Redis
//! could only half-apply is refused before anything is written.

use std::time::Duration;

use soloist::{FencedWrite, LockClient, LockError, MAX_EFFECT_ARGS, MAX_RECORD_TTL, redis};
use soloist_testkit::RedisServer;

const SECOND: Duration = Duration::from_secs(1);

fn incr(key: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("INCR");
    cmd.arg(key);
    cmd
}

/// Redis stops answering (SIGSTOP) while a commit is on the wire, past the
/// operation timeout: the commit is sent again until Redis answers, and its
/// effect is applied exactly once, though Redis receives every copy.
#[tokio::test]
async fn a_commit_whose_reply_is_late_is_sent_again_and_applied_once() {
    let server = RedisServer::start();
    let locks = LockClient::builder()
        .op_timeout(Duration::from_millis(200))
        .connect(&server.url())
        .await
        .unwrap();
    let guard = locks
        .lock("invoice:1")
        .ttl(10 * SECOND)
        .acquire()
        .await
        .unwrap();
    // Loads the script, so that every copy sent later runs it.
    guard.commit("warm-up", "", None, &[]).await.unwrap();
    server.pause_for(SECOND);
    let effects = [incr("charges")];
    let write = guard
        .commit("charged:1", "receipt", Some(60 * SECOND), &effects)
        .await;
    assert_eq!(write.unwrap(), FencedWrite::Accepted);
    assert_eq!(server.cli(&["GET", "charges"]).trim(), "1");
    let stored = locks.fenced_get("charged:1").await.unwrap().unwrap();
    assert_eq!(stored.value, b"receipt");
    guard.release().await.unwrap();
}

/// A copy is sent only while the first one's record surely still exists
/// (half its ttl): past that, a copy could find the record expired and apply
/// the effects again, so the commit gives up with the undecided error.
#[tokio::test]
async fn a_short_lived_record_is_not_sent_again_past_half_its_ttl() {
    let server = RedisServer::start();
    let locks = LockClient::builder()
        .op_timeout(Duration::from_millis(200))
        .connect(&server.url())
        .await
        .unwrap();
    let guard = locks
        .lock("invoice:2")
        .ttl(10 * SECOND)
        .acquire()
        .await
        .unwrap();
    guard.commit("warm-up", "", None, &[]).await.unwrap();
    server.pause_for(SECOND);
    let effects = [incr("charges")];
    let ttl = Duration::from_millis(300);
    let write = guard
        .commit("charged:2", "receipt", Some(ttl), &effects)
        .await;
    assert!(
        matches!(&write, Err(err) if err.is_transient()),
        "gave up undecided: {write:?}"
    );
    // The one copy sent reaches Redis once it continues: applied once.
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(server.cli(&["GET", "charges"]).trim(), "1");
    guard.release().await.unwrap();
}

/// Bad effects and ttls are refused before anything is written: no record
/// without its effects, no record that never expires.
#[tokio::test]
async fn a_commit_redis_would_half_apply_writes_nothing() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let guard = locks.lock("k").ttl(10 * SECOND).acquire().await.unwrap();

    let mut too_long = redis::cmd("RPUSH");
    too_long.arg("list");
    for i in 0..MAX_EFFECT_ARGS {
        too_long.arg(i);
    }
    let refused = guard
        .commit("r1", "v", None, &[incr("before"), too_long])
        .await;
    assert!(
        matches!(
            refused,
            Err(LockError::InvalidArgument {
                name: "effects",
                ..
            })
        ),
        "{refused:?}"
    );
    for ttl in [Duration::MAX, MAX_RECORD_TTL + SECOND, Duration::ZERO] {
        let refused = guard.commit("r1", "v", Some(ttl), &[incr("before")]).await;
        assert!(
            matches!(refused, Err(LockError::InvalidArgument { name: "ttl", .. })),
            "{ttl:?}: {refused:?}"
        );
        let refused = locks.fenced_set_expiring("r2", 1, "v", ttl).await;
        assert!(
            matches!(refused, Err(LockError::InvalidArgument { name: "ttl", .. })),
            "{ttl:?}: {refused:?}"
        );
    }
    assert_eq!(locks.fenced_get("r1").await.unwrap(), None);
    assert_eq!(locks.fenced_get("r2").await.unwrap(), None);
    assert_eq!(server.cli(&["EXISTS", "before"]).trim(), "0");

    // The longest effect allowed runs whole.
    let mut longest = redis::cmd("RPUSH");
    longest.arg("list");
    for i in 0..MAX_EFFECT_ARGS - 2 {
        longest.arg(i);
    }
    let write = guard
        .commit("r1", "v", Some(MAX_RECORD_TTL), &[longest])
        .await;
    assert_eq!(write.unwrap(), FencedWrite::Accepted);
    assert_eq!(
        server.cli(&["LLEN", "list"]).trim(),
        (MAX_EFFECT_ARGS - 2).to_string()
    );
    guard.release().await.unwrap();
}

/// What the docs promise for an effect Redis refuses at run time: the
/// record stays written, the refused effect changes nothing, the effects
/// after it still run, and the caller hears of the refusal.
#[tokio::test]
async fn an_effect_refused_at_run_time_leaves_the_record_and_the_other_effects() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    server.cli(&["SET", "text", "not a list"]);
    let guard = locks.lock("k").ttl(10 * SECOND).acquire().await.unwrap();
    let mut wrong_type = redis::cmd("LPUSH");
    wrong_type.arg("text").arg("x");
    let outcome = guard
        .commit("r", "v", None, &[incr("first"), wrong_type, incr("last")])
        .await;
    let Err(LockError::EffectRefused { resource, error }) = outcome else {
        panic!("expected the refusal, got {outcome:?}");
    };
    assert_eq!(resource, "r");
    assert!(error.contains("WRONGTYPE"), "{error}");
    assert!(locks.fenced_get("r").await.unwrap().is_some());
    assert_eq!(server.cli(&["GET", "first"]).trim(), "1");
    assert_eq!(server.cli(&["GET", "text"]).trim(), "not a list");
    assert_eq!(server.cli(&["GET", "last"]).trim(), "1");
    guard.release().await.unwrap();
}
