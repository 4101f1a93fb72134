//! The ratios lockbench reports, and the targets soloist is held to.

use std::fmt::Write as _;

use crate::report::Row;
use crate::scenarios::{SINGLE_NODE, Scenario};

/// One computed ratio or figure, with its target when it has one.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// What is compared.
    pub(crate) name: String,
    /// The measured value.
    pub(crate) value: f64,
    /// The target, in words (`≥ 0.90`), or empty for figures without one.
    pub(crate) target: &'static str,
    /// Whether the target is met; `None` for figures without one.
    pub(crate) met: Option<bool>,
}

impl Check {
    fn new(name: impl Into<String>, value: f64, target: &'static str, met: Option<bool>) -> Check {
        Check {
            name: name.into(),
            value,
            target,
            met,
        }
    }
}

/// The row of `library` in `scenario` at `tasks`, if it was run.
fn find<'a>(rows: &'a [Row], scenario: Scenario, tasks: usize, library: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|row| row.scenario == scenario.name() && row.tasks == tasks && row.library == library)
}

/// `numerator / denominator` when both exist and the denominator is not zero.
fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    let (numerator, denominator) = (numerator?, denominator?);
    (denominator > 0.0).then(|| numerator / denominator)
}

/// Every ratio that the rows allow, with its target.
pub(crate) fn evaluate(rows: &[Row]) -> Vec<Check> {
    let mut checks = Vec::new();
    let ops = |scenario, tasks, library| find(rows, scenario, tasks, library)?.ops_per_sec;

    for (tasks, floor, target) in [(1, 0.90, "≥ 0.90"), (64, 0.80, "≥ 0.80")] {
        let value = ratio(
            ops(Scenario::Uncontended, tasks, "soloist"),
            ops(Scenario::Raw, tasks, "raw"),
        );
        if let Some(value) = value {
            checks.push(Check::new(
                format!("uncontended {tasks}-task soloist / raw {tasks}-task (ops/s)"),
                value,
                target,
                Some(value >= floor),
            ));
        }
    }

    if let Some(contended) = find(rows, Scenario::Contended, 8, "soloist") {
        let solo = ops(Scenario::Uncontended, 1, "soloist");
        if let Some(value) = ratio(contended.handoffs_per_sec, solo) {
            checks.push(Check::new(
                "contended 8-way soloist hand-offs/s / soloist uncontended 1-task ops/s",
                value,
                "≥ 0.50",
                Some(value >= 0.5),
            ));
        }
        for (what, p99) in [
            ("all acquisitions", contended.p99_us),
            ("hand-offs", contended.handoff_p99_us),
        ] {
            if let Some(p99) = p99 {
                checks.push(Check::new(
                    format!("contended 8-way soloist acquire p99 over {what} (ms)"),
                    p99 / 1000.0,
                    "< 10",
                    Some(p99 < 10_000.0),
                ));
            }
        }
        if let Some(cmds) = contended.cmds_per_op {
            checks.push(Check::new(
                "contended 8-way soloist Redis commands per acquisition (Lua-internal included)",
                cmds,
                "≤ 4",
                Some(cmds <= 4.0),
            ));
        }
        if let Some(scripts) = contended.evalsha_per_op {
            checks.push(Check::new(
                "contended 8-way soloist EVALSHA calls per acquisition",
                scripts,
                "≤ 4",
                Some(scripts <= 4.0),
            ));
        }
    }

    // One Redlock cycle over three nodes against one single-node cycle,
    // measured in the same rounds: a Redlock that asks its nodes at once
    // costs close to one cycle; one that asks them in turn costs three. The
    // target is the midpoint: under two single-node cycles, nearer one.
    if let Some(redlock) = find(rows, Scenario::Redlock3, 1, "soloist") {
        let single = find(rows, Scenario::Redlock3, 1, SINGLE_NODE);
        if let Some(value) = ratio(redlock.ops_per_sec, single.and_then(|row| row.ops_per_sec)) {
            checks.push(Check::new(
                format!("redlock3 soloist 3-node cycle / {SINGLE_NODE} cycle (ops/s)"),
                value,
                "≥ 0.50",
                Some(value >= 0.5),
            ));
        }
        if let Some(value) = ratio(redlock.p50_us, single.and_then(|row| row.p50_us)) {
            checks.push(Check::new(
                format!("redlock3 soloist 3-node cycle / {SINGLE_NODE} cycle (p50 latency)"),
                value,
                "",
                None,
            ));
        }
        if let Some(value) = ratio(redlock.ops_per_sec, ops(Scenario::Redlock3, 1, "raw")) {
            checks.push(Check::new(
                "redlock3 soloist / raw on three nodes (ops/s)",
                value,
                "",
                None,
            ));
        }
    }
    // What the machine allows a 3-node cycle, whatever the library.
    if let Some(value) = ratio(
        ops(Scenario::Redlock3, 1, "raw"),
        ops(Scenario::Raw, 1, "raw"),
    ) {
        checks.push(Check::new(
            "redlock3 raw on three nodes / raw 1-task on one (ops/s)",
            value,
            "",
            None,
        ));
    }

    // Soloist on a Redis Cluster against soloist on the single server, the
    // 64-worker cycle measured in the same rounds.
    if let Some(cluster) = find(rows, Scenario::Cluster, 64, "soloist") {
        let single = find(rows, Scenario::Cluster, 64, SINGLE_NODE);
        if let Some(value) = ratio(cluster.ops_per_sec, single.and_then(|row| row.ops_per_sec)) {
            checks.push(Check::new(
                format!("cluster 64-task soloist / {SINGLE_NODE} (ops/s)"),
                value,
                "",
                None,
            ));
        }
        if let Some(value) = ratio(cluster.p50_us, single.and_then(|row| row.p50_us)) {
            checks.push(Check::new(
                format!("cluster 64-task soloist / {SINGLE_NODE} (p50 latency)"),
                value,
                "",
                None,
            ));
        }
    }
    // What keeping the watchdog's leases alive costs on the cluster, against
    // the single-node watchdog run and against the slots the leases span.
    let leases = |scenario: Scenario| {
        rows.iter().find(|row| {
            row.scenario == scenario.name() && row.library == "soloist" && row.leases.is_some()
        })
    };
    if let Some(cluster) = leases(Scenario::Cluster) {
        let single = leases(Scenario::Watchdog);
        if let Some(value) = ratio(
            cluster.calls_per_period,
            single.and_then(|row| row.calls_per_period),
        ) {
            checks.push(Check::new(
                "cluster soloist renewal calls / watchdog soloist renewal calls (per period)",
                value,
                "",
                None,
            ));
        }
        if let Some(value) = ratio(
            cluster.redis_cpu_pct,
            single.and_then(|row| row.redis_cpu_pct),
        ) {
            checks.push(Check::new(
                "cluster soloist Redis CPU (primaries) / watchdog soloist Redis CPU",
                value,
                "",
                None,
            ));
        }
        if let Some(value) = ratio(
            cluster.calls_per_period,
            cluster.slots.map(|slots| slots as f64),
        ) {
            checks.push(Check::new(
                "cluster soloist renewal calls per period / hash slots of the leases",
                value,
                "",
                None,
            ));
        }
    }

    // What the job runtime costs a queue consumer: soloist's workers against
    // bare XREADGROUP + XACK loops, on as many consumers in one group, then
    // against the idempotent baselines: a hand-rolled dedupe-key consumer
    // and apalis-redis.
    for consumers in [1, 4] {
        let (floor, target) = if consumers == 1 {
            (0.5, "≥ 0.50")
        } else {
            (0.35, "≥ 0.35")
        };
        if let Some(value) = ratio(
            ops(Scenario::Queue, consumers, "soloist"),
            ops(Scenario::Queue, consumers, "raw"),
        ) {
            checks.push(Check::new(
                format!("queue {consumers}-consumer soloist / raw (messages/s)"),
                value,
                target,
                Some(value >= floor),
            ));
        }
        for (baseline, floor, target) in [
            ("handrolled", 1.0, "≥ 1.00"),
            ("handrolled-fused", 0.0, ""),
            ("apalis", 1.0, "> 1.00"),
        ] {
            if let Some(value) = ratio(
                ops(Scenario::Queue, consumers, "soloist"),
                ops(Scenario::Queue, consumers, baseline),
            ) {
                let met = match target {
                    "" => None,
                    "> 1.00" => Some(value > floor),
                    _ => Some(value >= floor),
                };
                checks.push(Check::new(
                    format!("queue {consumers}-consumer soloist / {baseline} (messages/s)"),
                    value,
                    target,
                    met,
                ));
            }
        }
    }

    // Cron precision: from a tick's due time to its body starting.
    for library in ["soloist", "soloist-skew2m"] {
        if let Some(p99_us) = find(rows, Scenario::Cron, 5, library).and_then(|row| row.p99_us) {
            let value = p99_us / 1000.0;
            checks.push(Check::new(
                format!("cron 5-replica {library} tick start p99 (ms)"),
                value,
                "< 20",
                Some(value < 20.0),
            ));
        }
    }

    // A semaphore permit against a lock, in the same run: free, and with
    // all but one of its permits held elsewhere.
    for tasks in [1, 64] {
        for library in ["soloist-semaphore", "soloist-semaphore-busy"] {
            if let Some(value) = ratio(
                ops(Scenario::Uncontended, tasks, library),
                ops(Scenario::Uncontended, tasks, "soloist"),
            ) {
                checks.push(Check::new(
                    format!("uncontended {tasks}-task {library} / soloist lock (ops/s)"),
                    value,
                    "",
                    None,
                ));
            }
        }
    }

    // Soloist against every peer, wherever both ran; soloist's other
    // primitives (`soloist-semaphore`) are not peers. The queue's baselines
    // have targets of their own, above.
    for peer in rows.iter().filter(|row| {
        !matches!(row.library.as_str(), "raw" | SINGLE_NODE)
            && !row.library.starts_with("soloist")
            && row.scenario != Scenario::Queue.name()
    }) {
        let Some(ours) = rows.iter().find(|row| {
            row.scenario == peer.scenario && row.tasks == peer.tasks && row.library == "soloist"
        }) else {
            continue;
        };
        let label = format!(
            "{} {}-task soloist / {}",
            peer.scenario, peer.tasks, peer.library
        );
        if let Some(value) = ratio(ours.ops_per_sec, peer.ops_per_sec) {
            checks.push(Check::new(
                format!("{label} (ops/s)"),
                value,
                "> 1",
                Some(value > 1.0),
            ));
        }
        if let Some(value) = ratio(ours.handoffs_per_sec, peer.handoffs_per_sec) {
            checks.push(Check::new(
                format!("{label} (hand-offs/s)"),
                value,
                "> 1",
                Some(value > 1.0),
            ));
        }
        // Renewal cost: lower is better, so the peer's cost over ours.
        if let Some(value) = ratio(peer.calls_per_period, ours.calls_per_period) {
            checks.push(Check::new(
                format!(
                    "{} {} renewal calls / soloist renewal calls",
                    peer.scenario, peer.library
                ),
                value,
                "> 1",
                Some(value > 1.0),
            ));
        }
        if let Some(value) = ratio(peer.cpu_pct, ours.cpu_pct).filter(|_| ours.leases.is_some()) {
            checks.push(Check::new(
                format!("{} {} CPU / soloist CPU", peer.scenario, peer.library),
                value,
                "> 1",
                Some(value > 1.0),
            ));
        }
    }

    if let Some(per_1000) =
        find(rows, Scenario::Watchdog, 1, "soloist").and_then(|row| row.calls_per_period_per_1000)
    {
        checks.push(Check::new(
            "watchdog soloist renewal calls per period per 1,000 leases",
            per_1000,
            "≤ 1",
            Some(per_1000 <= 1.0),
        ));
    }
    checks
}

/// The checks as aligned text.
pub(crate) fn table(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|check| check.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for check in checks {
        let verdict = match check.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>9.3}  {:<7} {}",
            check.name, check.value, check.target, verdict
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Summary;
    use crate::probe::Cost;
    use crate::report::TickLatency;

    fn row(scenario: Scenario, library: &str, ops: u64, p50_us: f64) -> Row {
        let summary = Summary {
            ops,
            handoffs: 0,
            p50_us: Some(p50_us),
            p99_us: Some(p50_us * 2.0),
            handoff_p50_us: None,
            handoff_p99_us: None,
            errors: 0,
        };
        let cost = Cost {
            secs: 1.0,
            ..Cost::default()
        };
        Row::cycles(scenario, 1, library, summary, cost, false)
    }

    #[test]
    fn queue_rows_give_a_soloist_over_raw_ratio_per_consumer_count() {
        let rows = [
            Row::messages(1, "raw", 1000, 0.1, Cost::default(), &Default::default(), 0),
            Row::messages(
                1,
                "soloist",
                1000,
                0.4,
                Cost::default(),
                &Default::default(),
                0,
            ),
        ];
        let checks = evaluate(&rows);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(
            checks[0].name,
            "queue 1-consumer soloist / raw (messages/s)"
        );
        assert!((checks[0].value - 0.25).abs() < 1e-9 && checks[0].met == Some(false));
    }

    #[test]
    fn queue_baselines_have_their_targets_once_each() {
        let messages = |library: &str, secs: f64| {
            Row::messages(
                4,
                library,
                1000,
                secs,
                Cost::default(),
                &Default::default(),
                0,
            )
        };
        let rows = [
            messages("soloist", 0.1),
            messages("handrolled", 0.1),
            messages("handrolled-fused", 0.05),
            messages("apalis", 0.2),
        ];
        let checks = evaluate(&rows);
        let names: Vec<&str> = checks.iter().map(|check| check.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "queue 4-consumer soloist / handrolled (messages/s)",
                "queue 4-consumer soloist / handrolled-fused (messages/s)",
                "queue 4-consumer soloist / apalis (messages/s)",
            ]
        );
        assert_eq!(
            checks[0].met,
            Some(true),
            "level with the hand-rolled consumer meets ≥ 1"
        );
        assert_eq!(checks[1].met, None);
        assert!((checks[2].value - 2.0).abs() < 1e-9 && checks[2].met == Some(true));
    }

    #[test]
    fn cron_p99_is_held_to_20_ms() {
        let latency = |p99_us: f64| TickLatency {
            ticks: 20,
            p99_us,
            ..TickLatency::default()
        };
        let rows = [
            Row::ticks("soloist", 5, latency(19_000.0), Cost::default(), 20.0, 0),
            Row::ticks(
                "soloist-skew2m",
                5,
                latency(21_000.0),
                Cost::default(),
                20.0,
                0,
            ),
        ];
        let checks = evaluate(&rows);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert_eq!(checks[0].met, Some(true));
        assert_eq!(checks[1].met, Some(false));
        assert!(checks[1].name.contains("soloist-skew2m"));
    }

    #[test]
    fn redlock3_is_compared_with_the_single_node_cycle_and_the_peers() {
        let rows = [
            row(Scenario::Redlock3, "soloist", 600, 150.0),
            row(Scenario::Redlock3, SINGLE_NODE, 1000, 100.0),
            row(Scenario::Redlock3, "rslock", 500, 180.0),
        ];
        let checks = evaluate(&rows);
        let named = |needle: &str| {
            checks
                .iter()
                .find(|check| check.name.contains(needle))
                .unwrap_or_else(|| panic!("no check named like `{needle}` in {checks:?}"))
        };
        let cycle = named("3-node cycle / soloist-1node cycle (ops/s)");
        assert!((cycle.value - 0.6).abs() < 1e-9 && cycle.met == Some(true));
        assert!((named("(p50 latency)").value - 1.5).abs() < 1e-9);
        let peer = named("redlock3 1-task soloist / rslock (ops/s)");
        assert!((peer.value - 1.2).abs() < 1e-9 && peer.met == Some(true));
        assert!(
            !checks
                .iter()
                .any(|check| check.name.contains("soloist / soloist-1node")),
            "the single-node row is not a peer"
        );
    }

    #[test]
    fn cluster_is_compared_with_the_single_node_rows() {
        let mut cycle = row(Scenario::Cluster, "soloist", 800, 200.0);
        cycle.tasks = 64;
        let mut single_cycle = row(Scenario::Cluster, SINGLE_NODE, 1000, 100.0);
        single_cycle.tasks = 64;
        let cost = Cost {
            secs: 3.0,
            scripts: 30,
            redis_cpu_secs: Some(0.3),
            ..Cost::default()
        };
        let single = Row::renewals(Scenario::Watchdog, "soloist", 10_000, 1.0, cost, 0);
        let mut cluster = Row::renewals(
            Scenario::Cluster,
            "soloist",
            10_000,
            1.0,
            Cost {
                scripts: 24_000,
                redis_cpu_secs: Some(1.2),
                ..cost
            },
            0,
        );
        cluster.slots = Some(7_500);
        let checks = evaluate(&[cycle, single_cycle, single, cluster]);
        let named = |needle: &str| {
            checks
                .iter()
                .find(|check| check.name.contains(needle))
                .unwrap_or_else(|| panic!("no check named like `{needle}` in {checks:?}"))
        };
        assert!(
            (named("cluster 64-task soloist / soloist-1node (ops/s)").value - 0.8).abs() < 1e-9
        );
        assert!((named("(p50 latency)").value - 2.0).abs() < 1e-9);
        assert!((named("renewal calls / watchdog").value - 800.0).abs() < 1e-9);
        assert!((named("Redis CPU (primaries)").value - 4.0).abs() < 1e-9);
        assert!((named("hash slots of the leases").value - 8000.0 / 7500.0).abs() < 1e-9);
        assert!(
            checks
                .iter()
                .filter(|check| check.name.starts_with("cluster"))
                .all(|check| check.met.is_none()),
            "{checks:?}"
        );
    }
}
