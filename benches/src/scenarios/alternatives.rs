//! Ways to take a fenced lock, measured on a bare connection with soloist's
//! key layout and release script, so that only the acquire differs:
//! `alt-script` soloist's acquire script, `alt-lean` a script that only takes
//! the key and issues the fence, `alt-multi` `SET NX PX GET` and `INCR` in
//! one `MULTI`/`EXEC`, `alt-fcall` the lean script as a Redis function (its
//! release too), `alt-unfenced` a bare `SET NX PX`.

use std::sync::LazyLock;
use std::time::Instant;

use futures::FutureExt;
use redis::Script;
use redis::aio::MultiplexedConnection;

use super::{Bench, CYCLE_TTL, Scenario, key};
use crate::measure::{Samples, Window, join_tasks};
use crate::rounds::Contestant;

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../../core/src/scripts/acquire.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../../core/src/scripts/release.lua")));
static LEAN: LazyLock<Script> = LazyLock::new(|| Script::new(LEAN_BODY));

const LEAN_BODY: &str = "\
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local fence = redis.call('INCR', KEYS[2])
if fence < 1000000000000000 then return false end
return fence";

const LIBRARY: &str = "#!lua name=lbalt
redis.register_function('lbalt_acquire', function(keys, args)
  if not redis.call('SET', keys[1], args[1], 'NX', 'PX', args[2]) then return false end
  local fence = redis.call('INCR', keys[2])
  if fence < 1000000000000000 then return false end
  return fence
end)
redis.register_function('lbalt_release', function(keys, args)
  local value = redis.call('GET', keys[1])
  if value == args[1] or value == args[1] .. '+' then
    redis.call('DEL', keys[1])
    return 1
  end
  return 0
end)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Script,
    Lean,
    Multi,
    Fcall,
    Unfenced,
}

impl Way {
    const ALL: [Way; 5] = [
        Way::Script,
        Way::Lean,
        Way::Multi,
        Way::Fcall,
        Way::Unfenced,
    ];

    fn label(self) -> &'static str {
        match self {
            Way::Script => "alt-script",
            Way::Lean => "alt-lean",
            Way::Multi => "alt-multi",
            Way::Fcall => "alt-fcall",
            Way::Unfenced => "alt-unfenced",
        }
    }
}

/// Every alternative, at one worker and then at 64; only when asked for by name.
pub(super) async fn contestants(bench: &Bench) -> Vec<Contestant> {
    let mut contestants = Vec::new();
    for tasks in [1, 64] {
        for way in Way::ALL {
            if bench.libraries.iter().any(|wanted| wanted == way.label()) {
                contestants.push(cycles(bench, tasks, way).await);
            }
        }
    }
    contestants
}

async fn cycles(bench: &Bench, tasks: usize, way: Way) -> Contestant {
    let client = redis::Client::open(bench.url.as_str()).expect("the Redis URL must parse");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("alt: cannot connect to Redis");
    if way == Way::Fcall {
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(LIBRARY)
            .query_async(&mut conn)
            .await
            .expect("alt: FUNCTION LOAD failed");
    }
    let keys: Vec<String> = (0..tasks)
        .map(|worker| key(Scenario::Uncontended, way.label(), tasks, worker))
        .collect();
    // Seeded counters, as every counter is after its first acquisition:
    // the lean ways leave seeding to a fallback they do not measure.
    for key in &keys {
        let _: () = redis::cmd("SET")
            .arg(format!("soloist:fence:{{{key}}}"))
            .arg(1_700_000_000_000_000_u64)
            .query_async(&mut conn)
            .await
            .expect("alt: cannot seed a fence counter");
    }
    Contestant::new(
        Scenario::Uncontended,
        tasks,
        way.label(),
        false,
        move |window| {
            let handles = keys
                .iter()
                .map(|key| tokio::spawn(worker(conn.clone(), key.clone(), window, way)))
                .collect();
            join_tasks(handles).boxed()
        },
    )
}

async fn worker(mut conn: MultiplexedConnection, key: String, window: Window, way: Way) -> Samples {
    let ttl_ms = u64::try_from(CYCLE_TTL.as_millis()).expect("the ttl fits in u64 milliseconds");
    let (lock, fence, waiters) = (
        format!("soloist:lock:{{{key}}}"),
        format!("soloist:fence:{{{key}}}"),
        format!("soloist:waiters:{{{key}}}"),
    );
    let mut samples = Samples::default();
    let mut cycle = 0_u64;
    while window.is_open() {
        cycle += 1;
        let token = format!("{cycle:032}");
        let started = Instant::now();
        let taken = match way {
            Way::Script => {
                let (taken, _): (i64, i64) = ACQUIRE
                    .key(&lock)
                    .key(&fence)
                    .key(&waiters)
                    .arg(&token)
                    .arg(ttl_ms)
                    .arg("")
                    .arg("0")
                    .arg("fence")
                    .invoke_async(&mut conn)
                    .await
                    .expect("alt: acquire failed");
                taken == 1
            }
            Way::Lean => {
                let fence: Option<i64> = LEAN
                    .key(&lock)
                    .key(&fence)
                    .arg(&token)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
                    .expect("alt: lean acquire failed");
                fence.is_some()
            }
            Way::Multi => {
                let (old, _fence): (Option<String>, i64) = redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .arg("GET")
                    .cmd("INCR")
                    .arg(&fence)
                    .query_async(&mut conn)
                    .await
                    .expect("alt: MULTI acquire failed");
                old.is_none()
            }
            Way::Fcall => {
                let fence: Option<i64> = redis::cmd("FCALL")
                    .arg("lbalt_acquire")
                    .arg(2)
                    .arg(&lock)
                    .arg(&fence)
                    .arg(&token)
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
                    .expect("alt: FCALL acquire failed");
                fence.is_some()
            }
            Way::Unfenced => {
                let taken: Option<String> = redis::cmd("SET")
                    .arg(&lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut conn)
                    .await
                    .expect("alt: SET NX PX failed");
                taken.is_some()
            }
        };
        assert!(taken, "alt: {key} is taken, yet only one worker uses it");
        let released: i64 = if way == Way::Fcall {
            redis::cmd("FCALL")
                .arg("lbalt_release")
                .arg(1)
                .arg(&lock)
                .arg(&token)
                .query_async(&mut conn)
                .await
                .expect("alt: FCALL release failed")
        } else {
            RELEASE
                .key(&lock)
                .key(&waiters)
                .arg(&token)
                .arg("soloist:wake:")
                .arg(&key)
                .invoke_async(&mut conn)
                .await
                .expect("alt: release failed")
        };
        assert_eq!(released, 1, "alt: {key} lost its token before the release");
        samples.record(&window, started, false);
    }
    samples
}
