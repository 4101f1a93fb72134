//! `watchdog`: one client holds 10,000 leases of 3 s and keeps them alive;
//! measured are the renewal calls the server receives, the commands it runs,
//! and the CPU both processes spend.
//!
//! Soloist renews every third of the ttl (1 s here), batching leases that
//! fall due together. rslock renews each lock on its own (`using`, 500 ms
//! before its validity runs out); its calls are counted per the same 1 s
//! period so the figures compare. redlock has no renewal and is not run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use soloist_core::LockClient;

use super::{Bench, Scenario, key};
use crate::measure::Window;
use crate::peers::Retry;
use crate::peers::rslock::RslockPeer;
use crate::probe::Probe;
use crate::report::Row;

/// Leases held at once.
const LEASES: usize = 10_000;
/// Their ttl: soloist renews every third of it.
const TTL: Duration = Duration::from_secs(3);
/// How many acquisitions or releases are in flight while setting up.
const SETUP_CONCURRENCY: usize = 256;
/// The longest the leases may take to be all acquired.
const SETUP_LIMIT: Duration = Duration::from_secs(120);

/// The renewal period the calls are counted against.
fn period() -> Duration {
    TTL / 3
}

/// The window after the leases are held: at least three periods of warm-up,
/// so renewals have settled into their steady rhythm before measuring.
fn window(bench: &Bench) -> Window {
    Window::after(bench.warmup.max(period() * 3), bench.secs)
}

/// Soloist, then rslock.
pub(super) async fn run(bench: &Bench) -> Vec<Row> {
    let mut rows = Vec::new();
    if bench.wants("soloist") {
        bench.done(soloist(bench).await, &mut rows);
    }
    if bench.wants("rslock") {
        bench.done(rslock(bench).await, &mut rows);
    }
    rows
}

async fn soloist(bench: &Bench) -> Row {
    let locks = LockClient::connect(&bench.url)
        .await
        .expect("soloist cannot connect to Redis");
    soloist_leases(bench, Scenario::Watchdog, locks, &bench.probe).await
}

/// Takes [`LEASES`] leases with `locks`, lets their renewals settle, then
/// measures what keeping them alive costs the servers `probe` reads;
/// reported as soloist in `scenario`.
pub(super) async fn soloist_leases(
    bench: &Bench,
    scenario: Scenario,
    locks: LockClient,
    probe: &Probe,
) -> Row {
    let library = "soloist";
    let guards: Vec<_> = futures::stream::iter(lease_keys(scenario, library))
        .map(|key| {
            let locks = locks.clone();
            async move {
                locks
                    .lock(key)
                    .ttl(TTL)
                    .acquire()
                    .await
                    .expect("soloist could not take an unshared lease")
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    let window = window(bench);
    let cost = probe.observe(&window).await;
    let lost = guards.iter().filter(|guard| !guard.is_held()).count() as u64;
    let not_released = futures::stream::iter(guards)
        .map(|guard| guard.release())
        .buffer_unordered(SETUP_CONCURRENCY)
        .filter(|released| std::future::ready(released.is_err()))
        .count()
        .await;
    if not_released > 0 {
        eprintln!("lockbench: soloist: {not_released} leases were no longer held at release");
    }
    Row::renewals(
        scenario,
        library,
        LEASES,
        period().as_secs_f64(),
        cost,
        lost,
    )
}

/// The keys of the leases `library` holds in `scenario`.
pub(super) fn lease_keys(scenario: Scenario, library: &str) -> impl Iterator<Item = String> {
    let library = library.to_owned();
    (0..LEASES).map(move |lease| key(scenario, &library, 1, lease))
}

async fn rslock(bench: &Bench) -> Row {
    let library = "rslock";
    let peer = RslockPeer::new(&bench.url, Retry::Default);
    let held = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handles: Vec<_> = (0..LEASES)
        .map(|lease| {
            let key = key(Scenario::Watchdog, library, 1, lease).into_bytes();
            let (peer, held, stopped) = (peer.clone(), held.clone(), stopped.clone());
            tokio::spawn(async move { peer.hold(key, TTL, held, stopped).await })
        })
        .collect();
    let setup_deadline = Instant::now() + SETUP_LIMIT;
    while held.load(Ordering::Relaxed) < LEASES {
        assert!(
            Instant::now() < setup_deadline,
            "rslock took more than {SETUP_LIMIT:?} to take {LEASES} leases"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let window = window(bench);
    let cost = bench.probe.observe(&window).await;
    stop.send_replace(true);
    let mut lost = 0;
    for handle in handles {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                lost += 1;
                eprintln!("lockbench: rslock lease lost: {err}");
            }
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => panic!("an rslock lease task was cancelled: {err}"),
        }
    }
    Row::renewals(
        Scenario::Watchdog,
        library,
        LEASES,
        period().as_secs_f64(),
        cost,
        lost,
    )
}
