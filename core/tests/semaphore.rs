//! Leased semaphores against real Redis (one server, a cluster), and the
//! memory backend: at most N holders, permits of dead holders back within
//! one ttl, releases that wake waiters, and nothing left behind.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Backend, command_calls, until};
use soloist::{LockClient, LockError};
use soloist_testkit::{ChildProcess, RedisServer, child_role, read_from_parent, send_to_parent};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

/// Keys under `soloist:` that would stay forever (no ttl) on `server`.
fn lasting_keys(server: &RedisServer) -> Vec<String> {
    server
        .cli(&["KEYS", "soloist:*"])
        .lines()
        .filter(|key| !key.is_empty())
        .filter(|key| server.cli(&["PTTL", key]) == "-1")
        .map(str::to_owned)
        .collect()
}

/// Every primary of the backend, for looking at what is left in Redis.
fn servers(backend: &Backend) -> Vec<&RedisServer> {
    match backend {
        Backend::Redis(server) => vec![server],
        Backend::Cluster(cluster) => cluster.primaries(),
        Backend::Redlock(servers) => servers.iter().collect(),
        Backend::Memory(_) => Vec::new(),
    }
}

/// A Redlock refuses semaphores, saying so; `true` when `backend` is one
/// (and the caller has nothing more to test).
async fn refused_on_redlock(backend: &Backend) -> bool {
    if !matches!(backend, Backend::Redlock(_)) {
        return false;
    }
    let locks = backend.client().await;
    match locks.semaphore("s", 2).acquire().await {
        Err(LockError::InvalidArgument { name, .. }) => assert_eq!(name, "semaphore"),
        other => panic!("a Redlock handed out a permit: {other:?}"),
    }
    true
}

/// 32 contenders on 3 clients for a 4-permit semaphore: never more than 4
/// inside at once, all 4 in use at times, every fence distinct, and when
/// it is over nothing stays in Redis but keys that expire.
async fn at_most_n_holders_under_32_contenders(backend: Backend) {
    if refused_on_redlock(&backend).await {
        return;
    }
    const PERMITS: usize = 4;
    let clients = [
        backend.client().await,
        backend.client().await,
        backend.client().await,
    ];
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(Mutex::new(HashSet::new()));
    let until_at = Instant::now() + 2 * SECOND;
    let mut tasks = Vec::new();
    for n in 0..32 {
        let locks = clients[n % 3].clone();
        let (inside, most, fences) = (inside.clone(), most.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            let mut entered = 0;
            while Instant::now() < until_at {
                let permit = locks
                    .semaphore("warehouse", PERMITS as u32)
                    .ttl(SECOND)
                    .wait(10 * SECOND)
                    .acquire()
                    .await
                    .expect("a permit within the wait");
                let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now_inside, Ordering::SeqCst);
                assert!(now_inside <= PERMITS, "{now_inside} holders inside");
                assert!(
                    fences.lock().unwrap().insert(permit.fence()),
                    "fence {} issued twice",
                    permit.fence()
                );
                tokio::time::sleep(Duration::from_millis(rand_ms())).await;
                assert!(permit.is_held());
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.expect("release a held permit");
                entered += 1;
            }
            entered
        }));
    }
    let mut entries = 0;
    for task in tasks {
        entries += task.await.expect("contender");
    }
    assert_eq!(most.load(Ordering::SeqCst), PERMITS, "permits left unused");
    assert!(entries >= 32, "only {entries} entries");
    // Everything given back: all permits free at once for one client.
    let mut all = Vec::new();
    for _ in 0..PERMITS {
        all.push(
            clients[0]
                .semaphore("warehouse", 4)
                .acquire()
                .await
                .unwrap(),
        );
    }
    for permit in all {
        permit.release().await.unwrap();
    }
    for server in servers(&backend) {
        assert_eq!(
            lasting_keys(server),
            Vec::<String>::new(),
            "keys left forever"
        );
        let holders = server.cli(&["KEYS", "soloist:sem:*"]);
        assert_eq!(holders, "", "holders left after every permit was released");
    }
}

fn rand_ms() -> u64 {
    // No rand crate in the tests: the clock's nanoseconds are random enough.
    u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos()),
    ) % 8
        + 1
}

/// A permit that is no longer held (its lease ran out, another holder took
/// it) is an error to give back and changes nothing: it cannot free a
/// place someone else holds.
async fn releasing_a_permit_not_held_changes_nothing(backend: Backend) {
    if refused_on_redlock(&backend).await {
        return;
    }
    let locks = backend.client().await;
    let ttl = Duration::from_millis(100);
    let stale = locks
        .semaphore("pool", 2)
        .ttl(ttl)
        .watchdog(false)
        .acquire()
        .await
        .unwrap();
    tokio::time::sleep(ttl + ttl / 2).await;
    let first = locks.semaphore("pool", 2).acquire().await.unwrap();
    let second = locks.semaphore("pool", 2).acquire().await.unwrap();
    assert!(matches!(stale.release().await, Err(LockError::Lost { .. })));
    assert!(
        matches!(
            locks.semaphore("pool", 2).acquire().await,
            Err(LockError::Busy { .. })
        ),
        "a stale release freed a permit"
    );
    // A held one given back twice: the guard is consumed by the first, and
    // its lease view says it is no longer held.
    let lease = first.lease();
    first.release().await.unwrap();
    assert!(!lease.is_held());
    let third = locks.semaphore("pool", 2).acquire().await.unwrap();
    assert!(matches!(
        locks.semaphore("pool", 2).acquire().await,
        Err(LockError::Busy { .. })
    ));
    drop(second);
    drop(third);
    let _again = locks
        .semaphore("pool", 2)
        .wait(SECOND)
        .acquire()
        .await
        .unwrap();
}

/// The watchdog renews a permit past many ttls; `lost` fires when the
/// permit is taken from under it.
async fn the_watchdog_keeps_a_permit(backend: Backend) {
    if refused_on_redlock(&backend).await {
        return;
    }
    let locks = backend.client().await;
    let ttl = Duration::from_millis(300);
    let permit = locks.semaphore("long", 1).ttl(ttl).acquire().await.unwrap();
    tokio::time::sleep(4 * ttl).await;
    assert!(permit.is_held());
    assert!(matches!(
        locks.semaphore("long", 1).acquire().await,
        Err(LockError::Busy { .. })
    ));
    permit.extend(2 * ttl).await.unwrap();
    permit.release().await.unwrap();
}

on_every_backend!(
    at_most_n_holders_under_32_contenders,
    releasing_a_permit_not_held_changes_nothing,
    the_watchdog_keeps_a_permit,
);

/// A waiter is woken by the release (a PUBLISH on its client's channel),
/// long before its fallback poll would find the permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_a_release() {
    let server = RedisServer::start();
    let holder = LockClient::connect(&server.url()).await.unwrap();
    let waiter = LockClient::connect(&server.url()).await.unwrap();
    let first = holder.semaphore("s", 2).acquire().await.unwrap();
    let second = holder.semaphore("s", 2).acquire().await.unwrap();
    let waiting = tokio::spawn(async move {
        let permit = waiter
            .semaphore("s", 2)
            .wait(10 * SECOND)
            .acquire()
            .await
            .unwrap();
        (Instant::now(), permit)
    });
    until("the waiter queued and listening", || {
        let queue = server.cli(&["LRANGE", "soloist:sem-waiters:{s}", "0", "-1"]);
        queue.lines().any(|client| {
            let reply = server.cli(&["PUBSUB", "NUMSUB", &format!("soloist:wake:{client}")]);
            reply.lines().nth(1) == Some("1")
        })
    })
    .await;
    let published = command_calls(&server, "publish");
    let released_at = Instant::now();
    first.release().await.unwrap();
    let (woken_at, permit) = waiting.await.unwrap();
    assert!(
        woken_at - released_at < Duration::from_millis(500),
        "woke {:?} after the release: polled, not woken",
        woken_at - released_at
    );
    assert!(command_calls(&server, "publish") > published, "no PUBLISH");
    permit.release().await.unwrap();
    second.release().await.unwrap();
    assert_eq!(server.cli(&["EXISTS", "soloist:sem:{s}"]), "0");
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Enters the checked section with `fence`: drops entries whose time is
/// up, adds this one for ARGV[2] ms of the server's clock (a margin short
/// of its lease's guaranteed end), and counts those inside. A count over the
/// permits, or a fence seen twice, is recorded as a violation.
const ENTER: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1]) == 0 then
  redis.call('RPUSH', KEYS[2], 'fence ' .. ARGV[1] .. ' twice')
end
local inside = redis.call('ZCARD', KEYS[1])
if inside > tonumber(ARGV[3]) then
  redis.call('RPUSH', KEYS[2], inside .. ' inside')
end
local most = tonumber(redis.call('GET', KEYS[3]) or '0')
if inside > most then
  redis.call('SET', KEYS[3], inside)
end
return inside
";

/// 32 contenders in 3 processes (3 clients) for a 3-permit semaphore, with
/// holder processes killed by SIGKILL and replaced while they hold
/// permits. Each holder records itself in a sorted set while inside, until
/// its lease's guaranteed end at most (so a killed holder counts as inside
/// until then, and not after its permit can come back); the set never
/// holds more than 3 and no fence twice. At the end every process is
/// killed holding permits, and all 3 permits are free again within one
/// ttl; then nothing is left but keys that expire.
#[test]
fn killed_holders_never_let_more_than_n_in_and_their_permits_come_back() {
    const TEST: &str = "killed_holders_never_let_more_than_n_in_and_their_permits_come_back";
    const PERMITS: u32 = 3;
    let ttl = SECOND;
    if child_role().as_deref() == Some("contenders") {
        block_on(async {
            let url = std::env::var("REDIS_URL").expect("REDIS_URL");
            let count: usize = std::env::var("CONTENDERS").unwrap().parse().unwrap();
            let locks = LockClient::connect(&url).await.unwrap();
            let redis = redis::Client::open(url.as_str()).unwrap();
            let enter = redis::Script::new(ENTER);
            send_to_parent("ready");
            let mut tasks = Vec::new();
            for _ in 0..count {
                let (locks, redis, enter) = (locks.clone(), redis.clone(), enter.clone());
                tasks.push(tokio::spawn(async move {
                    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
                    loop {
                        let permit = locks
                            .semaphore("fleet", PERMITS)
                            .ttl(ttl)
                            .wait(30 * SECOND)
                            .acquire()
                            .await
                            .unwrap();
                        let fence = permit.fence().to_string();
                        // The entry ends a margin before the lease's
                        // guaranteed end, which the call's own latency
                        // (inside the margin) moves later.
                        let until_end = permit.remaining().as_millis().saturating_sub(50);
                        let mut invocation = enter.prepare_invoke();
                        invocation.key("inside").key("violations").key("most");
                        invocation.arg(&fence).arg(until_end as u64).arg(PERMITS);
                        let _: i64 = invocation.invoke_async(&mut conn).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(rand_ms() * 10)).await;
                        let _: () = redis::cmd("ZREM")
                            .arg("inside")
                            .arg(&fence)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        permit.release().await.unwrap();
                    }
                }));
            }
            tokio::task::spawn_blocking(read_from_parent).await.unwrap();
        });
        return;
    }
    let server = RedisServer::start();
    let url = server.url();
    let spawn = |count: usize| {
        let mut child = ChildProcess::spawn(
            TEST,
            "contenders",
            &[("REDIS_URL", &url), ("CONTENDERS", &count.to_string())],
        );
        assert_eq!(child.read_line(), "ready");
        child
    };
    let mut children: Vec<ChildProcess> = [11, 11, 10].into_iter().map(spawn).collect();
    let started = std::time::Instant::now();
    let mut kills = 0;
    while started.elapsed() < 8 * SECOND {
        std::thread::sleep(Duration::from_millis(700));
        // Kill a process while it holds permits, and put a new one in its place.
        let victim = kills % children.len();
        let count = if victim == 2 { 10 } else { 11 };
        children[victim].kill();
        children[victim] = spawn(count);
        kills += 1;
    }
    for child in &mut children {
        child.kill();
    }
    let killed_at = std::time::Instant::now();
    let violations = server.cli(&["LRANGE", "violations", "0", "-1"]);
    assert_eq!(violations, "", "more than {PERMITS} inside");
    assert_eq!(server.cli(&["GET", "most"]), PERMITS.to_string());
    block_on(async {
        let locks = LockClient::connect(&server.url()).await.unwrap();
        let mut permits = Vec::new();
        for _ in 0..PERMITS {
            permits.push(
                locks
                    .semaphore("fleet", PERMITS)
                    .wait(2 * ttl)
                    .acquire()
                    .await
                    .unwrap(),
            );
        }
        let waited = killed_at.elapsed();
        assert!(
            waited < ttl + ttl / 5,
            "the killed holders' permits came back after {waited:?}"
        );
        for permit in permits {
            permit.release().await.unwrap();
        }
    });
    for key in ["inside", "violations", "most"] {
        server.cli(&["DEL", key]);
    }
    assert_eq!(lasting_keys(&server), Vec::<String>::new());
    assert_eq!(server.cli(&["EXISTS", "soloist:sem:{fleet}"]), "0");
    assert!(kills >= 10, "only {kills} kills");
}
