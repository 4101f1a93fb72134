//! Run with: cargo run --example lock_demo
//! Against Redis: REDIS_URL=redis://127.0.0.1:6379 cargo run --example lock_demo
//!
//! A tour of the lock layer in about ten seconds:
//!
//! 1. three replicas contend for one lock; they never overlap, the watchdog
//!    keeps a lease alive through work longer than its ttl, and every holder
//!    gets a higher fence than the one before;
//! 2. a lease that is not renewed runs out, and `lost()` says so before the
//!    server can give the key to someone else;
//! 3. a holder that missed the end of its lease writes late, and the fenced
//!    resource refuses it while the newer holder's write stands.
//!
//! Without `REDIS_URL` the demo uses the in-memory backend, which has the same
//! semantics inside one process. With it, every replica gets its own client,
//! as separate processes would.

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use soloist::{FencedWrite, LockClient, LockError};
use tokio::time::Instant;
use tracing_subscriber::EnvFilter;

#[path = "common/cleanup.rs"]
mod cleanup;

type DemoResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const REPLICAS: usize = 3;
/// The prefix of every key the demo writes to Redis; removed at the end.
const PREFIX: &str = "soloist-lock-demo:";
const ROUNDS: usize = 2;

#[tokio::main]
async fn main() -> DemoResult {
    // `warn` by default, so the client's warnings (an unsafe eviction policy,
    // a lost lease) show up next to the demo's own output.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let clock = Clock(Instant::now());
    let replicas = connect().await?;

    mutual_exclusion(&clock, &replicas).await?;
    lost_lease(&clock, &replicas).await?;
    fencing(&clock, &replicas).await?;

    clock.say("demo", "all checks passed");
    if let Ok(url) = std::env::var("REDIS_URL")
        && !url.is_empty()
    {
        let removed = cleanup::forget(&url, PREFIX).await?;
        println!("cleanup: removed the demo's {removed} keys under `{PREFIX}`");
    }
    Ok(())
}

/// One client per replica: separate connections to Redis when `REDIS_URL`
/// is set, clones sharing one in-memory lock space otherwise.
async fn connect() -> DemoResult<Vec<LockClient>> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => {
            println!("backend: Redis at {url} (REDIS_URL); one client per replica");
            let mut replicas = Vec::with_capacity(REPLICAS);
            for _ in 0..REPLICAS {
                // A prefix of its own keeps the demo's keys apart from real ones.
                let client = LockClient::builder()
                    .prefix(PREFIX)
                    .connect(&url)
                    .await
                    .map_err(|err| format!("cannot connect to {url}: {}", chain(&err)))?;
                replicas.push(client);
            }
            Ok(replicas)
        }
        _ => {
            println!("backend: in-memory (set REDIS_URL=redis://host:port to use Redis)");
            let locks = LockClient::memory();
            Ok(vec![locks; REPLICAS])
        }
    }
}

/// Part 1: replicas take turns; an overlap counter and the fence order prove it.
async fn mutual_exclusion(clock: &Clock, replicas: &[LockClient]) -> DemoResult {
    let ttl = Duration::from_secs(1);
    let work = Duration::from_millis(1200);
    println!();
    println!(
        "== 1. {REPLICAS} replicas want `nightly-report` (ttl {ttl:?}, each job takes {work:?}, \
         so the watchdog must renew)"
    );
    let inside = Arc::new(AtomicUsize::new(0));
    let fences = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, locks) in replicas.iter().enumerate() {
        let (locks, clock) = (locks.clone(), clock.clone());
        let (inside, fences) = (inside.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            let me = format!("replica-{}", i + 1);
            for _ in 0..ROUNDS {
                let guard = locks
                    .lock("nightly-report")
                    .ttl(ttl)
                    .wait(Duration::from_secs(30))
                    .acquire()
                    .await?;
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    return Err(format!("{me} got the lock while another replica held it").into());
                }
                fences
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(guard.fence());
                clock.say(&me, format!("acquired, fence {}", guard.fence()));
                tokio::select! {
                    () = guard.lost() => return Err(format!("{me} lost its lease mid-job").into()),
                    () = tokio::time::sleep(work) => {}
                }
                clock.say(
                    &me,
                    format!("job done, lease still held: {}; releasing", guard.is_held()),
                );
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await?;
                // Step back briefly so the others get a turn (the lock is not fair).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            DemoResult::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let fences = fences
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if !fences.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(format!("fences did not increase: {fences:?}").into());
    }
    clock.say(
        "check",
        format!(
            "{} jobs, never two at once; fences in acquisition order strictly increase",
            fences.len()
        ),
    );
    Ok(())
}

/// Part 2: without renewals the lease runs out, and the holder is told first.
async fn lost_lease(clock: &Clock, replicas: &[LockClient]) -> DemoResult {
    let ttl = Duration::from_secs(2);
    println!();
    println!("== 2. a lease nobody renews (watchdog off, ttl {ttl:?})");
    let guard = replicas[0]
        .lock("lease-demo")
        .ttl(ttl)
        .watchdog(false)
        .acquire()
        .await?;
    let taken = Instant::now();
    clock.say(
        "replica-1",
        format!(
            "acquired, fence {}, is_held() = {}, remaining {:?}",
            guard.fence(),
            guard.is_held(),
            round(guard.remaining())
        ),
    );
    tokio::select! {
        () = guard.lost() => {}
        () = tokio::time::sleep(ttl * 2) => return Err("lost() did not fire within two ttls".into()),
    }
    clock.say(
        "replica-1",
        format!(
            "lost() fired {:?} after acquiring (ttl minus the drift margin); is_held() = {}",
            round(taken.elapsed()),
            guard.is_held()
        ),
    );
    if guard.is_held() {
        return Err("is_held() still true after lost()".into());
    }

    let next = replicas[1]
        .lock("lease-demo")
        .wait(Duration::from_secs(5))
        .acquire()
        .await?;
    clock.say(
        "replica-2",
        format!(
            "acquired the expired lock, fence {}, {:?} after replica-1 took it",
            next.fence(),
            round(taken.elapsed())
        ),
    );
    match guard.release().await {
        Err(LockError::Lost { .. }) => clock.say(
            "replica-1",
            "release() -> Err(Lost): the key is replica-2's now and stays untouched",
        ),
        other => {
            return Err(format!("expected Err(Lost) from a stale release, got {other:?}").into());
        }
    }
    next.release().await?;
    Ok(())
}

/// Part 3: a holder paused past its lease writes late; the resource refuses it.
async fn fencing(clock: &Clock, replicas: &[LockClient]) -> DemoResult {
    let ttl = Duration::from_millis(1500);
    let resource = "report:nightly";
    println!();
    println!("== 3. fencing: a holder that stalls past its lease (ttl {ttl:?}) writes late");
    let old = replicas[0]
        .lock("report-writer")
        .ttl(ttl)
        .watchdog(false)
        .acquire()
        .await?;
    let old_fence = old.fence();
    clock.say(
        "replica-1",
        format!("acquired, fence {old_fence}; now stalls (think GC pause)"),
    );

    let new = replicas[1]
        .lock("report-writer")
        .wait(Duration::from_secs(10))
        .acquire()
        .await?;
    clock.say(
        "replica-2",
        format!(
            "acquired after replica-1's lease ran out, fence {}",
            new.fence()
        ),
    );
    let write = replicas[1]
        .fenced_set(resource, new.fence(), "report by replica-2")
        .await?;
    clock.say(
        "replica-2",
        format!("fenced_set(fence {}) -> {write:?}", new.fence()),
    );
    if !write.is_accepted() {
        return Err(format!("the current holder's write was refused: {write:?}").into());
    }

    // replica-1 wakes up, never checks its lease, and writes with its old fence.
    let late = replicas[0]
        .fenced_set(resource, old_fence, "report by replica-1")
        .await?;
    clock.say(
        "replica-1",
        format!("wakes up, fenced_set(fence {old_fence}) -> {late:?}"),
    );
    if late
        != (FencedWrite::Rejected {
            highest: new.fence(),
        })
    {
        return Err(format!("the stale write was not refused: {late:?}").into());
    }

    let stored = replicas[2]
        .fenced_get(resource)
        .await?
        .ok_or("the resource is empty")?;
    clock.say(
        "replica-3",
        format!(
            "fenced_get -> {:?} at fence {}",
            String::from_utf8_lossy(&stored.value),
            stored.fence
        ),
    );
    drop(old);
    new.release().await?;
    Ok(())
}

/// Prints lines stamped with the time since the demo started.
#[derive(Debug, Clone)]
struct Clock(Instant);

impl Clock {
    fn say(&self, who: &str, what: impl std::fmt::Display) {
        println!("[{:5.2}s] {who:<9} {what}", self.0.elapsed().as_secs_f64());
    }
}

/// A duration rounded to milliseconds, for printing.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(duration.as_millis() as u64)
}

/// An error and its causes on one line.
fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // Some errors repeat their cause in their own message; say it once.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
