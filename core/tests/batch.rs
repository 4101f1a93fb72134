//! Claiming and settling many locks in one call each, against a real
//! redis-server.

use std::time::Duration;

use soloist::{Claim, Claimed, FencedWrite, LockClient, LockError, Settle, redis};
use soloist_testkit::RedisServer;

const SECOND: Duration = Duration::from_secs(1);

fn push(list: &str, item: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("RPUSH");
    cmd.arg(list).arg(item);
    cmd
}

/// One call finds a record, a held key and a free one; the free one is
/// taken with a fence above the last and runs its commands; one settle call
/// writes the record, releases, and runs the commands of each outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_settles_in_one_call_each() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let done = locks.lock("done").acquire().await.unwrap();
    let last_fence = done.fence();
    assert!(
        done.commit("done", b"v1", None, &[])
            .await
            .unwrap()
            .is_accepted()
    );
    done.release().await.unwrap();
    let other = locks.lock("busy").ttl(10 * SECOND).acquire().await.unwrap();

    let claims: Vec<Claim> = ["done", "busy", "free"]
        .iter()
        .map(|key| {
            Claim::new(*key)
                .ttl(10 * SECOND)
                .unless_recorded(*key)
                .if_recorded(vec![push("log", &format!("dup:{key}"))])
                .if_acquired(vec![push("log", &format!("got:{key}"))])
        })
        .collect();
    let mut claimed = locks.claim_all(&claims).await.unwrap().into_iter();
    let Some(Claimed::Recorded(found, replies)) = claimed.next() else {
        panic!("done is recorded")
    };
    assert_eq!(replies, vec![redis::Value::Int(1)]);
    assert_eq!(
        (found.fence, found.value.as_slice()),
        (last_fence, &b"v1"[..])
    );
    assert!(matches!(
        claimed.next(),
        Some(Claimed::Held {
            expires_in: Some(_)
        })
    ));
    let Some(Claimed::Acquired { guard, replies }) = claimed.next() else {
        panic!("free is taken")
    };
    assert!(guard.fence() > last_fence);
    assert_eq!(replies, vec![redis::Value::Int(2)]);
    assert_eq!(
        server.cli(&["LRANGE", "log", "0", "-1"]),
        "dup:done\ngot:free"
    );
    assert!(guard.is_held());

    // A second holder of "free" cannot take it while the guard lives.
    assert!(locks.lock("free").acquire().await.is_err());
    let settle = Settle::new(guard)
        .record(
            "free",
            b"v2".to_vec(),
            Some(60 * SECOND),
            vec![push("effects", "once")],
        )
        .if_committed(vec![push("log", "committed")])
        .otherwise(vec![push("log", "not committed")]);
    let settled = locks.settle_all(vec![settle]).await.unwrap();
    assert_eq!(settled[0].write, Some(FencedWrite::Accepted));
    assert!(settled[0].released);
    assert_eq!(
        locks.fenced_get("free").await.unwrap().unwrap().value,
        b"v2"
    );
    assert_eq!(server.cli(&["LLEN", "effects"]), "1");
    assert_eq!(server.cli(&["LINDEX", "log", "-1"]), "committed");
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{free}"]), "0");

    // A lease that ended: nothing written, the other commands run.
    let lapsed = match locks
        .claim_all(&[Claim::new("lapse").ttl(Duration::from_millis(50))])
        .await
        .unwrap()
        .pop()
    {
        Some(Claimed::Acquired { guard, .. }) => guard,
        other => panic!("{other:?}"),
    };
    server.cli(&["DEL", "soloist:lock:{lapse}"]);
    locks
        .lock("lapse")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let settled = locks
        .settle_all(vec![
            Settle::new(lapsed)
                .record(
                    "lapse",
                    b"late".to_vec(),
                    None,
                    vec![push("effects", "twice")],
                )
                .otherwise(vec![push("log", "lost")]),
        ])
        .await
        .unwrap();
    assert_eq!(settled[0].write, Some(FencedWrite::NotHeld));
    assert!(!settled[0].released);
    assert_eq!(server.cli(&["LLEN", "effects"]), "1");
    assert_eq!(server.cli(&["LINDEX", "log", "-1"]), "lost");
    other.release().await.unwrap();

    // Backends that cannot batch say so.
    let memory = LockClient::memory();
    assert!(!memory.batches());
    assert!(matches!(
        memory.claim_all(&[Claim::new("x")]).await,
        Err(LockError::InvalidArgument {
            name: "backend",
            ..
        })
    ));
}

/// A claim Redis refuses (a record of the wrong type, a fence counter that
/// is not an integer) answers for itself: the other claims of the call are
/// made and their commands run once, the refused ones keep no lock and run
/// no command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_claim_answers_for_itself() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    server.cli(&["SET", "soloist:fenced:{wrongtype}", "a string"]);
    server.cli(&["SET", "soloist:fence:{badfence}", "not a number"]);
    let claims: Vec<Claim> = ["first", "wrongtype", "badfence", "last"]
        .iter()
        .map(|key| {
            Claim::new(*key)
                .ttl(10 * SECOND)
                .unless_recorded(*key)
                .if_acquired(vec![push("log", key)])
        })
        .collect();
    let claimed = locks.claim_all(&claims).await.unwrap();
    assert!(
        matches!(claimed[0], Claimed::Acquired { .. }),
        "{claimed:?}"
    );
    assert!(
        matches!(&claimed[1], Claimed::Failed { error } if error.contains("WRONGTYPE")),
        "{claimed:?}"
    );
    assert!(
        matches!(&claimed[2], Claimed::Failed { error } if error.contains("not an integer")),
        "{claimed:?}"
    );
    assert!(
        matches!(claimed[3], Claimed::Acquired { .. }),
        "{claimed:?}"
    );
    assert_eq!(server.cli(&["LRANGE", "log", "0", "-1"]), "first\nlast");
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{wrongtype}"]), "0");
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{badfence}"]), "0");
    for claimed in claimed {
        if let Claimed::Acquired { guard, .. } = claimed {
            guard.release().await.unwrap();
        }
    }
}

/// Effects as large as a single commit takes (each under the limit, many
/// arguments together) are settled in a batch; a record Redis refuses
/// answers for its settlement alone and the others are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_effects_and_a_refused_record_settle_item_by_item() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    server.cli(&["SET", "soloist:fenced:{wrongtype}", "a string"]);
    let big = |list: &str| {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(list);
        for i in 0..4_000 {
            cmd.arg(i);
        }
        cmd
    };
    let mut settles = Vec::new();
    for key in ["wrongtype", "large", "after"] {
        let guard = locks.lock(key).acquire().await.unwrap();
        let effects = if key == "large" {
            vec![big("one"), big("two")]
        } else {
            vec![push("effects", key)]
        };
        settles.push(
            Settle::new(guard)
                .record(key, b"v".to_vec(), None, effects)
                .if_committed(vec![push("log", key)])
                .otherwise(vec![push("log", &format!("not {key}"))]),
        );
    }
    let settled = locks.settle_all(settles).await.unwrap();
    assert_eq!(settled[0].write, None);
    assert!(
        settled[0]
            .record_refused
            .as_deref()
            .is_some_and(|error| error.contains("WRONGTYPE")),
        "{settled:?}"
    );
    assert!(settled[0].released);
    for done in &settled[1..] {
        assert_eq!(done.write, Some(FencedWrite::Accepted), "{settled:?}");
        assert_eq!(done.record_refused, None);
    }
    assert_eq!(server.cli(&["LLEN", "one"]), "4000");
    assert_eq!(server.cli(&["LLEN", "two"]), "4000");
    assert_eq!(server.cli(&["LRANGE", "effects", "0", "-1"]), "after");
    assert_eq!(
        server.cli(&["LRANGE", "log", "0", "-1"]),
        "not wrongtype\nlarge\nafter"
    );
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{wrongtype}"]), "0");
}

/// A claim call whose reply does not come in time (the server stalls past
/// the op timeout, then carries on) gives its key back once Redis answers
/// again, and its commands `if_abandoned` undo what `if_acquired` counted,
/// in the same step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_claim_call_takes_back_what_it_counted() {
    let server = RedisServer::start();
    let locks = LockClient::builder()
        .op_timeout(Duration::from_millis(300))
        .connect(&server.url())
        .await
        .unwrap();
    let count = |by: i64| {
        let mut cmd = redis::cmd("HINCRBY");
        cmd.arg("attempts").arg("m").arg(by);
        cmd
    };
    // The claim script loaded, so the stalled call is a single EVALSHA.
    for claimed in locks.claim_all(&[Claim::new("warm")]).await.unwrap() {
        if let Claimed::Acquired { guard, .. } = claimed {
            guard.release().await.unwrap();
        }
    }
    server.pause();
    let claim = Claim::new("k")
        .ttl(10 * SECOND)
        .if_acquired(vec![count(1)])
        .if_abandoned(vec![count(-1)]);
    let claimed = locks.claim_all(&[claim]).await;
    server.resume();
    assert!(claimed.is_err(), "{claimed:?}");
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    while server.cli(&["EXISTS", "soloist:lock:{k}"]) != "0" {
        assert!(tokio::time::Instant::now() < deadline, "k given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.cli(&["HGET", "attempts", "m"]), "0");
}
