//! `contended`: eight workers, spread over four independent clients (each
//! with its own connections), take turns on ONE key: acquire, waiting as
//! long as it takes, then release at once, in a loop.
//!
//! Mutual exclusion is checked while measuring: each worker marks itself
//! inside the critical section between acquiring and releasing, and a second
//! worker found inside panics the run. For soloist the fencing tokens are
//! checked too: each must be greater than every one seen before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use futures::FutureExt;
use soloist_core::LockClient;

use super::{Bench, CYCLE_TTL, Scenario, key};
use crate::measure::{Samples, join_tasks, join_threads};
use crate::peers::Retry;
use crate::peers::redlock::RedlockPeer;
use crate::peers::rslock::RslockPeer;
use crate::rounds::Contestant;

/// Workers contending for the key.
const TASKS: usize = 8;
/// Independent clients the workers are spread over, round robin.
const CLIENTS: usize = 4;
/// How long a soloist worker waits before its attempt fails as a timeout.
const WAIT: Duration = Duration::from_secs(10);

/// Soloist, then every peer in both retry modes.
pub(super) async fn contestants(bench: &Bench) -> Vec<Contestant> {
    let mut contestants = Vec::new();
    if bench.wants("soloist") {
        contestants.push(soloist(bench).await);
    }
    for retry in Retry::ALL {
        if bench.wants(&retry.label("rslock")) {
            contestants.push(rslock(bench, retry));
        }
    }
    for retry in Retry::ALL {
        if bench.wants(&retry.label("redlock")) {
            contestants.push(redlock(bench, retry));
        }
    }
    contestants
}

/// Watches the critical section of one run.
#[derive(Debug)]
struct Exclusion {
    library: String,
    /// Workers currently between acquiring and releasing.
    inside: AtomicUsize,
    /// The worker that entered last; `usize::MAX` before the first.
    last_holder: AtomicUsize,
    /// The highest fencing token seen (soloist only).
    last_fence: AtomicU64,
}

impl Exclusion {
    fn new(library: &str) -> Arc<Exclusion> {
        Arc::new(Exclusion {
            library: library.to_owned(),
            inside: AtomicUsize::new(0),
            last_holder: AtomicUsize::new(usize::MAX),
            last_fence: AtomicU64::new(0),
        })
    }

    /// Marks `worker` inside; returns whether this acquisition is a hand-off
    /// (the previous holder was another worker). Panics if anyone else is inside.
    fn enter(&self, worker: usize) -> bool {
        let others = self.inside.fetch_add(1, Ordering::SeqCst);
        if others != 0 {
            panic!(
                "MUTUAL EXCLUSION VIOLATED: {} worker {worker} acquired the contended key while \
                 {others} other holder(s) were inside the critical section",
                self.library
            );
        }
        self.last_holder.swap(worker, Ordering::SeqCst) != worker
    }

    /// Checks that `fence` is above every fencing token seen before.
    fn check_fence(&self, worker: usize, fence: u64) {
        let previous = self.last_fence.swap(fence, Ordering::SeqCst);
        if fence <= previous {
            panic!(
                "FENCING VIOLATED: {} worker {worker} holds fence {fence}, not above the earlier {previous}",
                self.library
            );
        }
    }

    /// Marks the holder outside, just before it releases.
    fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn soloist(bench: &Bench) -> Contestant {
    let library = "soloist";
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(
            LockClient::connect(&bench.url)
                .await
                .expect("soloist cannot connect to Redis"),
        );
    }
    let key = key(Scenario::Contended, library, TASKS, 0);
    let exclusion = Exclusion::new(library);
    Contestant::new(Scenario::Contended, TASKS, library, true, move |window| {
        let handles = (0..TASKS)
            .map(|worker| {
                let locks = clients[worker % CLIENTS].clone();
                let (key, exclusion) = (key.clone(), exclusion.clone());
                tokio::spawn(async move {
                    let mut samples = Samples::default();
                    while window.is_open() {
                        let started = Instant::now();
                        let acquired = locks
                            .lock(key.as_str())
                            .ttl(CYCLE_TTL)
                            .wait(WAIT)
                            .acquire()
                            .await;
                        let done = Instant::now();
                        let guard = match acquired {
                            Ok(guard) => guard,
                            Err(err) => {
                                eprintln!("lockbench: soloist worker {worker}: {err}");
                                samples.error(&window);
                                continue;
                            }
                        };
                        let handoff = exclusion.enter(worker);
                        exclusion.check_fence(worker, guard.fence());
                        exclusion.leave();
                        guard.release().await.expect("soloist release failed");
                        samples.record_span(&window, started, done, handoff);
                    }
                    samples
                })
            })
            .collect();
        join_tasks(handles).boxed()
    })
}

fn rslock(bench: &Bench, retry: Retry) -> Contestant {
    let library = retry.label("rslock");
    let peers: Vec<RslockPeer> = (0..CLIENTS)
        .map(|_| RslockPeer::new(&bench.url, retry))
        .collect();
    let key = key(Scenario::Contended, &library, TASKS, 0).into_bytes();
    let exclusion = Exclusion::new(&library);
    Contestant::new(Scenario::Contended, TASKS, library, true, move |window| {
        let handles = (0..TASKS)
            .map(|worker| {
                let peer = peers[worker % CLIENTS].clone();
                let (key, exclusion) = (key.clone(), exclusion.clone());
                tokio::spawn(async move {
                    let mut samples = Samples::default();
                    while window.is_open() {
                        let started = Instant::now();
                        let lock = peer.acquire(&key, CYCLE_TTL).await;
                        let done = Instant::now();
                        let handoff = exclusion.enter(worker);
                        exclusion.leave();
                        peer.release(lock).await;
                        samples.record_span(&window, started, done, handoff);
                    }
                    samples
                })
            })
            .collect();
        join_tasks(handles).boxed()
    })
}

fn redlock(bench: &Bench, retry: Retry) -> Contestant {
    let library = retry.label("redlock");
    let peers: Vec<Arc<RedlockPeer>> = (0..CLIENTS)
        .map(|_| Arc::new(RedlockPeer::new(&bench.url, retry)))
        .collect();
    let key = key(Scenario::Contended, &library, TASKS, 0).into_bytes();
    let ttl_ms =
        usize::try_from(CYCLE_TTL.as_millis()).expect("the ttl fits in usize milliseconds");
    let exclusion = Exclusion::new(&library);
    Contestant::new(Scenario::Contended, TASKS, library, true, move |window| {
        let handles = (0..TASKS)
            .map(|worker| {
                let peer = peers[worker % CLIENTS].clone();
                let (key, exclusion) = (key.clone(), exclusion.clone());
                thread::Builder::new()
                    .name(format!("redlock-{worker}"))
                    .spawn(move || {
                        let mut samples = Samples::default();
                        while window.is_open() {
                            let started = Instant::now();
                            let guard = peer.acquire(&key, ttl_ms);
                            let done = Instant::now();
                            let handoff = exclusion.enter(worker);
                            exclusion.leave();
                            // Dropping the guard is how this crate releases.
                            drop(guard);
                            samples.record_span(&window, started, done, handoff);
                        }
                        samples
                    })
                    .expect("cannot spawn a redlock worker thread")
            })
            .collect();
        join_threads(handles).boxed()
    })
}
