//! The scenarios, one per file, and what they share.

mod alternatives;
mod cluster;
mod contended;
mod cron;
mod keyed;
mod queue;
mod raw;
mod redlock3;
mod uncontended;
mod watchdog;

use std::time::Duration;

pub(crate) use cluster::connect as connect_cluster;
pub(crate) use redlock3::SINGLE_NODE;

use crate::probe::Probe;
use crate::report::Row;
use crate::rounds;

/// The lease length of every lock cycle: long enough that no lease expires
/// during a run, so every hand-off is a release, never an expiry.
pub(crate) const CYCLE_TTL: Duration = Duration::from_secs(30);

/// A workload lockbench can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// `SET NX PX` plus a compare-and-delete script on a bare connection:
    /// the most any Redis lock can do per round trip.
    Raw,
    /// Acquire and release on keys nobody else wants.
    Uncontended,
    /// Eight workers over four clients fighting for one key.
    Contended,
    /// The uncontended 1-worker cycle on a Redlock of three servers.
    Redlock3,
    /// The uncontended 64-worker cycle and 10,000 renewed leases on a
    /// Redis Cluster, beside the same on the single server.
    Cluster,
    /// Ten thousand leases held and renewed in the background.
    Watchdog,
    /// Keyed runs through a worker handle, each on a key of its own: the
    /// gathered path against the path one step at a time.
    Keyed,
    /// Messages through one Redis Streams consumer group, 1 and 4 consumers.
    Queue,
    /// A per-second cron job on five replicas: how late each tick starts.
    /// Only on request: it runs on the wall clock, at least 20 s a run.
    Cron,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub(crate) const ALL: [Scenario; 9] = [
        Scenario::Raw,
        Scenario::Uncontended,
        Scenario::Contended,
        Scenario::Redlock3,
        Scenario::Cluster,
        Scenario::Keyed,
        Scenario::Watchdog,
        Scenario::Queue,
        Scenario::Cron,
    ];

    /// Whether a run without `--scenario` includes this one: all but
    /// `cron`, whose ticks take wall-clock seconds however fast things are.
    pub(crate) fn is_default(self) -> bool {
        self != Scenario::Cron
    }

    /// The name used by `--scenario` and in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Raw => "raw",
            Scenario::Uncontended => "uncontended",
            Scenario::Contended => "contended",
            Scenario::Redlock3 => "redlock3",
            Scenario::Cluster => "cluster",
            Scenario::Watchdog => "watchdog",
            Scenario::Keyed => "keyed",
            Scenario::Queue => "queue",
            Scenario::Cron => "cron",
        }
    }

    /// The scenario called `name`, if any.
    pub(crate) fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.name() == name)
    }
}

/// Runs `scenarios`: the lock-cycle ones interleaved (see [`crate::rounds`]),
/// then `watchdog`, which holds its leases for one long stretch, then the
/// leases of `cluster` likewise, then `queue`, whose runs drain a stream in
/// rounds of their own, then `cron`, on the wall clock.
pub(crate) async fn run(scenarios: &[Scenario], bench: &Bench) -> Vec<Row> {
    let mut contestants = Vec::new();
    for scenario in scenarios {
        match scenario {
            Scenario::Raw => contestants.extend(raw::contestants(bench).await),
            Scenario::Uncontended => {
                contestants.extend(uncontended::contestants(bench).await);
                contestants.extend(alternatives::contestants(bench).await);
            }
            Scenario::Contended => contestants.extend(contended::contestants(bench).await),
            Scenario::Redlock3 => contestants.extend(redlock3::contestants(bench).await),
            Scenario::Cluster => contestants.extend(cluster::contestants(bench).await),
            Scenario::Keyed => contestants.extend(keyed::contestants(bench).await),
            Scenario::Watchdog | Scenario::Queue | Scenario::Cron => {}
        }
    }
    let names: Vec<&str> = scenarios
        .iter()
        .filter(|scenario| {
            !matches!(
                scenario,
                Scenario::Watchdog | Scenario::Queue | Scenario::Cron
            )
        })
        .map(|scenario| scenario.name())
        .collect();
    if !contestants.is_empty() {
        eprintln!(
            "{}: {} runs, interleaved",
            names.join(", "),
            contestants.len()
        );
    }
    let mut rows = rounds::interleave(bench, contestants).await;
    if scenarios.contains(&Scenario::Watchdog) {
        eprintln!("watchdog:");
        rows.extend(watchdog::run(bench).await);
    }
    if scenarios.contains(&Scenario::Cluster) {
        eprintln!("cluster, leases:");
        rows.extend(cluster::leases(bench).await);
    }
    if scenarios.contains(&Scenario::Queue) {
        eprintln!("queue:");
        rows.extend(queue::run(bench).await);
    }
    if scenarios.contains(&Scenario::Cron) {
        eprintln!("cron:");
        rows.extend(cron::run(bench).await);
    }
    rows
}

/// What every run needs: the server, the timing, and the probe.
#[derive(Debug)]
pub(crate) struct Bench {
    /// The Redis server's URL.
    pub(crate) url: String,
    /// How long each run is measured, in total over its slices.
    pub(crate) secs: Duration,
    /// How long each run warms up before it is measured.
    pub(crate) warmup: Duration,
    /// Reads the server's command counters and the CPU clocks.
    pub(crate) probe: Probe,
    /// The library labels to run; empty runs all.
    pub(crate) libraries: Vec<String>,
    /// The three servers of `redlock3`; `None` when it does not run.
    pub(crate) redlock: Option<Nodes>,
    /// The Redis Cluster of `cluster`; `None` when it does not run.
    pub(crate) cluster: Option<ClusterNodes>,
}

/// The independent servers a Redlock scenario runs on.
#[derive(Debug)]
pub(crate) struct Nodes {
    /// Their URLs; the first also serves the single-node comparison.
    pub(crate) urls: Vec<String>,
    /// Reads their command counters and CPU time, summed.
    pub(crate) probe: Probe,
}

/// The Redis Cluster the `cluster` scenario runs on.
#[derive(Debug)]
pub(crate) struct ClusterNodes {
    /// Seed URLs for the cluster client.
    pub(crate) seeds: Vec<String>,
    /// How many primaries serve the slots.
    pub(crate) primaries: usize,
    /// Reads the primaries' command counters and CPU time, summed. Replicas
    /// are left out: they run what their primary sends them, which would
    /// count every write twice.
    pub(crate) probe: Probe,
}

impl Bench {
    /// Whether `--library` lets `library`'s rows run.
    pub(crate) fn wants(&self, library: &str) -> bool {
        self.libraries.is_empty() || self.libraries.iter().any(|wanted| wanted == library)
    }

    /// Reports a finished row on stderr, so a long run shows it is alive.
    pub(crate) fn done(&self, row: Row, rows: &mut Vec<Row>) {
        let (rate, unit) = match (row.ops_per_sec, row.renewal_calls_per_sec, row.p99_us) {
            (Some(ops), _, _) => (ops, "ops/s"),
            (None, Some(calls), _) => (calls, "renewal calls/s"),
            (None, None, Some(p99_us)) => (p99_us, "µs p99"),
            (None, None, None) => (0.0, ""),
        };
        eprintln!(
            "  {:<12} {:>3} tasks  {:<12} {rate:>10.0} {unit}",
            row.scenario, row.tasks, row.library
        );
        rows.push(row);
    }
}

/// A key for worker `worker` of one run, distinct across runs so that no
/// run meets another's leftovers.
pub(crate) fn key(scenario: Scenario, library: &str, tasks: usize, worker: usize) -> String {
    format!("lb:{}:{library}:{tasks}:{worker}", scenario.name())
}
