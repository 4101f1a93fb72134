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

fn claimed_guard(claimed: Option<Claimed>) -> soloist::LockGuard {
    match claimed {
        Some(Claimed::Acquired { guard, .. }) => guard,
        other => panic!("not taken: {other:?}"),
    }
}

/// Commands gathered over a call run once, with the last argument of every
/// settlement whose record was written and no other; each lock is given
/// back as release.lua would: a waiting client is woken, a lock an effect
/// removed is not reported released, a lock taken over is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_gather_commands_and_release_as_alone() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let keys = ["plain", "effect", "taken", "waited"];
    let claims: Vec<Claim> = keys
        .iter()
        .map(|key| Claim::new(*key).ttl(10 * SECOND))
        .collect();
    let mut claimed = locks.claim_all(&claims).await.unwrap().into_iter();
    let mut guards: Vec<_> = (0..keys.len())
        .map(|_| claimed_guard(claimed.next()))
        .collect();

    // "taken": its lease ends and another client holds the key.
    server.cli(&["DEL", "soloist:lock:{taken}"]);
    let thief = locks
        .lock("taken")
        .ttl(10 * SECOND)
        .acquire()
        .await
        .unwrap();
    // "waited": a client queues for it.
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let guard = locks
                .lock("waited")
                .wait(20 * SECOND)
                .acquire()
                .await
                .unwrap();
            guard.release().await.unwrap();
            started.elapsed()
        })
    };
    let deadline = std::time::Instant::now() + 5 * SECOND;
    while !server.cli(&["GET", "soloist:lock:{waited}"]).ends_with('+') {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut gone = redis::cmd("DEL");
    gone.arg("soloist:lock:{effect}");
    server.cli(&["CONFIG", "RESETSTAT"]);
    let settles: Vec<Settle> = guards
        .drain(..)
        .zip(keys)
        .map(|(guard, key)| {
            let effects = if key == "effect" {
                vec![gone.clone()]
            } else {
                Vec::new()
            };
            Settle::new(guard)
                .record(key, key.as_bytes().to_vec(), None, effects)
                .if_committed_together(vec![push("acks", key), push("order", key)])
        })
        .collect();
    let settled = locks.settle_all(settles).await.unwrap();
    let written: Vec<_> = settled.iter().map(|s| s.write).collect();
    assert_eq!(
        written,
        vec![
            Some(FencedWrite::Accepted),
            Some(FencedWrite::Accepted),
            Some(FencedWrite::NotHeld),
            Some(FencedWrite::Accepted)
        ]
    );
    let released: Vec<_> = settled.iter().map(|s| s.released).collect();
    assert_eq!(released, vec![true, false, false, true]);
    assert!(settled.iter().all(|s| s.command_refused.is_none()));
    assert_eq!(
        server.cli(&["LRANGE", "acks", "0", "-1"]),
        "plain\neffect\nwaited"
    );
    assert_eq!(
        server.cli(&["LRANGE", "order", "0", "-1"]),
        "plain\neffect\nwaited"
    );
    let stats = server.cli(&["INFO", "commandstats"]);
    assert!(
        stats.contains("cmdstat_rpush:calls=2,"),
        "one RPUSH per gathered command: {stats}"
    );
    assert!(thief.is_held());
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{taken}"]), "1");
    let waited = tokio::time::timeout(5 * SECOND, waiter)
        .await
        .expect("the waiting client was woken")
        .unwrap();
    assert!(waited < 5 * SECOND);
    thief.release().await.unwrap();

    // A refused gathered command is reported by every settlement it
    // gathered from, and by no other; a malformed one sends nothing.
    server.cli(&["SET", "wrong", "type"]);
    let mut claimed = locks
        .claim_all(&[Claim::new("x"), Claim::new("y"), Claim::new("z")])
        .await
        .unwrap()
        .into_iter();
    let (x, y, z) = (
        claimed_guard(claimed.next()),
        claimed_guard(claimed.next()),
        claimed_guard(claimed.next()),
    );
    let malformed = Settle::new(z).if_committed_together(vec![redis::cmd("PING")]);
    assert!(matches!(
        malformed.check(),
        Err(LockError::InvalidArgument {
            name: "together",
            ..
        })
    ));
    let settled = locks
        .settle_all(vec![
            Settle::new(x)
                .record("x", b"x".to_vec(), None, Vec::new())
                .if_committed_together(vec![push("wrong", "x")]),
            Settle::new(y).if_committed_together(vec![push("wrong", "y")]),
            Settle::new(malformed.into_guard())
                .record("z", b"z".to_vec(), None, Vec::new())
                .if_committed_together(vec![push("wrong", "z")]),
        ])
        .await
        .unwrap();
    let refused: Vec<_> = settled
        .iter()
        .map(|s| {
            s.command_refused
                .as_deref()
                .map(|e| e.starts_with("WRONGTYPE"))
        })
        .collect();
    assert_eq!(refused, vec![Some(true), None, Some(true)]);
    assert!(settled.iter().all(|s| s.released));
}

fn taken(claimed: Vec<Claimed>) -> Vec<soloist::LockGuard> {
    claimed
        .into_iter()
        .map(|claimed| claimed_guard(Some(claimed)))
        .collect()
}

fn server_micros(server: &RedisServer) -> u64 {
    let time = server.cli(&["TIME"]);
    let mut parts = time.lines().map(|part| part.parse::<u64>().unwrap());
    parts.next().unwrap() * 1_000_000 + parts.next().unwrap()
}

/// Keys taken by a batch get fences from the server's clock and the fence
/// clock key, not a counter per key: a queue's key per message leaves no
/// key behind. The fences still only grow, per key and across calls:
/// above the key's own counter when it has one (which then follows), above
/// a clock key that runs ahead of the server's clock, and below what a
/// later single acquisition of the key gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_fences_come_from_the_clock_and_only_grow() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();

    // No counter per key is left behind, and the fence is about the clock.
    let before = server_micros(&server);
    let claims: Vec<Claim> = (0..20).map(|i| Claim::new(format!("m{i}"))).collect();
    let guards = taken(locks.claim_all(&claims).await.unwrap());
    let after = server_micros(&server);
    let first = guards[0].fence();
    assert!(
        first + 1 >= before && first <= after,
        "{first} {before} {after}"
    );
    assert!(guards.iter().all(|guard| guard.fence() == first));
    for guard in guards {
        guard.release().await.unwrap();
    }
    assert_eq!(server.cli(&["KEYS", "soloist:fence:*"]), "");
    assert_eq!(
        server.cli(&["GET", "soloist:fence-clock"]),
        first.to_string()
    );

    // A later single acquisition of a key a batch fenced is above it, and
    // a later batch is above both.
    let single = locks.lock("m0").acquire().await.unwrap();
    assert!(single.fence() > first);
    let single_fence = single.fence();
    single.release().await.unwrap();
    let again = taken(
        locks
            .claim_all(&[Claim::new("m0"), Claim::new("m1")])
            .await
            .unwrap(),
    );
    assert!(again[0].fence() > single_fence, "its counter is read");
    assert!(again[1].fence() > first);
    assert_eq!(
        server.cli(&["GET", "soloist:fence:{m0}"]),
        again[0].fence().to_string(),
        "the key's counter follows the fence it issued"
    );
    // A counter made without expiry (an INCR that found none) is kept a
    // week from then, as acquire.lua keeps a counter, not forever.
    server.cli(&["SET", "soloist:fence:{bare}", "5"]);
    let bare = taken(locks.claim_all(&[Claim::new("bare")]).await.unwrap()).remove(0);
    let kept: i64 = server
        .cli(&["PTTL", "soloist:fence:{bare}"])
        .parse()
        .unwrap();
    assert!(kept > 6 * 24 * 3_600_000, "kept for {kept} ms");
    bare.release().await.unwrap();
    for guard in again {
        guard.release().await.unwrap();
    }

    // A clock key ahead of the server's clock: the next fences go on from
    // it, and a key so fenced gets a counter so that its next single
    // acquisition is above.
    let ahead = server_micros(&server) + 3_600_000_000;
    server.cli(&["SET", "soloist:fence-clock", &ahead.to_string()]);
    let guard = taken(locks.claim_all(&[Claim::new("fresh")]).await.unwrap()).remove(0);
    assert_eq!(guard.fence(), ahead + 1);
    guard.release().await.unwrap();
    let single = locks.lock("fresh").acquire().await.unwrap();
    assert!(single.fence() > ahead + 1);
    single.release().await.unwrap();
    // A key that never had a counter starts one above the clock key too:
    // the server's clock reads behind the fences a batch issued (as after
    // a failover to a replica whose clock is behind).
    let never = locks.lock("never-fenced").acquire().await.unwrap();
    assert!(never.fence() > ahead + 1, "{} {ahead}", never.fence());
    never.release().await.unwrap();

    // A clock key that holds no integer fails every claim alone; none
    // keeps its key.
    server.cli(&["SET", "soloist:fence-clock", "not a number"]);
    let claimed = locks
        .claim_all(&[Claim::new("x"), Claim::new("y")])
        .await
        .unwrap();
    for claimed in &claimed {
        assert!(
            matches!(claimed, Claimed::Failed { error } if error.contains("not an integer")),
            "{claimed:?}"
        );
    }
    assert_eq!(server.cli(&["EXISTS", "soloist:lock:{x}"]), "0");
}

/// Commands a batch sends share what they have in common with an earlier
/// one of the call; each still runs with exactly its own arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_share_arguments_run_as_given() {
    let server = RedisServer::start();
    let locks = LockClient::connect(&server.url()).await.unwrap();
    let entry = |key: &str, outcome: &str| {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg("log").arg("same").arg(key).arg(outcome);
        cmd
    };
    let claims: Vec<Claim> = ["a", "b", "c"]
        .iter()
        .map(|key| Claim::new(*key).if_acquired(vec![entry(key, "claimed"), push("other", key)]))
        .collect();
    let guards = taken(locks.claim_all(&claims).await.unwrap());
    let settles: Vec<Settle> = guards
        .into_iter()
        .zip(["a", "b", "c"])
        .map(|(guard, key)| {
            Settle::new(guard)
                .record(key, b"v".to_vec(), None, vec![])
                .if_committed(vec![entry(key, "done")])
                .otherwise(vec![entry(key, "lost")])
        })
        .collect();
    locks.settle_all(settles).await.unwrap();
    assert_eq!(
        server.cli(&["LRANGE", "log", "0", "-1"]),
        [
            "same\na\nclaimed",
            "same\nb\nclaimed",
            "same\nc\nclaimed",
            "same\na\ndone",
            "same\nb\ndone",
            "same\nc\ndone",
        ]
        .join("\n")
    );
    assert_eq!(server.cli(&["LRANGE", "other", "0", "-1"]), "a\nb\nc");
}
