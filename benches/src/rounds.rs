//! Interleaved measurement: every contestant runs in short slices, round
//! robin, so that all of them see the same machine.
//!
//! On a shared or virtualized host the speed of a loopback round trip can
//! change by a factor of three from one minute to the next. Measured one
//! after another, a library that happens to run in a slow minute looks slow,
//! and a ratio between two libraries measures the minute as much as the
//! code. Interleaving one-second slices spreads every contestant's
//! `--secs` over the whole run, so slow and fast spells fall on all of them
//! alike. Odd rounds run in reverse order, so no contestant always follows
//! the same neighbour.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::measure::{Samples, Window};
use crate::probe::{Cost, Probe};
use crate::report::Row;
use crate::scenarios::{Bench, Scenario};

/// The measured length of one slice.
const SLICE: Duration = Duration::from_secs(1);
/// Unmeasured lead-in of each slice, while workers start and connections warm.
const RAMP: Duration = Duration::from_millis(200);

/// Starts one slice: spawns the contestant's workers, which loop until the
/// window closes, and returns the future that collects their samples.
type Start = Box<dyn FnMut(Window) -> BoxFuture<'static, Samples> + Send>;

/// One library at one concurrency in one scenario, ready to run slices.
pub(crate) struct Contestant {
    scenario: Scenario,
    tasks: usize,
    library: String,
    /// Whether hand-offs mean anything here (contended runs).
    handoffs: bool,
    /// Reads the servers this contestant uses, when they are not (only)
    /// the main one; `None` means the bench's own probe.
    probe: Option<Probe>,
    start: Start,
}

impl Contestant {
    /// A contestant whose slices `start` launches.
    pub(crate) fn new(
        scenario: Scenario,
        tasks: usize,
        library: impl Into<String>,
        handoffs: bool,
        start: impl FnMut(Window) -> BoxFuture<'static, Samples> + Send + 'static,
    ) -> Contestant {
        Contestant {
            scenario,
            tasks,
            library: library.into(),
            handoffs,
            probe: None,
            start: Box::new(start),
        }
    }

    /// The same contestant, its cost read by `probe` (summed over the
    /// servers `probe` reads) instead of the bench's probe.
    pub(crate) fn observed_by(mut self, probe: Probe) -> Contestant {
        self.probe = Some(probe);
        self
    }
}

impl fmt::Debug for Contestant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contestant")
            .field("scenario", &self.scenario)
            .field("tasks", &self.tasks)
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

/// Warms every contestant up once, then measures `bench.secs` of each in
/// one-second slices, round robin; returns one row per contestant, in order.
pub(crate) async fn interleave(bench: &Bench, mut contestants: Vec<Contestant>) -> Vec<Row> {
    if contestants.is_empty() {
        return Vec::new();
    }
    if !bench.warmup.is_zero() {
        eprintln!("  warm-up, {} s each", bench.warmup.as_secs());
        for contestant in &mut contestants {
            // A window that closes as it opens: workers run, nothing counts.
            (contestant.start)(Window::after(bench.warmup, Duration::ZERO)).await;
        }
    }
    let rounds = (bench.secs.as_secs_f64() / SLICE.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut totals: Vec<(Samples, Cost)> = contestants.iter().map(|_| Default::default()).collect();
    for round in 0..rounds {
        eprintln!("  round {}/{rounds}", round + 1);
        let mut order: Vec<usize> = (0..contestants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for index in order {
            let window = Window::after(RAMP, SLICE);
            let collecting = (contestants[index].start)(window);
            let probe = contestants[index].probe.as_ref().unwrap_or(&bench.probe);
            let cost = probe.observe(&window).await;
            let samples = collecting.await;
            let (total_samples, total_cost) = &mut totals[index];
            total_samples.merge(samples);
            *total_cost += cost;
        }
    }
    contestants
        .iter()
        .zip(totals)
        .map(|(contestant, (samples, cost))| {
            Row::cycles(
                contestant.scenario,
                contestant.tasks,
                &contestant.library,
                samples.summarize(),
                cost,
                contestant.handoffs,
            )
        })
        .collect()
}
