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
fn keys(library: &str, tasks: usize) -> Vec<String> {
    (0..tasks)
        .map(|worker| key(Scenario::Uncontended, library, tasks, worker))
        .collect()
}

async fn soloist(bench: &Bench, tasks: usize) -> Contestant {
    let locks = LockClient::connect(&bench.url)
        .await
        .expect("soloist cannot connect to Redis");
    let keys = keys("soloist", tasks);
    Contestant::new(
        Scenario::Uncontended,
        tasks,
        "soloist",
        false,
        move |window| {
            let handles = keys
                .iter()
                .map(|key| {
                    let (locks, key) = (locks.clone(), key.clone());
                    tokio::spawn(async move {
                        let mut samples = Samples::default();
                        while window.is_open() {
                            let started = Instant::now();
                            let guard = locks
                                .lock(key.as_str())
                                .ttl(CYCLE_TTL)
                                .acquire()
                                .await
                                .expect("soloist could not take an unshared lock");
                            guard.release().await.expect("soloist release failed");
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
    let keys = keys(&library, tasks);
    Contestant::new(
        Scenario::Uncontended,
        tasks,
        library,
        false,
        move |window| {
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
        },
    )
}

fn redlock(bench: &Bench, tasks: usize, retry: Retry) -> Contestant {
    let library = retry.label("redlock");
    let peer = Arc::new(RedlockPeer::new(&bench.url, retry));
    let ttl_ms =
        usize::try_from(CYCLE_TTL.as_millis()).expect("the ttl fits in usize milliseconds");
    let keys = keys(&library, tasks);
    Contestant::new(
        Scenario::Uncontended,
        tasks,
        library,
        false,
        move |window| {
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
        },
    )
}
