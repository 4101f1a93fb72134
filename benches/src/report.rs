//! Result rows, and how they are printed: a table for people, JSON lines for tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::Summary;
use crate::probe::Cost;
use crate::scenarios::Scenario;

/// One library measured in one scenario at one concurrency. Fields that do
/// not apply to the scenario are `None` (`null` in JSON).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// The scenario's name.
    pub(crate) scenario: &'static str,
    /// Concurrent workers (tasks or threads).
    pub(crate) tasks: usize,
    /// `raw`, `soloist`, or a peer crate with its retry mode.
    pub(crate) library: String,
    /// Completed lock cycles (acquire + release) per second; in `contended`,
    /// acquisitions per second; in `queue`, messages consumed and
    /// acknowledged per second.
    pub(crate) ops_per_sec: Option<f64>,
    /// Acquisitions by a different worker than the previous holder, per second.
    pub(crate) handoffs_per_sec: Option<f64>,
    /// Median latency: of a whole cycle, or in `contended` of the acquire call.
    pub(crate) p50_us: Option<f64>,
    /// 99th percentile latency, measured as `p50_us`.
    pub(crate) p99_us: Option<f64>,
    /// Median acquire latency of the hand-offs alone.
    pub(crate) handoff_p50_us: Option<f64>,
    /// 99th percentile acquire latency of the hand-offs alone.
    pub(crate) handoff_p99_us: Option<f64>,
    /// Redis commands per operation, counting those run inside Lua scripts.
    pub(crate) cmds_per_op: Option<f64>,
    /// `EVALSHA` calls per operation.
    pub(crate) evalsha_per_op: Option<f64>,
    /// Calls per operation of each command the server ran, Lua-internal
    /// ones under their own names (`queue`); left out of the JSON elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cmds_per_op_by_command: Option<BTreeMap<String, f64>>,
    /// Leases held (`watchdog`).
    pub(crate) leases: Option<usize>,
    /// Renewal calls (`EVALSHA`) per second (`watchdog`).
    pub(crate) renewal_calls_per_sec: Option<f64>,
    /// Renewal calls per renewal period of one third of the ttl (`watchdog`).
    pub(crate) calls_per_period: Option<f64>,
    /// Renewal calls per period for every 1,000 leases held (`watchdog`).
    pub(crate) calls_per_period_per_1000: Option<f64>,
    /// Distinct hash slots the leases fall into (`cluster`'s leases).
    pub(crate) slots: Option<usize>,
    /// Redis commands per second, Lua-internal ones included (`watchdog`).
    pub(crate) cmds_per_sec: Option<f64>,
    /// CPU time of the benchmark process per operation, in microseconds.
    pub(crate) cpu_us_per_op: Option<f64>,
    /// CPU time of the Redis server per operation, in microseconds.
    pub(crate) redis_cpu_us_per_op: Option<f64>,
    /// CPU time of the benchmark process, in percent of one core.
    pub(crate) cpu_pct: Option<f64>,
    /// CPU time of the Redis server, in percent of one core (when lockbench started it).
    pub(crate) redis_cpu_pct: Option<f64>,
    /// The slowest tick's latency (`cron`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_us: Option<f64>,
    /// How late a bare tokio sleep to the same ticks woke, median (`cron`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timer_p50_us: Option<f64>,
    /// How late a bare tokio sleep to the same ticks woke, at most (`cron`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timer_max_us: Option<f64>,
    /// Each tick's lateness less the timer's, median (`cron`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) claim_p50_us: Option<f64>,
    /// Each tick's lateness less the timer's, at most (`cron`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) claim_max_us: Option<f64>,
    /// Failed operations: lock waits that timed out, leases lost; in
    /// `cron`, ticks that did not run exactly once.
    pub(crate) errors: u64,
}

/// How late the bodies of a run of cron ticks started after their due time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TickLatency {
    /// Bodies that started in the measured ticks.
    pub(crate) ticks: u64,
    /// Median lateness, in microseconds.
    pub(crate) p50_us: f64,
    /// 99th percentile lateness, in microseconds.
    pub(crate) p99_us: f64,
    /// Greatest lateness, in microseconds.
    pub(crate) max_us: f64,
    /// Median lateness of a bare timer to the same ticks, in microseconds.
    pub(crate) timer_p50_us: f64,
    /// Greatest lateness of that timer, in microseconds.
    pub(crate) timer_max_us: f64,
    /// Median of each tick's lateness less the timer's, in microseconds.
    pub(crate) claim_p50_us: f64,
    /// Greatest of each tick's lateness less the timer's, in microseconds.
    pub(crate) claim_max_us: f64,
}

impl Row {
    /// A row with only its identity filled in.
    fn empty(scenario: Scenario, tasks: usize, library: &str) -> Row {
        Row {
            scenario: scenario.name(),
            tasks,
            library: library.to_owned(),
            ops_per_sec: None,
            handoffs_per_sec: None,
            p50_us: None,
            p99_us: None,
            handoff_p50_us: None,
            handoff_p99_us: None,
            cmds_per_op: None,
            evalsha_per_op: None,
            cmds_per_op_by_command: None,
            cpu_us_per_op: None,
            redis_cpu_us_per_op: None,
            leases: None,
            renewal_calls_per_sec: None,
            calls_per_period: None,
            calls_per_period_per_1000: None,
            slots: None,
            cmds_per_sec: None,
            cpu_pct: None,
            redis_cpu_pct: None,
            max_us: None,
            timer_p50_us: None,
            timer_max_us: None,
            claim_p50_us: None,
            claim_max_us: None,
            errors: 0,
        }
    }

    /// A row for cron ticks run by a fleet of `replicas`: latency from due
    /// time to body start, and commands and CPU per tick over `secs`;
    /// `errors` counts ticks that did not run exactly once.
    pub(crate) fn ticks(
        library: &str,
        replicas: usize,
        latency: TickLatency,
        cost: Cost,
        secs: f64,
        errors: u64,
    ) -> Row {
        let ticks = latency.ticks;
        let per_tick = |count: u64| (ticks > 0).then(|| round3(count as f64 / ticks as f64));
        let us_per_tick = |secs: Option<f64>| {
            secs.filter(|_| ticks > 0)
                .map(|secs| round3(secs * 1e6 / ticks as f64))
        };
        let cost = Cost { secs, ..cost };
        Row {
            p50_us: Some(round3(latency.p50_us)),
            p99_us: Some(round3(latency.p99_us)),
            max_us: Some(round3(latency.max_us)),
            timer_p50_us: Some(round3(latency.timer_p50_us)),
            timer_max_us: Some(round3(latency.timer_max_us)),
            claim_p50_us: Some(round3(latency.claim_p50_us)),
            claim_max_us: Some(round3(latency.claim_max_us)),
            cmds_per_op: per_tick(cost.commands),
            evalsha_per_op: per_tick(cost.scripts),
            cpu_us_per_op: us_per_tick(cost.cpu_secs),
            redis_cpu_us_per_op: us_per_tick(cost.redis_cpu_secs),
            cpu_pct: cost.cpu_pct().map(round3),
            redis_cpu_pct: cost.redis_cpu_pct().map(round3),
            errors,
            ..Row::empty(Scenario::Cron, replicas, library)
        }
    }

    /// A row for a run of repeated lock cycles. `handoffs` says whether
    /// hand-offs mean anything in this scenario.
    pub(crate) fn cycles(
        scenario: Scenario,
        tasks: usize,
        library: &str,
        summary: Summary,
        cost: Cost,
        handoffs: bool,
    ) -> Row {
        let per_op =
            |count: u64| (summary.ops > 0).then(|| round3(count as f64 / summary.ops as f64));
        let us_per_op = |secs: Option<f64>| {
            secs.filter(|_| summary.ops > 0)
                .map(|secs| round3(secs * 1e6 / summary.ops as f64))
        };
        Row {
            ops_per_sec: Some(round3(summary.ops as f64 / cost.secs)),
            handoffs_per_sec: handoffs.then(|| round3(summary.handoffs as f64 / cost.secs)),
            p50_us: summary.p50_us,
            p99_us: summary.p99_us,
            handoff_p50_us: summary.handoff_p50_us.filter(|_| handoffs),
            handoff_p99_us: summary.handoff_p99_us.filter(|_| handoffs),
            cmds_per_op: per_op(cost.commands),
            evalsha_per_op: per_op(cost.scripts),
            cpu_us_per_op: us_per_op(cost.cpu_secs),
            redis_cpu_us_per_op: us_per_op(cost.redis_cpu_secs),
            cpu_pct: cost.cpu_pct().map(round3),
            redis_cpu_pct: cost.redis_cpu_pct().map(round3),
            errors: summary.errors,
            ..Row::empty(scenario, tasks, library)
        }
    }

    /// A row for `messages` taken from a queue and acknowledged by `tasks`
    /// consumers in `secs` of draining, at `cost` (spent over the same
    /// spans), with the calls of each command over those spans; `errors`
    /// counts messages that were dead-lettered instead.
    pub(crate) fn messages(
        tasks: usize,
        library: &str,
        messages: u64,
        secs: f64,
        cost: Cost,
        calls: &BTreeMap<String, u64>,
        errors: u64,
    ) -> Row {
        let per_message =
            |count: u64| (messages > 0).then(|| round3(count as f64 / messages as f64));
        let us_per_message = |secs: Option<f64>| {
            secs.filter(|_| messages > 0)
                .map(|secs| round3(secs * 1e6 / messages as f64))
        };
        Row {
            ops_per_sec: (secs > 0.0).then(|| round3(messages as f64 / secs)),
            cmds_per_op: per_message(cost.commands),
            evalsha_per_op: per_message(cost.scripts),
            cmds_per_op_by_command: (messages > 0).then(|| {
                calls
                    .iter()
                    .map(|(name, &count)| (name.clone(), round3(count as f64 / messages as f64)))
                    .collect()
            }),
            cpu_us_per_op: us_per_message(cost.cpu_secs),
            redis_cpu_us_per_op: us_per_message(cost.redis_cpu_secs),
            cpu_pct: cost.cpu_pct().map(round3),
            redis_cpu_pct: cost.redis_cpu_pct().map(round3),
            errors,
            ..Row::empty(Scenario::Queue, tasks, library)
        }
    }

    /// A row for leases held and renewed in the background in `scenario`;
    /// `period_secs` is the renewal period the calls are counted against.
    pub(crate) fn renewals(
        scenario: Scenario,
        library: &str,
        leases: usize,
        period_secs: f64,
        cost: Cost,
        lost: u64,
    ) -> Row {
        // Batched renewals arrive in one burst per period, so they are
        // counted over the whole periods the window spans; dividing by the
        // window's exact length would let a few milliseconds of probe
        // latency move the figure.
        let periods = (cost.secs / period_secs).round().max(1.0);
        let calls_per_period = cost.scripts as f64 / periods;
        Row {
            leases: Some(leases),
            renewal_calls_per_sec: Some(round3(cost.scripts as f64 / cost.secs)),
            calls_per_period: Some(round3(calls_per_period)),
            calls_per_period_per_1000: Some(round3(calls_per_period / (leases as f64 / 1000.0))),
            cmds_per_sec: Some(round3(cost.commands as f64 / cost.secs)),
            cpu_pct: cost.cpu_pct().map(round3),
            redis_cpu_pct: cost.redis_cpu_pct().map(round3),
            errors: lost,
            ..Row::empty(scenario, 1, library)
        }
    }

    fn is_renewal_row(&self) -> bool {
        self.leases.is_some()
    }
}

/// `value` rounded to three decimals, so JSON carries no float noise.
fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// `value` with `decimals` places, or `-` when absent.
fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.decimals$}"))
}

/// The rows as aligned text tables: lock cycles first, then renewals.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let cycles: Vec<&Row> = rows.iter().filter(|row| !row.is_renewal_row()).collect();
    if !cycles.is_empty() {
        let _ = writeln!(
            out,
            "{:<12} {:>5}  {:<13} {:>10} {:>11} {:>9} {:>9} {:>10} {:>10} {:>8} {:>10} {:>10} {:>11} {:>6}",
            "scenario",
            "tasks",
            "library",
            "ops/s",
            "handoffs/s",
            "p50 µs",
            "p99 µs",
            "ho p50 µs",
            "ho p99 µs",
            "cmds/op",
            "evalsha/op",
            "cpu µs/op",
            "redis µs/op",
            "errors"
        );
        for row in cycles {
            let _ = writeln!(
                out,
                "{:<12} {:>5}  {:<13} {:>10} {:>11} {:>9} {:>9} {:>10} {:>10} {:>8} {:>10} {:>10} {:>11} {:>6}",
                row.scenario,
                row.tasks,
                row.library,
                cell(row.ops_per_sec, 0),
                cell(row.handoffs_per_sec, 0),
                cell(row.p50_us, 1),
                cell(row.p99_us, 1),
                cell(row.handoff_p50_us, 1),
                cell(row.handoff_p99_us, 1),
                cell(row.cmds_per_op, 2),
                cell(row.evalsha_per_op, 2),
                cell(row.cpu_us_per_op, 1),
                cell(row.redis_cpu_us_per_op, 1),
                row.errors
            );
        }
    }
    let renewals: Vec<&Row> = rows.iter().filter(|row| row.is_renewal_row()).collect();
    if !renewals.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:>7} {:>6} {:>9} {:>12} {:>14} {:>9} {:>7} {:>11} {:>5}",
            "scenario",
            "library",
            "leases",
            "slots",
            "calls/s",
            "calls/period",
            "per 1k leases",
            "cmds/s",
            "cpu %",
            "redis cpu %",
            "lost"
        );
        for row in renewals {
            let _ = writeln!(
                out,
                "{:<12} {:<12} {:>7} {:>6} {:>9} {:>12} {:>14} {:>9} {:>7} {:>11} {:>5}",
                row.scenario,
                row.library,
                row.leases.unwrap_or(0),
                row.slots
                    .map_or_else(|| "-".to_owned(), |slots| slots.to_string()),
                cell(row.renewal_calls_per_sec, 1),
                cell(row.calls_per_period, 1),
                cell(row.calls_per_period_per_1000, 2),
                cell(row.cmds_per_sec, 0),
                cell(row.cpu_pct, 1),
                cell(row.redis_cpu_pct, 1),
                row.errors
            );
        }
    }
    out
}

/// One row as a single line of JSON.
pub(crate) fn json_line(row: &Row) -> String {
    serde_json::to_string(row).expect("a row always serializes")
}
