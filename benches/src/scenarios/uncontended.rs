//! `uncontended`: acquire then release at once, on keys nobody else wants.
//! One worker, then 64 workers on distinct keys sharing one client.
//!
//! Soloist runs with its defaults, the watchdog included: every acquisition
//! registers its lease for renewal, as it would in an application.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use futures::FutureExt;
use soloist_core::LockClient;

use super::{Bench, CYCLE_TTL, Scenario, key};
use crate::measure::{Samples, join_tasks, join_threads};
use crate::peers::Retry;
use crate::peers::redlock::RedlockPeer;
use crate::peers::rslock::RslockPeer;
use crate::rounds::Contestant;

/// Soloist and every peer, at one worker and then at 64.
pub(super) async fn contestants(bench: &Bench) -> Vec<Contestant> {
    let mut contestants = Vec::new();
    for tasks in [1, 64] {
        if bench.wants("soloist") {
            contestants.push(soloist(bench, tasks).await);
        }
        if bench.wants("soloist-unfenced") {
            let locks = LockClient::connect(&bench.url)
                .await
                .expect("soloist cannot connect to Redis");
            contestants.push(soloist_unfenced_cycles(
                Scenario::Uncontended,
                "soloist-unfenced",
                tasks,
                locks,
            ));
        }
        if bench.wants("soloist-semaphore") {
            contestants.push(semaphore(bench, tasks, "soloist-semaphore", 0).await);
        }
        if bench.wants("soloist-semaphore-busy") {
            // Three of four permits held elsewhere the whole time: each
            // acquisition counts and skips live holders.
            let library = "soloist-semaphore-busy";
            contestants.push(semaphore(bench, tasks, library, BUSY_HOLDERS).await);
        }
        for retry in Retry::ALL {
            if bench.wants(&retry.label("rslock")) {
                contestants.push(rslock(bench, tasks, retry));
            }
        }
        for retry in Retry::ALL {
            if bench.wants(&retry.label("redlock")) {
                contestants.push(redlock(bench, tasks, retry));
            }
        }
    }
    contestants
}

/// The keys of one contestant's workers.
fn keys(scenario: Scenario, library: &str, tasks: usize) -> Vec<String> {
    (0..tasks)
        .map(|worker| key(scenario, library, tasks, worker))
        .collect()
}

async fn soloist(bench: &Bench, tasks: usize) -> Contestant {
    let locks = LockClient::connect(&bench.url)
        .await
        .expect("soloist cannot connect to Redis");
    soloist_cycles(Scenario::Uncontended, "soloist", tasks, locks)
}

/// Permits of each benchmarked semaphore; `soloist-semaphore-busy` keeps
/// all but one held by other holders.
const PERMITS: u32 = 4;
const BUSY_HOLDERS: usize = 3;

/// `tasks` workers sharing one client, each taking and at once giving back
/// a permit of a semaphore of its own with [`PERMITS`] permits, `busy` of
/// which another client holds throughout.
async fn semaphore(bench: &Bench, tasks: usize, library: &str, busy: usize) -> Contestant {
    let connect = || async {
        LockClient::connect(&bench.url)
            .await
            .expect("soloist cannot connect to Redis")
    };
    let (locks, holder) = (connect().await, connect().await);
    let names = keys(Scenario::Uncontended, library, tasks);
    let mut held = Vec::new();
    for name in &names {
        for _ in 0..busy {
            held.push(
                holder
                    .semaphore(name.as_str(), PERMITS)
                    .ttl(CYCLE_TTL)
                    .acquire()
                    .await
                    .expect("soloist could not take a free permit"),
            );
        }
    }
    let held = Arc::new(held);
    Contestant::new(
        Scenario::Uncontended,
        tasks,
        library,
        false,
        move |window| {
            // The busy holders live (renewed) as long as the contestant runs.
            let _busy = held.clone();
            let handles = names
                .iter()
                .map(|name| {
                    let (locks, name) = (locks.clone(), name.clone());
                    tokio::spawn(async move {
                        let mut samples = Samples::default();
                        while window.is_open() {
                            let started = Instant::now();
                            let permit = locks
                                .semaphore(name.as_str(), PERMITS)
                                .ttl(CYCLE_TTL)
                                .acquire()
                                .await
                                .expect("soloist could not take the free permit");
                            permit
                                .release()
                                .await
                                .expect("soloist permit release failed");
                            samples.record(&window, started, false);
                        }
                        samples
                    })
                })
                .collect();
            join_tasks(handles).boxed()
        },
    )
}

fn rslock(bench: &Bench, tasks: usize, retry: Retry) -> Contestant {
    let library = retry.label("rslock");
    let peer = RslockPeer::new(&bench.url, retry);
    rslock_cycles(Scenario::Uncontended, &library, tasks, peer)
}

fn redlock(bench: &Bench, tasks: usize, retry: Retry) -> Contestant {
    let library = retry.label("redlock");
    let peer = RedlockPeer::new(&bench.url, retry);
    redlock_cycles(Scenario::Uncontended, &library, tasks, peer)
}

/// `tasks` workers sharing `locks`, each acquiring and at once releasing a
/// key of its own until the window closes; reported as `library` in `scenario`.
pub(super) fn soloist_cycles(
    scenario: Scenario,
    library: &str,
    tasks: usize,
    locks: LockClient,
) -> Contestant {
    cycles_of(scenario, library, tasks, locks, true)
}

/// As [`soloist_cycles`], acquiring with `acquire_unfenced`.
pub(super) fn soloist_unfenced_cycles(
    scenario: Scenario,
    library: &str,
    tasks: usize,
    locks: LockClient,
) -> Contestant {
    cycles_of(scenario, library, tasks, locks, false)
}

fn cycles_of(
    scenario: Scenario,
    library: &str,
    tasks: usize,
    locks: LockClient,
    fenced: bool,
) -> Contestant {
    let keys = keys(scenario, library, tasks);
    Contestant::new(scenario, tasks, library, false, move |window| {
        let handles = keys
            .iter()
            .map(|key| {
                let (locks, key) = (locks.clone(), key.clone());
                tokio::spawn(async move {
                    let mut samples = Samples::default();
                    while window.is_open() {
                        let started = Instant::now();
                        let request = locks.lock(key.as_str()).ttl(CYCLE_TTL);
                        if fenced {
                            let guard = request
                                .acquire()
                                .await
                                .expect("soloist could not take an unshared lock");
                            guard.release().await.expect("soloist release failed");
                        } else {
                            let guard = request
                                .acquire_unfenced()
                                .await
                                .expect("soloist could not take an unshared lock");
                            guard.release().await.expect("soloist release failed");
                        }
                        samples.record(&window, started, false);
                    }
                    samples
                })
            })
            .collect();
        join_tasks(handles).boxed()
    })
}

/// As [`soloist_cycles`], with an rslock manager shared by the tasks.
pub(super) fn rslock_cycles(
    scenario: Scenario,
    library: &str,
    tasks: usize,
    peer: RslockPeer,
) -> Contestant {
    let keys = keys(scenario, library, tasks);
    Contestant::new(scenario, tasks, library, false, move |window| {
        let handles = keys
            .iter()
            .map(|key| {
                let (peer, key) = (peer.clone(), key.clone().into_bytes());
                tokio::spawn(async move {
                    let mut samples = Samples::default();
                    while window.is_open() {
                        let started = Instant::now();
                        let lock = peer.lock(&key, CYCLE_TTL).await;
                        peer.release(lock).await;
                        samples.record(&window, started, false);
                    }
                    samples
                })
            })
            .collect();
        join_tasks(handles).boxed()
    })
}

/// As [`soloist_cycles`], with a redlock manager shared by worker threads.
pub(super) fn redlock_cycles(
    scenario: Scenario,
    library: &str,
    tasks: usize,
    peer: RedlockPeer,
) -> Contestant {
    let peer = Arc::new(peer);
    let ttl_ms =
        usize::try_from(CYCLE_TTL.as_millis()).expect("the ttl fits in usize milliseconds");
    let keys = keys(scenario, library, tasks);
    Contestant::new(scenario, tasks, library, false, move |window| {
        let handles = keys
            .iter()
            .enumerate()
            .map(|(worker, key)| {
                let (peer, key) = (peer.clone(), key.clone().into_bytes());
                thread::Builder::new()
                    .name(format!("redlock-{worker}"))
                    .spawn(move || {
                        let mut samples = Samples::default();
                        while window.is_open() {
                            let started = Instant::now();
                            let lock = peer.lock(&key, ttl_ms);
                            peer.release(&lock);
                            samples.record(&window, started, false);
                        }
                        samples
                    })
                    .expect("cannot spawn a redlock worker thread")
            })
            .collect();
        join_threads(handles).boxed()
    })
}
